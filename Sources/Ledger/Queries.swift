import Foundation
import GRDB

/// A job as every node sees it.
public struct JobRecord: Sendable, Equatable, Codable {
    public var job: String
    public var name: String
    public var submitter: String
    public var blendHash: String
    public var blendSize: Int64
    public var chunk: Int
    public var priority: Int
    public var output: String
    public var submittedAtMs: Int64
    public var state: String
    public var framesTotal: Int
    public var framesDone: Int
    public var framesFailed: Int
    public var message: String?
    /// The project's files (nil for a job that shipped its .blend alone), decoded when asked for: most readers of
    /// a job never need its file list.
    public var manifest: JobManifest? {
        get { Self.decode(manifestJSON) }
        set { manifestJSON = newValue.map(StateMachine.json) }
    }
    private var manifestJSON: String?
    public var movie: MovieSpec?
    public var trustScripts: Bool
    public var sourcePath: String?
    /// Tags a node must carry, every one, to render the job (empty: any node).
    public var tags: [String]
    /// The Blender version the job renders with; nil: any (older jobs, the simulated renderer).
    public var blender: String?
    /// The grid a tiled job splits each frame into (nil: whole frames).
    public var tiles: TileGrid?
    /// `submit --on-done CMD` (run by the submitter when the job ends).
    public var onDone: String?
    /// `submit --video`: the submitter makes a preview movie when the job is done.
    public var video: Bool
    /// The scene's frame rate, recorded at submit (nil: older jobs, the simulated renderer).
    public var fps: Double?

    init(row: Row) {
        fps = row["fps"]
        onDone = row["on_done"]
        video = (row["video"] as Bool?) ?? false
        tiles = Self.decode(row["tiles"])
        job = row["job"]
        name = row["name"]
        submitter = row["submitter"]
        blendHash = row["blend_hash"]
        blendSize = row["blend_size"]
        chunk = row["chunk"]
        priority = row["priority"]
        output = row["output"]
        submittedAtMs = row["submitted_at_ms"]
        state = row["state"]
        framesTotal = row["frames_total"]
        framesDone = row["frames_done"]
        framesFailed = row["frames_failed"]
        message = row["message"]
        manifestJSON = row["manifest"]
        movie = Self.decode(row["movie"])
        trustScripts = (row["trust_scripts"] as Bool?) ?? false
        sourcePath = row["source_path"]
        blender = row["blender"]
        tags = Self.tags(row["tags"])
    }

    static func tags(_ text: String?) -> [String] {
        (text ?? "").split(separator: ",").map(String.init)
    }

    private static func decode<T: Decodable>(_ text: String?) -> T? {
        text.flatMap { try? JSONDecoder().decode(T.self, from: Data($0.utf8)) }
    }

    /// Every blob the job needs on a worker: the manifest's files, or the .blend alone.
    public var blobs: [String] { manifest?.blobs ?? [blendHash] }

    /// Done, failed or canceled: nothing more will happen to it.
    public var isFinished: Bool { state == "done" || state == "failed" || state == "canceled" }
}

/// One frame of a job.
public struct FrameRecord: Sendable, Equatable, Codable {
    public var job: String
    public var frame: Int
    public var state: String
    public var node: String?
    public var assignment: String?
    public var attempts: Int
    public var hash: String?
    public var ext: String?
    public var holders: [String]
    public var message: String?
    /// The log index that committed the frame (nil until done).
    public var doneIndex: UInt64?
    /// How long the frame took to render where it was done, in milliseconds (nil until done, or not recorded).
    public var renderMs: Int64?

    init(row: Row) {
        doneIndex = (row["done_index"] as Int64?).map(UInt64.init)
        renderMs = row["render_ms"]
        job = row["job"]
        frame = row["frame"]
        state = row["state"]
        node = row["node"]
        assignment = row["assignment"]
        attempts = row["attempts"]
        hash = row["hash"]
        ext = row["ext"]
        holders = (try? JSONDecoder().decode([String].self, from: Data((row["holders"] as String).utf8))) ?? []
        message = row["message"]
    }
}

