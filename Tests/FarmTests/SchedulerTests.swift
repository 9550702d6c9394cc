import Ledger
import Testing

@testable import Farm

@Suite struct SchedulerTests {
    func job(_ id: String, priority: Int = 0, chunk: Int = 2, frames: [Int], open: Int = 0) -> QueuedJob {
        QueuedJob(job: id, priority: priority, chunk: chunk, queuedFrames: frames, openAssignments: open)
    }

    @Test func fillsEveryFreeSlotWithConsecutiveChunks() {
        let d = Scheduler.assign(
            queue: [job("j1", frames: [1, 2, 3, 4, 5])], slots: [.init(node: "a", free: 2), .init(node: "b", free: 1)])
        #expect(d.map(\.frames) == [[1, 2], [3, 4], [5]])
        #expect(Set(d.map(\.node)) == ["a", "b"])
        #expect(d.filter { $0.node == "a" }.count == 2)
    }

    @Test func noFreeSlotsMeansNoAssignments() {
        #expect(Scheduler.assign(queue: [job("j1", frames: [1])], slots: [.init(node: "a", free: 0)]).isEmpty)
        #expect(Scheduler.assign(queue: [], slots: [.init(node: "a", free: 3)]).isEmpty)
    }

    @Test func higherPriorityJobGoesFirst() {
        let d = Scheduler.assign(
            queue: [job("low", frames: [1, 2]), job("high", priority: 5, frames: [1, 2])],
            slots: [.init(node: "a", free: 1)])
        #expect(d.map(\.job) == ["high"])
    }

    @Test func equalPriorityJobsShareTheFarm() {
        let d = Scheduler.assign(
            queue: [job("old", chunk: 1, frames: [1, 2, 3, 4]), job("new", chunk: 1, frames: [1, 2, 3, 4])],
            slots: [.init(node: "a", free: 4)])
        #expect(d.filter { $0.job == "old" }.count == 2)
        #expect(d.filter { $0.job == "new" }.count == 2)
    }

    @Test func aJobWithFewerChunksInFlightIsServedFirst() {
        let d = Scheduler.assign(
            queue: [job("busy", frames: [1, 2], open: 3), job("idle", frames: [1, 2])],
            slots: [.init(node: "a", free: 1)])
        #expect(d.map(\.job) == ["idle"])
    }

    @Test func aNodeBlockedForAJobGetsOtherWorkOrNone() {
        let blocked = QueuedJob(
            job: "bad", priority: 9, chunk: 1, queuedFrames: [1, 2], openAssignments: 0, blockedNodes: ["a"])
        let d = Scheduler.assign(
            queue: [blocked, job("ok", frames: [1])], slots: [.init(node: "a", free: 2), .init(node: "b", free: 1)])
        #expect(!d.contains { $0.node == "a" && $0.job == "bad" })
        #expect(d.contains { $0.node == "a" && $0.job == "ok" })
        #expect(d.contains { $0.node == "b" && $0.job == "bad" })
        // A node blocked for the only job gets nothing while another node could take it, and the loop ends.
        #expect(
            Scheduler.assign(queue: [blocked], slots: [.init(node: "a", free: 3), .init(node: "b", free: 0)]).isEmpty)
        // In a farm where every node is blocked, the block is lifted: the frames run out their attempts instead.
        #expect(Scheduler.assign(queue: [blocked], slots: [.init(node: "a", free: 1)]).map(\.node) == ["a"])
    }

    @Test func aFrameThatFailedOnANodeGoesToAnotherFirstAndBackOnlyWhenNoOtherCanTakeIt() {
        let failed = QueuedJob(
            job: "j", priority: 0, chunk: 4, queuedFrames: [1, 2, 3], openAssignments: 0,
            failedOn: [1: ["a"], 2: ["a"]])
        // a and b are free, a first: a gets the frame it never failed, b those that failed on a.
        var d = Scheduler.assign(queue: [failed], slots: [.init(node: "a", free: 1), .init(node: "b", free: 1)])
        #expect(d.first { $0.node == "a" }?.frames == [3])
        #expect(d.first { $0.node == "b" }?.frames == [1, 2])
        // b is first: it takes them all.
        d = Scheduler.assign(queue: [failed], slots: [.init(node: "b", free: 1), .init(node: "a", free: 1)])
        #expect(d.first { $0.node == "b" }?.frames == [1, 2, 3])
        // No other node has a free slot now (a farm of one, or the others busy): a preference, not an exclusion.
        d = Scheduler.assign(queue: [failed], slots: [.init(node: "a", free: 1), .init(node: "b", free: 0)])
        #expect(d.map(\.frames) == [[1, 2, 3]])
        var everywhere = failed
        everywhere.failedOn = [1: ["a", "b"]]
        everywhere.queuedFrames = [1]
        d = Scheduler.assign(queue: [everywhere], slots: [.init(node: "a", free: 1), .init(node: "b", free: 1)])
        #expect(d.map(\.frames) == [[1]])
    }

    @Test func defaultChunkSpreadsSmallJobsOverSlots() {
        #expect(Scheduler.defaultChunk(frames: 24, slots: 1) == 6)
        #expect(Scheduler.defaultChunk(frames: 3, slots: 2) == 1)
        #expect(Scheduler.defaultChunk(frames: 10_000, slots: 1) == 10)
    }
}

/// Tiles are scheduled like frames: one chunk of units per free slot, spread over the nodes.
@Suite struct TileSchedulerTests {
    @Test func tilesSpreadOverEveryFreeSlotAndReadyFramesGoFirst() {
        let tiles = (0..<6).map { FrameTile(frame: 1, tile: $0) }
        let job = QueuedJob(job: "j", priority: 0, chunk: 1, queuedFrames: [], queuedTiles: tiles, openAssignments: 0)
        let slots = ["a", "b", "c"].map { Scheduler.Slot(node: $0, free: 1) }
        let decisions = Scheduler.assign(queue: [job], slots: slots)
        #expect(decisions.map(\.node) == ["a", "b", "c"])
        #expect(decisions.map(\.tiles) == [[tiles[0]], [tiles[1]], [tiles[2]]])
        #expect(decisions.allSatisfy { $0.frames.isEmpty })
        // A frame whose tiles are all in (to assemble) is taken before the next frame's tiles.
        let mixed = QueuedJob(
            job: "j", priority: 0, chunk: 2, queuedFrames: [1], queuedTiles: [FrameTile(frame: 2, tile: 0)],
            openAssignments: 0)
        let one = Scheduler.assign(queue: [mixed], slots: [Scheduler.Slot(node: "a", free: 1)])
        #expect(one == [Scheduler.Decision(job: "j", frames: [1], node: "a", tiles: [FrameTile(frame: 2, tile: 0)])])
    }

    @Test func aTileOfAFrameThatFailedOnANodeGoesToAnotherFirst() {
        let job = QueuedJob(
            job: "j", priority: 0, chunk: 1, queuedFrames: [], queuedTiles: [FrameTile(frame: 1, tile: 3)],
            openAssignments: 0, failedOn: [1: ["a"]])
        let decisions = Scheduler.assign(
            queue: [job], slots: [Scheduler.Slot(node: "a", free: 1), Scheduler.Slot(node: "b", free: 1)])
        #expect(decisions.map(\.node) == ["b"])
    }
}
