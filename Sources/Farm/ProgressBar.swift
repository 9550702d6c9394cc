import Foundation

/// The one line `submit` and `wait` redraw on a terminal.
public struct ProgressBar: Sendable {
    public var done: Int
    public var total: Int
    /// Frames already done when this client started following (a re-attached `wait`): not counted in the rate.
    public var doneAtStart: Int
    public var elapsed: Double
    public var sinceProgress: Double
    public var state: String
    /// A tiled job's tiles in, of all its tiles (0 of 0: not tiled).
    public var tilesDone: Int
    public var tilesTotal: Int

    public init(
        done: Int, total: Int, doneAtStart: Int, elapsed: Double, sinceProgress: Double, state: String,
        tilesDone: Int = 0, tilesTotal: Int = 0
    ) {
        self.tilesDone = tilesDone
        self.tilesTotal = tilesTotal
        self.done = done
        self.total = total
        self.doneAtStart = doneAtStart
        self.elapsed = elapsed
        self.sinceProgress = sinceProgress
        self.state = state
    }

    /// No frame for this long (and no frame rate to say otherwise): the ETA says "stalled".
    public static let stalledAfter = 30.0

    /// The line, cut to `width` columns (the bar shrinks first, then the text is cut).
    public func line(width: Int) -> String {
        let rate = elapsed > 0 ? Double(done - doneAtStart) / elapsed : 0
        var eta = ""
        if done < total {
            let expected = rate > 0 ? 1 / rate : 0
            if state == "paused" {
                eta = " · paused"
            } else if sinceProgress > max(Self.stalledAfter, expected * 5) {
                eta = String(format: " · stalled (no frame for %.0fs)", sinceProgress)
            } else if rate > 0 {
                eta = String(format: " · %.0fs left", Double(total - done) / rate)
            }
        }
        let tiles = tilesTotal > 0 ? " (\(tilesDone)/\(tilesTotal) tiles)" : ""
        let text = " \(done)/\(total) frames\(tiles) · " + String(format: "%.2f fr/s", rate) + eta
        let barWidth = max(0, min(30, width - text.count - 2))
        // A tiled job's bar fills by tiles: a still's one frame moves it tile by tile.
        let (part, whole) = tilesTotal > 0 ? (tilesDone, tilesTotal) : (done, total)
        let filled = whole > 0 ? min(barWidth, part * barWidth / whole) : 0
        let cells = String(repeating: "█", count: filled) + String(repeating: "░", count: barWidth - filled)
        let bar = barWidth > 0 ? "[" + cells + "]" : ""
        return String((bar + text).prefix(max(1, width - 1)))
    }

    /// The terminal's width in columns (80 when it cannot be read).
    public static func terminalWidth() -> Int {
        var size = winsize()
        guard ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 80 }
        return Int(size.ws_col)
    }
}
