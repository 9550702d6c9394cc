import CSodium
import Foundation
import Synchronization

/// The farm keys a node knows: the current one (its epoch goes into every beacon header) and the older ones,
/// kept only to recognise a member that missed a rotation (see docs/protocol.md, "Key epochs").
public struct FarmKeyRing: Sendable, Equatable {
    public var epoch: UInt32
    public var current: FarmKey
    /// Superseded keys by epoch.
    public var retired: [UInt32: FarmKey]

    public init(epoch: UInt32 = 0, current: FarmKey, retired: [UInt32: FarmKey] = [:]) {
        self.epoch = epoch
        self.current = current
        self.retired = retired
    }

    /// The ring after switching to `key` at `epoch` (the current key is retired). An older epoch changes nothing.
    public func rotated(to key: FarmKey, epoch newEpoch: UInt32) -> FarmKeyRing {
        guard newEpoch > epoch else { return self }
        var next = self
        if key != current { next.retired[epoch] = current }
        next.current = key
        next.epoch = newEpoch
        return next
    }
}

/// What the mesh knows about keys and trust at this moment, readable from event loops (handshakes) and the
/// discovery actor: the key ring, since when the current epoch holds, who is a member, and which node ids are
/// denied for good (revoked identities).
final class KeyState: Sendable {
    /// How long after switching epochs a node still accepts the previous epoch, from members only.
    static let overlap: Duration = .seconds(10)

    struct State {
        var ring: FarmKeyRing
        var switchedAt: ContinuousClock.Instant?
        var isMember: @Sendable ([UInt8]) -> Bool = { _ in false }
        var revoked: Set<String> = []
        /// A node with a log takes epochs from it only: a beacon under its key claiming a higher epoch (which anyone
        /// holding the key can seal) would move it off the farm's real epoch.
        var learning = true
    }

    private let state: Mutex<State>

    init(_ ring: FarmKeyRing) { state = Mutex(State(ring: ring)) }

    var ring: FarmKeyRing { state.withLock { $0.ring } }

    func set(_ ring: FarmKeyRing) {
        state.withLock { s in
            if ring.epoch != s.ring.epoch { s.switchedAt = .now }
            s.ring = ring
        }
    }

    /// The same key at a higher epoch number: a node that joined with a token (which carries no epoch) learns the
    /// farm's epoch from the first beacon that authenticates under its key. No overlap starts: no key changed.
    func learnEpoch(_ epoch: UInt32) {
        state.withLock { s in if s.learning, epoch > s.ring.epoch, epoch < .max { s.ring.epoch = epoch } }
    }

    /// From now on epochs come from the log only (the node has one).
    func stopLearningEpochs() { state.withLock { $0.learning = false } }

    var learnsEpochs: Bool { state.withLock { $0.learning } }

    func setMembership(_ isMember: @escaping @Sendable ([UInt8]) -> Bool) { state.withLock { $0.isMember = isMember } }
    /// Replaces the revoked identities; false if they were already exactly these.
    @discardableResult
    func setRevoked(_ nodeIDs: Set<String>) -> Bool {
        state.withLock { s in
            guard s.revoked != nodeIDs else { return false }
            s.revoked = nodeIDs
            return true
        }
    }

    /// A revoked identity: refused everywhere, whatever key it holds.
    func isRevoked(_ publicKey: [UInt8]) -> Bool {
        let id = String(publicKey.hexString.prefix(16))
        return state.withLock { $0.revoked.contains(id) }
    }

    func isMember(_ publicKey: [UInt8]) -> Bool {
        let check = state.withLock { $0.isMember }
        return !isRevoked(publicKey) && check(publicKey)
    }

    /// The previous epoch while the overlap lasts (nil once it is over, or before any rotation).
    func overlapping(now: ContinuousClock.Instant = .now) -> (epoch: UInt32, key: FarmKey)? {
        state.withLock { s in
            guard let at = s.switchedAt, now - at < Self.overlap, s.ring.epoch > 0 else { return nil }
            let previous = s.ring.retired.keys.filter { $0 < s.ring.epoch }.max()
            return previous.flatMap { e in s.ring.retired[e].map { (e, $0) } }
        }
    }
}

