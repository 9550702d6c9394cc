import Testing

@testable import Election

// MARK: - Helpers

private func instance(
    _ id: NodeID, term: Term = 1, votedFor: NodeID? = nil, log: [LogEntry]? = nil, members: [NodeID] = ["a", "b", "c"],
    settings: RaftSettings = RaftSettings()
) -> Instance {
    let entries =
        log
        ?? members.enumerated().map {
            LogEntry(term: 1, index: LogIndex($0.offset + 1), kind: .addNode($0.element))
        }
    return Instance(
        id: id, settings: settings, hardState: HardState(term: term, votedFor: votedFor), log: entries,
        random: SplitMix64(seed: 42), now: .milliseconds(0))
}

private func membership(_ ids: [NodeID]) -> [LogEntry] {
    ids.enumerated().map { LogEntry(term: 1, index: LogIndex($0.offset + 1), kind: .addNode($0.element)) }
}

private func command(_ n: UInt64) -> EntryKind {
    .command(RaftCommand(id: CommandID(origin: "t", sequence: n), payload: [UInt8(n & 0xFF)]))
}

private func sends(_ directives: [RaftDirective]) -> [(NodeID, RaftMessage)] {
    directives.compactMap {
        if case .send(let to, let message) = $0 { return (to, message) }
        return nil
    }
}

private func voteResponses(_ directives: [RaftDirective]) -> [VoteResponse] {
    sends(directives).compactMap {
        if case .voteResponse(let r) = $0.1 { return r }
        return nil
    }
}

private func appendResponses(_ directives: [RaftDirective]) -> [AppendResponse] {
    sends(directives).compactMap {
        if case .appendResponse(let r) = $0.1 { return r }
        return nil
    }
}

private func firstIndex(of predicate: (RaftDirective) -> Bool, in directives: [RaftDirective]) -> Int? {
    directives.firstIndex(where: predicate)
}

private func isPersist(_ d: RaftDirective) -> Bool {
    if case .persist = d { return true }
    return false
}

private func isSend(_ d: RaftDirective) -> Bool {
    if case .send = d { return true }
    return false
}

// MARK: - Elections

@Suite("RaftInstance: elections")
struct ElectionTests {
    @Test func singleMemberFarmElectsItselfAndCommitsANoop() {
        var cluster = TestCluster(["solo"])
        let leader = cluster.electLeader()
        #expect(leader == "solo")
        let node = cluster.nodes["solo"]!
        #expect(node.currentTerm == 2)
        #expect(node.entry(at: 2)?.kind == .noop)
        #expect(node.commitIndex == 2)
        #expect(cluster.applied["solo"]!.map(\.index) == [1, 2])
    }

