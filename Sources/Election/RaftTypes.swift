// MARK: - Identifiers and time

/// A node's identity inside the farm. Production ids are 16 hex characters; the simulator uses short ids.
public typealias NodeID = String

/// A Raft term. Terms only grow; every message carries one so stale leaders are recognised.
public typealias Term = UInt64

/// A 1-based position in the replicated log; 0 means "before the first entry".
public typealias LogIndex = UInt64

/// A point in time handed to `RaftInstance` by its shell, so the protocol logic never reads a clock.
///
/// Only differences matter; the shell may count from any origin (the simulator starts at zero).
public struct RaftTime: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) {
        self.nanoseconds = nanoseconds
    }

    public static func milliseconds(_ ms: UInt64) -> RaftTime {
        RaftTime(nanoseconds: ms * 1_000_000)
    }

    public var milliseconds: UInt64 { nanoseconds / 1_000_000 }

    public static func < (lhs: RaftTime, rhs: RaftTime) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    public static func + (lhs: RaftTime, rhs: Duration) -> RaftTime {
        RaftTime(nanoseconds: lhs.nanoseconds &+ rhs.raftNanoseconds)
    }

    /// Nanoseconds elapsed from `earlier` to `self`, zero if `earlier` is later.
    public func nanoseconds(since earlier: RaftTime) -> UInt64 {
        nanoseconds >= earlier.nanoseconds ? nanoseconds - earlier.nanoseconds : 0
    }

    public var description: String { "\(milliseconds)ms" }
}

extension Duration {
    /// Whole nanoseconds, clamped at zero; Raft timings are never negative.
    public var raftNanoseconds: UInt64 {
        let parts = components
        if parts.seconds < 0 { return 0 }
        return UInt64(parts.seconds) * 1_000_000_000 + UInt64(parts.attoseconds / 1_000_000_000)
    }
}

// MARK: - Log entries

/// The unique id of a proposed command (origin node + sequence), carried in the log entry itself so a
/// retried proposal that lands twice in the log is applied once by every state machine and checker.
public struct CommandID: Hashable, Sendable, CustomStringConvertible {
    public var origin: NodeID
    public var sequence: UInt64

    public init(origin: NodeID, sequence: UInt64) {
        self.origin = origin
        self.sequence = sequence
    }

    public var description: String { "\(origin)#\(sequence)" }
}

/// An opaque command for the replicated state machine, with the id that makes re-application detectable.
public struct RaftCommand: Hashable, Sendable {
    public var id: CommandID
    public var payload: [UInt8]

    public init(id: CommandID, payload: [UInt8]) {
        self.id = id
        self.payload = payload
    }
}

/// What a log entry does. Membership lives in the log so every node agrees on who votes.
public enum EntryKind: Hashable, Sendable {
    /// The empty entry a new leader appends so it can commit entries of earlier terms (Raft §5.4.2).
    case noop
    /// A state-machine command.
    case command(RaftCommand)
    /// Adds a voting member; takes effect as soon as it is appended (single-server change).
    case addNode(NodeID)
    /// Removes a member, voter or learner; takes effect as soon as it is appended (single-server change).
    case removeNode(NodeID)
    /// Adds a learner: a member that receives the log but never votes, campaigns or counts for a quorum.
    case addLearner(NodeID)
    /// Makes a learner a voter (one more voter: a single-server change of the voting configuration).
    case promote(NodeID)
    /// Makes a voter a learner (one voter less); never the leader itself.
    case demote(NodeID)
    /// `rexnode recover` after a lost quorum: the configuration becomes exactly these members (sorted), at a
    /// term far above the old farm's, written by the survivor itself (no leader); see `RaftInstance.onRecover`.
    case recover(members: [NodeID])

    public var isMembershipChange: Bool {
        switch self {
        case .addNode, .removeNode, .recover, .addLearner, .promote, .demote: return true
        case .noop, .command: return false
        }
    }
}

/// Who is a member and who votes, as a log's membership entries make it, applied in index order.
public struct RaftConfiguration: Hashable, Sendable {
    /// Everyone the leader replicates to: voters and learners.
    public var members: Set<NodeID>
    /// The members that vote, campaign and count for a quorum.
    public var voters: Set<NodeID>

    public init(members: Set<NodeID> = [], voters: Set<NodeID> = []) {
        self.members = members
        self.voters = voters
    }

