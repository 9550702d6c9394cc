import Testing

@testable import Farm

@Suite struct ProgressBarTests {
    func bar(
        done: Int = 5, total: Int = 10, start: Int = 0, elapsed: Double = 10, since: Double = 1,
        state: String = "running"
    ) -> ProgressBar {
        ProgressBar(done: done, total: total, doneAtStart: start, elapsed: elapsed, sinceProgress: since, state: state)
    }

    @Test func oneLineCutToTheTerminalWithARateAndAnETA() {
        let line = bar().line(width: 80)
        #expect(line.contains("5/10 frames"))
        #expect(line.contains("0.50 fr/s"))
        #expect(line.contains("10s left"))
        #expect(!line.contains("\n"))
        #expect(line.count < 80)
        // A narrow terminal: the bar shrinks, then the text is cut; never wider than the terminal.
        for width in [10, 20, 40] { #expect(bar().line(width: width).count < width) }
    }

    @Test func aTiledJobsBarFillsByTilesAndSaysHowManyAreIn() {
        let none = ProgressBar(
            done: 0, total: 1, doneAtStart: 0, elapsed: 5, sinceProgress: 1, state: "running", tilesDone: 3,
            tilesTotal: 6)
        let line = none.line(width: 80)
        #expect(line.contains("0/1 frames (3/6 tiles)"))
        // Half the tiles in: half the bar filled, though no frame is done yet.
        let cells = line.filter { $0 == "█" || $0 == "░" }
        #expect(cells.filter { $0 == "█" }.count * 2 == cells.count)
        #expect(!bar().line(width: 80).contains("tiles"))
    }

    @Test func framesDoneBeforeFollowingDoNotCountInTheRate() {
        let line = bar(done: 8, start: 6, elapsed: 4).line(width: 100)
        #expect(line.contains("0.50 fr/s"))
        #expect(line.contains("4s left"))
    }

    @Test func nothingDoneForAWhileSaysStalledAndAPausedJobSaysPaused() {
        #expect(bar(since: ProgressBar.stalledAfter + 5).line(width: 100).contains("stalled"))
        #expect(!bar(since: 2).line(width: 100).contains("stalled"))
        // Slow frames are not a stall: five frame times must pass first.
        #expect(!bar(done: 2, elapsed: 200, since: 60).line(width: 100).contains("stalled"))
        #expect(bar(state: "paused").line(width: 100).contains("paused"))
        #expect(!bar(done: 10).line(width: 100).contains("left"))
    }
}
