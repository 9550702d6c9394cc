import Foundation
import Testing

@testable import Ledger

/// Failures scoped to the node, and the job-control commands, as every node applies them.
@Suite struct JobControlLedgerTests {
    @Test func aFailureOnOneNodeSendsTheFrameToAnotherAndFailsItOnlyAfterTwoNodesAndThreeAttempts() throws {
        let l = try TestLedger()
        try l.submit(frames: [1])
        // Three failures on one node do not fail the frame while another node may take it.
        for attempt in 1...3 {
            _ = try l.assign("a\(attempt)", frames: [1], node: "bad")
            _ = try l.fail(1, assignment: "a\(attempt)", node: "bad")
            #expect(try l.frame(1).state == "queued")
        }
        #expect(try l.store.queuedWork().first?.failedOn == [1: ["bad"]])
        #expect(try l.store.queuedWork().first?.blockedNodes == ["bad"])
        #expect(try l.store.failedNodes(job: "j1", frame: 1) == ["bad"])
        // A second node failing it too: attempts used up on two nodes, the frame fails with that node's words.
        _ = try l.assign("a4", frames: [1], node: "n2")
        _ = try l.fail(1, assignment: "a4", node: "n2")
        #expect(try l.frame(1).state == "failed")
        #expect(try l.store.job("j1")?.state == "failed")
        let attempts = try l.store.attempts(of: "j1")[1]?.map(\.node)
        #expect(attempts == ["bad", "bad", "bad", "n2"])
    }

    @Test func anEntryFromBeforeScopedFailuresKeepsTheRuleItWasWrittenUnder() throws {
        // No `alone`: written by a node of the earlier rule (three attempts, wherever), so a node replaying an old
        // log reaches the state every other node reached then, and records no attempt rows the others lack.
        let l = try TestLedger()
        try l.submit(frames: [1])
        for attempt in 1...3 {
            _ = try l.assign("a\(attempt)", frames: [1])
            _ = try l.fail(1, assignment: "a\(attempt)", alone: nil)
        }
        #expect(try l.frame(1).state == "failed")
        #expect(try l.store.attempts(of: "j1").isEmpty)
    }

    @Test func aPausedJobThatFinishesIsNoLongerPausedSoRetryRunsIt() throws {
        let l = try TestLedger()
        try l.submit(frames: [1])
        _ = try l.assign("a1", frames: [1])
        try l.apply(.pauseJob(JobTarget(job: "j1")))
        _ = try l.fail(1, assignment: "a1", alone: true)
        _ = try l.assign("a2", frames: [1])  // ignored: paused
        #expect(try l.frame(1).state == "queued")
        try l.apply(.resumeJob(JobTarget(job: "j1")))
        for attempt in 3...4 {
            _ = try l.assign("a\(attempt)", frames: [1])
            if attempt == 4 { try l.apply(.pauseJob(JobTarget(job: "j1"))) }
            _ = try l.fail(1, assignment: "a\(attempt)", alone: true)
        }
        // Failed while paused: finished, and the pause went with it.
        #expect(try l.store.job("j1")?.state == "failed")
        try l.apply(.retryFrames(RetryFrames(job: "j1")))
        #expect(try l.store.job("j1")?.state == "running")
        #expect(try l.store.queuedWork().first?.queuedFrames == [1])
    }

    @Test func aFrameOfARemovedJobThatFinishesLateJoinsTheTombstone() throws {
        let l = try TestLedger()
        try l.submit(frames: [1])
        _ = try l.assign("a1", frames: [1])
        try l.apply(.removeJob(JobTarget(job: "j1")))
        let before = try #require(try l.store.removedJobs().first)
        if case .ignored = try l.complete(1, assignment: "a1")[0] {} else { Issue.record("late frame applied") }
        let after = try #require(try l.store.removedJobs().first)
        #expect(Set(after.blobs) == Set(before.blobs).union(["h1"]))
        #expect(after.index > before.index)
    }

