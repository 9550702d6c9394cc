import Foundation
import Testing

/// `rexnode log` across real nodes with real Blender: a frame's output comes over the mesh from the node that
/// rendered it (issue 12).
extension ProcessTests {
    @Suite struct FrameLogClusterTests {
        /// The node ids of a farm's nodes, from each one's own `peers` row.
        func ids(_ farm: TestFarm) throws -> [String] {
            try farm.nodes.map { node in
                let view = try #require(try node.json(["peers"]) as? [[String: Any]])
                return try #require(view.first { $0["self"] as? Bool == true }?["id"] as? String)
            }
        }

        func frames(_ node: TestNode, _ job: String) throws -> [[String: Any]] {
            try #require(try node.status(job)["frames"] as? [[String: Any]])
        }

        @Test func logOnOneNodeShowsBlendersOwnLinesFromTheNodeThatRenderedTheFrame() throws {
            let scene = try Scenes.make(["--frames", "4", "--width", "32", "--height", "24", "--samples", "2"])
            let farm = try TestFarm(count: 2, args: [])
            let ids = try ids(farm)
            let out = tempDir("logs")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try farm.nodes[0].cli(["submit", scene, "--chunk", "1", "--output", out + "/ok"], timeout: 240)
            #expect(r.status == 0, "\(r)")
            let job = try #require((try farm.nodes[0].json(["jobs"]) as? [[String: Any]])?.first?["job"] as? String)

            // Whichever node rendered frame 1, the other one asks for its log.
            let row = try #require(try frames(farm.nodes[0], job).first { $0["frame"] as? Int == 1 })
            let rendererID = try #require(row["node"] as? String)
            let renderer = try #require(ids.firstIndex(of: rendererID))
            let (maker, asker) = (farm.nodes[renderer], farm.nodes[1 - renderer])
            let text = try asker.cli(["log", job, "1"])
            #expect(text.status == 0, "\(text)")
            #expect(text.stdout.contains("=== frame 1 · attempt 1 · node \(maker.name) ("), "\(text)")
            #expect(text.stdout.contains(" · done · "), "\(text)")
            let lines = text.stdout.split(separator: "\n")
            #expect(lines.contains { $0.hasPrefix("Fra:1 ") }, "Blender's progress lines: \(text)")
            #expect(lines.contains { $0.contains("Saved:") }, "Blender's own Saved: line: \(text)")
            #expect(!lines.contains { $0.hasPrefix("Fra:2 ") || $0.hasPrefix("Fra:3 ") }, "only frame 1: \(text)")

            let json = try #require(try asker.json(["log", job, "1"]) as? [[String: Any]])
            #expect(json.count == 1)
            let entry = try #require(json.first)
            #expect(Set(["node", "name", "attempt", "frame", "outcome", "lines"]).isSubset(of: Set(entry.keys)))
            #expect(entry["node"] as? String == ids[renderer])
            #expect(entry["name"] as? String == maker.name)
            #expect(entry["frame"] as? Int == 1 && entry["attempt"] as? Int == 1)
            #expect(entry["outcome"] as? String == "done")
            #expect(((entry["lines"] as? [String]) ?? []).contains { $0.contains("Saved:") })

            // No frame named and none failed: one sentence, then the last rendered frame's log.
            let summary = try asker.cli(["log", job])
            #expect(summary.status == 0, "\(summary)")
            #expect(summary.stdout.hasPrefix("No frame of job \(job)"), "\(summary)")
            #expect(summary.stdout.contains("=== frame "), "\(summary)")

            // Blender's own error, from a scene Debian's Blender cannot render (denoising without OIDN).
            let broken = try Scenes.make(
                ["--frames", "1", "--width", "32", "--height", "24", "--samples", "1", "--denoise"])
            let failedSubmit = try farm.nodes[0].cli(["submit", broken, "--output", out + "/bad"], timeout: 240)
            #expect(failedSubmit.status != 0)
            let jobs = try #require(try farm.nodes[0].json(["jobs"]) as? [[String: Any]])
            let bad = try #require(jobs.first { $0["state"] as? String == "failed" }?["job"] as? String)
            let failedRow = try #require(try frames(farm.nodes[0], bad).first)
            let attempts = try #require(failedRow["attempts"] as? Int)
            #expect(attempts >= 3)
            let lastID = try #require(failedRow["node"] as? String)
            let last = try #require(ids.firstIndex(of: lastID))
            let other = farm.nodes[1 - last]
            let failures = try other.cli(["log", bad])
            #expect(failures.status == 0, "\(failures)")
            #expect(failures.stdout.contains(" · failed · "), "\(failures)")
            #expect(
                failures.stdout.split(separator: "\n").contains {
                    $0.hasPrefix("Error: Build without OpenImageDenoiser")
                },
                "Blender's own words: \(failures)")
            #expect(failures.stdout.components(separatedBy: "=== frame 1 · ").count - 1 == 1, "the last attempt")
            // Naming the frame: every attempt, wherever it was made.
            let all = try #require(try other.json(["log", bad, "1"]) as? [[String: Any]])
            #expect(all.compactMap { $0["attempt"] as? Int } == Array(1...attempts), "\(all)")
            #expect(all.allSatisfy { $0["outcome"] as? String == "failed" })

            // Bad input: one sentence and a non-zero exit.
            let noJob = try asker.cli(["log", "no-such-job"])
            #expect(noJob.status != 0)
            #expect(noJob.stderr.contains("no job 'no-such-job'"), "\(noJob)")
            #expect(noJob.stderr.split(separator: "\n").count == 1)
            let noFrame = try asker.cli(["log", job, "99"])
            #expect(noFrame.status != 0)
            #expect(noFrame.stderr.contains("Frame 99 is not in job \(job) (its frames: 1-4)"), "\(noFrame)")
            #expect(noFrame.stderr.split(separator: "\n").count == 1)

            // The node that rendered frame 1 goes away: the asker says so in a sentence.
            maker.kill9()
            try waitUntil(timeout: 60, "the asker sees the renderer dead") {
                let view = try #require(try asker.json(["peers"]) as? [[String: Any]])
                return view.first { $0["id"] as? String == ids[renderer] }?["state"] as? String == "dead"
            }
            let gone = try asker.cli(["log", job, "1"])
            #expect(gone.status != 0)
            #expect(gone.stdout.contains("Node \(maker.name) (") && gone.stdout.contains("is gone"), "\(gone)")
            #expect(gone.stderr.contains("No node has Blender's output for frame 1"), "\(gone)")
        }
    }
}
