import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@testable import Mesh

@Suite struct HandshakeTests {
    let farm = FarmKey.generate()
    let alice = NodeIdentity.generate()
    let bob = NodeIdentity.generate()

    /// Runs the three messages; returns (initiator keys, responder keys).
    func handshake(
        initiatorKey: FarmKey? = nil, expected: [UInt8]? = nil,
        authorize: @escaping @Sendable ([UInt8]) -> Bool = { _ in true }
    ) throws -> (SessionKeys, SessionKeys) {
        var i = HandshakeStateMachine(
            role: .initiator, identity: alice, farmKey: initiatorKey ?? farm, expectedPeer: expected)
        var r = HandshakeStateMachine(role: .responder, identity: bob, farmKey: farm, authorize: authorize)
        let m1 = i.start()
        guard case .send(let m2) = try r.receive(m1) else { throw MeshError(.protocolViolation, "no msg2") }
        guard case .sendAndComplete(let m3, let ik) = try i.receive(m2) else {
            throw MeshError(.protocolViolation, "no msg3")
        }
        guard case .complete(let rk) = try r.receive(m3) else { throw MeshError(.protocolViolation, "no completion") }
        return (ik, rk)
    }

    @Test func bothSidesAgreeOnKeysAndIdentities() throws {
        let (ik, rk) = try handshake(expected: bob.publicKey)
        #expect(ik.peer.publicKey == bob.publicKey)
        #expect(rk.peer.publicKey == alice.publicKey)
        let c1 = ik.push.seal(Array("to bob".utf8))
        #expect(rk.pull.open(c1) == Array("to bob".utf8))
        let c2 = rk.push.seal(Array("to alice".utf8))
        #expect(ik.pull.open(c2) == Array("to alice".utf8))
    }

    @Test func wrongFarmKeyIsRefused() {
        #expect(throws: MeshError.self) { try handshake(initiatorKey: FarmKey.generate()) }
    }

    @Test func sameFingerprintButWrongKeyCannotProveMembership() throws {
        // An attacker who copies the fingerprint from a beacon still lacks the farm key: the MAC fails.
        var i = HandshakeStateMachine(role: .initiator, identity: alice, farmKey: FarmKey.generate())
        var r = HandshakeStateMachine(role: .responder, identity: bob, farmKey: farm)
        var m1 = i.start()
        m1.replaceSubrange(5..<13, with: farm.fingerprint)
        guard case .send(let m2) = try r.receive(m1) else {
            Issue.record("no reply")
            return
        }
        #expect(throws: MeshError.self) { try i.receive(m2) }
    }

    @Test func everyTamperedReplyByteIsRefused() throws {
        var probe = HandshakeStateMachine(role: .initiator, identity: alice, farmKey: farm)
        var responder = HandshakeStateMachine(role: .responder, identity: bob, farmKey: farm)
        guard case .send(let m2) = try responder.receive(probe.start()) else { return }
        _ = probe
        for index in stride(from: 0, to: m2.count - 24, by: 3) {  // the stream header is checked by secretstream
            var i = HandshakeStateMachine(role: .initiator, identity: alice, farmKey: farm)
            var r = HandshakeStateMachine(role: .responder, identity: bob, farmKey: farm)
            guard case .send(var reply) = try r.receive(i.start()) else { return }
            reply[index] ^= 0x20
            #expect(throws: MeshError.self) { try i.receive(reply) }
        }
        _ = m2
    }

    @Test func replayedFinishIsRefusedByANewResponder() throws {
        var i = HandshakeStateMachine(role: .initiator, identity: alice, farmKey: farm)
        var r = HandshakeStateMachine(role: .responder, identity: bob, farmKey: farm)
        let m1 = i.start()
        guard case .send(let m2) = try r.receive(m1), case .sendAndComplete(let m3, _) = try i.receive(m2) else {
            return
        }
        // A recorded msg1 + msg3 replayed against a fresh responder: its new ephemeral key changes the transcript.
        var r2 = HandshakeStateMachine(role: .responder, identity: bob, farmKey: farm)
        _ = try r2.receive(m1)
        #expect(throws: MeshError.self) { try r2.receive(m3) }
    }

    @Test func impostorAtABeaconAddressIsRefused() {
        #expect(throws: MeshError.self) { try handshake(expected: NodeIdentity.generate().publicKey) }
    }

    @Test func deniedIdentityIsRefused() {
        let aliceKey = alice.publicKey
        #expect(throws: MeshError.self) { try handshake(authorize: { $0 != aliceKey }) }
    }

    @Test func outOfOrderMessagesAreRefused() {
        var r = HandshakeStateMachine(role: .responder, identity: bob, farmKey: farm)
        #expect(throws: MeshError.self) { try r.receive([UInt8](repeating: 0, count: HandshakeStateMachine.msg3Bytes)) }
        var i = HandshakeStateMachine(role: .initiator, identity: alice, farmKey: farm)
        #expect(throws: MeshError.self) { try i.receive([1, 2, 3]) }
    }

    @Test func streamRejectsTamperReplayReorderAndTruncation() throws {
        let (ik, _) = try handshake()
        let frames = (0..<3).map { ik.push.seal([UInt8]($0..<($0 + 10))) }
        func fresh() throws -> (SessionKeys, SessionKeys) { try handshake() }
        // tamper
        do {
            let (a, b) = try fresh()
            var c = a.push.seal([1, 2, 3])
            c[5] ^= 1
            #expect(b.pull.open(c) == nil)
            #expect(b.pull.open(a.push.seal([4])) == nil)  // a failed stream stays failed
        }
        // replay
        do {
            let (a, b) = try fresh()
            let c = a.push.seal([1])
            #expect(b.pull.open(c) == [1])
            #expect(b.pull.open(c) == nil)
        }
        // reorder
        do {
            let (a, b) = try fresh()
            let c1 = a.push.seal([1])
            let c2 = a.push.seal([2])
            #expect(b.pull.open(c2) == nil)
            _ = c1
        }
        // truncation
        do {
            let (a, b) = try fresh()
            let c = a.push.seal([1, 2, 3, 4])
            #expect(b.pull.open(Array(c.dropLast())) == nil)
            #expect(b.pull.open([]) == nil)
        }
        #expect(frames.count == 3)
    }
}

