import Foundation
import Testing

/// Steering jobs on real farms: failures scoped to the node (real Blender beside a broken one), retry, pause and
/// resume, names and prefixes, outputs never overwritten, remove, and one sentence for every bad request.
extension ProcessTests {
    @Suite struct JobControlTests {
        /// A copy of the broken-Blender stand-in in its own folder (its "fixed" marker is per test).
        static func brokenBlender() throws -> (path: String, fix: () -> Void) {
            let dir = tempDir("broken-blender")
            let path = dir + "/blender"
            try FileManager.default.copyItem(atPath: "\(TestPaths.root)/Tests/Fixtures/broken_blender.sh", toPath: path)
            return (path, { _ = FileManager.default.createFile(atPath: dir + "/fixed", contents: nil) })
        }

        static func frames(_ status: [String: Any]) -> [[String: Any]] { status["frames"] as? [[String: Any]] ?? [] }

        static func nodeIDs(_ farm: TestFarm) throws -> [String: String] {
            var ids: [String: String] = [:]
            for node in farm.nodes {
                let view = try #require(try node.json(["peers"]) as? [[String: Any]])
                let me = try #require(view.first { $0["self"] as? Bool == true })
                ids[node.name] = me["id"] as? String
            }
            return ids
        }

        @Test func aNodeWhoseBlenderFailsEveryRenderIsBlockedAndTheJobCompletesOnTheOthers() throws {
            let scene = try Scenes.make(["--frames", "12", "--width", "32", "--height", "24", "--samples", "1"])
            let broken = try Self.brokenBlender()
            let farm = try TestFarm(
                count: 3, args: ["--slots", "1"], perNode: [2: ["--blender", broken.path]])
            let ids = try Self.nodeIDs(farm)
            let out = tempDir("scoped-out")
            let submitter = farm.nodes[0]
            let job = try submitter.submit([scene, "--chunk", "1", "--output", out])
            let done = try submitter.waitFor(job, timeout: 240) {
                ($0["state"] as? String).map { $0 != "running" && $0 != "queued" } ?? false
            }
            #expect(done["state"] as? String == "done", "\(done)")
            #expect(done["frames_failed"] as? Int == 0)
            let frames = Self.frames(done)
            #expect(frames.count == 12)
            // No frame was rendered by the broken node; it did fail some, and each failure names it.
            #expect(!frames.contains { $0["node"] as? String == ids["n3"] })
            let failures = frames.flatMap { $0["failures"] as? [[String: Any]] ?? [] }
            #expect(!failures.isEmpty, "the broken node was never given a frame")
            #expect(failures.allSatisfy { $0["node_name"] as? String == "n3" })
            #expect(failures.allSatisfy { ($0["message"] as? String ?? "").contains("n3") })
            #expect(failures.contains { ($0["message"] as? String ?? "").contains("Not enough memory") })
            // Three failures on the job block the node for it, and status names it.
            let blocked = done["blocked_nodes"] as? [String] ?? []
            #expect(blocked == (failures.count >= 3 ? ["n3"] : []), "\(failures.count) failures, blocked \(blocked)")
            // Every done frame carries its node's name and render time.
            #expect(frames.allSatisfy { ["n1", "n2"].contains($0["node_name"] as? String ?? "") })
            #expect(frames.allSatisfy { ($0["render_seconds"] as? Double ?? -1) >= 0 })
            // And every frame is on the user's disk.
            let files = try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasSuffix(".png") }
            #expect(files.count == 12, "\(files)")
        }

