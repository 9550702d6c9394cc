import Testing

@testable import Election

/// `rexnode recover` at the Raft level: a survivor of a lost quorum makes the members it can reach the whole
/// configuration, durably and at a term no stale machine can match, and the farm elects and commits again.
@Suite("RaftInstance: recovery after a lost quorum")
struct RecoveryTests {
    /// The farm elects a leader and commits one command; with `leaves`, one member that neither leads nor survives
    /// leaves (its removal commits), as `rexnode leave --force` does. Then every node but `survivor` is cut off (the
    /// leader dies) and the clock runs past the recovery quiet period, so `survivor` has known no leader long enough.
    private func lostQuorum(ids: [NodeID] = ["a", "b", "c"], leaves: Bool = true) -> (TestCluster, NodeID) {
        var cluster = TestCluster(ids)
        let leader = cluster.electLeader()!
        _ = cluster.propose(leader, [[1]])
        cluster.deliverAll()
        cluster.advance(by: 100)
        cluster.deliverAll()
        let others = ids.filter { $0 != leader }.sorted()
        let survivor = others[0]
        if leaves {
            let outcome = cluster.nodes[leader]!.onProposeMembership(.removeNode(others[1]), now: cluster.now)
            guard case .accepted(_, _, let directives) = outcome else { fatalError("removal refused: \(outcome)") }
            cluster.perform(leader, directives)
            cluster.deliverAll()
            cluster.advance(by: 100)
            cluster.deliverAll()
            precondition(cluster.nodes[survivor]!.members == [leader, survivor])
        }
        cluster.cut = Set(ids.filter { $0 != survivor })
        for _ in 0..<50 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        return (cluster, survivor)
    }

    private func recover(_ cluster: inout TestCluster, _ id: NodeID, keeping live: Set<NodeID>) -> RecoveryOutcome {
        let outcome = cluster.nodes[id]!.onRecover(members: live, now: cluster.now)
        if case .recovered(_, _, let directives) = outcome { cluster.perform(id, directives) }
        return outcome
    }

