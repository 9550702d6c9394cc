import Foundation
import Ledger
import Render
import Synchronization

/// What each render slot is doing right now; read by `peers` and `status` without waiting on the actor.
final class SlotProgress: Sendable {
    struct Task: Sendable, Equatable {
        var job: String
        var frame: Int
        var fraction: Double
    }

    private let table = Mutex<[Int: Task]>([:])

    func set(_ slot: Int, _ task: Task?) { table.withLock { $0[slot] = task } }
    func snapshot() -> [Int: Task] { table.withLock { $0 } }
}

extension FarmNode {
    // MARK: Worker

    /// One render slot: takes this node's open assignments one at a time and renders their frames in a
    /// persistent session that stays open while the next chunk is of the same job.
    func slotLoop(_ slot: Int) async {
        for await _ in pulse.subscribe() {
            guard let assignment = nextAssignment() else { continue }
            claimed.insert(assignment.assignment)
            await run(assignment, slot: slot)
            claimed.remove(assignment.assignment)
            progress.set(slot, nil)
            pulse.fire()
        }
    }

    private func nextAssignment() -> AssignmentRecord? {
        do {
            return try ledger.openAssignments(node: nodeID).first { !claimed.contains($0.assignment) }
        } catch {
            logger.error("cannot read assignments: \(error)")
            return nil
        }
    }

    private func run(_ assignment: AssignmentRecord, slot: Int) async {
        let job = assignment.job
        let session: any RenderSession
        do {
            session = try await openSession(for: job, slot: slot)
        } catch let error as RenderError {
            logger.error("cannot start rendering", metadata: ["job": "\(job)", "error": "\(error.message)"])
            await report(
                assignment.pendingFrames.map {
                    .failFrame(
                        FailFrame(
                            job: job, frame: $0, node: nodeID, assignment: assignment.assignment,
                            message: error.message, fatal: error.code == .badScene))
                })
            return
        } catch {
            // Not Blender's fault (the scene could not be fetched yet, the node is shutting down): hand the
            // frames back instead of spending their attempts.
            logger.warning("returning a chunk", metadata: ["job": "\(job)", "error": "\(error)"])
            // A pause first, so a node that cannot get the scene yet does not take the chunk straight back.
            try? await Task.sleep(for: .seconds(1))
            await report([.releaseFrames(ReleaseFrames(assignment: assignment.assignment, reason: "\(error)"))])
            return
        }
        let submitter = (try? ledger.job(job))?.submitter ?? nodeID
        let outDir = "\(settings.data.work)/\(job)/slot-\(slot)"
        try? FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
        // Results are recorded while the next frame renders; the chunk ends when all are in the ledger.
        await withDiscardingTaskGroup { reports in
            for frame in assignment.pendingFrames {
                guard stillMine(job: job, frame: frame, assignment: assignment.assignment) else { continue }
                progress.set(slot, .init(job: job, frame: frame, fraction: 0))
                let progress = self.progress
                do {
                    let rendered = try await session.render(frame: frame, into: outDir) { p in
                        progress.set(slot, .init(job: job, frame: frame, fraction: p.fraction))
                    }
                    let stored = try blobs.put(fileAt: rendered.path, sync: false)
                    try? FileManager.default.removeItem(atPath: rendered.path)
                    let ext = (rendered.path as NSString).pathExtension
                    logger.debug("frame rendered", metadata: ["job": "\(job)", "frame": "\(frame)"])
                    // The next frame renders while this one is made durable, copied to a second node (the
                    // submitter first) and recorded: a frame counts once its image is on two nodes (or on the
                    // only one).
                    let blobPath = blobs.path(for: stored.hash)
                    reports.addTask {
                        await self.blobSync.flush(blobPath)
                        let holders = await self.replicateUntilCopied(stored.hash, submitter: submitter)
                        await self.report([
                            .completeFrame(
                                CompleteFrame(
                                    job: job, frame: frame, node: self.nodeID, assignment: assignment.assignment,
                                    term: assignment.term, hash: stored.hash, ext: ext.isEmpty ? "" : "." + ext,
                                    holders: holders))
                        ])
                    }
                } catch let error as RenderError where error.code == .canceled || sessions[slot] == nil {
                    // The job was canceled (or finished elsewhere) and the reaper closed the session.
                    break
                } catch {
                    let renderError = error as? RenderError
                    let message = renderError?.message ?? "\(error)"
                    logger.warning(
                        "frame failed", metadata: ["job": "\(job)", "frame": "\(frame)", "error": "\(message)"])
                    let command = LedgerCommand.failFrame(
                        FailFrame(
                            job: job, frame: frame, node: nodeID, assignment: assignment.assignment,
                            message: message, fatal: renderError?.code == .badScene))
                    reports.addTask { await self.report([command]) }
                }
            }
        }
    }

