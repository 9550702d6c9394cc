import Synchronization

/// Durable home of a node's hard state (term, vote) and log.
///
/// Raft's safety rests on it: `persist` must return only once the request is on stable storage (fsync),
/// because the shell sends the replies that depend on it right after. Implementations: `InMemoryRaftStorage`
/// for tests and benchmarks, and `RaftLogStore` (SQLite, in the Ledger module) for real nodes.
public protocol RaftStorage: Sendable {
    /// Reads what was made durable: the hard state and the whole log in index order.
    func load() async throws -> (hardState: HardState, log: [LogEntry])
    /// Atomically stores the hard state (if any), truncates the log (if asked) and appends the entries.
    ///
    /// Blocks the calling thread until the request is durable: `RaftNode` calls it on its own thread (its event
    /// loop), so the wait never holds a thread of Swift's shared pool and no pool thread is needed to resume.
    func persist(_ request: PersistRequest) throws
    /// Persists several requests in order, as one write where the storage can (one fsync for the lot).
    func persist(batch requests: [PersistRequest]) throws
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
        var hardState = HardState()
        var log: [LogEntry] = []
        var persistCount = 0
    }

    private let state = Mutex(State())

    public init(hardState: HardState = HardState(), log: [LogEntry] = []) {
        state.withLock {
            $0.hardState = hardState
            $0.log = log
        }
    }

    /// How many `persist` calls were made (what batching saves).
    public var persistCount: Int { state.withLock { $0.persistCount } }

    public func load() async throws -> (hardState: HardState, log: [LogEntry]) {
        state.withLock { ($0.hardState, $0.log) }
    }

    public func persist(_ request: PersistRequest) throws {
        try state.withLock { s in
            try Self.apply(request, to: &s.hardState, &s.log)
            s.persistCount += 1
        }
    }

    /// Applies a request to a plain log, checking that entries stay contiguous.
    static func apply(_ request: PersistRequest, to hardState: inout HardState, _ log: inout [LogEntry]) throws {
        if let hard = request.hardState { hardState = hard }
        if let from = request.truncateFrom, from >= 1, from <= LogIndex(log.count) {
            log.removeSubrange(Int(from - 1)...)
        }
        for entry in request.entries {
            guard entry.index == LogIndex(log.count + 1) else {
                throw RaftStorageError("entry \(entry.index) does not follow the last stored index \(log.count)")
            }
            log.append(entry)
        }
    }
}
