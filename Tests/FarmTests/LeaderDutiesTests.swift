import Ledger
import Mesh
import Render
import Testing

@testable import Farm

@Suite("LeaderDuties")
struct LeaderDutiesTests {
    typealias Peer = LeaderDuties.Peer

    func peer(_ id: String, _ state: PeerState = .alive, role: NodeStatus.Role = .follower, hasLog: Bool = true)
        -> Peer
    {
        Peer(
            id: id, name: "name-\(id)", state: state,
            announced: NodeStatus(role: role, slots: 1, hasLog: hasLog, task: nil))
    }

    func assignment(_ id: String, node: String, lease: Int64 = 10_000) -> AssignmentRecord {
        AssignmentRecord(assignment: id, job: "j1", node: node, term: 1, leaseUntilMs: lease, pendingFrames: [1])
    }

    var duties: LeaderDuties { LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60)) }

    @Test func addsOneFreshOrRejoiningNodeAtATimeButNeverOneThatIsLeaving() {
        var d = duties
        let members: Set<String> = ["a"]
        let fresh = peer("b", hasLog: false)
        let back = peer("c", role: .joining)
        let leaving = peer("d", role: .leaving)
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "a", members: members, peers: [leaving, fresh, back], open: [])
                == [.addMember(id: "b", name: "name-b", voter: true)])
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "a", members: ["a", "b"], peers: [leaving, fresh, back], open: [])
                == [.addMember(id: "c", name: "name-c", voter: true)])
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "a", members: ["a", "b", "c"], peers: [leaving], open: []) == [])
        // A suspect or dead stranger is not added.
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "a", members: members, peers: [peer("e", .suspect, hasLog: false)],
                open: []) == [])
    }

    /// `rexnode revoke` denies an identity first: whatever it announces afterwards (fresh, joining), no leader adds it.
    @Test func aRevokedMachineIsNeverAddedWhateverItAnnounces() {
        var d = duties
        let revoked: Set<String> = ["b", "c"]
        let peers = [peer("b", hasLog: false), peer("c", role: .joining), peer("e", hasLog: false)]
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "a", members: ["a"], peers: peers, open: [], revoked: revoked)
                == [.addMember(id: "e", name: "name-e", voter: true)])
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "a", members: ["a", "e"], peers: peers, open: [], revoked: revoked)
                == [])
    }

    @Test func aDeadMembersFramesGoBackAndItIsEvictedOnlyAfterTheEvictionDelay() {
        var d = duties
        let members: Set<String> = ["a", "b"]
        let open = [assignment("x", node: "b"), assignment("y", node: "a")]
        let out = d.onTick(now: .zero, nowMs: 0, selfID: "a", members: members, peers: [peer("b", .dead)], open: open)
        #expect(out == [.release([ReleaseFrames(assignment: "x", reason: "node b is dead")])])
        #expect(
            d.onTick(now: .seconds(59), nowMs: 0, selfID: "a", members: members, peers: [peer("b", .dead)], open: [])
                == [])
        #expect(
            d.onTick(now: .seconds(61), nowMs: 0, selfID: "a", members: members, peers: [peer("b", .dead)], open: [])
                == [.removeMember(id: "b")])
    }

    @Test func aMemberComingBackToLifeIsNotEvicted() {
        var d = duties
        let members: Set<String> = ["a", "b"]
        _ = d.onTick(now: .zero, nowMs: 0, selfID: "a", members: members, peers: [peer("b", .dead)], open: [])
        _ = d.onTick(now: .seconds(30), nowMs: 0, selfID: "a", members: members, peers: [peer("b")], open: [])
        #expect(
            d.onTick(now: .seconds(61), nowMs: 0, selfID: "a", members: members, peers: [peer("b", .dead)], open: [])
                == [])
    }

    @Test func aMemberNeverHeardFromCountsAsDeadOnlyAfterTheLeaderListenedLongEnough() {
        var d = duties
        let members: Set<String> = ["a", "b"]
        let open = [assignment("x", node: "b")]
        #expect(d.onTick(now: .seconds(100), nowMs: 0, selfID: "a", members: members, peers: [], open: open) == [])
        #expect(
            d.onTick(now: .seconds(111), nowMs: 0, selfID: "a", members: members, peers: [], open: open)
                == [.release([ReleaseFrames(assignment: "x", reason: "node b is dead")])])
        // Stepping down forgets it: a new term listens again before judging.
        d.stepDown()
        #expect(d.onTick(now: .seconds(200), nowMs: 0, selfID: "a", members: members, peers: [], open: open) == [])
    }

    @Test func expiredLeasesAndNonMembersLoseTheirFramesEvenOnTheLeader() {
        var d = duties
        let open = [
            assignment("mine", node: "a", lease: 50), assignment("gone", node: "z"), assignment("fine", node: "b"),
        ]
        let out = d.onTick(
            now: .zero, nowMs: 100, selfID: "a", members: ["a", "b"], peers: [peer("b")], open: open)
        #expect(
            out == [
                .release([
                    ReleaseFrames(assignment: "mine", reason: "lease expired"),
                    ReleaseFrames(assignment: "gone", reason: "node z is dead"),
                ])
            ])
    }

    // MARK: Voters and learners

    @Test func newMachinesVoteUntilThereAreMaxVotersThenJoinAsLearners() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60), maxVoters: 3)
        let fresh = peer("d", hasLog: false)
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "a", members: ["a", "b"], peers: [peer("b"), fresh], open: [],
                voters: ["a", "b"]) == [.addMember(id: "d", name: "name-d", voter: true)])
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "a", members: ["a", "b", "c"], peers: [peer("b"), peer("c"), fresh],
                open: [], voters: ["a", "b", "c"]) == [.addMember(id: "d", name: "name-d", voter: false)])
    }

    @Test func aCaughtUpLiveLearnerIsPromotedWhileVotersAreMissingAndALaggingOneIsNot() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60), maxVoters: 3)
        let peers = [peer("b"), peer("c"), peer("d")]
        let members: Set<String> = ["a", "b", "c", "d"]
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: ["a", "b"],
                caughtUp: []) == [])
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: ["a", "b"],
                caughtUp: ["d", "c"]) == [.setVoter(id: "c", voter: true)])
        // At the count, nothing changes.
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: ["a", "b", "c"],
                caughtUp: ["d"]) == [])
    }

    @Test func aVoterDeadForThreeDeadAfterPeriodsGivesItsVoteToALiveLearnerAndIsEvictedLater() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(60), maxVoters: 3)
        let members: Set<String> = ["a", "b", "c", "d"]
        let peers = [peer("b", .dead), peer("c"), peer("d")]
        let voters: Set<String> = ["a", "b", "c"]
        _ = d.onTick(now: .zero, nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: voters)
        #expect(
            d.onTick(
                now: .seconds(29), nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: voters,
                caughtUp: ["d"]) == [])
        // No learner can take the vote: the dead voter keeps it.
        #expect(
            d.onTick(
                now: .seconds(31), nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: voters,
                caughtUp: []) == [])
        #expect(
            d.onTick(
                now: .seconds(32), nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: voters,
                caughtUp: ["d"]) == [.setVoter(id: "b", voter: false)])
        #expect(
            d.onTick(
                now: .seconds(33), nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: ["a", "c"],
                caughtUp: ["d"]) == [.setVoter(id: "d", voter: true)])
        #expect(
            d.onTick(
                now: .seconds(61), nowMs: 0, selfID: "a", members: members, peers: peers, open: [],
                voters: ["a", "c", "d"], caughtUp: []) == [.removeMember(id: "b")])
    }

    @Test func votersAboveTheCountAreDemotedDeadOnesFirstNeverTheLeader() {
        var d = LeaderDuties(deadAfter: .seconds(10), evictAfter: .seconds(600), maxVoters: 3)
        let members: Set<String> = ["a", "b", "c", "d", "e"]
        let peers = [peer("b"), peer("c", .dead), peer("d"), peer("e")]
        #expect(
            d.onTick(now: .zero, nowMs: 0, selfID: "a", members: members, peers: peers, open: [], voters: members)
                == [.setVoter(id: "c", voter: false)])
        #expect(
            d.onTick(
                now: .zero, nowMs: 0, selfID: "e", members: members, peers: [peer("a"), peer("b"), peer("d")],
                open: [], voters: ["a", "b", "d", "e"]) == [.setVoter(id: "d", voter: false)])
    }
}

