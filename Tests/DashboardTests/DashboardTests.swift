import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Synchronization
import Testing

@testable import Dashboard
@testable import Farm

/// A node stand-in: fixed answers in the read model's shapes, and a record of every request it was asked.
final class FakeBackend: DashboardBackend {
    let asked = Mutex<[ControlRequest]>([])
    /// The movie file of job j1, if it has one.
    let movie: String?
    let latency: CommitLatency.Snapshot

    init(movie: String? = nil, latency: CommitLatency.Snapshot = .init()) {
        self.movie = movie
        self.latency = latency
    }

    func answer(_ request: ControlRequest) async -> ControlResponse {
        asked.withLock { $0.append(request) }
        switch request {
        case .peers:
            return ControlResponse(result: [
                ["id": "a", "name": "n1", "role": "leader", "state": "alive", "self": true]
            ])
        case .jobs:
            return ControlResponse(result: [
                [
                    "job": "j1", "name": "shot", "state": "running", "frames_total": 4, "frames_done": 1,
                    "frames_failed": 0, "priority": 0, "output": "/tmp/x", "submitter": "a", "message": nil,
                    "tags": [],
                ]
            ])
        case .status(let job, _, _), .cancel(let job), .steer(let job, _):
            guard job == "j1" else { return ControlResponse(error: FarmError(.notFound, "There is no job '\(job)'.")) }
            return ControlResponse(result: ["job": "j1", "state": "running", "frames": []])
        default:
            return ControlResponse(error: FarmError(.badInput, "Not here."))
        }
    }

    func frameImage(job: String, frame: Int) async throws -> (path: String, ext: String) {
        throw FarmError(.notFound, "Frame \(frame) of job \(job) has no image yet.")
    }

    func movieFile(job: String) async throws -> String {
        guard job == "j1", let movie else { throw FarmError(.notFound, "Job \(job) has no movie.") }
        return movie
    }

    func commitLatency() async -> CommitLatency.Snapshot { latency }
}

@Suite struct DashboardTests {
    static let token = AccessToken(String(repeating: "ab", count: 32))

    func app(_ backend: FakeBackend) throws -> some ApplicationProtocol {
        let data = DataDirectory(NSTemporaryDirectory() + "rex-dash-\(UUID().uuidString)")
        let routes = DashboardRoutes(backend: backend, token: Self.token, data: data, logger: Logger(label: "test"))
        return Application(router: routes.router())
    }

    static func json(_ buffer: ByteBuffer) -> JSONValue {
        (try? JSONDecoder().decode(JSONValue.self, from: Data(buffer.readableBytesView))) ?? .null
    }

    @Test func withoutTheTokenEveryRouteIs401() async throws {
        try await app(FakeBackend()).test(.router) { client in
            for uri in ["/", "/api/peers", "/api/jobs", "/api/jobs/j1", "/api/events", "/metrics", "/assets/app.js"] {
                try await client.execute(uri: uri, method: .get) { response in
                    #expect(response.status == .unauthorized, "\(uri)")
                    #expect(Self.json(response.body)["error"]?.string != nil)
                }
            }
            try await client.execute(uri: "/api/jobs?token=wrong", method: .get) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/api/jobs", method: .get, headers: [.authorization: "Bearer wrong"]) {
                #expect($0.status == .unauthorized)
            }
            try await client.execute(uri: "/api/jobs/j1/cancel", method: .post) { #expect($0.status == .unauthorized) }
        }
    }

