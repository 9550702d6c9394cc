import Foundation
import Mesh
import Synchronization

/// When a node takes work (`join --schedule "mon-fri 19:00-07:00; sat,sun"`), as a pure value: the time is an
/// input, read in the node's own time zone.
///
/// Windows are separated by `;`. Each is a day list (`mon-fri`, `sat,sun`, `tue`) and an optional `HH:MM-HH:MM`
/// time range; with no range the days are open all day. A range whose end is not after its start crosses
/// midnight: `mon 22:00-06:00` is open from Monday 22:00 to Tuesday 06:00 (the window belongs to the day it starts
/// on). Outside every window the node rests: it takes no new frames and hands back the ones it has not started.
public struct NodeSchedule: Sendable, Equatable {
    /// One window: days it starts on (1 = Monday … 7 = Sunday) and minutes since midnight.
    public struct Window: Sendable, Equatable {
        public var days: Set<Int>
        public var start: Int
        public var end: Int

        /// Whether the window is open at `minute` (0..<1440) of weekday `day`.
        func isOpen(day: Int, minute: Int) -> Bool {
            if start == 0 && end == 24 * 60 { return days.contains(day) }
            if start < end { return days.contains(day) && minute >= start && minute < end }
            // Crosses midnight: the evening of a listed day, or the morning after one.
            let yesterday = day == 1 ? 7 : day - 1
            return (days.contains(day) && minute >= start) || (days.contains(yesterday) && minute < end)
        }
    }

    public var windows: [Window]
    /// The text the user gave, for messages and logs.
    public var text: String

    static let dayNames = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

    /// Parses the `--schedule` text; a bad one throws one sentence that says what was wrong.
    public init(_ text: String) throws(FarmError) {
        self.text = text
        var windows: [Window] = []
        let parts = text.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
        for part in parts where !part.isEmpty {
            windows.append(try Self.window(part, in: text))
        }
        guard !windows.isEmpty else {
            throw FarmError(
                .badInput, "--schedule needs at least one window, for example \"mon-fri 19:00-07:00; sat,sun\".")
        }
        self.windows = windows
    }

    private static func window(_ part: String, in text: String) throws(FarmError) -> Window {
        let words = part.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        func bad(_ why: String) -> FarmError {
            FarmError(
                .badInput,
                "--schedule \"\(text)\" is not a schedule: \(why) (write days and an optional time range, for "
                    + "example \"mon-fri 19:00-07:00; sat,sun\").")
        }
        guard words.count == 1 || words.count == 2 else { throw bad("\"\(part)\" has \(words.count) parts") }
        var days: Set<Int> = []
        for item in words[0].lowercased().split(separator: ",", omittingEmptySubsequences: false) {
            let ends = item.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
            guard (1...2).contains(ends.count), let first = dayNames.firstIndex(of: ends[0]),
                let last = dayNames.firstIndex(of: ends[ends.count - 1])
            else { throw bad("\"\(item)\" is not a day or day range (mon, tue, … sun)") }
            var day = first
            while true {
                days.insert(day + 1)
                if day == last { break }
                day = (day + 1) % 7
            }
        }
        guard words.count == 2 else { return Window(days: days, start: 0, end: 24 * 60) }
        let range = words[1].split(separator: "-", omittingEmptySubsequences: false).map(String.init)
        guard range.count == 2, let start = minutes(range[0]), let end = minutes(range[1]) else {
            throw bad("\"\(words[1])\" is not a time range HH:MM-HH:MM")
        }
        guard start != end else { throw bad("\"\(words[1])\" starts and ends at the same time") }
        return Window(days: days, start: start, end: end == 0 ? 24 * 60 : end)
    }

    /// "19:00" → 1140; "24:00" is the end of the day.
    private static func minutes(_ text: String) -> Int? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].count <= 2, parts[1].count == 2, let h = Int(parts[0]), let m = Int(parts[1]),
            (0...24).contains(h), (0..<60).contains(m), h < 24 || m == 0
        else { return nil }
        return h * 60 + m
    }

    // MARK: Asking the time

    /// Whether the node may take work at `date` in `timeZone`.
    public func isOpen(at date: Date, timeZone: TimeZone = .current) -> Bool {
        let (day, minute) = Self.local(date, timeZone)
        return windows.contains { $0.isOpen(day: day, minute: minute) }
    }

    /// When the node next may take work, from `date` (nil if it is open now). Steps a minute at a time over a week
    /// and a day at most, on the local weekday and minute (a schedule's edges fall on whole minutes).
    public func nextOpening(after date: Date, timeZone: TimeZone = .current) -> Date? {
        guard !isOpen(at: date, timeZone: timeZone) else { return nil }
        var (day, minute) = Self.local(date, timeZone)
        let start = Date(timeIntervalSince1970: (date.timeIntervalSince1970 / 60).rounded(.down) * 60)
        for step in 1...(8 * 24 * 60) {
            minute += 1
            if minute == 24 * 60 { (day, minute) = (day % 7 + 1, 0) }
            if windows.contains(where: { $0.isOpen(day: day, minute: minute) }) {
                return start.addingTimeInterval(Double(step) * 60)
            }
        }
        return nil
    }

    /// Weekday (1 = Monday … 7 = Sunday) and minute of the day at `date` in `timeZone`.
    static func local(_ date: Date, _ timeZone: TimeZone) -> (day: Int, minute: Int) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let c = calendar.dateComponents([.weekday, .hour, .minute], from: date)
        // Calendar: 1 = Sunday … 7 = Saturday.
        let day = ((c.weekday ?? 1) + 5) % 7 + 1
        return (day, (c.hour ?? 0) * 60 + (c.minute ?? 0))
    }
}

// MARK: Resting now

/// Whether this node rests now (outside its schedule) and until when: set by the schedule watcher, read by the
/// beacon, the roster (a resting node has no free slot), the worker pool (it hands back frames it has not started)
/// and `peers`.
public final class RestState: Sendable {
    private let wakeAt = Mutex<Int64?>(nil)

    public init() {}

    /// Milliseconds since 1970 (wall clock) when this node next takes work; nil while it takes work.
    public var restingUntilMs: Int64? { wakeAt.withLock { $0 } }
    public var isResting: Bool { restingUntilMs != nil }

    /// Sets the state; returns whether resting or waking changed.
    @discardableResult
    func set(_ until: Int64?) -> Bool {
        wakeAt.withLock { current in
            defer { current = until }
            return (current == nil) != (until == nil)
        }
    }

    /// Checks the schedule against the wall clock (`WallClock`, so a test can move a node's clock) twice a second;
    /// on each change it logs and wakes the loops (`changed`).
    func watch(_ schedule: NodeSchedule, changed: @Sendable (Bool) -> Void) async {
        while !Task.isCancelled {
            let now = Date(timeIntervalSince1970: Double(WallClock.millis()) / 1000)
            let wake = schedule.nextOpening(after: now).map { Int64($0.timeIntervalSince1970 * 1000) }
            // Never opening (cannot happen for a parsed schedule) still rests, a week at a time.
            let until = schedule.isOpen(at: now) ? nil : wake ?? Int64(now.timeIntervalSince1970 * 1000) + 604_800_000
            if set(until) { changed(until != nil) }
            try? await Task.sleep(for: .milliseconds(500))
        }
    }
}
