import Foundation
import Testing

/// `--voters`: at most N members vote; the others are learners that replicate the ledger and render.
extension ProcessTests {
    @Suite struct VoterClusterTests {
        /// Each live node's own view of who votes (its `peers --json`): node id → voter.
        static func voters(_ node: TestNode) throws -> [String: Bool] {
            let view = try #require(try node.json(["peers"]) as? [[String: Any]])
            var out: [String: Bool] = [:]
            for row in view where row["member"] as? Bool == true {
                if let id = row["id"] as? String { out[id] = row["voter"] as? Bool ?? false }
            }
            return out
        }

        static func ownID(_ node: TestNode) throws -> String {
            let view = try #require(try node.json(["peers"]) as? [[String: Any]])
            return try #require(view.first { $0["self"] as? Bool == true }?["id"] as? String)
        }

        @Test func sixNodesKeepThreeVotersThroughTheLossOfTheLeader() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let farm = try TestFarm(count: 6, args: ["--renderer", "simulated:20", "--voters", "3"])
            let ids = try farm.nodes.map(Self.ownID)
            // Every node agrees: exactly three voters; the learners follow (the contract's role for them).
            try waitUntil(timeout: 60, "every node sees the same three voters") {
                let views = try farm.nodes.map(Self.voters)
                return Set(views).count == 1 && views[0].count == 6 && views[0].values.filter { $0 }.count == 3
            }
            let votersBefore = Set(try Self.voters(farm.nodes[0]).filter(\.value).keys)
            for node in farm.nodes {
                let view = try #require(try node.json(["peers"]) as? [[String: Any]])
                let me = try #require(view.first { $0["self"] as? Bool == true })
                if me["voter"] as? Bool == false { #expect(me["role"] as? String == "follower") }
            }
            let leader = try farm.leader()
            #expect(votersBefore.contains(try Self.ownID(leader)), "a learner leads")
            let survivors = farm.nodes.filter { $0 !== leader }
            let submitter = try #require(survivors.first)
            let out = tempDir("voters")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let job = try submitter.submit([scene, "--frames", "1-300", "--chunk", "5", "--output", out])
            try waitUntil(timeout: 120, "30 frames done") {
                ((try submitter.status(job)["frames_done"] as? Int) ?? 0) >= 30
            }
            let leaderID = try Self.ownID(leader)
            leader.kill9()
            // A voter takes over; after three dead-after periods the dead voter's vote goes to a live learner.
            try waitUntil(timeout: 120, "a new leader and three live voters") {
                let next = try farm.leader()
                let view = try Self.voters(next)
                let live = view.filter { $0.value && $0.key != leaderID }
                return next !== leader && live.count == 3 && view[leaderID] == false
            }
            let newLeaderID = try Self.ownID(try farm.leader())
            #expect(votersBefore.contains(newLeaderID), "the new leader was a voter before")
            let status = try submitter.waitFor(job, timeout: 300) { $0["state"] as? String == "done" }
            #expect(status["frames_done"] as? Int == 300)
            let files = try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasSuffix(".png") }
            #expect(files.count == 300)
            // The changes went through the log, where every node can see them.
            let ledger = try #require(try submitter.json(["ledger"]) as? [[String: Any]])
            let types = ledger.compactMap { $0["type"] as? String }
            #expect(types.contains("Demote"))
            #expect(types.contains("Promote"))
            #expect(ledger.filter { $0["type"] as? String == "AddNode" && $0["voter"] as? Bool == false }.count == 3)
            // Learners rendered too.
            let learners = Set(ids).subtracting(votersBefore)
            let frames = try #require(try submitter.status(job)["frames"] as? [[String: Any]])
            let renderers = Set(frames.compactMap { $0["node"] as? String })
            #expect(!renderers.isDisjoint(with: learners), "no learner rendered: \(renderers)")
        }
    }
}
