import Foundation
import Ledger
import Logging
import Render

/// On the submitter: copies each committed frame, and the files its render wrote besides it (File Output passes,
/// under their relative layout), into the job's output folder, once, atomically; once a movie job's frames are
/// all in, encodes its movie there.
///
/// Works incrementally from the log index of each frame's commit, so a long job costs O(frames) in all. Frames
/// that cannot be written yet (folder unwritable, image not here yet) are retried on every pulse.
actor Delivery {
    let nodeID: String
    let ledger: LedgerStore
    let blobs: BlobStore
    let exchange: BlobExchange
    let pulse: Pulse
    let logger: Logger

    /// Every frame committed up to this log index has been looked at.
    private var deliveredThrough: UInt64 = 0
    private var retries: [String: FrameRecord] = [:]
    private var errors: [String: String] = [:]
    /// Movie jobs submitted here that are done rendering and wait for their movie (job -> record).
    private var moviesDue: [String: JobRecord] = [:]
    /// Each movie job's movie on this node, once it is encoding or ended.
    private var movies: [String: MovieState] = [:]

    /// Where a movie job's movie is on its submitter.
    enum MovieState: Sendable, Equatable {
        /// Frames are still arriving.
        case waiting
        case encoding
        case made
        case failed(String)

        var name: String {
            switch self {
            case .waiting: "waiting"
            case .encoding: "encoding"
            case .made: "made"
            case .failed: "failed"
            }
        }
    }

    init(nodeID: String, ledger: LedgerStore, blobs: BlobStore, exchange: BlobExchange, pulse: Pulse, logger: Logger) {
        self.nodeID = nodeID
        self.ledger = ledger
        self.blobs = blobs
        self.exchange = exchange
        self.pulse = pulse
        self.logger = logger
    }

    /// The file name a frame gets in the output folder: `NAME_0001.png` (zero-padded, the image's own extension).
    static func frameFileName(job name: String, frame: Int, ext: String) -> String {
        "\(name)_\(String(format: "%04d", frame))\(ext)"
    }

    /// Why a job's frames cannot be written right now, if they cannot.
    func problem(job: String) -> String? { errors[job] }

    /// How far a job's movie is on this node (`waiting` until it starts).
    func movieState(job: String) -> MovieState { movies[job] ?? .waiting }

    /// The movie's file name in the output folder: `NAME.mp4` (the container's extension).
    static func movieFileName(job name: String, movie: MovieSpec) -> String { name + movie.fileExtension }

    func run() async {
        var jobs: [String: JobRecord] = [:]
        for await _ in pulse.subscribe() {
            do {
                for (key, frame) in retries where try await deliver(frame, jobs: &jobs) {
                    retries[key] = nil
                }
                let batch = try ledger.framesDone(after: deliveredThrough, limit: 1000)
                for frame in batch {
                    if try await !deliver(frame, jobs: &jobs) {
                        retries["\(frame.job)/\(frame.frame)"] = frame
                    }
                    deliveredThrough = frame.doneIndex ?? deliveredThrough
                }
                if batch.count == 1000 { pulse.fire() }
                try await makeMovies()
            } catch {
                logger.error("delivery failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Places one frame if it belongs to a job submitted here; false when it must be retried later.
    private func deliver(_ frame: FrameRecord, jobs: inout [String: JobRecord]) async throws -> Bool {
        if jobs[frame.job] == nil { jobs[frame.job] = try ledger.job(frame.job) }
        guard let job = jobs[frame.job], job.submitter == nodeID, !job.output.isEmpty else { return true }
        guard let hash = frame.hash else { return true }
        do {
            try await exchange.ensure(hash, holders: frame.holders)
        } catch {
            logger.debug(
                "frame image not fetched yet", metadata: ["farm/job": "\(job.job)", "farm/frame": "\(frame.frame)"])
            return false
        }
        let target = "\(job.output)/\(Self.frameFileName(job: job.name, frame: frame.frame, ext: frame.ext ?? ""))"
        do {
            try await placeOutputs(of: frame, job: job)
            let source = blobs.path(for: hash)
            try await Blocking.run { try Self.placeAtomically(source: source, target: target) }
            errors[job.job] = nil
            if job.movie != nil { moviesDue[job.job] = job }
            return true
        } catch {
            if errors[job.job] == nil {
                logger.error(
                    "cannot write a frame to the output folder",
                    metadata: ["farm/job": "\(job.job)", "error": "\(error)"])
            }
            errors[job.job] = "Cannot write frames into \(job.output): \(error)"
            return false
        }
    }

    /// The files a frame's render wrote besides the frame, each under its relative path in the output folder.
    private nonisolated func placeOutputs(of frame: FrameRecord, job: JobRecord, into output: String? = nil)
        async throws
    {
        let folder = output ?? job.output
        for extra in try ledger.outputs(of: job.job, frame: frame.frame) {
            try JobManifest.checkRelative(extra.path)
            try await exchange.ensure(extra.hash, holders: frame.holders)
            let source = blobs.path(for: extra.hash)
            let target = "\(folder)/\(extra.path)"
            try await Blocking.run { try Self.placeAtomically(source: source, target: target) }
        }
    }

    /// Starts the movie of each movie job whose frames are all in its output folder (once per job), in a task of
    /// its own, so a long encode holds up no other job's frames.
    private func makeMovies() async throws {
        for (id, _) in moviesDue {
            moviesDue[id] = nil
            guard movies[id] == nil || movies[id] == .waiting, let job = try ledger.job(id), job.state == "done",
                let movie = job.movie
            else { continue }
            let frames = try ledger.frames(of: id).filter { $0.state == "done" }.sorted { $0.frame < $1.frame }
            let files = frames.map {
                "\(job.output)/\(Self.frameFileName(job: job.name, frame: $0.frame, ext: $0.ext ?? ""))"
            }
            if let absent = files.first(where: { !FileManager.default.fileExists(atPath: $0) }) {
                // Still arriving, or taken away after delivery: only the second is an end.
                if !retries.keys.contains(where: { $0.hasPrefix(id + "/") }) {
                    movies[id] = .failed(
                        "\(absent) is no longer in the output folder; `rexnode fetch \(id)` puts it back")
                }
                continue
            }
            let target = "\(job.output)/\(Self.movieFileName(job: job.name, movie: movie))"
            movies[id] = .encoding
            Task {
                let problem = await Self.encode(movie, frames: files, to: target)
                self.movieEnded(id, problem.map { .failed($0) } ?? .made, target)
            }
        }
    }

    private func movieEnded(_ job: String, _ state: MovieState, _ target: String) {
        movies[job] = state
        if case .failed(let why) = state {
            logger.error("cannot encode a movie", metadata: ["farm/job": "\(job)", "error": "\(why)"])
        } else {
            logger.info("movie encoded", metadata: ["farm/job": "\(job)", "farm/movie": "\(target)"])
        }
        pulse.fire()
    }

    /// Makes `target` from `frames` as `movie` asks, unless it is there already; the reason in one sentence if it
    /// cannot be made. Shared by the submitter's delivery and `fetch`.
    static func encode(_ movie: MovieSpec, frames: [String], to target: String) async -> String? {
        if FileManager.default.fileExists(atPath: target) { return nil }
        guard let ffmpeg = MovieEncoder.locate() else {
            return "ffmpeg is not installed on this node, so \(target) cannot be encoded"
        }
        do {
            try await MovieEncoder(ffmpeg: ffmpeg, settings: movie.settings).encode(frames: frames, to: target)
            return nil
        } catch {
            return (error as? RenderError)?.message ?? "\(error)"
        }
    }

    /// Writes `target` only if it is not there yet: copy to a hidden temporary file, then rename.
    static func placeAtomically(source: String, target: String) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: target) { return }
        let dir = (target as NSString).deletingLastPathComponent
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tmp = "\(dir)/.\((target as NSString).lastPathComponent).part"
        try? fm.removeItem(atPath: tmp)
        try fm.copyItem(atPath: source, toPath: tmp)
        guard rename(tmp, target) == 0 else {
            try? fm.removeItem(atPath: tmp)
            throw FarmError(.io, "cannot rename into \(target): \(String(cString: strerror(errno)))")
        }
    }

    /// What `fetch` put in the folder.
    struct Fetched: Sendable {
        var frames: Int
        /// A movie job's movie, encoded here from the fetched frames (nil if the job has none or it failed).
        var movie: String?
        var movieError: String?
    }

    /// Copies every done frame of a job (and its extra outputs) into `output` (the `fetch` command); a finished
    /// movie job gets its movie there too, encoded from those frames as its submitter did.
    nonisolated func fetch(_ job: JobRecord, into output: String) async throws -> Fetched {
        var count = 0
        var files: [String] = []
        for frame in try ledger.frames(of: job.job) where frame.state == "done" {
            guard let hash = frame.hash else { continue }
            do {
                try await exchange.ensure(hash, holders: frame.holders)
            } catch {
                throw FarmError(
                    .notFound, "Frame \(frame.frame) of job \(job.job) is on no reachable node.", cause: error)
            }
            try await placeOutputs(of: frame, job: job, into: output)
            let source = blobs.path(for: hash)
            let target = "\(output)/\(Self.frameFileName(job: job.name, frame: frame.frame, ext: frame.ext ?? ""))"
            try await Blocking.run { try Self.placeAtomically(source: source, target: target) }
            files.append(target)
            count += 1
        }
        var fetched = Fetched(frames: count)
        guard let movie = job.movie, job.state == "done", !files.isEmpty else { return fetched }
        let target = "\(output)/\(Self.movieFileName(job: job.name, movie: movie))"
        if let problem = await Self.encode(movie, frames: files, to: target) {
            fetched.movieError = problem
        } else {
            fetched.movie = target
        }
        return fetched
    }
}

/// The ledger's record of a scene's movie and the encoder's settings are the same facts in two rooms (Ledger
/// knows nothing of Render); the two conversions live here, side by side.
extension MovieSpec {
    init(_ settings: MovieSettings) {
        self.init(
            container: settings.container, codec: settings.codec, fps: settings.fps, fpsBase: settings.fpsBase,
            crf: settings.crf, bitrate: settings.bitrate, fileExtension: settings.extension)
    }

    var settings: MovieSettings {
        MovieSettings(
            container: container, codec: codec, fps: fps, fpsBase: fpsBase, crf: crf, bitrate: bitrate,
            extension: fileExtension)
    }
}