    @Test func aFrameThatFailedOnANodeRendersOnAnotherAndTheJobIsDone() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2])
        _ = try l.assign("a1", frames: [1, 2], node: "bad")
        _ = try l.fail(1, assignment: "a1", node: "bad")
        _ = try l.fail(2, assignment: "a1", node: "bad")
        _ = try l.assign("a2", frames: [1, 2], node: "good")
        _ = try l.complete(1, assignment: "a2", node: "good")
        _ = try l.complete(2, assignment: "a2", node: "good")
        let job = try #require(try l.store.job("j1"))
        #expect(job.state == "done")
        #expect(job.framesFailed == 0)
        #expect(try l.frame(1).node == "good")
    }

    @Test func pauseHoldsQueuedFramesLetsAssignedOnesFinishAndResumeRunsTheRest() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2, 3])
        _ = try l.assign("a1", frames: [1])
        #expect(try l.apply(.pauseJob(JobTarget(job: "j1")))[0] == .applied)
        #expect(try l.store.job("j1")?.state == "paused")
        #expect(try l.store.queuedWork().isEmpty)
        // No new assignment while paused; the frame in flight completes.
        if case .ignored = try l.assign("a2", frames: [2])[0] {} else { Issue.record("a paused job took work") }
        _ = try l.complete(1, assignment: "a1")
        #expect(try l.store.job("j1")?.state == "paused")
        #expect(try l.store.job("j1")?.framesDone == 1)
        // Pausing twice is refused; resuming brings it back.
        if case .ignored = try l.apply(.pauseJob(JobTarget(job: "j1")))[0] {} else { Issue.record("paused twice") }
        #expect(try l.apply(.resumeJob(JobTarget(job: "j1")))[0] == .applied)
        #expect(try l.store.job("j1")?.state == "running")
        #expect(try l.store.queuedWork().first?.queuedFrames == [2, 3])
        _ = try l.assign("a3", frames: [2, 3])
        _ = try l.complete(2, assignment: "a3")
        _ = try l.complete(3, assignment: "a3")
        #expect(try l.store.job("j1")?.state == "done")
    }

    @Test func aPausedJobWhoseLastFramesFinishIsDoneAndCanBeCanceledWhilePaused() throws {
        let l = try TestLedger()
        try l.submit(frames: [1])
        _ = try l.assign("a1", frames: [1])
        try l.apply(.pauseJob(JobTarget(job: "j1")))
        _ = try l.complete(1, assignment: "a1")
        #expect(try l.store.job("j1")?.state == "done")
        try l.submit("j2", frames: [1, 2])
        try l.apply(.pauseJob(JobTarget(job: "j2")))
        #expect(try l.apply(.cancelJob(CancelJob(job: "j2")))[0] == .applied)
        #expect(try l.store.job("j2")?.state == "canceled")
    }

    @Test func retryPutsFailedFramesBackWithFreshAttemptsAndLiftsTheBlocks() throws {
        let l = try TestLedger()
        try l.submit(frames: [1, 2, 3])
        for frame in [1, 2] {
            for attempt in 1...3 {
                _ = try l.assign("a\(frame)-\(attempt)", frames: [frame])
                _ = try l.fail(frame, assignment: "a\(frame)-\(attempt)", alone: true)
            }
        }
        _ = try l.assign("a3", frames: [3])
        _ = try l.complete(3, assignment: "a3")
        #expect(try l.store.job("j1")?.state == "failed")
        #expect(try l.store.job("j1")?.framesFailed == 2)
        // Only frame 2 first.
        #expect(try l.apply(.retryFrames(RetryFrames(job: "j1", frames: [2])))[0] == .applied)
        var job = try #require(try l.store.job("j1"))
        #expect(job.state == "running")
        #expect(job.framesFailed == 1)
        #expect(try l.frame(2).state == "queued")
        #expect(try l.frame(2).attempts == 0)
        #expect(try l.frame(1).state == "failed")
        #expect(try l.store.blockedNodes(job: "j1").isEmpty)
        #expect(try l.store.attempts(of: "j1")[2] == nil)
        _ = try l.assign("r2", frames: [2])
        _ = try l.complete(2, assignment: "r2")
        #expect(try l.store.job("j1")?.state == "failed")
        // Then every failed frame.
        try l.apply(.retryFrames(RetryFrames(job: "j1")))
        _ = try l.assign("r1", frames: [1])
        _ = try l.complete(1, assignment: "r1")
        job = try #require(try l.store.job("j1"))
        #expect(job.state == "done")
        #expect(job.framesDone == 3)
        #expect(job.message == nil)
        // Nothing left to retry.
        if case .ignored = try l.apply(.retryFrames(RetryFrames(job: "j1")))[0] {} else { Issue.record("retried") }
    }

    @Test func priorityChangesTheSchedulingOrder() throws {
        let l = try TestLedger()
        try l.submit("j1", frames: [1])
        try l.submit("j2", frames: [1])
        #expect(try l.store.queuedWork().map(\.job) == ["j1", "j2"])
        try l.apply(.setPriority(SetPriority(job: "j2", priority: 5)))
        #expect(try l.store.queuedWork().map(\.job) == ["j2", "j1"])
        #expect(try l.store.job("j2")?.priority == 5)
    }

    @Test func removeForgetsTheJobAndLeavesATombstoneWithItsFilesAndImages() throws {
        let l = try TestLedger()
        try l.submit("j1", frames: [1, 2])
        try l.submit("j2", frames: [1])
        _ = try l.assign("a1", frames: [1])
        _ = try l.complete(1, assignment: "a1")
        _ = try l.assign("a2", frames: [2])
        _ = try l.fail(2, assignment: "a2")
        #expect(try l.apply(.removeJob(JobTarget(job: "j1")))[0] == .applied)
        #expect(try l.store.job("j1") == nil)
        #expect(try l.store.frames(of: "j1").isEmpty)
        #expect(try l.store.attempts(of: "j1").isEmpty)
        #expect(try l.store.openAssignments().isEmpty)
        let tombstone = try #require(try l.store.removedJobs().first)
        #expect(tombstone.job == "j1")
        #expect(Set(tombstone.blobs) == ["ab", "h1"])
        // j2 shares the scene: it is still in use, the image is not.
        #expect(try l.store.blobsInUse() == ["ab"])
        // A late report about the removed job changes nothing.
        if case .ignored = try l.complete(2, assignment: "a2")[0] {} else { Issue.record("late report applied") }
        if case .ignored = try l.apply(.removeJob(JobTarget(job: "j1")))[0] {} else { Issue.record("removed twice") }
    }

    @Test func aWordForAJobMatchesAnIdThenANameThenAnIdPrefix() throws {
        let l = try TestLedger()
        for (job, name) in [("jab1", "shot"), ("jab2", "shot"), ("jcd3", "other"), ("shot", "x")] {
            try l.apply(
                .submitJob(
                    SubmitJob(
                        job: job, name: name, submitter: "n1", blendHash: "ab", blendSize: 10, frames: [1], chunk: 1,
                        priority: 0, output: "/tmp/\(job)", submittedAtMs: 1)))
        }
        #expect(try l.store.jobs(matching: "shot").map(\.job) == ["shot"])  // an exact id first
        #expect(try l.store.jobs(matching: "other").map(\.job) == ["jcd3"])
        #expect(try l.store.jobs(matching: "jab").map(\.job) == ["jab1", "jab2"])
        #expect(try l.store.jobs(matching: "jc").map(\.job) == ["jcd3"])
        #expect(try l.store.jobs(matching: "j%").isEmpty)  // no wildcards
        #expect(try l.store.jobs(matching: "").isEmpty)
    }
}