    @Test func theTokenInTheQueryHeaderOrCookieLetsIn() async throws {
        try await app(FakeBackend()).test(.router) { client in
            try await client.execute(uri: "/?token=\(Self.token.value)", method: .get) { response in
                #expect(response.status == .ok)
                let cookie = response.headers[.setCookie] ?? ""
                #expect(cookie.contains("rexnode_token=\(Self.token.value)"))
                #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"))
                #expect(String(buffer: response.body).contains("<html"))
            }
            try await client.execute(
                uri: "/api/peers", method: .get, headers: [.authorization: "Bearer \(Self.token.value)"]
            ) { #expect($0.status == .ok) }
            try await client.execute(
                uri: "/api/peers", method: .get, headers: [.cookie: "other=1; rexnode_token=\(Self.token.value)"]
            ) { #expect($0.status == .ok) }
        }
    }

    @Test func routesAnswerTheCLIShapes() async throws {
        let auth: HTTPFields = [.authorization: "Bearer \(Self.token.value)"]
        try await app(FakeBackend()).test(.router) { client in
            try await client.execute(uri: "/api/jobs", method: .get, headers: auth) { response in
                let jobs = Self.json(response.body)
                // `jobs --json`'s keys, exactly.
                #expect(jobs == ContractShapes.jobs(await FakeBackend().answer(.jobs).result!))
                if case .object(let row) = jobs.array?.first {
                    #expect(
                        Set(row.keys) == ["job", "name", "state", "frames_total", "frames_done", "priority"])
                } else {
                    Issue.record("no job row")
                }
            }
            try await client.execute(uri: "/api/peers", method: .get, headers: auth) { response in
                #expect(Self.json(response.body) == (await FakeBackend().answer(.peers).result!))
            }
            try await client.execute(uri: "/api/jobs/j1", method: .get, headers: auth) { response in
                #expect(Self.json(response.body)["job"]?.string == "j1")
            }
            try await client.execute(uri: "/api/jobs/nope", method: .get, headers: auth) { response in
                #expect(response.status == .notFound)
                #expect(Self.json(response.body)["error"]?.string == "There is no job 'nope'.")
            }
        }
    }

    @Test func actionsGoThroughTheControlAPI() async throws {
        let backend = FakeBackend()
        let auth: HTTPFields = [.authorization: "Bearer \(Self.token.value)"]
        try await app(backend).test(.router) { client in
            for action in ["cancel", "pause", "resume", "retry", "remove"] {
                try await client.execute(uri: "/api/jobs/j1/\(action)", method: .post, headers: auth) {
                    #expect($0.status == .ok, "\(action)")
                }
            }
            try await client.execute(
                uri: "/api/jobs/j1/priority", method: .post, headers: auth,
                body: ByteBuffer(string: #"{"priority": 7}"#)
            ) { #expect($0.status == .ok) }
            try await client.execute(uri: "/api/jobs/j1/priority?n=3", method: .post, headers: auth) {
                #expect($0.status == .ok)
            }
            try await client.execute(uri: "/api/jobs/j1/priority", method: .post, headers: auth) {
                #expect($0.status == .badRequest)
            }
            try await client.execute(uri: "/api/jobs/j1/explode", method: .post, headers: auth) {
                #expect($0.status == .badRequest)
            }
        }
        let asked = backend.asked.withLock { $0 }
        #expect(
            asked == [
                .cancel(job: "j1"), .steer(job: "j1", action: .pause), .steer(job: "j1", action: .resume),
                .steer(job: "j1", action: .retry(frames: nil)), .steer(job: "j1", action: .remove(force: false)),
                .steer(job: "j1", action: .priority(7)), .steer(job: "j1", action: .priority(3)),
            ])
    }

    @Test func metricsAndMissingImagesAnswerPlainly() async throws {
        let auth: HTTPFields = [.authorization: "Bearer \(Self.token.value)"]
        try await app(FakeBackend()).test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get, headers: auth) { response in
                let text = String(buffer: response.body)
                #expect(response.status == .ok)
                #expect(text.contains("rexnode_frames_done_total 1\n"))
                #expect(text.contains("rexnode_peers_alive 1\n"))
                #expect(text.contains("# TYPE rexnode_raft_term gauge"))
            }
            for kind in ["image", "thumb", "preview"] {
                try await client.execute(uri: "/api/jobs/j1/frames/2/\(kind)", method: .get, headers: auth) {
                    #expect($0.status == .notFound)
                    #expect(Self.json($0.body)["error"]?.string == "Frame 2 of job j1 has no image yet.")
                }
            }
            try await client.execute(uri: "/api/jobs/j1/frames/2/poster", method: .get, headers: auth) {
                #expect($0.status == .notFound)
                #expect(Self.json($0.body)["error"]?.string?.contains("image, thumb or preview") == true)
            }
        }
    }

