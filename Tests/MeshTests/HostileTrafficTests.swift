import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import Mesh

/// A raw TCP client: sends `bytes`, then reports whether the server closed the connection within `seconds`.
func serverCloses(port: Int, sending bytes: [UInt8], within seconds: Int64) async throws -> Bool {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port).get()
    if !bytes.isEmpty {
        do {
            try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
        } catch {
            // The server closed the connection before (or while) the bytes went out: closed is the answer, as long
            // as the channel really is closed.
            try? await channel.closeFuture.get()
            return true
        }
    }
    let closed = channel.eventLoop.makePromise(of: Bool.self)
    channel.closeFuture.whenComplete { _ in closed.succeed(true) }
    let timer = channel.eventLoop.scheduleTask(in: .seconds(seconds)) { closed.succeed(false) }
    let result = try await closed.futureResult.get()
    timer.cancel()
    try? await channel.close()
    return result
}

/// Sends datagrams to the test group from 127.0.0.1 with TTL 0: they never leave the host.
func sendDatagrams(_ datagrams: [[UInt8]], group: String, port: Int) async throws {
    let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .bind(host: "127.0.0.1", port: 0).get()
    let provider = channel as! SocketOptionProvider
    var loopback = in_addr()
    inet_pton(AF_INET, "127.0.0.1", &loopback)
    try await provider.setIPMulticastIF(loopback).get()
    try await provider.setIPMulticastTTL(0).get()
    try await provider.setIPMulticastLoop(1).get()
    let target = try SocketAddress(ipAddress: group, port: port)
    for (i, datagram) in datagrams.prefix(1000).enumerated() {
        try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: ByteBuffer(bytes: datagram)))
            .get()
        if i % 20 == 19 { try await Task.sleep(for: .milliseconds(20)) }  // stay under the receive buffer
    }
    try await channel.close()
}

@Suite(.serialized) struct HostileTrafficTests {
    @Test(.timeLimit(.minutes(1))) func listenerSurvivesJunkHugeFramesStallsAndStrangers() async throws {
        let farm = TestFarm()
        let a = farm.node("a")
        let b = farm.node("b")
        try await withRunning([a]) {
            let port = try await a.listeningPort()
            // Junk: a plausible length followed by noise is not a handshake.
            #expect(try await serverCloses(port: port, sending: [0, 0, 0, 8] + Sodium.randomBytes(8), within: 3))
            #expect(try await serverCloses(port: port, sending: Sodium.randomBytes(300), within: 3))
            // A huge length prefix is refused before anything is allocated.
            #expect(try await serverCloses(port: port, sending: [0xff, 0xff, 0xff, 0xff], within: 3))
            #expect(a.counters[.framesTooLarge] >= 1)
            // A client that stalls in the handshake is cut off by the timeout (2 s in tests).
            #expect(try await serverCloses(port: port, sending: [], within: 4))
            #expect(a.counters[.handshakeTimeouts] >= 1)
            // Another farm's node: correct shape, wrong fingerprint.
            var other = HandshakeStateMachine(role: .initiator, identity: .generate(), farmKey: .generate())
            let hello = other.start()
            #expect(try await serverCloses(port: port, sending: [0, 0, 0, UInt8(hello.count)] + hello, within: 3))

            // Hostile datagrams on the discovery group.
            let codec = BeaconCodec(farmKey: farm.key)
            let fake = NodeIdentity.generate()
            let legit = codec.seal(
                Beacon(
                    publicKey: fake.publicKey, instanceID: 1, sequence: 1,
                    timeMillis: UInt64(Date().timeIntervalSince1970 * 1000), tcpPort: 1, name: "replayed", status: []))
            var datagrams: [[UInt8]] = (0..<50).map { _ in Sodium.randomBytes(Int.random(in: 0...1400)) }
            for i in 0..<40 {
                var flipped = legit
                flipped[Int.random(in: 17..<flipped.count)] ^= UInt8(1 << (i % 8))
                datagrams.append(flipped)
            }
            datagrams += Array(repeating: legit, count: 20)
            datagrams += (0..<10).map { _ in
                BeaconCodec(farmKey: .generate()).seal(
                    Beacon(
                        publicKey: fake.publicKey, instanceID: 1, sequence: 1, timeMillis: 1, tcpPort: 1, name: "",
                        status: []))
            }
            let stale = codec.seal(
                Beacon(
                    publicKey: NodeIdentity.generate().publicKey, instanceID: 1, sequence: 1, timeMillis: 1, tcpPort: 1,
                    name: "stale", status: []))
            datagrams += Array(repeating: stale, count: 5)
            try await sendDatagrams(datagrams, group: farm.group, port: farm.port)
            #expect(await eventually(15) { a.counters[.beaconsReplayed] >= 15 })
            #expect(await eventually(15) { a.counters[.beaconsStale] >= 3 })
            #expect(a.counters[.beaconsBadAuth] + a.counters[.beaconsGarbage] >= 60)
            #expect(a.counters[.beaconsOtherFarm] >= 5)

            // A real peer still gets in, and the only peers are ones with valid beacons.
            try await withRunning([b]) {
                #expect(await eventually { await a.connectedPeers() == [b.nodeID] })
                try await a.send(to: b.nodeID, .raft([1]))
                var iterator = b.incoming.makeAsyncIterator()
                #expect(await iterator.next()?.message == .raft([1]))
            }
            let ids = Set(await a.peers().map(\.nodeID))
            #expect(ids.isSubset(of: [b.nodeID, fake.nodeID]))
            #expect(ids.contains(b.nodeID))
        }
    }

