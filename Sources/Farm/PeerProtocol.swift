import Foundation
import Mesh

// MARK: Requests between daemons

/// A request one daemon makes of another over the mesh's control channel, in a small binary form (a tag byte, then
/// length-prefixed fields; see docs/protocol.md). Decoded once, on arrival, into one of these cases.
enum PeerRequest: Sendable, Equatable {
    /// Leader: propose these encoded ledger entries (each a `LedgerEntry`) and answer with their log indexes.
    case propose([[UInt8]])
    /// Keep a copy of blob `hash`, fetching it from `from`; answer once it is durable here (a large frame's second
    /// copy).
    case replicate(hash: String, from: String)
    /// Keep these bytes as blob `hash`; answer once they are durable here (file and folder synced): the second copy
    /// of a rendered frame, pushed in the request itself.
    case store(hash: String, bytes: [UInt8])
    /// Leader: remove `node` from the farm's membership (`rexnode leave`).
    case leave(node: String)
    /// Any member: the frame logs this node keeps of `job` (of `frames`; every frame when empty), each frame's newest
    /// attempt only with `lastOnly` (`rexnode log`). Answered with a JSON array of records, not a `PeerAnswer`.
    case frameLogs(job: String, frames: [Int], lastOnly: Bool)

    /// The most frames one `frameLogs` request names.
    static let maxLogFrames = 1000
    /// From a leader of a farm recovered at `epoch` (`rexnode recover`) to a machine whose log is older than that
    /// recovery and that is not a member: its log is stale; it starts over as a new member. `instance` is the run of
    /// that machine whose beacons announced the stale log: a request that reaches a later run (it already started
    /// over, and the request waited for its connection) is ignored by it.
    case stale(epoch: UInt64, instance: UInt64)
    /// From a member to a member that missed a key rotation (its beacons carry an older epoch): the current epoch and
    /// key, sealed to the receiver's identity (`NodeIdentity.seal`); sent over a channel opened with the old key.
    case farmKey(sealed: [UInt8])

    /// The largest blob pushed inline with `store`; larger ones are fetched by the holder (`replicate`).
    static let inlineBlobLimit = 1 << 20

    private enum Tag: UInt8 {
        case propose = 1, replicate = 2, store = 3, leave = 4, frameLogs = 5, stale = 6, farmKey = 7
    }

    func encoded() -> [UInt8] {
        var w = WireWriter()
        switch self {
        case .propose(let payloads):
            w.u8(Tag.propose.rawValue)
            w.u32(UInt32(payloads.count))
            for payload in payloads { w.long(payload) }
        case .replicate(let hash, let from):
            w.u8(Tag.replicate.rawValue)
            w.short(Array(hash.utf8))
            w.short(Array(from.utf8))
        case .store(let hash, let bytes):
            w.u8(Tag.store.rawValue)
            w.short(Array(hash.utf8))
            w.long(bytes)
        case .leave(let node):
            w.u8(Tag.leave.rawValue)
            w.short(Array(node.utf8))
        case .frameLogs(let job, let frames, let lastOnly):
            w.u8(Tag.frameLogs.rawValue)
            w.short(Array(job.utf8))
            w.u32(UInt32(frames.count))
            for frame in frames { w.u64(UInt64(bitPattern: Int64(frame))) }
            w.u8(lastOnly ? 1 : 0)
        case .stale(let epoch, let instance):
            w.u8(Tag.stale.rawValue)
            w.u64(epoch)
            w.u64(instance)
        case .farmKey(let sealed):
            w.u8(Tag.farmKey.rawValue)
            w.short(sealed)
        }
        return w.bytes
    }

    init(bytes: [UInt8]) throws(FarmError) {
        var r = WireReader(bytes)
        let bad = FarmError(.protocolError, "A peer sent a request this node cannot read.")
        guard let raw = r.u8(), let tag = Tag(rawValue: raw) else { throw bad }
        func text() throws(FarmError) -> String {
            guard let field = r.short(), let s = String(validating: field, as: UTF8.self) else { throw bad }
            return s
        }
        switch tag {
        case .propose:
            guard let count = r.u32(), Int(count) <= r.remaining / 4 else { throw bad }
            var payloads: [[UInt8]] = []
            for _ in 0..<count {
                guard let payload = r.long(max: r.remaining) else { throw bad }
                payloads.append(payload)
            }
            self = .propose(payloads)
        case .replicate:
            self = .replicate(hash: try text(), from: try text())
        case .store:
            let hash = try text()
            guard let body = r.long(max: Self.inlineBlobLimit) else { throw bad }
            self = .store(hash: hash, bytes: body)
        case .leave:
            self = .leave(node: try text())
        case .frameLogs:
            let job = try text()
            guard let count = r.u32(), count <= Self.maxLogFrames, Int(count) * 8 < r.remaining else { throw bad }
            let frames = (0..<count).compactMap { _ in r.u64().map { Int(Int64(bitPattern: $0)) } }
            guard let flag = r.u8(), flag <= 1 else { throw bad }
            self = .frameLogs(job: job, frames: frames, lastOnly: flag == 1)
        case .stale:
            guard let epoch = r.u64(), let instance = r.u64() else { throw bad }
            self = .stale(epoch: epoch, instance: instance)
        case .farmKey:
            guard let sealed = r.short() else { throw bad }
            self = .farmKey(sealed: sealed)
        }
        guard r.isAtEnd else { throw bad }
    }
}

