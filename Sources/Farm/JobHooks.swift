import Foundation
import Ledger
import Logging
import Render

/// What a node does when a job ends (done, failed or canceled): the submitter makes the job's preview movie
/// (`submit --video`) and runs its `--on-done` command; any node started with `join --notify URL` posts the job's
/// JSON there. Each of these runs at most once per job and node: a marker file under `DATA/hooks/` is created (with
/// `O_EXCL`) before the action, so a restart never repeats it.
actor JobHooks {
    let nodeID: String
    let ledger: LedgerStore
    let queries: FarmQueries
    let delivery: Delivery
    let notifyURL: String?
    let folder: String
    let logger: Logger
    let pollMilliseconds: Int
    /// When each done job submitted here was first seen ended (its last frames may still be on their way).
    private var endedAt: [String: ContinuousClock.Instant] = [:]

    init(
        nodeID: String, ledger: LedgerStore, queries: FarmQueries, delivery: Delivery, notifyURL: String?,
        folder: String, logger: Logger, pollMilliseconds: Int = 500
    ) {
        self.nodeID = nodeID
        self.ledger = ledger
        self.queries = queries
        self.delivery = delivery
        self.notifyURL = notifyURL
        self.folder = folder
        self.logger = logger
        self.pollMilliseconds = pollMilliseconds
    }

    static let endStates: Set<String> = ["done", "failed", "canceled"]

    func run() async {
        // Jobs that had ended before this node first ran with a webhook are not news to it.
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        if notifyURL != nil, claim(".notify", "baseline") {
            for job in (try? ledger.jobs()) ?? [] where Self.endStates.contains(job.state) {
                _ = claim(job.job, "notify")
            }
        }
        while !Task.isCancelled {
            await sweep()
            try? await Task.sleep(for: .milliseconds(pollMilliseconds))
        }
    }

    private func sweep() async {
        guard let jobs = try? ledger.jobs() else { return }
        for job in jobs where Self.endStates.contains(job.state) {
            let mine = job.submitter == nodeID && (job.onDone != nil || job.video)
            guard mine || notifyURL != nil else { continue }
            if mine, job.state == "done", !delivered(job) { continue }
            await handle(job, mine: mine)
        }
    }

    /// A done job's frames are in its output folder, or a minute has passed since it was seen done.
    private func delivered(_ job: JobRecord) -> Bool {
        let first = endedAt[job.job] ?? .now
        endedAt[job.job] = first
        if ContinuousClock.now - first > .seconds(60) { return true }
        let names = Set((try? FileManager.default.contentsOfDirectory(atPath: job.output)) ?? [])
        guard let frames = try? ledger.frames(of: job.job) else { return true }
        return frames.filter { $0.state == "done" }.allSatisfy { frame in
            names.contains(where: { $0.hasPrefix(String(format: "%@_%04d.", job.name, frame.frame)) })
        }
    }

    private func handle(_ job: JobRecord, mine: Bool) async {
        if mine, job.video, job.state == "done", claim(job.job, "video") {
            await makeVideo(job)
        }
        let json = (try? await Self.json(queries.status(job, brief: false))) ?? Data("{}".utf8)
        if mine, let command = job.onDone, claim(job.job, "on-done") {
            await runCommand(command, job: job, json: json)
        }
        if let url = notifyURL, claim(job.job, "notify") {
            await post(json, to: url, job: job.job)
        }
    }

    /// Creates the marker `DATA/hooks/JOB.WHAT`; false when it was there already (the action ran, or is running).
    private func claim(_ job: String, _ what: String) -> Bool {
        let fd = open("\(folder)/\(job).\(what)", O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { return false }
        close(fd)
        return true
    }

    static func json(_ status: JobStatusView) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(status) + Data("\n".utf8)
    }

    // MARK: Actions

    private func makeVideo(_ job: JobRecord) async {
        guard let ffmpeg = MovieEncoder.locate() else {
            VideoRecord.write(.failed("ffmpeg is not installed on the submitter."), folder: folder, job: job.job)
            return logger.error(
                "cannot make the job's video: ffmpeg is not installed", metadata: ["farm/job": "\(job.job)"])
        }
        let parent = (job.output as NSString).deletingLastPathComponent
        let staging = "\(parent)/.rexnode-video-\(job.job)"
        defer { try? FileManager.default.removeItem(atPath: staging) }
        do {
            _ = try await delivery.fetch(job, into: staging)
            let done = Set(try ledger.frames(of: job.job).filter { $0.state == "done" }.map(\.frame))
            let files = VideoFiles.frames(in: staging, frames: done)
            let target = VideoFiles.freeName("\(parent)/\(job.name)", ext: ".mp4")
            let fps = job.fps ?? job.movie.map { $0.fpsBase > 0 ? Double($0.fps) / $0.fpsBase : Double($0.fps) } ?? 24
            try await MovieEncoder.preview(ffmpeg: ffmpeg, fps: fps).encode(frames: files, to: target)
            VideoRecord.write(.made(target), folder: folder, job: job.job)
            logger.info("job video made", metadata: ["farm/job": "\(job.job)", "farm/movie": "\(target)"])
        } catch {
            VideoRecord.write(.failed(ErrorSentence.describe(error)), folder: folder, job: job.job)
            logger.error("cannot make the job's video", metadata: ["farm/job": "\(job.job)", "error": "\(error)"])
        }
    }

    /// `sh -c COMMAND` with the job's JSON on stdin and REXNODE_JOB / REXNODE_JOB_STATE set; its output goes to the
    /// node's log. Waited for, up to 10 minutes.
    private func runCommand(_ command: String, job: JobRecord, json: Data) async {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        var environment = ProcessInfo.processInfo.environment
        environment["REXNODE_JOB"] = job.job
        environment["REXNODE_JOB_STATE"] = job.state
        process.environment = environment
        let parent = (job.output as NSString).deletingLastPathComponent
        if FileManager.default.fileExists(atPath: parent) {
            process.currentDirectoryURL = URL(fileURLWithPath: parent)
        }
        let input = Pipe()
        process.standardInput = input
        let status: Int32? = await withCheckedContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(returning: nil)
                return
            }
            DispatchQueue.global().async {
                try? input.fileHandleForWriting.write(contentsOf: json)
                try? input.fileHandleForWriting.close()
            }
        }
        logger.info(
            "on-done command ran",
            metadata: ["farm/job": "\(job.job)", "farm/status": "\(status.map(String.init) ?? "not started")"])
    }

    private func post(_ json: Data, to url: String, job: String) async {
        let outcome = await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: Webhook.post(json, to: url)) }
        }
        if let problem = outcome {
            logger.error("webhook failed", metadata: ["farm/job": "\(job)", "error": "\(problem)"])
        } else {
            logger.info("webhook notified", metadata: ["farm/job": "\(job)"])
        }
    }
}

