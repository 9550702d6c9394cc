import Foundation
import Testing

/// `--snapshot-every`: every node compacts its log into a snapshot of the ledger; a new machine starts from the
/// leader's snapshot and renders.
extension ProcessTests {
    @Suite struct SnapshotClusterTests {
        /// The first index of a node's retained applied log (`ledger --json`), and how many entries it holds.
        static func retained(_ node: TestNode) throws -> (first: Int, count: Int) {
            let log = try #require(try node.json(["ledger"]) as? [[String: Any]])
            return (log.first?["index"] as? Int ?? 0, log.count)
        }

        static func jobStates(_ node: TestNode) throws -> [String: String] {
            let jobs = try #require(try node.json(["jobs"]) as? [[String: Any]])
            var out: [String: String] = [:]
            for job in jobs { out[job["job"] as? String ?? "?"] = job["state"] as? String }
            return out
        }

        @Test func theLogIsCompactedEverywhereAndANewNodeStartsFromTheSnapshot() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let farm = try TestFarm(count: 4, args: ["--renderer", "simulated:5", "--snapshot-every", "40"])
            let submitter = farm.nodes[1]
            let out = tempDir("snapshots")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let first = try submitter.submit([scene, "--frames", "1-120", "--chunk", "2", "--output", out + "/a"])
            let done = try submitter.waitFor(first, timeout: 300) { $0["state"] as? String == "done" }
            #expect(done["frames_done"] as? Int == 120)
            // Each node compacted on its own: its log starts past index 1, the state is whole.
            try waitUntil(timeout: 60, "every node's ledger starts past index 1") {
                try farm.nodes.allSatisfy { try Self.retained($0).first > 1 }
            }
            for node in farm.nodes {
                let status = try node.status(first)
                #expect(status["state"] as? String == "done" && status["frames_done"] as? Int == 120)
            }

            // The leader dies; the farm goes on under another, which compacts too.
            let leader = try farm.leader()
            leader.kill9()
            let survivors = farm.nodes.filter { $0 !== leader }
            try waitUntil(timeout: 60, "a new leader") { try farm.leader() !== leader }
            let second = try survivors[0].submit([scene, "--frames", "1-40", "--chunk", "1", "--output", out + "/b"])
            _ = try survivors[0].waitFor(second, timeout: 300) { $0["state"] as? String == "done" }

            // A new machine joins: it learns the finished jobs from the leader's snapshot, not by replaying the log.
            let newcomer = try TestNode(
                name: "n5",
                args: [
                    "--token", farm.token, "--beacon-ms", "200", "--dead-after", "2", "--renderer", "simulated:100",
                    "--snapshot-every", "40",
                ], discoveryPort: farm.port)
            try waitUntil(timeout: 120, "the new node knows both finished jobs") {
                let states = try Self.jobStates(newcomer)
                return states[first] == "done" && states[second] == "done"
            }
            #expect(try Self.retained(newcomer).first > 1, "the new node's ledger starts from a snapshot")
            #expect(newcomer.log.contains("installed a snapshot of the ledger"))
            let old = try newcomer.status(first)
            #expect(old["frames_done"] as? Int == 120)
            #expect((old["frames"] as? [[String: Any]])?.count == 120)
            // And it renders.
            let newcomerID = try VoterClusterTests.ownID(newcomer)
            let third = try newcomer.submit([scene, "--frames", "1-60", "--chunk", "1", "--output", out + "/c"])
            let status = try newcomer.waitFor(third, timeout: 300) { $0["state"] as? String == "done" }
            let renderers = Set((status["frames"] as? [[String: Any]] ?? []).compactMap { $0["node"] as? String })
            #expect(renderers.contains(newcomerID), "the new node rendered none of \(renderers)")
            let files = try FileManager.default.contentsOfDirectory(atPath: out + "/c").filter { $0.hasSuffix(".png") }
            #expect(files.count == 60)
            // Every live node agrees on the state, whatever its log holds.
            let live = survivors + [newcomer]
            try waitUntil(timeout: 30, "the live nodes agree on the jobs") {
                Set(try live.map { try $0.cli(["jobs", "--json"]).stdout }).count == 1
            }
        }
    }
}
