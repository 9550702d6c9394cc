import Foundation
import Testing

/// Tags, schedules and devices on real `rexnode join` processes (loopback, simulated renderer unless Blender is the
/// point): which node renders what, a node resting by its own clock, and `join` refusing what it cannot do.
extension ProcessTests {
    @Suite struct CapabilityClusterTests {
        /// The id of each node as it names itself in `peers --json`.
        func ids(_ nodes: [TestNode]) throws -> [String] {
            try nodes.map { node in
                let view = try #require(try node.json(["peers"]) as? [[String: Any]])
                return try #require(view.first { $0["self"] as? Bool == true }?["id"] as? String)
            }
        }

        func renderers(_ node: TestNode, _ job: String) throws -> [String] {
            try #require(try node.status(job)["frames"] as? [[String: Any]]).compactMap { $0["node"] as? String }
        }

        /// Runs `rexnode join` expecting it to refuse, and returns its stderr.
        func refusedJoin(_ args: [String]) throws -> CommandResult {
            let data = tempDir("refused")
            defer { try? FileManager.default.removeItem(atPath: data) }
            return try runProgram(
                TestPaths.rexnode,
                [
                    "join", "--data", data, "--listen", "127.0.0.1:0", "--interface", "127.0.0.1", "--discovery",
                    "239.255.77.\(TestNode.groupByte):\(TestNode.freshPort())",
                ] + args,
                timeout: 180)
        }

        @Test func aTaggedJobRendersOnlyOnNodesCarryingEveryTag() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let farm = try TestFarm(
                count: 3, args: ["--renderer", "simulated:40"],
                perNode: [1: ["--tags", "gpu,studio"], 2: ["--tags", "GPU"]])
            let ids = try self.ids(farm.nodes)
            // Every node sees the others' tags (from their beacons) and its own.
            try waitUntil(timeout: 20, "tags in every view") {
                try farm.nodes.allSatisfy { node in
                    let view = try #require(try node.json(["peers"]) as? [[String: Any]])
                    let tags = Dictionary(
                        uniqueKeysWithValues: view.map { ($0["id"] as? String ?? "", $0["tags"] as? [String] ?? []) })
                    return tags[ids[0]] == [] && tags[ids[1]] == ["gpu", "studio"] && tags[ids[2]] == ["gpu"]
                }
            }
            let both = try farm.nodes[0].submit([
                "--output", tempDir("tagged"), scene, "--frames", "1-8", "--chunk", "1", "--tags", "studio,gpu",
            ])
            let gpu = try farm.nodes[0].submit([
                "--output", tempDir("tagged"), scene, "--frames", "1-12", "--chunk", "1", "--tags", "gpu",
            ])
            let any = try farm.nodes[0].submit([
                "--output", tempDir("tagged"), scene, "--frames", "1-12", "--chunk", "1",
            ])
            for job in [both, gpu, any] {
                try farm.nodes[0].waitFor(job, timeout: 180) { $0["state"] as? String == "done" }
            }
            #expect(Set(try renderers(farm.nodes[0], both)) == [ids[1]])
            #expect(Set(try renderers(farm.nodes[0], gpu)).isSubset(of: [ids[1], ids[2]]))
            #expect(try renderers(farm.nodes[0], gpu).count == 12)
            #expect(try renderers(farm.nodes[0], any).count == 12)
            let table = try farm.nodes[0].cli(["peers"])
            #expect(table.stdout.contains("TAGS") && table.stdout.contains("gpu,studio"), "\(table)")
        }

