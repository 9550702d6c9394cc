import CSodium

/// One direction of an encrypted stream: `crypto_secretstream_xchacha20poly1305`, so frames cannot be
/// reordered, replayed, dropped or truncated without the receiver noticing.
final class SecretStreamPush {
    static let headerBytes = Int(crypto_secretstream_xchacha20poly1305_HEADERBYTES)
    static let overhead = Int(crypto_secretstream_xchacha20poly1305_ABYTES)
    private var state = crypto_secretstream_xchacha20poly1305_state()
    let header: [UInt8]

    init(key: [UInt8]) {
        precondition(Sodium.ready && key.count == 32)
        var header = [UInt8](repeating: 0, count: Self.headerBytes)
        crypto_secretstream_xchacha20poly1305_init_push(&state, &header, key)
        self.header = header
    }

    /// Encrypts `plain` into `out` (which must hold `plain.count + overhead` bytes).
    func seal(_ plain: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= plain.count + Self.overhead)
        crypto_secretstream_xchacha20poly1305_push(
            &state, out.baseAddress!.assumingMemoryBound(to: UInt8.self), nil,
            plain.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(plain.count), nil, 0,
            UInt8(crypto_secretstream_xchacha20poly1305_TAG_MESSAGE))
    }

    func seal(_ plain: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plain.count + Self.overhead)
        plain.withUnsafeBytes { p in out.withUnsafeMutableBytes { o in seal(p, into: o) } }
        return out
    }
}

/// The receiving half of `SecretStreamPush`.
final class SecretStreamPull {
    private var state = crypto_secretstream_xchacha20poly1305_state()
    private(set) var failed = false

    init?(key: [UInt8], header: [UInt8]) {
        precondition(Sodium.ready)
        guard key.count == 32, header.count == SecretStreamPush.headerBytes,
            crypto_secretstream_xchacha20poly1305_init_pull(&state, header, key) == 0
        else { return nil }
    }

    /// Decrypts into `out` (at least `cipher.count - overhead` bytes); false if tampered, replayed or reordered.
    /// After one failure the stream stays failed: the connection must close.
    func open(_ cipher: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Bool {
        guard !failed, cipher.count >= SecretStreamPush.overhead,
            out.count >= cipher.count - SecretStreamPush.overhead
        else {
            failed = true
            return false
        }
        var tag: UInt8 = 0
        let rc = crypto_secretstream_xchacha20poly1305_pull(
            &state, out.baseAddress?.assumingMemoryBound(to: UInt8.self), nil, &tag,
            cipher.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(cipher.count), nil, 0)
        guard rc == 0, tag == UInt8(crypto_secretstream_xchacha20poly1305_TAG_MESSAGE) else {
            failed = true
            return false
        }
        return true
    }

    func open(_ cipher: [UInt8]) -> [UInt8]? {
        guard cipher.count >= SecretStreamPush.overhead else {
            failed = true
            return nil
        }
        var out = [UInt8](repeating: 0, count: cipher.count - SecretStreamPush.overhead)
        let ok = cipher.withUnsafeBytes { c in out.withUnsafeMutableBytes { o in open(c, into: o) } }
        return ok ? out : nil
    }
}

/// The authenticated peer at the other end of a finished handshake.
public struct PeerIdentity: Sendable, Equatable {
    public let publicKey: [UInt8]
    public var nodeID: String { String(publicKey.hexString.prefix(16)) }
}

/// The keys a finished handshake hands to the encryption layer.
final class SessionKeys {
    let push: SecretStreamPush
    let pull: SecretStreamPull
    let peer: PeerIdentity

    init(push: SecretStreamPush, pull: SecretStreamPull, peer: PeerIdentity) {
        self.push = push
        self.pull = pull
        self.peer = peer
    }
}

/// The three-message handshake as a pure state machine: frames in, frames and a result out.
///
/// 1. initiator → responder: magic, version, fingerprint, ephemeral kx key, identity key.
/// 2. responder → initiator: ephemeral kx key, identity key, signature and farm MAC over the transcript,
///    secretstream header.
/// 3. initiator → responder: signature and farm MAC over the transcript, secretstream header.
/// Session keys are the `crypto_kx` keys hashed with a farm-derived key and the transcript, so a peer
/// without the farm key can neither authenticate nor read.
struct HandshakeStateMachine {
    static let magic: [UInt8] = Array("RXH1".utf8)
    static let version: UInt8 = 1
    static let msg1Bytes = 4 + 1 + 8 + 32 + 32
    static let msg2Bytes = 32 + 32 + 64 + 32 + 24
    static let msg3Bytes = 64 + 32 + 24

    enum Role { case initiator, responder }

    enum Action {
        case send([UInt8])
        case sendAndComplete([UInt8], SessionKeys)
        case complete(SessionKeys)
    }

    private enum State {
        case idle
        case initiatorSentHello(ekPublic: [UInt8], ekSecret: [UInt8], msg1: [UInt8])
        case responderSentReply(peerIdentity: [UInt8], transcript: [UInt8], push: SecretStreamPush, rxKey: [UInt8])
        case done
        case failed
    }

