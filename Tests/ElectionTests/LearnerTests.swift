import Testing

@testable import Election

/// Voters and learners: at most a few members vote; the rest replicate the log and never vote, campaign or count
/// for a quorum (etcd's learners, hashicorp/raft's non-voters).
@Suite("Learners")
struct LearnerTests {
    let voters: [NodeID] = ["a", "b", "c"]
    let learners: [NodeID] = ["d", "e"]

    @Test func theConfigurationSaysWhoVotes() {
        let cluster = TestCluster(voters, learners: learners)
        for id in voters + learners {
            #expect(cluster.nodes[id]!.members == Set(voters + learners))
            #expect(cluster.nodes[id]!.voters == Set(voters))
            #expect(cluster.nodes[id]!.learners == Set(learners))
        }
    }

    @Test func learnersNeverCampaignEvenWithEveryVoterGone() {
        var cluster = TestCluster(voters, learners: learners)
        cluster.cut = Set(voters)
        for _ in 0..<500 {
            cluster.advance(by: 10)
            cluster.deliverAll()
            for id in learners {
                #expect(cluster.nodes[id]!.role == .follower)
                #expect(cluster.nodes[id]!.currentTerm == 1)
            }
        }
    }

    @Test func aLeaderIsAlwaysAVoterAndLearnersGetEveryCommittedEntry() throws {
        var cluster = TestCluster(voters, learners: learners)
        let elected = cluster.electLeader()
        let leader = try #require(elected)
        #expect(voters.contains(leader))
        guard case .accepted(_, let last, _) = cluster.propose(leader, [[1], [2], [3]]) else {
            Issue.record("proposal refused")
            return
        }
        cluster.deliverAll()
        cluster.advance(by: 100)
        cluster.deliverAll()
        for id in learners {
            #expect(cluster.nodes[id]!.commitIndex >= last)
            #expect(cluster.applied[id]! == cluster.applied[leader]!)
        }
    }

    /// Two learners and the leader are three of five members, but one voter of three: nothing commits.
    @Test func aCommitNeedsAMajorityOfVotersNotOfMembers() throws {
        var cluster = TestCluster(voters, learners: learners)
        let elected = cluster.electLeader()
        let leader = try #require(elected)
        let committed = cluster.nodes[leader]!.commitIndex
        cluster.cut = Set(voters.filter { $0 != leader })
        _ = cluster.propose(leader, [[9]])
        cluster.deliverAll()
        #expect(cluster.nodes[leader]!.commitIndex == committed)
        #expect(cluster.nodes["d"]!.lastIndex > committed)
        #expect(cluster.nodes["e"]!.lastIndex > committed)
    }

    /// A voter cut off from the other voters but not from the learners cannot win: only voters' votes count. With
    /// the injected bug (learners' votes counted) the same situation elects it, so this test would catch that bug.
    @Test(arguments: [false, true])
    func aVoterBackedOnlyByLearnersIsNeverElected(bug: Bool) {
        var settings = RaftSettings()
        if bug { settings.injectedBugs = [.countLearnerVote] }
        var cluster = TestCluster(voters, learners: learners, settings: settings)
        // b and c never hear anything: a can reach only the learners.
        cluster.cut = ["b", "c"]
        var aLed = false
        for _ in 0..<300 {
            cluster.advance(by: 10)
            cluster.deliverAll()
            if cluster.nodes["a"]!.role == .leader { aLed = true }
        }
        #expect(aLed == bug)
    }

    @Test func promotionAndDemotionAreSingleChangesThroughTheLog() throws {
        var cluster = TestCluster(voters, learners: learners)
        let elected = cluster.electLeader()
        let leader = try #require(elected)
        cluster.advance(by: 100)
        cluster.deliverAll()
        var instance = cluster.nodes[leader]!
        if case .rejected(let why) = instance.onProposeMembership(.demote(leader), now: cluster.now) {
            #expect(why.contains("cannot demote itself"))
        } else {
            Issue.record("a leader demoted itself")
        }
        if case .rejected = instance.onProposeMembership(.promote("a"), now: cluster.now) {
        } else {
            Issue.record("a voter was promoted")
        }
        guard case .accepted(_, _, let directives) = instance.onProposeMembership(.promote("d"), now: cluster.now)
        else {
            Issue.record("promotion refused")
            return
        }
        // Effective at once on the leader; a second change waits for the first to commit.
        #expect(instance.voters == ["a", "b", "c", "d"])
        if case .rejected(let why) = instance.onProposeMembership(.demote("e"), now: cluster.now) {
            #expect(why.contains("pending"))
        } else {
            Issue.record("two changes in flight")
        }
        cluster.nodes[leader] = instance
        cluster.perform(leader, directives)
        cluster.deliverAll()
        for id in voters + learners { #expect(cluster.nodes[id]!.voters == ["a", "b", "c", "d"]) }
        let other = voters.first { $0 != leader }!
        guard
            case .accepted(_, _, let more) = cluster.nodes[leader]!.onProposeMembership(
                .demote(other), now: cluster.now)
        else {
            Issue.record("demotion refused")
            return
        }
        cluster.perform(leader, more)
        cluster.deliverAll()
        cluster.advance(by: 100)
        cluster.deliverAll()
        let expected = Set(voters + ["d"]).subtracting([other])
        for id in voters + learners {
            #expect(cluster.nodes[id]!.voters == expected)
            #expect(cluster.nodes[id]!.members == Set(voters + learners))
        }
        // A restart rebuilds the same configuration from the log.
        let stored = cluster.durable["e"]!
        let restarted = Instance(
            id: "e", hardState: stored.hardState, log: stored.log, random: SplitMix64(seed: 9), now: cluster.now)
        #expect(restarted.voters == expected)
    }

    /// `rexnode recover` keeps the voters among the live members and leaves learners learners.
    @Test func aRecoveryKeepsLiveVotersAndLearners() throws {
        var settings = RaftSettings()
        settings.recoveryQuietPeriod = .milliseconds(10)
        var cluster = TestCluster(voters, learners: learners, settings: settings)
        cluster.advance(by: 50)
        var a = cluster.nodes["a"]!
        // Every voter reachable: nothing to recover, whatever learners are missing.
        if case .recovered = a.onRecover(members: ["a", "b", "c"], now: cluster.now) {
            Issue.record("recovered with every voter in reach")
        }
        guard case .recovered = a.onRecover(members: ["a", "d", "e"], now: cluster.now) else {
            Issue.record("recovery refused")
            return
        }
        #expect(a.members == ["a", "d", "e"])
        #expect(a.voters == ["a"])
        var d = cluster.nodes["d"]!
        guard case .refused(let why) = d.onRecover(members: ["d", "e"], now: cluster.now) else {
            Issue.record("a learner recovered the farm")
            return
        }
        #expect(why.contains("not a voting member"))
    }
}