    @Test func threeNodesElectExactlyOneLeaderWhichCommitsANoopOfItsTerm() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()
        #expect(leader != nil)
        cluster.advance(by: 100)
        cluster.deliverAll()
        let leaders = cluster.nodes.values.filter { $0.role == .leader }
        #expect(leaders.count == 1)
        let term = leaders[0].currentTerm
        for node in cluster.nodes.values {
            #expect(node.currentTerm == term)
            #expect(node.commitIndex == 4)
            #expect(node.entry(at: 4) == LogEntry(term: term, index: 4, kind: .noop))
        }
    }

    @Test func candidatePersistsItsSelfVoteBeforeAskingForVotes() {
        var settings = RaftSettings()
        settings.preVote = false
        var node = instance("a", settings: settings)
        let out = node.onTick(now: .milliseconds(2_000))
        let persist = firstIndex(of: isPersist, in: out)
        let firstSend = firstIndex(of: isSend, in: out)
        #expect(persist != nil && firstSend != nil && persist! < firstSend!)
        if case .persist(let request) = out[persist!] {
            #expect(request.hardState == HardState(term: 2, votedFor: "a"))
        }
        #expect(node.role == .candidate)
    }

    @Test func voterPersistsTermAndVoteBeforeReplying() {
        var node = instance("b")
        let request = VoteRequest(term: 5, candidateID: "a", lastLogIndex: 3, lastLogTerm: 1)
        let out = node.onMessage(.requestVote(request), from: "a", now: .milliseconds(2_000))
        guard case .persist(let persisted)? = out.first else {
            Issue.record("first directive must be the persist, got \(out)")
            return
        }
        #expect(persisted.hardState == HardState(term: 5, votedFor: "a"))
        #expect(voteResponses(out) == [VoteResponse(term: 5, granted: true, preVote: false)])
    }

    @Test func nodeVotesOncePerTermEvenForAnEquallyGoodCandidate() {
        var node = instance("c")
        let now = RaftTime.milliseconds(2_000)
        let first = node.onMessage(
            .requestVote(VoteRequest(term: 2, candidateID: "a", lastLogIndex: 3, lastLogTerm: 1)),
            from: "a", now: now)
        let second = node.onMessage(
            .requestVote(VoteRequest(term: 2, candidateID: "b", lastLogIndex: 3, lastLogTerm: 1)),
            from: "b", now: now)
        let again = node.onMessage(
            .requestVote(VoteRequest(term: 2, candidateID: "a", lastLogIndex: 3, lastLogTerm: 1)),
            from: "a", now: now)
        #expect(voteResponses(first).map(\.granted) == [true])
        #expect(voteResponses(second).map(\.granted) == [false])
        #expect(voteResponses(again).map(\.granted) == [true])
        #expect(node.votedFor == "a")
    }

    @Test func restartedNodeKeepsItsVoteFromStorage() {
        var node = instance("c", term: 2, votedFor: "a")
        let out = node.onMessage(
            .requestVote(VoteRequest(term: 2, candidateID: "b", lastLogIndex: 9, lastLogTerm: 1)),
            from: "b", now: .milliseconds(2_000))
        #expect(voteResponses(out).map(\.granted) == [false])
    }

    @Test func voteIsRefusedToCandidateWithStaleLog() {
        var log = membership(["a", "b", "c"])
        log.append(LogEntry(term: 3, index: 4, kind: command(1)))
        var node = instance("b", term: 3, log: log)
        let lowerTerm = node.onMessage(
            .requestVote(VoteRequest(term: 4, candidateID: "a", lastLogIndex: 10, lastLogTerm: 2)), from: "a",
            now: .milliseconds(2_000))
        #expect(voteResponses(lowerTerm).map(\.granted) == [false])
        let shorter = node.onMessage(
            .requestVote(VoteRequest(term: 5, candidateID: "c", lastLogIndex: 3, lastLogTerm: 3)), from: "c",
            now: .milliseconds(2_000))
        #expect(voteResponses(shorter).map(\.granted) == [false])
        let upToDate = node.onMessage(
            .requestVote(VoteRequest(term: 6, candidateID: "c", lastLogIndex: 4, lastLogTerm: 3)), from: "c",
            now: .milliseconds(2_000))
        #expect(voteResponses(upToDate).map(\.granted) == [true])
    }

    @Test func electionTimeoutIsDrawnFromTheConfiguredRange() {
        var settings = RaftSettings()
        settings.preVote = false
        for seed in 0..<50 as Range<UInt64> {
            var node = Instance(
                id: "a", settings: settings, hardState: HardState(term: 1), log: membership(["a", "b", "c"]),
                random: SplitMix64(seed: seed), now: .milliseconds(0))
            #expect(node.onTick(now: .milliseconds(499)).contains(where: isSend) == false)
            #expect(node.role == .follower)
            _ = node.onTick(now: .milliseconds(1_000))
            #expect(node.role == .candidate)
        }
    }
}

// MARK: - Pre-vote and check-quorum

@Suite("RaftInstance: pre-vote and check-quorum")
struct PreVoteTests {
    @Test func isolatedNodeKeepsItsTermWhileItCannotWinPreVotes() {
        var cluster = TestCluster(["a", "b", "c"])
        _ = cluster.electLeader()
        let isolated = cluster.nodes.values.first { $0.role != .leader }!.id
        let termBefore = cluster.nodes[isolated]!.currentTerm
        cluster.cut = [isolated]
        for _ in 0..<100 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        #expect(cluster.nodes[isolated]!.currentTerm == termBefore)
        #expect(cluster.nodes[isolated]!.role == .preCandidate)
    }

