import Election
import Foundation
import Ledger
import Logging
import Mesh
import Synchronization

/// The replicated `CommandLog`: commands go through Raft and every node applies the committed log to its ledger.
///
/// A proposal made on a follower is forwarded to the leader; whatever happens (leader change, lost
/// connection) it is retried with the same command id until it is applied here, and the ledger applies an id
/// once, so a retried command never takes effect twice.
public actor RaftCommandLog: CommandLog {
    /// How a follower hands proposals to the leader (the mesh, in the daemon).
    public typealias Forwarder = @Sendable (_ leader: String, _ entries: [[UInt8]]) async throws -> [UInt64]

    let raft: RaftNode
    private let ledger: LedgerStore
    private let node: String
    private let forward: Forwarder
    private let onApply: @Sendable () -> Void
    private let onMembership: @Sendable (_ change: LedgerCommand, _ index: UInt64) async -> Void
    private let onRestore: @Sendable (_ snapshot: RaftSnapshot) async -> Void
    /// Compact once this many entries were applied after the last snapshot (0: never).
    private let snapshotEvery: UInt64
    private let logger: Logger
    /// Command sequence numbers: never reused, across restarts and wall-clock steps (reserved in the ledger).
    private var sequencer: CommandSequencer
    private var applied: UInt64
    /// This node's proposals not yet settled (applied or given up): the lowest is the floor each new entry carries.
    private var inFlight: Set<UInt64> = []
    private var outcomes: [UInt64: ApplyOutcome] = [:]
    private var waiters: [UInt64: [Int: CheckedContinuation<Void, any Error>]] = [:]
    private var nextWaiter = 0
    /// How long a proposal keeps retrying while the farm has no reachable leader.
    private let patience: Duration
    /// Propose-to-applied-here seconds of this node's proposals (`/metrics`).
    public let commitLatency = CommitLatency()

    /// - Parameter wallClock: nanoseconds since 1970, the lower bound of command sequence numbers (tests inject it).
    public init(
        raft: RaftNode, ledger: LedgerStore, node: String, patience: Duration = .seconds(60), logger: Logger,
        wallClock: @escaping @Sendable () -> UInt64 = WallClock.nanos,
        snapshotEvery: UInt64 = 0, forward: @escaping Forwarder, onApply: @escaping @Sendable () -> Void,
        onMembership: @escaping @Sendable (_ change: LedgerCommand, _ index: UInt64) async -> Void = { _, _ in },
        onRestore: @escaping @Sendable (_ snapshot: RaftSnapshot) async -> Void = { _ in }
    ) throws {
        self.raft = raft
        self.ledger = ledger
        self.node = node
        self.forward = forward
        self.onApply = onApply
        self.onMembership = onMembership
        self.onRestore = onRestore
        self.snapshotEvery = snapshotEvery
        self.logger = logger
        self.patience = patience
        applied = try ledger.appliedIndex()
        // Above every sequence this node reserved before a restart, and above the wall clock in nanoseconds.
        sequencer = try CommandSequencer(ledger: ledger, wallClock: wallClock)
    }

    // MARK: Proposing

    public func propose(_ commands: [LedgerCommand]) async throws -> [ApplyOutcome] {
        guard !commands.isEmpty else { return [] }
        // Every id is under a ceiling already durable in the ledger; when a block runs out, the next one is reserved
        // here, synchronously (no suspension point, so no other proposal can take an id in between).
        let seqs = try commands.map { _ in try sequencer.next() }
        inFlight.formUnion(seqs)
        defer { inFlight.subtract(seqs) }
        let floor = inFlight.min()
        let entries = zip(seqs, commands).map { seq, command in
            LedgerEntry(id: CommandID(node: node, seq: seq), command: command, floor: floor)
        }
        let started = ContinuousClock.now
        let deadline = started + patience
        var lastError: (any Error)?
        while ContinuousClock.now < deadline {
            do {
                let indexes = try await submit(entries)
                if let last = indexes.max() { try await waitApplied(last, deadline: deadline) }
                commitLatency.record(ContinuousClock.now - started)
                return indexes.map { outcomes[$0] ?? .ignored("entry \($0) was not recorded") }
            } catch {
                lastError = error
                logger.debug("proposal retried", metadata: ["error": "\(error)"])
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        throw FarmError(
            .failed,
            "The farm has no reachable leader right now, so the change was not recorded ("
                + (lastError.map { "\($0)" } ?? "timeout") + "); try again.",
            cause: nil)
    }

    /// Proposes through this node if it leads, else through the leader; returns the entries' log indexes.
    private func submit(_ entries: [LedgerEntry]) async throws -> [UInt64] {
        guard let status = await raft.status else { throw RaftError(.notLeader, "Raft is not running yet") }
        if status.role == .leader {
            return try await Self.proposeLocally(entries.map { $0.encoded() }, on: raft)
        }
        guard let leader = status.leader, leader != node else {
            throw RaftError.notLeader(nil)
        }
        return try await forward(leader, entries.map { $0.encoded() })
    }

    /// On the leader: proposes encoded ledger entries (their ids come from inside) and waits for commit.
    static func proposeLocally(_ payloads: [[UInt8]], on raft: RaftNode) async throws -> [UInt64] {
        let commands = try payloads.map { payload in
            let entry = try LedgerEntry(bytes: payload)
            return RaftCommand(
                id: Election.CommandID(origin: entry.id.node, sequence: entry.id.seq), payload: payload)
        }
        // Proposed together so the node batches them into one append and one fsync.
        return try await withThrowingTaskGroup(of: (Int, UInt64).self) { group in
            for (offset, command) in commands.enumerated() {
                group.addTask { (offset, try await raft.propose(command)) }
            }
            var indexes = [UInt64](repeating: 0, count: commands.count)
            for try await (offset, index) in group { indexes[offset] = index }
            return indexes
        }
    }

    /// Leader side of a forwarded proposal.
    public func proposeForwarded(_ payloads: [[UInt8]]) async throws -> [UInt64] {
        try await Self.proposeLocally(payloads, on: raft)
    }

    /// Waits until this node has applied `index`; gives up at `deadline` or when the caller is cancelled (a
    /// node cut off from the farm must still be able to shut down).
    private func waitApplied(_ index: UInt64, deadline: ContinuousClock.Instant) async throws {
        guard applied < index else { return }
        let token = nextWaiter
        nextWaiter += 1
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.park(until: index, token: token) }
            group.addTask {
                try await Task.sleep(until: deadline)
                throw FarmError(.failed, "The change was sent but not seen committed here in time; try again.")
            }
            try await group.next()
            group.cancelAll()
        }
    }

    private func park(until index: UInt64, token: Int) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                if applied >= index {
                    continuation.resume()
                } else {
                    waiters[index, default: [:]][token] = continuation
                }
            }
        } onCancel: {
            Task { await self.unpark(index, token: token) }
        }
    }

    private func unpark(_ index: UInt64, token: Int) {
        waiters[index]?.removeValue(forKey: token)?.resume(throwing: CancellationError())
    }

    // MARK: Applying

    /// Applies committed entries to the ledger as Raft emits them, until the stream ends. Entries that pile up
    /// while a transaction syncs are applied together in the next one.
    func applyCommitted() async {
        let buffer = EntryBuffer()
        let (bell, ring) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let committed = raft.committed
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await item in committed {
                    buffer.append(item)
                    ring.yield()
                }
                ring.finish()
            }
            for await _ in bell {
                let batch = buffer.drain()
                guard !batch.isEmpty else { continue }
                // A write that fails (a full disk for a moment) is retried, in order, until it succeeds or the node
                // stops: committed entries are never skipped, and the loop never dies of a passing error.
                var failures = FailureRun(
                    first: "cannot apply committed entries to the ledger; retrying",
                    again: "still cannot apply committed entries", back: "applying committed entries works again")
                while !Task.isCancelled {
                    do {
                        try await apply(batch)
                        failures.recovered(logger: logger)
                        await compactIfDue()
                        break
                    } catch {
                        failures.failed(error, logger: logger)
                        try? await Task.sleep(for: failures.backoff(minimum: .milliseconds(100), maximum: .seconds(5)))
                    }
                }
            }
        }
    }

    /// Applies what Raft handed over in order: runs of entries, each in one transaction, and snapshots in between.
    /// A batch that fails part way is retried whole: what was applied is skipped the second time.
    private func apply(_ items: [Committed]) async throws {
        var run: [LogEntry] = []
        for item in items {
            switch item {
            case .entry(let entry):
                run.append(entry)
            case .snapshot(let snapshot):
                try await apply(run)
                run = []
                try await restore(snapshot)
            }
        }
        try await apply(run)
    }

    /// A snapshot from the leader: the ledger's state becomes it (one transaction), and whoever waited for an entry it
    /// covers proposes again (the same ids: what was applied is a duplicate now, and says so).
    private func restore(_ snapshot: RaftSnapshot) async throws {
        guard snapshot.lastIndex > applied else { return }
        let ledger = self.ledger
        try await Blocking.run {
            try ledger.restore(snapshot: snapshot.data, index: snapshot.lastIndex, term: snapshot.lastTerm)
        }
        applied = snapshot.lastIndex
        outcomes = [:]
        logger.notice(
            "installed a snapshot of the ledger from the leader",
            metadata: ["raft/index": "\(snapshot.lastIndex)", "raft/bytes": "\(snapshot.data.count)"])
        let ready = waiters.keys.filter { $0 <= applied }
        for index in ready {
            for waiter in (waiters.removeValue(forKey: index) ?? [:]).values {
                waiter.resume(throwing: FarmError(.failed, "entry \(index) arrived inside a snapshot; proposing again"))
            }
        }
        await onRestore(snapshot)
        onApply()
    }

    /// Every `snapshotEvery` applied entries: the ledger's state as of what it applied becomes Raft's snapshot, and
    /// the log before it goes (Raft's and the ledger's). A failure is logged and tried again after the next batch.
    private func compactIfDue() async {
        // Raft's own snapshot decides (not the ledger's mark, which is written after it and may lag it).
        guard snapshotEvery > 0, let raftSnapshot = await raft.status?.snapshotIndex,
            applied >= raftSnapshot + snapshotEvery
        else { return }
        let ledger = self.ledger
        do {
            let (index, data) = try await Blocking.run { try ledger.snapshot() }
            guard let term = try await raft.compact(through: index, data: data) else { return }
            try await Blocking.run { try ledger.compactLog(through: index, term: term) }
            logger.info("compacted the log", metadata: ["raft/index": "\(index)", "raft/bytes": "\(data.count)"])
        } catch {
            logger.warning("cannot compact the log; will try again", metadata: ["error": "\(error)"])
        }
    }

    private func apply(_ entries: [LogEntry]) async throws {
        let rows = entries.filter { $0.index > applied }.map { entry in
            (index: entry.index, term: entry.term, entry: Self.ledgerEntry(for: entry))
        }
        guard !rows.isEmpty else { return }
        let results = try await ledger.applyAsync(rows)
        for (row, outcome) in zip(rows, results) { outcomes[row.index] = outcome }
        applied = rows.last!.index
        // Outcomes are only needed by proposers waiting right now; keep a bounded window.
        if outcomes.count > 20_000 {
            let floor = applied - 10_000
            outcomes = outcomes.filter { $0.key > floor }
        }
        let ready = waiters.keys.filter { $0 <= applied }
        for index in ready {
            for waiter in (waiters.removeValue(forKey: index) ?? [:]).values { waiter.resume() }
        }
        onApply()
        for row in rows {
            switch row.entry.command {
            case .addNode, .removeNode, .farmKey, .revokeNodes: await onMembership(row.entry.command, row.index)
            default: break
            }
        }
    }

    /// Raft's own entries (no-ops, membership) become ledger entries too, so ledger indexes match Raft's.
    static func ledgerEntry(for entry: LogEntry) -> LedgerEntry {
        switch entry.kind {
        case .command(let command):
            if let decoded = try? LedgerEntry(bytes: command.payload) { return decoded }
            return LedgerEntry(id: CommandID(node: "raft", seq: entry.index), command: .noop)
        case .addNode(let id):
            return LedgerEntry(id: CommandID(node: "raft", seq: entry.index), command: .addNode(NodeChange(node: id)))
        case .removeNode(let id):
            return LedgerEntry(
                id: CommandID(node: "raft", seq: entry.index), command: .removeNode(NodeChange(node: id)))
        case .recover(let members):
            return LedgerEntry(
                id: CommandID(node: "raft", seq: entry.index), command: .recoverMembers(MemberSet(members: members)))
        case .addLearner(let id):
            return LedgerEntry(
                id: CommandID(node: "raft", seq: entry.index), command: .addNode(NodeChange(node: id, voter: false)))
        case .promote(let id), .demote(let id):
            let voter = if case .promote = entry.kind { true } else { false }
            return LedgerEntry(
                id: CommandID(node: "raft", seq: entry.index), command: .setVoter(NodeChange(node: id, voter: voter)))
        default:
            return LedgerEntry(id: CommandID(node: "raft", seq: entry.index), command: .noop)
        }
    }

    public func currentTerm() async -> UInt64 { await raft.status?.term ?? 0 }
    public func isLeader() async -> Bool { await raft.status?.role == .leader }
}

/// Committed entries (and snapshots) waiting for the applier.
final class EntryBuffer: Sendable {
    private let entries = Mutex<[Committed]>([])

    func append(_ item: Committed) { entries.withLock { $0.append(item) } }

    func drain() -> [Committed] {
        entries.withLock { pending in
            defer { pending.removeAll(keepingCapacity: true) }
            return pending
        }
    }
}
