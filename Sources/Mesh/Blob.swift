import Foundation

// MARK: Storage protocols

/// Read side of a blob store: what a node can serve to peers. The daemon's store plugs in here.
public protocol BlobSource: Sendable {
    /// Size in bytes of the complete blob, or nil when it is not held.
    func size(_ hash: String) async throws -> UInt64?
    /// Up to `length` bytes from `offset` of a complete blob.
    func read(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8]
}

extension BlobSource {
    public func has(_ hash: String) async -> Bool { ((try? await size(hash)) ?? nil) != nil }
}

/// Write side of a blob store: where a fetch puts chunks. Partial data survives a dropped connection,
/// so a later fetch resumes instead of starting over.
public protocol BlobSink: Sendable {
    /// Bytes of partial data already present (chunks below this are re-verified, not trusted).
    func partialSize(_ hash: String) async throws -> UInt64
    func readPartial(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8]
    func writePartial(_ hash: String, offset: UInt64, bytes: [UInt8]) async throws
    /// Makes the blob complete once a fetch has every chunk. For a legacy address it checks the BLAKE2b-256 of the
    /// whole content against `hash` first (throws and discards the partial data on mismatch); a tree address was
    /// proved chunk by chunk by the fetch (each chunk against its leaf, the leaves against the address), so the
    /// partial data is taken as it is, without a second pass.
    func finalize(_ hash: String, size: UInt64) async throws
}

/// Content addresses, in two formats that both stay valid:
///
/// - **tree** (every blob stored since issue 17): `t1` followed by 64 lowercase hex characters, the root of a
///   hash tree over the blob's 1 MiB chunks (`BlobTree`). A fetch checks each chunk once against its leaf, and the
///   leaves against the root, so no second pass over the whole blob is needed.
/// - **legacy**: 64 lowercase hex characters, BLAKE2b-256 of the whole content (addresses already in ledgers).
public enum BlobAddress {
    public enum Format: Sendable, Equatable {
        case legacy
        case tree
    }

    /// The tag in front of a tree address.
    public static let treePrefix = "t1"

    /// The tree address of `bytes` (the format every new blob gets).
    public static func of(_ bytes: [UInt8]) -> String {
        let hasher = BlobTreeHasher()
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// The legacy address of `bytes`: BLAKE2b-256 of the whole content.
    public static func legacy(_ bytes: [UInt8]) -> String { Sodium.blake2b(bytes).hexString }

    /// The format of an address, or nil when the string is not one.
    public static func format(_ hash: String) -> Format? {
        let utf8 = hash.utf8
        func isHex(_ c: UInt8) -> Bool { (48...57).contains(c) || (97...102).contains(c) }
        if utf8.count == 64 { return utf8.allSatisfy(isHex) ? .legacy : nil }
        guard utf8.count == 66, hash.hasPrefix(treePrefix) else { return nil }
        return utf8.dropFirst(2).allSatisfy(isHex) ? .tree : nil
    }

    /// 64 lowercase hexadecimal characters, or `t1` and 64 of them: the only strings that may name a file in a blob
    /// store.
    public static func isValid(_ hash: String) -> Bool { format(hash) != nil }

    /// The 64 hexadecimal characters of the digest (the whole legacy address; the tree address without its tag).
    public static func hexDigest(_ hash: String) -> Substring {
        format(hash) == .tree ? hash.dropFirst(2) : Substring(hash)
    }

    /// The format and the 32 digest bytes (what travels on the wire).
    public static func digest(_ hash: String) throws(MeshError) -> (format: Format, bytes: [UInt8]) {
        guard let format = format(hash), let raw = [UInt8](hexString: String(hexDigest(hash))), raw.count == 32 else {
            throw MeshError(
                .protocolViolation,
                "'\(hash)' is not a blob address (64 hexadecimal characters, or \(treePrefix) and 64 of them).")
        }
        return (format, raw)
    }

    /// The address string of a digest in a format.
    public static func string(_ format: Format, _ digest: [UInt8]) -> String {
        format == .tree ? treePrefix + digest.hexString : digest.hexString
    }

    /// The two hexadecimal characters that name a blob's folder in a store (the digest's first byte).
    public static func shard(_ hash: String) -> Substring { hexDigest(hash).prefix(2) }
}

/// The tree behind a tree address (BLAKE3's shape, with BLAKE2b-256 from libsodium as the hash).
///
/// The blob is cut into 1 MiB chunks (the last one shorter; an empty blob is one empty chunk).
/// - leaf `i` = BLAKE2b-256(0x00 ‖ u64 i ‖ chunk ‖ u64 chunk length)
/// - parent = BLAKE2b-256(0x01 ‖ left ‖ right); the left subtree of `n` nodes holds the largest power of two
///   below `n` (levels are paired left to right, an odd last node rising unchanged)
/// - root = BLAKE2b-256(0x02 ‖ u64 blob size ‖ top node), the top node being the single leaf of a one-chunk blob
/// Integers are big-endian. The root flag and the size keep a subtree or a truncated blob from passing as a blob.
public enum BlobTree {
    public static let chunkSize = 1 << 20