    @Test func rejoiningNodeDoesNotDisruptTheLeader() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        let term = cluster.nodes[leader]!.currentTerm
        let isolated = cluster.nodes.keys.sorted().first { $0 != leader }!
        cluster.cut = [isolated]
        for _ in 0..<30 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        cluster.cut = []
        for _ in 0..<30 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        #expect(cluster.nodes[leader]!.role == .leader)
        #expect(cluster.nodes[leader]!.currentTerm == term)
        #expect(cluster.nodes[isolated]!.leaderID == leader)
    }

    @Test func followerRefusesPreVoteWhileItHearsFromALeader() {
        var node = instance("b")
        _ = node.onMessage(
            .appendEntries(
                AppendEntries(
                    term: 1, leaderID: "a", prevLogIndex: 3, prevLogTerm: 1, leaderCommit: 3,
                    entries: [])),
            from: "a", now: .milliseconds(1_000))
        let out = node.onMessage(
            .preVote(VoteRequest(term: 2, candidateID: "c", lastLogIndex: 3, lastLogTerm: 1)),
            from: "c", now: .milliseconds(1_100))
        #expect(voteResponses(out) == [VoteResponse(term: 1, granted: false, preVote: true)])
        #expect(node.currentTerm == 1)
        let later = node.onMessage(
            .preVote(VoteRequest(term: 2, candidateID: "c", lastLogIndex: 3, lastLogTerm: 1)),
            from: "c", now: .milliseconds(1_600))
        #expect(voteResponses(later) == [VoteResponse(term: 2, granted: true, preVote: true)])
        #expect(node.currentTerm == 1, "a pre-vote must not change the voter's term")
    }

    @Test func leaderThatLosesItsQuorumStepsDown() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        cluster.cut = Set(cluster.nodes.keys.filter { $0 != leader })
        for _ in 0..<12 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        #expect(cluster.nodes[leader]!.role == .follower)
    }

    /// A farm of one adds a second member just before a quorum check: the new member has had no time to answer, so
    /// that check must not count it as lost (it did, and every join of a one-node farm deposed its leader); a member
    /// that stays silent for a whole check period still does.
    @Test func aMemberAddedJustBeforeAQuorumCheckHasAWholePeriodToAnswer() {
        var node = instance("a", members: ["a"])
        var now = RaftTime.milliseconds(0)
        var out = node.onTick(now: .milliseconds(1_000))
        var becameLeader: RaftTime?
        // Drive the node alone (every write durable at once) until it leads with its no-op committed.
        for step in 0..<400 where !(node.role == .leader && node.commitIndex == node.lastIndex) {
            now = .milliseconds(1_000 + UInt64(step) * 5)
            for case .persist(let request) in out { out += node.onPersisted(request, now: now) }
            out = node.onTick(now: now)
            if node.role == .leader && becameLeader == nil { becameLeader = now }
        }
        for case .persist(let request) in out { _ = node.onPersisted(request, now: now) }
        let elected = try! #require(becameLeader)
        #expect(node.role == .leader && node.commitIndex == node.lastIndex)
        let check = elected.nanoseconds + RaftSettings().electionTimeoutMin.raftNanoseconds
        let justBefore = RaftTime(nanoseconds: check - 5_000_000)
        guard case .accepted = node.onProposeMembership(.addNode("b"), now: justBefore) else {
            Issue.record("the leader refused to add b")
            return
        }
        _ = node.onTick(now: RaftTime(nanoseconds: check))
        #expect(node.role == .leader, "deposed by a check right after the add, before b could answer")
        _ = node.onTick(now: RaftTime(nanoseconds: check + 2 * RaftSettings().electionTimeoutMin.raftNanoseconds))
        #expect(node.role == .follower, "b never answered for a whole period: the leader has lost its quorum")
    }

    @Test func leaderWithAQuorumStaysLeader() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        cluster.cut = [cluster.nodes.keys.sorted().first { $0 != leader }!]
        for _ in 0..<30 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        #expect(cluster.nodes[leader]!.role == .leader)
    }
}

