import Foundation
import GRDB
import Testing

@testable import Ledger

/// The ledger's snapshot (Raft's snapshot data): a node that installs it holds exactly the state of one that applied
/// every entry up to its index, and both go on identically.
@Suite("Ledger snapshots")
struct LedgerSnapshotTests {
    /// Every replicated table's rows, in a fixed order, as text (for comparing two ledgers).
    static func state(_ store: LedgerStore) throws -> [String: [String]] {
        try store.writer.read { db in
            var out: [String: [String]] = [:]
            for table in LedgerSnapshot.tables {
                out[table] = try Row.fetchAll(db, sql: "SELECT * FROM \(table)").map { "\($0)" }.sorted()
            }
            return out
        }
    }

    @Test func aRestoredLedgerHoldsTheSameStateAndGoesOnTheSame() throws {
        let source = try TestLedger()
        try source.submit("j1", frames: [1, 2, 3, 4], chunk: 2)
        try source.submit("j2", frames: [10, 11], chunk: 1)
        _ = try source.assign("a1", "j1", frames: [1, 2])
        _ = try source.complete(1, assignment: "a1")
        _ = try source.fail(2, assignment: "a1")
        let (index, data) = try source.store.snapshot()
        #expect(index == source.index)

        let target = try TestLedger()
        try target.store.restore(snapshot: data, index: index, term: 1)
        #expect(try target.store.appliedIndex() == index)
        #expect(try Self.state(target.store) == Self.state(source.store))
        #expect(try Self.state(source.store)["frames"]?.isEmpty == false)
        #expect(try target.store.snapshotStart()?.index == index)
        #expect(try target.store.log().isEmpty, "the applied log before the snapshot is not there")

        // The next entries apply the same on both, including a duplicate of a command applied before the snapshot.
        target.index = source.index
        target.seq = source.seq
        for ledger in [source, target] {
            _ = try ledger.complete(3, assignment: "a1")
            _ = try ledger.assign("a2", "j2", frames: [10])
        }
        #expect(try Self.state(target.store) == Self.state(source.store))
        let replay = LedgerEntry(id: CommandID(node: "n1", seq: 1), command: .noop)
        for ledger in [source, target] {
            ledger.index += 1
            let outcome = try ledger.store.apply([(ledger.index, 1, replay)])
            #expect(outcome.first?.isDuplicate == true, "the dedup table travels in the snapshot")
        }
    }

    @Test func compactingTheLogKeepsTheStateAndSaysWhereTheLogStarts() throws {
        let ledger = try TestLedger()
        try ledger.submit()
        _ = try ledger.assign("a1", frames: [1, 2])
        let before = try Self.state(ledger.store)
        try ledger.store.compactLog(through: 1, term: 1)
        #expect(try ledger.store.log().map(\.index) == [2])
        #expect(try ledger.store.snapshotStart()! == (1, 1))
        #expect(try Self.state(ledger.store) == before)
        // A snapshot behind what was applied changes nothing.
        let (_, data) = try ledger.store.snapshot()
        try ledger.store.restore(snapshot: data, index: 1, term: 1)
        #expect(try ledger.store.appliedIndex() == 2)
    }

