import Election
import Foundation
import GRDB

/// The replicated state of a ledger as one value: every row of the tables the log builds (jobs, frames,
/// assignments, tiles, outputs, attempts, removed jobs, command ids and floors, farm keys, revoked nodes) as of
/// one applied index. Raft carries it as a snapshot's opaque data (Raft §7); a node that installs it has the same
/// state as one that applied every entry up to that index.
///
/// Encoding (version 2, docs/protocol.md): `RXLS`, a version byte, the index, then each table as its name, its
/// columns and its rows, every value tagged (null, integer, real, text, blob) so no value changes type. It is written
/// row by row from a cursor and read back row by row into one prepared statement: the only memory it takes is the
/// bytes themselves (version 1, JSON, built an object graph of the whole state: minutes and gigabytes for a farm's
/// month of frames; it is still read). Node-local state (the command sequence ceiling in `ledger_meta`) and the
/// applied log (`ledger_log`, for `rexnode ledger` only) are not part of it.
public enum LedgerSnapshot {
    /// The tables applying the log writes, in an order that keeps references valid (jobs before frames).
    static let tables = [
        "jobs", "frames", "assignments", "job_node_failures", "frame_outputs", "frame_attempts", "removed_jobs",
        "tiles", "command_floors", "ledger_commands", "farm_keys", "revoked_nodes",
    ]
    static let magic = Array("RXLS".utf8)
    static let version: UInt8 = 2

    /// Why a snapshot could not be read or installed (one sentence).
    public struct Unreadable: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    private enum Tag: UInt8 {
        case null = 0, integer, real, text, blob
    }

    /// Every replicated row and the applied index they are the state of, read in one transaction.
    static func capture(_ db: Database) throws -> (index: UInt64, data: [UInt8]) {
        let index = try LedgerStore.appliedIndex(db)
        var w = ByteWriter(capacity: 1 << 16)
        w.bytes.append(contentsOf: magic)
        w.byte(version)
        w.varint(index)
        w.varint(UInt64(tables.count))
        for table in tables {
            let columns = try db.columns(in: table).map(\.name)
            w.string(table)
            w.varint(UInt64(columns.count))
            for column in columns { w.string(column) }
            let cursor = try Row.fetchCursor(db, sql: "SELECT \(quoted(columns)) FROM \(table)")
            while let row = try cursor.next() {
                w.byte(1)
                for column in 0..<columns.count { encode(row[column] as DatabaseValue, into: &w) }
            }
            w.byte(0)
        }
        return (index, w.bytes)
    }

    /// Replaces every replicated row with the snapshot's and sets the applied index to `index`, in the caller's
    /// transaction; throws (changing nothing, the transaction rolls back) if the data is not a snapshot of `index`.
    static func restore(_ bytes: [UInt8], index: UInt64, db: Database) throws {
        if bytes.first == UInt8(ascii: "{") {
            try restoreVersion1(bytes, index: index, db: db)
        } else {
            try restoreVersion2(bytes, index: index, db: db)
        }
        try db.execute(
            sql: "INSERT OR REPLACE INTO ledger_meta (key, value) VALUES ('applied_index', ?)",
            arguments: [Int64(index)])
    }

    private static func restoreVersion2(_ bytes: [UInt8], index: UInt64, db: Database) throws {
        guard bytes.count > magic.count, Array(bytes.prefix(magic.count)) == magic else {
            throw Unreadable(description: "The ledger snapshot for index \(index) is not a ledger snapshot.")
        }
        var r = ByteReader(bytes)
        r.offset = magic.count
        do {
            let stated = try (r.byte(), r.varint())
            guard stated.0 == version else {
                throw Unreadable(
                    description: "The ledger snapshot is version \(stated.0), which this rexnode cannot read; "
                        + "upgrade rexnode on this machine.")
            }
            guard stated.1 == index else {
                throw Unreadable(
                    description: "The ledger snapshot says index \(stated.1), but Raft installed it at \(index).")
            }
            try clearTables(db)
            let count = try r.varint()
            for _ in 0..<count {
                let table = try r.string()
                let columns = try (0..<r.varint()).map { _ in try r.string() }
                try checkColumns(columns, of: table, db: db)
                let statement = try insertStatement(table, columns: columns, db: db)
                var row = [DatabaseValue](repeating: .null, count: columns.count)
                while try rowFollows(&r, table: table) {
                    for column in 0..<columns.count { row[column] = try decode(&r) }
                    try statement?.execute(arguments: StatementArguments(row))
                }
            }
            guard r.remaining == 0 else {
                throw Unreadable(description: "The ledger snapshot has \(r.remaining) bytes after its last table.")
            }
        } catch let error as RaftCodecError {
            throw Unreadable(description: "The ledger snapshot for index \(index) is damaged (\(error)).")
        }
    }

