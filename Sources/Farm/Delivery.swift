import Foundation
import Ledger
import Logging

/// On the submitter: copies each committed frame into the job's output folder, once, atomically.
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
            let source = blobs.path(for: hash)
            try await Blocking.run { try Self.placeAtomically(source: source, target: target) }
            errors[job.job] = nil
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

    /// Copies every done frame of a job into `output` (the `fetch` command).
    nonisolated func fetch(_ job: JobRecord, into output: String) async throws -> Int {
        var count = 0
        for frame in try ledger.frames(of: job.job) where frame.state == "done" {
            guard let hash = frame.hash else { continue }
            do {
                try await exchange.ensure(hash, holders: frame.holders)
            } catch {
                throw FarmError(
                    .notFound, "Frame \(frame.frame) of job \(job.job) is on no reachable node.", cause: error)
            }
            let source = blobs.path(for: hash)
            let target = "\(output)/\(Self.frameFileName(job: job.name, frame: frame.frame, ext: frame.ext ?? ""))"
            try await Blocking.run { try Self.placeAtomically(source: source, target: target) }
            count += 1
        }
        return count
    }
}
