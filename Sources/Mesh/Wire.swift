// Byte-level helpers shared by every codec in the mesh. They are free of SwiftNIO on purpose, so the fuzz
// harnesses under `fuzz/` can compile the decoders with plain `swiftc`.

/// Appends big-endian integers and length-prefixed fields to a growing byte array.
public struct WireWriter: Sendable {
    public var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) {
        bytes.append(UInt8(v >> 8))
        bytes.append(UInt8(v & 0xff))
    }
    public mutating func u32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8((v >> UInt32(shift)) & 0xff)) }
    }
    public mutating func u64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8((v >> UInt64(shift)) & 0xff)) }
    }
    public mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    public mutating func raw(_ v: ArraySlice<UInt8>) { bytes.append(contentsOf: v) }
    /// One length byte, then the bytes (at most 255).
    public mutating func short(_ v: [UInt8]) {
        u8(UInt8(v.count))
        raw(v)
    }
    /// Four length bytes, then the bytes.
    public mutating func long(_ v: [UInt8]) {
        u32(UInt32(v.count))
        raw(v)
    }
}

/// Reads big-endian fields from a byte slice; every read is bounds-checked and returns nil past the end.
public struct WireReader: Sendable {
    private let bytes: [UInt8]
    public private(set) var index: Int

    public init(_ bytes: [UInt8], at index: Int = 0) {
        self.bytes = bytes
        self.index = index
    }

    public var remaining: Int { bytes.count - index }
    public var isAtEnd: Bool { index == bytes.count }

    public mutating func u8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { index += 1 }
        return bytes[index]
    }
    public mutating func u16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        defer { index += 2 }
        return UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1])
    }
    public mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(bytes[index + i]) }
        index += 4
        return v
    }
    public mutating func u64() -> UInt64? {
        guard remaining >= 8 else { return nil }
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(bytes[index + i]) }
        index += 8
        return v
    }
    public mutating func raw(_ count: Int) -> [UInt8]? {
        guard count >= 0, remaining >= count else { return nil }
        defer { index += count }
        return Array(bytes[index..<index + count])
    }
    public mutating func short() -> [UInt8]? {
        guard let n = u8() else { return nil }
        return raw(Int(n))
    }
    public mutating func long(max: Int) -> [UInt8]? {
        guard let n = u32(), Int(n) <= max else { return nil }
        return raw(Int(n))
    }
    public mutating func rest() -> [UInt8] {
        defer { index = bytes.count }
        return Array(bytes[index...])
    }
}
