import Foundation
import Mesh

/// Content-addressed files on this node: `DATA/blobs/ab/t1abcdef…` where the name is the tree address of the bytes
/// (`BlobAddress`; blobs stored before issue 17 keep their legacy BLAKE2b-256 names, `DATA/blobs/ab/abcdef…`).
///
/// Writes go to a temporary file and are renamed into place, so a blob is either whole or absent after a crash.
public struct BlobStore: Sendable {
    public let root: String
    /// The same files as the mesh sees them: served to peers, and where fetches from peers land.
    public let directory: DirectoryBlobStore

    public init(root: String) throws {
        self.root = root
        directory = try DirectoryBlobStore(root: root)
        try FileManager.default.createDirectory(atPath: root + "/tmp", withIntermediateDirectories: true)
    }

    public func path(for hash: String) -> String {
        directory.path(hash)
    }

    public func has(_ hash: String) -> Bool {
        BlobAddress.isValid(hash) && FileManager.default.fileExists(atPath: path(for: hash))
    }

    /// Copies the file at `source` into the store and returns its content address and size.
    ///
    /// With `sync: false` the caller makes it durable later (see `GroupSync`), before anything refers to it.
    public func put(fileAt source: String, sync: Bool = true) throws -> (hash: String, size: Int64) {
        let stored = try store(fileAt: source, sync: sync)
        return (stored.hash, stored.size)
    }

    /// `put`, also saying whether the store lacked the blob (`new`); a blob already there is left as it was.
    public func store(fileAt source: String, sync: Bool = true) throws -> (hash: String, size: Int64, new: Bool) {
        guard let input = FileHandle(forReadingAtPath: source) else {
            throw FarmError(.io, "Cannot read \(source).")
        }
        defer { try? input.close() }
        let tmp = "\(root)/tmp/\(UUID().uuidString)"
        guard FileManager.default.createFile(atPath: tmp, contents: nil),
            let output = FileHandle(forWritingAtPath: tmp)
        else { throw FarmError(.io, "Cannot write to the blob store at \(root).") }
        let hasher = BlobTreeHasher()
        var size: Int64 = 0
        do {
            while let chunk = try input.read(upToCount: 1 << 20), !chunk.isEmpty {
                hasher.update(chunk)
                try output.write(contentsOf: chunk)
                size += Int64(chunk.count)
            }
            if sync { try output.synchronize() }
            try output.close()
        } catch {
            try? output.close()
            try? FileManager.default.removeItem(atPath: tmp)
            throw FarmError(.io, "Cannot store \(source): \(error.localizedDescription)")
        }
        let hash = hasher.finalize()
        let final = path(for: hash)
        if has(hash) {
            try? FileManager.default.removeItem(atPath: tmp)
            // Stored again (a rerun's identical image, a resubmitted file): fresh, so clean-up of a removed job
            // that had the same bytes leaves it alone (`modifiedRecently`).
            utimes(final, nil)
            return (hash, size, false)
        }
        try FileManager.default.createDirectory(
            atPath: (final as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        if rename(tmp, final) != 0 {
            try? FileManager.default.removeItem(atPath: tmp)
            throw FarmError(.io, "Cannot store \(source) in the blob store: \(String(cString: strerror(errno))).")
        }
        return (hash, size, true)
    }

    /// Writes `bytes` to a temporary file of the store once they prove to have `hash`, and returns its path: not
    /// visible as a blob, not yet durable. The caller syncs it (see `GroupSync`), then `commit`s it.
    public func stage(bytes: [UInt8], hash: String) throws(FarmError) -> String {
        let actual: String? =
            switch BlobAddress.format(hash) {
            case .tree: BlobAddress.of(bytes)
            case .legacy: BlobAddress.legacy(bytes)
            case nil: nil
            }
        guard actual == hash else {
            throw FarmError(.badInput, "The bytes sent for blob \(hash.prefix(12))… do not have that hash.")
        }
        let tmp = "\(root)/tmp/\(UUID().uuidString)"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        guard fd >= 0 else { throw FarmError(.io, "Cannot write to the blob store at \(root): \(Self.lastError).") }
        var written = 0
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            while written < raw.count {
                let n = write(fd, raw.baseAddress! + written, raw.count - written)
                if n <= 0 { return false }
                written += n
            }
            return true
        }
        close(fd)
        guard ok else {
            unlink(tmp)
            throw FarmError(.io, "Cannot store blob \(hash.prefix(12))…: \(Self.lastError).")
        }
        return tmp
    }

    /// Moves a staged (and synced) file into place as blob `hash`; returns the blob's path. The caller syncs its
    /// folder to make the name durable.
    public func commit(staged: String, hash: String) throws(FarmError) -> String {
        let final = path(for: hash)
        try? FileManager.default.createDirectory(
            atPath: (final as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        guard rename(staged, final) == 0 else {
            unlink(staged)
            throw FarmError(.io, "Cannot store blob \(hash.prefix(12))…: \(Self.lastError).")
        }
        return final
    }

    private static var lastError: String { String(cString: strerror(errno)) }

    /// The tree address of a file, without storing it.
    public static func hash(fileAt path: String) throws -> String {
        guard let input = FileHandle(forReadingAtPath: path) else { throw FarmError(.io, "Cannot read \(path).") }
        defer { try? input.close() }
        let hasher = BlobTreeHasher()
        while let chunk = try input.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(chunk) }
        return hasher.finalize()
    }

    /// Whether the blob was written, or stored again, within `interval`.
    public func modifiedRecently(_ hash: String, within interval: Double) -> Bool {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path(for: hash)),
            let modified = attributes[.modificationDate] as? Date
        else { return false }
        return Date().timeIntervalSince(modified) < interval
    }

    /// Marks a blob as just used (received again, fetched for a copy): clean-up leaves fresh blobs for later.
    public func touch(_ hash: String) {
        guard BlobAddress.isValid(hash) else { return }
        utimes(path(for: hash), nil)
    }

    public func remove(_ hash: String) {
        guard BlobAddress.isValid(hash) else { return }
        try? FileManager.default.removeItem(atPath: path(for: hash))
    }
}