    /// Chunks (leaves) of a blob of `size` bytes: at least one.
    public static func leafCount(size: UInt64) -> Int {
        max(1, Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize)))
    }

    /// Bytes in chunk `index` of a blob of `size` bytes.
    public static func chunkLength(index: Int, size: UInt64) -> Int {
        let start = UInt64(index) * UInt64(chunkSize)
        return start >= size ? 0 : Int(min(UInt64(chunkSize), size - start))
    }

    public static func leaf(index: Int, chunk: some ContiguousBytes) -> [UInt8] {
        let hasher = Blake2bHasher()
        var header = [UInt8](repeating: 0, count: 9)
        header[0] = 0x00
        put(UInt64(index), into: &header, at: 1)
        hasher.update(header)
        var length = 0
        chunk.withUnsafeBytes { length = $0.count }
        hasher.update(chunk)
        var trailer = [UInt8](repeating: 0, count: 8)
        put(UInt64(length), into: &trailer, at: 0)
        hasher.update(trailer)
        return hasher.finalize()
    }

    public static func parent(_ left: [UInt8], _ right: [UInt8]) -> [UInt8] {
        Sodium.blake2b([0x01] + left + right)
    }

    /// The root over the leaves of a blob of `size` bytes.
    public static func root(leaves: [[UInt8]], size: UInt64) -> [UInt8] {
        precondition(!leaves.isEmpty, "a blob has at least one leaf")
        var level = leaves
        while level.count > 1 {
            var next: [[UInt8]] = []
            next.reserveCapacity((level.count + 1) / 2)
            var i = 0
            while i + 1 < level.count {
                next.append(parent(level[i], level[i + 1]))
                i += 2
            }
            if i < level.count { next.append(level[i]) }
            level = next
        }
        var input = [UInt8](repeating: 0, count: 9)
        input[0] = 0x02
        put(size, into: &input, at: 1)
        return Sodium.blake2b(input + level[0])
    }

    /// Whether `leaves` are the leaves of tree address `root` for a blob of `size` bytes.
    public static func verify(leaves: [[UInt8]], size: UInt64, root: [UInt8]) -> Bool {
        leaves.count == leafCount(size: size) && leaves.allSatisfy { $0.count == 32 }
            && Sodium.equal(Self.root(leaves: leaves, size: size), root)
    }

    static func put(_ value: UInt64, into bytes: inout [UInt8], at offset: Int) {
        for i in 0..<8 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64(i))) }
    }
}

/// Streaming tree address: feed the bytes in any pieces, in order; one pass over them.
public final class BlobTreeHasher {
    private var leaves: [[UInt8]] = []
    private var current = Blake2bHasher()
    private var inChunk = 0
    public private(set) var size: UInt64 = 0

