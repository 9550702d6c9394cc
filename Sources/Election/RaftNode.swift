import Dispatch
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - Transport

/// How a node's messages reach its peers; the Mesh layer implements it over the secure channel.
///
/// Sending is fire-and-forget: Raft tolerates loss, duplication and reordering, so a transport may drop a
/// message when a peer is unreachable instead of blocking the node.
public protocol RaftTransport: Sendable {
    func send(_ bytes: [UInt8], to peer: NodeID)
    /// Sends and blocks the calling thread until the bytes are on their way (written to the connection), or returns
    /// `false` at once when they cannot be. For bulk data (a snapshot's chunks): sending them all at once would
    /// overrun a bounded buffer, which drops what does not fit. Never called on the node's own thread.
    func sendWaiting(_ bytes: [UInt8], to peer: NodeID) -> Bool
}

extension RaftTransport {
    public func sendWaiting(_ bytes: [UInt8], to peer: NodeID) -> Bool {
        send(bytes, to: peer)
        return true
    }
}

// MARK: - Errors

/// Why a proposal did not complete, with where to go next when that is known.
public struct RaftError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        /// This node does not lead; `leaderHint` says who might.
        case notLeader
        /// Leadership was lost before the entry committed; it may still commit, so retry with the same id.
        case leadershipLost
        /// Another entry was committed at the proposal's index; it will never commit.
        case entryOverwritten
        /// A membership change was refused (see the message).
        case membershipRejected
        /// The node stopped.
        case stopped
        /// `recover` was refused (see the message: a leader is alive, or nothing was lost).
        case recoveryRefused
    }

    public var code: Code
    public var message: String
    public var leaderHint: NodeID?

    public init(_ code: Code, _ message: String, leaderHint: NodeID? = nil) {
        self.code = code
        self.message = message
        self.leaderHint = leaderHint
    }

    public static func notLeader(_ hint: NodeID?) -> RaftError {
        RaftError(.notLeader, "this node is not the leader" + (hint.map { "; try \($0)" } ?? ""), leaderHint: hint)
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

/// A snapshot of a node's view of the farm, for `rexnode peers` and logs.
public struct RaftStatus: Sendable, Hashable {
    public var id: NodeID
    public var role: RaftRole
    public var term: Term
    public var leader: NodeID?
    public var commitIndex: LogIndex
    public var lastIndex: LogIndex
    /// The last index compacted into the snapshot (0: the log was never compacted).
    public var snapshotIndex: LogIndex = 0
    /// Every member, voters and learners.
    public var members: Set<NodeID>
    /// The members that vote (the others are learners: they replicate and render, never vote).
    public var voters: Set<NodeID> = []
    /// On a leader: how far each other member's log is known to match the leader's (empty elsewhere).
    public var matchIndex: [NodeID: LogIndex] = [:]
    /// The term of the latest `recover` entry in this node's log (0: never recovered).
    public var recoveryEpoch: Term = 0
    /// Whether this node leads and may propose a membership change now (it has committed an entry of its own term,
    /// so every entry committed before it took over is at or below `commitIndex`, and none is pending).
    public var canChangeMembership: Bool = false
}

// MARK: - RaftNode

/// The shell around `RaftInstance`: owns the clock, randomness, storage and transport, performs the
/// instance's directives in order (persist before send) and feeds results back.
///
/// Run it with `run()` (for example as a `Service`); it stops when that task is cancelled. Proposals that
/// arrive while a write is in flight are batched into one append and one fsync.
///
/// The node runs on its own thread (an event loop of its own, or one the caller dedicates to it), never on Swift's
/// shared pool: its timer fires from that loop, messages arrive through `receive` from any thread and replies leave
/// through a transport that must not block. Writes go to a storage thread of their own, batched (one fsync for
/// whatever piled up), so a slow disk never stops the clock: heartbeats keep time while the rest of a busy process
/// (hashing, copying, fsyncing a big .blend, Blender on every core) holds every pool thread and the disk.
///
/// Ordering is Raft's: every send and apply waits for the writes issued before it (a vote or an acknowledgement
/// never leaves before what it promises is durable), except behind the leader's own appends, which replicate in
/// parallel with its write (Raft thesis §10.2.1: the leader counts itself towards a commit only once its write is
/// durable, which `RaftInstance` tracks as its durable index).
/// What a `RaftNode` hands its state machine, in order.
public enum Committed: Sendable, Hashable {
    /// The next committed entry.
    case entry(LogEntry)
    /// Replace the whole state with this snapshot; the entries after its last index follow.
    case snapshot(RaftSnapshot)
}

public actor RaftNode {
    public nonisolated let id: NodeID
    private nonisolated let loop: any EventLoop
    private nonisolated let serialExecutor: any SerialExecutor
    /// The loop this node made for itself (none given), shut down with the node.
    private nonisolated let ownedGroup: MultiThreadedEventLoopGroup?
    public nonisolated var unownedExecutor: UnownedSerialExecutor { serialExecutor.asUnownedSerialExecutor() }
    /// Every committed entry, in index order, once per node run (including no-ops and membership changes), and a
    /// snapshot where the state machine must be replaced (installed from the leader, or stored but not yet applied
    /// at start). Commands can repeat under a retried `CommandID`; state machines skip ids they have applied.
    public nonisolated let committed: AsyncStream<Committed>
    /// Role, term and leader changes, for logs and `rexnode peers` (keeps only the latest 16 if unread).
    public nonisolated let roleChanges: AsyncStream<RaftStatus>

    private let settings: RaftSettings
    private let storage: any RaftStorage
    private let transport: any RaftTransport
    private let appliedIndex: LogIndex
    private let seed: UInt64
    private let clock = ContinuousClock()
    private let origin: ContinuousClock.Instant
    private let committedContinuation: AsyncStream<Committed>.Continuation
    private let roleContinuation: AsyncStream<RaftStatus>.Continuation
    private let doorbell: AsyncStream<Void>
    /// How long, at most, the node went without running (it runs at least every tick) and, as a follower, without
    /// hearing from its leader: what a busy machine costs Raft (for benchmarks and diagnosis).
    public private(set) var longestStall: Duration = .zero
    public private(set) var longestLeaderSilence: Duration = .zero
    private var lastRun: ContinuousClock.Instant?
    private var lastFromLeader: (leader: NodeID, at: ContinuousClock.Instant)?
    private let doorbellContinuation: AsyncStream<Void>.Continuation
    private let inbox = Mutex<[(NodeID, [UInt8])]>([])

    private var instance: RaftInstance<SplitMix64>?
    private var timerDeadline: RaftTime?
    private var nextSequence: UInt64 = 1
    private var pendingProposals: [(RaftCommand, CheckedContinuation<LogIndex, any Error>)] = []
    private var pendingChanges: [(EntryKind, CheckedContinuation<LogIndex, any Error>)] = []
    private var waiters: [LogIndex: (CommandID?, CheckedContinuation<LogIndex, any Error>)] = [:]
    private var stopped = false

    // Storage runs on its own queue; these track what it has made durable and what waits for it.
    private let storageQueue = DispatchQueue(label: "rexnode.raft.storage")
    /// Reads snapshots from storage and streams their chunks to members, one chunk on the wire at a time, off the
    /// node's thread (a large snapshot takes seconds).
    private let snapshotQueue = DispatchQueue(label: "rexnode.raft.snapshots")
    private let storageState = Mutex(StorageState())
    private var persistSequence: UInt64 = 0
    /// The latest write that sends and applies must wait for (the leader's own appends are not barriers).
    private var barrierSequence: UInt64 = 0
    private var durableSequence: UInt64 = 0
    private var deferred: [(needs: UInt64, directive: RaftDirective)] = []
    /// Callers waiting for a write to be durable (`compact`), by the write's sequence.
    private var durableWaiters: [(needs: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []

    private struct StorageState {
        var queued: [(UInt64, PersistRequest)] = []
        var running = false
        var done: [(UInt64, PersistRequest)] = []
        var failure: (any Error)?
    }

    /// - Parameters:
    ///   - appliedIndex: how far the caller's state machine has already applied (0 to replay the log).
    ///   - seed: seeds the election jitter; `nil` draws one from the system generator.
    ///   - eventLoop: the thread the node runs on; `nil` gives it a loop of its own. Dedicate it to this node.
    public init(
        id: NodeID, settings: RaftSettings = RaftSettings(), storage: any RaftStorage, transport: any RaftTransport,
        appliedIndex: LogIndex = 0, seed: UInt64? = nil, eventLoop: (any EventLoop)? = nil
    ) {
        self.id = id
        if let eventLoop {
            loop = eventLoop
            ownedGroup = nil
        } else {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            loop = group.next()
            ownedGroup = group
        }
        serialExecutor = loop.executor
        self.settings = settings
        self.storage = storage
        self.transport = transport
        self.appliedIndex = appliedIndex
        var system = SystemRandomNumberGenerator()
        self.seed = seed ?? system.next()
        self.origin = clock.now
        (doorbell, doorbellContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        (committed, committedContinuation) = AsyncStream.makeStream(of: Committed.self)
        (roleChanges, roleContinuation) = AsyncStream.makeStream(
            of: RaftStatus.self, bufferingPolicy: .bufferingNewest(16))
    }

    deinit {
        ownedGroup?.shutdownGracefully(queue: .global()) { _ in }
    }

    // MARK: Inputs from outside

    /// Hands a message from `peer` to the node; callable from any thread (the transport's receive path).
    public nonisolated func receive(from peer: NodeID, bytes: [UInt8]) {
        inbox.withLock { $0.append((peer, bytes)) }
        ring()
    }

    /// Proposes a command; returns its log index once it is committed and was emitted on `committed`.
    public func propose(_ payload: [UInt8]) async throws -> LogIndex {
        let command = RaftCommand(id: CommandID(origin: id, sequence: nextSequence), payload: payload)
        nextSequence += 1
        return try await propose(command)
    }

    /// Proposes a command with a caller-chosen id: retrying with the same id is safe (applied once).
    public func propose(_ command: RaftCommand) async throws -> LogIndex {
        if stopped { throw RaftError(.stopped, "the node has stopped") }
        if let instance, !instance.isLeader { throw RaftError.notLeader(instance.leaderID) }
        return try await withCheckedThrowingContinuation { continuation in
            pendingProposals.append((command, continuation))
            ring()
        }
    }

    /// Adds a voting member (the leader does this for nodes that asked to join); one change at a time.
    public func addMember(_ node: NodeID) async throws -> LogIndex {
        try await changeMembership(.addNode(node))
    }

    /// Removes a member (voter or learner); one change at a time.
    public func removeMember(_ node: NodeID) async throws -> LogIndex {
        try await changeMembership(.removeNode(node))
    }

    /// Adds a learner: a member that replicates the log and never votes; one change at a time.
    public func addLearner(_ node: NodeID) async throws -> LogIndex {
        try await changeMembership(.addLearner(node))
    }

    /// Makes a learner a voter, or (`voter: false`) a voter a learner; one change at a time.
    public func setVoter(_ node: NodeID, _ voter: Bool) async throws -> LogIndex {
        try await changeMembership(voter ? .promote(node) : .demote(node))
    }

    private func changeMembership(_ change: EntryKind) async throws -> LogIndex {
        if stopped { throw RaftError(.stopped, "the node has stopped") }
        return try await withCheckedThrowingContinuation { continuation in
            pendingChanges.append((change, continuation))
            ring()
        }
    }

    /// The node's current view; `nil` before `run()` has loaded storage.
    public var status: RaftStatus? {
        guard let instance else { return nil }
        return RaftStatus(
            id: id, role: instance.role, term: instance.currentTerm, leader: instance.leaderID,
            commitIndex: instance.commitIndex, lastIndex: instance.lastIndex, snapshotIndex: instance.snapshotIndex,
            members: instance.members,
            voters: instance.voters, matchIndex: instance.role == .leader ? instance.matchIndex : [:],
            recoveryEpoch: instance.recoveryEpoch, canChangeMembership: instance.canChangeMembership)
    }

    /// The state machine saved its state as of `index` (`data`, in its own encoding): the log up to there is dropped
    /// here and on disk, and members that need those entries get the snapshot instead (see `RaftInstance.compact`).
    /// Returns the term of the entry at `index` once the snapshot is durable (the caller may then drop its own copy of
    /// the log: a crash after this point restarts from the snapshot); `nil` when `index` is not after the current
    /// snapshot or was not applied yet. Throws if the node stops before the write is durable.
    @discardableResult
    public func compact(through index: LogIndex, data: [UInt8]) async throws -> Term? {
        guard !stopped, instance != nil else { throw RaftError(.stopped, "the node has stopped") }
        let directives = instance!.compact(through: index, data: data, now: now())
        guard !directives.isEmpty else { return nil }
        let term = instance!.snapshotTerm
        try perform(directives)
        let written = persistSequence
        if durableSequence < written {
            try await withCheckedThrowingContinuation { continuation in
                durableWaiters.append((written, continuation))
            }
        }
        return term
    }

    /// `rexnode recover`: makes `live` the whole membership after a lost quorum (see `RaftInstance.onRecover`).
    /// Returns once the recovery entry is queued for its write; nothing leaves this node before that write is
    /// durable. Watch `status.commitIndex` to see the farm commit again.
    public func recover(keeping live: Set<NodeID>) throws -> (term: Term, index: LogIndex) {
        guard !stopped, instance != nil else { throw RaftError(.stopped, "the node has stopped") }
        switch instance!.onRecover(members: live, now: now()) {
        case .recovered(let term, let index, let directives):
            try perform(directives)
            return (term, index)
        case .refused(let reason):
            throw RaftError(.recoveryRefused, reason)
        }
    }

    // MARK: Run loop

    /// Loads storage and runs the node until the calling task is cancelled. A storage error ends the run
    /// (the node can no longer promise durability); pending proposals then fail with `.stopped`.
    public func run() async throws {
        let stored = try await storage.load()
        let log = stored.log
        if let header = stored.snapshot, appliedIndex < header.lastIndex {
            // Stored but not applied (the node stopped between the two writes of an install): restore it first.
            guard let snapshot = try storage.snapshot(), snapshot.lastIndex == header.lastIndex else {
                throw RaftStorageError("the stored snapshot of index \(header.lastIndex) is gone")
            }
            committedContinuation.yield(.snapshot(snapshot))
        }
        var instance = RaftInstance(
            id: id, settings: settings, hardState: stored.hardState, snapshot: stored.snapshot, log: log,
            appliedIndex: appliedIndex, random: SplitMix64(seed: seed), now: now())
        // Sequences only grow across restarts: start above both the log and the wall clock.
        let logged = log.compactMap { $0.commandID }.filter { $0.origin == id }.map(\.sequence).max() ?? 0
        nextSequence = max(logged + 1, Self.wallClockNanoseconds())
        let first = instance.onTick(now: now())
        self.instance = instance
        let tick = min(settings.heartbeatInterval / 5, .milliseconds(10))
        // The timer rings from the node's own loop: no pool thread is needed to wake it.
        let nanos = Int64(clamping: tick.raftNanoseconds)
        let ticker = loop.scheduleRepeatedTask(initialDelay: .nanoseconds(nanos), delay: .nanoseconds(nanos)) {
            [weak self] _ in self?.ring()
        }
        defer {
            ticker.cancel()
            shutDown()
        }
        try perform(first)
        // The wait for the doorbell runs on the node's loop too (as the task's preferred executor): waking up never
        // needs a thread of Swift's shared pool, which a busy process may hold for seconds.
        try await withTaskExecutorPreference(LoopTaskExecutor(loop: loop)) {
            // Ends when the calling task is cancelled (the stream's iterator returns nil then).
            for await _ in doorbell {
                if Task.isCancelled { break }
                try processPending()
            }
        }
    }

    /// Starts measuring `longestStall` and `longestLeaderSilence` afresh.
    public func resetStallStatistics() {
        longestStall = .zero
        longestLeaderSilence = .zero
        lastRun = nil
        lastFromLeader = nil
    }

    /// Wakes the node: it processes whatever is pending, once, on its loop.
    private nonisolated func ring() { doorbellContinuation.yield() }

    private func now() -> RaftTime {
        let elapsed = clock.now - origin
        return RaftTime(nanoseconds: elapsed.raftNanoseconds)
    }

    private static func wallClockNanoseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    private func processPending() throws {
        let started = clock.now
        if let lastRun { longestStall = max(longestStall, started - lastRun) }
        lastRun = started
        try takeDurable()
        let messages = inbox.withLock { pending in
            defer { pending.removeAll(keepingCapacity: true) }
            return pending
        }
        for (peer, bytes) in messages {
            // Garbage from a peer is dropped: Raft treats it like a lost message.
            guard let message = try? RaftMessage(bytes: bytes) else { continue }
            if case .appendEntries = message, instance?.role == .follower {
                let at = clock.now
                if let last = lastFromLeader, last.leader == peer {
                    longestLeaderSilence = max(longestLeaderSilence, at - last.at)
                }
                lastFromLeader = (peer, at)
            }
            try perform(instance!.onMessage(message, from: peer, now: now()))
        }
        if !pendingProposals.isEmpty {
            let batch = pendingProposals
            pendingProposals = []
            switch instance!.onPropose(batch.map(\.0), now: now()) {
            case .accepted(let first, _, let directives):
                for (offset, (command, continuation)) in batch.enumerated() {
                    waiters[first + LogIndex(offset)] = (command.id, continuation)
                }
                try perform(directives)
            case .notLeader(let hint):
                for (_, continuation) in batch { continuation.resume(throwing: RaftError.notLeader(hint)) }
            case .rejected(let reason):
                for (_, continuation) in batch { continuation.resume(throwing: RaftError(.membershipRejected, reason)) }
            }
        }
        if !pendingChanges.isEmpty {
            let changes = pendingChanges
            pendingChanges = []
            for (change, continuation) in changes {
                switch instance!.onProposeMembership(change, now: now()) {
                case .accepted(let index, _, let directives):
                    waiters[index] = (nil, continuation)
                    try perform(directives)
                case .notLeader(let hint):
                    continuation.resume(throwing: RaftError.notLeader(hint))
                case .rejected(let reason):
                    continuation.resume(throwing: RaftError(.membershipRejected, reason))
                }
            }
        }
        if let deadline = timerDeadline, now() >= deadline {
            // The deadline stays until the instance schedules a new one, so a tick is never lost.
            try perform(instance!.onTick(now: now()))
        }
    }

    /// Performs directives in order: a write goes to the storage queue, and a send or apply after a write waits
    /// until that write is durable (unless the write is the leader's own append).
    private func perform(_ directives: [RaftDirective]) throws {
        for directive in directives {
            switch directive {
            case .persist(let request):
                persistSequence += 1
                // A snapshot is a barrier too: what follows may send it, and the sender reads it from storage.
                let mayOvertake =
                    instance!.role == .leader && request.hardState == nil && request.truncateFrom == nil
                    && request.snapshot == nil
                if !mayOvertake { barrierSequence = persistSequence }
                enqueue(request, sequence: persistSequence)
            case .send, .apply, .restore, .sendSnapshot:
                if barrierSequence > durableSequence {
                    deferred.append((barrierSequence, directive))
                } else {
                    try performNow(directive)
                }
            case .roleChanged, .scheduleTimer:
                try performNow(directive)
            }
        }
    }

    /// Hands a write to the storage queue; whatever piles up while one write syncs goes in the next, together.
    private nonisolated func enqueue(_ request: PersistRequest, sequence: UInt64) {
        let start = storageState.withLock { state -> Bool in
            state.queued.append((sequence, request))
            guard !state.running else { return false }
            state.running = true
            return true
        }
        if start { storageQueue.async { self.drainStorage() } }
    }

    private nonisolated func drainStorage() {
        while true {
            let batch = storageState.withLock { state -> [(UInt64, PersistRequest)] in
                defer { state.queued.removeAll(keepingCapacity: true) }
                if state.queued.isEmpty || state.failure != nil { state.running = false }
                return state.failure == nil ? state.queued : []
            }
            guard !batch.isEmpty else { return }
            do {
                try storage.persist(batch: batch.map(\.1))
                storageState.withLock { $0.done += batch }
            } catch {
                storageState.withLock { $0.failure = error }
            }
            ring()
        }
    }

    /// Feeds durable writes back to the instance and releases what waited for them; a storage error stops the node.
    private func takeDurable() throws {
        let (done, failure) = storageState.withLock { state in
            defer { state.done.removeAll(keepingCapacity: true) }
            return (state.done, state.failure)
        }
        if let failure { throw failure }
        for (sequence, request) in done {
            durableSequence = sequence
            // What waited for this write goes first (it was issued before anything the write's completion yields).
            var released = 0
            while released < deferred.count, deferred[released].needs <= durableSequence { released += 1 }
            let ready = deferred.prefix(released)
            deferred.removeFirst(released)
            for item in ready { try performNow(item.directive) }
            try perform(instance!.onPersisted(request, now: now()))
        }
        // Waiters are in write order (sequences only grow).
        while let first = durableWaiters.first, first.needs <= durableSequence {
            durableWaiters.removeFirst().continuation.resume()
        }
    }

    private func performNow(_ directive: RaftDirective) throws {
        switch directive {
        case .persist:
            preconditionFailure("writes go through perform(_:)")
        case .send(let peer, let message):
            transport.send(message.encode(), to: peer)
        case .sendSnapshot(let peer, let term, let wanted):
            // Read from storage only now (the instance keeps no snapshot bytes), never older than the one asked for,
            // and stream it: each chunk goes once the one before it is written. A failed read or send ends this
            // copy; the member still lacks the snapshot and the instance sends it again later.
            let (storage, transport, id, chunkBytes) = (storage, transport, id, settings.maxAppendBytes)
            snapshotQueue.async {
                guard let stored = try? storage.snapshot(), stored.lastIndex >= wanted.lastIndex else { return }
                for chunk in InstallSnapshot.chunks(of: stored, term: term, leaderID: id, chunkBytes: chunkBytes) {
                    guard transport.sendWaiting(RaftMessage.installSnapshot(chunk).encode(), to: peer) else { return }
                }
            }
        case .restore(let snapshot):
            committedContinuation.yield(.snapshot(snapshot))
            // Proposals waiting on entries the snapshot covers cannot tell whether theirs is among them: they retry
            // (under the same command id, which the state machine applies once).
            for index in waiters.keys where index <= snapshot.lastIndex {
                waiters.removeValue(forKey: index)?.1.resume(
                    throwing: RaftError(
                        .entryOverwritten, "entry \(index) arrived inside a snapshot; its outcome is not known here"))
            }
        case .apply(let entries):
            for entry in entries {
                committedContinuation.yield(.entry(entry))
                if let (expected, continuation) = waiters.removeValue(forKey: entry.index) {
                    if expected == nil ? entry.kind.isMembershipChange : entry.commandID == expected {
                        continuation.resume(returning: entry.index)
                    } else {
                        continuation.resume(
                            throwing: RaftError(
                                .entryOverwritten, "another entry was committed at index \(entry.index)"))
                    }
                }
            }
        case .roleChanged(let role, _, let leader):
            if let status { roleContinuation.yield(status) }
            if role != .leader && !waiters.isEmpty {
                let lost = waiters
                waiters = [:]
                for (_, (_, continuation)) in lost {
                    continuation.resume(
                        throwing: RaftError(
                            .leadershipLost, "leadership moved before the entry committed; it may still commit",
                            leaderHint: leader))
                }
            }
        case .scheduleTimer(let at):
            timerDeadline = at
        }
    }

    private func shutDown() {
        stopped = true
        let error = RaftError(.stopped, "the node has stopped")
        for (_, continuation) in pendingProposals { continuation.resume(throwing: error) }
        for (_, continuation) in pendingChanges { continuation.resume(throwing: error) }
        for (_, (_, continuation)) in waiters { continuation.resume(throwing: error) }
        for waiter in durableWaiters { waiter.continuation.resume(throwing: error) }
        durableWaiters = []
        pendingProposals = []
        pendingChanges = []
        waiters = [:]
        committedContinuation.finish()
        roleContinuation.finish()
    }
}

// MARK: - Executor

/// Runs a task's nonisolated work on an event loop (SE-0417 task executor), so a task that prefers it never
/// waits for a thread of the shared pool.
final class LoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

// MARK: - In-memory network

/// Connects `RaftNode`s in one process, for tests and the benchmark; links can be cut to model partitions.
public final class InMemoryRaftNetwork: Sendable {
    private struct State {
        var nodes: [NodeID: RaftNode] = [:]
        var isolated: Set<NodeID> = []
    }

    private let state = Mutex(State())

    public init() {}

    /// The transport a node with this id should use.
    public func transport(for id: NodeID) -> any RaftTransport {
        Endpoint(network: self, id: id)
    }

    public func register(_ node: RaftNode) {
        state.withLock { $0.nodes[node.id] = node }
    }

    /// Drops every message to or from `id` until `heal()`.
    public func isolate(_ id: NodeID) {
        state.withLock { _ = $0.isolated.insert(id) }
    }

    public func heal() {
        state.withLock { $0.isolated = [] }
    }

    fileprivate func deliver(_ bytes: [UInt8], from: NodeID, to: NodeID) {
        let target: RaftNode? = state.withLock { s in
            s.isolated.contains(from) || s.isolated.contains(to) ? nil : s.nodes[to]
        }
        target?.receive(from: from, bytes: bytes)
    }

    private struct Endpoint: RaftTransport {
        let network: InMemoryRaftNetwork
        let id: NodeID

        func send(_ bytes: [UInt8], to peer: NodeID) {
            network.deliver(bytes, from: id, to: peer)
        }
    }
}