    /// Applies one entry (anything but a membership change leaves the configuration as it is). A `recover(live)`
    /// makes `live` the members and keeps the voters among them; learners stay learners.
    public mutating func apply(_ kind: EntryKind) {
        switch kind {
        case .addNode(let node):
            members.insert(node)
            voters.insert(node)
        case .addLearner(let node): members.insert(node)
        case .removeNode(let node):
            members.remove(node)
            voters.remove(node)
        case .promote(let node): if members.contains(node) { voters.insert(node) }
        case .demote(let node): voters.remove(node)
        case .recover(let live):
            members = Set(live)
            voters.formIntersection(members)
        case .noop, .command: break
        }
    }
}

/// One replicated log entry. Entries are immutable once written; conflicts replace a whole suffix.
public struct LogEntry: Hashable, Sendable {
    public var term: Term
    public var index: LogIndex
    public var kind: EntryKind

    public init(term: Term, index: LogIndex, kind: EntryKind) {
        self.term = term
        self.index = index
        self.kind = kind
    }

    /// The command id, if this entry carries a command; the key for de-duplication on apply.
    public var commandID: CommandID? {
        if case .command(let command) = kind { return command.id }
        return nil
    }
}

/// The state Raft must keep on stable storage before answering anyone: the current term and the vote.
public struct HardState: Hashable, Sendable {
    public var term: Term
    public var votedFor: NodeID?

    public init(term: Term = 0, votedFor: NodeID? = nil) {
        self.term = term
        self.votedFor = votedFor
    }
}

/// The state machine's state as of one committed entry, standing in for every entry up to it (Raft §7).
///
/// `data` is the state machine's own encoding (opaque to Raft); the configuration and recovery epoch are Raft's
/// own state as of `lastIndex`, so the log after the snapshot is all a node needs besides it.
public struct RaftSnapshot: Hashable, Sendable {
    /// The last entry the snapshot covers, and its term.
    public var lastIndex: LogIndex
    public var lastTerm: Term
    /// Every member and the voters among them, as of `lastIndex`.
    public var members: [NodeID]
    public var voters: [NodeID]
    /// The term of the latest `recover` entry up to `lastIndex` (0 if none).
    public var recoveryEpoch: Term
    public var data: [UInt8]

    public init(
        lastIndex: LogIndex, lastTerm: Term, members: [NodeID], voters: [NodeID], recoveryEpoch: Term = 0,
        data: [UInt8]
    ) {
        self.lastIndex = lastIndex
        self.lastTerm = lastTerm
        self.members = members.sorted()
        self.voters = voters.sorted()
        self.recoveryEpoch = recoveryEpoch
        self.data = data
    }

    /// The description without the data.
    public var header: RaftSnapshot {
        var copy = self
        copy.data = []
        return copy
    }

    public var configuration: RaftConfiguration {
        RaftConfiguration(members: Set(members), voters: Set(voters))
    }
}

/// One durable write: optional hard state, optional snapshot, optional truncation of a conflicting suffix, new
/// entries, applied in that order.
///
/// A storage must make the whole request durable atomically (one transaction, one fsync) before the shell
/// performs the next directive, so the replies that follow it never promise something that could be lost.
public struct PersistRequest: Hashable, Sendable {
    public var hardState: HardState?
    /// Replace the stored snapshot with this one and delete every entry it covers (index <= its last index).
    public var snapshot: RaftSnapshot?
    /// Delete every entry with index >= this before appending `entries`.
    public var truncateFrom: LogIndex?
    public var entries: [LogEntry]

    public init(
        hardState: HardState? = nil, snapshot: RaftSnapshot? = nil, truncateFrom: LogIndex? = nil,
        entries: [LogEntry] = []
    ) {
        self.hardState = hardState
        self.snapshot = snapshot
        self.truncateFrom = truncateFrom
        self.entries = entries
    }

    public var isEmpty: Bool { hardState == nil && snapshot == nil && truncateFrom == nil && entries.isEmpty }
}

/// What a node's storage holds: hard state, the latest snapshot (if the log was ever compacted) and the entries
/// after it, in index order.
public struct StoredRaftState: Sendable {
    public var hardState: HardState
    public var snapshot: RaftSnapshot?
    public var log: [LogEntry]

    public init(hardState: HardState = HardState(), snapshot: RaftSnapshot? = nil, log: [LogEntry] = []) {
        self.hardState = hardState
        self.snapshot = snapshot
        self.log = log
    }
}

/// The role a node plays in its current term.
public enum RaftRole: String, Hashable, Sendable {
    case follower
    /// Asking for pre-votes without raising its term, so a flapping node cannot disrupt a healthy leader.
    case preCandidate = "pre-candidate"
    case candidate
    case leader
}

// MARK: - Deterministic randomness

/// SplitMix64: a tiny seeded generator, so simulations and tests replay exactly from a seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
