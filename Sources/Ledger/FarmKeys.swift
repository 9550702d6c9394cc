import Foundation
import GRDB

/// A key epoch change (`rexnode rotate-key`, `rexnode revoke`): from this entry on the farm's key is `key`.
///
/// The key travels only inside the Raft log, and the log travels only over members' authenticated, encrypted
/// channels; a revoked node is removed from the membership before this entry is proposed, so it never receives it.
/// `rexnode ledger` shows the epoch and the revoked nodes, never the key.
public struct FarmKeyChange: Sendable, Equatable, Codable {
    public var epoch: UInt32
    /// The new farm key, hex (32 bytes).
    public var key: String
    /// Node ids whose identity keys are denied from now on, for good (empty for a plain rotation).
    public var revoked: [String]

    public init(epoch: UInt32, key: String, revoked: [String] = []) {
        self.epoch = epoch
        self.key = key
        self.revoked = revoked
    }
}

/// The first entry of `rexnode revoke`: the identities are denied for good before they are removed, so no leader can
/// add one back between its removal and the key rotation (a revoked machine may still announce itself as joining).
public struct RevokeNodes: Sendable, Equatable, Codable {
    public var nodes: [String]

    public init(nodes: [String]) { self.nodes = nodes }
}

/// The replicated record of key epochs and revoked identities: every node applies the same entries, so every
/// node knows every epoch's key (to recognise a member that missed a rotation) and every revoked identity.
enum FarmKeyTable {
    static func registerMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("ledger-farm-keys") { db in
            // Key epochs (issue 18): one row per epoch; revoked node ids, denied for good.
            try db.execute(
                sql: """
                    CREATE TABLE farm_keys (epoch INTEGER PRIMARY KEY, key TEXT NOT NULL, log_index INTEGER NOT NULL);
                    CREATE TABLE revoked_nodes (node TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
                    """)
        }
    }

    static func apply(_ c: FarmKeyChange, db: Database, index: UInt64) throws -> ApplyOutcome {
        let newest = try Int64.fetchOne(db.cachedStatement(sql: "SELECT MAX(epoch) FROM farm_keys")) ?? 0
        guard Int64(c.epoch) > newest, c.key.count == 64 else {
            return .ignored("epoch \(c.epoch) is not newer than \(newest), or the key is malformed")
        }
        try db.cachedStatement(sql: "INSERT INTO farm_keys (epoch, key, log_index) VALUES (?, ?, ?)").execute(
            arguments: [Int64(c.epoch), c.key, Int64(index)])
        for node in c.revoked {
            try db.cachedStatement(sql: "INSERT OR IGNORE INTO revoked_nodes (node, epoch) VALUES (?, ?)").execute(
                arguments: [node, Int64(c.epoch)])
        }
        return .applied
    }

    static func apply(_ c: RevokeNodes, db: Database) throws -> ApplyOutcome {
        let epoch = try Int64.fetchOne(db.cachedStatement(sql: "SELECT MAX(epoch) FROM farm_keys")) ?? 0
        for node in c.nodes {
            try db.cachedStatement(sql: "INSERT OR IGNORE INTO revoked_nodes (node, epoch) VALUES (?, ?)").execute(
                arguments: [node, epoch])
        }
        return .applied
    }
}

extension LedgerStore {
    /// Every key epoch the farm switched to (epoch → key, hex), oldest first; empty before any rotation.
    public func farmKeys() throws -> [(epoch: UInt32, key: String)] {
        try writer.read { db in
            try Row.fetchAll(db.cachedStatement(sql: "SELECT epoch, key FROM farm_keys ORDER BY epoch")).map {
                (epoch: UInt32(clamping: $0["epoch"] as Int64), key: $0["key"] as String)
            }
        }
    }

    /// Node ids revoked for good.
    public func revokedNodes() throws -> Set<String> {
        try writer.read { db in Set(try String.fetchAll(db.cachedStatement(sql: "SELECT node FROM revoked_nodes"))) }
    }
}
