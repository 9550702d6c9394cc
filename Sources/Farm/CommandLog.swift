import Foundation
import Ledger

/// How the daemon gets a command into the ledger: propose, and return once it is committed and applied here.
///
/// `RaftCommandLog` serves it: a farm of one is a Raft group of one member.
public protocol CommandLog: Sendable {
    /// Commits and applies the commands (in order) and returns what applying each did.
    func propose(_ commands: [LedgerCommand]) async throws -> [ApplyOutcome]
    /// The current term (fences assignments).
    func currentTerm() async -> UInt64
    /// Whether this node decides assignments now.
    func isLeader() async -> Bool
}

