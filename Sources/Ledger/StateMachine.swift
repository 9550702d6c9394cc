import Foundation
import GRDB

/// The replicated state machine: how each command changes jobs, frames and assignments.
///
/// Runs inside `LedgerStore.apply`'s transaction. It reads nothing but the database and the command, so every
/// node that applies the same log reaches the same state.
struct StateMachine {
    let db: Database
    let index: UInt64
    /// The node that proposed the entry being applied (its command id's node).
    var proposer: String? = nil

    func apply(_ command: LedgerCommand) throws -> ApplyOutcome {
        switch command {
        case .noop, .addNode, .removeNode, .setVoter: return .applied
        case .recoverMembers: return .applied
        case .submitJob(let c): return try submit(c)
        case .assignChunk(let c): return try assign(c)
        case .completeFrame(let c): return try complete(c)
        case .failFrame(let c): return try fail(c)
        case .releaseFrames(let c): return try release(c)
        case .cancelJob(let c): return try cancel(c)
        case .pauseJob(let c): return try pause(c.job, paused: true)
        case .resumeJob(let c): return try pause(c.job, paused: false)
        case .retryFrames(let c): return try retry(c)
        case .setPriority(let c): return try setPriority(c)
        case .removeJob(let c): return try remove(c.job)
        case .farmKey(let c): return try FarmKeyTable.apply(c, db: db, index: index)
        case .revokeNodes(let c): return try FarmKeyTable.apply(c, db: db)
        case .dropImages(let c): return try RetentionTable.apply(c, proposer: proposer, db: db)
        }
    }