    public init() { startLeaf() }

    private func startLeaf() {
        current = Blake2bHasher()
        var header = [UInt8](repeating: 0, count: 9)
        BlobTree.put(UInt64(leaves.count), into: &header, at: 1)
        current.update(header)
        inChunk = 0
    }

    private func endLeaf() {
        var trailer = [UInt8](repeating: 0, count: 8)
        BlobTree.put(UInt64(inChunk), into: &trailer, at: 0)
        current.update(trailer)
        leaves.append(current.finalize())
    }

    public func update(_ data: some ContiguousBytes) {
        data.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                if inChunk == BlobTree.chunkSize {
                    endLeaf()
                    startLeaf()
                }
                let take = min(BlobTree.chunkSize - inChunk, buffer.count - offset)
                current.update(UnsafeRawBufferPointer(rebasing: buffer[offset..<(offset + take)]))
                inChunk += take
                offset += take
            }
            size += UInt64(buffer.count)
        }
    }

    /// The leaf hashes and the address; the hasher is spent.
    public func finish() -> (address: String, leaves: [[UInt8]]) {
        endLeaf()
        let root = BlobTree.root(leaves: leaves, size: size)
        return (BlobAddress.string(.tree, root), leaves)
    }

    /// The tree address of everything fed; the hasher is spent.
    public func finalize() -> String { finish().address }
}

// MARK: Directory store

/// A simple file-backed store: complete blobs at `root/xx/hash`, partial ones at `root/partial/hash`.
///
/// The layout matches the daemon's blob store, so either can serve the other's files.
public struct DirectoryBlobStore: BlobSource, BlobSink {
    public let root: String

    public init(root: String) throws(MeshError) {
        self.root = root
        do {
            try FileManager.default.createDirectory(atPath: root + "/partial", withIntermediateDirectories: true)
        } catch {
            throw MeshError(.io, "Cannot create the blob directory \(root): \(error.localizedDescription)")
        }
    }

    /// A blob's file; a string that is not a blob address names a file that never exists (so a hostile address
    /// such as `../../x` cannot reach outside the store).
    public func path(_ hash: String) -> String {
        BlobAddress.isValid(hash) ? "\(root)/\(BlobAddress.shard(hash))/\(hash)" : "\(root)/partial/.not-an-address"
    }
    func partialPath(_ hash: String) -> String {
        BlobAddress.isValid(hash) ? "\(root)/partial/\(hash)" : "\(root)/partial/.not-an-address"
    }

