import Testing

@testable import Mesh

@Suite struct BeaconTests {
    let key = FarmKey.generate()
    let identity = NodeIdentity.generate()

    func beacon(seq: UInt64 = 1, time: UInt64 = 1_000_000, instance: UInt64 = 7) -> Beacon {
        Beacon(
            publicKey: identity.publicKey, instanceID: instance, sequence: seq, timeMillis: time, tcpPort: 4242,
            name: "node-a", status: [1, 2, 3])
    }

    @Test func sealedBeaconOpensWithTheSameFarmKey() {
        let codec = BeaconCodec(farmKey: key)
        let sealed = codec.seal(beacon())
        #expect(codec.open(sealed) == .beacon(beacon()))
        #expect(Array(sealed.prefix(4)) == Array("RXB1".utf8))
    }

    @Test func everyFlippedBitIsRejected() {
        let codec = BeaconCodec(farmKey: key)
        let sealed = codec.seal(beacon())
        for i in 0..<sealed.count {
            for bit in [0, 3, 7] {
                var copy = sealed
                copy[i] ^= UInt8(1 << bit)
                if case .beacon = codec.open(copy) { Issue.record("flip at byte \(i) bit \(bit) accepted") }
            }
        }
    }

    @Test func anotherFarmsBeaconIsCountedAsOtherFarm() {
        let other = BeaconCodec(farmKey: FarmKey.generate())
        let sealed = other.seal(beacon())
        #expect(BeaconCodec(farmKey: key).open(sealed) == .otherFarm(fingerprint: other.fingerprint))
    }

    @Test func truncatedAndGarbageDatagramsAreGarbage() {
        let codec = BeaconCodec(farmKey: key)
        let sealed = codec.seal(beacon())
        for n in 0..<sealed.count {
            if case .beacon = codec.open(Array(sealed.prefix(n))) { Issue.record("prefix \(n) accepted") }
        }
        #expect(codec.open([]) == .garbage)
        #expect(codec.open([UInt8](repeating: 0x41, count: 2000)) == .garbage)
    }

    @Test func overlongNameAndStatusAreCut() {
        let codec = BeaconCodec(farmKey: key)
        var b = beacon()
        b.name = String(repeating: "n", count: 500)
        b.status = [UInt8](repeating: 9, count: 500)
        guard case .beacon(let opened) = codec.open(codec.seal(b)) else {
            Issue.record("not opened")
            return
        }
        #expect(opened.name.utf8.count == Beacon.maxNameBytes)
        #expect(opened.status.count == Beacon.maxStatusBytes)
    }

    @Test func replayGuardDropsRepeatsAndOldSequences() {
        var guardian = ReplayGuard(timeWindowMillis: 30_000)
        let now: UInt64 = 1_000_000
        #expect(guardian.check(beacon(seq: 10), nowMillis: now) == .fresh)
        #expect(guardian.check(beacon(seq: 10), nowMillis: now) == .replayed)
        #expect(guardian.check(beacon(seq: 8), nowMillis: now) == .fresh)  // late but unseen
        #expect(guardian.check(beacon(seq: 8), nowMillis: now) == .replayed)
        #expect(guardian.check(beacon(seq: 200), nowMillis: now) == .fresh)
        #expect(guardian.check(beacon(seq: 100), nowMillis: now) == .replayed)  // out of the 64 window
        #expect(guardian.check(beacon(seq: 201, time: now - 31_000), nowMillis: now) == .stale)
        #expect(guardian.check(beacon(seq: 202, time: now + 31_000), nowMillis: now) == .stale)
    }

    @Test func replayGuardAcceptsARestartButNotTheOldInstance() {
        var guardian = ReplayGuard()
        let now: UInt64 = 1_000_000
        #expect(guardian.check(beacon(seq: 50, time: now, instance: 1), nowMillis: now) == .fresh)
        #expect(guardian.check(beacon(seq: 1, time: now + 500, instance: 2), nowMillis: now + 500) == .fresh)
        #expect(guardian.check(beacon(seq: 51, time: now + 100, instance: 1), nowMillis: now + 600) == .replayed)
    }

    @Test func replayGuardMemoryIsBounded() {
        var guardian = ReplayGuard(capacity: 16)
        for _ in 0..<100 {
            let id = NodeIdentity.generate()
            let b = Beacon(
                publicKey: id.publicKey, instanceID: 1, sequence: 1, timeMillis: 5, tcpPort: 1, name: "", status: [])
            _ = guardian.check(b, nowMillis: 5)
        }
        #expect(guardian.trackedNodes == 16)
    }
}