/// The answer to a `PeerRequest`: the log indexes of proposed entries, or nothing.
struct PeerAnswer: Sendable, Equatable {
    var indexes: [UInt64] = []

    func encoded() -> [UInt8] {
        var w = WireWriter(capacity: 4 + indexes.count * 8)
        w.u32(UInt32(indexes.count))
        for index in indexes { w.u64(index) }
        return w.bytes
    }

    init(indexes: [UInt64] = []) { self.indexes = indexes }

    init(bytes: [UInt8]) throws(FarmError) {
        var r = WireReader(bytes)
        guard let count = r.u32(), Int(count) * 8 == r.remaining else {
            throw FarmError(.protocolError, "A peer sent an answer this node cannot read.")
        }
        indexes = (0..<count).compactMap { _ in r.u64() }
    }
}

// MARK: What a node announces

/// What a node announces in its beacons, so peers can show it and the leader can schedule on it. JSON with short
/// keys (a beacon has `Beacon.maxStatusBytes` for it); a status that does not fit is shortened, never cut.
struct NodeStatus: Codable, Sendable, Equatable {
    /// This node's part in the farm as its beacons say it.
    enum Role: String, Codable, Sendable {
        case leader, follower, candidate
        /// Not a member yet (a fresh node, or one that left or was removed and came back).
        case joining
        /// Running `rexnode leave`: the leader must not add it back.
        case leaving
    }

    var role: Role
    /// Render slots.
    var slots: Int
    /// Has a Raft log (belongs to a farm); a fresh node with an empty log is `false`.
    var hasLog: Bool
    /// Current task, `job/frame`.
    var task: String?
    /// The farm's recovery epoch as this node's log has it (the term of its latest `recover` entry; absent: 0).
    var epoch: UInt64?
    /// Tags this node carries (`join --tags`); absent: none.
    var tags: [String]?
    /// The devices its slots render on (`CPU`, `OPTIX:0`); absent: CPU.
    var devices: [String]?
    /// Resting outside its schedule until this wall-clock time (ms since 1970): it has no free slot.
    var restingUntilMs: Int64?
    /// The Blender versions this node renders with (`join --blender`, repeatable); absent with the simulated
    /// renderer. The scheduler gives a job only to nodes announcing its version.
    var blender: [String]?
    /// Its disk: nearly full (it takes no work), and megabytes free and used by its blob store.
    var diskFull: Bool?
    var diskFreeMB: Int64?
    var diskUsedMB: Int64?

    enum CodingKeys: String, CodingKey {
        case role = "r"
        case slots = "s"
        case hasLog = "m"
        case task = "t"
        case epoch = "e"
        case tags = "g"
        case devices = "d"
        case restingUntilMs = "w"
        case blender = "b"
        case diskFull = "x"
        case diskFreeMB = "f"
        case diskUsedMB = "u"
    }

    init(role: Role, slots: Int, hasLog: Bool, task: String?, epoch: UInt64? = nil, blender: [String]? = nil) {
        self.blender = blender?.isEmpty == true ? nil : blender
        self.role = role
        self.slots = slots
        self.hasLog = hasLog
        self.task = task
        self.epoch = epoch == 0 ? nil : epoch
    }

    /// What this node can take: its tags, its slots' devices (CPU alone is left out), and when it wakes if it rests.
    func with(tags: [String], devices: [String], restingUntilMs: Int64?) -> NodeStatus {
        var status = self
        status.tags = tags.isEmpty ? nil : tags
        let distinct = Array(Set(devices)).sorted()
        status.devices = distinct.isEmpty || distinct == ["CPU"] ? nil : distinct
        status.restingUntilMs = restingUntilMs
        return status
    }

    /// What this node's disk looks like (absent until first measured).
    func with(disk: DiskState.Reading?) -> NodeStatus {
        var status = self
        guard let disk else { return status }
        status.diskFull = disk.full ? true : nil
        status.diskFreeMB = disk.freeBytes == .max ? nil : disk.freeBytes / 1_000_000
        status.diskUsedMB = disk.usedBytes / 1_000_000
        return status
    }

    /// The beacon's bytes: the whole status, or without its task when that would not fit.
    func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        let whole = Array(try! encoder.encode(self))
        if whole.count <= Beacon.maxStatusBytes { return whole }
        var short = self
        short.task = nil
        let shorter = Array(try! encoder.encode(short))
        if shorter.count <= Beacon.maxStatusBytes { return shorter }
        // Then the disk's figures (whether it is full stays: the scheduler needs it).
        short.diskFreeMB = nil
        short.diskUsedMB = nil
        // Many GPUs: their kinds alone (the scheduler needs tags, slots and rest, not device numbers).
        short.devices = short.devices.map { Array(Set($0.map { String($0.prefix { $0 != ":" }) })).sorted() }
        // Only a node given very many Blenders gets here: it announces the first ones that fit.
        while short.blender.map({ $0.count > 1 }) == true,
            Array(try! encoder.encode(short)).count > Beacon.maxStatusBytes
        {
            short.blender?.removeLast()
        }
        return Array(try! encoder.encode(short))
    }

    init?(bytes: [UInt8]) {
        guard let decoded = try? JSONDecoder().decode(NodeStatus.self, from: Data(bytes)) else { return nil }
        self = decoded
    }
}