/// The outcome of an already-settled future, without blocking (nil while pending).
func peek<T: Sendable>(_ future: EventLoopFuture<T>) -> Result<T, any Error>? {
    let box = Mutex<Result<T, any Error>?>(nil)
    future.whenComplete { result in box.withLock { $0 = result } }
    return box.withLock { $0 }
}

/// Both ends of a connection on `EmbeddedChannel`s, with bytes shuttled between them by hand.
@Suite struct PipelineTests {
    let farm = FarmKey.generate()

    func makePair(responderKey: FarmKey? = nil) throws -> (
        EmbeddedChannel, EmbeddedChannel, EventLoopFuture<PeerIdentity>, EventLoopFuture<PeerIdentity>
    ) {
        let a = EmbeddedChannel()
        let b = EmbeddedChannel()
        let pa = ConnectionPipeline(
            identity: .generate(), farmKey: farm, maxFrame: 1 << 16, handshakeTimeout: .seconds(5),
            counters: nil, authorize: { _ in true })
        let pb = ConnectionPipeline(
            identity: .generate(), farmKey: responderKey ?? farm, maxFrame: 1 << 16,
            handshakeTimeout: .seconds(5), counters: nil, authorize: { _ in true })
        let fb = try pb.install(on: b, role: .responder, expectedPeer: nil)
        let fa = try pa.install(on: a, role: .initiator, expectedPeer: nil)
        try b.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        try a.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        return (a, b, fa, fb)
    }

    /// Moves outbound bytes of each channel into the other until both are quiet.
    func shuttle(_ a: EmbeddedChannel, _ b: EmbeddedChannel) throws {
        var moved = true
        var rounds = 0
        while moved && rounds < 100 {
            moved = false
            rounds += 1
            while let out = try a.readOutbound(as: ByteBuffer.self) {
                moved = true
                try b.writeInbound(out)
            }
            while let out = try b.readOutbound(as: ByteBuffer.self) {
                moved = true
                try a.writeInbound(out)
            }
        }
    }

    @Test func messagesFlowBothWaysAfterTheHandshake() throws {
        let (a, b, fa, fb) = try makePair()
        // Written before the handshake finishes: held, then encrypted.
        a.writeAndFlush(MeshMessage.raft([1, 2, 3]), promise: nil)
        try shuttle(a, b)
        #expect((try? peek(fa)?.get())?.publicKey.count == 32)
        #expect((try? peek(fb)?.get())?.publicKey.count == 32)
        #expect(try b.readInbound(as: MeshMessage.self) == .raft([1, 2, 3]))
        b.writeAndFlush(MeshMessage.pong(5), promise: nil)
        try shuttle(a, b)
        #expect(try a.readInbound(as: MeshMessage.self) == .pong(5))
        _ = try? a.finish()
        _ = try? b.finish()
    }

    @Test func peerOfAnotherFarmIsDisconnected() throws {
        let (a, b, fa, fb) = try makePair(responderKey: FarmKey.generate())
        do { try shuttle(a, b) } catch {}
        #expect((try? peek(fa)?.get()) == nil)
        #expect(throws: (any Error).self) { try peek(fb)?.get() }
        #expect(!b.isActive)
        _ = try? a.finish()
        _ = try? b.finish()
    }

    @Test func tamperedCiphertextClosesTheConnection() throws {
        let (a, b, _, _) = try makePair()
        try shuttle(a, b)
        a.writeAndFlush(MeshMessage.raft([9, 9]), promise: nil)
        var bytes: [UInt8] = []
        while var out = try a.readOutbound(as: ByteBuffer.self) { bytes += out.readBytes(length: out.readableBytes)! }
        bytes[bytes.count - 1] ^= 1
        #expect(throws: (any Error).self) { try b.writeInbound(ByteBuffer(bytes: bytes)) }
        #expect(!b.isActive)
        _ = try? a.finish()
        _ = try? b.finish()
    }

    @Test func junkInsteadOfAHandshakeClosesTheConnection() throws {
        let (_, b, _, fb) = try makePair()
        var junk = ByteBuffer()
        junk.writeInteger(UInt32(5))
        junk.writeBytes([1, 2, 3, 4, 5])
        #expect(throws: (any Error).self) { try b.writeInbound(junk) }
        #expect(throws: (any Error).self) { try peek(fb)?.get() }
        #expect(!b.isActive)
        _ = try? b.finish()
    }

    @Test func stalledHandshakeTimesOut() throws {
        let b = EmbeddedChannel()
        let counters = MeshCounters()
        let pb = ConnectionPipeline(
            identity: .generate(), farmKey: farm, maxFrame: 1024, handshakeTimeout: .seconds(2),
            counters: counters, authorize: { _ in true })
        let fb = try pb.install(on: b, role: .responder, expectedPeer: nil)
        try b.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        b.embeddedEventLoop.advanceTime(by: .seconds(3))
        #expect(throws: MeshError.self) { try peek(fb)?.get() }
        #expect(counters[.handshakeTimeouts] == 1)
        #expect(!b.isActive)
        _ = try? b.finish()
    }
}
