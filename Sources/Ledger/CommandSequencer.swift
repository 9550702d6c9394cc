import GRDB

extension LedgerStore {
    /// The `ledger_meta` key holding the highest command sequence number this node has reserved.
    static let commandSequenceCeilingKey = "command_seq_ceiling"

    /// Reserves `count` command sequence numbers above both `floor` and every number reserved before in this
    /// database, and returns them. The new ceiling is on disk (`synchronous=FULL`) before this returns, so no
    /// number of the range is ever handed out again, whatever the wall clock does between runs.
    public func reserveCommandSequences(above floor: UInt64, count: UInt64) throws -> ClosedRange<UInt64> {
        precondition(count > 0, "reserve at least one sequence number")
        return try writer.write { db in
            let start = max(try Self.commandSequenceCeiling(db), floor) + 1
            let (end, overflow) = start.addingReportingOverflow(count - 1)
            precondition(!overflow, "command sequence numbers exhausted")
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO ledger_meta (key, value) VALUES (?, ?)").execute(
                arguments: [Self.commandSequenceCeilingKey, Int64(bitPattern: end)])
            return start...end
        }
    }

    /// The highest command sequence number reserved so far (0 for none).
    public func commandSequenceCeiling() throws -> UInt64 {
        try writer.read { db in try Self.commandSequenceCeiling(db) }
    }

    static func commandSequenceCeiling(_ db: Database) throws -> UInt64 {
        let stored = try Int64.fetchOne(
            db, sql: "SELECT value FROM ledger_meta WHERE key = ?", arguments: [commandSequenceCeilingKey])
        return stored.map { UInt64(bitPattern: $0) } ?? 0
    }
}

/// This node's command sequence numbers (the `seq` of `CommandID`): strictly increasing across restarts, even
/// when the wall clock stepped back in between.
///
/// Numbers are handed out from blocks reserved in the node's database (`LedgerStore.reserveCommandSequences`):
/// a block's ceiling is durable before its first number is used, and the next run starts above it. The wall
/// clock (nanoseconds) is a lower bound for every block, so a node whose database was lost but whose identity
/// (hence node id) survived still starts above the numbers it used before, as long as its clock did not also
/// step back.
public struct CommandSequencer: Sendable {
    /// The default block: one reservation (one synced write) per this many numbers.
    public static let defaultBlockSize: UInt64 = 1 << 20

    private let ledger: LedgerStore
    private let blockSize: UInt64
    private let wallClock: @Sendable () -> UInt64
    /// The last number handed out (or the number below the current block).
    private var last: UInt64
    /// The highest number of the current block, durable in the database.
    private var ceiling: UInt64

    /// Reserves the first block at once.
    /// - Parameter wallClock: nanoseconds since 1970 (the daemon passes Mesh's `WallClock.nanos`; tests their own).
    public init(
        ledger: LedgerStore, blockSize: UInt64 = CommandSequencer.defaultBlockSize,
        wallClock: @escaping @Sendable () -> UInt64
    ) throws {
        precondition(blockSize > 0, "the block size must be positive")
        self.ledger = ledger
        self.blockSize = blockSize
        self.wallClock = wallClock
        let block = try ledger.reserveCommandSequences(above: wallClock(), count: blockSize)
        last = block.lowerBound - 1
        ceiling = block.upperBound
    }

    /// The next number; reserves (durably, before returning) a new block when the current one is used up.
    public mutating func next() throws -> UInt64 {
        if last >= ceiling {
            let block = try ledger.reserveCommandSequences(above: max(last, wallClock()), count: blockSize)
            last = block.lowerBound - 1
            ceiling = block.upperBound
        }
        last += 1
        return last
    }
}
