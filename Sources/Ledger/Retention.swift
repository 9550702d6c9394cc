import Foundation
import GRDB

/// Retention (issue 17): a node that is not a job's submitter gives up its copies of the job's images once the
/// submitter holds them (the submitter delivers from its own copy) and its keep time has passed. The ledger records
/// it first, so no holders list names a node that no longer has the image; the node deletes its files after.
public struct DropImages: Sendable, Equatable, Codable {
    public var job: String
    public var node: String

    public init(job: String, node: String) {
        self.job = job
        self.node = node
    }
}

enum RetentionTable {
    /// Takes `node` off the holders of every image of `job` (frames and tiles) that the job's submitter also
    /// holds. The submitter's own copies are never dropped this way; an image only `node` holds stays.
    static func apply(_ c: DropImages, proposer: String?, db: Database) throws -> ApplyOutcome {
        // Only a node gives up its own copies.
        if let proposer, proposer != c.node {
            return .ignored("node \(proposer) cannot drop node \(c.node)'s images")
        }
        guard
            let submitter = try String.fetchOne(
                db.cachedStatement(sql: "SELECT submitter FROM jobs WHERE job = ?"), arguments: [c.job])
        else { return .ignored("job \(c.job) is unknown") }
        guard submitter != c.node else { return .ignored("node \(c.node) submitted job \(c.job): it keeps its images") }
        // A revoked submitter's copies cannot be fetched any more: the other holders keep theirs.
        if try Bool.fetchOne(
            db.cachedStatement(sql: "SELECT 1 FROM revoked_nodes WHERE node = ?"), arguments: [submitter]) == true
        {
            return .ignored("the submitter of job \(c.job) is revoked: the other holders keep its images")
        }
        var dropped = 0
        for table in ["frames", "tiles"] {
            let key = table == "frames" ? "frame" : "frame, tile"
            let rows = try Row.fetchAll(
                db, sql: "SELECT rowid, holders FROM \(table) WHERE job = ? AND hash IS NOT NULL ORDER BY \(key)",
                arguments: [c.job])
            for row in rows {
                let text: String = row["holders"]
                let holders = StateMachine.names(text)
                guard holders.contains(c.node), holders.contains(submitter) else { continue }
                let kept = holders.filter { $0 != c.node }.sorted()
                try db.execute(
                    sql: "UPDATE \(table) SET holders = ? WHERE rowid = ?",
                    arguments: [StateMachine.json(kept), row["rowid"] as Int64])
                dropped += 1
            }
        }
        return dropped == 0
            ? .ignored("node \(c.node) holds no image of job \(c.job) that its submitter holds") : .applied
    }
}

extension LedgerStore {
    /// Whether any frame, tile or frame output of the ledger names `hash` with `node` among its holders (frame
    /// outputs follow their frame's holders).
    public func isHeld(_ hash: String, by node: String) throws -> Bool {
        try writer.read { db in
            let holders = try String.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT holders FROM frames WHERE hash = ?
                        UNION ALL SELECT holders FROM tiles WHERE hash = ?
                        UNION ALL SELECT f.holders FROM frame_outputs o JOIN frames f ON f.job = o.job AND f.frame = o.frame
                            WHERE o.hash = ?
                        """), arguments: [hash, hash, hash])
            return holders.contains { text in
                StateMachine.names(text).contains(node)
            }
        }
    }

    /// The image blobs of a job (frames, tiles, frame outputs) that name `node` among their holders while the
    /// submitter holds them too: what `DropImages` would take off `node`.
    public func droppableImages(job: String, node: String) throws -> Int {
        try writer.read { db in
            guard
                let submitter = try String.fetchOne(
                    db.cachedStatement(sql: "SELECT submitter FROM jobs WHERE job = ?"), arguments: [job]),
                submitter != node
            else { return 0 }
            let holders = try String.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT holders FROM frames WHERE job = ? AND hash IS NOT NULL
                        UNION ALL SELECT holders FROM tiles WHERE job = ? AND hash IS NOT NULL
                        """), arguments: [job, job])
            return holders.filter { text in
                let h = StateMachine.names(text)
                return h.contains(node) && h.contains(submitter)
            }.count
        }
    }

    /// Every image blob of a job: frames, tiles and frame outputs.
    public func imageBlobs(job: String) throws -> Set<String> {
        try writer.read { db in
            var all = Set(
                try String.fetchAll(
                    db.cachedStatement(sql: "SELECT hash FROM frames WHERE job = ? AND hash IS NOT NULL"),
                    arguments: [job]))
            all.formUnion(
                try String.fetchAll(
                    db.cachedStatement(sql: "SELECT hash FROM tiles WHERE job = ? AND hash IS NOT NULL"),
                    arguments: [job]))
            all.formUnion(
                try String.fetchAll(
                    db.cachedStatement(sql: "SELECT hash FROM frame_outputs WHERE job = ?"), arguments: [job]))
            return all
        }
    }
}