        @Test func framesThatFailEverywhereEndFailedAndRetryAfterTheFixFinishesThem() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let broken = try Self.brokenBlender()
            let farm = try TestFarm(count: 2, args: ["--slots", "1", "--blender", broken.path, "--blend-grace", "1"])
            let out = tempDir("retry-out")
            let node = farm.nodes[0]
            let job = try node.submit([scene, "--chunk", "1", "--output", out])
            let failed = try node.waitFor(job, timeout: 240) { $0["state"] as? String == "failed" }
            #expect(failed["frames_failed"] as? Int == 2)
            for frame in Self.frames(failed) {
                #expect(frame["state"] as? String == "failed")
                // Three attempts at least, on both nodes (one node may have had more while the other was busy).
                #expect((frame["attempts"] as? Int ?? 0) >= 3, "\(frame)")
                // Failed on both nodes before it failed for good.
                // On both nodes, or on one while the other was blocked for the job (then it was the only one able).
                let nodes = Set((frame["failures"] as? [[String: Any]] ?? []).compactMap { $0["node_name"] as? String })
                let blocked = Set(failed["blocked_nodes"] as? [String] ?? [])
                #expect(
                    nodes == ["n1", "n2"]
                        || nodes.count == 1 && blocked.isSuperset(of: Set(["n1", "n2"]).subtracting(nodes)),
                    "\(frame) \(blocked)")
            }
            #expect((failed["message"] as? String ?? "").contains("Not enough memory"))
            // `wait` on a failed job ends as `submit` does: one sentence, non-zero.
            let waited = try node.cli(["wait", job])
            #expect(waited.status != 0)
            #expect(waited.stderr.contains("Job \(job) failed"), "\(waited)")
            // The cause is fixed: retry, then wait re-attaches and exits 0 with every frame in place.
            broken.fix()
            let retried = try node.cli(["retry", job])
            #expect(retried.status == 0, "\(retried)")
            #expect(retried.stdout.contains("2 failed frames"), "\(retried)")
            let finished = try node.cli(["wait", job], timeout: 240)
            #expect(finished.status == 0, "\(finished)")
            #expect(finished.stdout.contains("All 2 frames are in \(out)"), "\(finished)")
            // Nothing left to retry: one sentence.
            let again = try node.cli(["retry", job])
            #expect(again.status != 0)
            #expect(again.stderr.contains("has no failed frame"), "\(again)")
            // Rerun: a new job from the same files and settings, into a folder of its own, the first one untouched.
            let before = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
            let rerun = try node.cli(["rerun", job], timeout: 240)
            #expect(rerun.status == 0, "\(rerun)")
            #expect(rerun.stdout.contains("All 2 frames are in \(out)-2"), "\(rerun)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: out).sorted() == before)
            // The same pixels (the text chunks carry the render's date and time).
            for file in before where file.hasSuffix(".png") {
                let first = Self.pngImageData("\(out)/\(file)")
                #expect(first != nil && first == Self.pngImageData("\(out)-2/\(file)"), "\(file)")
            }
        }

        @Test func pauseHoldsAJobAfterItsFramesInFlightAndResumeFinishesIt() throws {
            let scene = try Scenes.make(["--frames", "30", "--width", "64", "--height", "48", "--samples", "8"])
            let node = try TestNode(args: ["--slots", "1"])
            let out = tempDir("pause-out")
            let job = try node.submit([scene, "--chunk", "5", "--output", out])
            try node.waitFor(job, timeout: 180) { ($0["frames_done"] as? Int ?? 0) >= 1 }
            let paused = try node.cli(["pause", job])
            #expect(paused.status == 0, "\(paused)")
            #expect(try node.status(job)["state"] as? String == "paused")
            // Frames in flight finish; then nothing more completes.
            let settled = try node.waitFor(job) { s in !Self.frames(s).contains { $0["state"] as? String == "assigned" }
            }
            let held = settled["frames_done"] as? Int ?? 0
            #expect(held < 30)
            Thread.sleep(forTimeInterval: 3)
            let later = try node.status(job)
            #expect(later["frames_done"] as? Int == held)
            #expect(later["state"] as? String == "paused")
            // Pausing twice, or resuming a job that is not paused, is one sentence.
            let twice = try node.cli(["pause", job])
            #expect(twice.status != 0 && twice.stderr.contains("already paused"), "\(twice)")
            let resumed = try node.cli(["resume", job])
            #expect(resumed.status == 0, "\(resumed)")
            let finished = try node.cli(["wait", job], timeout: 240)
            #expect(finished.status == 0, "\(finished)")
            #expect(finished.stdout.contains("All 30 frames are in \(out)"), "\(finished)")
            #expect(
                try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasSuffix(".png") }.count == 30)
            let notPaused = try node.cli(["resume", job])
            #expect(notPaused.status != 0 && notPaused.stderr.contains("not paused"), "\(notPaused)")
        }

        @Test func ctrlCOnSubmitLeavesTheJobRunningAndSaysHowToFollowOrStopIt() throws {
            let node = try TestNode(args: ["--renderer", "simulated:300"])
            let scene = tempDir("ctrlc") + "/scene.blend"
            _ = FileManager.default.createFile(
                atPath: scene, contents: Data(Array("BLENDER-v304".utf8) + Array(repeating: 0, count: 64)))
            let dir = tempDir("ctrlc-run")
            let process = Process()
            process.executableURL = URL(fileURLWithPath: TestPaths.rexnode)
            process.arguments = ["submit", scene, "--frames", "1-100", "--output", dir + "/out", "--data", node.data]
            _ = FileManager.default.createFile(atPath: dir + "/o", contents: nil)
            _ = FileManager.default.createFile(atPath: dir + "/e", contents: nil)
            process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/o"))
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/e"))
            try process.run()
            defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
            try waitUntil(timeout: 60, "submit to print its job line") {
                ((try? String(contentsOfFile: dir + "/o", encoding: .utf8)) ?? "").contains("frames) →")
            }
            let job = try #require(
                ((try? String(contentsOfFile: dir + "/o", encoding: .utf8)) ?? "").split(separator: " ").dropFirst()
                    .first.map(String.init))
            kill(process.processIdentifier, SIGINT)
            process.waitUntilExit()
            let stderr = (try? String(contentsOfFile: dir + "/e", encoding: .utf8)) ?? ""
            #expect(process.terminationStatus == 130)
            #expect(stderr.contains("keeps running"), "\(stderr)")
            #expect(stderr.contains("rexnode wait \(job)") && stderr.contains("rexnode cancel \(job)"), "\(stderr)")
            #expect(["queued", "running"].contains(try node.status(job)["state"] as? String ?? ""))
        }

        @Test func aSecondJobIntoAUsedFolderLeavesTheFirstJobsFilesAndNamesFindJobs() throws {
            let node = try TestNode(args: ["--renderer", "simulated:20", "--blend-grace", "1"])
            let dir = tempDir("names")
            let scene = dir + "/shot.blend"
            _ = FileManager.default.createFile(
                atPath: scene, contents: Data(Array("BLENDER-v304".utf8) + Array(repeating: 0, count: 64)))
            let out = dir + "/out"
            let first = try node.cli(["submit", scene, "--frames", "1-3", "--output", out])
            #expect(first.status == 0, "\(first)")
            let before = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
            let bytes = before.map { FileManager.default.contents(atPath: "\(out)/\($0)") }
            #expect(before.count == 3)
            // Same name, same folder: the second job writes beside it, and says so.
            let second = try node.cli(["submit", scene, "--frames", "4-6", "--output", out, "--json"])
            #expect(second.status == 0, "\(second)")
            #expect(second.stderr.contains("writes to \(out)-2"), "\(second)")
            let summary = try #require(
                try JSONSerialization.jsonObject(with: Data(second.stdout.utf8)) as? [String: Any])
            #expect(summary["output"] as? String == out + "-2")
            #expect(try FileManager.default.contentsOfDirectory(atPath: out).sorted() == before)
            #expect(before.map { FileManager.default.contents(atPath: "\(out)/\($0)") } == bytes)
            #expect(
                try FileManager.default.contentsOfDirectory(atPath: out + "-2").filter { $0.hasSuffix(".png") }.count
                    == 3)
            // Two jobs named "shot": the name is ambiguous, and the sentence lists both.
            let ids = try #require(try node.json(["jobs"]) as? [[String: Any]]).compactMap { $0["job"] as? String }
            #expect(ids.count == 2)
            let ambiguous = try node.cli(["status", "shot"])
            #expect(ambiguous.status != 0)
            #expect(ids.allSatisfy { ambiguous.stderr.contains($0) }, "\(ambiguous)")
            // A unique prefix works; so does a unique name.
            let prefix = String(ids[1].dropLast())
            if !ids[0].hasPrefix(prefix) { #expect(try node.status(prefix)["job"] as? String == ids[1]) }
            let renamed = try node.cli(["submit", scene, "--frames", "7", "--name", "other", "--output", dir + "/o2"])
            #expect(renamed.status == 0, "\(renamed)")
            #expect(try node.status("other")["name"] as? String == "other")
            // Remove the first job: it leaves `jobs`, its images (no other job has them: the simulated renderer's
            // image depends on the frame alone) leave the blob store, its frames stay on disk.
            let image = try #require(Self.frames(try node.status(ids[0])).first?["hash"] as? String)
            #expect(Self.blobFiles(node.data).contains(image))
            let removed = try node.cli(["remove", ids[0]])
            #expect(removed.status == 0, "\(removed)")
            let left = try #require(try node.json(["jobs"]) as? [[String: Any]]).compactMap { $0["job"] as? String }
            #expect(!left.contains(ids[0]))
            try waitUntil(timeout: 30, "the removed job's image to leave the blob store") {
                !Self.blobFiles(node.data).contains(image)
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: out).sorted() == before)
            let gone = try node.cli(["status", ids[0]])
            #expect(gone.status != 0 && gone.stderr.contains("There is no job"), "\(gone)")
        }

        /// A PNG's IDAT bytes: its pixels as the encoder wrote them, without its text chunks.
        static func pngImageData(_ path: String) -> [UInt8]? {
            guard let data = FileManager.default.contents(atPath: path).map(Array.init), data.count > 8 else {
                return nil
            }
            var at = 8
            var pixels: [UInt8] = []
            while at + 8 <= data.count {
                let length = data[at..<at + 4].reduce(0) { $0 << 8 | Int($1) }
                let type = String(decoding: data[at + 4..<at + 8], as: UTF8.self)
                guard at + 12 + length <= data.count else { return nil }
                if type == "IDAT" { pixels += data[at + 8..<at + 8 + length] }
                at += 12 + length
            }
            return pixels.isEmpty ? nil : pixels
        }

        static func blobFiles(_ data: String) -> Set<String> {
            let all = FileManager.default.enumerator(atPath: "\(data)/blobs")?.allObjects as? [String] ?? []
            return Set(all.map { ($0 as NSString).lastPathComponent })
        }

        @Test func everyJobCommandGivesOneSentenceForBadInput() throws {
            let node = try TestNode(args: ["--renderer", "simulated:2000"])
            let scene = tempDir("bad") + "/scene.blend"
            _ = FileManager.default.createFile(
                atPath: scene, contents: Data(Array("BLENDER-v304".utf8) + Array(repeating: 0, count: 64)))
            for command in [
                ["pause", "nosuch"], ["resume", "nosuch"], ["retry", "nosuch"], ["priority", "nosuch", "3"],
                ["rerun", "nosuch"], ["remove", "nosuch"], ["wait", "nosuch"],
            ] {
                let r = try node.cli(command)
                #expect(r.status != 0, "\(command): \(r)")
                #expect(r.stderr.contains("There is no job 'nosuch'"), "\(command): \(r)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(command): \(r)")
            }
            let job = try node.submit([scene, "--frames", "1-20", "--output", tempDir("bad-out")])
            let running = try node.cli(["remove", job])
            #expect(running.status != 0 && running.stderr.contains("--force"), "\(running)")
            let badFrames = try node.cli(["retry", job, "--frames", "x-y"])
            #expect(badFrames.status != 0 && badFrames.stderr.split(separator: "\n").count == 1, "\(badFrames)")
            let noFailed = try node.cli(["retry", job])
            #expect(noFailed.status != 0 && noFailed.stderr.contains("no failed frame"), "\(noFailed)")
            let badPriority = try node.cli(["priority", job, "high"])
            #expect(badPriority.status != 0 && badPriority.stderr.split(separator: "\n").count == 1, "\(badPriority)")
            let lowered = try node.cli(["priority", job, "-5"])
            #expect(lowered.status == 0 && lowered.stdout.contains("priority -5"), "\(lowered)")
            let raised = try node.cli(["priority", job, "7"])
            #expect(raised.status == 0 && raised.stdout.contains("priority 7"), "\(raised)")
            let forced = try node.cli(["remove", job, "--force"])
            #expect(forced.status == 0, "\(forced)")
            let list = try #require(try node.json(["jobs"]) as? [[String: Any]])
            #expect(list.isEmpty, "\(list)")
        }
    }
}