/// The preview movie's inputs and name, shared by `rexnode video` and `submit --video`.
public enum VideoFiles {
    /// The frame files of a fetched job, in frame order: names ending in `_NNNN.ext` (passes in sub-folders are
    /// left out); `frames` empty: every numbered file.
    public static func frames(in folder: String, frames: Set<Int>) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        let numbered: [(Int, String)] = names.compactMap { name in
            let stem = (name as NSString).deletingPathExtension
            guard !name.hasPrefix("."), let underscore = stem.lastIndex(of: "_"),
                let frame = Int(stem[stem.index(after: underscore)...]), frames.isEmpty || frames.contains(frame),
                !["mp4", "mkv", "mov", "avi", "webm"].contains((name as NSString).pathExtension.lowercased())
            else { return nil }
            return (frame, "\(folder)/\(name)")
        }
        return numbered.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// `BASE.ext`, or `BASE-2.ext`, `BASE-3.ext`... the first that does not exist.
    public static func freeName(_ base: String, ext: String) -> String {
        var candidate = base + ext
        var n = 2
        while FileManager.default.fileExists(atPath: candidate) {
            candidate = "\(base)-\(n)\(ext)"
            n += 1
        }
        return candidate
    }
}

/// A plain HTTP/1.1 POST of JSON (`http://HOST[:PORT]/PATH`), over a blocking socket with 10-second timeouts.
enum Webhook {
    /// nil when the server answered 2xx; else why not, in one sentence.
    static func post(_ body: Data, to url: String) -> String? {
        guard let parsed = URLComponents(string: url), parsed.scheme == "http", let host = parsed.host else {
            return "The webhook \(url) is not an http:// URL."
        }
        let port = parsed.port ?? 80
        let path =
            (parsed.percentEncodedPath.isEmpty ? "/" : parsed.percentEncodedPath)
            + (parsed.percentEncodedQuery.map { "?" + $0 } ?? "")
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else {
            return "Cannot resolve the webhook's host \(host)."
        }
        defer { freeaddrinfo(list) }
        let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
        guard fd >= 0 else { return "Cannot open a socket for the webhook." }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            return "Cannot connect to the webhook \(url): \(String(cString: strerror(errno)))."
        }
        let head =
            "POST \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.count)\r\nUser-Agent: rexnode\r\nConnection: close\r\n\r\n"
        let request = Array(head.utf8) + Array(body)
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return "The webhook \(url) closed the connection." }
            sent += n
        }
        var reply = [UInt8](repeating: 0, count: 512)
        let n = recv(fd, &reply, reply.count, 0)
        guard n > 0 else { return "The webhook \(url) gave no answer." }
        let statusLine = String(decoding: reply[0..<n], as: UTF8.self).split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let code = Int(parts[1]) else { return "The webhook \(url) did not answer HTTP." }
        return (200..<300).contains(code) ? nil : "The webhook \(url) answered \(code)."
    }
}

/// Where a `submit --video` job's preview movie went, kept in its hook marker (`DATA/hooks/JOB.video`): empty while
/// it is made, then `made` or `failed` and the path or the reason on the next line. The read model reads it
/// (`status`'s `movie` and `movie_state`), so the dashboard can show the movie.
enum VideoRecord: Equatable {
    case encoding
    case made(String)
    case failed(String)

    static func path(folder: String, job: String) -> String { "\(folder)/\(job).video" }

    static func write(_ record: VideoRecord, folder: String, job: String) {
        let text: String
        switch record {
        case .encoding: text = ""
        case .made(let path): text = "made\n" + path + "\n"
        case .failed(let why): text = "failed\n" + why + "\n"
        }
        let target = path(folder: folder, job: job)
        let temporary = target + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8)) else { return }
        if rename(temporary, target) != 0 { unlink(temporary) }
    }

    /// The job's record on this node, or nil when its video has not been started here.
    static func read(folder: String, job: String) -> VideoRecord? {
        guard let text = try? String(contentsOfFile: path(folder: folder, job: job), encoding: .utf8) else {
            return nil
        }
        let lines = text.split(separator: "\n", maxSplits: 1).map { $0.trimmingCharacters(in: .newlines) }
        switch lines.first {
        case "made" where lines.count == 2: return .made(lines[1])
        case "failed" where lines.count == 2: return .failed(lines[1])
        default: return .encoding
        }
    }
}
