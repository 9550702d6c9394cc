import Foundation
import Ledger
import Synchronization
import Testing

@testable import Election

/// Three `RaftNode` actors over the in-memory network with in-memory storage.
private struct InProcessFarm {
    let network = InMemoryRaftNetwork()
    var nodes: [RaftNode] = []
    var storages: [InMemoryRaftStorage] = []

    init(ids: [NodeID]) {
        var settings = RaftSettings()
        settings.heartbeatInterval = .milliseconds(50)
        settings.electionTimeoutMin = .milliseconds(400)
        settings.electionTimeoutMax = .milliseconds(800)
        let log = ids.enumerated().map { LogEntry(term: 1, index: LogIndex($0.offset + 1), kind: .addNode($0.element)) }
        for (i, id) in ids.enumerated() {
            let storage = InMemoryRaftStorage(hardState: HardState(term: 1), log: log)
            let node = RaftNode(
                id: id, settings: settings, storage: storage, transport: network.transport(for: id),
                seed: UInt64(i + 1))
            network.register(node)
            nodes.append(node)
            storages.append(storage)
        }
    }

    func leader(excluding excluded: Set<NodeID> = [], timeout: Duration = .seconds(30)) async throws -> RaftNode? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            for node in nodes where !excluded.contains(node.id) {
                if let status = await node.status, status.role == .leader, status.commitIndex > 3 { return node }
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }
}

@Suite("RaftNode shell", .serialized)
struct RaftNodeTests {
    @Test func proposalsCommitOnEveryNodeAndFollowersAnswerNotLeader() async throws {
        let farm = InProcessFarm(ids: ["a", "b", "c"])
        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in farm.nodes { group.addTask { try await node.run() } }
            let leader = try #require(try await farm.leader())
            let indices = try await withThrowingTaskGroup(of: LogIndex.self) { proposals in
                for k in 0..<50 { proposals.addTask { try await leader.propose([UInt8(k)]) } }
                var all: [LogIndex] = []
                for try await index in proposals { all.append(index) }
                return all
            }
            #expect(Set(indices).count == 50, "every proposal got its own index")
            let follower = farm.nodes.first { $0.id != leader.id }!
            await #expect(throws: RaftError.self) { _ = try await follower.propose([1]) }
            do {
                _ = try await follower.propose([1])
            } catch let error as RaftError {
                #expect(error.code == .notLeader)
                #expect(error.leaderHint == leader.id)
            }
            // Every node's committed stream carries the same 50 commands.
            let highest = indices.max()!
            for node in farm.nodes {
                var payloads: [UInt8] = []
                for await item in node.committed {
                    guard case .entry(let entry) = item else { continue }
                    if case .command(let command) = entry.kind { payloads.append(command.payload[0]) }
                    if entry.index >= highest { break }
                }
                #expect(payloads.sorted() == (0..<50).map { UInt8($0) })
            }
            // The leader announced its role on the roleChanges stream.
            var announced: RaftStatus?
            for await status in leader.roleChanges where status.role == .leader {
                announced = status
                break
            }
            #expect(announced?.leader == leader.id)
            // Batching: far fewer leader writes than proposals.
            let leaderStorage = farm.storages[farm.nodes.firstIndex { $0 === leader }!]
            #expect(leaderStorage.persistCount < 50)
            group.cancelAll()
        }
    }

    @Test func isolatedLeaderIsReplacedAndTheFarmKeepsCommitting() async throws {
        let farm = InProcessFarm(ids: ["a", "b", "c"])
        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in farm.nodes { group.addTask { try await node.run() } }
            let first = try #require(try await farm.leader())
            _ = try await first.propose([1])
            farm.network.isolate(first.id)
            let second = try #require(try await farm.leader(excluding: [first.id]))
            #expect(second.id != first.id)
            let index = try await second.propose([2])
            #expect(index > 0)
            farm.network.heal()
            group.cancelAll()
        }
    }
}