/// A member heard announcing an older key epoch after the overlap: it missed a rotation. The mesh dials it with
/// that epoch's key, proves both identities, and hands it the current key sealed to its identity (see `MeshNode`).
public struct Laggard: Sendable, Equatable {
    public var publicKey: [UInt8]
    public var host: String
    public var port: Int
    public var epoch: UInt32
    public var nodeID: String { String(publicKey.hexString.prefix(16)) }
}

// MARK: Sealing to an identity

extension NodeIdentity {
    /// `crypto_box_seal` to a node's Ed25519 identity (converted to X25519): only that node can open it.
    public static func seal(_ message: [UInt8], to publicKey: [UInt8]) -> [UInt8]? {
        precondition(Sodium.ready)
        guard publicKey.count == Int(crypto_sign_PUBLICKEYBYTES) else { return nil }
        var curve = [UInt8](repeating: 0, count: Int(crypto_box_PUBLICKEYBYTES))
        guard crypto_sign_ed25519_pk_to_curve25519(&curve, publicKey) == 0 else { return nil }
        var out = [UInt8](repeating: 0, count: message.count + Int(crypto_box_sealbytes()))
        guard crypto_box_seal(&out, message, UInt64(message.count), curve) == 0 else { return nil }
        return out
    }

    /// Opens what `seal(_:to:)` sealed to this identity; nil if it was not for this node or was altered.
    public func openSealed(_ box: [UInt8]) -> [UInt8]? {
        guard box.count >= Int(crypto_box_sealbytes()) else { return nil }
        var curvePublic = [UInt8](repeating: 0, count: Int(crypto_box_PUBLICKEYBYTES))
        var curveSecret = [UInt8](repeating: 0, count: Int(crypto_box_SECRETKEYBYTES))
        guard crypto_sign_ed25519_pk_to_curve25519(&curvePublic, publicKey) == 0,
            crypto_sign_ed25519_sk_to_curve25519(&curveSecret, secretKey) == 0
        else { return nil }
        var out = [UInt8](repeating: 0, count: box.count - Int(crypto_box_sealbytes()))
        guard crypto_box_seal_open(&out, box, UInt64(box.count), curvePublic, curveSecret) == 0 else { return nil }
        return out
    }
}

extension PeerInfo {
    /// Where to dial a laggard (it is in no peer table: its beacons open only under a retired key).
    init(handOver laggard: Laggard) {
        self.init(
            nodeID: laggard.nodeID, publicKey: laggard.publicKey, name: "", host: laggard.host, port: laggard.port,
            state: .alive, status: [], lastSeen: .now, instanceID: 0)
    }
}

// MARK: Files

extension FarmKeyRing {
    /// Writes the ring as one "EPOCH TOKEN" line per epoch, current last; mode 0600, atomically (temp + rename).
    public func save(to path: String) throws(MeshError) {
        var lines = retired.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.token)" }
        lines.append("\(epoch) \(current.token)")
        try SecretFile.write(Array((lines.joined(separator: "\n") + "\n").utf8), to: path)
    }

    /// The ring saved at `path` around `current` (the key in `farm.key`): its epoch and the epochs before it. Without
    /// a file, or when `current` is not in it, a ring of `current` alone at epoch 0.
    public static func load(from path: String, current: FarmKey) -> FarmKeyRing {
        guard let data = FileManager.default.contents(atPath: path) else { return FarmKeyRing(current: current) }
        var keys: [UInt32: FarmKey] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let epoch = UInt32(parts[0]), let key = try? FarmKey(token: String(parts[1]))
            else { continue }
            keys[epoch] = key
        }
        guard let epoch = keys.first(where: { $0.value == current })?.key else { return FarmKeyRing(current: current) }
        return FarmKeyRing(epoch: epoch, current: current, retired: keys.filter { $0.key < epoch })
    }

    /// Whether `key` is one of this farm's superseded keys (a node restarted with an old `--token`).
    public func isRetired(_ key: FarmKey) -> Bool { retired.values.contains(key) }
}
