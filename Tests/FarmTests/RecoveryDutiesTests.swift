import Mesh
import Testing

@testable import Farm

/// The leader of a recovered farm and the machines from before its recovery (`rexnode recover`).
@Suite("LeaderDuties: after a recovery")
struct RecoveryDutiesTests {
    typealias Peer = LeaderDuties.Peer

    func peer(_ id: String, role: NodeStatus.Role, hasLog: Bool = true, epoch: UInt64? = nil) -> Peer {
        Peer(
            id: id, name: "name-\(id)", state: .alive,
            announced: NodeStatus(role: role, slots: 1, hasLog: hasLog, task: nil, epoch: epoch))
    }

    @Test func aMachineFromBeforeTheRecoveryIsToldItsLogIsStaleThenAddedFreshOnceItStartsOver() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60))
        let stale = peer("c", role: .candidate)
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "b", members: ["b"], peers: [stale], open: [], epoch: 1_000_005)
                == [.tellStale(id: "c", epoch: 1_000_005)])
        // Not again at once (it is starting over), but again if it is still there seconds later.
        #expect(
            d.onTick(
                now: .seconds(1), nowMs: 0, selfID: "b", members: ["b"], peers: [stale], open: [], epoch: 1_000_005)
                == [])
        #expect(
            d.onTick(
                now: .seconds(5), nowMs: 0, selfID: "b", members: ["b"], peers: [stale], open: [], epoch: 1_000_005)
                == [.tellStale(id: "c", epoch: 1_000_005)])
        // Started over: an empty log, so it is added as any fresh node.
        let fresh = peer("c", role: .joining, hasLog: false)
        #expect(
            d.onTick(
                now: .seconds(6), nowMs: 0, selfID: "b", members: ["b"], peers: [fresh], open: [], epoch: 1_000_005)
                == [.addMember(id: "c", name: "name-c")])
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
        let request = PeerRequest.stale(epoch: 1_000_002)
        #expect(try PeerRequest(bytes: request.encoded()) == request)
        #expect(throws: FarmError.self) { try PeerRequest(bytes: Array(request.encoded().dropLast())) }
    }
}
