import Foundation
import Testing

@testable import Ledger

/// Tiled jobs as every node applies them: tiles are units of work, a frame is assembled (assigned and completed
/// whole) only once every tile of it is in, and each tile failure counts against its frame.
@Suite struct TileLedgerTests {
    static let grid = TileGrid(columns: 2, rows: 2, width: 97, height: 61)

    func submitTiled(_ l: TestLedger, frames: [Int] = [1], grid: TileGrid = Self.grid) throws {
        try l.apply(
            .submitJob(
                SubmitJob(
                    job: "j1", name: "still", submitter: "n1", blendHash: "ab", blendSize: 10, frames: frames,
                    chunk: 1, priority: 0, output: "/tmp/out", submittedAtMs: 1, tiles: grid)))
    }

    func assignTiles(_ l: TestLedger, _ id: String, _ tiles: [FrameTile], node: String = "n1") throws -> ApplyOutcome {
        try l.apply(
            .assignChunk(
                AssignChunk(
                    assignment: id, job: "j1", frames: [], node: node, term: 1, leaseUntilMs: 1000, tiles: tiles))
        )[0]
    }

    func completeTile(_ l: TestLedger, _ unit: FrameTile, assignment: String, node: String = "n1") throws
        -> ApplyOutcome
    {
        try l.apply(
            .completeFrame(
                CompleteFrame(
                    job: "j1", frame: unit.frame, node: node, assignment: assignment, term: 1,
                    hash: "t\(unit.frame)-\(unit.tile)", ext: ".png", holders: [node, "n1"], tile: unit.tile)))[0]
    }

    @Test func theGridSplitsTheImageIntoTilesThatCoverItExactlyOnce() {
        for grid in [
            Self.grid, TileGrid(columns: 3, rows: 2, width: 67, height: 45),
            TileGrid(columns: 7, rows: 5, width: 7, height: 9),
        ] {
            var covered = [Int](repeating: 0, count: grid.width * grid.height)
            for tile in 0..<grid.count {
                let r = grid.region(tile)
                #expect(r.width > 0 && r.height > 0)
                for y in r.y..<(r.y + r.height) {
                    for x in r.x..<(r.x + r.width) { covered[y * grid.width + x] += 1 }
                }
            }
            #expect(covered.allSatisfy { $0 == 1 }, "grid \(grid)")
        }
        // Tile 0 is the top-left one; tiles go left to right, then down.
        #expect(
            TileGrid(columns: 3, rows: 2, width: 67, height: 45).region(4)
                == TileRegion(x: 22, y: 22, width: 22, height: 23))
        #expect(TileGrid.parse("3x2")! == (3, 2))
        #expect(TileGrid.parse("3X2")! == (3, 2))
        for bad in ["3", "x2", "0x2", "3x", "-1x2", "3x2x1", "axb"] { #expect(TileGrid.parse(bad) == nil, "\(bad)") }
    }

