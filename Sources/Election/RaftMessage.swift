// MARK: - Messages

/// The Raft RPCs as plain values; the Mesh layer carries their `encode()` bytes as an opaque payload.
///
/// The sender's id is not in the message: the authenticated transport supplies it.
public enum RaftMessage: Hashable, Sendable {
    case appendEntries(AppendEntries)
    case appendResponse(AppendResponse)
    case requestVote(VoteRequest)
    /// A pre-vote asks "would you vote for me at `term`?" without anyone changing state.
    case preVote(VoteRequest)
    case voteResponse(VoteResponse)
    /// One chunk of the leader's snapshot, for a member whose next entry was compacted away (Raft §7).
    case installSnapshot(InstallSnapshot)

    /// The term the message was sent in.
    public var term: Term {
        switch self {
        case .appendEntries(let m): return m.term
        case .appendResponse(let m): return m.term
        case .requestVote(let m), .preVote(let m): return m.term
        case .voteResponse(let m): return m.term
        case .installSnapshot(let m): return m.term
        }
    }
}

/// One chunk of a snapshot: bytes `offset ..< offset + data.count` of `total`. The follower assembles the chunks in
/// order and installs the snapshot with the last one; it answers that one (only) with an `AppendResponse` whose
/// index is `lastIndex`. A chunk that does not continue what it holds is dropped: the leader sends again when the
/// follower's next answer shows it still lacks the snapshot.
public struct InstallSnapshot: Hashable, Sendable {
    public var term: Term
    public var leaderID: NodeID
    /// The snapshot's description (the same in every chunk); its `data` is this chunk's bytes.
    public var snapshot: RaftSnapshot
    public var offset: UInt64
    public var total: UInt64

    public init(term: Term, leaderID: NodeID, snapshot: RaftSnapshot, offset: UInt64, total: UInt64) {
        self.term = term
        self.leaderID = leaderID
        self.snapshot = snapshot
        self.offset = offset
        self.total = total
    }

    /// Whether this chunk ends the snapshot.
    public var isLast: Bool { offset + UInt64(snapshot.data.count) == total }

    /// A whole snapshot as the chunks a leader sends, each with at most `chunkBytes` of data (one empty chunk for
    /// empty data). Lazy: each chunk's bytes are copied only when it is reached, so a sender that encodes and sends
    /// one before taking the next holds one chunk at a time besides the snapshot.
    public static func chunks(
        of snapshot: RaftSnapshot, term: Term, leaderID: NodeID, chunkBytes: Int
    ) -> some Sequence<Self> {
        let total = snapshot.data.count
        let size = max(1, chunkBytes)
        let header = snapshot.header
        return stride(from: 0, to: max(total, 1), by: size).lazy.map { offset in
            var part = header
            part.data = Array(snapshot.data[offset..<min(total, offset + size)])
            return Self(term: term, leaderID: leaderID, snapshot: part, offset: UInt64(offset), total: UInt64(total))
        }
    }
}

/// Replicates entries after (`prevLogIndex`, `prevLogTerm`) and tells the follower the commit index.
public struct AppendEntries: Hashable, Sendable {
    public var term: Term
    public var leaderID: NodeID
    public var prevLogIndex: LogIndex
    public var prevLogTerm: Term
    public var leaderCommit: LogIndex
    /// Consecutive entries starting at `prevLogIndex + 1`.
    public var entries: [LogEntry]

    public init(
        term: Term, leaderID: NodeID, prevLogIndex: LogIndex, prevLogTerm: Term, leaderCommit: LogIndex,
        entries: [LogEntry]
    ) {
        self.term = term
        self.leaderID = leaderID
        self.prevLogIndex = prevLogIndex
        self.prevLogTerm = prevLogTerm
        self.leaderCommit = leaderCommit
        self.entries = entries
    }
}

/// A follower's answer: on success the index up to which its log now matches the leader's; on failure a
/// hint where the leader should retry from, so a lagging follower is repaired in few round trips.
public struct AppendResponse: Hashable, Sendable {
    public var term: Term
    public var success: Bool
    /// Success: last index known to match. Failure: the index the leader should try next.
    public var index: LogIndex

    public init(term: Term, success: Bool, index: LogIndex) {
        self.term = term
        self.success = success
        self.index = index
    }
}

