import CSodium

/// What a node announces on the multicast group once a second: who it is and where to reach it.
///
/// A beacon is only a hint: it tells peers where to dial, and the secure channel then proves identity.
public struct Beacon: Sendable, Equatable {
    /// Ed25519 public key of the node (32 bytes); the first 16 hex characters are its node id.
    public var publicKey: [UInt8]
    /// Random per process start, so a restarted node's sequence numbers are not mistaken for replays.
    public var instanceID: UInt64
    /// Increases by one per beacon within an instance.
    public var sequence: UInt64
    /// Sender's wall clock, milliseconds since 1970; receivers drop beacons outside their time window.
    public var timeMillis: UInt64
    /// TCP port of the node's peer listener (the host is the beacon's source address).
    public var tcpPort: UInt16
    /// Short human name (at most 64 bytes of UTF-8).
    public var name: String
    /// Opaque bytes the daemon sets (role, slots, ...), at most `Beacon.maxStatusBytes`.
    public var status: [UInt8]

    public static let maxNameBytes = 64
    public static let maxStatusBytes = 200

    public init(
        publicKey: [UInt8], instanceID: UInt64, sequence: UInt64, timeMillis: UInt64, tcpPort: UInt16,
        name: String, status: [UInt8]
    ) {
        self.publicKey = publicKey
        self.instanceID = instanceID
        self.sequence = sequence
        self.timeMillis = timeMillis
        self.tcpPort = tcpPort
        self.name = name
        self.status = status
    }

    public var nodeID: String { String(publicKey.hexString.prefix(16)) }
}

/// Seals and opens beacons: clear header as associated data, body under XChaCha20-Poly1305.
///
/// Layout (see docs/protocol.md): magic "RXB1" (4) | version (1) | key epoch (4, BE) | fingerprint (8) |
/// nonce (24) | ciphertext (body + 16-byte tag).
public struct BeaconCodec: Sendable {
    public static let magic: [UInt8] = Array("RXB1".utf8)
    public static let version: UInt8 = 1
    static let headerBytes = 4 + 1 + 4 + 8
    static let nonceBytes = 24
    static let tagBytes = 16
    /// Larger datagrams are never produced and are dropped unread.
    public static let maxDatagramBytes = 1024

    public let fingerprint: [UInt8]
    public let epoch: UInt32
    let key: [UInt8]

    public init(farmKey: FarmKey, epoch: UInt32 = 0) {
        precondition(Sodium.ready)
        self.fingerprint = farmKey.fingerprint
        self.epoch = epoch
        self.key = KeyDerivation.subkey(farmKey, id: 1 + UInt64(epoch), context: "rxbeacon")
    }

    /// What a received datagram turned out to be.
    public enum Opened: Sendable, Equatable {
        case beacon(Beacon)
        /// A well-formed header carrying another farm's fingerprint (or another key epoch).
        case otherFarm(fingerprint: [UInt8])
        /// Not a beacon at all, or a body that fails authentication or parsing.
        case garbage
        case badAuthentication
    }

    public func seal(_ beacon: Beacon) -> [UInt8] {
        var header = WireWriter(capacity: 256)
        header.raw(Self.magic)
        header.u8(Self.version)
        header.u32(epoch)
        header.raw(fingerprint)
        var body = WireWriter(capacity: 200)
        body.raw(beacon.publicKey)
        body.u64(beacon.instanceID)
        body.u64(beacon.sequence)
        body.u64(beacon.timeMillis)
        body.u16(beacon.tcpPort)
        body.short(Array(Array(beacon.name.utf8).prefix(Beacon.maxNameBytes)))
        body.short(Array(beacon.status.prefix(Beacon.maxStatusBytes)))
        let ad = header.bytes
        let nonce = Sodium.randomBytes(Self.nonceBytes)
        var cipher = [UInt8](repeating: 0, count: body.bytes.count + Self.tagBytes)
        var cipherLen: UInt64 = 0
        crypto_aead_xchacha20poly1305_ietf_encrypt(
            &cipher, &cipherLen, body.bytes, UInt64(body.bytes.count), ad, UInt64(ad.count), nil, nonce, key)
        return ad + nonce + cipher
    }

