import Foundation
import Ledger
import Logging
import Synchronization

/// Steering a job once it is submitted: pause, resume, retry, priority, rerun, remove. Each is one ledger command,
/// so every node agrees; each is checked here first against the job as this node sees it, so the user gets a
/// sentence saying why nothing happened instead of a command the ledger ignores.
struct JobControl: Sendable {
    let nodeID: String
    let ledger: LedgerStore
    let commandLog: any CommandLog
    let submitService: SubmitService
    let exchange: BlobExchange
    let roster: Roster
    let logger: Logger

    /// The job after the command, as this node's ledger has it (for a removed job, as it was).
    func perform(_ action: ControlRequest.JobAction, on job: JobRecord) async throws -> JobRecord {
        let id = job.job
        switch action {
        case .pause:
            guard !job.isFinished else { throw FarmError(.badInput, "Job \(id) is \(job.state); it cannot pause.") }
            guard job.state != "paused" else { throw FarmError(.badInput, "Job \(id) is already paused.") }
            try await propose(.pauseJob(JobTarget(job: id)), for: job)
        case .resume:
            guard job.state == "paused" else {
                throw FarmError(.badInput, "Job \(id) is \(job.state), not paused; there is nothing to resume.")
            }
            try await propose(.resumeJob(JobTarget(job: id)), for: job)
        case .retry(let spec):
            guard job.state != "canceled" else {
                throw FarmError(.badInput, "Job \(id) was canceled; `rexnode rerun \(id)` renders it again.")
            }
            let wanted = try spec.map { try FrameSpec($0).frames }
            let failed = try ledger.frames(of: id).filter { $0.state == "failed" }.map(\.frame)
            let chosen = wanted.map { w in failed.filter(Set(w).contains) } ?? failed
            guard !chosen.isEmpty else {
                let which = spec.map { " among frames \($0)" } ?? ""
                throw FarmError(.badInput, "Job \(id) has no failed frame\(which) to retry.")
            }
            try await propose(.retryFrames(RetryFrames(job: id, frames: wanted == nil ? nil : chosen)), for: job)
        case .priority(let priority):
            try await propose(.setPriority(SetPriority(job: id, priority: priority)), for: job)
        case .rerun(let output):
            return try await rerun(job, output: output)
        case .remove(let force):
            guard job.isFinished || force else {
                throw FarmError(
                    .badInput,
                    "Job \(id) is \(job.state); cancel it first, or pass --force to remove it while it runs.")
            }
            // One command even for a running job: its assignments go with it, and its workers stop (their frame is
            // gone); no half-done cancel-then-remove.
            try await propose(.removeJob(JobTarget(job: id)), for: job)
            logger.info("job removed", metadata: ["farm/job": "\(id)"])
            var gone = job
            gone.state = "removed"
            return gone
        }
        return try ledger.job(id) ?? job
    }

    private func propose(_ command: LedgerCommand, for job: JobRecord) async throws {
        let outcomes = try await commandLog.propose([command])
        if case .ignored(let reason) = outcomes.first {
            throw FarmError(.badInput, "The farm did not change job \(job.job): \(reason).")
        }
    }

    /// A new job from the same files and settings. The files come from wherever the farm still holds them (the
    /// submitter keeps a job's files until it is removed); the frames go to a fresh output folder on this node.
    private func rerun(_ job: JobRecord, output: String?) async throws -> JobRecord {
        let manifest = job.manifest ?? WorkFolders.sceneOnly(job)
        let holders = [job.submitter] + (await roster.alivePeers())
        do {
            try await exchange.ensureAll(manifest.blobs, holders: holders.filter { $0 != nodeID })
        } catch {
            throw FarmError(
                .notFound,
                "The files of job \(job.job) are no longer on any reachable node (its submitter keeps them until the "
                    + "job is removed); submit the .blend again.")
        }
        let folder = job.submitter == nodeID ? job.output : output
        guard let folder else {
            throw FarmError(.badInput, "rerun needs an output folder for a job submitted from another node.")
        }
        let frames = try ledger.frames(of: job.job).map(\.frame)
        let outcome = try await submitService.commit(
            SubmitService.Draft(
                name: job.name, frames: frames, chunk: job.chunk, priority: job.priority, output: folder,
                manifest: manifest, movie: job.movie, trustScripts: job.trustScripts, sourcePath: job.sourcePath,
                tags: job.tags, blender: job.blender, tiles: job.tiles, onDone: job.onDone, video: job.video,
                fps: job.fps))
        logger.info("job rerun", metadata: ["farm/job": "\(job.job)", "farm/new": "\(outcome.record.job)"])
        return outcome.record
    }
}

/// Output folders this node's submits are choosing right now, so two submits at once never pick the same one.
final class OutputClaims: Sendable {
    private let held = Mutex<Set<String>>([])

    /// The folder a new job of this node writes to: `requested`, unless it already holds files, belongs to another
    /// job of this node, or another submit is choosing it; then `requested-2`, `-3`, …. The caller releases it.
    func claim(_ requested: String, taken: (String) throws -> Bool) throws -> String {
        let base = requested.hasSuffix("/") && requested.count > 1 ? String(requested.dropLast()) : requested
        for n in 1...1000 {
            let candidate = n == 1 ? base : "\(base)-\(n)"
            let reserved = held.withLock { set in set.insert(candidate).inserted }
            guard reserved else { continue }
            if try !taken(candidate) && !Self.holdsFiles(candidate) { return candidate }
            release(candidate)
        }
        throw FarmError(.badInput, "Every folder from \(base) to \(base)-1000 already holds frames; choose --output.")
    }

    func release(_ folder: String) { _ = held.withLock { $0.remove(folder) } }

    /// Whether a folder has anything in it but hidden files (this node's own write probes are hidden).
    static func holdsFiles(_ folder: String) -> Bool {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return entries.contains { !$0.hasPrefix(".") }
    }
}