// MARK: - Log replication

@Suite("RaftInstance: replication")
struct ReplicationTests {
    @Test func followerTruncatesAConflictingSuffixAndAppendsTheLeadersEntries() {
        var log = membership(["a", "b", "c"])
        log.append(LogEntry(term: 2, index: 4, kind: command(1)))
        log.append(LogEntry(term: 2, index: 5, kind: command(2)))
        var node = instance("b", term: 2, log: log)
        let leaderEntries = [
            LogEntry(term: 3, index: 4, kind: command(9)), LogEntry(term: 3, index: 5, kind: command(10)),
        ]
        let out = node.onMessage(
            .appendEntries(
                AppendEntries(
                    term: 3, leaderID: "a", prevLogIndex: 3, prevLogTerm: 1, leaderCommit: 3,
                    entries: leaderEntries)),
            from: "a", now: .milliseconds(10))
        guard case .persist(let request)? = out.first else {
            Issue.record("persist must come first: \(out)")
            return
        }
        #expect(request.truncateFrom == 4)
        #expect(request.entries == leaderEntries)
        #expect(node.log.suffix(2) == leaderEntries[...])
        #expect(appendResponses(out) == [AppendResponse(term: 3, success: true, index: 5)])
    }

    @Test func staleAppendDoesNotTruncateMatchingEntries() {
        var log = membership(["a", "b", "c"])
        log.append(LogEntry(term: 2, index: 4, kind: command(1)))
        log.append(LogEntry(term: 2, index: 5, kind: command(2)))
        var node = instance("b", term: 2, log: log)
        let out = node.onMessage(
            .appendEntries(
                AppendEntries(
                    term: 2, leaderID: "a", prevLogIndex: 3, prevLogTerm: 1, leaderCommit: 3,
                    entries: [log[3]])),
            from: "a", now: .milliseconds(10))
        #expect(node.lastIndex == 5)
        #expect(appendResponses(out) == [AppendResponse(term: 2, success: true, index: 4)])
        #expect(!out.contains(where: isPersist))
    }

    @Test func followerRejectsAppendWhosePreviousEntryItLacksAndHintsWhereToResume() {
        var node = instance("b", term: 2)
        let missing = node.onMessage(
            .appendEntries(
                AppendEntries(
                    term: 2, leaderID: "a", prevLogIndex: 7, prevLogTerm: 2, leaderCommit: 3,
                    entries: [LogEntry(term: 2, index: 8, kind: command(1))])),
            from: "a", now: .milliseconds(10))
        #expect(appendResponses(missing) == [AppendResponse(term: 2, success: false, index: 4)])
        #expect(node.lastIndex == 3)
        let wrongTerm = node.onMessage(
            .appendEntries(
                AppendEntries(
                    term: 2, leaderID: "a", prevLogIndex: 3, prevLogTerm: 2, leaderCommit: 3,
                    entries: [LogEntry(term: 2, index: 4, kind: command(1))])),
            from: "a", now: .milliseconds(20))
        #expect(appendResponses(wrongTerm).map(\.success) == [false])
        #expect(node.lastIndex == 3)
    }

