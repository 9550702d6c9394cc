import Foundation
import Ledger
import Logging
import Synchronization

/// Each job's folder under `DATA/work/JOB/`: the scene as a hard link to its blob, and one folder per render slot.
struct WorkFolders: Sendable {
    let root: String
    let blobs: BlobStore

    func jobFolder(_ job: String) -> String { "\(root)/\(job)" }
    func slotFolder(job: String, slot: Int) -> String { "\(jobFolder(job))/slot-\(slot)" }

    /// The job's .blend as a file named like a .blend in the job's folder (a hard link to the blob).
    func sceneFile(job: String, name: String, blendHash: String) throws -> String {
        let dir = jobFolder(job)
        let path = "\(dir)/\(name).blend"
        if FileManager.default.fileExists(atPath: path) { return path }
        guard blobs.has(blendHash) else {
            throw FarmError(.notFound, "The scene of job \(job) is not on this node.")
        }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if link(blobs.path(for: blendHash), path) != 0 {
            try FileManager.default.copyItem(atPath: blobs.path(for: blendHash), toPath: path)
        }
        return path
    }

    func remove(job: String) { try? FileManager.default.removeItem(atPath: jobFolder(job)) }
}

/// Scenes being stored by submits that are not committed yet: clean-up must not take them.
final class ScenesInFlight: Sendable {
    private let hashes = Mutex<[String: Int]>([:])

    func insert(_ hash: String) { hashes.withLock { $0[hash, default: 0] += 1 } }
    func remove(_ hash: String) {
        hashes.withLock { h in
            h[hash, default: 0] -= 1
            if h[hash, default: 0] <= 0 { h[hash] = nil }
        }
    }
    var all: Set<String> { hashes.withLock { Set($0.keys) } }
}

/// Drops a finished job's .blend (blob and work folder) from this node once the grace period has passed, unless a
/// job still running, or a submit under way, uses the same file. Rendered images are kept.
struct Janitor: Sendable {
    let settings: NodeSettings
    let ledger: LedgerStore
    let blobs: BlobStore
    let work: WorkFolders
    let inFlight: ScenesInFlight
    let logger: Logger

    func run() async {
        var finishedSince: [String: ContinuousClock.Instant] = [:]
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(min(30_000, max(200, settings.blendGraceMilliseconds / 4))))
            guard let jobs = try? ledger.jobs() else { continue }
            let inUse = Set(jobs.filter { !$0.isFinished }.map(\.blendHash)).union(inFlight.all)
            let now = ContinuousClock.now
            for job in jobs where job.isFinished {
                let since = finishedSince[job.job] ?? now
                finishedSince[job.job] = since
                guard now - since >= .milliseconds(settings.blendGraceMilliseconds),
                    FileManager.default.fileExists(atPath: work.jobFolder(job.job)) || blobs.has(job.blendHash)
                else { continue }
                work.remove(job: job.job)
                if !inUse.contains(job.blendHash) { blobs.remove(job.blendHash) }
                logger.debug("dropped a finished job's scene", metadata: ["farm/job": "\(job.job)"])
            }
        }
    }
}