    /// The slot's session for `job`: reused when it is already open for that job, else a new one.
    private func openSession(for job: String, slot: Int) async throws -> any RenderSession {
        if let open = sessions[slot], open.job == job { return open.session }
        if let old = sessions.removeValue(forKey: slot) { await old.session.close() }
        if let warm = warmSessions.removeValue(forKey: job)?.session {
            sessions[slot] = (job, warm)
            return warm
        }
        guard let record = try ledger.job(job) else { throw FarmError(.notFound, "Job \(job) is not in the ledger.") }
        try await ensureBlob(record.blendHash, holders: [record.submitter] + (await alivePeers()))
        let blend = try sceneFile(job: record.job, name: record.name, blendHash: record.blendHash)
        let session = try await renderer.makeSession(
            for: RenderRequest(jobID: job, blendPath: blend, threads: settings.threads))
        sessions[slot] = (job, session)
        return session
    }

    /// The job's .blend as a file named like a .blend in the job's work folder (a hard link to the blob).
    func sceneFile(job: String, name: String, blendHash: String) throws -> String {
        let dir = "\(settings.data.work)/\(job)"
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

    private func stillMine(job: String, frame: Int, assignment: String) -> Bool {
        guard let record = try? ledger.frame(job, frame) else { return false }
        return record.state == "assigned" && record.assignment == assignment
    }

    /// Proposes a worker's report; a failure here only delays it (the lease returns the frames).
    private func report(_ commands: [LedgerCommand]) async {
        do {
            _ = try await commandLog.propose(commands)
        } catch {
            logger.error("cannot record a frame result: \(error)")
        }
    }

    /// Closes sessions whose job is no longer runnable: a canceled job's Blender dies at once,
    /// a finished job's Blender does not linger.
    func sessionReaperLoop() async {
        for await _ in pulse.subscribe() {
            for (slot, open) in sessions {
                let state = (try? ledger.job(open.job))?.state
                guard state != "queued" && state != "running" else { continue }
                // The map may have changed during an earlier close: only drop the session we looked at.
                guard let current = sessions[slot], current.session === open.session else { continue }
                sessions[slot] = nil
                await open.session.close()
                logger.debug("render session closed", metadata: ["job": "\(open.job)", "state": "\(state ?? "-")"])
            }
            for (job, warm) in warmSessions {
                let state = (try? ledger.job(job))?.state
                let unused = ContinuousClock.now - warm.since > Self.warmSessionLifetime
                guard (state != "queued" && state != "running") || unused else { continue }
                // Only if no slot took it during an earlier close.
                guard let current = warmSessions[job], current.session === warm.session else { continue }
                warmSessions[job] = nil
                await warm.session.close()
            }
        }
    }
}

extension FarmNode {
    // MARK: Clean-up

    /// Drops a finished job's .blend (blob and work folder) from this node once the grace period has passed,
    /// unless a job still running uses the same file. Rendered images are kept.
    func blendCleanupLoop() async {
        var finishedSince: [String: ContinuousClock.Instant] = [:]
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(min(30_000, max(200, settings.blendGraceMilliseconds / 4))))
            guard let jobs = try? ledger.jobs() else { continue }
            let inUse = Set(jobs.filter { !$0.isFinished }.map(\.blendHash)).union(submitting)
            let now = ContinuousClock.now
            for job in jobs where job.isFinished {
                let since = finishedSince[job.job] ?? now
                finishedSince[job.job] = since
                let work = "\(settings.data.work)/\(job.job)"
                guard now - since >= .milliseconds(settings.blendGraceMilliseconds),
                    FileManager.default.fileExists(atPath: work) || blobs.has(job.blendHash)
                else { continue }
                try? FileManager.default.removeItem(atPath: work)
                if !inUse.contains(job.blendHash) { blobs.remove(job.blendHash) }
                logger.debug("dropped a finished job's scene", metadata: ["job": "\(job.job)"])
            }
        }
    }
}
