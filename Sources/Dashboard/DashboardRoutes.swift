import Farm
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// The dashboard's routes: pages, the JSON API (the CLI's `--json` shapes), live updates, images and metrics. Every
/// route sits behind `TokenMiddleware`; reads and actions go through the backend's control API.
public struct DashboardRoutes: Sendable {
    let backend: any DashboardBackend
    let token: AccessToken
    let thumbnails: Thumbnails
    let logger: Logger
    /// How often a live stream looks at the read model.
    var pollInterval: Duration = .seconds(1)

    public init(backend: any DashboardBackend, token: AccessToken, data: DataDirectory, logger: Logger) {
        self.backend = backend
        self.token = token
        self.logger = logger
        thumbnails = Thumbnails(folder: data.root + "/thumbs")
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: TokenMiddleware(token: token))
        let backend = self.backend
        router.get("/") { _, _ in try Self.asset("index.html") }
        router.get("/assets/{name}") { _, context in try Self.asset(try context.parameters.require("name")) }
        router.get("/api/peers") { _, _ in await Self.reply(backend, .peers) }
        router.get("/api/jobs") { _, _ in await Self.reply(backend, .jobs, shape: ContractShapes.jobs) }
        router.get("/api/jobs/{job}") { _, context in
            await Self.reply(backend, .status(job: try context.parameters.require("job")))
        }
        router.get("/api/jobs/{job}/log") { request, context in
            let frame = request.uri.queryParameters.get("frame").flatMap { Int($0) }
            return await Self.reply(backend, .log(job: try context.parameters.require("job"), frame: frame))
        }
        router.post("/api/jobs/{job}/{action}") { request, context in
            let job = try context.parameters.require("job")
            let action = try context.parameters.require("action")
            var body = try await request.body.collect(upTo: 64 * 1024)
            let text = body.readString(length: body.readableBytes) ?? ""
            guard let steer = Self.action(action, query: Self.query(request), body: text, job: job) else {
                return Self.error(.badRequest, Self.actionHelp(action))
            }
            return await Self.reply(backend, steer)
        }
        router.get("/api/jobs/{job}/frames/{frame}/image") { _, context in
            let (job, frame) = (
                try context.parameters.require("job"), try context.parameters.require("frame", as: Int.self)
            )
            do {
                let image = try await backend.frameImage(job: job, frame: frame)
                return try Self.file(image.path, type: Self.imageType(image.ext))
            } catch let error as FarmError {
                return Self.error(.notFound, error.message)
            }
        }
        let thumbnails = self.thumbnails
        router.get("/api/jobs/{job}/frames/{frame}/{size}") { _, context in
            let (job, frame, size) = (
                try context.parameters.require("job"), try context.parameters.require("frame", as: Int.self),
                try context.parameters.require("size")
            )
            // `thumb`: 256 pixels wide; `preview`: up to 1024, for the latest frame of a format browsers cannot show.
            guard size == "thumb" || size == "preview" else {
                return Self.error(.notFound, "There is no \(size) of a frame; ask for image, thumb or preview.")
            }
            do {
                let image = try await backend.frameImage(job: job, frame: frame)
                guard let thumb = await thumbnails.thumbnail(of: image.path, ext: image.ext, large: size == "preview")
                else {
                    return Self.error(.notFound, "No thumbnail can be made here (is ffmpeg installed?).")
                }
                return try Self.file(thumb, type: "image/jpeg")
            } catch let error as FarmError {
                return Self.error(.notFound, error.message)
            }
        }
        router.get("/api/jobs/{job}/movie") { request, context in
            do {
                let path = try await backend.movieFile(job: try context.parameters.require("job"))
                return try Self.movie(path, range: request.headers[.range])
            } catch let error as FarmError {
                return Self.error(.notFound, error.message)
            }
        }
        let poll = pollInterval
        router.get("/api/events") { request, _ in
            Self.events(backend, job: request.uri.queryParameters.get("job"), every: poll)
        }
        router.get("/metrics") { _, _ in await Self.metrics(backend) }
        return router
    }

    // MARK: Answers

    /// A control request's answer as JSON: its result (reshaped where the CLI's `--json` is narrower), or
    /// `{"error": …}` with a 4xx status.
    static func reply(
        _ backend: any DashboardBackend, _ request: ControlRequest, shape: (JSONValue) -> JSONValue = { $0 }
    )
        async -> Response
    {
        let answer = await backend.answer(request)
        if let message = answer.error {
            let status: HTTPResponse.Status =
                switch answer.code {
                case .notFound: .notFound
                case .badInput: .badRequest
                case .notRunning: .serviceUnavailable
                default: .conflict
                }
            return error(status, message)
        }
        return json(shape(answer.result ?? .null))
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: value.jsonText() + "\n")))
    }

    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(["error": .string(message)], status: status)
    }

    static func asset(_ name: String) throws -> Response {
        guard let asset = WebAssets.file(named: name) else { return error(.notFound, "There is no page \(name).") }
        return Response(
            status: .ok, headers: [.contentType: asset.contentType, .cacheControl: "no-cache"],
            body: .init(byteBuffer: ByteBuffer(bytes: asset.bytes)))
    }

    static func file(_ path: String, type: String) throws -> Response {
        guard let data = FileManager.default.contents(atPath: path) else {
            return error(.notFound, "The image is not on this node any more.")
        }
        return Response(
            status: .ok, headers: [.contentType: type, .cacheControl: "private, max-age=3600"],
            body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static let maxRangeBytes = 8 << 20

    /// A movie file, whole or the one byte range asked (`Range: bytes=A-B`, which browsers send to seek a <video>).
    static func movie(_ path: String, range: String?) throws -> Response {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            return error(.notFound, "The movie is not on this node any more.")
        }
        defer { try? handle.close() }
        let size = Int((try? handle.seekToEnd()) ?? 0)
        var headers: HTTPFields = [
            .contentType: movieType(path), .acceptRanges: "bytes", .cacheControl: "private, no-cache",
        ]
        var status = HTTPResponse.Status.ok
        var (start, end) = (0, size - 1)
        if let range, let asked = byteRange(range, size: size) {
            // At most 8 MiB per answer (the browser asks for the rest as it plays): a long movie is never read whole.
            (start, end) = (asked.0, min(asked.1, asked.0 + maxRangeBytes - 1))
            status = .partialContent
            headers[.contentRange] = "bytes \(start)-\(end)/\(size)"
        } else if range != nil {
            return Response(status: .rangeNotSatisfiable, headers: [.contentRange: "bytes */\(size)"])
        }
        try handle.seek(toOffset: UInt64(start))
        let data = size == 0 ? Data() : (try handle.read(upToCount: end - start + 1) ?? Data())
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// `bytes=A-B`, `bytes=A-` or `bytes=-N` within a file of `size` bytes (one range; nil if unsatisfiable).
    static func byteRange(_ header: String, size: Int) -> (Int, Int)? {
        guard header.hasPrefix("bytes="), size > 0 else { return nil }
        let spec = header.dropFirst("bytes=".count).split(separator: ",").first.map(String.init) ?? ""
        let parts = spec.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        guard parts.count == 2 else { return nil }
        if parts[0].isEmpty {
            guard let n = Int(parts[1]), n > 0 else { return nil }
            return (max(0, size - n), size - 1)
        }
        guard let a = Int(parts[0]), a < size else { return nil }
        let b = parts[1].isEmpty ? size - 1 : min(Int(parts[1]) ?? -1, size - 1)
        return b >= a ? (a, b) : nil
    }

    static func movieType(_ path: String) -> String {
        switch (path as NSString).pathExtension.lowercased() {
        case "mp4", "m4v": "video/mp4"
        case "webm": "video/webm"
        case "mkv": "video/x-matroska"
        case "mov": "video/quicktime"
        case "ogv", "ogg": "video/ogg"
        case "avi": "video/x-msvideo"
        default: "application/octet-stream"
        }
    }

    static func imageType(_ ext: String) -> String {
        switch ext.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ".")) {
        case "png": "image/png"
        case "jpg", "jpeg": "image/jpeg"
        case "webp": "image/webp"
        case "exr": "image/x-exr"
        default: "application/octet-stream"
        }
    }

    // MARK: Actions

    /// The control request a `POST /api/jobs/JOB/ACTION` stands for, or nil for an unknown action or bad number.
    static func action(_ name: String, query: [String: String] = [:], body: String, job: String) -> ControlRequest? {
        let fields = Self.fields(body).merging(query) { $1 }
        switch name {
        case "cancel": return .cancel(job: job)
        case "pause": return .steer(job: job, action: .pause)
        case "resume": return .steer(job: job, action: .resume)
        case "retry":
            let frames = fields["frames"].flatMap { $0.isEmpty ? nil : $0 }
            return .steer(job: job, action: .retry(frames: frames))
        case "remove":
            let force = fields["force"].map { ["1", "true", "yes"].contains($0) } ?? false
            return .steer(job: job, action: .remove(force: force))
        case "priority":
            let text: String? = fields["n"] ?? fields["priority"]
            guard let n = text.flatMap({ Int($0) }) else { return nil }
            return .steer(job: job, action: .priority(n))
        default: return nil
        }
    }

    /// A request's query as plain strings.
    static func query(_ request: Request) -> [String: String] {
        var out: [String: String] = [:]
        for (key, value) in request.uri.queryParameters { out[String(key)] = String(value) }
        return out
    }

    static func actionHelp(_ name: String) -> String {
        name == "priority"
            ? "priority needs a whole number (?n=N, or {\"priority\": N} as the body)."
            : "There is no action '\(name)'; use cancel, pause, resume, retry, priority or remove."
    }

    /// A body's fields: a JSON object (`{"priority": 5}`), a form (`priority=5`), or a bare number (the priority).
    static func fields(_ body: String) -> [String: String] {
        let text = body.trimmingCharacters(in: .whitespacesAndNewlines)
        if text.isEmpty { return [:] }
        if Int(text) != nil { return ["priority": text] }
        if let value = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)), case .object(let o) = value {
            var out: [String: String] = [:]
            for (k, v) in o {
                switch v {
                case .string(let s): out[k] = s
                case .int(let i): out[k] = String(i)
                case .bool(let b): out[k] = String(b)
                default: break
                }
            }
            return out
        }
        var out: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1).map { String($0).removingPercentEncoding ?? String($0) }
            if kv.count == 2 { out[kv[0]] = kv[1] }
        }
        return out
    }

    // MARK: Live updates

    /// Server-Sent Events: a snapshot (`{"peers","jobs","job"?}` in the API's shapes) whenever it changes; the
    /// read model is looked at about once a second.
    static func events(_ backend: any DashboardBackend, job: String?, every interval: Duration) -> Response {
        let body = ResponseBody { writer in
            var last = ""
            var quiet = 0
            while !Task.isCancelled {
                let value = await Self.snapshot(backend, job: job)
                // Encoded off Swift's shared pool (a big job's frames are megabytes), once a second per open page.
                let snapshot = (try? await Blocking.run { value.jsonText(pretty: false) }) ?? last
                if snapshot != last {
                    try await writer.write(ByteBuffer(string: "data: \(snapshot)\n\n"))
                    last = snapshot
                    quiet = 0
                } else {
                    quiet += 1
                    // A comment now and then, so a closed tab ends this stream.
                    if quiet % 15 == 0 { try await writer.write(ByteBuffer(string: ": still here\n\n")) }
                }
                try await Task.sleep(for: interval)
            }
            try await writer.finish(nil)
        }
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-store", .init("X-Accel-Buffering")!: "no"],
            body: body)
    }

    static func snapshot(_ backend: any DashboardBackend, job: String?) async -> JSONValue {
        var o: [String: JSONValue] = [:]
        let peers = await backend.answer(.peers)
        o["peers"] = peers.result ?? .array([])
        let jobs = await backend.answer(.jobs)
        o["jobs"] = ContractShapes.jobs(jobs.result ?? .array([]))
        if let job, !job.isEmpty {
            let status = await backend.answer(.status(job: job))
            o["job"] = status.result ?? ["error": .string(status.error ?? "unknown job")]
        }
        return .object(o)
    }

    // MARK: Metrics

    /// Prometheus text from the read model: frames done and failed, render seconds, the Raft term, peers alive; and
    /// the commit latency the node measured.
    static func metrics(_ backend: any DashboardBackend) async -> Response {
        let latency = await backend.commitLatency()
        let peers = (await backend.answer(.peers)).result?.array ?? []
        let jobs = (await backend.answer(.jobs)).result?.array ?? []
        let me = peers.first { $0["self"]?.bool == true }
        var renderSeconds = 0.0
        for job in jobs where job["state"]?.string == "running" || job["state"]?.string == "done" {
            if let id = job["job"]?.string,
                let frames = (await backend.answer(.status(job: id))).result?["frames"]?.array
            {
                renderSeconds += frames.compactMap { $0["render_seconds"]?.double }.reduce(0, +)
            }
        }
        func sum(_ key: String) -> Int { jobs.compactMap { $0[key]?.int }.reduce(0, +) }
        let lines =
            [
                "# HELP rexnode_frames_done_total Frames done, over every job in the ledger.",
                "# TYPE rexnode_frames_done_total counter",
                "rexnode_frames_done_total \(sum("frames_done"))",
                "# HELP rexnode_frames_failed_total Frames failed, over every job in the ledger.",
                "# TYPE rexnode_frames_failed_total counter",
                "rexnode_frames_failed_total \(sum("frames_failed"))",
                "# HELP rexnode_render_seconds_total Seconds spent rendering the done frames of running and done jobs.",
                "# TYPE rexnode_render_seconds_total counter",
                "rexnode_render_seconds_total \(renderSeconds)",
                "# HELP rexnode_raft_term This node's Raft term.",
                "# TYPE rexnode_raft_term gauge",
                "rexnode_raft_term \(me?["term"]?.int ?? 0)",
                "# HELP rexnode_raft_longest_stall_ms The longest this node's Raft loop went without running.",
                "# TYPE rexnode_raft_longest_stall_ms gauge",
                "rexnode_raft_longest_stall_ms \(me?["raft_longest_stall_ms"]?.int ?? 0)",
                "# HELP rexnode_peers_alive Members this node sees alive, itself included.",
                "# TYPE rexnode_peers_alive gauge",
                "rexnode_peers_alive \(peers.filter { $0["state"]?.string == "alive" }.count)",
            ] + Self.latencyLines(latency)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
            body: .init(byteBuffer: ByteBuffer(string: lines.joined(separator: "\n") + "\n")))
    }
}

