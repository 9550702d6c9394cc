import Foundation
import Ledger

/// How the daemon gets a command into the ledger: propose, and return once it is committed and applied here.
///
/// On one node the log is local; across peers the same protocol is served by Raft, and nothing above changes.
public protocol CommandLog: Sendable {
    /// Commits and applies the commands (in order) and returns what applying each did.
    func propose(_ commands: [LedgerCommand]) async throws -> [ApplyOutcome]
    /// The current term (fences assignments).
    func currentTerm() async -> UInt64
    /// Whether this node decides assignments now.
    func isLeader() async -> Bool
}

/// A farm of one: this node is the leader of term 1 and every proposal commits as soon as it is durable.
///
/// Group commit: proposals that arrive while a commit is syncing go together into the next transaction.
public actor LocalCommandLog: CommandLog {
    private let ledger: LedgerStore
    private let node: String
    private var seq: UInt64
    private let onApply: @Sendable () -> Void
    private var queue: [(ticket: Int, commands: [LedgerCommand])] = []
    private var results: [Int: Result<[ApplyOutcome], any Error>] = [:]
    private var nextTicket = 0
    private var flushing = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    public init(ledger: LedgerStore, node: String, onApply: @escaping @Sendable () -> Void) {
        self.ledger = ledger
        self.node = node
        // Microseconds since 2020 as the first sequence number: never reused across restarts of this node.
        seq = UInt64(max(0, (Date().timeIntervalSince1970 - 1_577_836_800) * 1_000_000))
        self.onApply = onApply
    }

    public func propose(_ commands: [LedgerCommand]) async throws -> [ApplyOutcome] {
        guard !commands.isEmpty else { return [] }
        let ticket = nextTicket
        nextTicket += 1
        queue.append((ticket, commands))
        while true {
            if let result = results.removeValue(forKey: ticket) { return try result.get() }
            if flushing {
                await withCheckedContinuation { waiters.append($0) }
            } else {
                await flush()
            }
        }
    }

    /// Commits everything queued in one transaction, then wakes every waiting proposer.
    private func flush() async {
        flushing = true
        let batch = queue
        queue = []
        do {
            var index = try ledger.appliedIndex()
            var entries: [(index: UInt64, term: UInt64, entry: LedgerEntry)] = []
            for (_, commands) in batch {
                for command in commands {
                    seq += 1
                    index += 1
                    entries.append((index, 1, LedgerEntry(id: CommandID(node: node, seq: seq), command: command)))
                }
            }
            var outcomes = try await ledger.applyAsync(entries)[...]
            for (ticket, commands) in batch {
                results[ticket] = .success(Array(outcomes.prefix(commands.count)))
                outcomes = outcomes.dropFirst(commands.count)
            }
            onApply()
        } catch {
            for (ticket, _) in batch { results[ticket] = .failure(error) }
        }
        flushing = false
        let woken = waiters
        waiters = []
        for waiter in woken { waiter.resume() }
    }

    public func currentTerm() -> UInt64 { 1 }
    public func isLeader() -> Bool { true }
}
