import CSodium
import Foundation

/// The 32-byte secret that makes a farm: whoever holds it may join, and nothing without it can read the wire.
public struct FarmKey: Sendable, Equatable {
    public static let byteCount = 32
    public static let tokenPrefix = "rexfarm1-"

    public let bytes: [UInt8]

    public init(bytes: [UInt8]) throws(MeshError) {
        guard bytes.count == Self.byteCount else {
            throw MeshError(.badKey, "A farm key is \(Self.byteCount) bytes; this one has \(bytes.count).")
        }
        self.bytes = bytes
    }

    public static func generate() -> FarmKey {
        try! FarmKey(bytes: Sodium.randomBytes(byteCount))
    }

    /// First bytes of a hash of the key: sent in the clear so nodes skip other farms' beacons cheaply.
    public var fingerprint: [UInt8] {
        Array(Sodium.blake2b(bytes, outputLength: 32, key: Array("rexnode farm fingerprint".utf8)).prefix(8))
    }

    // MARK: Join token

    /// The key as a copy-pasteable token: prefix, base32 of key + 4-byte checksum, so typos are caught.
    public var token: String {
        Self.tokenPrefix + Base32.encode(bytes + Self.checksum(bytes))
    }

    public init(token: String) throws(MeshError) {
        let trimmed = token.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.hasPrefix(Self.tokenPrefix) else {
            throw MeshError(
                .badToken, "A join token starts with '\(Self.tokenPrefix)'; check that you copied all of it.")
        }
        guard let raw = Base32.decode(String(trimmed.dropFirst(Self.tokenPrefix.count))),
            raw.count == Self.byteCount + 4
        else {
            throw MeshError(.badToken, "This join token is malformed (wrong length or characters); copy it again.")
        }
        let key = Array(raw.prefix(Self.byteCount))
        guard Array(raw.suffix(4)) == Self.checksum(key) else {
            throw MeshError(.badToken, "This join token's checksum does not match; it was mistyped or truncated.")
        }
        try self.init(bytes: key)
    }

    private static func checksum(_ key: [UInt8]) -> [UInt8] {
        Array(Sodium.blake2b(key, outputLength: 16, key: Array("rexnode token".utf8)).prefix(4))
    }

    // MARK: Files

    /// Reads a key file: either the raw 32 bytes or a join token as text.
    public static func load(from path: String) throws(MeshError) -> FarmKey {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MeshError(.badKey, "Cannot read the farm key file \(path).")
        }
        if data.count == byteCount { return try FarmKey(bytes: Array(data)) }
        return try FarmKey(token: String(decoding: data, as: UTF8.self))
    }

    /// Writes the key as its token, readable by the owner only (mode 0600).
    public func save(to path: String) throws(MeshError) {
        try SecretFile.write(Array((token + "\n").utf8), to: path)
    }
}

/// Writes secrets with mode 0600 from the first byte (never world-readable, even briefly).
enum SecretFile {
    static func write(_ bytes: [UInt8], to path: String) throws(MeshError) {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw MeshError(.io, "Cannot write \(path): \(String(cString: strerror(errno))).") }
        let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
        guard written == bytes.count, rename(tmp, path) == 0 else {
            throw MeshError(.io, "Cannot write \(path): \(String(cString: strerror(errno))).")
        }
    }
}

/// RFC 4648 base32, lower case, no padding: case-insensitive and free of look-alike punctuation.
enum Base32 {
    private static let alphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    static func encode(_ data: [UInt8]) -> String {
        var out = [UInt8]()
        var buffer: UInt32 = 0
        var bits = 0
        for byte in data {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 {
                out.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        var out = [UInt8]()
        var buffer: UInt32 = 0
        var bits = 0
        for c in text.lowercased().utf8 {
            guard let v = alphabet.firstIndex(of: c) else { return nil }
            buffer = (buffer << 5) | UInt32(v)
            bits += 5
            if bits >= 8 {
                out.append(UInt8((buffer >> UInt32(bits - 8)) & 0xff))
                bits -= 8
            }
        }
        return out
    }
}
