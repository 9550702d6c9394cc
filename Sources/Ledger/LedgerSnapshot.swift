import Foundation
import GRDB

/// The replicated state of a ledger as one value: every row of the tables the log builds (jobs, frames,
/// assignments, tiles, outputs, attempts, removed jobs, command ids and floors, farm keys, revoked nodes) as of
/// one applied index. Raft carries it as a snapshot's opaque data (Raft §7); a node that installs it has the same
/// state as one that applied every entry up to that index.
///
/// Encoding (version 1): JSON `{"version":1,"index":N,"tables":{"jobs":{"columns":[…],"rows":[[…],…]},…}}`; a value
/// is `null`, an integer, a string, `{"real":R}` or `{"blob":"<base64>"}` (tagged, so no value changes type). Node-local state (the command sequence
/// ceiling in `ledger_meta`) and the applied log (`ledger_log`, for `rexnode ledger` only) are not part of it.
public enum LedgerSnapshot {
    /// The tables applying the log writes, in an order that keeps references valid (jobs before frames).
    static let tables = [
        "jobs", "frames", "assignments", "job_node_failures", "frame_outputs", "frame_attempts", "removed_jobs",
        "tiles", "command_floors", "ledger_commands", "farm_keys", "revoked_nodes",
    ]
    static let version = 1

    /// Why a snapshot could not be read or installed (one sentence).
    public struct Unreadable: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Every replicated row and the applied index they are the state of, read in one transaction.
    static func capture(_ db: Database) throws -> (index: UInt64, data: [UInt8]) {
        let index = try LedgerStore.appliedIndex(db)
        var content: [String: Any] = [:]
        for table in tables {
            let columns = try db.columns(in: table).map(\.name)
            let names = columns.map { "\"\($0)\"" }.joined(separator: ", ")
            var rows: [[Any]] = []
            let cursor = try Row.fetchCursor(db, sql: "SELECT \(names) FROM \(table)")
            while let row = try cursor.next() {
                rows.append((0..<columns.count).map { encode(row[$0] as DatabaseValue) })
            }
            content[table] = ["columns": columns, "rows": rows]
        }
        let object: [String: Any] = ["version": version, "index": Int64(index), "tables": content]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        return (index, Array(data))
    }

    /// Replaces every replicated row with the snapshot's and sets the applied index to `index`, in the caller's
    /// transaction; throws (changing nothing, the transaction rolls back) if the data is not a snapshot of `index`.
    static func restore(_ bytes: [UInt8], index: UInt64, db: Database) throws {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
            (object["version"] as? NSNumber)?.intValue == version,
            let stated = (object["index"] as? NSNumber)?.uint64Value,
            let tables = object["tables"] as? [String: Any]
        else {
            throw Unreadable(
                description: "The ledger snapshot for index \(index) is not a version-\(version) snapshot.")
        }
        guard stated == index else {
            throw Unreadable(
                description: "The ledger snapshot says index \(stated), but Raft installed it at \(index).")
        }
        for table in Self.tables.reversed() {
            try db.execute(sql: "DELETE FROM \(table)")
        }
        for table in Self.tables {
            guard let content = tables[table] as? [String: Any], let columns = content["columns"] as? [String],
                let rows = content["rows"] as? [[Any]]
            else { continue }
            let known = Set(try db.columns(in: table).map(\.name))
            guard let unknown = columns.first(where: { !known.contains($0) }) else {
                try insert(rows, columns: columns, into: table, db: db)
                continue
            }
            throw Unreadable(
                description: "The ledger snapshot has a column \(table).\(unknown) this node's ledger lacks; "
                    + "upgrade rexnode on this machine.")
        }
        try db.execute(
            sql: "INSERT OR REPLACE INTO ledger_meta (key, value) VALUES ('applied_index', ?)",
            arguments: [Int64(index)])
    }

    private static func insert(_ rows: [[Any]], columns: [String], into table: String, db: Database) throws {
        guard !columns.isEmpty else { return }
        let names = columns.map { "\"\($0)\"" }.joined(separator: ", ")
        let marks = Array(repeating: "?", count: columns.count).joined(separator: ", ")
        let statement = try db.makeStatement(sql: "INSERT INTO \(table) (\(names)) VALUES (\(marks))")
        for row in rows {
            guard row.count == columns.count else {
                throw Unreadable(description: "The ledger snapshot has a \(table) row of the wrong width.")
            }
            try statement.execute(arguments: StatementArguments(try row.map(decode)))
        }
    }

    private static func encode(_ value: DatabaseValue) -> Any {
        switch value.storage {
        case .null: return NSNull()
        case .int64(let v): return v
        case .double(let v): return ["real": v]
        case .string(let v): return v
        case .blob(let v): return ["blob": v.base64EncodedString()]
        }
    }

    private static func decode(_ value: Any) throws -> DatabaseValue {
        switch value {
        case is NSNull: return .null
        case let s as String: return s.databaseValue
        case let object as [String: Any]:
            if let real = object["real"] as? NSNumber { return real.doubleValue.databaseValue }
            guard let text = object["blob"] as? String, let data = Data(base64Encoded: text) else {
                throw Unreadable(description: "The ledger snapshot has a value that is neither a real nor a blob.")
            }
            return data.databaseValue
        case let n as NSNumber:
            return n.int64Value.databaseValue
        default:
            throw Unreadable(description: "The ledger snapshot has a value of an unknown kind.")
        }
    }
}

extension LedgerStore {
    /// The replicated state as of the applied index (one read transaction, so the two agree).
    public func snapshot() throws -> (index: UInt64, data: [UInt8]) {
        try writer.read { db in try LedgerSnapshot.capture(db) }
    }

    /// Installs a snapshot Raft received at `index` (term `term`): the state is replaced, the applied log before it
    /// is dropped and the ledger records where its log now starts, in one transaction. A snapshot not after the
    /// applied index changes nothing.
    public func restore(snapshot data: [UInt8], index: UInt64, term: UInt64) throws {
        try writer.write { db in
            guard try Self.appliedIndex(db) < index else { return }
            try LedgerSnapshot.restore(data, index: index, db: db)
            try Self.markCompacted(through: index, term: term, db: db)
        }
    }

    /// Drops the applied log up to `index` (Raft compacted its log there) and records where the log now starts.
    public func compactLog(through index: UInt64, term: UInt64) throws {
        try writer.write { db in try Self.markCompacted(through: index, term: term, db: db) }
    }

    /// Where the retained log starts: the snapshot's last index and term (`nil`: never compacted, it starts at 1).
    public func snapshotStart() throws -> (index: UInt64, term: UInt64)? {
        try writer.read { db in
            guard let index = try Int64.fetchOne(db, sql: "SELECT value FROM ledger_meta WHERE key = 'snapshot_index'")
            else { return nil }
            let term = try Int64.fetchOne(db, sql: "SELECT value FROM ledger_meta WHERE key = 'snapshot_term'") ?? 0
            return (UInt64(index), UInt64(term))
        }
    }

    private static func markCompacted(through index: UInt64, term: UInt64, db: Database) throws {
        let current = try Int64.fetchOne(db, sql: "SELECT value FROM ledger_meta WHERE key = 'snapshot_index'") ?? 0
        guard Int64(index) > current else { return }
        try db.execute(sql: "DELETE FROM ledger_log WHERE log_index <= ?", arguments: [Int64(index)])
        try db.execute(
            sql: """
                INSERT OR REPLACE INTO ledger_meta (key, value) VALUES ('snapshot_index', ?), ('snapshot_term', ?)
                """,
            arguments: [Int64(index), Int64(term)])
    }
}
