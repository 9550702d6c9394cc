/// Everything two peers say to each other once the secure channel is up.
///
/// Versioned and typed so an old node rejects what it does not understand instead of misreading it;
/// `docs/protocol.md` documents each layout byte by byte.
public enum MeshMessage: Sendable, Equatable {
    case ping(UInt64)
    case pong(UInt64)
    /// An opaque Raft message: the mesh never looks inside.
    case raft([UInt8])
    /// An opaque farm request; `id` correlates the response.
    case controlRequest(id: UInt64, payload: [UInt8])
    /// The answer to `controlRequest` with the same id: bytes, or an error sentence.
    case controlResponse(id: UInt64, result: ControlResult)
    /// Does the peer hold this blob, and what are its chunk hashes?
    case blobQuery(id: UInt64, hash: [UInt8])
    case blobInfo(id: UInt64, info: BlobInfo?)
    case blobRead(id: UInt64, hash: [UInt8], offset: UInt64, length: UInt32)
    case blobData(id: UInt64, offset: UInt64, data: [UInt8])
    case blobError(id: UInt64, message: String)
    /// The same three for a tree address (`BlobTree`): the query names the root, the answer carries the leaf hashes
    /// (checked against the root before any chunk is asked for), a read is answered with `blobData` or `blobError`.
    case treeQuery(id: UInt64, root: [UInt8])
    case treeInfo(id: UInt64, info: BlobInfo?)
    case treeRead(id: UInt64, root: [UInt8], offset: UInt64, length: UInt32)

    /// Result of a control request, kept as a value so it crosses the wire as it is.
    public enum ControlResult: Sendable, Equatable {
        case success([UInt8])
        case failure(String)
    }

    /// Size and chunk hashes of a blob, so each 1 MiB chunk can be verified on arrival (for a tree address, the
    /// hash is the root and the chunk hashes its leaves).
    public struct BlobInfo: Sendable, Equatable {
        public var hash: [UInt8]
        public var size: UInt64
        public var chunkSize: UInt32
        public var chunkHashes: [[UInt8]]

        public init(hash: [UInt8], size: UInt64, chunkSize: UInt32, chunkHashes: [[UInt8]]) {
            self.hash = hash
            self.size = size
            self.chunkSize = chunkSize
            self.chunkHashes = chunkHashes
        }
    }

    /// Request ids of messages that answer an earlier request (nil for the rest).
    var responseID: UInt64? {
        switch self {
        case .controlResponse(let id, _), .blobInfo(let id, _), .blobData(let id, _, _), .blobError(let id, _),
            .treeInfo(let id, _):
            id
        default: nil
        }
    }
}

/// Encodes and decodes `MeshMessage`: version byte, type byte, then the type's fields (big-endian).
public enum MessageCodec {
    public static let version: UInt8 = 1
    /// Chunks larger than this are never requested or served.
    public static let maxChunkBytes = 1 << 20
    /// Limit on the number of chunk hashes in one `blobInfo` (a 64 GiB blob at 1 MiB chunks).
    public static let maxChunkHashes = 65_536

    enum Tag: UInt8 {
        case ping = 0x01, pong = 0x02, raft = 0x10, controlRequest = 0x20, controlResponse = 0x21
        case blobQuery = 0x30, blobInfo = 0x31, blobRead = 0x32, blobData = 0x33, blobError = 0x34
        case treeQuery = 0x35, treeInfo = 0x36, treeRead = 0x37
    }

