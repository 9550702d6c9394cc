/// Timing and behaviour knobs of one Raft node; a `Sendable` value so a farm's settings can nest it.
///
/// Defaults follow the architecture: heartbeat 100 ms, election timeout uniformly random in [500, 1000) ms.
public struct RaftSettings: Sendable, Hashable {
    /// How often a leader sends AppendEntries (heartbeats) to every follower.
    public var heartbeatInterval: Duration = .milliseconds(100)
    /// The lower bound of the randomised election timeout (inclusive).
    public var electionTimeoutMin: Duration = .milliseconds(500)
    /// The upper bound of the randomised election timeout (exclusive).
    public var electionTimeoutMax: Duration = .milliseconds(1000)
    /// Ask for pre-votes before raising the term, so a node that was cut off cannot depose a live leader.
    public var preVote: Bool = true
    /// A leader steps down if it has not heard from a quorum within one minimum election timeout, and
    /// followers that heard from a leader recently ignore vote requests (leader lease).
    public var checkQuorum: Bool = true
    /// Cap on entries per AppendEntries message, so one message stays well under the transport's frame cap.
    public var maxEntriesPerAppend: Int = 512
    /// Cap on the payload bytes per AppendEntries (a single larger entry still goes alone).
    public var maxAppendBytes: Int = 1 << 20
    /// A leader sends a member the same snapshot again only after this long (its chunks may still be on the way).
    public var snapshotRetry: Duration = .milliseconds(2000)
    /// `rexnode recover` is refused until this node has known no leader for this long (three of the longest
    /// election timeouts: long enough that a farm which still has a majority would have elected a leader).
    public var recoveryQuietPeriod: Duration = .milliseconds(3000)
    /// How far above every term this node knows a recovery's term jumps, so that a returning machine's stale log
    /// never looks as up to date as the recovered one (it would need this many elections the survivor never saw).
    public var recoveryTermGap: UInt64 = 1_000_000
    /// Deliberately broken variants for the simulator's self-test. **Test-only; never enable in production.**
    public var injectedBugs: Set<InjectedBug> = []

    public init() {}
}

/// Known-bad protocol variants that `rexsim --inject-bug` switches on to prove the checker catches them.
///
/// Test-only: each one breaks a Raft safety rule on purpose.
public enum InjectedBug: String, Sendable, Hashable, CaseIterable {
    /// Grant votes (and adopt the term) without persisting the hard state first.
    case skipVotePersist = "skip-vote-persist"
    /// Commit entries of earlier terms by counting replicas, and skip the election no-op.
    case commitOldTerm = "commit-old-term"
    /// Accept AppendEntries without comparing the term of the entry at `prevLogIndex`.
    case noLogCheck = "no-log-check"
    /// Count a learner's vote (and its replica) as if it were a voter's.
    case countLearnerVote = "count-learner-vote"
}
