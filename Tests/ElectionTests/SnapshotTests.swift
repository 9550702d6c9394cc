import Foundation
import Ledger
import Testing

@testable import Election

/// Snapshots and compaction (Raft §7): the log before a snapshot goes, in memory and on disk; a member whose next
/// entry is gone gets the snapshot, in chunks, and its state machine is told to install it.
@Suite("Snapshots")
struct SnapshotTests {
    let voters: [NodeID] = ["a", "b", "c"]

    /// A farm with a leader and `count` committed commands, everyone caught up.
    func farm(commands count: Int, settings: RaftSettings = RaftSettings(), learners: [NodeID] = []) throws
        -> (TestCluster, NodeID)
    {
        var cluster = TestCluster(voters, learners: learners, settings: settings)
        let elected = cluster.electLeader()
        let leader = try #require(elected)
        for i in 0..<count { _ = cluster.propose(leader, [[UInt8(i % 256)]], sequence: UInt64(i + 1)) }
        cluster.deliverAll()
        cluster.advance(by: 100)
        cluster.deliverAll()
        return (cluster, leader)
    }

    @Test func compactionDropsTheLogBeforeTheSnapshotAndARestartResumesFromIt() throws {
        var (cluster, leader) = try farm(commands: 20)
        let before = cluster.nodes[leader]!
        let compacted = cluster.compact(leader)
        let index = try #require(compacted)
        let after = cluster.nodes[leader]!
        #expect(index == before.appliedIndex)
        #expect(after.snapshotIndex == index && after.snapshotTerm == before.term(at: index))
        #expect(after.lastIndex == before.lastIndex && after.lastTerm == before.lastTerm)
        #expect(after.log.count == Int(before.lastIndex - index))
        #expect(after.entry(at: index) == nil && after.term(at: index - 1) == nil)
        #expect(after.members == before.members && after.voters == before.voters)
        // On disk too: the snapshot and only the entries after it.
        let stored = cluster.durable[leader]!
        #expect(stored.snapshot?.lastIndex == index)
        #expect(stored.log.first.map { $0.index == index + 1 } ?? true)
        #expect(stored.lastIndex == before.lastIndex)
        #expect(stored.snapshot?.data == TestCluster.stateData(through: index))
        // A restart rebuilds the configuration from the snapshot and applies only what follows it.
        let restarted = Instance(
            id: leader, hardState: stored.hardState, snapshot: stored.snapshot, log: stored.log,
            random: SplitMix64(seed: 3), now: cluster.now)
        #expect(restarted.members == before.members && restarted.voters == before.voters)
        #expect(restarted.appliedIndex == index && restarted.lastIndex == before.lastIndex)
        // Compacting again at the same index does nothing.
        #expect(cluster.compact(leader) == nil)
    }

    @Test func aLaggingFollowerGetsTheSnapshotInChunksAndCatchesUp() throws {
        var settings = RaftSettings()
        settings.maxAppendBytes = 16  // the 100-byte test snapshot goes in 7 chunks
        var (cluster, leader) = try farm(commands: 3, settings: settings)
        let lagging = voters.first { $0 != leader }!
        cluster.cut = [lagging]
        for i in 0..<30 { _ = cluster.propose(leader, [[UInt8(i)]], sequence: UInt64(100 + i)) }
        cluster.deliverAll()
        cluster.advance(by: 100)
        cluster.deliverAll()
        let compacted = cluster.compact(leader)
        let index = try #require(compacted)
        #expect(cluster.nodes[lagging]!.lastIndex < index, "the follower lacks entries the leader dropped")
        // Back on the network: the leader's next heartbeat finds it behind and sends the snapshot.
        cluster.cut = []
        for _ in 0..<20 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        #expect(cluster.snapshotChunksDelivered == 7, "one copy in 7 chunks: no resend while it was installed")
        let follower = cluster.nodes[lagging]!
        #expect(cluster.restored[lagging]?.map(\.lastIndex) == [index])
        #expect(cluster.restored[lagging]?.first?.data == TestCluster.stateData(through: index))
        #expect(follower.snapshotIndex == index)
        #expect(follower.lastIndex == cluster.nodes[leader]!.lastIndex)
        #expect(follower.commitIndex == cluster.nodes[leader]!.commitIndex)
        #expect(cluster.durable[lagging]!.snapshot?.lastIndex == index)
        // It applies what follows the snapshot like anyone else, and nothing from before it.
        let leaderAfter = cluster.applied[leader]!.filter { $0.index > index }
        #expect(cluster.applied[lagging]!.filter { $0.index > index } == leaderAfter)
        // New entries replicate to it as usual.
        guard case .accepted(_, let last, _) = cluster.propose(leader, [[7]], sequence: 999) else {
            Issue.record("proposal refused")
            return
        }
        cluster.deliverAll()
        cluster.advance(by: 100)
        cluster.deliverAll()
        #expect(cluster.nodes[lagging]!.commitIndex >= last)
    }