    /// Stores bytes directly (used by tests and by whoever produces blobs locally); returns the address (a tree
    /// address unless asked for the legacy one).
    @discardableResult
    public func put(_ bytes: [UInt8], format: BlobAddress.Format = .tree) throws(MeshError) -> String {
        let hash = format == .tree ? BlobAddress.of(bytes) : BlobAddress.legacy(bytes)
        let dest = path(hash)
        do {
            try FileManager.default.createDirectory(
                atPath: (dest as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(bytes).write(to: URL(fileURLWithPath: dest), options: .atomic)
        } catch {
            throw MeshError(.io, "Cannot write blob \(hash): \(error.localizedDescription)")
        }
        return hash
    }

    public func size(_ hash: String) async throws -> UInt64? {
        guard BlobAddress.isValid(hash) else { return nil }
        let attrs = try? FileManager.default.attributesOfItem(atPath: path(hash))
        return (attrs?[.size] as? NSNumber)?.uint64Value
    }

    public func read(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        try Self.pread(path(hash), offset: offset, length: length)
    }

    public func partialSize(_ hash: String) async throws -> UInt64 {
        let attrs = try? FileManager.default.attributesOfItem(atPath: partialPath(hash))
        return (attrs?[.size] as? NSNumber)?.uint64Value ?? 0
    }

    public func readPartial(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        try Self.pread(partialPath(hash), offset: offset, length: length)
    }

    public func writePartial(_ hash: String, offset: UInt64, bytes: [UInt8]) async throws {
        let file = partialPath(hash)
        let fd = open(file, O_WRONLY | O_CREAT, 0o644)
        guard fd >= 0 else { throw MeshError(.io, "Cannot open \(file): \(String(cString: strerror(errno))).") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Foundation.pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        guard written == bytes.count else {
            throw MeshError(.io, "Cannot write \(file): \(String(cString: strerror(errno))).")
        }
    }

    public func finalize(_ hash: String, size: UInt64) async throws {
        let file = partialPath(hash)
        let dest = path(hash)
        // Another fetch of the same blob finished first: its copy stands, this one's partial data goes.
        if FileManager.default.fileExists(atPath: dest) {
            try? FileManager.default.removeItem(atPath: file)
            return
        }
        if size == 0, !FileManager.default.fileExists(atPath: file) {
            _ = FileManager.default.createFile(atPath: file, contents: nil)
        }
        switch BlobAddress.format(hash) {
        case .tree:
            // Every chunk was checked on arrival (or on resume): only the length is looked at here.
            guard (try? await partialSize(hash)).map({ $0 >= size }) ?? false else {
                try? FileManager.default.removeItem(atPath: file)
                throw MeshError(.io, "The fetched blob \(hash.prefix(14))… is shorter than its size; discarded.")
            }
        case .legacy:
            let hasher = Blake2bHasher()
            var offset: UInt64 = 0
            while offset < size {
                let piece = try Self.pread(file, offset: offset, length: Int(min(UInt64(1 << 20), size - offset)))
                guard !piece.isEmpty else { break }
                hasher.update(piece)
                offset += UInt64(piece.count)
            }
            guard offset == size, hasher.finalize().hexString == hash else {
                try? FileManager.default.removeItem(atPath: file)
                throw MeshError(
                    .authentication, "The fetched blob \(hash.prefix(12))… does not match its address; discarded.")
            }
        case nil:
            throw MeshError(.protocolViolation, "'\(hash)' is not a blob address.")
        }
        truncate(file, off_t(size))
        try? FileManager.default.createDirectory(
            atPath: (dest as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        guard rename(file, dest) == 0 else {
            if FileManager.default.fileExists(atPath: dest) { return }  // a concurrent fetch won the race
            throw MeshError(.io, "Cannot move blob \(hash) into place: \(String(cString: strerror(errno))).")
        }
    }

    static func pread(_ file: String, offset: UInt64, length: Int) throws -> [UInt8] {
        let fd = open(file, O_RDONLY)
        guard fd >= 0 else { throw MeshError(.io, "Cannot open \(file): \(String(cString: strerror(errno))).") }
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: length)
        var total = 0
        while total < length {
            let n = out.withUnsafeMutableBytes {
                Foundation.pread(fd, $0.baseAddress! + total, length - total, off_t(offset) + off_t(total))
            }
            if n <= 0 { break }
            total += n
        }
        out.removeLast(length - total)
        return out
    }
}

// MARK: Fetch planning

/// Which chunks of a blob are still missing, and which holders have misbehaved; shared by fetch workers.
actor ChunkQueue {
    private var todo: [Int]
    private var inFlight: Set<Int> = []
    private(set) var done = 0
    let total: Int

    init(missing: [Int], total: Int) {
        todo = missing.reversed()
        self.total = total
        done = total - missing.count
    }

    func take() -> Int? {
        guard let i = todo.popLast() else { return nil }
        inFlight.insert(i)
        return i
    }

    func complete(_ i: Int) {
        inFlight.remove(i)
        done += 1
    }

    func giveBack(_ i: Int) {
        inFlight.remove(i)
        todo.append(i)
    }

    var finished: Bool { done == total }
    var idle: Bool { todo.isEmpty && inFlight.isEmpty }
}
