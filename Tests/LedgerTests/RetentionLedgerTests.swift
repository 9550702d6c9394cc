import Foundation
import Testing

@testable import Ledger

/// `DropImages` (issue 17's retention): a node that did not submit a job leaves the holders of the job's images the
/// submitter holds; nothing else changes, and the submitter never drops its own.
@Suite struct RetentionLedgerTests {
    func complete(_ l: TestLedger, frame: Int, hash: String, holders: [String], assignment: String) throws {
        try l.apply(
            .completeFrame(
                CompleteFrame(
                    job: "j1", frame: frame, node: holders[0], assignment: assignment, term: 1, hash: hash,
                    ext: ".png", holders: holders)))
    }

    @Test func aNodeLeavesOnlyTheHoldersOfImagesTheSubmitterHolds() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2, 3])
        _ = try l.assign("a1", frames: [1, 2], node: "n2")
        _ = try l.assign("a2", frames: [3], node: "n3")
        try complete(l, frame: 1, hash: "h1", holders: ["n2", "n1"], assignment: "a1")
        try complete(l, frame: 2, hash: "h2", holders: ["n2", "n3"], assignment: "a1")
        try complete(l, frame: 3, hash: "h1", holders: ["n3", "n1"], assignment: "a2")
        #expect(try l.store.droppableImages(job: "j1", node: "n2") == 1)
        // Only n2 may give up n2's copies.
        #expect(try l.apply(.dropImages(DropImages(job: "j1", node: "n2")), node: "n3").first?.name == "ignored")
        #expect(try l.apply(.dropImages(DropImages(job: "j1", node: "n2")), node: "n2") == [.applied])
        let holders = try l.store.frames(of: "j1").map(\.holders)
        #expect(holders == [["n1"], ["n2", "n3"], ["n1", "n3"]])
        // n2 still holds h2 (the submitter does not); h1 it holds no more, though n3 and n1 do.
        #expect(try l.store.isHeld("h2", by: "n2"))
        #expect(try !l.store.isHeld("h1", by: "n2"))
        #expect(try l.store.isHeld("h1", by: "n3"))
        #expect(try l.store.imageBlobs(job: "j1") == ["h1", "h2"])
        // Again: nothing left to drop. The submitter never drops its own; an unknown job changes nothing.
        #expect(try l.apply(.dropImages(DropImages(job: "j1", node: "n2")), node: "n2").first?.name == "ignored")
        #expect(try l.apply(.dropImages(DropImages(job: "j1", node: "n1")), node: "n1").first?.name == "ignored")
        #expect(try l.apply(.dropImages(DropImages(job: "nope", node: "n2")), node: "n2").first?.name == "ignored")
        #expect(try l.store.frames(of: "j1").map(\.holders) == holders)
        #expect(LedgerCommand.dropImages(DropImages(job: "j1", node: "n2")).typeName == "DropImages")
    }

    @Test func aRevokedSubmittersImagesStayOnTheOtherHolders() throws {
        let l = try TestLedger()
        try l.submit(frames: [1])
        _ = try l.assign("a1", frames: [1], node: "n2")
        try complete(l, frame: 1, hash: "h1", holders: ["n2", "n1"], assignment: "a1")
        try l.apply(.revokeNodes(RevokeNodes(nodes: ["n1"])))
        #expect(try l.apply(.dropImages(DropImages(job: "j1", node: "n2")), node: "n2").first?.name == "ignored")
        #expect(try l.store.frames(of: "j1").map(\.holders) == [["n1", "n2"]])
    }
}