@Suite struct PeerTableTests {
    let identity = NodeIdentity.generate()

    func beacon(status: [UInt8] = []) -> Beacon {
        Beacon(
            publicKey: identity.publicKey, instanceID: 1, sequence: 1, timeMillis: 1, tcpPort: 9000, name: "b",
            status: status)
    }

    @Test func silentPeerBecomesSuspectThenDeadThenAliveAgain() {
        var table = PeerTable()
        let t0 = ContinuousClock.now
        let added = table.onBeacon(beacon(), host: "127.0.0.1", now: t0)
        #expect(added.count == 1)
        #expect(added.first?.peer?.address == "127.0.0.1:9000")
        #expect(table.onTick(now: t0 + .seconds(2)).isEmpty)
        let suspect = table.onTick(now: t0 + .seconds(3))
        #expect(suspect == [.stateChanged(table.peers[identity.nodeID]!, from: .alive)])
        #expect(table.peers[identity.nodeID]?.state == .suspect)
        _ = table.onTick(now: t0 + .seconds(10))
        #expect(table.peers[identity.nodeID]?.state == .dead)
        let back = table.onBeacon(beacon(), host: "127.0.0.1", now: t0 + .seconds(11))
        #expect(back.count == 1)
        #expect(table.peers[identity.nodeID]?.state == .alive)
        _ = table.onTick(now: t0 + .seconds(400))
        #expect(table.peers.isEmpty)
    }

    @Test func statusChangeIsReportedAsUpdate() {
        var table = PeerTable()
        let t0 = ContinuousClock.now
        _ = table.onBeacon(beacon(), host: "127.0.0.1", now: t0)
        #expect(table.onBeacon(beacon(), host: "127.0.0.1", now: t0 + .seconds(1)).isEmpty)
        let changes = table.onBeacon(beacon(status: [4]), host: "127.0.0.1", now: t0 + .seconds(2))
        #expect(changes.count == 1)
        if case .updated(let p) = changes.first { #expect(p.status == [4]) } else { Issue.record("no update") }
    }

    @Test func configurableTimeouts() {
        var table = PeerTable(settings: .init(suspectAfter: .milliseconds(300), deadAfter: .seconds(1)))
        let t0 = ContinuousClock.now
        _ = table.onBeacon(beacon(), host: "127.0.0.1", now: t0)
        _ = table.onTick(now: t0 + .milliseconds(400))
        #expect(table.peers.values.first?.state == .suspect)
        _ = table.onTick(now: t0 + .milliseconds(1000))
        #expect(table.peers.values.first?.state == .dead)
    }

    @Test func discoveryCoreCountsEachKindOfDrop() {
        let key = FarmKey.generate()
        let counters = MeshCounters()
        var core = DiscoveryCore(farmKey: key, ownKey: NodeIdentity.generate().publicKey, settings: DiscoverySettings())
        let codec = BeaconCodec(farmKey: key)
        let now = ContinuousClock.now
        let wall: UInt64 = 1_000_000
        var b = beacon()
        b.timeMillis = wall
        let sealed = codec.seal(b)
        #expect(
            core.onDatagram(
                sealed, host: "127.0.0.1", now: now, nowMillis: wall, counters: counters, isDenied: { _, _ in false }
            ).count == 1)
        #expect(
            core.onDatagram(
                sealed, host: "127.0.0.1", now: now, nowMillis: wall, counters: counters, isDenied: { _, _ in false }
            ).isEmpty)
        var flipped = sealed
        flipped[60] ^= 1
        _ = core.onDatagram(
            flipped, host: "127.0.0.1", now: now, nowMillis: wall, counters: counters, isDenied: { _, _ in false })
        _ = core.onDatagram(
            [1, 2, 3], host: "127.0.0.1", now: now, nowMillis: wall, counters: counters, isDenied: { _, _ in false })
        let foreign = BeaconCodec(farmKey: FarmKey.generate()).seal(b)
        _ = core.onDatagram(
            foreign, host: "127.0.0.1", now: now, nowMillis: wall, counters: counters, isDenied: { _, _ in false })
        #expect(counters[.beaconsAccepted] == 1)
        #expect(counters[.beaconsReplayed] == 1)
        #expect(counters[.beaconsBadAuth] == 1)
        #expect(counters[.beaconsGarbage] == 1)
        #expect(counters[.beaconsOtherFarm] == 1)
        #expect(core.otherFarms(now: now, window: .seconds(30)) == 1)
        #expect(core.table.peers.count == 1)
    }
}