/// An open assignment: frames of one job given to one node.
public struct AssignmentRecord: Sendable, Equatable {
    public var assignment: String
    public var job: String
    public var node: String
    public var term: UInt64
    public var leaseUntilMs: Int64
    /// Frames of the assignment still to render (or, in a tiled job, to assemble from their tiles).
    public var pendingFrames: [Int]
    /// Tiles of the assignment still to render.
    public var pendingTiles: [FrameTile]

    public init(
        assignment: String, job: String, node: String, term: UInt64, leaseUntilMs: Int64, pendingFrames: [Int],
        pendingTiles: [FrameTile] = []
    ) {
        self.pendingTiles = pendingTiles
        self.assignment = assignment
        self.job = job
        self.node = node
        self.term = term
        self.leaseUntilMs = leaseUntilMs
        self.pendingFrames = pendingFrames
    }
}

extension LedgerStore {
    public func jobs() throws -> [JobRecord] {
        try writer.read { db in
            try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM jobs ORDER BY submitted_at_ms, log_index")).map(
                JobRecord.init)
        }
    }

    /// The job with exactly this id.
    public func job(_ id: String) throws -> JobRecord? {
        try writer.read { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM jobs WHERE job = ?"), arguments: [id]).map(
                JobRecord.init)
        }
    }

    /// The jobs a user's word for a job may mean, oldest first: the job with that exact id; else the jobs with that
    /// exact name; else the jobs whose id starts with it. One match is the job; more are ambiguous.
    public func jobs(matching word: String, limit: Int = 10) throws -> [JobRecord] {
        guard !word.isEmpty else { return [] }
        return try writer.read { db in
            if let exact = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT * FROM jobs WHERE job = ?"), arguments: [word])
            {
                return [JobRecord(row: exact)]
            }
            let named = try Row.fetchAll(
                db.cachedStatement(
                    sql: "SELECT * FROM jobs WHERE name = ? ORDER BY submitted_at_ms, log_index LIMIT ?"),
                arguments: [word, limit])
            if !named.isEmpty { return named.map(JobRecord.init) }
            // A prefix means only itself: no LIKE wildcards.
            return try Row.fetchAll(
                db.cachedStatement(
                    sql: "SELECT * FROM jobs WHERE substr(job, 1, ?) = ? ORDER BY submitted_at_ms, log_index LIMIT ?"),
                arguments: [word.count, word, limit]
            ).map(JobRecord.init)
        }
    }

    /// A job's failed attempts, by frame, oldest first.
    public func attempts(of job: String) throws -> [Int: [FrameAttempt]] {
        try writer.read { db in
            var byFrame: [Int: [FrameAttempt]] = [:]
            for row in try Row.fetchAll(
                db.cachedStatement(sql: "SELECT * FROM frame_attempts WHERE job = ? ORDER BY frame, attempt"),
                arguments: [job])
            {
                byFrame[row["frame"], default: []].append(
                    FrameAttempt(attempt: row["attempt"], node: row["node"], message: row["message"]))
            }
            return byFrame
        }
    }

    /// Nodes that failed this frame since it was last retried.
    public func failedNodes(job: String, frame: Int) throws -> Set<String> {
        try writer.read { db in
            Set(
                try String.fetchAll(
                    db.cachedStatement(sql: "SELECT DISTINCT node FROM frame_attempts WHERE job = ? AND frame = ?"),
                    arguments: [job, frame]))
        }
    }

    /// Nodes blocked for a job: their renders of it failed `LedgerRules.nodeFailuresBeforeBlock` times.
    public func blockedNodes(job: String) throws -> Set<String> {
        try writer.read { db in try Self.blockedNodes(job: job, db) }
    }

    static func blockedNodes(job: String, _ db: Database) throws -> Set<String> {
        Set(
            try String.fetchAll(
                db.cachedStatement(sql: "SELECT node FROM job_node_failures WHERE job = ? AND failures >= ?"),
                arguments: [job, LedgerRules.nodeFailuresBeforeBlock]))
    }

    public func frames(of job: String) throws -> [FrameRecord] {
        try writer.read { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT * FROM frames WHERE job = ? ORDER BY frame"), arguments: [job]
            )
            .map(FrameRecord.init)
        }
    }

    public func frame(_ job: String, _ frame: Int) throws -> FrameRecord? {
        try writer.read { db in
            try Row.fetchOne(
                db.cachedStatement(sql: "SELECT * FROM frames WHERE job = ? AND frame = ?"), arguments: [job, frame]
            )
            .map(FrameRecord.init)
        }
    }

    /// A tiled job's tiles, by frame, in tile order (empty for a job of whole frames).
    public func tiles(of job: String) throws -> [Int: [TileRecord]] {
        try writer.read { db in
            var byFrame: [Int: [TileRecord]] = [:]
            for row in try Row.fetchAll(
                db.cachedStatement(sql: "SELECT * FROM tiles WHERE job = ? ORDER BY frame, tile"), arguments: [job])
            {
                byFrame[row["frame"], default: []].append(TileRecord(row: row))
            }
            return byFrame
        }
    }

    /// How many of a job's tiles are in, of how many (0 of 0 for a job of whole frames).
    public func tileCounts(of job: String) throws -> (done: Int, total: Int) {
        try writer.read { db in
            let row = try Row.fetchOne(
                db.cachedStatement(
                    sql: "SELECT COUNT(*) AS total, COALESCE(SUM(state = 'done'), 0) AS done FROM tiles WHERE job = ?"),
                arguments: [job])
            return (row?["done"] ?? 0, row?["total"] ?? 0)
        }
    }

    public func tile(_ job: String, _ frame: Int, _ tile: Int) throws -> TileRecord? {
        try writer.read { db in
            try Row.fetchOne(
                db.cachedStatement(sql: "SELECT * FROM tiles WHERE job = ? AND frame = ? AND tile = ?"),
                arguments: [job, frame, tile]
            ).map(TileRecord.init)
        }
    }

    /// Whether a blob is a rendered image or extra output of any job (clean-up of project files must keep it).
    public func isRenderedBlob(_ hash: String) throws -> Bool {
        try writer.read { db in
            try Bool.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT EXISTS (SELECT 1 FROM frames WHERE hash = ?)
                            OR EXISTS (SELECT 1 FROM frame_outputs WHERE hash = ?)
                            OR EXISTS (SELECT 1 FROM tiles WHERE hash = ?)
                        """), arguments: [hash, hash, hash]) ?? false
        }
    }

    /// The files a frame's render wrote besides the frame, by path under the output folder.
    public func outputs(of job: String, frame: Int) throws -> [FrameOutput] {
        try writer.read { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql: "SELECT path, hash, size FROM frame_outputs WHERE job = ? AND frame = ? ORDER BY path"),
                arguments: [job, frame]
            ).map { FrameOutput(path: $0["path"], hash: $0["hash"], size: $0["size"]) }
        }
    }

    /// Every extra output of a job, by frame.
    public func outputs(of job: String) throws -> [Int: [FrameOutput]] {
        try writer.read { db in
            var byFrame: [Int: [FrameOutput]] = [:]
            for row in try Row.fetchAll(
                db.cachedStatement(
                    sql: "SELECT frame, path, hash, size FROM frame_outputs WHERE job = ? ORDER BY frame, path"),
                arguments: [job])
            {
                byFrame[row["frame"], default: []].append(
                    FrameOutput(path: row["path"], hash: row["hash"], size: row["size"]))
            }
            return byFrame
        }
    }

    /// Frames committed after log index `after`, oldest first: lets delivery work incrementally.
    public func framesDone(after index: UInt64, limit: Int = 1000) throws -> [FrameRecord] {
        try writer.read { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT * FROM frames WHERE done_index > ? ORDER BY done_index LIMIT ?"),
                arguments: [Int64(index), limit]
            ).map(FrameRecord.init)
        }
    }

    /// Open assignments with frames still assigned, optionally for one node.
    public func openAssignments(node: String? = nil) throws -> [AssignmentRecord] {
        try writer.read { db in
            let rows = try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT a.rowid AS position, a.assignment, a.job, a.node, a.term, a.lease_until_ms, f.frame,
                            NULL AS tile
                        FROM assignments a JOIN frames f ON f.assignment = a.assignment AND f.state = 'assigned'
                        WHERE a.open = 1 AND (? IS NULL OR a.node = ?)
                        UNION ALL
                        SELECT a.rowid AS position, a.assignment, a.job, a.node, a.term, a.lease_until_ms, t.frame, t.tile
                        FROM assignments a JOIN tiles t ON t.assignment = a.assignment AND t.state = 'assigned'
                        WHERE a.open = 1 AND (? IS NULL OR a.node = ?)
                        ORDER BY position, frame, tile
                        """),
                arguments: [node, node, node, node])
            var result: [AssignmentRecord] = []
            for row in rows {
                let id: String = row["assignment"]
                if result.last?.assignment != id {
                    result.append(
                        AssignmentRecord(
                            assignment: id, job: row["job"], node: row["node"], term: UInt64(row["term"] as Int64),
                            leaseUntilMs: row["lease_until_ms"], pendingFrames: []))
                }
                if let tile: Int = row["tile"] {
                    result[result.count - 1].pendingTiles.append(FrameTile(frame: row["frame"], tile: tile))
                } else {
                    result[result.count - 1].pendingFrames.append(row["frame"])
                }
            }
            return result
        }
    }

    /// Queued frames of runnable jobs, per job, in scheduling order (priority first, then age).
    ///
    /// At most `framesPerJob` frames are read per job: the scheduler never needs more than its free slots can take.
    public func queuedWork(framesPerJob: Int = .max) throws -> [QueuedJob] {
        try writer.read { db in
            let jobs = try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT job, chunk, priority, submitted_at_ms, tags, blender FROM jobs
                        WHERE state IN ('queued', 'running')
                        ORDER BY priority DESC, submitted_at_ms, log_index
                        """))
            return try jobs.compactMap { row in
                let job: String = row["job"]
                // Frames to render, or (tiled) to assemble once all their tiles are in; then tiles to render.
                let limit = Int64(min(framesPerJob, Int(Int64.max)))
                let frames = try Int.fetchAll(
                    db.cachedStatement(
                        sql: """
                            SELECT frame FROM frames WHERE job = ? AND state = 'queued'
                            AND NOT EXISTS (SELECT 1 FROM tiles t WHERE t.job = frames.job AND t.frame = frames.frame
                                AND t.state != 'done')
                            ORDER BY frame LIMIT ?
                            """),
                    arguments: [job, limit])
                let tiles = try Row.fetchAll(
                    db.cachedStatement(
                        sql: """
                            SELECT t.frame, t.tile FROM tiles t
                            JOIN frames f ON f.job = t.job AND f.frame = t.frame AND f.state = 'queued'
                            WHERE t.job = ? AND t.state = 'queued' ORDER BY t.frame, t.tile LIMIT ?
                            """),
                    arguments: [job, limit]
                ).map { FrameTile(frame: $0["frame"], tile: $0["tile"]) }
                let running =
                    try Int.fetchOne(
                        db.cachedStatement(sql: "SELECT COUNT(*) FROM assignments WHERE job = ? AND open = 1"),
                        arguments: [job]) ?? 0
                guard !frames.isEmpty || !tiles.isEmpty else { return nil }
                var failedOn: [Int: Set<String>] = [:]
                for failure in try Row.fetchAll(
                    db.cachedStatement(
                        sql: """
                            SELECT a.frame, a.node FROM frame_attempts a
                            JOIN frames f ON f.job = a.job AND f.frame = a.frame AND f.state = 'queued'
                            WHERE a.job = ?
                            """),
                    arguments: [job])
                {
                    failedOn[failure["frame"], default: []].insert(failure["node"])
                }
                return QueuedJob(
                    job: job, priority: row["priority"], chunk: row["chunk"], queuedFrames: frames,
                    queuedTiles: tiles, openAssignments: running, blockedNodes: try Self.blockedNodes(job: job, db),
                    failedOn: failedOn,
                    tags: Set(JobRecord.tags(row["tags"])), blender: row["blender"])
            }
        }
    }

    /// Jobs removed from the farm, with every blob they had (project files, images): nodes drop those no other job
    /// uses.
    /// `index` is where the tombstone last changed (a late image of the job joins it).
    public func removedJobs() throws -> [(job: String, index: Int64, blobs: [String])] {
        try writer.read { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT job, log_index, blobs FROM removed_jobs ORDER BY log_index")
            ).map { row in
                let text: String = row["blobs"]
                return (
                    row["job"], row["log_index"],
                    (try? JSONDecoder().decode([String].self, from: Data(text.utf8))) ?? []
                )
            }
        }
    }

    /// Every blob a job in the ledger still uses: project files and rendered images.
    public func blobsInUse() throws -> Set<String> {
        let jobs = try self.jobs()
        return try writer.read { db in
            var used = Set(jobs.flatMap(\.blobs))
            used.formUnion(
                try String.fetchAll(db.cachedStatement(sql: "SELECT hash FROM frames WHERE hash IS NOT NULL")))
            used.formUnion(try String.fetchAll(db.cachedStatement(sql: "SELECT hash FROM frame_outputs")))
            used.formUnion(
                try String.fetchAll(db.cachedStatement(sql: "SELECT hash FROM tiles WHERE hash IS NOT NULL")))
            return used
        }
    }

    /// Frames rendered by each node (for `peers`).
    public func framesDoneByNode() throws -> [String: Int] {
        try writer.read { db in
            var result: [String: Int] = [:]
            for row in try Row.fetchAll(
                db.cachedStatement(sql: "SELECT node, COUNT(*) AS n FROM frames WHERE state = 'done' GROUP BY node"))
            {
                if let node: String = row["node"] { result[node] = row["n"] }
            }
            return result
        }
    }
}

/// A runnable job with frames waiting for a slot: the scheduler's input.
public struct QueuedJob: Sendable, Equatable {
    public var job: String
    public var priority: Int
    public var chunk: Int
    public var queuedFrames: [Int]
    /// A tiled job's tiles waiting for a slot (its `queuedFrames` are then frames ready to assemble).
    public var queuedTiles: [FrameTile]
    public var openAssignments: Int
    /// Nodes that failed this job `LedgerRules.nodeFailuresBeforeBlock` times: its frames go elsewhere.
    public var blockedNodes: Set<String>
    /// Queued frames that failed before, and where: such a frame goes to another node first.
    public var failedOn: [Int: Set<String>]
    /// Tags a node must carry, every one, to take the job (empty: any node).
    public var tags: Set<String>

    /// The Blender version the job renders with: only slots of that version take it (nil: any slot).
    public var blender: String?

    public init(
        job: String, priority: Int, chunk: Int, queuedFrames: [Int], queuedTiles: [FrameTile] = [],
        openAssignments: Int,
        blockedNodes: Set<String> = [], failedOn: [Int: Set<String>] = [:], tags: Set<String> = [],
        blender: String? = nil
    ) {
        self.blender = blender
        self.failedOn = failedOn
        self.tags = tags
        self.job = job
        self.priority = priority
        self.chunk = chunk
        self.queuedFrames = queuedFrames
        self.queuedTiles = queuedTiles
        self.openAssignments = openAssignments
        self.blockedNodes = blockedNodes
    }
}

/// One tile of a tiled frame.
public struct TileRecord: Sendable, Equatable, Codable {
    public var frame: Int
    public var tile: Int
    public var state: String
    public var node: String?
    public var assignment: String?
    public var hash: String?
    public var ext: String?
    public var holders: [String]
    public var renderMs: Int64?

    init(row: Row) {
        frame = row["frame"]
        tile = row["tile"]
        state = row["state"]
        node = row["node"]
        assignment = row["assignment"]
        hash = row["hash"]
        ext = row["ext"]
        holders = (try? JSONDecoder().decode([String].self, from: Data((row["holders"] as String).utf8))) ?? []
        renderMs = row["render_ms"]
    }
}

/// One failed attempt at a frame, as the ledger recorded it.
public struct FrameAttempt: Sendable, Equatable, Codable {
    public var attempt: Int
    public var node: String
    public var message: String

    public init(attempt: Int, node: String, message: String) {
        self.attempt = attempt
        self.node = node
        self.message = message
    }
}
