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

        /// A daemon's resident memory, from /proc.
        static func rssMB(_ node: TestNode) -> Double? {
            guard let text = try? String(contentsOfFile: "/proc/\(node.pid)/status", encoding: .utf8),
                let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                let kb = line.split(separator: " ").compactMap({ Double($0) }).first
            else { return nil }
            return kb / 1024
        }

        /// Sixteen machines on loopback (the simulated renderer): one farm with exactly five voters, a job
        /// (800 frames) that survives the loss of its leader, logs compacted on every node, daemons that stay small,
        /// and a seventeenth machine that starts from a snapshot and renders.
        @Test(
            .enabled(
                if: ProcessInfo.processInfo.environment["REXNODE_SCALE_TESTS"] == "1",
                "16 daemons on a 2-core machine: run with REXNODE_SCALE_TESTS=1 (make test-scale)"))
        func sixteenNodesFormOneFarmWithFiveVotersAndFinishAJobThroughAFailover() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let farm = try TestFarm(
                count: 16, args: ["--renderer", "simulated:100", "--http", "off", "--snapshot-every", "200"],
                formTimeout: 300)
            try waitUntil(timeout: 120, "every node sees the same five voters") {
                let views = try farm.nodes.map(Self.voters)
                return Set(views).count == 1 && views[0].count == 16 && views[0].values.filter { $0 }.count == 5
            }
            let voters = Set(try Self.voters(farm.nodes[0]).filter(\.value).keys)
            let leader = try farm.leader()
            let leaderID = try Self.ownID(leader)
            let submitter = try #require(farm.nodes.first { $0 !== leader })
            let out = tempDir("sixteen")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let job = try submitter.submit([scene, "--frames", "1-800", "--chunk", "5", "--output", out])
            try waitUntil(timeout: 300, "100 frames done") {
                ((try submitter.status(job)["frames_done"] as? Int) ?? 0) >= 100
            }
            leader.kill9()
            do {
                try waitUntil(timeout: 120, "a voter takes over") {
                    let next = try farm.leader()
                    let nextID = try Self.ownID(next)
                    return next !== leader && voters.contains(nextID)
                }
            } catch {
                let report = farm.nodes.filter { $0 !== leader }.prefix(6).map { node -> String in
                    let view = (try? node.cli(["peers", "--json"]).stdout) ?? "(no answer)"
                    let tail = node.log.split(separator: "\n").suffix(25).joined(separator: "\n")
                    return "--- \(node.name) peers: \(view.prefix(3000))\n--- log:\n\(tail)"
                }.joined(separator: "\n")
                throw TestFailure("\(error)\n\(report)")
            }
            try submitter.waitFor(job, timeout: 600) { $0["state"] as? String == "done" }
            let files = try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasSuffix(".png") }
            #expect(files.count == 800)
            let live = farm.nodes.filter { $0 !== leader }
            let rss = live.compactMap(Self.rssMB)
            #expect(rss.count == live.count)
            #expect(rss.allSatisfy { $0 <= 64 }, "daemon RSS in MB: \(rss.map { Int($0) })")
            // Five voters again once the dead leader's vote has gone to a learner.
            try waitUntil(timeout: 120, "five live voters") {
                let view = try Self.voters(try farm.leader())
                return view.filter { $0.value && $0.key != leaderID }.count == 5
            }
            // Every live node compacted its log: its ledger starts past index 1.
            try waitUntil(timeout: 120, "every ledger starts past index 1") {
                try live.allSatisfy { try SnapshotClusterTests.retained($0).first > 1 }
            }
            // A seventeenth machine learns the finished job from a snapshot and renders.
            let late = try TestNode(
                name: "n17",
                args: [
                    "--token", farm.token, "--beacon-ms", "200", "--dead-after", "2", "--renderer", "simulated:100",
                    "--http", "off", "--snapshot-every", "200",
                ], discoveryPort: farm.port)
            try waitUntil(timeout: 180, "the 17th node knows the finished job") {
                try late.status(job)["state"] as? String == "done"
            }
            #expect(try SnapshotClusterTests.retained(late).first > 1, "its ledger starts from a snapshot")
            let lateID = try Self.ownID(late)
            let more = try late.submit([scene, "--frames", "1-200", "--chunk", "1", "--output", out + "/more"])
            let status = try late.waitFor(more, timeout: 300) { $0["state"] as? String == "done" }
            let renderers = Set((status["frames"] as? [[String: Any]] ?? []).compactMap { $0["node"] as? String })
            #expect(renderers.contains(lateID), "the 17th node rendered none of the new job")
            #expect(Self.rssMB(late).map { $0 <= 64 } == true, "RSS of the 17th node: \(Self.rssMB(late) ?? -1) MB")
        }
    }
}