extension DashboardRoutes {
    /// The commit latency as a Prometheus histogram (`rexnode_commit_latency_seconds`), with the last and the longest.
    static func latencyLines(_ latency: CommitLatency.Snapshot) -> [String] {
        var lines = [
            "# HELP rexnode_commit_latency_seconds Seconds from this node proposing a ledger change to applying it "
                + "committed (forwarding to the leader and retries included).",
            "# TYPE rexnode_commit_latency_seconds histogram",
        ]
        for (bound, count) in zip(CommitLatency.bounds, latency.buckets) {
            lines.append("rexnode_commit_latency_seconds_bucket{le=\"\(number(bound))\"} \(count)")
        }
        lines += [
            "rexnode_commit_latency_seconds_bucket{le=\"+Inf\"} \(latency.count)",
            "rexnode_commit_latency_seconds_sum \(number(latency.sum))",
            "rexnode_commit_latency_seconds_count \(latency.count)",
            "# HELP rexnode_commit_latency_last_seconds The commit latency of this node's last proposal.",
            "# TYPE rexnode_commit_latency_last_seconds gauge",
            "rexnode_commit_latency_last_seconds \(number(latency.last))",
            "# HELP rexnode_commit_latency_max_seconds The longest commit latency of this node's proposals.",
            "# TYPE rexnode_commit_latency_max_seconds gauge",
            "rexnode_commit_latency_max_seconds \(number(latency.max))",
        ]
        return lines
    }

