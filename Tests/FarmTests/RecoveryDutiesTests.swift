import Mesh
import Testing

@testable import Farm

/// The leader of a recovered farm and the machines from before its recovery (`rexnode recover`).
@Suite("LeaderDuties: after a recovery")
struct RecoveryDutiesTests {
    typealias Peer = LeaderDuties.Peer

    func peer(
        _ id: String, role: NodeStatus.Role, hasLog: Bool = true, epoch: UInt64? = nil, instance: UInt64 = 7,
        connected: Bool = true
    ) -> Peer {
        Peer(
            id: id, name: "name-\(id)", state: .alive,
            announced: NodeStatus(role: role, slots: 1, hasLog: hasLog, task: nil, epoch: epoch), instance: instance,
            connected: connected)
    }

    @Test func aMachineFromBeforeTheRecoveryIsToldItsLogIsStaleThenAddedFreshOnceItStartsOver() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60))
        let stale = peer("c", role: .candidate)
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "b", members: ["b"], peers: [stale], open: [], epoch: 1_000_005)
                == [.tellStale(id: "c", instance: 7, epoch: 1_000_005)])
        // Not again at once (it is starting over), but again if it is still there seconds later.
        #expect(
            d.onTick(
                now: .seconds(1), nowMs: 0, selfID: "b", members: ["b"], peers: [stale], open: [], epoch: 1_000_005)
                == [])
        #expect(
            d.onTick(
                now: .seconds(5), nowMs: 0, selfID: "b", members: ["b"], peers: [stale], open: [], epoch: 1_000_005)
                == [.tellStale(id: "c", instance: 7, epoch: 1_000_005)])
        // Started over: an empty log, so it is added as any fresh node.
        let fresh = peer("c", role: .joining, hasLog: false)
        #expect(
            d.onTick(
                now: .seconds(6), nowMs: 0, selfID: "b", members: ["b"], peers: [fresh], open: [], epoch: 1_000_005)
                == [.addMember(id: "c", name: "name-c", voter: true)])
    }

    /// A machine that left (or was evicted) before the recovery and asks to join again still has its old log: it is
    /// never added with it (the recovered leader would have to overwrite entries that log holds as committed); it
    /// starts over like any other machine from before the recovery, and is added once its log is empty.
    @Test func aMachineAskingToJoinWithALogFromBeforeTheRecoveryIsToldToStartOverNotAdded() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60))
        let rejoining = peer("c", role: .joining, instance: 41)
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "b", members: ["b"], peers: [rejoining], open: [], epoch: 1_000_005)
                == [.tellStale(id: "c", instance: 41, epoch: 1_000_005)])
        #expect(
            d.onTick(
                now: .seconds(1), nowMs: 0, selfID: "b", members: ["b"], peers: [rejoining], open: [],
                epoch: 1_000_005) == [])
        // With a log of this epoch (it left the recovered farm and comes back) it is added as before.
        let current = peer("c", role: .joining, epoch: 1_000_005)
        #expect(
            d.onTick(
                now: .seconds(2), nowMs: 0, selfID: "b", members: ["b"], peers: [current], open: [], epoch: 1_000_005)
                == [.addMember(id: "c", name: "name-c", voter: true)])
    }

    /// A fresh machine is added only once the leader has a connection to it: a member it cannot reach yet would
    /// count in the quorum at once (in a farm of one, nothing commits and check-quorum deposes the leader).
    @Test func aFreshMachineIsAddedOnlyOnceConnected() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60))
        let unreachable = peer("c", role: .joining, hasLog: false, connected: false)
        #expect(d.onTick(now: .zero, nowMs: 0, selfID: "b", members: ["b"], peers: [unreachable], open: []) == [])
        let reachable = peer("c", role: .joining, hasLog: false)
        #expect(
            d.onTick(now: .seconds(1), nowMs: 0, selfID: "b", members: ["b"], peers: [reachable], open: [])
                == [.addMember(id: "c", name: "name-c", voter: true)])
    }

    @Test func membersJoiningOrLeavingNodesAndFarmsNeverRecoveredAreNotToldAnything() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60))
        let member = peer("a", role: .follower)
        let leaving = peer("d", role: .leaving)
        let current = peer("e", role: .follower, epoch: 7)
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "b", members: ["a", "b"], peers: [member, leaving, current], open: [],
                epoch: 7) == [])
        // A farm that was never recovered (epoch 0) keeps its old rules: a stranger with a log is left alone.
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "b", members: ["b"], peers: [peer("c", role: .candidate)], open: [])
                == [])
    }

    @Test func theEpochTravelsInBeaconsAndAnOldStatusWithoutOneReadsAsZero() {
        let status = NodeStatus(role: .leader, slots: 2, hasLog: true, task: nil, epoch: 1_000_002)
        #expect(NodeStatus(bytes: status.encoded())?.epoch == 1_000_002)
        let old = Array(#"{"r":"follower","s":1,"m":true}"#.utf8)
        #expect(NodeStatus(bytes: old)?.epoch == nil)
        let never = NodeStatus(role: .follower, slots: 1, hasLog: true, task: nil, epoch: 0).encoded()
        #expect(!String(decoding: never, as: UTF8.self).contains(#""e""#), "a farm never recovered sends no epoch")
    }

    @Test func theStaleRequestRoundTrips() throws {
        let request = PeerRequest.stale(epoch: 1_000_002, instance: 0xDEAD_BEEF_0000_0001)
        #expect(try PeerRequest(bytes: request.encoded()) == request)
        #expect(throws: FarmError.self) { try PeerRequest(bytes: Array(request.encoded().dropLast())) }
    }
}