/// A (pre-)vote request; `lastLogIndex`/`lastLogTerm` let the voter apply the up-to-date check.
public struct VoteRequest: Hashable, Sendable {
    public var term: Term
    public var candidateID: NodeID
    public var lastLogIndex: LogIndex
    public var lastLogTerm: Term

    public init(term: Term, candidateID: NodeID, lastLogIndex: LogIndex, lastLogTerm: Term) {
        self.term = term
        self.candidateID = candidateID
        self.lastLogIndex = lastLogIndex
        self.lastLogTerm = lastLogTerm
    }
}

/// The answer to a vote or pre-vote request.
public struct VoteResponse: Hashable, Sendable {
    public var term: Term
    public var granted: Bool
    public var preVote: Bool

    public init(term: Term, granted: Bool, preVote: Bool) {
        self.term = term
        self.granted = granted
        self.preVote = preVote
    }
}

// MARK: - Codec

/// Why bytes could not be decoded; the caller drops the message (Raft tolerates loss).
public struct RaftCodecError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public var offset: Int

    public init(_ message: String, offset: Int) {
        self.message = message
        self.offset = offset
    }

    public var description: String { "raft codec: \(message) at byte \(offset)" }
}

/// Limits that keep a hostile or corrupted message from making the decoder allocate without bound.
public enum RaftCodecLimits {
    public static let version: UInt8 = 1
    public static let maxNodeIDBytes = 255
    public static let maxPayloadBytes = 16 << 20
    public static let maxEntries = 65_536
    /// Members listed in one `recover` entry.
    public static let maxMembers = 1024
}

extension RaftMessage {
    enum Tag: UInt8 {
        case appendEntries = 1
        case appendResponse = 2
        case requestVote = 3
        case preVote = 4
        case voteResponse = 5
        case installSnapshot = 6
    }

    /// Compact binary form: version byte, tag byte, then LEB128 varints, length-prefixed strings and blobs.
    /// The layout is documented byte by byte in docs/raft.md.
    public func encode() -> [UInt8] {
        var w = ByteWriter()
        w.byte(RaftCodecLimits.version)
        switch self {
        case .appendEntries(let m):
            w.byte(Tag.appendEntries.rawValue)
            w.varint(m.term)
            w.string(m.leaderID)
            w.varint(m.prevLogIndex)
            w.varint(m.prevLogTerm)
            w.varint(m.leaderCommit)
            w.varint(UInt64(m.entries.count))
            for entry in m.entries {
                w.varint(entry.term)
                w.entryKind(entry.kind)
            }
        case .appendResponse(let m):
            w.byte(Tag.appendResponse.rawValue)
            w.varint(m.term)
            w.byte(m.success ? 1 : 0)
            w.varint(m.index)
        case .requestVote(let m), .preVote(let m):
            if case .preVote = self {
                w.byte(Tag.preVote.rawValue)
            } else {
                w.byte(Tag.requestVote.rawValue)
            }
            w.varint(m.term)
            w.string(m.candidateID)
            w.varint(m.lastLogIndex)
            w.varint(m.lastLogTerm)
        case .voteResponse(let m):
            w.byte(Tag.voteResponse.rawValue)
            w.varint(m.term)
            w.byte((m.granted ? 1 : 0) | (m.preVote ? 2 : 0))
        case .installSnapshot(let m):
            w.byte(Tag.installSnapshot.rawValue)
            w.varint(m.term)
            w.string(m.leaderID)
            w.snapshotHeader(m.snapshot)
            w.varint(m.offset)
            w.varint(m.total)
            w.blob(m.snapshot.data)
        }
        return w.bytes
    }