    /// A member added after the log was compacted starts from the snapshot: its log starts after index 1.
    @Test func aNewLearnerStartsFromTheSnapshot() throws {
        var (cluster, leader) = try farm(commands: 10)
        let compacted = cluster.compact(leader)
        let index = try #require(compacted)
        cluster.nodes["z"] = Instance(id: "z", random: SplitMix64(seed: 42), now: cluster.now)
        cluster.durable["z"] = StoredRaftState()
        guard
            case .accepted(_, _, let directives) = cluster.nodes[leader]!.onProposeMembership(
                .addLearner("z"), now: cluster.now)
        else {
            Issue.record("add learner refused")
            return
        }
        cluster.perform(leader, directives)
        for _ in 0..<10 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        let learner = cluster.nodes["z"]!
        #expect(cluster.restored["z"]?.first?.lastIndex == index)
        #expect(learner.snapshotIndex == index && learner.log.first?.index == index + 1)
        #expect(learner.members.contains("z") && !learner.voters.contains("z"))
        #expect(learner.commitIndex == cluster.nodes[leader]!.commitIndex)
        #expect(cluster.applied["z"]!.allSatisfy { $0.index > index })
    }

    /// A follower whose log disagrees with the snapshot after its last index drops it all (and says so on disk).
    @Test func anInstallDiscardsAConflictingLog() throws {
        var instance = Instance(id: "f", random: SplitMix64(seed: 1), now: .milliseconds(0))
        // The follower holds entries of term 1 that the leader never committed; the leader's snapshot at 5 is term 2.
        let stale = (1...6).map { LogEntry(term: 1, index: LogIndex($0), kind: .noop) }
        _ = instance.onMessage(
            .appendEntries(
                AppendEntries(
                    term: 1, leaderID: "old", prevLogIndex: 0, prevLogTerm: 0, leaderCommit: 0, entries: stale)),
            from: "old", now: .milliseconds(1))
        #expect(instance.lastIndex == 6)
        let snapshot = RaftSnapshot(lastIndex: 5, lastTerm: 2, members: ["f", "l"], voters: ["f", "l"], data: [1, 2])
        let out = instance.onMessage(
            .installSnapshot(InstallSnapshot(term: 2, leaderID: "l", snapshot: snapshot, offset: 0, total: 2)),
            from: "l", now: .milliseconds(2))
        guard case .persist(let request) = out.first else {
            Issue.record("no persist first: \(out)")
            return
        }
        #expect(request.snapshot == snapshot && request.truncateFrom == 6)
        #expect(out.contains(.restore(snapshot)))
        #expect(out.contains(.send(to: "l", .appendResponse(AppendResponse(term: 2, success: true, index: 5)))))
        #expect(instance.lastIndex == 5 && instance.log.isEmpty && instance.commitIndex == 5)
        #expect(instance.members == ["f", "l"])
        var stored = StoredRaftState(log: stale)
        try stored.apply(request)
        #expect(stored.snapshot == snapshot && stored.log.isEmpty)
    }

    /// A chunk of the leader's (term 3) snapshot of index 9, for a follower "f" of leader "l".
    static func chunk(_ offset: UInt64, _ bytes: [UInt8], total: UInt64) -> RaftMessage {
        let part = RaftSnapshot(lastIndex: 9, lastTerm: 3, members: ["f", "l"], voters: ["f", "l"], data: bytes)
        return .installSnapshot(InstallSnapshot(term: 3, leaderID: "l", snapshot: part, offset: offset, total: total))
    }

    /// Chunks that do not continue what the follower holds are dropped, never installed half.
    @Test func aChunkOutOfOrderIsDropped() {
        var instance = Instance(id: "f", random: SplitMix64(seed: 1), now: .milliseconds(0))
        let chunk = { (offset: UInt64, bytes: [UInt8]) in Self.chunk(offset, bytes, total: 4) }
        _ = instance.onMessage(chunk(2, [3, 4]), from: "l", now: .milliseconds(1))
        #expect(instance.snapshot == nil)
        _ = instance.onMessage(chunk(0, [1, 2]), from: "l", now: .milliseconds(2))
        #expect(instance.snapshot == nil)
        let out = instance.onMessage(chunk(2, [3, 4]), from: "l", now: .milliseconds(3))
        #expect(instance.snapshotIndex == 9 && instance.snapshot?.data == [], "the instance keeps no snapshot bytes")
        #expect(out.contains { if case .restore(let s) = $0 { s.data == [1, 2, 3, 4] } else { false } })
    }

