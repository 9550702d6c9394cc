import Foundation
import Testing

/// Tests that start real `rexnode join` processes: one at a time, so real Blender has the machine's cores.
@Suite(.serialized) enum ProcessTests {}

/// A one-node farm as a user runs it: a real `rexnode join` process, real Blender, real SQLite, the CLI.
extension ProcessTests {
@Suite struct OneNodeFarmTests {
    @Test func rendersAGeneratedSceneIntoTheOutputFolder() throws {
        let scene = try Scenes.make(["--frames", "4", "--width", "64", "--height", "48", "--samples", "4"])
        let node = try TestNode()
        let out = tempDir("out")
        defer { try? FileManager.default.removeItem(atPath: out) }

        // No --frames: the range comes from the scene itself (4 frames).
        let r = try node.cli(["submit", scene, "--output", out, "--name", "shot", "--json"], timeout: 180)
        #expect(r.status == 0, "\(r)\n\(node.log)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(Set(summary.keys) == ["job", "state", "frames_total", "frames_done", "output"])
        #expect(summary["state"] as? String == "done")
        #expect(summary["frames_total"] as? Int == 4)
        #expect(summary["frames_done"] as? Int == 4)

        let files = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
        #expect(files == ["shot_0001.png", "shot_0002.png", "shot_0003.png", "shot_0004.png"])
        var contents = Set<Data>()
        for file in files {
            let size = pngSize("\(out)/\(file)")
            #expect(size?.width == 64 && size?.height == 48, "\(file) is \(String(describing: size))")
            contents.insert(try #require(FileManager.default.contents(atPath: "\(out)/\(file)")))
        }
        #expect(contents.count == 4, "every frame differs")

        // The contract's JSON views agree with what happened.
        let job = try #require(summary["job"] as? String)
        let status = try node.status(job)
        let frames = try #require(status["frames"] as? [[String: Any]])
        #expect(frames.count == 4)
        for frame in frames {
            for key in ["frame", "state", "node", "hash", "holders"] { #expect(frame[key] != nil, "\(key)") }
            #expect(frame["state"] as? String == "done")
            #expect((frame["holders"] as? [String])?.count == 1)
        }
        let peers = try #require(try node.json(["peers"]) as? [[String: Any]])
        #expect(peers.count == 1)
        #expect(peers[0]["role"] as? String == "leader")
        #expect(peers[0]["state"] as? String == "alive")
        #expect(peers[0]["self"] as? Bool == true)
        #expect(peers[0]["frames_done"] as? Int == 4)
        for key in ["id", "name", "address", "slots"] { #expect(peers[0][key] != nil, "\(key)") }
        let jobs = try #require(try node.json(["jobs"]) as? [[String: Any]])
        #expect(jobs.map { $0["job"] as? String } == [job])
        #expect(jobs[0]["state"] as? String == "done")
        let ledger = try #require(try node.json(["ledger"]) as? [[String: Any]])
        let types = ledger.compactMap { $0["type"] as? String }
        #expect(types.first == "AddNode", "the farm of one founded itself")
        #expect(types.filter { $0 == "SubmitJob" }.count == 1)
        #expect(types.filter { $0 == "CompleteFrame" }.count == 4)
        #expect(ledger.map { $0["index"] as? Int } == Array(1...ledger.count).map { Optional($0) })
        let completions = ledger.filter { $0["type"] as? String == "CompleteFrame" }
        #expect(completions.allSatisfy { $0["outcome"] as? String == "applied" }, "\(completions)")
        #expect(ledger.allSatisfy { ["applied", "ignored", "duplicate"].contains($0["outcome"] as? String ?? "") })
        // The node's own row: the Raft term it is in, and itself as leader.
        #expect((peers[0]["term"] as? Int ?? 0) >= 1)
        #expect(peers[0]["leader"] as? String == peers[0]["id"] as? String)
        #expect(
            node.log.split(separator: "\n").contains {
                $0.contains("raft role changed") && $0.contains("raft/role=leader") && $0.contains("raft/term=")
            }, "\(node.log)")

        // fetch copies the same frames from the node's blob store.
        let fetched = tempDir("fetch")
        defer { try? FileManager.default.removeItem(atPath: fetched) }
        let f = try node.cli(["fetch", job, "--output", fetched])
        #expect(f.status == 0, "\(f)")
        for file in files {
            #expect(
                FileManager.default.contents(atPath: "\(fetched)/\(file)")
                    == FileManager.default.contents(atPath: "\(out)/\(file)"))
        }
    }

    @Test func badInputGetsOneSentenceAndTheNodeStaysUp() throws {
        let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
        let node = try TestNode()
        let dir = tempDir("bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = "\(dir)/notes.blend"
        try "just some text\n".write(toFile: text, atomically: true, encoding: .utf8)
        let truncated = "\(dir)/truncated.blend"
        let whole = try #require(FileManager.default.contents(atPath: scene))
        try whole.prefix(whole.count / 3).write(to: URL(fileURLWithPath: truncated))
        try Data().write(to: URL(fileURLWithPath: "\(dir)/file"))

        let cases: [([String], String)] = [
            ([text], "not a Blender file"),
            (["\(dir)/missing.blend"], "does not exist"),
            ([truncated], "Blender could not load"),
            ([scene, "--frames", "9-3"], "backwards"),
            ([scene, "--frames", "abc"], "not a frame"),
            ([scene, "--frames=-5"], "negative"),
            ([scene, "--frames", "1-5000000"], "beyond Blender"),
            ([scene, "--frames", "1-300000"], "more than"),
            ([scene, "--output", "\(dir)/file/out"], "Cannot create the output folder"),
        ]
        for (args, fragment) in cases {
            let r = try node.cli(["submit"] + args)
            #expect(r.status != 0, "\(args) should fail")
            #expect(r.stderr.contains(fragment), "\(args): \(r.stderr)")
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1, "one sentence for \(args): \(r.stderr)")
        }
        // A second daemon on the same data folder refuses.
        let second = try node.cli(["join"], timeout: 30)
        #expect(second.status != 0)
        #expect(second.stderr.contains("already running"), "\(second)")
        // Still alive and nothing was queued.
        #expect(node.isRunning)
        #expect((try node.json(["jobs"]) as? [Any])?.isEmpty == true)
        // A missing Blender is a clear error at start.
        let noBlender = try runProgram(
            TestPaths.rexnode, ["join", "--data", "\(dir)/nb", "--blender", "\(dir)/no-such-blender"], timeout: 30)
        #expect(noBlender.status != 0)
        #expect(noBlender.stderr.lowercased().contains("blender"), "\(noBlender)")
    }

    @Test func blendersOwnErrorReachesTheUserAfterThreeAttempts() throws {
        // Debian's Blender has no OpenImageDenoise: a scene with denoising on fails in Blender itself.
        let scene = try Scenes.make(["--frames", "1", "--width", "32", "--height", "24", "--samples", "1", "--denoise"])
        let node = try TestNode()
        let out = tempDir("denoise")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try node.cli(["submit", scene, "--output", out], timeout: 180)
        #expect(r.status != 0)
        #expect(r.stderr.contains("OpenImageDenoiser"), "\(r)")
        let job = try #require((try node.json(["jobs"]) as? [[String: Any]])?.first?["job"] as? String)
        let status = try node.status(job)
        #expect(status["state"] as? String == "failed")
        let frame = try #require((status["frames"] as? [[String: Any]])?.first)
        #expect(frame["state"] as? String == "failed")
        #expect(frame["attempts"] as? Int == 3)
        #expect(node.isRunning)
    }

    @Test func aBlenderThatCrashesMidFrameIsRetriedThenTheFrameFails() throws {
        let dir = tempDir("crash")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fake = "\(dir)/blender"
        try """
            #!/bin/sh
            if [ "$1" = "--version" ]; then echo "Blender 3.4.1"; exit 0; fi
            # At submit (rex_prepare.py): a project of one file, traced like the real script does.
            case "$*" in *rex_prepare.py*)
                while [ "$1" != "--trace-to" ]; do shift; done
                echo '{"references": [], "scripts": [], "simulations": [], "unbakeable": []}' > "$2"
                printf '\n@@REX {"event":"trace","path":"%s"}\n' "$2"
                printf '\n@@REX {"event":"scene","frameStart":1,"frameEnd":2,"frameStep":1,"resolutionX":32,'
                printf '"resolutionY":24,"resolutionPercentage":100,"engine":"CYCLES","fileFormat":"PNG",'
                printf '"fileExtension":".png"}\n'
                exit 0;;
            esac
            # Load the "scene" like the real driver, then die in the middle of the first frame.
            printf '\n@@REX {"event":"scene","frameStart":1,"frameEnd":2,"frameStep":1,"resolutionX":32,'
            printf '"resolutionY":24,"resolutionPercentage":100,"engine":"CYCLES","fileFormat":"PNG",'
            printf '"fileExtension":".png","pid":%s}\n' $$
            read request
            echo "Fra:1 Mem:10M | Sample 1/8"
            echo "Error: simulated crash in the render kernel"
            kill -SEGV $$
            """.write(toFile: fake, atomically: true, encoding: .utf8)
        chmod(fake, 0o755)
        let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
        let node = try TestNode(args: ["--blender", fake])
        let job = try node.submit([scene, "--frames", "1-2", "--output", "\(dir)/out", "--chunk", "1"])
        let status = try node.waitFor(job, timeout: 60) { ($0["state"] as? String) == "failed" }
        for frame in try #require(status["frames"] as? [[String: Any]]) {
            #expect(frame["state"] as? String == "failed")
            #expect(frame["attempts"] as? Int == 3)
        }
        let message = try #require(status["message"] as? String)
        #expect(message.contains("simulated crash") || message.lowercased().contains("crash"), "\(message)")
        #expect(node.isRunning, "the daemon survives a crashing Blender")
    }

