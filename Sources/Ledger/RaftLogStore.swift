import Election
import Foundation
import GRDB

/// Raft's hard state and log in the node's SQLite database (`raft_` tables), durable before `persist`
/// returns: WAL with `synchronous = FULL`, one transaction (one fsync) per request.
///
/// The node's database owner calls `registerMigrations(_:)` on its migrator and hands its writer to
/// `init(writer:)`; tests and the benchmark use `openStandalone(path:)`.
public final class RaftLogStore: RaftStorage {
    private let writer: any DatabaseWriter

    /// Uses an already-migrated database (the caller's migrator ran `registerMigrations`).
    public init(writer: any DatabaseWriter) {
        self.writer = writer
    }

    /// Opens (creating if needed) a database file that holds only Raft's tables.
    public static func openStandalone(path: String) throws -> RaftLogStore {
        let pool = try DatabasePool(path: path)
        // DatabasePool resets `synchronous` to NORMAL when it opens; Raft needs every commit on disk.
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        var migrator = DatabaseMigrator()
        registerMigrations(&migrator)
        try migrator.migrate(pool)
        return RaftLogStore(writer: pool)
    }

    /// Adds Raft's tables to the node's migrator. Schema (see docs/raft.md):
    /// `raft_hard_state(id = 1, term, voted_for)` and `raft_log(idx PRIMARY KEY, term, payload BLOB)` where
    /// `payload` is `EntryKind.encode()` (command id and bytes, or a membership change).
    public static func registerMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("raft_v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE raft_hard_state (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        term INTEGER NOT NULL,
                        voted_for TEXT
                    );
                    CREATE TABLE raft_log (
                        idx INTEGER PRIMARY KEY,
                        term INTEGER NOT NULL,
                        payload BLOB NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("raft_v2_snapshot") { db in
            // Compaction (Raft §7): the latest snapshot; `header` is `RaftSnapshot.encodedHeader()` (last index and
            // term, configuration, recovery epoch), `data` the state machine's own encoding.
            try db.execute(
                sql: """
                    CREATE TABLE raft_snapshot (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        last_index INTEGER NOT NULL,
                        header BLOB NOT NULL,
                        data BLOB NOT NULL
                    );
                    """)
        }
    }

    public func load() async throws -> StoredRaftState {
        try await writer.read { db in try Self.load(db) }
    }

    /// Blocks until the request is durable (see `RaftStorage.persist`).
    public func persist(_ request: PersistRequest) throws {
        try writer.write { db in try Self.persist(request, db) }
    }

    /// Several requests in one transaction: one fsync for the lot.
    public func persist(batch requests: [PersistRequest]) throws {
        try writer.write { db in for request in requests { try Self.persist(request, db) } }
    }

    /// Blocking variant of `load`, for a process that must not return to an event loop between steps (crash tests).
    public func loadNow() throws -> StoredRaftState {
        try writer.read { db in try Self.load(db) }
    }

    /// The stored hard state (term and vote); a fresh database gives term 0 and no vote.
    public func hardState() throws -> HardState {
        try writer.read { db in try Self.hardState(db) }
    }

    /// Stored entries from `index` on, at most `limit` of them (for `rexnode ledger` and debugging).
    public func entries(from index: LogIndex = 1, limit: Int = Int.max) throws -> [LogEntry] {
        try writer.read { db in
            let rows = try Row.fetchCursor(
                db, sql: "SELECT idx, term, payload FROM raft_log WHERE idx >= ? ORDER BY idx LIMIT ?",
                arguments: [Int64(clamping: index), Int64(clamping: limit)])
            var out: [LogEntry] = []
            while let row = try rows.next() {
                out.append(try Self.entry(row))
            }
            return out
        }
    }

    // MARK: SQL