    @Test func aFrameIsAssembledOnlyOnceEveryTileIsIn() throws {
        let l = try TestLedger()
        try submitTiled(l)
        #expect(try l.store.tiles(of: "j1")[1]?.map(\.state) == ["queued", "queued", "queued", "queued"])
        let work = try #require(try l.store.queuedWork().first)
        #expect(work.queuedFrames.isEmpty)
        #expect(work.queuedTiles == (0..<4).map { FrameTile(frame: 1, tile: $0) })
        // The frame cannot be assigned whole while tiles are missing.
        if case .applied = try l.assign("early", frames: [1])[0] { Issue.record("frame assigned before its tiles") }
        #expect(try assignTiles(l, "a1", [FrameTile(frame: 1, tile: 0), FrameTile(frame: 1, tile: 1)]) == .applied)
        #expect(
            try assignTiles(l, "a2", [FrameTile(frame: 1, tile: 2), FrameTile(frame: 1, tile: 3)], node: "n2")
                == .applied)
        #expect(try l.store.job("j1")?.state == "running")
        #expect(try l.store.openAssignments(node: "n2").first?.pendingTiles.map(\.tile) == [2, 3])
        for tile in 0..<2 {
            #expect(try completeTile(l, FrameTile(frame: 1, tile: tile), assignment: "a1") == .applied)
        }
        #expect(try l.store.openAssignments(node: "n1").isEmpty)
        // A second completion of a tile is ignored (the first wins, as for frames).
        if case .applied = try completeTile(l, FrameTile(frame: 1, tile: 0), assignment: "a1") {
            Issue.record("a tile completed twice")
        }
        #expect((try l.store.queuedWork().first?.queuedFrames ?? []).isEmpty)
        for tile in 2..<4 {
            #expect(try completeTile(l, FrameTile(frame: 1, tile: tile), assignment: "a2", node: "n2") == .applied)
        }
        #expect(try l.store.tileCounts(of: "j1") == (4, 4))
        #expect(try l.frame(1).state == "queued")
        #expect(try l.store.queuedWork().first?.queuedFrames == [1])
        // Assembly is the frame's last unit: its completion makes the job done.
        _ = try l.assign("asm", frames: [1], node: "n2")
        _ = try l.complete(1, assignment: "asm", node: "n2")
        #expect(try l.store.job("j1")?.state == "done")
        #expect(try l.store.isRenderedBlob("t1-3"))
        #expect(try l.store.blobsInUse().isSuperset(of: ["t1-0", "t1-1", "t1-2", "t1-3", "h1"]))
    }

    @Test func aReleasedAssignmentsTilesGoBackToTheQueue() throws {
        let l = try TestLedger()
        try submitTiled(l)
        _ = try assignTiles(l, "a1", [FrameTile(frame: 1, tile: 0), FrameTile(frame: 1, tile: 1)], node: "dead")
        _ = try completeTile(l, FrameTile(frame: 1, tile: 0), assignment: "a1", node: "dead")
        try l.apply(.releaseFrames(ReleaseFrames(assignment: "a1", reason: "node dead")))
        let tiles = try #require(try l.store.tiles(of: "j1")[1])
        #expect(tiles.map(\.state) == ["done", "queued", "queued", "queued"])
        #expect(tiles[1].node == nil && tiles[1].assignment == nil)
        #expect(try l.store.queuedWork().first?.queuedTiles.map(\.tile) == [1, 2, 3])
    }

    @Test func tileFailuresCountAgainstTheFrameAndRetryKeepsTheTilesThatAreIn() throws {
        let l = try TestLedger()
        try submitTiled(l)
        _ = try assignTiles(l, "ok", [FrameTile(frame: 1, tile: 0)], node: "n1")
        _ = try completeTile(l, FrameTile(frame: 1, tile: 0), assignment: "ok")
        let nodes = ["bad", "bad", "worse"]
        for (attempt, node) in nodes.enumerated() {
            _ = try assignTiles(l, "f\(attempt)", [FrameTile(frame: 1, tile: 1)], node: node)
            let outcome = try l.apply(
                .failFrame(
                    FailFrame(
                        job: "j1", frame: 1, node: node, assignment: "f\(attempt)", message: "boom", alone: false,
                        tile: 1)))[0]
            #expect(outcome == .applied)
        }
        // Three attempts on two nodes: the frame failed, its waiting tiles with it; the tile that is in stays.
        #expect(try l.frame(1).state == "failed")
        #expect(try l.store.job("j1")?.state == "failed")
        #expect(try l.store.tiles(of: "j1")[1]?.map(\.state) == ["done", "failed", "failed", "failed"])
        #expect(try l.store.attempts(of: "j1")[1]?.map(\.node) == nodes)
        // A stale report (an assignment that no longer holds the tile) changes nothing.
        if case .applied = try l.apply(
            .failFrame(FailFrame(job: "j1", frame: 1, node: "bad", assignment: "f0", message: "late", tile: 1)))[0]
        {
            Issue.record("a stale tile failure applied")
        }
        try l.apply(.retryFrames(RetryFrames(job: "j1")))
        #expect(try l.store.tiles(of: "j1")[1]?.map(\.state) == ["done", "queued", "queued", "queued"])
        #expect(try l.store.queuedWork().first?.queuedTiles.map(\.tile) == [1, 2, 3])
    }

    @Test func aFrameThatFailsForGoodClosesTheAssignmentsHoldingItsOtherTiles() throws {
        let l = try TestLedger()
        try submitTiled(l)
        _ = try assignTiles(l, "other", [FrameTile(frame: 1, tile: 2)], node: "n2")
        for attempt in 0..<3 {
            _ = try assignTiles(l, "f\(attempt)", [FrameTile(frame: 1, tile: 1)], node: "bad\(attempt % 2)")
            try l.apply(
                .failFrame(
                    FailFrame(
                        job: "j1", frame: 1, node: "bad\(attempt % 2)", assignment: "f\(attempt)", message: "boom",
                        alone: false, tile: 1)))
        }
        #expect(try l.frame(1).state == "failed")
        // n2's assignment held only tile 2, now failed: it is closed, not left open for ever.
        #expect(try l.store.openAssignments().isEmpty)
        // Its late completion changes nothing.
        if case .applied = try completeTile(l, FrameTile(frame: 1, tile: 2), assignment: "other", node: "n2") {
            Issue.record("a tile of a failed frame completed")
        }
    }

    @Test func aLateTileFromAReleasedAssignmentWinsAndClosesTheNewHolder() throws {
        let l = try TestLedger()
        try submitTiled(l)
        _ = try assignTiles(l, "old", [FrameTile(frame: 1, tile: 0)], node: "slow")
        try l.apply(.releaseFrames(ReleaseFrames(assignment: "old", reason: "lease expired")))
        _ = try assignTiles(l, "new", [FrameTile(frame: 1, tile: 0)], node: "n2")
        #expect(try completeTile(l, FrameTile(frame: 1, tile: 0), assignment: "old", node: "slow") == .applied)
        #expect(try l.store.tile("j1", 1, 0)?.node == "slow")
        #expect(try l.store.openAssignments(node: "n2").isEmpty)
        if case .applied = try completeTile(l, FrameTile(frame: 1, tile: 0), assignment: "new", node: "n2") {
            Issue.record("a tile completed twice")
        }
    }

    @Test func cancelAndRemoveReachTheTiles() throws {
        let l = try TestLedger()
        try submitTiled(l, frames: [1, 2])
        _ = try assignTiles(l, "a1", [FrameTile(frame: 1, tile: 0)])
        _ = try completeTile(l, FrameTile(frame: 1, tile: 0), assignment: "a1")
        try l.apply(.cancelJob(CancelJob(job: "j1")))
        let states = Set(try l.store.tiles(of: "j1").values.flatMap { $0.map(\.state) })
        #expect(states == ["done", "canceled"])
        try l.apply(.removeJob(JobTarget(job: "j1")))
        #expect(try l.store.tiles(of: "j1").isEmpty)
        #expect(try l.store.removedJobs().first?.blobs.contains("t1-0") == true)
    }

    @Test func aGridThatDoesNotFitTheImageOrIsHugeIsRefused() throws {
        for grid in [
            TileGrid(columns: 98, rows: 1, width: 97, height: 61),
            TileGrid(columns: Int.max / 2, rows: 4, width: .max, height: .max),
        ] {
            let l = try TestLedger()
            try submitTiled(l, grid: grid)
            #expect(try l.store.job("j1") == nil)
        }
        // Frames × tiles is bounded too.
        let l = try TestLedger()
        try submitTiled(l, frames: Array(1...200), grid: TileGrid(columns: 32, rows: 32, width: 97, height: 61))
        #expect(try l.store.job("j1") == nil)
        #expect(TileGrid.parse("9999999999x9999999999") == nil)
    }
}