    public func open(_ datagram: [UInt8]) -> Opened {
        guard datagram.count <= Self.maxDatagramBytes,
            datagram.count >= Self.headerBytes + Self.nonceBytes + Self.tagBytes,
            Array(datagram[0..<4]) == Self.magic, datagram[4] == Self.version
        else { return .garbage }
        var reader = WireReader(datagram, at: 5)
        guard let epoch = reader.u32(), let print = reader.raw(8) else { return .garbage }
        guard epoch == self.epoch, print == fingerprint else { return .otherFarm(fingerprint: print) }
        let ad = Array(datagram[0..<Self.headerBytes])
        let nonce = Array(datagram[Self.headerBytes..<Self.headerBytes + Self.nonceBytes])
        let cipher = Array(datagram[(Self.headerBytes + Self.nonceBytes)...])
        var plain = [UInt8](repeating: 0, count: cipher.count - Self.tagBytes)
        var plainLen: UInt64 = 0
        let rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
            &plain, &plainLen, nil, cipher, UInt64(cipher.count), ad, UInt64(ad.count), nonce, key)
        guard rc == 0 else { return .badAuthentication }
        guard let beacon = Self.parseBody(plain) else { return .garbage }
        return .beacon(beacon)
    }

    static func parseBody(_ plain: [UInt8]) -> Beacon? {
        var r = WireReader(plain)
        guard let pk = r.raw(32), let instance = r.u64(), let seq = r.u64(), let time = r.u64(),
            let port = r.u16(), let name = r.short(), name.count <= Beacon.maxNameBytes,
            let status = r.short(), status.count <= Beacon.maxStatusBytes, r.isAtEnd
        else { return nil }
        return Beacon(
            publicKey: pk, instanceID: instance, sequence: seq, timeMillis: time, tcpPort: port,
            name: String(decoding: name, as: UTF8.self), status: status)
    }
}

/// Key derivation from the farm key: one function so every subkey is documented in one place.
enum KeyDerivation {
    /// `crypto_kdf_derive_from_key` with an 8-character context.
    static func subkey(_ farmKey: FarmKey, id: UInt64, context: String) -> [UInt8] {
        precondition(Sodium.ready)
        var ctx = Array(context.utf8.prefix(8))
        while ctx.count < 8 { ctx.append(0x5f) }
        var out = [UInt8](repeating: 0, count: 32)
        ctx.withUnsafeBufferPointer { c in
            c.withMemoryRebound(to: CChar.self) { cc in
                _ = crypto_kdf_derive_from_key(&out, 32, id, cc.baseAddress!, farmKey.bytes)
            }
        }
        return out
    }
}

/// Drops replayed beacons: a per-node sliding window of 64 sequence numbers plus a wall-clock window.
///
/// Pure value type: time comes in as an argument. State is kept only for authenticated senders and is
/// bounded by `capacity`, so a flood cannot grow memory.
public struct ReplayGuard: Sendable {
    struct Window: Sendable {
        var instanceID: UInt64
        var highest: UInt64
        var bitmap: UInt64  // bit i set: sequence (highest - i) already seen
        var lastTimeMillis: UInt64
        var touched: UInt64
    }

    public var timeWindowMillis: UInt64
    public var capacity: Int
    private var windows: [[UInt8]: Window] = [:]
    private var clock: UInt64 = 0

    public init(timeWindowMillis: UInt64 = 30_000, capacity: Int = 4096) {
        self.timeWindowMillis = timeWindowMillis
        self.capacity = capacity
    }

    /// Whether a beacon is new (and now recorded), a repeat, or outside the time window.
    public enum Verdict: Sendable, Equatable { case fresh, replayed, stale }

    /// Records the beacon if fresh. `nowMillis` is the receiver's wall clock.
    public mutating func check(_ beacon: Beacon, nowMillis: UInt64) -> Verdict {
        let skew = nowMillis > beacon.timeMillis ? nowMillis - beacon.timeMillis : beacon.timeMillis - nowMillis
        guard skew <= timeWindowMillis else { return .stale }
        clock += 1
        guard var w = windows[beacon.publicKey] else {
            insert(beacon)
            return .fresh
        }
        if beacon.instanceID != w.instanceID {
            // A restart: accept only if it is newer than anything the old instance sent.
            guard beacon.timeMillis > w.lastTimeMillis else { return .replayed }
            insert(beacon)
            return .fresh
        }
        if beacon.sequence > w.highest {
            let shift = beacon.sequence - w.highest
            w.bitmap = shift >= 64 ? 1 : (w.bitmap << shift) | 1
            w.highest = beacon.sequence
        } else {
            let back = w.highest - beacon.sequence
            guard back < 64, w.bitmap & (1 << back) == 0 else { return .replayed }
            w.bitmap |= 1 << back
        }
        w.lastTimeMillis = max(w.lastTimeMillis, beacon.timeMillis)
        w.touched = clock
        windows[beacon.publicKey] = w
        return .fresh
    }

    private mutating func insert(_ beacon: Beacon) {
        if windows[beacon.publicKey] == nil, windows.count >= capacity,
            let oldest = windows.min(by: { $0.value.touched < $1.value.touched })?.key
        {
            windows[oldest] = nil
        }
        windows[beacon.publicKey] = Window(
            instanceID: beacon.instanceID, highest: beacon.sequence, bitmap: 1,
            lastTimeMillis: beacon.timeMillis, touched: clock)
    }

    public var trackedNodes: Int { windows.count }
}