    @Test func recoverIsRefusedWithASentenceWhileALeaderIsAlive() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        cluster.advance(by: 100)
        cluster.deliverAll()
        let follower = ["a", "b", "c"].first { $0 != leader }!
        for id in [leader, follower] {
            let before = cluster.nodes[id]!
            guard case .refused(let reason) = cluster.nodes[id]!.onRecover(members: [id], now: cluster.now) else {
                Issue.record("\(id) recovered although a leader is alive")
                continue
            }
            #expect(reason.hasSuffix(".") && !reason.contains("\n"), "one sentence: \(reason)")
            #expect(cluster.nodes[id]!.log == before.log && cluster.nodes[id]!.currentTerm == before.currentTerm)
        }
    }

    @Test func recoverIsRefusedUntilNoLeaderWasSeenForTheQuietPeriod() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        cluster.advance(by: 100)
        cluster.deliverAll()
        let survivor = ["a", "b", "c"].first { $0 != leader }!
        cluster.cut = Set(["a", "b", "c"].filter { $0 != survivor })
        // Just after the leader went silent: too early.
        cluster.advance(by: 1_000)
        cluster.deliverAll()
        guard case .refused = recover(&cluster, survivor, keeping: [survivor]) else {
            Issue.record("recovered within the quiet period")
            return
        }
        cluster.advance(by: 3_000)
        cluster.deliverAll()
        guard case .recovered = recover(&cluster, survivor, keeping: [survivor]) else {
            Issue.record("still refused after the quiet period")
            return
        }
    }

    @Test func aLoneSurvivorRecoversWithADurableEntryAtAMuchHigherTermAndCommitsAgain() {
        var (cluster, survivor) = lostQuorum()
        let before = cluster.nodes[survivor]!
        let outcome = cluster.nodes[survivor]!.onRecover(members: [survivor], now: cluster.now)
        guard case .recovered(let term, let index, let directives) = outcome else {
            Issue.record("refused: \(outcome)")
            return
        }
        // One write comes first, holding the new term, the self-vote and the recover entry; nothing is sent before.
        guard case .persist(let request)? = directives.first else {
            Issue.record("the first directive must be the write: \(directives)")
            return
        }
        #expect(!directives.contains { if case .send = $0 { return true } else { return false } })
        #expect(term >= max(before.currentTerm, before.lastTerm) + RaftSettings().recoveryTermGap)
        #expect(request.hardState == HardState(term: term, votedFor: survivor))
        #expect(
            request.entries == [LogEntry(term: term, index: before.lastIndex + 1, kind: .recover(members: [survivor]))])
        #expect(request.truncateFrom == nil, "nothing this node holds is dropped")
        #expect(index == before.lastIndex + 1)
        cluster.perform(survivor, directives)
        #expect(cluster.nodes[survivor]!.members == [survivor])
        #expect(cluster.nodes[survivor]!.recoveryEpoch == term)

        // It elects itself and commits the recovery, the command from before, and a new one.
        #expect(cluster.electLeader() == survivor)
        #expect(cluster.nodes[survivor]!.commitIndex >= index)
        guard case .accepted(let first, _, _) = cluster.propose(survivor, [[2]], sequence: 9) else {
            Issue.record("the recovered leader refused a proposal")
            return
        }
        #expect(cluster.nodes[survivor]!.commitIndex >= first)
        #expect(cluster.applied[survivor]!.contains { $0.kind == .recover(members: [survivor]) })

        // A restart reloads the recovered configuration and epoch from what was written.
        let stored = cluster.durable[survivor]!
        let restarted = Instance(
            id: survivor, hardState: stored.hardState, log: stored.log, random: SplitMix64(seed: 7), now: cluster.now)
        #expect(restarted.members == [survivor])
        #expect(restarted.recoveryEpoch == term)
    }

    @Test func aMachineComingBackWithItsStaleLogNeverLeadsAndNeverOverwritesTheRecoveredLog() {
        var (cluster, survivor) = lostQuorum()
        guard case .recovered(let term, let index, _) = recover(&cluster, survivor, keeping: [survivor]) else {
            Issue.record("refused")
            return
        }
        #expect(cluster.electLeader() == survivor)
        let recovered = cluster.nodes[survivor]!.log
        // The old leader comes back with its old log and its old configuration (itself and the survivor); the machine
        // that left stays away. Its configuration's majority needs the survivor, which never votes for it.
        let leaver = ["a", "b", "c"].first { !cluster.nodes[$0]!.members.contains($0) || $0 == leftNode(cluster) }!
        cluster.cut = [leaver]
        for _ in 0..<100 {
            cluster.advance(by: 100)
            cluster.deliverAll()
            let leaders = cluster.nodes.values.filter { $0.role == .leader }
            #expect(leaders.map(\.id) == [survivor], "only the survivor leads")
        }
        #expect(Array(cluster.nodes[survivor]!.log.prefix(recovered.count)) == recovered)
        #expect(cluster.nodes[survivor]!.entry(at: index)?.term == term)
        // The stale machines' votes cannot make a leader: each needs the survivor, whose log is more up to date.
        for id in cluster.nodes.keys where id != survivor {
            #expect(cluster.nodes[id]!.role != .leader)
            #expect(cluster.nodes[id]!.recoveryEpoch == 0, "it never received the recovery: it is stale")
        }
    }

    @Test func aRecoveredFollowerRefusesAStaleCandidateEvenOfAHigherTermWhenNoLeaderIsInLease() {
        let log = [
            LogEntry(term: 1, index: 1, kind: .addNode("a")), LogEntry(term: 1, index: 2, kind: .addNode("b")),
            LogEntry(term: 1, index: 3, kind: .addNode("c")),
            LogEntry(term: 1_000_003, index: 4, kind: .recover(members: ["a", "b"])),
        ]
        var node = Instance(
            id: "a", hardState: HardState(term: 1_000_004), log: log, random: SplitMix64(seed: 1), now: .milliseconds(0)
        )
        // "c" has a longer log of an old term and has campaigned to a far higher term.
        let request = VoteRequest(term: 2_000_000, candidateID: "c", lastLogIndex: 50, lastLogTerm: 9)
        #expect(voteGranted(node.onMessage(.preVote(request), from: "c", now: .milliseconds(10_000))) == false)
        #expect(voteGranted(node.onMessage(.requestVote(request), from: "c", now: .milliseconds(10_000))) == false)
        #expect(node.lastIndex == 4)
    }

    @Test func twoSurvivorsOfFiveRecoverTogetherAndTheOtherReceivesTheNewConfiguration() {
        var (cluster, survivor) = lostQuorum(ids: ["a", "b", "c", "d", "e"], leaves: false)
        let other = ["a", "b", "c", "d", "e"].filter { $0 != survivor && cluster.nodes[$0]!.role != .leader }.sorted()
            .first!
        cluster.cut.remove(other)
        // The other survivor may have been campaigning; let the clock pass so neither knows a leader.
        for _ in 0..<40 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        guard case .recovered(let term, let index, _) = recover(&cluster, survivor, keeping: [survivor, other]) else {
            Issue.record("refused")
            return
        }
        let leader = cluster.electLeader()
        #expect(leader == survivor || leader == other)
        cluster.advance(by: 100)
        cluster.deliverAll()
        for id in [survivor, other] {
            #expect(cluster.nodes[id]!.members == [survivor, other])
            #expect(cluster.nodes[id]!.entry(at: index)?.term == term)
            #expect(cluster.nodes[id]!.commitIndex >= index)
        }
    }

    @Test func recoverMustKeepThisNodeAndOnlyMembersAndMustDropSomeone() {
        var (cluster, survivor) = lostQuorum()
        for live: Set<NodeID> in [["zz"], [survivor, "stranger"], ["a", "b", "c"]] {
            guard case .refused = cluster.nodes[survivor]!.onRecover(members: live, now: cluster.now) else {
                Issue.record("accepted \(live)")
                continue
            }
        }
        _ = recover(&cluster, survivor, keeping: [survivor])
    }

    @Test func theRecoverEntryRoundTripsThroughTheCodecAndBadCountsAreRejected() throws {
        let message = RaftMessage.appendEntries(
            AppendEntries(
                term: 7, leaderID: "a", prevLogIndex: 3, prevLogTerm: 1, leaderCommit: 3,
                entries: [LogEntry(term: 7, index: 4, kind: .recover(members: ["a", "b"]))]))
        let bytes = message.encode()
        #expect(try RaftMessage(bytes: bytes) == message)
        // The member count is the byte after the kind tag 0x04; zero members and a count past the end are refused.
        let tag = bytes.lastIndex(of: 0x04)!
        var empty = bytes
        empty[tag + 1] = 0
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: Array(empty[...(tag + 1)])) }
        var over = bytes
        over[tag + 1] = 0x7F
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: over) }
    }

    /// The member that left in `lostQuorum`: the one the old leader's configuration no longer lists.
    private func leftNode(_ cluster: TestCluster) -> NodeID? {
        let configs = cluster.nodes.values.filter { $0.members.count == 2 }.map(\.members)
        guard let config = configs.first else { return nil }
        return cluster.nodes.keys.first { !config.contains($0) }
    }

    private func voteGranted(_ directives: [RaftDirective]) -> Bool? {
        for case .send(_, .voteResponse(let response)) in directives { return response.granted }
        return nil
    }
}