    @Test func laggingFollowerIsRepairedByTheLeader() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        let lagging = cluster.nodes.keys.sorted().first { $0 != leader }!
        cluster.cut = [lagging]
        for k in 0..<20 {
            _ = cluster.propose(leader, [[UInt8(k)]], sequence: UInt64(k * 10))
            cluster.deliverAll()
        }
        cluster.cut = []
        for _ in 0..<5 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        #expect(cluster.nodes[lagging]!.log == cluster.nodes[leader]!.log)
        #expect(cluster.nodes[lagging]!.commitIndex == cluster.nodes[leader]!.commitIndex)
    }

    @Test func leaderDoesNotCommitAnOldTermEntryByCountingReplicas() {
        // Leader "a" of term 3 holds an entry of term 2 at index 4, then its no-op (term 3) at index 5.
        var log = membership(["a", "b", "c"])
        log.append(LogEntry(term: 2, index: 4, kind: command(1)))
        var settings = RaftSettings()
        settings.preVote = false
        var leader = instance("a", term: 2, log: log, settings: settings)
        var out = leader.onTick(now: .milliseconds(2_000))
        _ = leader.onPersisted(PersistRequest(hardState: leader.hardState), now: .milliseconds(2_000))
        out = leader.onMessage(
            .voteResponse(VoteResponse(term: 3, granted: true, preVote: false)), from: "b",
            now: .milliseconds(2_001))
        #expect(leader.role == .leader)
        for case .persist(let request) in out { _ = leader.onPersisted(request, now: .milliseconds(2_001)) }
        // "b" acknowledges index 4 only (the old-term entry): a majority holds it, but it must not commit.
        _ = leader.onMessage(
            .appendResponse(AppendResponse(term: 3, success: true, index: 4)), from: "b",
            now: .milliseconds(2_002))
        #expect(leader.commitIndex < 4)
        // Once "b" holds the no-op of term 3, both commit together.
        let commit = leader.onMessage(
            .appendResponse(AppendResponse(term: 3, success: true, index: 5)), from: "b",
            now: .milliseconds(2_003))
        #expect(leader.commitIndex == 5)
        let applied = commit.flatMap { d -> [LogEntry] in
            if case .apply(let entries) = d { return entries }
            return []
        }
        #expect(applied.map(\.index) == [1, 2, 3, 4, 5])
    }

    @Test func leaderCountsItsOwnCopyOnlyOnceItIsDurable() {
        var cluster = TestCluster(["solo"])
        _ = cluster.electLeader()
        var node = cluster.nodes["solo"]!
        let before = node.commitIndex
        let outcome = node.onPropose(
            [RaftCommand(id: CommandID(origin: "x", sequence: 1), payload: [1])], now: cluster.now)
        #expect(node.commitIndex == before)
        guard case .accepted(let first, _, let directives) = outcome, case .persist(let request)? = directives.first
        else {
            Issue.record("expected an accepted proposal that starts with a persist")
            return
        }
        _ = node.onPersisted(request, now: cluster.now)
        #expect(node.commitIndex == first)
    }

    @Test func proposalsThatArriveTogetherBecomeOneAppendAndOnePersist() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        var node = cluster.nodes[leader]!
        let commands = (1...50).map { RaftCommand(id: CommandID(origin: "x", sequence: UInt64($0)), payload: [1]) }
        guard case .accepted(let first, let last, let directives) = node.onPropose(commands, now: cluster.now) else {
            Issue.record("leader must accept")
            return
        }
        #expect(last - first == 49)
        #expect(directives.filter(isPersist).count == 1)
        let appends = sends(directives).filter {
            if case .appendEntries(let m) = $0.1 { return m.entries.count == 50 }
            return false
        }
        #expect(appends.count == 2)
    }

    @Test func largeEntriesAreSplitAcrossAppendMessagesAndStillReachEveryone() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        let big = [UInt8](repeating: 7, count: 400_000)
        guard case .accepted(_, let last, let directives) = cluster.propose(leader, [big, big, big, big]) else {
            Issue.record("leader must accept")
            return
        }
        let sizes = sends(directives).compactMap { send -> Int? in
            if case .appendEntries(let m) = send.1 { return m.entries.count }
            return nil
        }
        #expect(sizes == [2, 2], "two 400 kB entries per message under the 1 MiB cap")
        cluster.deliverAll()
        for node in cluster.nodes.values {
            #expect(node.lastIndex == last)
        }
        #expect(cluster.nodes[leader]!.commitIndex == last)
    }

    @Test func followerReturnsNotLeaderWithTheLeadersId() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        cluster.advance(by: 100)
        cluster.deliverAll()
        let follower = cluster.nodes.keys.sorted().first { $0 != leader }!
        #expect(cluster.propose(follower, [[1]]) == .notLeader(hint: leader))
    }

    @Test func committedEntriesCarryTheirCommandIDsToEveryNode() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        _ = cluster.propose(leader, [[7], [8]], sequence: 100)
        cluster.deliverAll()
        cluster.advance(by: 100)
        cluster.deliverAll()
        for id in ["a", "b", "c"] {
            let ids = cluster.applied[id]!.compactMap(\.commandID)
            #expect(ids == [CommandID(origin: "test", sequence: 100), CommandID(origin: "test", sequence: 101)])
        }
    }
}

