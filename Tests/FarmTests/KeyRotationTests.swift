import Foundation
import Testing

/// Taking trust back, on loopback with real `rexnode join` processes: `revoke` moves the farm to a new key, the
/// revoked machine and the old token open nothing, the new token joins, and a member that was away follows.
extension ProcessTests {
    @Suite struct KeyRotationTests {
        func token(_ node: TestNode) throws -> String {
            let r = try node.cli(["token"], timeout: 60)
            guard r.status == 0 else { throw TestFailure("token failed: \(r)") }
            return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        func rows(_ node: TestNode, all: Bool = false) throws -> [[String: Any]] {
            try #require(try node.json(all ? ["peers", "--all"] : ["peers"]) as? [[String: Any]])
        }

        func selfID(_ node: TestNode) throws -> String {
            try #require(try rows(node).first { $0["self"] as? Bool == true }?["id"] as? String)
        }

        func liveMembers(_ node: TestNode) throws -> Set<String> {
            Set(
                try rows(node).filter { $0["member"] as? Bool == true && $0["state"] as? String == "alive" }
                    .compactMap { $0["id"] as? String })
        }

        @Test func revokeMovesTheFarmToANewKeyAndShutsOutTheOldOne() throws {
            let common = ["--renderer", "simulated:20", "--beacon-ms", "200", "--dead-after", "2"]
            let farm = try TestFarm(count: 4, args: ["--renderer", "simulated:20"], formTimeout: 120)
            let (a, b, away, revoked) = (farm.nodes[0], farm.nodes[1], farm.nodes[2], farm.nodes[3])
            let oldToken = farm.token
            let (awayID, revokedID) = (try selfID(away), try selfID(revoked))

            // One member is stopped during the rotation; the revoked machine is up and watching.
            away.stop()
            let r = try a.cli(["revoke", revoked.name], timeout: 120)
            #expect(r.status == 0, "\(r)\n\(a.log)")
            let newToken = try #require(r.stdout.split(separator: "\n").last.map(String.init))
            #expect(newToken.hasPrefix("rexfarm1-") && newToken != oldToken, "\(r)")
            try waitUntil(timeout: 60, "both live members print the new token") {
                try token(a) == newToken && token(b) == newToken
            }
            let keyFile = a.data + "/farm.key"
            let mode = (try FileManager.default.attributesOfItem(atPath: keyFile)[.posixPermissions] as? Int) ?? 0
            #expect(mode & 0o077 == 0, "farm.key is mode \(String(mode, radix: 8))")
            #expect(try !liveMembers(a).contains(revokedID))

            // The member that was away comes back with its old key, is handed the new one, and is a member again.
            try away.start()
            try waitUntil(timeout: 120, "the member that was away follows the new key") { try token(away) == newToken }
            try waitUntil(timeout: 120, "it is a live member again") { try liveMembers(a).contains(awayID) }

            // The revoked machine, restarted with its old key, and a stranger with the old token: neither is heard.
            revoked.stop()
            try revoked.start()
            let stranger = try TestNode(
                name: "stranger", args: ["--token", oldToken] + common, discoveryPort: farm.port)
            let strangerID = try selfID(stranger)
            // A newcomer with the new token joins.
            let newcomer = try TestNode(
                name: "newcomer", args: ["--token", newToken] + common, discoveryPort: farm.port)
            let newcomerID = try selfID(newcomer)
            try waitUntil(timeout: 120, "the newcomer with the new token is a live member") {
                try liveMembers(a).contains(newcomerID) && liveMembers(b).contains(newcomerID)
            }

            // Frames go to members only.
            let scene = try Scenes.make(["--frames", "6", "--width", "32", "--height", "24", "--samples", "1"])
            let job = try a.submit([
                scene, "--frames", "1-6", "--output", tempDir("revoke-out") + "/out", "--chunk", "1",
            ])
            let status = try a.waitFor(job, timeout: 180) { $0["state"] as? String == "done" }
            let renderers = Set(((status["frames"] as? [[String: Any]]) ?? []).compactMap { $0["node"] as? String })
            #expect(!renderers.isEmpty)
            #expect(!renderers.contains(revokedID) && !renderers.contains(strangerID), "\(renderers)")

            for node in [a, b, away] {
                let seen = Set(try rows(node, all: true).compactMap { $0["id"] as? String })
                #expect(!seen.contains(strangerID), "\(node.name) sees the stranger with the old token")
                #expect(!seen.contains(revokedID), "\(node.name) sees the revoked machine")
                #expect(try token(node) == newToken)
            }
            #expect(try token(newcomer) == newToken)
            // The revoked machine never received the new key (no member hands it over; it is not a member).
            #expect(try token(revoked) == oldToken)
            #expect(try !liveMembers(a).contains(strangerID))

            // The revoked machine's identity, in a fresh folder with the new token, is still refused by every member.
            let reborn = NSTemporaryDirectory() + "rex-node-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: reborn, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: revoked.data + "/node.key", toPath: reborn + "/node.key")
            revoked.stop()
            let again = try TestNode(
                name: "reborn", args: ["--token", newToken] + common, data: reborn, discoveryPort: farm.port)
            #expect(try selfID(again) == revokedID)
            // Give it time to be heard, if it could be: a newcomer is a member within a few seconds here.
            for _ in 0..<10 {
                usleep(1_000_000)
                let seen = Set(try rows(a, all: true).compactMap { $0["id"] as? String })
                #expect(!seen.contains(revokedID), "the revoked identity came back with the new token")
            }
            #expect(try !liveMembers(b).contains(revokedID))
            #expect(a.isRunning && b.isRunning && away.isRunning)
        }

        @Test func rotateKeyGivesEveryMemberTheNewTokenAndARestartKeepsIt() throws {
            let farm = try TestFarm(count: 3, args: ["--renderer", "simulated:20"], formTimeout: 120)
            let r = try farm.nodes[1].cli(["rotate-key"], timeout: 120)
            #expect(r.status == 0, "\(r)")
            let newToken = try #require(r.stdout.split(separator: "\n").last.map(String.init))
            #expect(newToken != farm.token)
            try waitUntil(timeout: 60, "every member prints the new token") {
                try farm.nodes.allSatisfy { try token($0) == newToken }
            }
            // A restart with the old --token on its command line keeps the folder's current key.
            let node = farm.nodes[2]
            node.stop()
            #expect(try token(node) == newToken)
            try node.start()
            try waitUntil(timeout: 120, "the restarted member is live again") {
                try liveMembers(node).count == 3 && liveMembers(farm.nodes[0]).count == 3
            }
            #expect(try token(node) == newToken)
            let ledger = try farm.nodes[0].cli(["ledger", "--json"])
            #expect(ledger.stdout.contains("FarmKey"), "\(ledger)")
            #expect(!ledger.stdout.contains("\"key\""), "the ledger shows no key")
        }

        /// Two rotations back to back while one member is stopped, then the leader itself is revoked (from a
        /// follower); the member that was away comes back on its own folder with the newest token (`join --token`
        /// on a folder whose key is older is accepted) and follows.
        @Test func revokingTheLeaderAfterTwoRotationsAndAMemberBackWithTheNewestToken() throws {
            let common = ["--renderer", "simulated:20", "--beacon-ms", "200", "--dead-after", "2"]
            let farm = try TestFarm(count: 4, args: ["--renderer", "simulated:20"])
            let away = farm.nodes[3]
            let awayID = try selfID(away)
            away.stop()
            var token = farm.token
            for _ in 0..<2 {
                let r = try farm.nodes[0].cli(["rotate-key"], timeout: 120)
                #expect(r.status == 0, "\(r)")
                let next = try #require(r.stdout.split(separator: "\n").last.map(String.init))
                #expect(next != token)
                token = next
            }
            let live = Array(farm.nodes.prefix(3))
            try waitUntil(timeout: 60, "the live members print the newest token") {
                try live.allSatisfy { try self.token($0) == token }
            }
            // The leader, revoked from a follower.
            var leaderID = ""
            try waitUntil(timeout: 60, "a leader is known") {
                leaderID = try rows(live[0]).first { $0["role"] as? String == "leader" }?["id"] as? String ?? ""
                return !leaderID.isEmpty
            }
            var ids: [String: TestNode] = [:]
            for node in live { ids[try selfID(node)] = node }
            let leader = try #require(ids[leaderID])
            let follower = try #require(live.first { $0 !== leader })
            let r = try follower.cli(["revoke", leaderID], timeout: 180)
            #expect(r.status == 0, "\(r)\n\(follower.log)")
            let final = try #require(r.stdout.split(separator: "\n").last.map(String.init))
            #expect(final != token)
            let rest = live.filter { $0 !== leader }
            try waitUntil(timeout: 60, "the other members print the new token") {
                try rest.allSatisfy { try self.token($0) == final }
            }
            try waitUntil(timeout: 60, "the revoked leader is no member") {
                try rest.allSatisfy { try !liveMembers($0).contains(leaderID) }
            }
            #expect(try self.token(leader) == token, "the revoked leader was handed the new key")

            // The member that was away, on its own folder, with the newest token.
            let back = try TestNode(
                name: away.name, args: ["--token", final] + common, data: away.data, discoveryPort: farm.port)
            try waitUntil(timeout: 120, "the member that was away follows the new key") {
                try self.token(back) == final
            }
            try waitUntil(timeout: 120, "it is a live member again") {
                try rest.allSatisfy { try liveMembers($0).contains(awayID) }
            }
            let scene = try Scenes.make(["--frames", "4", "--width", "32", "--height", "24", "--samples", "1"])
            let job = try rest[0].submit([
                scene, "--frames", "1-4", "--output", tempDir("revoke-leader") + "/out", "--chunk", "1",
            ])
            let status = try rest[0].waitFor(job, timeout: 180) { $0["state"] as? String == "done" }
            let renderers = Set(((status["frames"] as? [[String: Any]]) ?? []).compactMap { $0["node"] as? String })
            #expect(!renderers.isEmpty && !renderers.contains(leaderID), "\(renderers)")
            let seen = Set(try rows(rest[0], all: true).compactMap { $0["id"] as? String })
            #expect(!seen.contains(leaderID), "the revoked leader is still heard")
            back.stop()
        }
    }
}