    @Test func garbageOrAMismatchedIndexIsRefusedAndChangesNothing() throws {
        let source = try TestLedger()
        try source.submit()
        let (index, data) = try source.store.snapshot()
        let target = try TestLedger()
        try target.submit("other")
        let before = try Self.state(target.store)
        #expect(throws: LedgerSnapshot.Unreadable.self) {
            try target.store.restore(snapshot: Array("not json".utf8), index: 5, term: 1)
        }
        #expect(throws: LedgerSnapshot.Unreadable.self) {
            try target.store.restore(snapshot: data, index: index + 7, term: 1)
        }
        // Cut short anywhere, or one byte too many: refused by a node behind it, which stays as it was.
        let behind = try TestLedger()
        let empty = try Self.state(behind.store)
        for cut in [5, data.count / 3, data.count / 2, data.count - 1] {
            #expect(throws: LedgerSnapshot.Unreadable.self) {
                try behind.store.restore(snapshot: Array(data.prefix(cut)), index: index, term: 1)
            }
        }
        #expect(throws: LedgerSnapshot.Unreadable.self) {
            try behind.store.restore(snapshot: data + [0], index: index, term: 1)
        }
        #expect(try Self.state(behind.store) == empty)
        #expect(try behind.store.appliedIndex() == 0)
        #expect(try Self.state(target.store) == before)
        #expect(try target.store.appliedIndex() == 1)
    }

    /// Every kind of value keeps its type and its bits (negative and large integers, reals, text, blobs, nulls).
    @Test func everyKindOfValueRoundTrips() throws {
        let source = try TestLedger()
        try source.submit()
        let odd: [DatabaseValue] = [
            Int64.min.databaseValue, (-1 as Int64).databaseValue, Int64.max.databaseValue, 0.1.databaseValue,
            (-0.0).databaseValue, "é ✓".databaseValue, Data([0, 255, 7]).databaseValue, .null,
        ]
        // An untyped column (no type affinity) keeps whatever it is given; the target has it too.
        let target = try TestLedger()
        for store in [source.store, target.store] {
            try store.writer.write { db in try db.execute(sql: "ALTER TABLE revoked_nodes ADD COLUMN extra") }
        }
        try source.store.writer.write { db in
            for (n, value) in odd.enumerated() {
                try db.execute(
                    sql: "INSERT INTO revoked_nodes (node, epoch, extra) VALUES (?, ?, ?)",
                    arguments: ["n\(n)", n, value])
            }
        }
        let (index, data) = try source.store.snapshot()
        try target.store.restore(snapshot: data, index: index, term: 1)
        let read = { (store: LedgerStore) in
            try store.writer.read { db in
                try DatabaseValue.fetchAll(db, sql: "SELECT extra FROM revoked_nodes ORDER BY epoch")
            }
        }
        #expect(try read(target.store) == read(source.store))
        #expect(try read(target.store) == odd)
        #expect(try Self.state(target.store) == Self.state(source.store))
    }

    /// A snapshot a node of the version before wrote (JSON, version 1) still installs: a farm upgraded one machine at
    /// a time keeps working.
    @Test func aVersionOneSnapshotStillInstalls() throws {
        let source = try TestLedger()
        try source.submit("j1", frames: [1, 2, 3], chunk: 1)
        _ = try source.assign("a1", "j1", frames: [1])
        _ = try source.complete(1, assignment: "a1")
        // Written as version 1 did: {"version":1,"index":N,"tables":{name:{"columns":[…],"rows":[[…]]}}}.
        let json: [String: Any] = try source.store.writer.read { db in
            var tables: [String: Any] = [:]
            for table in LedgerSnapshot.tables {
                let columns = try db.columns(in: table).map(\.name)
                let rows = try Row.fetchAll(db, sql: "SELECT * FROM \(table)").map { row in
                    (0..<columns.count).map { i -> Any in
                        switch (row[i] as DatabaseValue).storage {
                        case .null: return NSNull()
                        case .int64(let v): return v
                        case .double(let v): return ["real": v]
                        case .string(let v): return v
                        case .blob(let v): return ["blob": v.base64EncodedString()]
                        }
                    }
                }
                tables[table] = ["columns": columns, "rows": rows]
            }
            return ["version": 1, "index": Int64(source.index), "tables": tables]
        }
        let data = Array(try JSONSerialization.data(withJSONObject: json))
        let target = try TestLedger()
        try target.store.restore(snapshot: data, index: source.index, term: 1)
        #expect(try Self.state(target.store) == Self.state(source.store))
        #expect(try target.store.appliedIndex() == source.index)
    }
}