    private func submit(_ c: SubmitJob) throws -> ApplyOutcome {
        if try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM jobs WHERE job = ?"), arguments: [c.job]) == true {
            return .ignored("job \(c.job) exists")
        }
        let frames = Array(Set(c.frames)).sorted()
        guard !frames.isEmpty else { return .ignored("job \(c.job) has no frames") }
        // What names files on every node is checked once, here, so no node acts on a path out of its folders.
        if let manifest = c.manifest {
            do {
                try manifest.validate()
            } catch {
                return .ignored("job \(c.job) has a manifest no node accepts: \(error.description)")
            }
        }
        if let grid = c.tiles {
            guard grid.columns >= 1, grid.rows >= 1, grid.columns <= LedgerRules.maxTiles,
                grid.rows <= LedgerRules.maxTiles, grid.count <= LedgerRules.maxTiles, grid.columns <= grid.width,
                grid.rows <= grid.height, frames.count * grid.count <= LedgerRules.maxTileUnits
            else { return .ignored("job \(c.job) asks for \(grid) tiles of a \(grid.width)x\(grid.height) image") }
        }
        try db.cachedStatement(
            sql: """
                INSERT INTO jobs (job, name, submitter, blend_hash, blend_size, chunk, priority, output,
                    submitted_at_ms, state, frames_total, log_index, manifest, movie, trust_scripts, source_path,
                    tags, blender, tiles, on_done, video, fps)
                VALUES (?,?,?,?,?,?,?,?,?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            c.job, c.name, c.submitter, c.blendHash, c.blendSize, max(1, c.chunk), c.priority, c.output,
            c.submittedAtMs, frames.count, Int64(index), c.manifest.map(Self.json), c.movie.map(Self.json),
            c.trustScripts == true, c.sourcePath, c.tags.flatMap { $0.isEmpty ? nil : $0.joined(separator: ",") },
            c.blender, c.tiles.map(Self.json), c.onDone, c.video == true, c.fps,
        ])
        let insert = try db.makeStatement(sql: "INSERT INTO frames (job, frame, state) VALUES (?, ?, 'queued')")
        for frame in frames { try insert.execute(arguments: [c.job, frame]) }
        if let grid = c.tiles {
            let tile = try db.makeStatement(
                sql: "INSERT INTO tiles (job, frame, tile, state) VALUES (?, ?, ?, 'queued')")
            for frame in frames {
                for index in 0..<grid.count { try tile.execute(arguments: [c.job, frame, index]) }
            }
        }
        return .applied
    }

    private func assign(_ c: AssignChunk) throws -> ApplyOutcome {
        // A paused job takes no new assignment (its frames in flight finish).
        guard try jobState(c.job).map({ $0 == "queued" || $0 == "running" }) == true else {
            return .ignored("job \(c.job) is not runnable")
        }
        if try Bool.fetchOne(
            db.cachedStatement(sql: "SELECT 1 FROM assignments WHERE assignment = ?"), arguments: [c.assignment])
            == true
        {
            return .ignored("assignment \(c.assignment) exists")
        }
        var taken: [Int] = []
        for frame in c.frames {
            // A tiled frame is assembled, so assigned as a whole, only once every one of its tiles is in.
            try db.cachedStatement(
                sql: """
                    UPDATE frames SET state = 'assigned', node = ?, assignment = ?
                    WHERE job = ? AND frame = ? AND state = 'queued'
                    AND NOT EXISTS (SELECT 1 FROM tiles t WHERE t.job = frames.job AND t.frame = frames.frame
                        AND t.state != 'done')
                    """
            ).execute(arguments: [c.node, c.assignment, c.job, frame])
            if db.changesCount > 0 { taken.append(frame) }
        }
        var takenTiles: [FrameTile] = []
        for unit in c.tiles ?? [] {
            try db.cachedStatement(
                sql: """
                    UPDATE tiles SET state = 'assigned', node = ?, assignment = ?
                    WHERE job = ? AND frame = ? AND tile = ? AND state = 'queued'
                    AND EXISTS (SELECT 1 FROM frames f WHERE f.job = tiles.job AND f.frame = tiles.frame
                        AND f.state = 'queued')
                    """
            ).execute(arguments: [c.node, c.assignment, c.job, unit.frame, unit.tile])
            if db.changesCount > 0 { takenTiles.append(unit) }
        }
        guard !taken.isEmpty || !takenTiles.isEmpty else {
            return .ignored("no queued frame in assignment \(c.assignment)")
        }
        try db.cachedStatement(
            sql: """
                INSERT INTO assignments (assignment, job, node, term, lease_until_ms, frames, tiles)
                VALUES (?,?,?,?,?,?,?)
                """
        ).execute(arguments: [
            c.assignment, c.job, c.node, Int64(c.term), c.leaseUntilMs, Self.json(taken),
            takenTiles.isEmpty ? nil : Self.json(takenTiles),
        ])
        try updateJob(c.job, started: true)
        return .applied
    }

    private func complete(_ c: CompleteFrame) throws -> ApplyOutcome {
        guard let state = try frameState(c.job, c.frame) else {
            // A frame of a removed job finished after all: its image joins the tombstone, so nodes drop it too.
            if try Bool.fetchOne(
                db.cachedStatement(sql: "SELECT 1 FROM removed_jobs WHERE job = ?"), arguments: [c.job]) == true
            {
                let text = try String.fetchOne(
                    db.cachedStatement(sql: "SELECT blobs FROM removed_jobs WHERE job = ?"), arguments: [c.job])
                var blobs = Set(text.flatMap { try? JSONDecoder().decode([String].self, from: Data($0.utf8)) } ?? [])
                blobs.insert(c.hash)
                for output in c.outputs ?? [] where JobManifest.isAddress(output.hash) { blobs.insert(output.hash) }
                try db.cachedStatement(sql: "UPDATE removed_jobs SET blobs = ?, log_index = ? WHERE job = ?").execute(
                    arguments: [Self.json(blobs.sorted()), Int64(index), c.job])
            }
            return .ignored("no frame \(c.job)/\(c.frame)")
        }
        if let tile = c.tile { return try completeTile(c, tile: tile, frameState: state) }
        for output in c.outputs ?? [] {
            guard JobManifest.isAddress(output.hash), (try? JobManifest.checkRelative(output.path)) != nil else {
                return .ignored("frame \(c.job)/\(c.frame) names an output no node accepts: \(output.path)")
            }
        }
        // The first valid completion wins; images are content-addressed, so whoever rendered it, it is the frame.
        guard state == "queued" || state == "assigned" else {
            return .ignored("frame \(c.job)/\(c.frame) is already \(state)")
        }
        // A late completion from a released assignment may win a frame another assignment now holds.
        let holder = try String.fetchOne(
            db.cachedStatement(sql: "SELECT assignment FROM frames WHERE job = ? AND frame = ?"),
            arguments: [c.job, c.frame])
        try db.cachedStatement(
            sql: """
                UPDATE frames SET state = 'done', node = ?, hash = ?, ext = ?, holders = ?, message = NULL,
                    done_index = ?, render_ms = ?
                WHERE job = ? AND frame = ?
                """
        ).execute(arguments: [
            c.node, c.hash, c.ext, Self.json(c.holders.sorted()), Int64(index), c.renderMs, c.job, c.frame,
        ])
        for output in c.outputs ?? [] {
            try db.cachedStatement(
                sql: "INSERT OR REPLACE INTO frame_outputs (job, frame, path, hash, size) VALUES (?,?,?,?,?)"
            ).execute(arguments: [c.job, c.frame, output.path, output.hash, output.size])
        }
        try closeAssignmentIfFinished(c.assignment)
        if let holder, holder != c.assignment { try closeAssignmentIfFinished(holder) }
        try updateJob(c.job, done: 1)
        return .applied
    }

    /// A tile's image is in. The first valid completion of a tile wins, as for frames; the frame itself is done
    /// once it is assembled (a `CompleteFrame` without a tile).
    private func completeTile(_ c: CompleteFrame, tile: Int, frameState: String) throws -> ApplyOutcome {
        guard frameState == "queued" else { return .ignored("frame \(c.job)/\(c.frame) is already \(frameState)") }
        guard c.outputs?.isEmpty != false else {
            return .ignored("tile \(c.job)/\(c.frame)#\(tile) names outputs; a tile has none")
        }
        // A late completion from a released assignment may win a tile another assignment now holds.
        guard
            let row = try Row.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT assignment FROM tiles
                        WHERE job = ? AND frame = ? AND tile = ? AND state IN ('queued', 'assigned')
                        """),
                arguments: [c.job, c.frame, tile])
        else { return .ignored("tile \(c.job)/\(c.frame)#\(tile) is not waiting for an image") }
        let holder: String? = row["assignment"]
        try db.cachedStatement(
            sql: """
                UPDATE tiles SET state = 'done', node = ?, hash = ?, ext = ?, holders = ?, render_ms = ?
                WHERE job = ? AND frame = ? AND tile = ?
                """
        ).execute(arguments: [c.node, c.hash, c.ext, Self.json(c.holders.sorted()), c.renderMs, c.job, c.frame, tile])
        try closeAssignmentIfFinished(c.assignment)
        if let holder, holder != c.assignment { try closeAssignmentIfFinished(holder) }
        try updateJob(c.job)
        return .applied
    }

    private func fail(_ c: FailFrame) throws -> ApplyOutcome {
        // Fenced: only the current holder of the frame (or of the tile) may report a failed attempt.
        let current = try Row.fetchOne(
            db.cachedStatement(sql: "SELECT state, assignment, attempts FROM frames WHERE job = ? AND frame = ?"),
            arguments: [c.job, c.frame])
        if let tile = c.tile {
            let holder = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT state, assignment FROM tiles WHERE job = ? AND frame = ? AND tile = ?"),
                arguments: [c.job, c.frame, tile])
            guard let current, current["state"] as String == "queued", let holder,
                holder["state"] as String == "assigned", holder["assignment"] as String? == c.assignment
            else { return .ignored("stale failure report for \(c.job)/\(c.frame)#\(tile)") }
        } else {
            guard let current, current["state"] as String == "assigned",
                current["assignment"] as String? == c.assignment
            else { return .ignored("stale failure report for \(c.job)/\(c.frame)") }
        }
        // Every attempt at a frame counts against it, whichever of its tiles it was.
        let attempts = (current!["attempts"] as Int) + 1
        try db.cachedStatement(
            sql: """
                INSERT INTO job_node_failures (job, node, failures) VALUES (?, ?, 1)
                ON CONFLICT (job, node) DO UPDATE SET failures = failures + 1
                """
        ).execute(arguments: [c.job, c.node])
        let final: Bool
        if let alone = c.alone {
            // Scoped: the failure counts against the node first. The frame fails for good only once it has used
            // its attempts on enough different nodes, or on the only node that can take it.
            try db.cachedStatement(
                sql: """
                    INSERT OR REPLACE INTO frame_attempts (job, frame, attempt, node, message, log_index)
                    VALUES (?,?,?,?,?,?)
                    """
            ).execute(arguments: [c.job, c.frame, attempts, c.node, c.message, Int64(index)])
            let nodes =
                try Int.fetchOne(
                    db.cachedStatement(
                        sql: "SELECT COUNT(DISTINCT node) FROM frame_attempts WHERE job = ? AND frame = ?"),
                    arguments: [c.job, c.frame]) ?? 1
            final =
                c.fatal || (attempts >= LedgerRules.maxAttempts && (nodes >= LedgerRules.nodesBeforeFailing || alone))
        } else {
            // An entry from before failures were scoped (no `alone`): the rule it was written under, so a node
            // replaying an old log reaches the state the others reached then.
            final = c.fatal || attempts >= LedgerRules.maxAttempts
        }
        try db.cachedStatement(
            sql: """
                UPDATE frames SET attempts = ?, message = ?, state = ?,
                    node = CASE WHEN ? THEN node ELSE NULL END,
                    assignment = CASE WHEN ? THEN assignment ELSE NULL END
                WHERE job = ? AND frame = ?
                """
        ).execute(arguments: [attempts, c.message, final ? "failed" : "queued", final, final, c.job, c.frame])
        if let tile = c.tile {
            try db.cachedStatement(
                sql:
                    "UPDATE tiles SET state = 'queued', node = NULL, assignment = NULL WHERE job = ? AND frame = ? AND tile = ?"
            ).execute(arguments: [c.job, c.frame, tile])
        }
        if final {
            // The frame's other tiles wait for a retry (those done are kept); assignments left with nothing to
            // render close, so no lease or release has to find them.
            let holding = try String.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT DISTINCT assignment FROM tiles
                        WHERE job = ? AND frame = ? AND state = 'assigned' AND assignment IS NOT NULL
                        ORDER BY assignment
                        """),
                arguments: [c.job, c.frame])
            try db.cachedStatement(
                sql: "UPDATE tiles SET state = 'failed' WHERE job = ? AND frame = ? AND state != 'done'"
            ).execute(arguments: [c.job, c.frame])
            for assignment in holding { try closeAssignmentIfFinished(assignment) }
        }
        if final {
            try db.cachedStatement(sql: "UPDATE jobs SET message = ? WHERE job = ?").execute(arguments: [
                c.message, c.job,
            ])
        }
        try closeAssignmentIfFinished(c.assignment)
        try updateJob(c.job, failed: final ? 1 : 0)
        return .applied
    }

    private func release(_ c: ReleaseFrames) throws -> ApplyOutcome {
        guard
            let job = try String.fetchOne(
                db.cachedStatement(sql: "SELECT job FROM assignments WHERE assignment = ? AND open = 1"),
                arguments: [c.assignment])
        else { return .ignored("assignment \(c.assignment) is not open") }
        try db.cachedStatement(
            sql: """
                UPDATE frames SET state = 'queued', node = NULL, assignment = NULL
                WHERE assignment = ? AND state = 'assigned'
                """
        ).execute(arguments: [c.assignment])
        try db.cachedStatement(
            sql: """
                UPDATE tiles SET state = 'queued', node = NULL, assignment = NULL
                WHERE assignment = ? AND state = 'assigned'
                """
        ).execute(arguments: [c.assignment])
        try db.cachedStatement(sql: "UPDATE assignments SET open = 0 WHERE assignment = ?").execute(arguments: [
            c.assignment
        ])
        try updateJob(job)
        return .applied
    }

    private func cancel(_ c: CancelJob) throws -> ApplyOutcome {
        guard let state = try jobState(c.job) else { return .ignored("no job \(c.job)") }
        guard !Self.finished.contains(state) else { return .ignored("job \(c.job) is already \(state)") }
        try db.cachedStatement(
            sql: "UPDATE frames SET state = 'canceled' WHERE job = ? AND state IN ('queued', 'assigned')"
        ).execute(arguments: [c.job])
        try db.cachedStatement(
            sql: "UPDATE tiles SET state = 'canceled' WHERE job = ? AND state IN ('queued', 'assigned')"
        ).execute(arguments: [c.job])
        try db.cachedStatement(sql: "UPDATE assignments SET open = 0 WHERE job = ?").execute(arguments: [c.job])
        try db.cachedStatement(sql: "UPDATE jobs SET state = 'canceled' WHERE job = ?").execute(arguments: [c.job])
        return .applied
    }

    /// Pausing holds a job's queued frames (its assigned ones finish); resuming lets them be scheduled again.
    private func pause(_ job: String, paused: Bool) throws -> ApplyOutcome {
        guard let state = try jobState(job) else { return .ignored("no job \(job)") }
        guard !Self.finished.contains(state) else { return .ignored("job \(job) is already \(state)") }
        guard (state == "paused") != paused else { return .ignored("job \(job) is already \(state)") }
        try db.cachedStatement(sql: "UPDATE jobs SET paused = ? WHERE job = ?").execute(arguments: [paused, job])
        try updateJob(job)
        return .applied
    }

    /// Failed frames back to the queue with fresh attempts; the job's node blocks are lifted too, since the user
    /// says the cause is fixed. A canceled job stays canceled (rerun it instead).
    private func retry(_ c: RetryFrames) throws -> ApplyOutcome {
        guard let state = try jobState(c.job) else { return .ignored("no job \(c.job)") }
        guard state != "canceled" else { return .ignored("job \(c.job) is canceled") }
        var failed = try Int.fetchAll(
            db.cachedStatement(sql: "SELECT frame FROM frames WHERE job = ? AND state = 'failed' ORDER BY frame"),
            arguments: [c.job])
        if let wanted = c.frames.map(Set.init) { failed = failed.filter(wanted.contains) }
        guard !failed.isEmpty else { return .ignored("job \(c.job) has no failed frame to retry") }
        for frame in failed {
            try db.cachedStatement(
                sql: """
                    UPDATE frames SET state = 'queued', attempts = 0, message = NULL, node = NULL, assignment = NULL
                    WHERE job = ? AND frame = ?
                    """
            ).execute(arguments: [c.job, frame])
            try db.cachedStatement(sql: "DELETE FROM frame_attempts WHERE job = ? AND frame = ?").execute(arguments: [
                c.job, frame,
            ])
            try db.cachedStatement(
                sql: """
                    UPDATE tiles SET state = 'queued', node = NULL, assignment = NULL
                    WHERE job = ? AND frame = ? AND state != 'done'
                    """
            ).execute(arguments: [c.job, frame])
        }
        try db.cachedStatement(sql: "DELETE FROM job_node_failures WHERE job = ?").execute(arguments: [c.job])
        try db.cachedStatement(
            sql: """
                UPDATE jobs SET frames_failed = frames_failed - ?,
                    message = CASE WHEN frames_failed - ? > 0 THEN message ELSE NULL END,
                    state = CASE WHEN paused THEN 'paused' ELSE 'running' END
                WHERE job = ?
                """
        ).execute(arguments: [failed.count, failed.count, c.job])
        return .applied
    }

    private func setPriority(_ c: SetPriority) throws -> ApplyOutcome {
        guard try jobState(c.job) != nil else { return .ignored("no job \(c.job)") }
        try db.cachedStatement(sql: "UPDATE jobs SET priority = ? WHERE job = ?").execute(arguments: [
            c.priority, c.job,
        ])
        return .applied
    }

    /// Forgets the job. A node still rendering one of its frames finds it gone and stops; late reports about it
    /// are ignored (there is no frame left to change).
    private func remove(_ job: String) throws -> ApplyOutcome {
        guard let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM jobs WHERE job = ?"), arguments: [job])
        else {
            return .ignored("no job \(job)")
        }
        // What the job had on the nodes' disks, so each node can drop it (the tombstone stays; it is small).
        let record = JobRecord(row: row)
        let rendered =
            try String.fetchAll(
                db.cachedStatement(sql: "SELECT hash FROM frames WHERE job = ? AND hash IS NOT NULL"), arguments: [job])
            + String.fetchAll(db.cachedStatement(sql: "SELECT hash FROM frame_outputs WHERE job = ?"), arguments: [job])
            + String.fetchAll(
                db.cachedStatement(sql: "SELECT hash FROM tiles WHERE job = ? AND hash IS NOT NULL"), arguments: [job])
        try db.cachedStatement(
            sql: "INSERT OR REPLACE INTO removed_jobs (job, name, blobs, log_index) VALUES (?,?,?,?)"
        ).execute(arguments: [job, record.name, Self.json(Array(Set(record.blobs + rendered)).sorted()), Int64(index)])
        for table in ["frame_outputs", "frame_attempts", "tiles", "frames", "assignments", "job_node_failures", "jobs"]
        {
            try db.execute(sql: "DELETE FROM \(table) WHERE job = ?", arguments: [job])
        }
        return .applied
    }

    static let finished: Set<String> = ["done", "failed", "canceled"]

    // MARK: Helpers

    private func jobState(_ job: String) throws -> String? {
        try String.fetchOne(db.cachedStatement(sql: "SELECT state FROM jobs WHERE job = ?"), arguments: [job])
    }

    private func frameState(_ job: String, _ frame: Int) throws -> String? {
        try String.fetchOne(
            db.cachedStatement(sql: "SELECT state FROM frames WHERE job = ? AND frame = ?"), arguments: [job, frame])
    }

    private func closeAssignmentIfFinished(_ assignment: String) throws {
        try db.cachedStatement(
            sql: """
                UPDATE assignments SET open = 0 WHERE assignment = ?
                AND NOT EXISTS (SELECT 1 FROM frames WHERE assignment = ? AND state = 'assigned')
                AND NOT EXISTS (SELECT 1 FROM tiles WHERE assignment = ? AND state = 'assigned')
                """
        ).execute(arguments: [assignment, assignment, assignment])
    }

    /// Moves the job's counters by what one command did and derives its state from them, in O(1): a frame
    /// becomes done or failed once (only `RetryFrames` takes a frame out of failed, and moves the counter back),
    /// so counting transitions counts frames. A paused job that still has frames to render stays paused.
    private func updateJob(_ job: String, done: Int = 0, failed: Int = 0, started: Bool = false) throws {
        try db.cachedStatement(
            sql: """
                UPDATE jobs SET frames_done = frames_done + ?, frames_failed = frames_failed + ?,
                    paused = CASE WHEN frames_done + ? + frames_failed + ? >= frames_total THEN 0 ELSE paused END,
                    state = CASE
                        WHEN frames_done + ? + frames_failed + ? >= frames_total
                            THEN CASE WHEN frames_failed + ? > 0 THEN 'failed' ELSE 'done' END
                        WHEN paused THEN 'paused'
                        WHEN ? OR state = 'running' OR frames_done + ? + frames_failed + ? > 0
                            OR EXISTS (SELECT 1 FROM frames f WHERE f.job = jobs.job AND f.state = 'assigned')
                            OR EXISTS (SELECT 1 FROM tiles t WHERE t.job = jobs.job AND t.state != 'queued')
                            THEN 'running'
                        ELSE 'queued' END
                WHERE job = ? AND state != 'canceled'
                """
        ).execute(arguments: [done, failed, done, failed, done, failed, failed, started, done, failed, job])
    }

    static func json<T: Encodable>(_ value: T) -> String {
        String(decoding: try! JSONEncoder().encode(value), as: UTF8.self)
    }

    /// A `holders` (or other list of names) column read back; empty when absent or unreadable.
    static func names(_ text: String?) -> [String] {
        text.flatMap { try? JSONDecoder().decode([String].self, from: Data($0.utf8)) } ?? []
    }
}
