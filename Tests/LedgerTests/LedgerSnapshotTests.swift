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
        #expect(try Self.state(target.store) == before)
        #expect(try target.store.appliedIndex() == 1)
    }
}
