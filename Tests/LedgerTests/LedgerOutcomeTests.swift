import Foundation
import GRDB
import Testing

@testable import Ledger

/// What applying each entry did is stored with the entry (`ledger_log.outcome`) and read back by `log()`.
@Suite struct LedgerOutcomeTests {
    @Test func outcomesAreStoredForAppliedDuplicateAndIgnoredEntries() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2])
        _ = try l.assign("a1", frames: [1, 2])
        let completion = LedgerEntry(
            id: CommandID(node: "n1", seq: 100),
            command: .completeFrame(
                CompleteFrame(
                    job: "j1", frame: 1, node: "n1", assignment: "a1", term: 1, hash: "h1", ext: ".png",
                    holders: ["n1"])))
        // A normal completion, the same command id again (a retried proposal), then a second completion of the
        // now done frame under another command id (another worker, or a retry that got a new id).
        var other = completion
        other.id = CommandID(node: "n2", seq: 5)
        let outcomes = try l.store.apply([(3, 1, completion), (4, 2, completion), (5, 2, other)])
        #expect(outcomes == [.applied, .duplicate(firstIndex: 3), .ignored("frame j1/1 is already done")])

        let log = try l.store.log()
        #expect(log.map(\.index) == [1, 2, 3, 4, 5])
        #expect(
            log.map(\.outcome) == [
                .applied, .applied, .applied, .duplicate(firstIndex: 3), .ignored("frame j1/1 is already done"),
            ])
        #expect(log.map(\.duplicate) == [false, false, false, true, false])
        let stored = try l.store.writer.read { db in
            try String.fetchAll(db, sql: "SELECT outcome FROM ledger_log ORDER BY log_index")
        }
        #expect(stored == ["applied", "applied", "applied", "duplicate", "ignored: frame j1/1 is already done"])
    }

    @Test func everyLedgerApplyingTheSameLogStoresTheSameOutcomes() throws {
        let a = try TestLedger()
        let b = try TestLedger()
        for l in [a, b] {
            try l.submit(frames: [1, 2, 3])
            _ = try l.assign("a1", frames: [1, 2])
            _ = try l.assign("a2", frames: [1, 2])
            _ = try l.complete(2, assignment: "a1")
            _ = try l.complete(2, assignment: "a1", node: "n2")
            _ = try l.fail(1, assignment: "a1")
            _ = try l.fail(1, assignment: "a1")
        }
        let outcomes = try a.store.log().map(\.outcome)
        #expect(outcomes.allSatisfy { $0 != nil })
        #expect(outcomes.contains { if case .ignored = $0 { true } else { false } })
        #expect(try a.store.log() == b.store.log())
    }

    @Test func entriesAppliedBeforeTheMigrationHaveNoOutcome() throws {
        let dir = NSTemporaryDirectory() + "rex-ledger-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/ledger.sqlite"
        // A database as the previous version left it: schema ledger-v1 and one applied entry.
        do {
            let pool = try DatabasePool(path: path)
            var migrator = DatabaseMigrator()
            LedgerStore.registerMigrations(&migrator)
            try migrator.migrate(pool, upTo: "ledger-v1")
            let entry = LedgerEntry(id: CommandID(node: "n1", seq: 1), command: .noop)
            try pool.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO ledger_log (log_index, term, type, command_id, duplicate, payload)
                        VALUES (1, 1, 'Noop', 'n1:1', 0, ?)
                        """,
                    arguments: [Data(entry.encoded())])
                try db.execute(sql: "INSERT INTO ledger_commands (command_id, log_index) VALUES ('n1:1', 1)")
                try db.execute(sql: "INSERT INTO ledger_meta (key, value) VALUES ('applied_index', 1)")
            }
        }
        let store = try LedgerStore(path: path)
        let next = LedgerEntry(id: CommandID(node: "n1", seq: 2), command: .noop)
        #expect(try store.apply([(2, 1, next)]) == [.applied])
        #expect(try store.log().map(\.outcome) == [nil, .applied])
    }
}