    /// Reads the marker before each row: 1, a row follows; 0, the table ends.
    private static func rowFollows(_ r: inout ByteReader, table: String) throws -> Bool {
        let marker = try r.byte()
        guard marker <= 1 else {
            throw Unreadable(description: "The ledger snapshot's \(table) rows are damaged (marker \(marker)).")
        }
        return marker == 1
    }

    /// The columns a snapshot names must all exist here (a newer node's snapshot may carry more: this one refuses
    /// rather than drop them), and the table must be one applying the log writes.
    private static func checkColumns(_ columns: [String], of table: String, db: Database) throws {
        guard Self.tables.contains(table) else {
            throw Unreadable(
                description: "The ledger snapshot has a table \(table) this node's ledger lacks; "
                    + "upgrade rexnode on this machine.")
        }
        let known = Set(try db.columns(in: table).map(\.name))
        if let unknown = columns.first(where: { !known.contains($0) }) {
            throw Unreadable(
                description: "The ledger snapshot has a column \(table).\(unknown) this node's ledger lacks; "
                    + "upgrade rexnode on this machine.")
        }
    }

    private static func insertStatement(_ table: String, columns: [String], db: Database) throws -> Statement? {
        guard !columns.isEmpty else { return nil }
        let marks = Array(repeating: "?", count: columns.count).joined(separator: ", ")
        return try db.makeStatement(sql: "INSERT INTO \(table) (\(quoted(columns))) VALUES (\(marks))")
    }

    /// A column list for SQL, each name quoted.
    private static func quoted(_ columns: [String]) -> String {
        columns.map { "\"\($0)\"" }.joined(separator: ", ")
    }

    /// Empties every replicated table (children first), in the caller's transaction, before an install.
    private static func clearTables(_ db: Database) throws {
        for table in tables.reversed() {
            try db.execute(sql: "DELETE FROM \(table)")
        }
    }

    private static func encode(_ value: DatabaseValue, into w: inout ByteWriter) {
        switch value.storage {
        case .null:
            w.byte(Tag.null.rawValue)
        case .int64(let v):
            w.byte(Tag.integer.rawValue)
            w.varint(UInt64(bitPattern: (v << 1) ^ (v >> 63)))  // zigzag: small negatives stay short
        case .double(let v):
            w.byte(Tag.real.rawValue)
            w.varint(v.bitPattern)
        case .string(let v):
            w.byte(Tag.text.rawValue)
            w.blob(v.utf8)
        case .blob(let v):
            w.byte(Tag.blob.rawValue)
            w.blob(v)
        }
    }

    private static func decode(_ r: inout ByteReader) throws -> DatabaseValue {
        let tag = try r.byte()
        switch Tag(rawValue: tag) {
        case .null:
            return .null
        case .integer:
            let z = try r.varint()
            return Int64(bitPattern: (z >> 1) ^ (0 &- (z & 1))).databaseValue
        case .real:
            return Double(bitPattern: try r.varint()).databaseValue
        case .text:
            return String(decoding: try r.blob(limit: .max), as: UTF8.self).databaseValue
        case .blob:
            return Data(try r.blob(limit: .max)).databaseValue
        case nil:
            throw Unreadable(description: "The ledger snapshot has a value of an unknown kind (\(tag)).")
        }
    }

    // MARK: Version 1 (JSON), as written before version 2

    private static func restoreVersion1(_ bytes: [UInt8], index: UInt64, db: Database) throws {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
            (object["version"] as? NSNumber)?.intValue == 1,
            let stated = (object["index"] as? NSNumber)?.uint64Value,
            let tables = object["tables"] as? [String: Any]
        else {
            throw Unreadable(description: "The ledger snapshot for index \(index) is not a ledger snapshot.")
        }
        guard stated == index else {
            throw Unreadable(
                description: "The ledger snapshot says index \(stated), but Raft installed it at \(index).")
        }
        try clearTables(db)
        for table in Self.tables {
            guard let content = tables[table] as? [String: Any], let columns = content["columns"] as? [String],
                let rows = content["rows"] as? [[Any]]
            else { continue }
            try checkColumns(columns, of: table, db: db)
            guard let statement = try insertStatement(table, columns: columns, db: db) else { continue }
            for row in rows {
                guard row.count == columns.count else {
                    throw Unreadable(description: "The ledger snapshot has a \(table) row of the wrong width.")
                }
                try statement.execute(arguments: StatementArguments(try row.map(decodeVersion1)))
            }
        }
    }

    private static func decodeVersion1(_ value: Any) throws -> DatabaseValue {
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
