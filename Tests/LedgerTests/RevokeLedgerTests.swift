import Foundation
import Testing

@testable import Ledger

/// `rexnode revoke`'s first entry: the identity is denied for good, before its removal and the key rotation.
@Suite struct RevokeLedgerTests {
    @Test func aRevocationIsRecordedAtTheCurrentEpochSurvivesAReopenAndRepeatsHarmlessly() throws {
        let ledger = try TestLedger()
        let key = String(repeating: "ab", count: 32)
        #expect(try ledger.apply(.farmKey(FarmKeyChange(epoch: 1, key: key))) == [.applied])
        #expect(try ledger.apply(.revokeNodes(RevokeNodes(nodes: ["n2", "n3"]))) == [.applied])
        #expect(try ledger.store.revokedNodes() == ["n2", "n3"])
        // The rotation that follows lists the same node again: nothing changes.
        let next = String(repeating: "cd", count: 32)
        #expect(try ledger.apply(.farmKey(FarmKeyChange(epoch: 2, key: next, revoked: ["n2"]))) == [.applied])
        #expect(try ledger.apply(.revokeNodes(RevokeNodes(nodes: ["n2"]))) == [.applied])
        #expect(try ledger.store.revokedNodes() == ["n2", "n3"])
        let reopened = try LedgerStore(path: ledger.dir + "/ledger.sqlite")
        #expect(try reopened.revokedNodes() == ["n2", "n3"])
        #expect(LedgerCommand.revokeNodes(RevokeNodes(nodes: ["n2"])).typeName == "RevokeNodes")
    }

    @Test func aRevocationEntryRoundTripsThroughItsBytes() throws {
        let entry = LedgerEntry(id: CommandID(node: "n1", seq: 4), command: .revokeNodes(RevokeNodes(nodes: ["n9"])))
        #expect(try LedgerEntry(bytes: entry.encoded()) == entry)
    }
}