    /// Decodes `encode()` output; throws on unknown versions or tags, truncation, overlong varints,
    /// oversized lengths, invalid UTF-8, impossible values and trailing bytes — never traps.
    public init(bytes: [UInt8]) throws {
        var r = ByteReader(bytes)
        let version = try r.byte()
        guard version == RaftCodecLimits.version else {
            throw RaftCodecError("unsupported version \(version)", offset: 0)
        }
        let rawTag = try r.byte()
        guard let tag = Tag(rawValue: rawTag) else { throw RaftCodecError("unknown message tag \(rawTag)", offset: 1) }
        switch tag {
        case .appendEntries:
            let term = try r.varint()
            let leader = try r.string()
            let prevIndex = try r.varint()
            let prevTerm = try r.varint()
            let commit = try r.varint()
            let count = try r.varint()
            guard count <= UInt64(RaftCodecLimits.maxEntries), count <= UInt64(r.remaining) else {
                throw RaftCodecError("entry count \(count) too large", offset: r.offset)
            }
            guard prevIndex <= UInt64.max - count else {
                throw RaftCodecError("entry index overflow", offset: r.offset)
            }
            var entries: [LogEntry] = []
            entries.reserveCapacity(Int(count))
            for position in 0..<count {
                let entryTerm = try r.varint()
                let kind = try r.entryKind()
                entries.append(LogEntry(term: entryTerm, index: prevIndex + position + 1, kind: kind))
            }
            self = .appendEntries(
                AppendEntries(
                    term: term, leaderID: leader, prevLogIndex: prevIndex, prevLogTerm: prevTerm,
                    leaderCommit: commit, entries: entries))
        case .appendResponse:
            let term = try r.varint()
            let success = try r.bool()
            let index = try r.varint()
            self = .appendResponse(AppendResponse(term: term, success: success, index: index))
        case .requestVote, .preVote:
            let request = VoteRequest(
                term: try r.varint(), candidateID: try r.string(), lastLogIndex: try r.varint(),
                lastLogTerm: try r.varint())
            self = tag == .preVote ? .preVote(request) : .requestVote(request)
        case .voteResponse:
            let term = try r.varint()
            let flags = try r.byte()
            guard flags & ~3 == 0 else { throw RaftCodecError("bad vote flags \(flags)", offset: r.offset - 1) }
            self = .voteResponse(VoteResponse(term: term, granted: flags & 1 != 0, preVote: flags & 2 != 0))
        case .installSnapshot:
            let term = try r.varint()
            let leader = try r.string()
            var snapshot = try r.snapshotHeader()
            let offset = try r.varint()
            let total = try r.varint()
            snapshot.data = try r.blob(limit: RaftCodecLimits.maxPayloadBytes)
            guard offset <= total, UInt64(snapshot.data.count) <= total - offset else {
                throw RaftCodecError("snapshot chunk past its total", offset: r.offset)
            }
            self = .installSnapshot(
                InstallSnapshot(term: term, leaderID: leader, snapshot: snapshot, offset: offset, total: total))
        }
        guard r.remaining == 0 else { throw RaftCodecError("\(r.remaining) trailing bytes", offset: r.offset) }
    }
}

// MARK: - Entry kind codec (shared with storage)

extension EntryKind {
    /// The entry body as an opaque blob: what storage keeps in its `payload` column.
    public func encode() -> [UInt8] {
        var w = ByteWriter()
        w.entryKind(self)
        return w.bytes
    }

    /// Decodes `encode()` output; throws on garbage.
    public init(bytes: [UInt8]) throws {
        var r = ByteReader(bytes)
        self = try r.entryKind()
        guard r.remaining == 0 else { throw RaftCodecError("\(r.remaining) trailing bytes", offset: r.offset) }
    }
}

extension RaftSnapshot {
    /// Everything but `data`, as an opaque blob: what storage keeps beside the data.
    public func encodedHeader() -> [UInt8] {
        var w = ByteWriter()
        w.snapshotHeader(self)
        return w.bytes
    }

    /// Decodes `encodedHeader()` output and attaches `data`; throws on garbage.
    public init(header: [UInt8], data: [UInt8]) throws {
        var r = ByteReader(header)
        self = try r.snapshotHeader()
        guard r.remaining == 0 else { throw RaftCodecError("\(r.remaining) trailing bytes", offset: r.offset) }
        self.data = data
    }
}