    /// A resend does not restart an install in progress: its copies of chunks already held are skipped, and the
    /// install completes from whichever copy brings the next chunk.
    @Test func aResendDoesNotRestartAnInstallInProgress() {
        var instance = Instance(id: "f", random: SplitMix64(seed: 1), now: .milliseconds(0))
        let chunk = { (offset: UInt64, bytes: [UInt8]) in Self.chunk(offset, bytes, total: 6) }
        _ = instance.onMessage(chunk(0, [1, 2]), from: "l", now: .milliseconds(1))
        _ = instance.onMessage(chunk(2, [3, 4]), from: "l", now: .milliseconds(2))
        // The first copy's last chunk was lost. The second copy starts over (its chunk 0 is already held), loses its
        // chunk 2 and brings chunk 4: that is the continuation of what is held.
        _ = instance.onMessage(chunk(0, [1, 2]), from: "l", now: .milliseconds(3))
        #expect(instance.snapshot == nil)
        let out = instance.onMessage(chunk(4, [5, 6]), from: "l", now: .milliseconds(5))
        #expect(instance.snapshotIndex == 9)
        #expect(out.contains { if case .restore(let s) = $0 { s.data == [1, 2, 3, 4, 5, 6] } else { false } })
    }

    /// The leader sends a member that keeps lacking the snapshot another copy after `snapshotRetry`, then after
    /// twice that, four times, …: a copy that is slow to arrive is not buried under more copies.
    @Test func resendsOfASnapshotBackOff() throws {
        var settings = RaftSettings()
        settings.maxAppendBytes = 16
        var (cluster, leader) = try farm(commands: 3, settings: settings)
        let lagging = voters.first { $0 != leader }!
        cluster.cut = [lagging]
        for i in 0..<10 { _ = cluster.propose(leader, [[UInt8(i)]], sequence: UInt64(100 + i)) }
        cluster.deliverAll()
        cluster.advance(by: 100)
        cluster.deliverAll()
        let compacted = cluster.compact(leader)
        _ = try #require(compacted)
        // The lagging member hears heartbeats but every chunk sent to it is lost.
        cluster.cut = []
        cluster.lostSnapshotChunks = true
        for _ in 0..<155 {
            cluster.advance(by: 100)
            cluster.deliverAll()
        }
        // Copies at about 0, 2, 6 and 14 s (waits of 2, 4 and 8 s), not one every 2 s (8 copies).
        #expect(cluster.snapshotCopiesSent == 4)
    }

    @Test func theSnapshotMessageRoundTripsAndGarbageIsRejected() throws {
        let snapshot = RaftSnapshot(
            lastIndex: 1_000_000, lastTerm: 42, members: ["a", "b", "c"], voters: ["a", "b"], recoveryEpoch: 7,
            data: Array(0..<200))
        let message = RaftMessage.installSnapshot(
            InstallSnapshot(term: 43, leaderID: "a", snapshot: snapshot, offset: 400, total: 600))
        let bytes = message.encode()
        #expect(try RaftMessage(bytes: bytes) == message)
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: Array(bytes.dropLast())) }
        let past = RaftMessage.installSnapshot(
            InstallSnapshot(term: 43, leaderID: "a", snapshot: snapshot, offset: 500, total: 600))
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: past.encode()) }
        let header = snapshot.encodedHeader()
        #expect(try RaftSnapshot(header: header, data: snapshot.data) == snapshot)
    }

    /// SQLite keeps the snapshot and the entries after it across a reopen; an install drops what it covers.
    @Test func theRaftLogStoreKeepsTheSnapshotAndTheSuffix() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("snap-\(UUID().uuidString).db").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try RaftLogStore.openStandalone(path: path)
        let entries = (1...10).map { LogEntry(term: 1, index: LogIndex($0), kind: .addNode("n\($0)")) }
        try store.persist(PersistRequest(hardState: HardState(term: 1), entries: entries))
        let snapshot = RaftSnapshot(lastIndex: 6, lastTerm: 1, members: ["n1"], voters: ["n1"], data: [9, 9])
        try store.persist(PersistRequest(snapshot: snapshot))
        let reopened = try RaftLogStore.openStandalone(path: path).loadNow()
        #expect(reopened.snapshot == snapshot.header, "loading leaves the data on disk")
        #expect(try store.snapshot() == snapshot)
        #expect(reopened.log.map(\.index) == [7, 8, 9, 10])
        #expect(reopened.lastIndex == 10)
        // A later snapshot beyond the log, with the rest truncated (an install on a lagging node).
        let later = RaftSnapshot(lastIndex: 20, lastTerm: 2, members: ["n1"], voters: ["n1"], data: [1])
        try store.persist(PersistRequest(snapshot: later, truncateFrom: 21))
        let again = try store.loadNow()
        #expect(again.snapshot == later.header && again.log.isEmpty && again.lastIndex == 20)
        #expect(try store.snapshot() == later)
        try store.persist(PersistRequest(entries: [LogEntry(term: 2, index: 21, kind: .noop)]))
        #expect(try store.loadNow().log.map(\.index) == [21])
    }
}
