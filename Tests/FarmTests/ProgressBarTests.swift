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