    /// After a rotation, beacons sealed with the old key — forged by a holder of the old token, or a member's
    /// identity replayed under it — create no peer, while the members go on under the new key.
    @Test(.timeLimit(.minutes(1))) func oldKeyBeaconsAfterARotationCreateNoPeer() async throws {
        let farm = TestFarm()
        let a = farm.node("a")
        let b = farm.node("b")
        try await withRunning([a, b]) {
            #expect(await eventually { await a.connectedPeers() == [b.nodeID] })
            let newKey = FarmKey.generate()
            for node in [a, b] {
                node.setKeyRing(node.keyRing.rotated(to: newKey, epoch: 1))
                let peer = node === a ? b.identity.publicKey : a.identity.publicKey
                node.setMembership { $0 == peer }
            }
            let old = BeaconCodec(farmKey: farm.key, epoch: 0)
            let now = UInt64(Date().timeIntervalSince1970 * 1000)
            let forger = NodeIdentity.generate()
            var datagrams: [[UInt8]] = (0..<20).map { i in
                old.seal(
                    Beacon(
                        publicKey: forger.publicKey, instanceID: 5, sequence: UInt64(i + 1), timeMillis: now,
                        tcpPort: 1, name: "forged", status: []))
            }
            // Claiming the new epoch in the clear header does not make the old key authenticate.
            datagrams += datagrams.prefix(5).map { d in
                var lying = d
                lying[5..<9] = [0, 0, 0, 1]
                return lying
            }
            try await sendDatagrams(datagrams, group: farm.group, port: farm.port)
            #expect(await eventually(15) { a.counters[.beaconsOldEpoch] + a.counters[.beaconsBadAuth] >= 20 })
            #expect(await eventually(15) { await a.peers().contains { $0.nodeID == b.nodeID && $0.state == .alive } })
            let ids = Set(await a.peers().map(\.nodeID))
            #expect(!ids.contains(forger.nodeID))
            #expect(ids == [b.nodeID])
            #expect(a.keyRing.epoch == 1)
        }
    }

    /// Anyone holding the current key can seal a beacon claiming any epoch in its clear header; a live member (its
    /// epochs come from its log) neither moves to it nor hears the forger, and keeps its peer.
    @Test(.timeLimit(.minutes(1))) func aForgedHigherEpochBeaconMovesNoMemberOffTheFarmsEpoch() async throws {
        let farm = TestFarm()
        let a = farm.node("a")
        let b = farm.node("b")
        try await withRunning([a, b]) {
            #expect(await eventually { await a.connectedPeers() == [b.nodeID] })
            let newKey = FarmKey.generate()
            for node in [a, b] {
                node.setKeyRing(node.keyRing.rotated(to: newKey, epoch: 2))
                node.stopLearningEpochs()
            }
            let now = UInt64(Date().timeIntervalSince1970 * 1000)
            let forger = NodeIdentity.generate()
            let datagrams: [[UInt8]] = [UInt32.max, UInt32.max - 1, 3].enumerated().map { i, epoch in
                BeaconCodec(farmKey: newKey, epoch: epoch).seal(
                    Beacon(
                        publicKey: forger.publicKey, instanceID: 9, sequence: UInt64(i + 1), timeMillis: now,
                        tcpPort: 1, name: "forged", status: []))
            }
            let before = a.counters[.beaconsOtherFarm] + a.counters[.beaconsBadAuth]
            try await sendDatagrams(datagrams, group: farm.group, port: farm.port)
            #expect(await eventually(15) { a.counters[.beaconsOtherFarm] + a.counters[.beaconsBadAuth] >= before + 3 })
            #expect(a.keyRing.epoch == 2 && b.keyRing.epoch == 2)
            #expect(!(await a.peers().contains { $0.nodeID == forger.nodeID }))
            // The two still hear each other under the farm's real epoch.
            let heard = a.counters[.beaconsAccepted]
            #expect(await eventually(15) { a.counters[.beaconsAccepted] > heard })
            #expect(await a.peers().contains { $0.nodeID == b.nodeID && $0.state == .alive })
        }
    }

    @Test(.timeLimit(.minutes(1))) func floodOfIdleConnectionsIsCappedNotHeld() async throws {
        let farm = TestFarm()
        var settings = farm.settings(name: "a")
        settings.maxPendingHandshakes = 2
        let a = MeshNode(settings: settings, farmKey: farm.key, identity: .generate())
        try await withRunning([a]) {
            let port = try await a.listeningPort()
            var idle: [Channel] = []
            for _ in 0..<2 {
                idle.append(
                    try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                        .connect(host: "127.0.0.1", port: port).get())
            }
            try await Task.sleep(for: .milliseconds(200))
            // The third is closed at once, long before the 2 s handshake timeout.
            #expect(try await serverCloses(port: port, sending: [], within: 1))
            #expect(a.counters[.connectionsRefused] >= 1)
            for channel in idle { try? await channel.close() }
            // Slots come back: a real peer gets in.
            let b = farm.node("b")
            try await withRunning([b]) {
                #expect(await eventually { await a.connectedPeers() == [b.nodeID] })
            }
        }
    }
}
