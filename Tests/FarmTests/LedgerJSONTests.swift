import Foundation
import Ledger
import Testing

@testable import Farm

/// `rexnode ledger --json` rows: the contract's keys, plus what applying each entry did.
@Suite struct LedgerJSONTests {
    /// A ledger in a folder of its own (the caller removes the folder).
    private func freshStore() throws -> LedgerStore {
        let dir = NSTemporaryDirectory() + "rex-ledger-json-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return try LedgerStore(path: dir + "/ledger.sqlite")
    }

    @Test func rowsCarryTheOutcomeAndWhyAnEntryWasIgnored() throws {
        let store = try freshStore()
        defer { try? FileManager.default.removeItem(atPath: (store.path as NSString).deletingLastPathComponent) }
        let submit = LedgerEntry(
            id: CommandID(node: "n1", seq: 1),
            command: .submitJob(
                SubmitJob(
                    job: "j1", name: "s", submitter: "n1", blendHash: "ab", blendSize: 1, frames: [1], chunk: 1,
                    priority: 0, output: "", submittedAtMs: 0)))
        let release = LedgerEntry(
            id: CommandID(node: "n1", seq: 2), command: .releaseFrames(ReleaseFrames(assignment: "a9", reason: "test")))
        try store.apply([(1, 1, submit), (2, 1, submit), (3, 1, release)])
        let rows = try store.log().map(FarmQueries.logRow)

        #expect(rows[0]["outcome"] == "applied")
        #expect(rows[0]["reason"] == nil && rows[0]["duplicate"] == nil)
        #expect(rows[1]["outcome"] == "duplicate")
        #expect(rows[1]["duplicate"] == true, "the contract's key stays")
        #expect(rows[1]["duplicate_of"] == 1)
        // ReleaseFrames has a `reason` of its own: it keeps it, and why the entry was ignored goes alongside.
        #expect(rows[2]["outcome"] == "ignored")
        #expect(rows[2]["reason"] == "test")
        #expect(rows[2]["ignored_reason"] == "assignment a9 is not open")
        for row in rows {
            for key in ["index", "term", "type", "id"] { #expect(row[key] != nil, "\(key)") }
        }
    }

    @Test func anIgnoredCompletionSaysWhy() throws {
        let store = try freshStore()
        defer { try? FileManager.default.removeItem(atPath: (store.path as NSString).deletingLastPathComponent) }
        let complete = LedgerEntry(
            id: CommandID(node: "n1", seq: 1),
            command: .completeFrame(
                CompleteFrame(
                    job: "j1", frame: 1, node: "n1", assignment: "a1", term: 1, hash: "h", ext: ".png",
                    holders: ["n1"])))
        try store.apply([(1, 1, complete)])
        let row = try #require(try store.log().first.map(FarmQueries.logRow))
        #expect(row["outcome"] == "ignored")
        #expect(row["reason"] == "no frame j1/1")
        #expect(row["ignored_reason"] == "no frame j1/1")
    }
}
