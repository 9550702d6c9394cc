import Foundation
import Testing

@testable import Mesh

/// Hostile traffic under an old key after a rotation: captured or forged beacons of the old epoch create no peer,
/// handshakes under it fail, and only a member heard on it becomes a laggard to hand the key to.
@Suite struct KeyEpochTests {
    let oldKey = FarmKey.generate()
    let newKey = FarmKey.generate()
    let member = NodeIdentity.generate()
    let stranger = NodeIdentity.generate()

    func beacon(_ who: NodeIdentity, seq: UInt64 = 1, time: UInt64 = 1_000_000) -> Beacon {
        Beacon(
            publicKey: who.publicKey, instanceID: 9, sequence: seq, timeMillis: time, tcpPort: 4242, name: "x",
            status: [])
    }

    /// A node that rotated to epoch 1 (the overlap long over), knowing `member` as a member.
    func rotatedCore() -> (DiscoveryCore, KeyState) {
        let keys = KeyState(FarmKeyRing(epoch: 1, current: newKey, retired: [0: oldKey]))
        let memberKey = member.publicKey
        keys.setMembership { $0 == memberKey }
        return (DiscoveryCore(keys: keys, ownKey: NodeIdentity.generate().publicKey, settings: .init()), keys)
    }

    func feed(_ core: inout DiscoveryCore, _ datagram: [UInt8], counters: MeshCounters, wall: UInt64 = 1_000_000)
        -> [PeerChange]
    {
        core.onDatagram(
            datagram, host: "127.0.0.1", now: .now, nowMillis: wall, counters: counters, isDenied: { _, _ in false })
    }

    @Test func oldEpochBeaconsCreateNoPeerAndOnlyAMemberBecomesALaggard() {
        var (core, _) = rotatedCore()
        let counters = MeshCounters()
        let old = BeaconCodec(farmKey: oldKey, epoch: 0)
        // Forged by a holder of the old token (a stranger's identity), and a member's captured beacon replayed.
        let forged = old.seal(beacon(stranger))
        let captured = old.seal(beacon(member))
        #expect(feed(&core, forged, counters: counters).isEmpty)
        #expect(feed(&core, captured, counters: counters).isEmpty)
        #expect(feed(&core, captured, counters: counters).isEmpty)
        // The forged header claiming the new epoch under the old key does not authenticate either.
        var lying = old.seal(beacon(stranger, seq: 2))
        lying[5..<9] = [0, 0, 0, 1]
        #expect(feed(&core, lying, counters: counters).isEmpty)
        #expect(core.table.peers.isEmpty)
        #expect(counters[.beaconsAccepted] == 0)
        // Only the member, once (the replay is not a second hand-over), is a laggard to hand the key to.
        #expect(core.laggards.map(\.publicKey) == [member.publicKey])
        // The current epoch still works.
        #expect(
            feed(&core, BeaconCodec(farmKey: newKey, epoch: 1).seal(beacon(stranger, seq: 5)), counters: counters).count
                == 1)
    }

    @Test func aRevokedMemberIsNotHeardEvenWithTheCurrentKey() {
        var (core, keys) = rotatedCore()
        keys.setRevoked([member.nodeID])
        let counters = MeshCounters()
        #expect(feed(&core, BeaconCodec(farmKey: newKey, epoch: 1).seal(beacon(member)), counters: counters).isEmpty)
        #expect(
            feed(&core, BeaconCodec(farmKey: oldKey, epoch: 0).seal(beacon(member, seq: 2)), counters: counters).isEmpty
        )
        #expect(core.table.peers.isEmpty && core.laggards.isEmpty)
    }

    @Test func aTokenHolderLearnsTheEpochFromTheFirstAuthenticBeacon() {
        let keys = KeyState(FarmKeyRing(current: newKey))
        var core = DiscoveryCore(keys: keys, ownKey: NodeIdentity.generate().publicKey, settings: .init())
        let counters = MeshCounters()
        #expect(feed(&core, BeaconCodec(farmKey: newKey, epoch: 3).seal(beacon(member)), counters: counters).count == 1)
        #expect(keys.ring.epoch == 3)
        #expect(core.codec.epoch == 3)
    }

    @Test func aNodeWithALogTakesNoEpochFromABeaconHeader() {
        // Anyone holding the key can seal a beacon claiming any epoch; a member's epochs come from its log.
        let keys = KeyState(FarmKeyRing(current: newKey))
        keys.stopLearningEpochs()
        var core = DiscoveryCore(keys: keys, ownKey: NodeIdentity.generate().publicKey, settings: .init())
        let counters = MeshCounters()
        #expect(feed(&core, BeaconCodec(farmKey: newKey, epoch: 7).seal(beacon(member)), counters: counters).isEmpty)
        #expect(keys.ring.epoch == 0)
        // The last epoch is never learnt (a rotation after it would overflow).
        let fresh = KeyState(FarmKeyRing(current: newKey))
        fresh.learnEpoch(.max)
        #expect(fresh.ring.epoch == 0)
    }

    @Test func handshakesUnderTheOldKeyFailAfterTheOverlapAndOnlyMembersPassDuringIt() throws {
        func run(initiatorKey: FarmKey, older: [FarmKey], isMember: @escaping @Sendable ([UInt8]) -> Bool) throws {
            var i = HandshakeStateMachine(role: .initiator, identity: stranger, farmKey: initiatorKey)
            var r = HandshakeStateMachine(
                role: .responder, identity: member, farmKey: newKey, olderKeys: older, isMember: isMember)
            guard case .send(let m2) = try r.receive(i.start()) else { throw MeshError(.protocolViolation, "no m2") }
            guard case .sendAndComplete(let m3, _) = try i.receive(m2) else {
                throw MeshError(.protocolViolation, "no m3")
            }
            _ = try r.receive(m3)
        }
        // After the overlap (no older keys accepted): the old key opens nothing.
        #expect(throws: MeshError.self) { try run(initiatorKey: oldKey, older: [], isMember: { _ in true }) }
        // During it: a non-member holding the old token is refused; a member passes.
        #expect(throws: MeshError.self) { try run(initiatorKey: oldKey, older: [oldKey], isMember: { _ in false }) }
        try run(initiatorKey: oldKey, older: [oldKey], isMember: { _ in true })
        try run(initiatorKey: newKey, older: [], isMember: { _ in false })
    }

    @Test func aKeySealedToAnIdentityOpensOnlyThere() throws {
        let box = try #require(NodeIdentity.seal(Array("key".utf8), to: member.publicKey))
        #expect(member.openSealed(box) == Array("key".utf8))
        #expect(stranger.openSealed(box) == nil)
        var bent = box
        bent[bent.count - 1] ^= 1
        #expect(member.openSealed(bent) == nil)
    }

    @Test func theRingSurvivesItsFile() throws {
        let path = "/tmp/rex-keyring-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let ring = FarmKeyRing(current: oldKey).rotated(to: newKey, epoch: 1)
        try ring.save(to: path)
        let loaded = FarmKeyRing.load(from: path, current: newKey)
        #expect(loaded == ring)
        #expect(loaded.isRetired(oldKey) && !loaded.isRetired(newKey))
        #expect(FarmKeyRing.load(from: path, current: FarmKey.generate()).epoch == 0)
    }
}
