import CSodium
import Foundation

/// libsodium must be initialised once per process before any call; `Sodium.ready` does it lazily and safely.
public enum Sodium {
    /// Evaluated once (Swift globals are lazily initialised under a lock).
    public static let ready: Bool = {
        sodium_init() >= 0
    }()

    /// Fills a new array with `count` cryptographically random bytes.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        precondition(ready, "libsodium failed to initialise")
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, count) }
        return out
    }

    /// BLAKE2b with the given output length (32 bytes = the content address of a blob).
    public static func blake2b(_ data: some ContiguousBytes, outputLength: Int = 32, key: [UInt8] = []) -> [UInt8] {
        precondition(ready, "libsodium failed to initialise")
        var out = [UInt8](repeating: 0, count: outputLength)
        data.withUnsafeBytes { input in
            key.withUnsafeBufferPointer { k in
                _ = crypto_generichash(
                    &out, outputLength,
                    input.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(input.count),
                    k.baseAddress, k.count)
            }
        }
        return out
    }

    /// Constant-time comparison of two equal-length byte arrays.
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return a.withUnsafeBytes { pa in
            b.withUnsafeBytes { pb in sodium_memcmp(pa.baseAddress!, pb.baseAddress!, a.count) == 0 }
        }
    }
}

/// Streaming BLAKE2b-256, for hashing files without loading them whole.
public final class Blake2bHasher {
    // libsodium's state is an over-aligned opaque struct: keep it in its own aligned allocation.
    private let state: UnsafeMutableRawPointer

    public init() {
        precondition(Sodium.ready, "libsodium failed to initialise")
        state = UnsafeMutableRawPointer.allocate(byteCount: crypto_generichash_statebytes(), alignment: 64)
        crypto_generichash_init(OpaquePointer(state), nil, 0, 32)
    }

    deinit { state.deallocate() }

    public func update(_ data: some ContiguousBytes) {
        data.withUnsafeBytes { buf in
            _ = crypto_generichash_update(
                OpaquePointer(state), buf.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(buf.count))
        }
    }

    public func finalize() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        crypto_generichash_final(OpaquePointer(state), &out, 32)
        return out
    }
}

extension Array where Element == UInt8 {
    /// Lower-case hexadecimal, the form content addresses take in file names and JSON.
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var chars = [UInt8]()
        chars.reserveCapacity(count * 2)
        for byte in self {
            chars.append(digits[Int(byte >> 4)])
            chars.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: chars, as: UTF8.self)
    }

    /// Parses lower- or upper-case hexadecimal; nil on any other character or an odd length.
    public init?(hexString: String) {
        let utf8 = Array(hexString.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var i = 0
        while i < utf8.count {
            guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        self = out
    }
}
