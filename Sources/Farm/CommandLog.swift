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
public actor LocalCommandLog: CommandLog {
    private let ledger: LedgerStore
    private let node: String
    private var seq: UInt64
    private let onApply: @Sendable () -> Void

    public init(ledger: LedgerStore, node: String, onApply: @escaping @Sendable () -> Void) {
        self.ledger = ledger
        self.node = node
        // Microseconds since 2020 as the first sequence number: never reused across restarts of this node.
        seq = UInt64(max(0, (Date().timeIntervalSince1970 - 1_577_836_800) * 1_000_000))
        self.onApply = onApply
    }

    public func propose(_ commands: [LedgerCommand]) async throws -> [ApplyOutcome] {
        guard !commands.isEmpty else { return [] }
        var index = try ledger.appliedIndex()
        let batch = commands.map { command -> (index: UInt64, term: UInt64, entry: LedgerEntry) in
            seq += 1
            index += 1
            return (index, 1, LedgerEntry(id: CommandID(node: node, seq: seq), command: command))
        }
        let outcomes = try ledger.apply(batch)
        onApply()
        return outcomes
    }

    public func currentTerm() -> UInt64 { 1 }
    public func isLeader() -> Bool { true }
}