    public static func encode(_ message: MeshMessage) -> [UInt8] {
        var w = WireWriter(capacity: 64)
        w.u8(version)
        switch message {
        case .ping(let n):
            w.u8(Tag.ping.rawValue)
            w.u64(n)
        case .pong(let n):
            w.u8(Tag.pong.rawValue)
            w.u64(n)
        case .raft(let payload):
            w.bytes.reserveCapacity(payload.count + 8)
            w.u8(Tag.raft.rawValue)
            w.long(payload)
        case .controlRequest(let id, let payload):
            w.bytes.reserveCapacity(payload.count + 16)
            w.u8(Tag.controlRequest.rawValue)
            w.u64(id)
            w.long(payload)
        case .controlResponse(let id, let result):
            w.u8(Tag.controlResponse.rawValue)
            w.u64(id)
            switch result {
            case .success(let bytes):
                w.u8(0)
                w.long(bytes)
            case .failure(let text):
                w.u8(1)
                w.long(Array(text.utf8))
            }
        case .blobQuery(let id, let hash):
            w.u8(Tag.blobQuery.rawValue)
            w.u64(id)
            w.raw(hash)
        case .blobInfo(let id, let info):
            w.u8(Tag.blobInfo.rawValue)
            w.u64(id)
            if let info {
                w.u8(1)
                w.raw(info.hash)
                w.u64(info.size)
                w.u32(info.chunkSize)
                w.u32(UInt32(info.chunkHashes.count))
                for h in info.chunkHashes { w.raw(h) }
            } else {
                w.u8(0)
            }
        case .blobRead(let id, let hash, let offset, let length):
            w.u8(Tag.blobRead.rawValue)
            w.u64(id)
            w.raw(hash)
            w.u64(offset)
            w.u32(length)
        case .blobData(let id, let offset, let data):
            w.bytes.reserveCapacity(data.count + 32)
            w.u8(Tag.blobData.rawValue)
            w.u64(id)
            w.u64(offset)
            w.long(data)
        case .blobError(let id, let message):
            w.u8(Tag.blobError.rawValue)
            w.u64(id)
            w.long(Array(message.utf8.prefix(1024)))
        case .treeQuery(let id, let root):
            w.u8(Tag.treeQuery.rawValue)
            w.u64(id)
            w.raw(root)
        case .treeInfo(let id, let info):
            w.bytes.reserveCapacity(32 + (info?.chunkHashes.count ?? 0) * 32)
            w.u8(Tag.treeInfo.rawValue)
            w.u64(id)
            if let info {
                w.u8(1)
                w.raw(info.hash)
                w.u64(info.size)
                w.u32(UInt32(info.chunkHashes.count))
                for h in info.chunkHashes { w.raw(h) }
            } else {
                w.u8(0)
            }
        case .treeRead(let id, let root, let offset, let length):
            w.u8(Tag.treeRead.rawValue)
            w.u64(id)
            w.raw(root)
            w.u64(offset)
            w.u32(length)
        }
        return w.bytes
    }

    /// Decodes one message; throws on an unknown version or type, a bad length, or trailing bytes.
    public static func decode(_ bytes: [UInt8], maxPayload: Int = 16 << 20) throws(MeshError) -> MeshMessage {
        var r = WireReader(bytes)
        guard let v = r.u8(), let t = r.u8() else { throw MeshError(.protocolViolation, "A message is too short.") }
        guard v == version else {
            throw MeshError(.protocolViolation, "A peer speaks message version \(v); this node speaks \(version).")
        }
        guard let tag = Tag(rawValue: t) else {
            throw MeshError(.protocolViolation, "A peer sent an unknown message type \(t).")
        }
        let message: MeshMessage?
        switch tag {
        case .ping: message = r.u64().map { .ping($0) }
        case .pong: message = r.u64().map { .pong($0) }
        case .raft: message = r.long(max: maxPayload).map { .raft($0) }
        case .controlRequest:
            if let id = r.u64(), let p = r.long(max: maxPayload) {
                message = .controlRequest(id: id, payload: p)
            } else {
                message = nil
            }
        case .controlResponse:
            if let id = r.u64(), let ok = r.u8(), ok <= 1, let p = r.long(max: maxPayload) {
                message = .controlResponse(
                    id: id, result: ok == 0 ? .success(p) : .failure(String(decoding: p, as: UTF8.self)))
            } else {
                message = nil
            }
        case .blobQuery:
            if let id = r.u64(), let h = r.raw(32) { message = .blobQuery(id: id, hash: h) } else { message = nil }
        case .blobInfo:
            message = decodeBlobInfo(&r)
        case .blobRead:
            if let id = r.u64(), let h = r.raw(32), let off = r.u64(), let len = r.u32(), len <= maxChunkBytes {
                message = .blobRead(id: id, hash: h, offset: off, length: len)
            } else {
                message = nil
            }
        case .blobData:
            if let id = r.u64(), let off = r.u64(), let d = r.long(max: maxChunkBytes) {
                message = .blobData(id: id, offset: off, data: d)
            } else {
                message = nil
            }
        case .blobError:
            if let id = r.u64(), let m = r.long(max: 1024) {
                message = .blobError(id: id, message: String(decoding: m, as: UTF8.self))
            } else {
                message = nil
            }
        case .treeQuery:
            if let id = r.u64(), let h = r.raw(32) { message = .treeQuery(id: id, root: h) } else { message = nil }
        case .treeInfo:
            message = decodeTreeInfo(&r)
        case .treeRead:
            if let id = r.u64(), let h = r.raw(32), let off = r.u64(), let len = r.u32(), len <= maxChunkBytes {
                message = .treeRead(id: id, root: h, offset: off, length: len)
            } else {
                message = nil
            }
        }
        guard let message, r.isAtEnd else {
            throw MeshError(.protocolViolation, "A peer sent a malformed message of type \(t).")
        }
        return message
    }