    @Test func theTokenIsKeptPrivateAndStable() throws {
        let data = DataDirectory(NSTemporaryDirectory() + "rex-token-\(UUID().uuidString)")
        try data.create()
        let first = try AccessToken.loadOrCreate(data)
        let again = try AccessToken.loadOrCreate(data)
        #expect(first == again)
        #expect(first.value.count == 64)
        let mode = try FileManager.default.attributesOfItem(atPath: AccessToken.tokenPath(data))[.posixPermissions]
        #expect((mode as? NSNumber)?.intValue == 0o600)
        #expect(first.matches(first.value))
        #expect(!first.matches(nil) && !first.matches("") && !first.matches(first.value + "0"))
        #expect(!first.matches(String(first.value.dropLast())))
    }

    @Test func httpSettingsParse() throws {
        let data = DataDirectory("/tmp/x")
        #expect(try DashboardSettings.parse("off", data: data) == nil)
        let s = try #require(try DashboardSettings.parse("127.0.0.1:0", data: data))
        #expect(s.host == "127.0.0.1" && s.port == 0)
        #expect(throws: FarmError.self) { try DashboardSettings.parse("nope", data: data) }
        #expect(throws: FarmError.self) { try DashboardSettings.parse("h:70000", data: data) }
    }

    @Test func commitLatencyIsAHistogramOfWhatTheNodeMeasured() async throws {
        let latency = CommitLatency()
        #expect(latency.snapshot == CommitLatency.Snapshot())
        latency.record(.milliseconds(20))
        latency.record(.milliseconds(300))
        latency.record(.seconds(90))
        let s = latency.snapshot
        #expect(s.count == 3)
        #expect(abs(s.sum - 90.32) < 1e-9)
        #expect(abs(s.last - 90) < 1e-9 && abs(s.max - 90) < 1e-9)
        let bucket = { (bound: Double) in s.buckets[CommitLatency.bounds.firstIndex(of: bound)!] }
        #expect(bucket(0.01) == 0 && bucket(0.025) == 1 && bucket(0.25) == 1 && bucket(0.5) == 2 && bucket(60) == 2)

        let auth: HTTPFields = [.authorization: "Bearer \(Self.token.value)"]
        try await app(FakeBackend(latency: s)).test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get, headers: auth) { response in
                let text = String(buffer: response.body)
                #expect(text.contains("# TYPE rexnode_commit_latency_seconds histogram\n"))
                #expect(text.contains("rexnode_commit_latency_seconds_bucket{le=\"0.025\"} 1\n"))
                #expect(text.contains("rexnode_commit_latency_seconds_bucket{le=\"0.5\"} 2\n"))
                #expect(text.contains("rexnode_commit_latency_seconds_bucket{le=\"+Inf\"} 3\n"))
                #expect(text.contains("rexnode_commit_latency_seconds_sum 90.32\n"))
                #expect(text.contains("rexnode_commit_latency_seconds_count 3\n"))
                #expect(text.contains("rexnode_commit_latency_last_seconds 90\n"))
                #expect(text.contains("rexnode_commit_latency_max_seconds 90\n"))
            }
        }
        // Before any proposal: zeros, never a missing series.
        try await app(FakeBackend()).test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get, headers: auth) { response in
                let text = String(buffer: response.body)
                #expect(text.contains("rexnode_commit_latency_seconds_count 0\n"))
                #expect(text.contains("rexnode_commit_latency_last_seconds 0\n"))
            }
        }
    }

    @Test func theMovieIsServedWholeOrByRangeBehindTheToken() async throws {
        let folder = NSTemporaryDirectory() + "rex-movie-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/shot.mp4"
        let bytes = (0..<1000).map { UInt8($0 % 251) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        let auth: HTTPFields = [.authorization: "Bearer \(Self.token.value)"]
        try await app(FakeBackend(movie: path)).test(.router) { client in
            try await client.execute(uri: "/api/jobs/j1/movie", method: .get) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/api/jobs/j1/movie", method: .get, headers: auth) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "video/mp4")
                #expect(response.headers[.acceptRanges] == "bytes")
                #expect(Array(response.body.readableBytesView) == bytes)
            }
            var ranged = auth
            ranged[.range] = "bytes=10-19"
            try await client.execute(uri: "/api/jobs/j1/movie", method: .get, headers: ranged) { response in
                #expect(response.status == .partialContent)
                #expect(response.headers[.contentRange] == "bytes 10-19/1000")
                #expect(Array(response.body.readableBytesView) == Array(bytes[10...19]))
            }
            ranged[.range] = "bytes=990-"
            try await client.execute(uri: "/api/jobs/j1/movie", method: .get, headers: ranged) { response in
                #expect(response.status == .partialContent)
                #expect(Array(response.body.readableBytesView) == Array(bytes[990...]))
            }
            ranged[.range] = "bytes=5000-"
            try await client.execute(uri: "/api/jobs/j1/movie", method: .get, headers: ranged) {
                #expect($0.status == .rangeNotSatisfiable)
            }
            try await client.execute(uri: "/api/jobs/j2/movie", method: .get, headers: auth) { response in
                #expect(response.status == .notFound)
                #expect(Self.json(response.body)["error"]?.string == "Job j2 has no movie.")
            }
        }
        #expect(DashboardRoutes.byteRange("bytes=-100", size: 1000)! == (900, 999))
        #expect(DashboardRoutes.byteRange("bytes=0-5000", size: 1000)! == (0, 999))
        #expect(DashboardRoutes.byteRange("bytes=9-3", size: 1000) == nil)
        #expect(DashboardRoutes.byteRange("items=0-1", size: 1000) == nil)
        // A long movie is answered 8 MiB at a time, whatever range the browser asks.
        let long = NSTemporaryDirectory() + "rex-long-\(UUID().uuidString.prefix(8)).mp4"
        defer { try? FileManager.default.removeItem(atPath: long) }
        try Data(count: DashboardRoutes.maxRangeBytes + 1000).write(to: URL(fileURLWithPath: long))
        let answer = try DashboardRoutes.movie(long, range: "bytes=0-")
        #expect(answer.status == .partialContent)
        #expect(
            answer.headers[.contentRange]
                == "bytes 0-\(DashboardRoutes.maxRangeBytes - 1)/\(DashboardRoutes.maxRangeBytes + 1000)")
    }

    @Test func thePageShowsTheLatestFrameByCompletionAndTheMovie() throws {
        let js = String(decoding: try #require(WebAssets.file(named: "app.js")).bytes, as: UTF8.self)
        let html = String(decoding: try #require(WebAssets.file(named: "index.html")).bytes, as: UTF8.self)
        #expect(js.contains("job.latest_frame"))
        #expect(js.contains("/movie"))
        #expect(html.contains("<video id=\"movie\""))
    }

    /// A real EXR frame (linear light, from Blender) gets a thumbnail about as bright as Blender's own PNG of the same
    /// frame; ffmpeg's plain conversion of the EXR, untouched, is much darker.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: Self.blender)))
    func anEXRFramesThumbnailIsToneMappedToSRGB() async throws {
        let dir = NSTemporaryDirectory() + "rex-exr-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        let scene = dir + "/scene.blend"
        let script = root.appendingPathComponent("Fixtures/make_test_scene.py").path
        try await Self.run(
            Self.blender,
            [
                "-b", "--factory-startup", "--python", script, "--", scene, "--format", "OPEN_EXR", "--frames", "1",
                "--width", "64", "--height", "48",
            ])
        try await Self.run(Self.blender, ["-b", scene, "-o", dir + "/exr_####", "-f", "1"])
        try await Self.run(Self.blender, ["-b", scene, "-o", dir + "/png_####", "-F", "PNG", "-f", "1"])
        try await Self.run(Self.blender, ["-b", scene, "-o", dir + "/ml_####", "-F", "OPEN_EXR_MULTILAYER", "-f", "1"])
        // The blob store names files by hash, with no extension: so does this copy.
        let blob = dir + "/0123abcd"
        try FileManager.default.copyItem(atPath: dir + "/exr_0001.exr", toPath: blob)

        let thumbs = Thumbnails(folder: dir + "/thumbs")
        let made = try #require(await thumbs.thumbnail(of: blob, ext: "exr"))
        #expect(made.hasSuffix(".srgb.jpg"))
        let plain = dir + "/plain.jpg"
        try await Self.run("/usr/bin/ffmpeg", ["-loglevel", "error", "-y", "-i", blob, "-frames:v", "1", plain])

        let reference = try await Self.meanRGB(dir + "/png_0001.png")
        let toneMapped = try await Self.meanRGB(made)
        let untouched = try await Self.meanRGB(plain)
        for c in 0..<3 {
            #expect(abs(toneMapped[c] - reference[c]) <= 20, "tone-mapped \(toneMapped) vs Blender's \(reference)")
        }
        // The large preview (the latest frame of an EXR job) is tone-mapped too, and never wider than the frame.
        let large = try #require(await thumbs.thumbnail(of: blob, ext: "exr", large: true))
        #expect(large != made)
        let preview = try await Self.meanRGB(large)
        for c in 0..<3 { #expect(abs(preview[c] - reference[c]) <= 20, "preview \(preview) vs \(reference)") }
        let probe = try await Self.run(
            "/usr/bin/ffprobe",
            ["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width", "-of", "csv=p=0", large])
        #expect(String(decoding: probe, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "64")
        #expect(
            untouched.reduce(0, +) + 60 < reference.reduce(0, +),
            "the untouched EXR \(untouched) should be darker than \(reference), or this test proves nothing")

        // A multilayer EXR: its combined pass, tone-mapped the same way.
        let layered = dir + "/4567cdef"
        try FileManager.default.copyItem(atPath: dir + "/ml_0001.exr", toPath: layered)
        #expect(Thumbnails.combinedLayer(layered) == "ViewLayer.Combined")
        #expect(Thumbnails.combinedLayer(blob) == nil)
        let fromLayers = try await Self.meanRGB(try #require(await thumbs.thumbnail(of: layered, ext: "exr")))
        for c in 0..<3 {
            #expect(abs(fromLayers[c] - reference[c]) <= 20, "multilayer \(fromLayers) vs Blender's \(reference)")
        }
    }

    static let blender = ProcessInfo.processInfo.environment["BLENDER"] ?? "/usr/bin/blender"

    /// The mean colour of an image, 0-255 per channel (ffmpeg averages it down to one pixel).
    static func meanRGB(_ path: String) async throws -> [Int] {
        let bytes = try await run(
            "/usr/bin/ffmpeg",
            [
                "-loglevel", "error", "-i", path, "-vf", "scale=1:1:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24",
                "-",
            ])
        guard bytes.count == 3 else { throw FarmError(.failed, "ffmpeg gave \(bytes.count) bytes for \(path)") }
        return bytes.map(Int.init)
    }

    /// Runs a program to the end on a thread of its own (not Swift's pool) and returns its standard output.
    @discardableResult
    static func run(_ program: String, _ arguments: [String]) async throws -> [UInt8] {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: program)
                process.arguments = arguments
                let out = Pipe()
                process.standardOutput = out
                process.standardError = FileHandle.nullDevice
                process.standardInput = FileHandle.nullDevice
                do {
                    try process.run()
                    let data = out.fileHandleForReading.readDataToEndOfFile()
                    process.waitUntilExit()
                    guard process.terminationStatus == 0 else {
                        throw FarmError(.failed, "\(program) \(arguments) exited \(process.terminationStatus)")
                    }
                    continuation.resume(returning: [UInt8](data))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }
}