        @Test func aJobWhoseTagsNoNodeHasWaitsAndSubmitSaysSoUntilOneJoins() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let first = try TestNode(args: ["--renderer", "simulated:20", "--beacon-ms", "200", "--dead-after", "2"])
            let r = try first.cli([
                "submit", scene, "--frames", "1-4", "--tags", "farside", "--no-wait", "--output", tempDir("farside"),
            ])
            #expect(r.status == 0, "\(r)")
            let job = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let warnings = r.stderr.split(separator: "\n").map(String.init).filter { $0.hasPrefix("warning:") }
            #expect(warnings.count == 1, "\(r)")
            let expected =
                "warning: No live node carries the tag farside; the job stays queued until one joins "
                + "(`rexnode join --tags farside`)."
            #expect(warnings.first == expected, "\(Array((warnings.first ?? "").utf8).suffix(8))")
            // The farm's only node lacks the tag: nothing is assigned (checked several times over a few seconds).
            for _ in 0..<10 {
                let frames = try #require(try first.status(job)["frames"] as? [[String: Any]])
                #expect(frames.allSatisfy { $0["state"] as? String == "queued" }, "\(frames)")
                usleep(300_000)
            }
            #expect(try first.status(job)["state"] as? String == "queued")
            // A node carrying the tag joins: it renders the job.
            let token = try first.cli(["token"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let second = try TestNode(
                name: "n2",
                args: [
                    "--token", token, "--renderer", "simulated:20", "--beacon-ms", "200", "--dead-after", "2",
                    "--tags", "farside",
                ], discoveryPort: first.discoveryPort)
            try first.waitFor(job, timeout: 120) { $0["state"] as? String == "done" }
            let ids = try self.ids([first, second])
            #expect(Set(try renderers(first, job)) == [ids[1]])
        }

        /// Both nodes read one clock-offset file (so their beacons stay within each other's time window); only the
        /// second has a schedule, open today and tomorrow. Moving the clock two days back closes it.
        @Test func aNodeOutsideItsScheduleHandsBackWorkAndTakesNoneUntilItWakes() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let offset = tempDir("clock") + "/offset"
            try "0".write(toFile: offset, atomically: true, encoding: .utf8)
            let names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
            let weekday = Calendar.current.component(.weekday, from: Date())
            let days = "\(names[weekday - 1]),\(names[weekday % 7])"
            let farm = try TestFarm(
                count: 2, args: ["--renderer", "simulated:1500"],
                perNode: [1: ["--tags", "night", "--schedule", days]],
                environment: ["REXNODE_CLOCK_OFFSET_FILE": offset])
            let ids = try self.ids(farm.nodes)
            let job = try farm.nodes[0].submit([
                "--output", tempDir("tagged"), scene, "--frames", "1-6", "--chunk", "6", "--tags", "night",
            ])
            try farm.nodes[0].waitFor(job, timeout: 60) { s in
                (s["frames"] as? [[String: Any]] ?? []).contains { $0["state"] as? String == "assigned" }
            }
            // The window closes while the node renders: the frame in flight finishes, the rest go back.
            try "\(-2 * 86_400_000)".write(toFile: offset, atomically: true, encoding: .utf8)
            func resting() throws -> [String: Any]? {
                let view = try #require(try farm.nodes[0].json(["peers"]) as? [[String: Any]])
                return view.first { $0["id"] as? String == ids[1] && $0["resting"] as? Bool == true }
            }
            try waitUntil(timeout: 30, "the scheduled node rests") { try resting() != nil }
            #expect(try resting()?["resting_until"] is String)
            #expect(try resting()?["state"] as? String == "alive")
            let handedBack = try farm.nodes[0].waitFor(job, timeout: 60) { s in
                (s["frames"] as? [[String: Any]] ?? []).allSatisfy { $0["state"] as? String != "assigned" }
            }
            let doneBefore = (handedBack["frames"] as? [[String: Any]] ?? []).filter {
                $0["state"] as? String == "done"
            }
            #expect(doneBefore.count < 6)
            // While it rests, it takes nothing (the other node lacks the tag).
            for _ in 0..<10 {
                let frames = try #require(try farm.nodes[0].status(job)["frames"] as? [[String: Any]])
                #expect(frames.allSatisfy { $0["state"] as? String != "assigned" }, "\(frames)")
                #expect(frames.filter { $0["state"] as? String == "done" }.count == doneBefore.count)
                usleep(300_000)
            }
            let table = try farm.nodes[0].cli(["peers"])
            #expect(table.stdout.contains("resting until"), "\(table)")
            // The clock comes back into the window: the node wakes and finishes the job.
            try "0".write(toFile: offset, atomically: true, encoding: .utf8)
            try farm.nodes[0].waitFor(job, timeout: 120) { $0["state"] as? String == "done" }
            #expect(Set(try renderers(farm.nodes[0], job)) == [ids[1]])
            #expect(try resting() == nil)
        }

        @Test func aBadScheduleOrDeviceFailsJoinInOneSentence() throws {
            for (args, start) in [
                (
                    ["--schedule", "mon-fri 19:00-31:00"],
                    "rexnode: --schedule \"mon-fri 19:00-31:00\" is not a schedule"
                ),
                (["--schedule", "weekends"], "rexnode: --schedule \"weekends\" is not a schedule"),
                (["--device", "GPU"], "rexnode: --device takes CPU, CUDA, OPTIX, HIP or ONEAPI"),
                (["--tags", "a b"], "rexnode: --tags takes comma-separated tags"),
            ] {
                let r = try refusedJoin(args + ["--renderer", "simulated:10"])
                #expect(r.status != 0, "\(args): \(r)")
                #expect(r.stderr.hasPrefix(start), "\(args): \(r)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r)")
            }
        }

        /// Real Blender: this machine has no GPU, so OPTIX is refused naming what Blender sees, and CPU renders.
        @Test func aDeviceBlenderCannotSeeFailsJoinAndCPURenders() throws {
            let r = try refusedJoin(["--device", "OPTIX", "--blender", TestPaths.blender])
            #expect(r.status != 0, "\(r)")
            #expect(r.stderr.hasPrefix("rexnode: --device OPTIX is not available: this node's Blender "), "\(r)")
            #expect(r.stderr.contains("sees only CPU"), "\(r)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(r)")
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let node = try TestNode(args: ["--device", "CPU", "--blender", TestPaths.blender])
            let view = try #require(try node.json(["peers"]) as? [[String: Any]])
            #expect(view.first?["devices"] as? [String] == ["CPU"])
            let out = tempDir("cpu")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let submit = try node.cli(["submit", scene, "--frames", "1-2", "--output", out])
            #expect(submit.status == 0, "\(submit)\n\(node.log)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasSuffix(".png") }.count == 2)
        }
    }
}