    private static func decodeBlobInfo(_ r: inout WireReader) -> MeshMessage? {
        guard let id = r.u64(), let found = r.u8() else { return nil }
        if found == 0 { return .blobInfo(id: id, info: nil) }
        guard found == 1, let hash = r.raw(32), let size = r.u64(), let chunkSize = r.u32(),
            chunkSize > 0, chunkSize <= maxChunkBytes, let count = r.u32(), count <= maxChunkHashes,
            r.remaining == Int(count) * 32,
            UInt64(count) == size / UInt64(chunkSize) + (size % UInt64(chunkSize) == 0 ? 0 : 1)
        else { return nil }
        var hashes: [[UInt8]] = []
        hashes.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let h = r.raw(32) else { return nil }
            hashes.append(h)
        }
        return .blobInfo(id: id, info: .init(hash: hash, size: size, chunkSize: chunkSize, chunkHashes: hashes))
    }
}

extension MessageCodec {
    /// `treeInfo`: the chunk size is the tree's (1 MiB), so only the leaf count travels; it must be the blob's.
    fileprivate static func decodeTreeInfo(_ r: inout WireReader) -> MeshMessage? {
        guard let id = r.u64(), let found = r.u8() else { return nil }
        if found == 0 { return .treeInfo(id: id, info: nil) }
        guard found == 1, let root = r.raw(32), let size = r.u64(), let count = r.u32(), count <= maxChunkHashes,
            size <= UInt64(maxChunkHashes) * UInt64(BlobTree.chunkSize), Int(count) == BlobTree.leafCount(size: size),
            r.remaining == Int(count) * 32
        else { return nil }
        var leaves: [[UInt8]] = []
        leaves.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let h = r.raw(32) else { return nil }
            leaves.append(h)
        }
        return .treeInfo(
            id: id, info: .init(hash: root, size: size, chunkSize: UInt32(BlobTree.chunkSize), chunkHashes: leaves))
    }
}

/// The 4-byte big-endian length prefix in front of every frame on a peer connection.
public enum Framing {
    public static let prefixBytes = 4

    /// What the bytes at the front of the buffer are: not enough yet, a whole frame, or a refused length.
    public enum Parse: Equatable {
        case needMore
        case frame(length: Int)
        case tooLarge(length: UInt32)
    }

    /// Looks at the start of the unread bytes; never reads more than the prefix.
    public static func parse(prefix bytes: some Collection<UInt8>, available: Int, maxFrame: Int) -> Parse {
        guard bytes.count >= prefixBytes else { return .needMore }
        var length: UInt32 = 0
        for b in bytes.prefix(prefixBytes) { length = length << 8 | UInt32(b) }
        guard Int(length) <= maxFrame else { return .tooLarge(length: length) }
        return available >= prefixBytes + Int(length) ? .frame(length: Int(length)) : .needMore
    }
}
