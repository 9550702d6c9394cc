import Foundation
import Testing

@testable import Farm

/// The read model's rows carry the CLI contract's keys: absent values are `null` where scripts read them, and
/// optional extras are left out rather than null.
@Suite("Row shapes")
struct RowShapeTests {
    func object(_ value: some Encodable) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: JSONEncoder().encode(value)) as? [String: Any])
    }

    @Test func jobAndStatusRowsKeepTheContractsKeysAndNulls() async throws {
        let f = try SubmitServiceTests.Fixture()
        let job = try await f.service.submit(SubmitRequest(path: f.scene(), frames: "1-3", output: f.dir + "/out"))
            .record
        let row = try object(JobRow(job))
        for key in [
            "job", "name", "state", "frames_total", "frames_done", "frames_failed", "output", "priority",
            "submitter", "message",
        ] {
            #expect(row.keys.contains(key), "jobs --json lacks \(key)")
        }
        #expect(row["message"] is NSNull)
        #expect(row["tags"] as? [String] == [])
        #expect(row["state"] as? String == "queued")
        #expect(row["frames_total"] as? Int == 3)

        let brief = try object(JobStatusView(job: JobRow(job)))
        #expect(brief["frames"] == nil, "the brief status has no frame list")
        #expect(brief["delivery_error"] == nil)
        #expect(brief["job"] as? String == job.job)

        let frames = try f.ledger.frames(of: job.job).map {
            FrameRow(
                frame: $0.frame, state: $0.state, node: $0.node, hash: $0.hash, holders: $0.holders,
                attempts: $0.attempts, message: $0.message, progress: nil)
        }
        let full = try object(JobStatusView(job: JobRow(job), frames: frames, deliveryError: "disk full"))
        let first = try #require((full["frames"] as? [[String: Any]])?.first)
        #expect(Set(first.keys) == ["frame", "state", "node", "hash", "holders", "attempts"])
        #expect(first["node"] is NSNull)
        #expect(first["hash"] is NSNull)
        #expect(full["delivery_error"] as? String == "disk full")
        #expect(full["frames_total"] as? Int == 3, "the job's keys sit beside the frame list")
    }

    @Test func theLatestFrameIsTheOneCommittedLastNotTheHighestNumber() throws {
        func row(_ frame: Int, _ state: String, _ index: UInt64?) -> FrameRow {
            FrameRow(
                frame: frame, state: state, node: nil, hash: nil, holders: [], attempts: 0, message: nil,
                progress: nil, doneIndex: index)
        }
        // Two chunks on two nodes: frame 6 was committed after frame 9.
        let frames = [row(1, "done", 12), row(2, "running", nil), row(6, "done", 40), row(9, "done", 31)]
        #expect(JobStatusView.latest(frames) == 6)
        #expect(JobStatusView.latest([row(1, "queued", nil)]) == nil)
        // Frames committed before the ledger kept the order: the highest number.
        #expect(JobStatusView.latest([row(3, "done", nil), row(5, "done", nil)]) == 5)
        let encoded = try object(row(6, "done", 40))
        #expect(encoded["done_index"] as? Int == 40)
        #expect(try object(row(2, "running", nil))["done_index"] == nil)
    }

    @Test func onlyThisNodesPeerRowCarriesItsRaftView() throws {
        let me = try object(
            PeerRow(
                id: "a", name: "n1", address: "127.0.0.1:1", role: "leader", state: "alive", slots: 2, framesDone: 5,
                isSelf: true, task: nil, member: true, term: 3, leader: nil, raftStallMs: 12, leaderSilenceMs: 0))
        for key in [
            "id", "name", "address", "role", "state", "slots", "frames_done", "self", "task", "member", "term",
            "leader", "raft_longest_stall_ms", "raft_longest_leader_silence_ms", "tags", "devices", "resting",
            "resting_until",
        ] {
            #expect(me.keys.contains(key), "peers --json lacks \(key)")
        }
        #expect(me["devices"] as? [String] == ["CPU"])
        #expect(me["resting"] as? Bool == false)
        #expect(me["resting_until"] is NSNull)
        #expect(me["leader"] is NSNull)
        #expect(me["task"] is NSNull)
        let other = try object(
            PeerRow(
                id: "b", name: "n2", address: "", role: "follower", state: "dead", slots: 0, framesDone: 0,
                isSelf: false, task: nil, member: true))
        #expect(other["term"] == nil)
        #expect(other["leader"] == nil)
        #expect(other["self"] as? Bool == false)
    }
}

/// `join --keep-images` and `--min-free`: times and sizes people write, and one sentence for anything else.
@Suite struct RetentionSettingsTests {
    @Test func timesAndSizesParseAndNonsenseIsRefused() throws {
        #expect(try RetentionSettings.parseDuration("7d") == 7 * 86_400_000)
        #expect(try RetentionSettings.parseDuration("36h") == 36 * 3_600_000)
        #expect(try RetentionSettings.parseDuration("1.5s") == 1500)
        #expect(try RetentionSettings.parseDuration("90") == 90_000)
        #expect(try RetentionSettings.parseSize("512M") == 512_000_000)
        #expect(try RetentionSettings.parseSize("2GB") == 2_000_000_000)
        #expect(try RetentionSettings.parseSize("100") == 100)
        for bad in ["", "-1d", "7w", "soon", "inf"] {
            #expect(throws: FarmError.self) { try RetentionSettings.parseDuration(bad) }
        }
        for bad in ["", "-5G", "5X", "lots"] {
            #expect(throws: FarmError.self) { try RetentionSettings.parseSize(bad) }
        }
    }
}