// MARK: - Membership

@Suite("RaftInstance: membership")
struct MembershipTests {
    @Test func leaderAddsOneNodeAtATime() {
        var cluster = TestCluster(["a"])
        _ = cluster.electLeader()
        var leader = cluster.nodes["a"]!
        guard case .accepted(let index, _, let directives) = leader.onProposeMembership(.addNode("b"), now: cluster.now)
        else {
            Issue.record("first change must be accepted")
            return
        }
        #expect(leader.members == ["a", "b"], "a membership change takes effect when appended")
        #expect(
            leader.onProposeMembership(.addNode("c"), now: cluster.now)
                == .rejected(reason: "another membership change is pending"))
        cluster.nodes["a"] = leader
        cluster.perform("a", directives)
        // "b" joins with an empty log and no members: it never campaigns by itself.
        cluster.nodes["b"] = Instance(id: "b", random: SplitMix64(seed: 9), now: cluster.now)
        cluster.applied["b"] = []
        cluster.durable["b"] = StoredRaftState()
        cluster.deliverAll()
        for _ in 0..<5 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        #expect(cluster.nodes["a"]!.commitIndex >= index)
        #expect(cluster.nodes["b"]!.members == ["a", "b"])
        if case .accepted = cluster.nodes["a"]!.onProposeMembership(.addNode("c"), now: cluster.now) {
        } else {
            Issue.record("after the first change commits, the next one is accepted")
        }
    }

    @Test func newLeaderRefusesMembershipChangesUntilItCommitsAnEntryOfItsTerm() {
        var settings = RaftSettings()
        settings.preVote = false
        var leader = instance("a", settings: settings)
        _ = leader.onTick(now: .milliseconds(2_000))
        _ = leader.onPersisted(PersistRequest(hardState: leader.hardState), now: .milliseconds(2_000))
        _ = leader.onMessage(
            .voteResponse(VoteResponse(term: 2, granted: true, preVote: false)), from: "b",
            now: .milliseconds(2_001))
        #expect(leader.role == .leader)
        #expect(
            leader.onProposeMembership(.addNode("d"), now: .milliseconds(2_002))
                == .rejected(reason: "the leader has not committed an entry of its own term yet"))
    }

    @Test func joiningNodeWithEmptyLogNeverStartsAnElection() {
        var node = Instance(id: "z", random: SplitMix64(seed: 3), now: .milliseconds(0))
        for ms in stride(from: 0, to: 10_000, by: 100) as StrideTo<UInt64> {
            _ = node.onTick(now: .milliseconds(ms))
        }
        #expect(node.role == .follower)
        #expect(node.currentTerm == 0)
    }

    @Test func leaderThatRemovesItselfStepsDownOnceTheChangeCommits() {
        var cluster = TestCluster(["a", "b", "c"])
        let leader = cluster.electLeader()!
        cluster.advance(by: 100)
        cluster.deliverAll()
        var node = cluster.nodes[leader]!
        guard case .accepted(_, _, let directives) = node.onProposeMembership(.removeNode(leader), now: cluster.now)
        else {
            Issue.record("removal must be accepted")
            return
        }
        cluster.nodes[leader] = node
        cluster.perform(leader, directives)
        cluster.deliverAll()
        #expect(cluster.nodes[leader]!.role == .follower)
        let next = cluster.electLeader()
        #expect(next != nil && next != leader)
        #expect(cluster.nodes[next!]!.members.count == 2)
    }
}