@Suite("RaftNode on SQLite", .serialized)
struct RaftNodeSQLiteTests {
    @Test func farmRestartedFromItsDatabasesResumesWithTermVoteAndLog() async throws {
        let ids = ["a", "b", "c"]
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("raft-node-restart-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let paths = ids.map { dir.appendingPathComponent("\($0).sqlite").path }
        var settings = RaftSettings()
        settings.heartbeatInterval = .milliseconds(50)
        settings.electionTimeoutMin = .milliseconds(400)
        settings.electionTimeoutMax = .milliseconds(800)
        let members = ids.enumerated().map {
            LogEntry(term: 1, index: LogIndex($0.offset + 1), kind: .addNode($0.element))
        }
        for path in paths {
            try RaftLogStore.openStandalone(path: path).persist(
                PersistRequest(hardState: HardState(term: 1), entries: members))
        }

        func runFarm(proposals: Int) async throws -> [HardState] {
            let network = InMemoryRaftNetwork()
            let stores = try paths.map { try RaftLogStore.openStandalone(path: $0) }
            let nodes = ids.enumerated().map { i, id in
                RaftNode(
                    id: id, settings: settings, storage: stores[i], transport: network.transport(for: id),
                    seed: UInt64(i + 10))
            }
            for node in nodes { network.register(node) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for node in nodes { group.addTask { try await node.run() } }
                var leader: RaftNode?
                let deadline = ContinuousClock.now + .seconds(30)
                while leader == nil && ContinuousClock.now < deadline {
                    for node in nodes {
                        if let s = await node.status, s.role == .leader, s.commitIndex > 3 { leader = node }
                    }
                    try await Task.sleep(for: .milliseconds(10))
                }
                var chosen = try #require(leader)
                for k in 0..<proposals {
                    // A busy machine can cost the leader its lease; retry with the same id (applied once).
                    let command = RaftCommand(
                        id: CommandID(origin: "test", sequence: UInt64(proposals * 100 + k)), payload: [UInt8(k)])
                    var attempts = 0
                    while true {
                        do {
                            _ = try await chosen.propose(command)
                            break
                        } catch let error as RaftError where attempts < 50 {
                            attempts += 1
                            try await Task.sleep(for: .milliseconds(50))
                            if let hint = error.leaderHint, let next = nodes.first(where: { $0.id == hint }) {
                                chosen = next
                            }
                        }
                    }
                }
                group.cancelAll()
            }
            return try stores.map { try $0.loadNow().hardState }
        }

        let before = try await runFarm(proposals: 10)
        let logsBefore = try paths.map { try RaftLogStore.openStandalone(path: $0).loadNow().log }
        let commandsBefore = logsBefore.map { Set($0.compactMap(\.commandID)).count }
        #expect(commandsBefore.filter { $0 == 10 }.count >= 2, "a majority stored all ten commands")

        let after = try await runFarm(proposals: 5)
        for (old, new) in zip(before, after) {
            #expect(new.term >= old.term, "terms never go back across a restart")
        }
        #expect(after.map(\.term).max()! > before.map(\.term).max()!, "the restarted farm elected in a new term")
        let logsAfter = try paths.map { try RaftLogStore.openStandalone(path: $0).loadNow().log }
        let committedBefore = logsBefore.filter { Set($0.compactMap(\.commandID)).count == 10 }.min {
            $0.count < $1.count
        }!
        for new in logsAfter where Set(new.compactMap(\.commandID)).count == 15 {
            #expect(
                Array(new.prefix(committedBefore.count)) == committedBefore, "committed entries survive the restart")
        }
        #expect(logsAfter.map { Set($0.compactMap(\.commandID)).count }.max() == 15)
    }

    /// `compact` returns only once the snapshot is on disk: the state machine drops its own copy of the log after it
    /// returns, so returning earlier would lose the log if the node stopped before the write (seen: a daemon stopped a
    /// second after compacting 1,000,000 entries kept its whole Raft log but had marked its ledger compacted).
    @Test func compactReturnsOnlyOnceTheSnapshotIsDurable() async throws {
        let storage = GatedSnapshotStorage()
        let network = InMemoryRaftNetwork()
        let node = RaftNode(id: "a", storage: storage, transport: network.transport(for: "a"), seed: 1)
        network.register(node)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await node.run() }
            var index: LogIndex = 0
            for k in 0..<3 { index = try await node.propose([UInt8(k)]) }
            // The commit index reaches the proposals (the lone voter commits them alone), then they are applied.
            for await item in node.committed {
                if case .entry(let entry) = item, entry.index >= index { break }
            }
            storage.hold()
            let returned = Flag()
            let compacting = Task {
                let term = try await node.compact(through: index, data: [7, 7, 7])
                returned.set()
                return term
            }
            while !storage.isHolding { try await Task.sleep(for: .milliseconds(5)) }
            try await Task.sleep(for: .milliseconds(100))
            #expect(!returned.isSet, "compact returned while its snapshot was still being written")
            storage.release()
            let term = try await compacting.value
            #expect(term != nil && returned.isSet)
            #expect(try storage.snapshot()?.lastIndex == index)
            #expect(try storage.snapshot()?.data == [7, 7, 7])
            group.cancelAll()
        }
    }
}

/// In-memory storage whose snapshot writes can be held back (the disk is slow), to see who waits for them.
private final class GatedSnapshotStorage: RaftStorage {
    private let inner = InMemoryRaftStorage(
        hardState: HardState(term: 1), log: [LogEntry(term: 1, index: 1, kind: .addNode("a"))])
    private let state = Mutex((held: false, holding: false))
    private let gate = DispatchSemaphore(value: 0)

    func hold() { state.withLock { $0.held = true } }
    var isHolding: Bool { state.withLock { $0.holding } }
    func release() {
        state.withLock { $0.held = false }
        gate.signal()
    }

    func load() async throws -> StoredRaftState { try await inner.load() }
    func snapshot() throws -> RaftSnapshot? { try inner.snapshot() }
    func persist(_ request: PersistRequest) throws {
        if request.snapshot != nil,
            state.withLock({ s in
                s.holding = s.held
                return s.held
            })
        {
            gate.wait()
        }
        try inner.persist(request)
    }
}

private final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}
