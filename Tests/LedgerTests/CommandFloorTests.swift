import Foundation
import GRDB
import Testing

@testable import Ledger

/// The dedup table is bounded: each entry carries its proposer's command floor, the ledger forgets the ids below
/// it and refuses a late copy of one (issue 17).
@Suite struct CommandFloorTests {
    func noop(_ node: String, _ seq: UInt64, floor: UInt64?) -> LedgerEntry {
        LedgerEntry(id: CommandID(node: node, seq: seq), command: .noop, floor: floor)
    }

    func rememberedIDs(_ store: LedgerStore) throws -> Int {
        try store.writer.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM ledger_commands") ?? -1 }
    }

    @Test func aNodeThatSettlesEachCommandLeavesOneRowHoweverLongItRuns() throws {
        let ledger = try TestLedger()
        let store = ledger.store
        // One proposal at a time: each entry's floor is its own sequence number.
        let entries = (1...1000).map { i in
            (UInt64(i), UInt64(1), noop("n1", 100 + UInt64(i), floor: 100 + UInt64(i)))
        }
        let outcomes = try store.apply(entries)
        #expect(outcomes.allSatisfy { $0 == .applied })
        #expect(try rememberedIDs(store) == 1)
    }

    @Test func aRetriedCopyIsRefusedWhetherItsRowIsKeptOrForgotten() throws {
        let ledger = try TestLedger()
        let store = ledger.store
        let i: UInt64 = 0
        // Two proposals in flight at once (seq 10 and 11, floor 10), applied out of order; then a retried copy of
        // 10 while its row is still kept; then a later proposal (floor 12) and another late copy of 11.
        let outcomes = try store.apply([
            (i + 1, 1, noop("n1", 11, floor: 10)),
            (i + 2, 1, noop("n1", 10, floor: 10)),
            (i + 3, 2, noop("n1", 10, floor: 10)),
            (i + 4, 2, noop("n1", 12, floor: 12)),
            (i + 5, 2, noop("n1", 11, floor: 10)),
            (i + 6, 2, noop("n2", 5, floor: 5)),
        ])
        #expect(outcomes[0] == .applied)
        #expect(outcomes[1] == .applied)
        #expect(outcomes[2] == .duplicate(firstIndex: i + 2))
        #expect(outcomes[3] == .applied)
        #expect(outcomes[4] == .ignored("command n1:11 is below n1's command floor 12: its proposer had settled it"))
        // Another node's floor is its own.
        #expect(outcomes[5] == .applied)
        let floors = try store.writer.read { db in
            try Row.fetchAll(db, sql: "SELECT node, floor FROM command_floors ORDER BY node").map {
                "\($0["node"] as String)=\($0["floor"] as Int64)"
            }
        }
        #expect(floors == ["n1=12", "n2=5"])
        let kept = try store.writer.read { db in
            try String.fetchAll(db, sql: "SELECT command_id FROM ledger_commands WHERE node IN ('n1', 'n2')")
        }
        #expect(Set(kept) == ["n1:12", "n2:5"])
        // The duplicate still names where its command first applied, though that id's row is forgotten.
        #expect(try store.log()[2].outcome == .duplicate(firstIndex: i + 2))
    }

    @Test func entriesWithoutAFloorKeepTheOldRuleAndLedgersAgree() throws {
        let (la, lb) = (try TestLedger(), try TestLedger())
        let (a, b) = (la.store, lb.store)
        let i: UInt64 = 0
        let log: [(UInt64, UInt64, LedgerEntry)] = [
            (i + 1, 1, noop("n1", 3, floor: nil)), (i + 2, 1, noop("n1", 3, floor: nil)),
            (i + 3, 1, noop("n1", 4, floor: 4)), (i + 4, 1, noop("n1", 3, floor: nil)),
        ]
        let outcomes = try a.apply(log)
        #expect(outcomes[1] == .duplicate(firstIndex: i + 1))
        #expect(outcomes[3].name == "ignored")
        #expect(try b.apply(log) == outcomes)
        #expect(try a.log().map(\.outcome) == (try b.log().map(\.outcome)))
    }

    /// A ledger from before floors: its remembered ids get their node and sequence, so a floor can forget them.
    @Test func aLedgerFromBeforeFloorsForgetsItsOldIdsOnceAFloorPassesThem() throws {
        let path = NSTemporaryDirectory() + "rex-floor-\(UUID().uuidString.prefix(8)).sqlite"
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let queue = try DatabaseQueue(path: path)
            var migrator = DatabaseMigrator()
            LedgerStore.registerMigrations(&migrator)
            try migrator.migrate(queue, upTo: "ledger-hooks")
            try queue.write { db in
                for seq in 1...3 {
                    let entry = LedgerEntry(id: CommandID(node: "n1", seq: UInt64(seq)), command: .noop)
                    try db.execute(
                        sql: """
                            INSERT INTO ledger_log (log_index, term, type, command_id, duplicate, payload)
                            VALUES (?, 1, 'Noop', ?, 0, ?)
                            """,
                        arguments: [seq, "n1:\(seq)", Data(entry.encoded())])
                    try db.execute(
                        sql: "INSERT INTO ledger_commands (command_id, log_index) VALUES (?, ?)",
                        arguments: ["n1:\(seq)", seq])
                }
                try db.execute(sql: "INSERT INTO ledger_meta (key, value) VALUES ('applied_index', 3)")
            }
        }
        let store = try LedgerStore(path: path)
        #expect(try store.apply([(4, 1, noop("n1", 2, floor: nil))]) == [.duplicate(firstIndex: 2)])
        #expect(try store.apply([(5, 1, noop("n1", 9, floor: 9))]) == [.applied])
        #expect(try rememberedIDs(store) == 1)
        #expect(try store.apply([(6, 1, noop("n1", 3, floor: nil))]).first?.name == "ignored")
    }
}
