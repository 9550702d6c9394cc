import Synchronization

/// Durable home of a node's hard state (term, vote) and log.
///
/// Raft's safety rests on it: `persist` must return only once the request is on stable storage (fsync),
/// because the shell sends the replies that depend on it right after. Implementations: `InMemoryRaftStorage`
/// for tests and benchmarks, and `RaftLogStore` (SQLite, in the Ledger module) for real nodes.
public protocol RaftStorage: Sendable {
    /// Reads what was made durable: the hard state, the latest snapshot and the log after it in index order. The
    /// snapshot may come without its data (a large state stays on disk); `snapshot()` reads it when it is needed.
    func load() async throws -> StoredRaftState
    /// Atomically stores the hard state (if any), replaces the snapshot and drops the entries it covers (if any),
    /// truncates the log (if asked) and appends the entries.
    ///
    /// Blocks the calling thread until the request is durable: `RaftNode` calls it on its own thread (its event
    /// loop), so the wait never holds a thread of Swift's shared pool and no pool thread is needed to resume.
    func persist(_ request: PersistRequest) throws
    /// Persists several requests in order, as one write where the storage can (one fsync for the lot).
    func persist(batch requests: [PersistRequest]) throws
    /// The stored snapshot, data included (what a leader sends a member that needs it); `nil` if none.
    func snapshot() throws -> RaftSnapshot?
}

extension RaftStorage {
    public func persist(batch requests: [PersistRequest]) throws {
        for request in requests { try persist(request) }
    }
}

/// A storage error with a message a person can act on and the underlying cause.
public struct RaftStorageError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var cause: (any Error & Sendable)?

    public init(_ message: String, cause: (any Error & Sendable)? = nil) {
        self.message = message
        self.cause = cause
    }

    public var description: String {
        cause.map { "\(message): \($0)" } ?? message
    }
}

/// Keeps hard state and log in memory: for pure tests, the benchmark and the in-process farm. Nothing
/// survives the process, so it models a disk that never loses an acknowledged write.
public final class InMemoryRaftStorage: RaftStorage {
    private struct State {
        var stored = StoredRaftState()
        var persistCount = 0
    }

    private let state = Mutex(State())

    public init(hardState: HardState = HardState(), snapshot: RaftSnapshot? = nil, log: [LogEntry] = []) {
        state.withLock { $0.stored = StoredRaftState(hardState: hardState, snapshot: snapshot, log: log) }
    }

    /// How many `persist` calls were made (what batching saves).
    public var persistCount: Int { state.withLock { $0.persistCount } }

    public func load() async throws -> StoredRaftState {
        state.withLock { $0.stored }
    }

    public func snapshot() throws -> RaftSnapshot? { state.withLock { $0.stored.snapshot } }

    public func persist(_ request: PersistRequest) throws {
        try state.withLock { s in
            try s.stored.apply(request)
            s.persistCount += 1
        }
    }
}

extension StoredRaftState {
    /// The index of the last entry held (the snapshot's last index when the log after it is empty).
    public var lastIndex: LogIndex { (snapshot?.lastIndex ?? 0) + LogIndex(log.count) }

    /// The farm's recovery epoch as stored: the term of the latest `recover` entry, in the log or the snapshot.
    public var recoveryEpoch: Term {
        max(RaftInstance<SplitMix64>.lastRecoveryTerm(in: log), snapshot?.recoveryEpoch ?? 0)
    }

    /// Whether anything was ever stored (a snapshot or an entry).
    public var isEmpty: Bool { snapshot == nil && log.isEmpty }

    /// Applies a request as a storage must, checking that entries stay contiguous.
    public mutating func apply(_ request: PersistRequest) throws {
        if let hard = request.hardState { hardState = hard }
        if let installed = request.snapshot {
            let base = snapshot?.lastIndex ?? 0
            let covered = Int(min(installed.lastIndex > base ? installed.lastIndex - base : 0, LogIndex(log.count)))
            log.removeFirst(covered)
            if installed.lastIndex > base + LogIndex(covered) { log = [] }
            snapshot = installed
        }
        let base = snapshot?.lastIndex ?? 0
        if let from = request.truncateFrom, from > base, from <= lastIndex {
            log.removeSubrange(Int(from - base - 1)...)
        }
        for entry in request.entries {
            guard entry.index == lastIndex + 1 else {
                throw RaftStorageError("entry \(entry.index) does not follow the last stored index \(lastIndex)")
            }
            log.append(entry)
        }
    }
}
