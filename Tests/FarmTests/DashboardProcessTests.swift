import Foundation
import Testing

/// The dashboard of a real daemon: `/metrics` carries the commit latency the node measured, a `--video` job's movie is
/// served (and named in its status) once made, the status names the latest frame by completion, and after `kill -9`
/// `rexnode dashboard` says the daemon is not running instead of printing a dead URL.
extension ProcessTests {
    @Suite struct DashboardProcessTests {
        /// `curl` against the node's dashboard with its token; the body (as bytes) and `CODE TYPE`.
        static func get(_ url: String, token: String, to file: String) throws -> (body: Data, status: String) {
            let r = try runProgram(
                "/usr/bin/curl",
                ["-s", "-o", file, "-w", "%{http_code} %{content_type}", "-H", "Authorization: Bearer \(token)", url],
                timeout: 60)
            return (FileManager.default.contents(atPath: file) ?? Data(), r.stdout)
        }

        @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")))
        func metricsMovieLatestFrameAndNoDeadURLAfterKill9() throws {
            let node = try TestNode(args: ["--renderer", "simulated:200", "--http", "127.0.0.1:0"])
            let dir = tempDir("dash-proc")
            let scene = dir + "/scene.blend"
            _ = FileManager.default.createFile(
                atPath: scene, contents: Data(Array("BLENDER-v304".utf8) + Array(repeating: 0, count: 64)))
            let out = dir + "/out/shot"
            let submitted = try node.cli(
                ["submit", scene, "--frames", "1-4", "--name", "shot", "--output", out, "--video", "--json"],
                timeout: 240)
            #expect(submitted.status == 0, "\(submitted)")
            let job = try #require(
                (try JSONSerialization.jsonObject(with: Data(submitted.stdout.utf8)) as? [String: Any])?["job"]
                    as? String)
            // `submit --video`'s movie is reported as video*, not movie* (which `submit` and `wait` wait for).
            let status = try node.waitFor(job, timeout: 240) { $0["video_state"] as? String == "made" }
            #expect(status["movie_state"] == nil)
            let movie = try #require(status["video"] as? String)
            #expect(movie == dir + "/out/shot.mp4")

            // The status names the latest frame: the done frame committed last.
            let frames = status["frames"] as? [[String: Any]] ?? []
            let last = frames.max { ($0["done_index"] as? Int ?? 0) < ($1["done_index"] as? Int ?? 0) }
            #expect(frames.allSatisfy { ($0["done_index"] as? Int ?? 0) > 0 }, "\(frames)")
            #expect(status["latest_frame"] as? Int == last?["frame"] as? Int)

            let printed = try node.cli(["dashboard"])
            #expect(printed.status == 0, "\(printed)")
            let url = try #require(printed.stdout.split(separator: "\n").last.map(String.init))
            let base = try #require(url.components(separatedBy: "/?token=").first)
            let token = try #require(url.components(separatedBy: "token=").last)

            // Commit latency: the node's proposals (the job, its frames) were measured, each within the 60 s a
            // proposal may take; no bound on speed.
            let metrics = try Self.get(base + "/metrics", token: token, to: dir + "/metrics")
            let text = String(decoding: metrics.body, as: UTF8.self)
            func value(_ name: String) -> Double? {
                text.split(separator: "\n").first { $0.hasPrefix(name + " ") }
                    .flatMap { Double($0.split(separator: " ").last ?? "") }
            }
            let count = try #require(value("rexnode_commit_latency_seconds_count"), "\(text)")
            let sum = try #require(value("rexnode_commit_latency_seconds_sum"), "\(text)")
            let maximum = try #require(value("rexnode_commit_latency_max_seconds"), "\(text)")
            // At least the submit, an assignment and a completion (completions may share a proposal).
            #expect(count >= 3, "\(text)")
            #expect(sum > 0 && sum / count < 60 && maximum <= 60 && maximum >= sum / count, "\(text)")
            #expect(text.contains("rexnode_commit_latency_seconds_bucket{le=\"+Inf\"} \(Int(count))\n"))

            // The movie, through the dashboard, behind the token.
            let served = try Self.get(base + "/api/jobs/\(job)/movie", token: token, to: dir + "/movie.mp4")
            #expect(served.status == "200 video/mp4", "\(served.status)")
            #expect(served.body.count > 8 && String(decoding: served.body[4..<8], as: UTF8.self) == "ftyp")
            #expect(served.body == FileManager.default.contents(atPath: movie))
            let refused = try Self.get(base + "/api/jobs/\(job)/movie", token: "wrong", to: dir + "/refused")
            #expect(refused.status.hasPrefix("401"), "\(refused.status)")

            // kill -9 leaves the socket and dashboard.url behind; the command says the daemon is not running.
            node.kill9()
            #expect(FileManager.default.fileExists(atPath: node.data + "/dashboard.url"))
            let stale = try node.cli(["dashboard"])
            #expect(stale.status != 0, "\(stale)")
            #expect(stale.stderr.contains("is not running"), "\(stale)")
            #expect(!stale.stdout.contains("http://") && !stale.stderr.contains("http://"), "\(stale)")
            #expect(stale.stderr.split(separator: "\n").count == 1, "one sentence: \(stale)")
        }
    }
}
