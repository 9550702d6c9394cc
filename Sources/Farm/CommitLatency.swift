import Synchronization

/// How long this node's proposals take from proposing to being applied here (committed by a majority, then written
/// to this node's ledger): measured by `RaftCommandLog.propose` around each successful proposal, retries included.
/// A Prometheus histogram's counts, plus the last and the longest; `/metrics` prints them.
public final class CommitLatency: Sendable {
    /// The histogram's upper bounds, in seconds (`+Inf` is implied).
    public static let bounds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

    /// What was measured so far.
    public struct Snapshot: Sendable, Equatable {
        /// Proposals measured.
        public var count = 0
        /// Their seconds, summed.
        public var sum = 0.0
        /// The last one's seconds, and the longest one's (0 before any).
        public var last = 0.0
        public var max = 0.0
        /// Cumulative counts per bound of `CommitLatency.bounds` (proposals that took at most that long).
        public var buckets: [Int] = Array(repeating: 0, count: CommitLatency.bounds.count)

        public init() {}

        /// The mean in seconds (0 before any).
        public var mean: Double { count == 0 ? 0 : sum / Double(count) }
    }

    private let state = Mutex(Snapshot())

    public init() {}

    /// Records one proposal that took `duration` from proposing to being applied here.
    public func record(_ duration: Duration) {
        let c = duration.components
        let seconds = Double(c.seconds) + Double(c.attoseconds) / 1e18
        state.withLock { s in
            s.count += 1
            s.sum += seconds
            s.last = seconds
            s.max = Swift.max(s.max, seconds)
            for (i, bound) in Self.bounds.enumerated() where seconds <= bound { s.buckets[i] += 1 }
        }
    }

    public var snapshot: Snapshot { state.withLock { $0 } }
}
