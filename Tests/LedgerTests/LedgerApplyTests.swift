import Foundation
import GRDB
import Testing

@testable import Ledger

/// A ledger in a fresh temporary file, with a helper that appends commands as the next log entries.
final class TestLedger {
    let dir: String
    let store: LedgerStore
    var index: UInt64 = 0
    var seq: UInt64 = 0

    init() throws {
        dir = NSTemporaryDirectory() + "rex-ledger-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        store = try LedgerStore(path: dir + "/ledger.sqlite")
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    @discardableResult
    func apply(_ commands: LedgerCommand..., node: String = "n1", term: UInt64 = 1) throws -> [ApplyOutcome] {
        try store.apply(
            commands.map { command in
                index += 1
                seq += 1
                return (index, term, LedgerEntry(id: CommandID(node: node, seq: seq), command: command))
            })
    }

    func submit(_ job: String = "j1", frames: [Int] = [1, 2, 3, 4], chunk: Int = 2) throws {
        try apply(
            .submitJob(
                SubmitJob(
                    job: job, name: "scene", submitter: "n1", blendHash: "ab", blendSize: 10, frames: frames,
                    chunk: chunk, priority: 0, output: "/tmp/out", submittedAtMs: 1)))
    }

    func assign(_ id: String, _ job: String = "j1", frames: [Int], node: String = "n1") throws -> [ApplyOutcome] {
        try apply(
            .assignChunk(
                AssignChunk(assignment: id, job: job, frames: frames, node: node, term: 1, leaseUntilMs: 1000)))
    }

    func complete(_ frame: Int, assignment: String, job: String = "j1", node: String = "n1") throws -> [ApplyOutcome] {
        try apply(
            .completeFrame(
                CompleteFrame(
                    job: job, frame: frame, node: node, assignment: assignment, term: 1, hash: "h\(frame)",
                    ext: ".png", holders: [node])))
    }

    func fail(
        _ frame: Int, assignment: String, fatal: Bool = false, node: String = "n1", alone: Bool? = false,
        job: String = "j1"
    ) throws -> [ApplyOutcome] {
        try apply(
            .failFrame(
                FailFrame(
                    job: job, frame: frame, node: node, assignment: assignment, message: "boom", fatal: fatal,
                    alone: alone)))
    }

    func frame(_ n: Int, job: String = "j1") throws -> FrameRecord {
        try #require(try store.frames(of: job).first { $0.frame == n })
    }
}

@Suite struct LedgerApplyTests {
    @Test func submitCreatesQueuedJobWithSortedUniqueFrames() throws {
        let l = try TestLedger()
        try l.submit(frames: [3, 1, 2, 2])
        let job = try #require(try l.store.job("j1"))
        #expect(job.state == "queued")
        #expect(job.framesTotal == 3)
        #expect(try l.store.frames(of: "j1").map(\.frame) == [1, 2, 3])
        #expect(try l.store.queuedWork().first?.queuedFrames == [1, 2, 3])
    }

    @Test func repeatedCommandIDIsRecordedButAppliedOnce() throws {
        let l = try TestLedger()
        let entry = LedgerEntry(
            id: CommandID(node: "n9", seq: 7),
            command: .submitJob(
                SubmitJob(
                    job: "j1", name: "s", submitter: "n9", blendHash: "ab", blendSize: 1, frames: [1], chunk: 1,
                    priority: 0, output: "", submittedAtMs: 0)))
        let cancel = LedgerEntry(id: CommandID(node: "n9", seq: 8), command: .cancelJob(CancelJob(job: "j1")))
        let outcomes = try l.store.apply([(1, 1, entry), (2, 1, cancel), (3, 2, entry)])
        #expect(outcomes == [.applied, .applied, .duplicate(firstIndex: 1)])
        // The retried submit did not resurrect the canceled job.
        #expect(try l.store.job("j1")?.state == "canceled")
        let log = try l.store.log()
        #expect(log.map(\.index) == [1, 2, 3])
        #expect(log.map(\.duplicate) == [false, false, true])
    }

    @Test func replayingAppliedIndexesIsHarmless() throws {
        let l = try TestLedger()
        let entry = LedgerEntry(id: CommandID(node: "n1", seq: 1), command: .noop)
        #expect(try l.store.apply([(1, 1, entry)]) == [.applied])
        #expect(try l.store.apply([(1, 1, entry)]) == [])
        #expect(try l.store.appliedIndex() == 1)
    }

    @Test func assignTakesOnlyQueuedFramesAndJobRuns() throws {
        let l = try TestLedger()
        try l.submit()
        #expect(try l.assign("a1", frames: [1, 2]) == [.applied])
        // A second assignment of the same frames takes nothing.
        if case .ignored = try l.assign("a2", frames: [1, 2])[0] {} else { Issue.record("expected ignored") }
        #expect(try l.store.job("j1")?.state == "running")
        #expect(try l.store.openAssignments(node: "n1").map(\.pendingFrames) == [[1, 2]])
        #expect(try l.store.queuedWork().first?.queuedFrames == [3, 4])
    }

    @Test func firstCompletionWinsAndLaterOnesAreIgnored() throws {
        let l = try TestLedger()
        try l.submit()
        _ = try l.assign("a1", frames: [1, 2])
        #expect(try l.complete(1, assignment: "a1") == [.applied])
        if case .ignored = try l.complete(1, assignment: "a1", node: "n2")[0] {
        } else {
            Issue.record("second completion must be ignored")
        }
        let f = try l.frame(1)
        #expect(f.state == "done")
        #expect(f.node == "n1")
        #expect(f.hash == "h1")
        #expect(try l.store.job("j1")?.framesDone == 1)
    }

