import Foundation
import GRDB

/// The node's one SQLite database: the applied log and the replicated state machine (jobs, frames, assignments).
///
/// `apply` is deterministic and idempotent: an entry whose command id was seen before is recorded in the log but
/// changes nothing, and the applied index moves in the same transaction as the change, so a crash never applies
/// an entry twice.
public final class LedgerStore: Sendable {
    public let writer: DatabasePool
    public let path: String
    /// What the write-ahead log is cut back to after a checkpoint (SQLite's `journal_size_limit`), in bytes.
    static let walSizeLimit = 64 << 20

    /// Opens (creating if needed) the database at `path` in WAL mode with `synchronous=FULL`.
    ///
    /// `extraMigrations` lets other owners of tables in this file (the Raft log store) register theirs.
    public init(path: String, extraMigrations: (inout DatabaseMigrator) -> Void = { _ in }) throws {
        var config = Configuration()
        config.busyMode = .timeout(10)
        config.label = "ledger"
        self.path = path
        writer = try DatabasePool(path: path, configuration: config)
        // DatabasePool resets synchronous to NORMAL when it opens; durability needs FULL.
        // A compaction writes the whole state once (a 168 MB snapshot at 1,000,000 entries): without a limit the
        // write-ahead log keeps that size after its checkpoint, and the next start reads all of it.
        try writer.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            try db.execute(sql: "PRAGMA journal_size_limit = \(Self.walSizeLimit)")
        }
        var migrator = DatabaseMigrator()
        Self.registerMigrations(&migrator)
        extraMigrations(&migrator)
        try migrator.migrate(writer)
    }

    static func registerMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("ledger-v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE ledger_log (
                        log_index INTEGER PRIMARY KEY, term INTEGER NOT NULL, type TEXT NOT NULL,
                        command_id TEXT NOT NULL, duplicate INTEGER NOT NULL, payload BLOB NOT NULL);
                    CREATE TABLE ledger_commands (command_id TEXT PRIMARY KEY, log_index INTEGER NOT NULL);
                    CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                    CREATE TABLE jobs (
                        job TEXT PRIMARY KEY, name TEXT NOT NULL, submitter TEXT NOT NULL, blend_hash TEXT NOT NULL,
                        blend_size INTEGER NOT NULL, chunk INTEGER NOT NULL, priority INTEGER NOT NULL,
                        output TEXT NOT NULL, submitted_at_ms INTEGER NOT NULL, state TEXT NOT NULL,
                        frames_total INTEGER NOT NULL, frames_done INTEGER NOT NULL DEFAULT 0,
                        frames_failed INTEGER NOT NULL DEFAULT 0, message TEXT, log_index INTEGER NOT NULL);
                    CREATE TABLE frames (
                        job TEXT NOT NULL REFERENCES jobs(job), frame INTEGER NOT NULL, state TEXT NOT NULL,
                        node TEXT, assignment TEXT, attempts INTEGER NOT NULL DEFAULT 0, hash TEXT, ext TEXT,
                        holders TEXT NOT NULL DEFAULT '[]', message TEXT, done_index INTEGER,
                        PRIMARY KEY (job, frame));
                    CREATE INDEX frames_done_index ON frames(done_index) WHERE done_index IS NOT NULL;
                    CREATE INDEX frames_state ON frames(state, job);
                    CREATE INDEX frames_assignment ON frames(assignment);
                    CREATE TABLE assignments (
                        assignment TEXT PRIMARY KEY, job TEXT NOT NULL, node TEXT NOT NULL, term INTEGER NOT NULL,
                        lease_until_ms INTEGER NOT NULL, frames TEXT NOT NULL, open INTEGER NOT NULL DEFAULT 1);
                    CREATE INDEX assignments_open ON assignments(open, node);
                    CREATE TABLE job_node_failures (
                        job TEXT NOT NULL, node TEXT NOT NULL, failures INTEGER NOT NULL, PRIMARY KEY (job, node));
                    """)
        }
        migrator.registerMigration("ledger-v2") { db in
            // What applying each entry did ("applied", "duplicate", "ignored: <reason>"); NULL for older rows.
            try db.execute(sql: "ALTER TABLE ledger_log ADD COLUMN outcome TEXT")
        }
        migrator.registerMigration("ledger-v3") { db in
            // Projects (issue 13): the job's files, its movie, whether its scripts run; a frame's extra outputs.
            try db.execute(
                sql: """
                    ALTER TABLE jobs ADD COLUMN manifest TEXT;
                    ALTER TABLE jobs ADD COLUMN movie TEXT;
                    ALTER TABLE jobs ADD COLUMN trust_scripts INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE jobs ADD COLUMN source_path TEXT;
                    CREATE TABLE frame_outputs (
                        job TEXT NOT NULL, frame INTEGER NOT NULL, path TEXT NOT NULL, hash TEXT NOT NULL,
                        size INTEGER NOT NULL, PRIMARY KEY (job, frame, path));
                    CREATE INDEX frame_outputs_hash ON frame_outputs(hash);
                    CREATE INDEX frames_hash ON frames(hash) WHERE hash IS NOT NULL;
                    """)
        }
        migrator.registerMigration("ledger-v4") { db in
            // Job control (issue 12): a paused flag beside the derived state, each failed attempt by node, how
            // long a frame took to render.
            try db.execute(
                sql: """
                    ALTER TABLE jobs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE frames ADD COLUMN render_ms INTEGER;
                    CREATE TABLE frame_attempts (
                        job TEXT NOT NULL, frame INTEGER NOT NULL, attempt INTEGER NOT NULL, node TEXT NOT NULL,
                        message TEXT NOT NULL, log_index INTEGER NOT NULL, PRIMARY KEY (job, frame, attempt));
                    CREATE TABLE removed_jobs (
                        job TEXT PRIMARY KEY, name TEXT NOT NULL, blobs TEXT NOT NULL, log_index INTEGER NOT NULL);
                    """)
        }
        migrator.registerMigration("ledger-tags") { db in
            // Tags and schedules (issue 14): the tags a node must carry to render a job, comma-separated; NULL: any.
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN tags TEXT")
        }
        migrator.registerMigration("ledger-runtimes") { db in
            // Runtimes (issue 14): the Blender version a job renders with (NULL: any node, jobs from before).
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN blender TEXT")
        }
        migrator.registerMigration("ledger-tiles") { db in
            // Tiles (issue 15): a tiled job's grid, each tile's state and image, the tiles an assignment carries.
            try db.execute(
                sql: """
                    ALTER TABLE jobs ADD COLUMN tiles TEXT;
                    ALTER TABLE assignments ADD COLUMN tiles TEXT;
                    CREATE TABLE tiles (
                        job TEXT NOT NULL, frame INTEGER NOT NULL, tile INTEGER NOT NULL, state TEXT NOT NULL,
                        node TEXT, assignment TEXT, hash TEXT, ext TEXT, holders TEXT NOT NULL DEFAULT '[]',
                        render_ms INTEGER, PRIMARY KEY (job, frame, tile));
                    CREATE INDEX tiles_assignment ON tiles(assignment);
                    CREATE INDEX tiles_state ON tiles(state, job);
                    CREATE INDEX tiles_hash ON tiles(hash) WHERE hash IS NOT NULL;
                    """)
        }
        migrator.registerMigration("ledger-hooks") { db in
            // Notifications and previews (issue 16): the submitter's on-done command, whether it makes a movie.
            try db.execute(
                sql: """
                    ALTER TABLE jobs ADD COLUMN on_done TEXT;
                    ALTER TABLE jobs ADD COLUMN video INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE jobs ADD COLUMN fps REAL;
                    """)
        }
        migrator.registerMigration("ledger-command-floors") { db in
            // Scale (issue 17): each node's command floor (every id of that node below it is settled), and the
            // node and sequence of each remembered id, so the ids below a floor can be forgotten.
            try db.execute(
                sql: """
                    CREATE TABLE command_floors (node TEXT PRIMARY KEY, floor INTEGER NOT NULL);
                    ALTER TABLE ledger_commands ADD COLUMN node TEXT;
                    ALTER TABLE ledger_commands ADD COLUMN seq INTEGER;
                    UPDATE ledger_commands SET
                        node = substr(command_id, 1, instr(command_id, ':') - 1),
                        seq = CAST(substr(command_id, instr(command_id, ':') + 1) AS INTEGER);
                    CREATE INDEX ledger_commands_node ON ledger_commands(node, seq);
                    """)
        }
        migrator.registerMigration("ledger-first-index") { db in
            // A duplicate's first index, kept with it: the row of its command id may be forgotten (floors).
            try db.execute(sql: "ALTER TABLE ledger_log ADD COLUMN first_index INTEGER")
        }
        FarmKeyTable.registerMigrations(&migrator)
    }

    // MARK: Applying the log

    /// The index of the last applied entry (0 for none).
    public func appliedIndex() throws -> UInt64 {
        try writer.read { db in try Self.appliedIndex(db) }
    }

    static func appliedIndex(_ db: Database) throws -> UInt64 {
        UInt64(
            try Int64.fetchOne(db.cachedStatement(sql: "SELECT value FROM ledger_meta WHERE key = 'applied_index'"))
                ?? 0)
    }

    /// Applies committed entries in order, each with its index and term, in one transaction.
    ///
    /// Entries at or below the applied index are skipped (a replay after a crash), so calling it twice is harmless.
    @discardableResult
    public func apply(_ entries: [(index: UInt64, term: UInt64, entry: LedgerEntry)]) throws -> [ApplyOutcome] {
        try writer.write { db in try Self.applyBatch(entries, db: db) }
    }

    /// The same as `apply`, without blocking the caller's thread while SQLite syncs.
    public func applyAsync(_ entries: [(index: UInt64, term: UInt64, entry: LedgerEntry)]) async throws
        -> [ApplyOutcome]
    {
        try await writer.write { db in try Self.applyBatch(entries, db: db) }
    }

    static func applyBatch(_ entries: [(index: UInt64, term: UInt64, entry: LedgerEntry)], db: Database) throws
        -> [ApplyOutcome]
    {
        var outcomes: [ApplyOutcome] = []
        var applied = try appliedIndex(db)
        for (index, term, entry) in entries where index > applied {
            precondition(index == applied + 1, "ledger entries must be applied in order without gaps")
            outcomes.append(try apply(entry, index: index, term: term, db: db))
            applied = index
        }
        try db.cachedStatement(sql: "INSERT OR REPLACE INTO ledger_meta (key, value) VALUES ('applied_index', ?)")
            .execute(arguments: [Int64(applied)])
        return outcomes
    }

    static func apply(_ entry: LedgerEntry, index: UInt64, term: UInt64, db: Database) throws -> ApplyOutcome {
        let id = entry.id.description
        let node = entry.id.node
        let seq = Int64(bitPattern: entry.id.seq)
        let floor = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT floor FROM command_floors WHERE node = ?"), arguments: [node])
        let seen = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT log_index FROM ledger_commands WHERE command_id = ?"), arguments: [id])
        let outcome: ApplyOutcome
        if let seen {
            outcome = .duplicate(firstIndex: UInt64(seen))
        } else if let floor, seq < floor {
            // Its proposer had settled it (applied, or given up and said so) before proposing a later command: a
            // late copy of a retried proposal, or one its proposer abandoned. Either way it must not take effect.
            outcome = .ignored("command \(id) is below \(node)'s command floor \(floor): its proposer had settled it")
        } else {
            try db.cachedStatement(
                sql: "INSERT INTO ledger_commands (command_id, log_index, node, seq) VALUES (?, ?, ?, ?)"
            ).execute(arguments: [id, Int64(index), node, seq])
            outcome = try StateMachine(db: db, index: index, proposer: entry.id.node).apply(entry.command)
        }
        // The proposer's floor moves up only; the ids below it need no row any more (bounded dedup table).
        if let raised = entry.floor.map({ Int64(bitPattern: $0) }), raised > (floor ?? .min) {
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO command_floors (node, floor) VALUES (?, ?)").execute(
                arguments: [node, raised])
            try db.cachedStatement(sql: "DELETE FROM ledger_commands WHERE node = ? AND seq < ?").execute(arguments: [
                node, raised,
            ])
        }
        // Recorded after the state machine ran (same transaction): the outcome depends only on the log, so every
        // node applying it stores the same text.
        try db.cachedStatement(
            sql: """
                INSERT INTO ledger_log (log_index, term, type, command_id, duplicate, payload, outcome, first_index)
                VALUES (?,?,?,?,?,?,?,?)
                """
        ).execute(arguments: [
            Int64(index), Int64(term), entry.command.typeName, id, outcome.isDuplicate, Data(entry.encoded()),
            outcome.storedText, seen,
        ])
        return outcome
    }

    /// How many command ids the ledger remembers for dedup, and how many applied entries it holds: the first
    /// stays small however long the farm runs (each node's floor lets the ledger forget the ids below it).
    public func dedupSize() throws -> (commandIDs: Int, entries: Int) {
        try writer.read { db in
            (
                try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM ledger_commands")) ?? 0,
                try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM ledger_log")) ?? 0
            )
        }
    }

    // MARK: Reading the log

    /// The applied log, oldest first, for `rexnode ledger`.
    public func log(from index: UInt64 = 1, limit: Int = .max) throws -> [LoggedEntry] {
        try writer.read { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT l.log_index, l.term, l.command_id, l.duplicate, l.payload, l.outcome,
                            COALESCE(l.first_index, c.log_index) AS first_index
                        FROM ledger_log l LEFT JOIN ledger_commands c ON c.command_id = l.command_id
                        WHERE l.log_index >= ? ORDER BY l.log_index LIMIT ?
                        """),
                arguments: [Int64(index), Int64(min(limit, Int(Int64.max)))]
            ).map { row in
                let payload: Data = row["payload"]
                let firstIndex: Int64? = row["first_index"]
                return LoggedEntry(
                    index: UInt64(row["log_index"] as Int64), term: UInt64(row["term"] as Int64),
                    duplicate: row["duplicate"], entry: try LedgerEntry(bytes: Array(payload)),
                    outcome: ApplyOutcome(storedText: row["outcome"], firstIndex: firstIndex.map { UInt64($0) }))
            }
        }
    }
}