    private static func hardState(_ db: Database) throws -> HardState {
        guard let row = try Row.fetchOne(db, sql: "SELECT term, voted_for FROM raft_hard_state WHERE id = 1") else {
            return HardState()
        }
        return HardState(term: UInt64(row["term"] as Int64), votedFor: row["voted_for"])
    }

    private static func entry(_ row: Row) throws -> LogEntry {
        let index = UInt64(row["idx"] as Int64)
        let payload: [UInt8] = Array(row["payload"] as Data)
        do {
            return LogEntry(term: UInt64(row["term"] as Int64), index: index, kind: try EntryKind(bytes: payload))
        } catch {
            throw RaftStorageError("raft_log entry \(index) is unreadable", cause: error)
        }
    }

    /// The stored snapshot, if the log was ever compacted.
    public func snapshot() throws -> RaftSnapshot? {
        try writer.read { db in try Self.snapshot(db) }
    }

    private static func snapshot(_ db: Database) throws -> RaftSnapshot? {
        guard let row = try Row.fetchOne(db, sql: "SELECT header, data FROM raft_snapshot WHERE id = 1") else {
            return nil
        }
        do {
            return try RaftSnapshot(header: Array(row["header"] as Data), data: Array(row["data"] as Data))
        } catch {
            throw RaftStorageError("raft_snapshot is unreadable", cause: error)
        }
    }

    /// The snapshot's description without its data (which can be the size of the whole ledger).
    private static func snapshotHeader(_ db: Database) throws -> RaftSnapshot? {
        guard let header = try Data.fetchOne(db, sql: "SELECT header FROM raft_snapshot WHERE id = 1") else {
            return nil
        }
        do {
            return try RaftSnapshot(header: Array(header), data: [])
        } catch {
            throw RaftStorageError("raft_snapshot is unreadable", cause: error)
        }
    }

    /// Hard state, the snapshot's header (`snapshot()` reads its data) and the log after it.
    private static func load(_ db: Database) throws -> StoredRaftState {
        let hard = try hardState(db)
        let snapshot = try snapshotHeader(db)
        var log: [LogEntry] = []
        let base = snapshot?.lastIndex ?? 0
        let rows = try Row.fetchCursor(
            db, sql: "SELECT idx, term, payload FROM raft_log WHERE idx > ? ORDER BY idx", arguments: [Int64(base)])
        while let row = try rows.next() {
            let entry = try Self.entry(row)
            guard entry.index == base + UInt64(log.count + 1) else {
                throw RaftStorageError("raft_log has a gap before index \(entry.index)")
            }
            log.append(entry)
        }
        return StoredRaftState(hardState: hard, snapshot: snapshot, log: log)
    }

    private static func persist(_ request: PersistRequest, _ db: Database) throws {
        if let hard = request.hardState {
            try db.execute(
                sql: """
                    INSERT INTO raft_hard_state (id, term, voted_for) VALUES (1, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET term = excluded.term, voted_for = excluded.voted_for
                    """,
                arguments: [Int64(hard.term), hard.votedFor])
        }
        if let installed = request.snapshot {
            try db.execute(
                sql: """
                    INSERT INTO raft_snapshot (id, last_index, header, data) VALUES (1, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET last_index = excluded.last_index, header = excluded.header,
                        data = excluded.data
                    """,
                arguments: [Int64(installed.lastIndex), Data(installed.encodedHeader()), Data(installed.data)])
            try db.execute(sql: "DELETE FROM raft_log WHERE idx <= ?", arguments: [Int64(installed.lastIndex)])
        }
        if let from = request.truncateFrom {
            try db.execute(sql: "DELETE FROM raft_log WHERE idx >= ?", arguments: [Int64(from)])
        }
        if !request.entries.isEmpty {
            let statement = try db.cachedStatement(sql: "INSERT INTO raft_log (idx, term, payload) VALUES (?, ?, ?)")
            for entry in request.entries {
                try statement.execute(arguments: [Int64(entry.index), Int64(entry.term), Data(entry.kind.encode())])
            }
        }
    }
}