    /// A number as Prometheus reads it: plain decimal, no exponent for small values.
    static func number(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int(value)) }
        let text = String(format: "%.6f", value).replacingOccurrences(of: "0+$", with: "", options: .regularExpression)
        return text.hasSuffix(".") ? String(text.dropLast()) : text
    }
}

// MARK: Access

/// Every request needs the token: `?token=T`, `Authorization: Bearer T`, or the cookie a visit with `?token=` sets
/// (HttpOnly, SameSite=Strict). Anything else gets 401.
struct TokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: AccessToken
    static var cookieName: String { "rexnode_token" }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let query = request.uri.queryParameters.get("token")
        let bearer = request.headers[.authorization].flatMap { value -> String? in
            value.hasPrefix("Bearer ") ? String(value.dropFirst("Bearer ".count)) : nil
        }
        let cookie = Self.cookie(request.headers[values: .cookie])
        if token.matches(query) {
            var response = try await next(request, context)
            response.headers.append(
                HTTPField(
                    name: .setCookie, value: "\(Self.cookieName)=\(token.value); Path=/; HttpOnly; SameSite=Strict"))
            return response
        }
        guard token.matches(bearer) || token.matches(cookie) else {
            return DashboardRoutes.error(
                .unauthorized, "This dashboard needs its access token: open the URL `rexnode dashboard` prints.")
        }
        return try await next(request, context)
    }

    static func cookie(_ headers: [String]) -> String? {
        for header in headers {
            for part in header.split(separator: ";") {
                let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                if kv.count == 2 && kv[0] == cookieName { return String(kv[1]) }
            }
        }
        return nil
    }
}