    let role: Role
    let identity: NodeIdentity
    private(set) var fingerprint: [UInt8]
    private(set) var authKey: [UInt8]
    private(set) var sessionKey: [UInt8]
    /// A responder's other acceptable keys (the previous epoch during its overlap): a hello under one of them is
    /// answered under it, and the handshake then completes only for a member (`isMember`).
    let olderKeys: [FarmKey]
    let isMember: @Sendable ([UInt8]) -> Bool
    private var membersOnly = false
    /// When dialing a peer found by its beacon: the identity key it must prove.
    let expectedPeer: [UInt8]?
    let authorize: @Sendable ([UInt8]) -> Bool
    private var state: State = .idle

    init(
        role: Role, identity: NodeIdentity, farmKey: FarmKey, expectedPeer: [UInt8]? = nil,
        authorize: @escaping @Sendable ([UInt8]) -> Bool = { _ in true }, olderKeys: [FarmKey] = [],
        isMember: @escaping @Sendable ([UInt8]) -> Bool = { _ in false }
    ) {
        self.olderKeys = olderKeys
        self.isMember = isMember
        precondition(Sodium.ready)
        self.role = role
        self.identity = identity
        self.fingerprint = farmKey.fingerprint
        self.authKey = KeyDerivation.subkey(farmKey, id: 2, context: "rxhshake")
        self.sessionKey = KeyDerivation.subkey(farmKey, id: 3, context: "rxsessn")
        self.expectedPeer = expectedPeer
        self.authorize = authorize
    }

    var isComplete: Bool { if case .done = state { true } else { false } }

    /// The initiator's first message.
    mutating func start() -> [UInt8] {
        precondition(role == .initiator)
        let (pk, sk) = Self.kxKeyPair()
        var w = WireWriter(capacity: Self.msg1Bytes)
        w.raw(Self.magic)
        w.u8(Self.version)
        w.raw(fingerprint)
        w.raw(pk)
        w.raw(identity.publicKey)
        state = .initiatorSentHello(ekPublic: pk, ekSecret: sk, msg1: w.bytes)
        return w.bytes
    }

    mutating func receive(_ frame: [UInt8]) throws(MeshError) -> Action {
        do {
            return try step(frame)
        } catch {
            state = .failed
            throw error
        }
    }

    private mutating func step(_ frame: [UInt8]) throws(MeshError) -> Action {
        switch (role, state) {
        case (.responder, .idle):
            return try onHello(frame)
        case (.initiator, .initiatorSentHello(let ekPublic, let ekSecret, let msg1)):
            return try onReply(frame, ekPublic: ekPublic, ekSecret: ekSecret, msg1: msg1)
        case (.responder, .responderSentReply(let peerIdentity, let transcript, let push, let rxKey)):
            return try onFinish(frame, peerIdentity: peerIdentity, transcript: transcript, push: push, rxKey: rxKey)
        default:
            throw MeshError(.protocolViolation, "A handshake message arrived out of order.")
        }
    }

    // MARK: Responder

    private mutating func onHello(_ frame: [UInt8]) throws(MeshError) -> Action {
        guard frame.count == Self.msg1Bytes, Array(frame[0..<4]) == Self.magic else {
            throw MeshError(.protocolViolation, "A peer opened with something that is not a rexnode handshake.")
        }
        guard frame[4] == Self.version else {
            throw MeshError(.protocolViolation, "A peer speaks handshake version \(frame[4]); this node speaks 1.")
        }
        if Array(frame[5..<13]) != fingerprint {
            guard let older = olderKeys.first(where: { $0.fingerprint == Array(frame[5..<13]) }) else {
                throw MeshError(.authentication, "A node of another farm tried to connect.")
            }
            fingerprint = older.fingerprint
            authKey = KeyDerivation.subkey(older, id: 2, context: "rxhshake")
            sessionKey = KeyDerivation.subkey(older, id: 3, context: "rxsessn")
            membersOnly = true
        }
        let peerEphemeral = Array(frame[13..<45])
        let peerIdentity = Array(frame[45..<77])
        let (pk, sk) = Self.kxKeyPair()
        var rx = [UInt8](repeating: 0, count: 32)
        var tx = [UInt8](repeating: 0, count: 32)
        guard crypto_kx_server_session_keys(&rx, &tx, pk, sk, peerEphemeral) == 0 else {
            throw MeshError(.authentication, "A peer sent an invalid ephemeral key.")
        }
        let transcript = Sodium.blake2b(frame + pk + identity.publicKey, key: Array("rexnode hs1".utf8))
        let push = SecretStreamPush(key: deriveKey("r2i", tx, transcript))
        var w = WireWriter(capacity: Self.msg2Bytes)
        w.raw(pk)
        w.raw(identity.publicKey)
        w.raw(identity.sign(Array("R".utf8) + transcript))
        w.raw(mac("R", transcript))
        w.raw(push.header)
        state = .responderSentReply(
            peerIdentity: peerIdentity, transcript: transcript, push: push, rxKey: deriveKey("i2r", rx, transcript))
        return .send(w.bytes)
    }

