import Foundation
import Synchronization

/// The wall clock every part of a node reads: beacon times, lease deadlines, submit times, command ids.
///
/// Durations and timeouts use the monotonic clock; only these values need the calendar time. For the fault
/// suite, `REXNODE_CLOCK_OFFSET_FILE` names a file holding a number of milliseconds added to the system
/// clock, re-read at most every 100 ms: it is how one node's clock jumps while the others' do not (the
/// machine's clock is shared by every namespace, and libfaketime breaks Swift's argument reading here; see
/// docs/reliability.md). Without the variable the system clock is used as is.
public enum WallClock {
    private struct Skew {
        var offsetMillis: Int64 = 0
        var readAt: ContinuousClock.Instant?
    }

    private static let path = ProcessInfo.processInfo.environment["REXNODE_CLOCK_OFFSET_FILE"]
    private static let skew = Mutex(Skew())

    /// Milliseconds since 1970-01-01 UTC.
    public static func millis() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) + offsetMillis()
    }

    /// Nanoseconds since 1970-01-01 UTC (clamped at 0).
    public static func nanos() -> UInt64 {
        let nanos = Date().timeIntervalSince1970 * 1_000_000_000 + Double(offsetMillis()) * 1_000_000
        return UInt64(max(0, nanos))
    }

    private static func offsetMillis() -> Int64 {
        guard let path else { return 0 }
        let now = ContinuousClock.now
        return skew.withLock { s in
            if let readAt = s.readAt, now - readAt < .milliseconds(100) { return s.offsetMillis }
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? "0"
            s.offsetMillis = Int64(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            s.readAt = now
            return s.offsetMillis
        }
    }
}
