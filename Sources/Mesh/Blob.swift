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
    /// Checks the BLAKE2b-256 of the whole content against `hash` and makes the blob complete; throws and
    /// discards the partial data on mismatch.
    func finalize(_ hash: String, size: UInt64) async throws
}

/// Content addresses are 64 lowercase hex characters (BLAKE2b-256).
public enum BlobAddress {
    public static func of(_ bytes: [UInt8]) -> String { Sodium.blake2b(bytes).hexString }

    /// 64 lowercase hexadecimal characters: the only strings that may name a file in a blob store.
    public static func isValid(_ hash: String) -> Bool {
        hash.utf8.count == 64 && hash.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    public static func bytes(_ hash: String) throws(MeshError) -> [UInt8] {
        guard let raw = [UInt8](hexString: hash), raw.count == 32 else {
            throw MeshError(.protocolViolation, "'\(hash)' is not a blob address (64 hexadecimal characters).")
        }
        return raw
    }
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
        BlobAddress.isValid(hash) ? "\(root)/\(hash.prefix(2))/\(hash)" : "\(root)/partial/.not-an-address"
    }
    func partialPath(_ hash: String) -> String { "\(root)/partial/\(hash)" }

    /// Stores bytes directly (used by tests and by whoever produces blobs locally); returns the address.
    @discardableResult
    public func put(_ bytes: [UInt8]) throws(MeshError) -> String {
        let hash = BlobAddress.of(bytes)
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
        guard hash.count == 64, hash.allSatisfy(\.isHexDigit) else { return nil }
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
        truncate(file, off_t(size))
        let dest = path(hash)
        try? FileManager.default.createDirectory(
            atPath: (dest as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        guard rename(file, dest) == 0 else {
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