    @Test func jobIsDoneWhenEveryFrameIsDoneAndAssignmentsClose() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2])
        _ = try l.assign("a1", frames: [1, 2])
        _ = try l.complete(1, assignment: "a1")
        _ = try l.complete(2, assignment: "a1")
        #expect(try l.store.job("j1")?.state == "done")
        #expect(try l.store.openAssignments().isEmpty)
        #expect(try l.store.framesDoneByNode() == ["n1": 2])
    }

    @Test func onTheOnlyNodeAFrameFailsAfterThreeAttemptsThenTheJobFails() throws {
        let l = try TestLedger()
        try l.submit(frames: [1])
        for attempt in 1...LedgerRules.maxAttempts {
            _ = try l.assign("a\(attempt)", frames: [1])
            #expect(try l.fail(1, assignment: "a\(attempt)", alone: true) == [.applied])
            let f = try l.frame(1)
            #expect(f.attempts == attempt)
            #expect(f.state == (attempt < LedgerRules.maxAttempts ? "queued" : "failed"))
        }
        let job = try #require(try l.store.job("j1"))
        #expect(job.state == "failed")
        #expect(job.message == "boom")
    }

    @Test func aNodeThatFailsAJobThreeTimesIsBlockedForIt() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2, 3, 4])
        for (n, frame) in [1, 2].enumerated() {
            _ = try l.assign("a\(n)", frames: [frame])
            _ = try l.fail(frame, assignment: "a\(n)")
        }
        #expect(try l.store.queuedWork().first?.blockedNodes == [])
        _ = try l.assign("a3", frames: [3])
        _ = try l.fail(3, assignment: "a3")
        #expect(try l.store.queuedWork().first?.blockedNodes == ["n1"])
    }

    @Test func fatalFailureFailsTheFrameAtOnce() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2])
        _ = try l.assign("a1", frames: [1, 2])
        _ = try l.fail(1, assignment: "a1", fatal: true)
        #expect(try l.frame(1).state == "failed")
        #expect(try l.store.job("j1")?.state == "running")
    }

    @Test func staleFailureReportIsFenced() throws {
        let l = try TestLedger()
        try l.submit(frames: [1])
        _ = try l.assign("a1", frames: [1])
        try l.apply(.releaseFrames(ReleaseFrames(assignment: "a1", reason: "test")))
        _ = try l.assign("a2", frames: [1])
        if case .ignored = try l.fail(1, assignment: "a1")[0] {} else { Issue.record("stale report must be ignored") }
        #expect(try l.frame(1).attempts == 0)
        #expect(try l.frame(1).assignment == "a2")
    }

    @Test func releaseReturnsUnfinishedFramesOnly() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2])
        _ = try l.assign("a1", frames: [1, 2])
        _ = try l.complete(1, assignment: "a1")
        try l.apply(.releaseFrames(ReleaseFrames(assignment: "a1", reason: "restart")))
        #expect(try l.frame(1).state == "done")
        #expect(try l.frame(2).state == "queued")
        #expect(try l.store.openAssignments().isEmpty)
    }

    @Test func cancelStopsEverythingAndLaterCompletionsAreIgnored() throws {
        let l = try TestLedger()
        try l.submit()
        _ = try l.assign("a1", frames: [1, 2])
        _ = try l.complete(1, assignment: "a1")
        try l.apply(.cancelJob(CancelJob(job: "j1")))
        #expect(try l.store.job("j1")?.state == "canceled")
        #expect(try l.store.frames(of: "j1").map(\.state) == ["done", "canceled", "canceled", "canceled"])
        if case .ignored = try l.complete(2, assignment: "a1")[0] {} else { Issue.record("must be ignored") }
        if case .ignored = try l.assign("a2", frames: [3])[0] {} else { Issue.record("must be ignored") }
        #expect(try l.store.queuedWork().isEmpty)
    }

    @Test func stateSurvivesReopeningTheDatabase() throws {
        let l = try TestLedger()
        try l.submit()
        _ = try l.assign("a1", frames: [1])
        _ = try l.complete(1, assignment: "a1")
        let reopened = try LedgerStore(path: l.dir + "/ledger.sqlite")
        #expect(try reopened.appliedIndex() == 3)
        #expect(try reopened.job("j1")?.framesDone == 1)
        let sync = try reopened.writer.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") }
        #expect(sync == 2)  // FULL
    }

    @Test func twoLedgersApplyingTheSameLogAgree() throws {
        let a = try TestLedger()
        let b = try TestLedger()
        for l in [a, b] {
            try l.submit(frames: [1, 2, 3])
            _ = try l.assign("a1", frames: [1, 2])
            _ = try l.complete(2, assignment: "a1")
            _ = try l.fail(1, assignment: "a1")
        }
        #expect(try a.store.frames(of: "j1") == b.store.frames(of: "j1"))
        #expect(try a.store.jobs() == b.store.jobs())
    }

    @Test func jobLookupByExactIdOrUniquePrefix() throws {
        let l = try TestLedger()
        try l.submit("jabc123")
        #expect(try l.store.job("jabc") == nil)  // `job` is the exact id; words go through `jobs(matching:)`
        #expect(try l.store.jobs(matching: "jabc").map(\.job) == ["jabc123"])
        #expect(try l.store.job("zzz") == nil)
    }
}
