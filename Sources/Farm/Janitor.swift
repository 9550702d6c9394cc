import Foundation
import Ledger
import Logging
import Synchronization

/// Each job's folder under `DATA/work/JOB/`: the project under `root/` (hard links to its blobs, in the project's
/// layout), the path table for the render session (`remap.json`), and one folder per render slot.
struct WorkFolders: Sendable {
    let root: String
    let blobs: BlobStore

    func jobFolder(_ job: String) -> String { "\(root)/\(job)" }
    func slotFolder(job: String, slot: Int) -> String { "\(jobFolder(job))/slot-\(slot)" }
    func projectRoot(_ job: String) -> String { "\(jobFolder(job))/root" }

    /// Where a materialized job's files are: the scene to open and the path table to apply (nil when empty).
    struct Materialized: Sendable, Equatable {
        var scene: String
        var remapFile: String?
    }

    /// Lays out the job's files under its root from the blob store (every blob must be here) and writes the path
    /// table. Idempotent: files already in place are kept; two slots may do it at once.
    func materialize(_ record: JobRecord) throws -> Materialized {
        let manifest = record.manifest ?? Self.sceneOnly(record)
        do {
            try manifest.validate()
        } catch {
            throw FarmError(.badInput, "Job \(record.job) has a manifest this node refuses: \(error.description)")
        }
        let root = projectRoot(record.job)
        let fm = FileManager.default
        for file in manifest.files {
            let target = "\(root)/\(file.path)"
            if fm.fileExists(atPath: target) { continue }
            guard blobs.has(file.blob) else {
                throw FarmError(.notFound, "\(file.path) of job \(record.job) is not on this node.")
            }
            try fm.createDirectory(
                atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if link(blobs.path(for: file.blob), target) != 0 && errno != EEXIST {
                // Another file system: a copy, under a temporary name so a half-written file never looks laid out.
                let partial = target + ".rexnode-partial"
                try? fm.removeItem(atPath: partial)
                try fm.copyItem(atPath: blobs.path(for: file.blob), toPath: partial)
                guard rename(partial, target) == 0 else {
                    throw FarmError(.io, "Cannot lay out \(file.path): \(String(cString: strerror(errno))).")
                }
            }
        }
        var remapFile: String?
        if !manifest.remap.isEmpty {
            let table = manifest.remap.mapValues { "\(root)/\($0)" }
            let path = "\(jobFolder(record.job))/remap.json"
            let data = try JSONEncoder().encode(table)
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
            remapFile = path
        }
        return Materialized(scene: "\(root)/\(manifest.scene)", remapFile: remapFile)
    }

    /// The manifest of a job from before projects were shipped: its .blend alone.
    static func sceneOnly(_ record: JobRecord) -> JobManifest {
        JobManifest(
            scene: "\(record.name).blend",
            files: [ManifestFile(path: "\(record.name).blend", blob: record.blendHash, size: record.blendSize)])
    }

    func remove(job: String) { try? FileManager.default.removeItem(atPath: jobFolder(job)) }
}

/// Blobs no committed entry names yet, that clean-up must not take: files being stored by submits, images being
/// recorded by render slots.
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

/// Drops a finished job's project (its blobs and work folder) from this node once the grace period has passed,
/// keeping every file a job still running, or a submit under way, uses. Rendered images are kept. The submitter
/// keeps its jobs' files until they are removed, so `retry` and `rerun` find them. A removed job's files and
/// images go from every node, except those another job still uses.
struct Janitor: Sendable {
    let nodeID: String
    let settings: NodeSettings
    let ledger: LedgerStore
    let blobs: BlobStore
    let work: WorkFolders
    let inFlight: ScenesInFlight
    let logger: Logger

    func run() async {
        var finishedSince: [String: ContinuousClock.Instant] = [:]
        // Jobs whose files this node has dropped, none kept back for a job or submit still using them: their file
        // lists are not read again.
        var cleared: Set<String> = []
        var removed: [String: Int64] = [:]
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(min(30_000, max(200, settings.blendGraceMilliseconds / 4))))
            guard let jobs = try? ledger.jobs() else { continue }
            let inUse = Set(jobs.filter { !$0.isFinished }.flatMap(\.blobs)).union(inFlight.all)
            dropRemoved(&removed)
            let now = ContinuousClock.now
            for job in jobs where job.isFinished && job.submitter != nodeID && !cleared.contains(job.job) {
                let since = finishedSince[job.job] ?? now
                finishedSince[job.job] = since
                guard now - since >= .milliseconds(settings.blendGraceMilliseconds) else { continue }
                let held = job.blobs.filter {
                    !inUse.contains($0) && blobs.has($0) && (try? ledger.isRenderedBlob($0)) == false
                }
                if FileManager.default.fileExists(atPath: work.jobFolder(job.job)) || !held.isEmpty {
                    work.remove(job: job.job)
                    for blob in held { blobs.remove(blob) }
                    logger.debug("dropped a finished job's files", metadata: ["farm/job": "\(job.job)"])
                }
                if !job.blobs.contains(where: { inUse.contains($0) && blobs.has($0) }) {
                    cleared.insert(job.job)
                    finishedSince[job.job] = nil
                }
            }
        }
    }

    /// Removed jobs: their work folders, and every blob of theirs that no job in the ledger, no submit under way and
    /// no render being recorded uses. A blob written or stored again lately (a rerun's identical image on its way to
    /// the ledger, a copy just received) is left for a later round. Each tombstone is handled once per run of the
    /// daemon, and again when it grows (a late image of the job).
    private func dropRemoved(_ done: inout [String: Int64]) {
        guard let tombstones = try? ledger.removedJobs().filter({ done[$0.job] != $0.index }), !tombstones.isEmpty
        else { return }
        let recent = Double(min(120_000, max(500, settings.blendGraceMilliseconds))) / 1000
        for (job, index, hashes) in tombstones {
            work.remove(job: job)
            var dropped = 0
            var later = false
            for hash in hashes where blobs.has(hash) {
                // Checked for each blob just before it goes: a job or a render may have taken it up meanwhile.
                guard let used = try? ledger.blobsInUse(), !used.contains(hash), !inFlight.all.contains(hash) else {
                    continue
                }
                if blobs.modifiedRecently(hash, within: recent) {
                    later = true
                    continue
                }
                blobs.remove(hash)
                dropped += 1
            }
            if dropped > 0 { logger.info("dropped a removed job's files", metadata: ["farm/job": "\(job)"]) }
            if !later { done[job] = index }
        }
    }
}
