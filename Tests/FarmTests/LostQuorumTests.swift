import Foundation
import Testing

/// A farm that lost its majority, on loopback with real `rexnode join` processes: `leave` warns, `recover` brings the
/// survivor back to work, and the machine that was killed comes back as a follower of the recovered farm.
extension ProcessTests {
    @Suite struct LostQuorumTests {
        /// One sentence: a line of its own ending in a full stop.
        func isOneSentence(_ text: String) -> Bool {
            let line = text.trimmingCharacters(in: .whitespacesAndNewlines)
            return !line.isEmpty && !line.contains("\n") && line.hasSuffix(".")
        }

        func view(_ node: TestNode, all: Bool = false) throws -> [[String: Any]] {
            try #require(try node.json(all ? ["peers", "--all"] : ["peers"]) as? [[String: Any]])
        }

        func selfRow(_ node: TestNode) throws -> [String: Any] {
            try #require(try view(node).first { $0["self"] as? Bool == true })
        }

        @Test func aSurvivorRecoversRendersAndTheKilledNodeRejoinsAsAFollower() throws {
            let farm = try TestFarm(count: 3, args: ["--renderer", "simulated:20"], formTimeout: 120)
            let (leaver, survivor, victim) = (farm.nodes[0], farm.nodes[1], farm.nodes[2])
            let leaverID = try #require(try selfRow(leaver)["id"] as? String)
            let victimID = try #require(try selfRow(victim)["id"] as? String)

            // While the farm has a leader, recover refuses in one sentence and changes nothing.
            let early = try survivor.cli(["recover"])
            #expect(early.status != 0, "\(early)")
            #expect(isOneSentence(early.stderr) && early.stderr.contains("recover"), "\(early)")
            #expect(try view(survivor).filter { $0["member"] as? Bool == true }.count == 3)

            // Leaving a farm of three would leave two voters: refused with one sentence, and the node keeps running.
            let refused = try leaver.cli(["leave"])
            #expect(refused.status != 0, "\(refused)")
            #expect(isOneSentence(refused.stderr) && refused.stderr.contains("--force"), "\(refused)")
            #expect(leaver.isRunning)
            #expect(try view(leaver).filter { $0["member"] as? Bool == true }.count == 3)

            // --force goes ahead: the node leaves and disappears from `peers`.
            let forced = try leaver.cli(["leave", "--force"])
            #expect(forced.status == 0, "\(forced)")
            try waitUntil(timeout: 30, "the node that left has exited") { !leaver.isRunning }
            try waitUntil(timeout: 30, "the node that left is gone from peers") {
                let rows = try view(survivor)
                return rows.count == 2 && !rows.contains { $0["id"] as? String == leaverID }
            }

            // A kill -9 leaves the survivor without a majority; `peers` shows the dead member with role `-`.
            victim.kill9()
            try waitUntil(timeout: 60, "the killed member shows as dead with role -") {
                try view(survivor).contains {
                    $0["id"] as? String == victimID && $0["state"] as? String == "dead" && $0["role"] as? String == "-"
                }
            }

            // recover: refused (one sentence) until no leader has been seen for a while, then it goes ahead.
            var recovered: CommandResult?
            try waitUntil(timeout: 60, "recover succeeds on the survivor") {
                let r = try survivor.cli(["recover"])
                if r.status == 0 {
                    recovered = r
                    return true
                }
                #expect(isOneSentence(r.stderr), "\(r)")
                return false
            }
            let said = try #require(recovered).stdout
            #expect(isOneSentence(said) && said.contains("may be lost"), "\(said)")
            try waitUntil(timeout: 30, "the survivor leads the recovered farm") {
                try selfRow(survivor)["role"] as? String == "leader"
            }

            // The farm goes on: a job runs to done.
            let root = tempDir("lost-quorum")
            defer { try? FileManager.default.removeItem(atPath: root) }
            let scene = root + "/scene.blend"
            _ = FileManager.default.createFile(
                atPath: scene, contents: Data(Array("BLENDER-v304".utf8) + Array(repeating: 0, count: 4096)))
            let submit = try survivor.cli(["submit", scene, "--frames", "1-6", "--output", root + "/out", "--json"])
            #expect(submit.status == 0, "\(submit)\n\(survivor.log)")
            let summary = try JSONSerialization.jsonObject(with: Data(submit.stdout.utf8)) as? [String: Any]
            #expect(summary?["state"] as? String == "done")
            #expect(summary?["frames_done"] as? Int == 6)

            // The killed machine comes back with its stale log: it starts over and rejoins as a follower, and the
            // farm has one leader.
            try victim.start()
            try waitUntil(timeout: 90, "the killed node rejoins as a follower") {
                let mine = try selfRow(victim)
                let seen = try view(survivor)
                return mine["role"] as? String == "follower" && mine["member"] as? Bool == true
                    && seen.filter { $0["member"] as? Bool == true && $0["state"] as? String == "alive" }.count == 2
            }
            for node in [survivor, victim] {
                let leaders = try view(node).filter { $0["role"] as? String == "leader" }
                #expect(leaders.count == 1, "\(leaders)")
                #expect(leaders.first?["id"] as? String == (try selfRow(survivor)["id"] as? String))
            }
            #expect(victim.log.contains("starting over as a new member"), "\(victim.log)")
            // Its replica is the recovered farm's: the ledgers agree and hold the recovery.
            try waitUntil(timeout: 30, "the ledgers agree") {
                Set(try farm.ledgers(of: [survivor, victim])).count == 1
            }
            let ledger = try #require(try victim.json(["ledger"]) as? [[String: Any]])
            #expect(ledger.contains { $0["type"] as? String == "Recover" })
            #expect(ledger.filter { $0["type"] as? String == "CompleteFrame" }.count >= 6)
        }
    }
}