/// What applying one entry did; the daemon reacts to these (wake the worker, deliver a frame, …).
public enum ApplyOutcome: Sendable, Equatable {
    case applied
    case ignored(String)
    case duplicate(firstIndex: UInt64)
}

extension ApplyOutcome {
    /// The command had been applied before (a retried proposal): its effect is already in the ledger.
    public var isDuplicate: Bool {
        if case .duplicate = self { return true }
        return false
    }

    /// `applied`, `ignored` or `duplicate` (for `rexnode ledger --json`).
    public var name: String {
        switch self {
        case .applied: "applied"
        case .ignored: "ignored"
        case .duplicate: "duplicate"
        }
    }

    /// The `outcome` column of `ledger_log`: "applied", "duplicate" or "ignored: <reason>".
    var storedText: String {
        switch self {
        case .applied: "applied"
        case .ignored(let reason): "ignored: " + reason
        case .duplicate: "duplicate"
        }
    }

    /// Reads the `outcome` column back; `firstIndex` is where the command id was first applied (for duplicates).
    init?(storedText: String?, firstIndex: UInt64?) {
        guard let text = storedText else { return nil }
        switch text {
        case "applied": self = .applied
        case "duplicate": self = .duplicate(firstIndex: firstIndex ?? 0)
        default:
            guard text.hasPrefix("ignored") else { return nil }
            let reason = text.dropFirst("ignored".count)
            self = .ignored(String(reason.hasPrefix(": ") ? reason.dropFirst(2) : reason))
        }
    }
}

/// One applied log entry as stored.
public struct LoggedEntry: Sendable, Equatable {
    public var index: UInt64
    public var term: UInt64
    public var duplicate: Bool
    public var entry: LedgerEntry
    /// What applying it did; `nil` for entries applied before the ledger recorded outcomes.
    public var outcome: ApplyOutcome?
}