@Suite("Peer protocol")
struct PeerProtocolTests {
    @Test func everyRequestSurvivesItsOwnEncoding() throws {
        let requests: [PeerRequest] = [
            .propose([[1, 2, 3], [], Array(repeating: 7, count: 70_000)]),
            .replicate(hash: "ab" + String(repeating: "0", count: 62), from: "0123456789abcdef"),
            .store(hash: "cd", bytes: Array(repeating: 9, count: 1000)),
            .leave(node: "0123456789abcdef"),
        ]
        for request in requests { #expect(try PeerRequest(bytes: request.encoded()) == request) }
        let answer = PeerAnswer(indexes: [1, 99, UInt64.max])
        #expect(try PeerAnswer(bytes: answer.encoded()) == answer)
    }

    @Test func truncatedOrPaddedOrUnknownRequestsAreRefusedInOneSentence() {
        let good = PeerRequest.replicate(hash: "ab", from: "n1").encoded()
        for bad in [[], [99], Array(good.dropLast()), good + [0], [1, 0xff, 0xff, 0xff, 0xff]] {
            #expect(throws: FarmError.self) { _ = try PeerRequest(bytes: bad) }
        }
        // A pushed blob larger than the inline limit is refused, not allocated.
        var huge = WireWriter()
        huge.u8(3)
        huge.short(Array("ab".utf8))
        huge.u32(UInt32(PeerRequest.inlineBlobLimit + 1))
        #expect(throws: FarmError.self) { _ = try PeerRequest(bytes: huge.bytes) }
        #expect(throws: FarmError.self) { _ = try PeerAnswer(bytes: [0, 0, 0, 2, 1]) }
    }

    @Test func aStatusTooLongForABeaconIsShortenedNeverCut() throws {
        let long = NodeStatus(role: .leader, slots: 4, hasLog: true, task: String(repeating: "j", count: 5000))
        let bytes = long.encoded()
        #expect(bytes.count <= Beacon.maxStatusBytes)
        let decoded = try #require(NodeStatus(bytes: bytes))
        #expect(decoded == NodeStatus(role: .leader, slots: 4, hasLog: true, task: nil))
        let short = NodeStatus(role: .joining, slots: 1, hasLog: false, task: "j1/3")
        #expect(NodeStatus(bytes: short.encoded()) == short)
        // The wire keys are the short ones older nodes read.
        #expect(String(decoding: short.encoded(), as: UTF8.self).contains("\"r\":\"joining\""))
    }
}

@Suite("Worker failure classification")
struct FailureClassificationTests {
    @Test func blendersErrorsSpendAttemptsAndOthersHandTheChunkBack() {
        #expect(
            WorkerPool.classify(RenderError(.badScene, "not a blend file"))
                == .spendAttempts(message: "not a blend file"))
        #expect(
            WorkerPool.classify(RenderError(.crashed, "Blender died"))
                == .spendAttempts(message: "Blender died"))
        #expect(
            WorkerPool.classify(FarmError(.notFound, "The scene of job j1 is not on this node."))
                == .handBack(reason: "The scene of job j1 is not on this node."))
        #expect(WorkerPool.classify(CancellationError()) == .handBack(reason: "CancellationError()"))
    }

    @Test func aFailureKeepsBlendersWordsAndNamesTheNode() {
        #expect(
            WorkerPool.naming("Blender could not load x.blend.", node: "attic")
                == "Blender could not load x.blend (on attic).")
        #expect(
            WorkerPool.naming("Build without OpenImageDenoiser", node: "n2")
                == "Build without OpenImageDenoiser (on n2)")
    }
}