    @Test func killDashNineMidJobThenRestartResumesWithoutLosingOrRepeatingFrames() throws {
        let scene = try Scenes.make(["--frames", "10", "--width", "96", "--height", "54", "--samples", "16"])
        let node = try TestNode()
        let out = tempDir("kill")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let job = try node.submit([scene, "--output", out, "--chunk", "3"])
        try node.waitFor(job, timeout: 120) { ($0["frames_done"] as? Int ?? 0) >= 3 }
        node.kill9()
        let before = Set(try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasSuffix(".png") })
        let stamps = Dictionary(
            uniqueKeysWithValues: before.map {
                ($0, (try? FileManager.default.attributesOfItem(atPath: "\(out)/\($0)")[.modificationDate]) as? Date)
            })
        // Blender's driver ends when the daemon's pipe closes: no orphan keeps rendering.
        let deadline = Date().addingTimeInterval(20)
        while !processes(matching: node.data).isEmpty && Date() < deadline { usleep(100_000) }
        #expect(processes(matching: node.data).isEmpty, "Blender outlived a killed daemon")

        try node.start()
        let status = try node.waitFor(job, timeout: 180) { ($0["state"] as? String) == "done" }
        #expect(status["frames_done"] as? Int == 10)
        // Wait for delivery of the last frames, then check every frame is there exactly once.
        let deliveryDeadline = Date().addingTimeInterval(10)
        var files: [String] = []
        repeat {
            files = try FileManager.default.contentsOfDirectory(atPath: out).filter { !$0.hasPrefix(".") }.sorted()
            if files.count == 10 { break }
            usleep(100_000)
        } while Date() < deliveryDeadline
        let name = ((scene as NSString).lastPathComponent as NSString).deletingPathExtension
        #expect(files == (1...10).map { String(format: "\(name)_%04d.png", $0) }, "\(files)")
        // Frames delivered before the kill were not written again.
        for file in before {
            let now = (try? FileManager.default.attributesOfItem(atPath: "\(out)/\(file)")[.modificationDate]) as? Date
            #expect(now == stamps[file] ?? nil, "\(file) was rewritten")
        }
        let ledger = try #require(try node.json(["ledger"]) as? [[String: Any]])
        // Every frame committed exactly once (an ignored late completion would show as a second entry).
        let completions = ledger.filter { $0["type"] as? String == "CompleteFrame" }.compactMap { $0["frame"] as? Int }
        #expect(
            completions.sorted() == Array(1...10),
            "\(ledger.filter { $0["type"] as? String == "CompleteFrame" || $0["type"] as? String == "AssignChunk" })")
    }

    @Test func cancelStopsBlenderAndTheWaitingSubmitFails() throws {
        let scene = try Scenes.make(["--frames", "40", "--width", "160", "--height", "90", "--samples", "32"])
        let node = try TestNode()
        let out = tempDir("cancel")
        defer { try? FileManager.default.removeItem(atPath: out) }
        // A waiting `submit`, as a user runs it.
        let submit = Process()
        submit.executableURL = URL(fileURLWithPath: TestPaths.rexnode)
        submit.arguments = ["submit", scene, "--output", out, "--chunk", "40", "--data", node.data]
        let errors = Pipe()
        submit.standardError = errors
        submit.standardOutput = FileHandle.nullDevice
        try submit.run()
        let startDeadline = Date().addingTimeInterval(60)
        var running: String?
        while Date() < startDeadline {
            running = (try? node.json(["jobs"]) as? [[String: Any]])?.first?["state"] as? String == "running"
                ? ((try? node.json(["jobs"]) as? [[String: Any]])?.first?["job"] as? String) : nil
            if running != nil && !processes(matching: "\(node.data)/work/").isEmpty { break }
            usleep(100_000)
        }
        #expect(!processes(matching: "\(node.data)/work/").isEmpty, "Blender never started")
        let job = try #require(running)
        let c = try node.cli(["cancel", job])
        #expect(c.status == 0, "\(c)")
        // Generous: on a busy machine the kill and the reaper's pass can take a while.
        let deadline = Date().addingTimeInterval(60)
        while !processes(matching: "\(node.data)/work/").isEmpty && Date() < deadline { usleep(100_000) }
        #expect(processes(matching: "\(node.data)/work/").isEmpty, "Blender still running after cancel")
        #expect(try node.status(job)["state"] as? String == "canceled")
        let exitDeadline = Date().addingTimeInterval(15)
        while submit.isRunning && Date() < exitDeadline { usleep(50_000) }
        if submit.isRunning { submit.terminate() }
        submit.waitUntilExit()
        #expect(submit.terminationStatus != 0, "a canceled job's submit must exit non-zero")
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(message.contains("canceled"), "\(message)")
        let again = try node.cli(["cancel", job])
        #expect(again.status != 0)
        #expect(again.stderr.contains("already canceled"), "\(again)")
    }

    /// Found by the fault suite: a script reading `submit` through a pipe got the "Job ID" line only when the
    /// job ended (stdout was block-buffered), so it could not tell an accepted job from a refused one.
    @Test func aPipedSubmitReportsItsJobIdWhileTheJobIsStillRunning() throws {
        let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
        let node = try TestNode(args: ["--renderer", "simulated:200", "--slots", "1"])
        let out = tempDir("piped")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let submit = Process()
        submit.executableURL = URL(fileURLWithPath: TestPaths.rexnode)
        submit.arguments = ["submit", scene, "--frames", "1-20", "--chunk", "1", "--output", out, "--data", node.data]
        let pipe = Pipe()
        submit.standardOutput = pipe
        submit.standardError = FileHandle.nullDevice
        try submit.run()
        defer {
            if submit.isRunning { submit.terminate() }
            submit.waitUntilExit()
        }
        var first = Data()
        while !first.contains(UInt8(ascii: "\n")) {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            first.append(chunk)
        }
        let line = String(decoding: first, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        #expect(line.hasPrefix("Job j") && line.contains("(20 frames)"), "\(line)")
        // 20 frames at 200 ms on one slot take 4 s: the line must have come while the job was still running.
        let job = String(line.dropFirst(4).prefix { $0 != " " })
        let state = try node.status(job)["state"] as? String
        #expect(state == "running" || state == "queued", "job \(job) is \(state ?? "unknown") already")
        #expect(submit.isRunning)
    }

    @Test func simulatedRendererFarmThenLeaveStopsTheDaemonCleanly() throws {
        let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
        let node = try TestNode(args: ["--renderer", "simulated:5", "--slots", "2", "--blend-grace", "0.5"])
        let out = tempDir("sim")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try node.cli(["submit", scene, "--frames", "1-40x2", "--chunk", "4", "--output", out])
        #expect(r.status == 0, "\(r)")
        let files = try FileManager.default.contentsOfDirectory(atPath: out).filter { !$0.hasPrefix(".") }
        #expect(files.count == 20)
        #expect(files.allSatisfy { pngSize("\(out)/\($0)") != nil })
        // The finished job's .blend stays on its submitter past the grace period (retry and rerun need it) and
        // leaves, with the job's images, once the job is removed.
        let sceneHash = try #require(
            try FileManager.default.subpathsOfDirectory(atPath: node.data + "/blobs").first { path in
                FileManager.default.contents(atPath: node.data + "/blobs/" + path).map {
                    $0.prefix(7) == Data("BLENDER".utf8)
                } ?? false
            })
        func images() throws -> [String] {
            try FileManager.default.subpathsOfDirectory(atPath: node.data + "/blobs").filter {
                $0.count > 60 && !$0.hasPrefix("tmp") && !$0.hasPrefix("partial") && $0 != sceneHash
            }
        }
        Thread.sleep(forTimeInterval: 1.5)
        #expect(FileManager.default.fileExists(atPath: node.data + "/blobs/" + sceneHash))
        #expect(try images().count == 20)
        let job = try #require((try node.json(["jobs"]) as? [[String: Any]])?.first?["job"] as? String)
        let removed = try node.cli(["remove", job])
        #expect(removed.status == 0, "\(removed)")
        try waitUntil(timeout: 10, "the scene and the images are dropped") {
            try !FileManager.default.fileExists(atPath: node.data + "/blobs/" + sceneHash) && images().isEmpty
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).filter { !$0.hasPrefix(".") }.count == 20)
        let leave = try node.cli(["leave"])
        #expect(leave.status == 0, "\(leave)")
        let deadline = Date().addingTimeInterval(10)
        while node.isRunning && Date() < deadline { usleep(50_000) }
        #expect(!node.isRunning)
        #expect(node.process?.terminationStatus == 0, "\(node.log)")
        #expect(!FileManager.default.fileExists(atPath: node.data + "/rexnode.sock"))
        // The CLI says so in one sentence when no daemon runs.
        let peers = try node.cli(["peers"])
        #expect(peers.status != 0)
        #expect(peers.stderr.contains("No rexnode daemon is running"), "\(peers)")
    }
}
}