/// Entry kind tags: 0 noop, 1 command (origin, sequence, payload), 2 add node, 3 remove node, 4 recover, 5 add
/// learner, 6 promote, 7 demote.
package struct ByteWriter {
    package var bytes: [UInt8] = []

    package init(capacity: Int = 0) {
        bytes.reserveCapacity(capacity)
    }

    package mutating func byte(_ value: UInt8) {
        bytes.append(value)
    }

    package mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    package mutating func blob<Bytes: Collection<UInt8>>(_ value: Bytes) {
        varint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    package mutating func string(_ value: String) {
        blob(Array(value.utf8))
    }

    mutating func nodeList(_ nodes: [NodeID]) {
        varint(UInt64(nodes.count))
        for node in nodes { string(node) }
    }

    /// Last index and term, members, voters, recovery epoch (the data travels on its own).
    mutating func snapshotHeader(_ snapshot: RaftSnapshot) {
        varint(snapshot.lastIndex)
        varint(snapshot.lastTerm)
        nodeList(snapshot.members)
        nodeList(snapshot.voters)
        varint(snapshot.recoveryEpoch)
    }

    mutating func entryKind(_ kind: EntryKind) {
        switch kind {
        case .noop:
            byte(0)
        case .command(let command):
            byte(1)
            string(command.id.origin)
            varint(command.id.sequence)
            blob(command.payload)
        case .addNode(let id):
            byte(2)
            string(id)
        case .removeNode(let id):
            byte(3)
            string(id)
        case .recover(let members):
            byte(4)
            nodeList(members)
        case .addLearner(let id):
            byte(5)
            string(id)
        case .promote(let id):
            byte(6)
            string(id)
        case .demote(let id):
            byte(7)
            string(id)
        }
    }
}

package struct ByteReader {
    let bytes: [UInt8]
    package var offset = 0

    package init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    package var remaining: Int { bytes.count - offset }

    package mutating func byte() throws -> UInt8 {
        guard offset < bytes.count else { throw RaftCodecError("truncated", offset: offset) }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func bool() throws -> Bool {
        let value = try byte()
        guard value <= 1 else { throw RaftCodecError("bad bool \(value)", offset: offset - 1) }
        return value == 1
    }

    package mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        let start = offset
        while true {
            let b = try byte()
            if shift == 63 && b > 1 { throw RaftCodecError("varint overflow", offset: start) }
            result |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 { throw RaftCodecError("overlong varint", offset: start) }
                return result
            }
            shift += 7
            if shift > 63 { throw RaftCodecError("varint overflow", offset: start) }
        }
    }

    package mutating func blob(limit: Int) throws -> [UInt8] {
        let length = try varint()
        guard length <= UInt64(limit) else { throw RaftCodecError("length \(length) over limit", offset: offset) }
        guard length <= UInt64(remaining) else { throw RaftCodecError("truncated blob", offset: offset) }
        let end = offset + Int(length)
        defer { offset = end }
        return Array(bytes[offset..<end])
    }

    package mutating func string() throws -> String {
        let raw = try blob(limit: RaftCodecLimits.maxNodeIDBytes)
        guard let value = String(validating: raw, as: UTF8.self) else {
            throw RaftCodecError("invalid UTF-8", offset: offset)
        }
        return value
    }

    mutating func nodeList(minimum: UInt64) throws -> [NodeID] {
        let count = try varint()
        guard count >= minimum, count <= UInt64(RaftCodecLimits.maxMembers), count <= UInt64(remaining) else {
            throw RaftCodecError("bad member count \(count)", offset: offset)
        }
        return try (0..<count).map { _ in try string() }
    }

    mutating func snapshotHeader() throws -> RaftSnapshot {
        let lastIndex = try varint()
        let lastTerm = try varint()
        let members = try nodeList(minimum: 0)
        let voters = try nodeList(minimum: 0)
        guard Set(voters).isSubset(of: Set(members)) else {
            throw RaftCodecError("snapshot voters that are not members", offset: offset)
        }
        return RaftSnapshot(
            lastIndex: lastIndex, lastTerm: lastTerm, members: members, voters: voters, recoveryEpoch: try varint(),
            data: [])
    }

    mutating func entryKind() throws -> EntryKind {
        let tag = try byte()
        switch tag {
        case 0:
            return .noop
        case 1:
            let origin = try string()
            let sequence = try varint()
            let payload = try blob(limit: RaftCodecLimits.maxPayloadBytes)
            return .command(RaftCommand(id: CommandID(origin: origin, sequence: sequence), payload: payload))
        case 2:
            return .addNode(try string())
        case 3:
            return .removeNode(try string())
        case 4:
            return .recover(members: try nodeList(minimum: 1))
        case 5:
            return .addLearner(try string())
        case 6:
            return .promote(try string())
        case 7:
            return .demote(try string())
        default:
            throw RaftCodecError("unknown entry kind \(tag)", offset: offset - 1)
        }
    }
}