    private mutating func onFinish(
        _ frame: [UInt8], peerIdentity: [UInt8], transcript: [UInt8], push: SecretStreamPush, rxKey: [UInt8]
    ) throws(MeshError) -> Action {
        guard frame.count == Self.msg3Bytes else {
            throw MeshError(.protocolViolation, "A peer's handshake finish has the wrong size.")
        }
        let sig = Array(frame[0..<64])
        let tag = Array(frame[64..<96])
        let header = Array(frame[96..<120])
        guard Sodium.equal(tag, mac("I", transcript)) else {
            throw MeshError(.authentication, "A peer could not prove it holds the farm key.")
        }
        guard NodeIdentity.verify(signature: sig, message: Array("I".utf8) + transcript, publicKey: peerIdentity)
        else { throw MeshError(.authentication, "A peer's handshake signature does not verify.") }
        guard authorize(peerIdentity), !membersOnly || isMember(peerIdentity) else {
            throw MeshError(.authentication, "Node \(peerIdentity.hexString.prefix(16)) is not allowed in this farm.")
        }
        guard let pull = SecretStreamPull(key: rxKey, header: header) else {
            throw MeshError(.authentication, "A peer sent an invalid stream header.")
        }
        state = .done
        return .complete(SessionKeys(push: push, pull: pull, peer: PeerIdentity(publicKey: peerIdentity)))
    }

    // MARK: Initiator

    private mutating func onReply(
        _ frame: [UInt8], ekPublic: [UInt8], ekSecret: [UInt8], msg1: [UInt8]
    ) throws(MeshError) -> Action {
        guard frame.count == Self.msg2Bytes else {
            throw MeshError(.protocolViolation, "A peer's handshake reply has the wrong size.")
        }
        let peerEphemeral = Array(frame[0..<32])
        let peerIdentity = Array(frame[32..<64])
        let sig = Array(frame[64..<128])
        let tag = Array(frame[128..<160])
        let header = Array(frame[160..<184])
        let transcript = Sodium.blake2b(msg1 + peerEphemeral + peerIdentity, key: Array("rexnode hs1".utf8))
        guard Sodium.equal(tag, mac("R", transcript)) else {
            throw MeshError(.authentication, "A peer could not prove it holds the farm key.")
        }
        guard NodeIdentity.verify(signature: sig, message: Array("R".utf8) + transcript, publicKey: peerIdentity)
        else { throw MeshError(.authentication, "A peer's handshake signature does not verify.") }
        if let expectedPeer, expectedPeer != peerIdentity {
            throw MeshError(.authentication, "The node at this address is not the one its beacon announced.")
        }
        guard authorize(peerIdentity) else {
            throw MeshError(.authentication, "Node \(peerIdentity.hexString.prefix(16)) is not allowed in this farm.")
        }
        var rx = [UInt8](repeating: 0, count: 32)
        var tx = [UInt8](repeating: 0, count: 32)
        guard crypto_kx_client_session_keys(&rx, &tx, ekPublic, ekSecret, peerEphemeral) == 0 else {
            throw MeshError(.authentication, "A peer sent an invalid ephemeral key.")
        }
        guard let pull = SecretStreamPull(key: deriveKey("r2i", rx, transcript), header: header) else {
            throw MeshError(.authentication, "A peer sent an invalid stream header.")
        }
        let push = SecretStreamPush(key: deriveKey("i2r", tx, transcript))
        var w = WireWriter(capacity: Self.msg3Bytes)
        w.raw(identity.sign(Array("I".utf8) + transcript))
        w.raw(mac("I", transcript))
        w.raw(push.header)
        state = .done
        return .sendAndComplete(
            w.bytes, SessionKeys(push: push, pull: pull, peer: PeerIdentity(publicKey: peerIdentity)))
    }

    // MARK: Crypto helpers

    private static func kxKeyPair() -> ([UInt8], [UInt8]) {
        var pk = [UInt8](repeating: 0, count: Int(crypto_kx_PUBLICKEYBYTES))
        var sk = [UInt8](repeating: 0, count: Int(crypto_kx_SECRETKEYBYTES))
        crypto_kx_keypair(&pk, &sk)
        return (pk, sk)
    }

    private func mac(_ label: String, _ transcript: [UInt8]) -> [UInt8] {
        Sodium.blake2b(Array(label.utf8) + transcript, key: authKey)
    }

    /// Direction key = BLAKE2b-256 keyed with a farm-derived key over label, kx key and transcript.
    private func deriveKey(_ label: String, _ kxKey: [UInt8], _ transcript: [UInt8]) -> [UInt8] {
        Sodium.blake2b(Array(label.utf8) + kxKey + transcript, key: sessionKey)
    }
}
