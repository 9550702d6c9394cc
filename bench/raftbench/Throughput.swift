import Election
import Foundation
import Ledger

/// Commit throughput: three `RaftNode`s in one process over `InMemoryRaftNetwork`, each on its own SQLite
/// file (WAL, synchronous=FULL), with `concurrency` clients proposing at once so proposals batch.
struct ThroughputBench {
    var nodes: Int
    var commands: Int
    var concurrency: Int
    var directory: String

    struct Result {
        var seconds: Double
        var commandsPerSecond: Double
        var leaderPersists: Int
    }

    final class CountingStorage: RaftStorage {
        let inner: RaftLogStore
        private let counter = Counter()

        init(inner: RaftLogStore) {
            self.inner = inner
        }

        var persists: Int { counter.value }

        func load() async throws -> StoredRaftState { try await inner.load() }

        func snapshot() throws -> RaftSnapshot? { try inner.snapshot() }

        func persist(_ request: PersistRequest) throws {
            try inner.persist(request)
            counter.increment()
        }
    }

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var count = 0
        var value: Int { lock.withLock { count } }
        func increment() { lock.withLock { count += 1 } }
    }

    func run() async throws -> Result {
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ids = (0..<nodes).map { String(format: "%016x", 0xA000 + $0) }
        let network = InMemoryRaftNetwork()
        var raftNodes: [RaftNode] = []
        var storages: [CountingStorage] = []
        for (i, id) in ids.enumerated() {
            let store = try RaftLogStore.openStandalone(path: "\(directory)/node\(i).sqlite")
            // Same starting membership everywhere: as if the farm was formed and every node was added.
            let members = ids.enumerated().map {
                LogEntry(term: 1, index: LogIndex($0.offset + 1), kind: .addNode($0.element))
            }
            try store.persist(PersistRequest(hardState: HardState(term: 1), entries: members))
            let storage = CountingStorage(inner: store)
            storages.append(storage)
            let node = RaftNode(id: id, storage: storage, transport: network.transport(for: id), seed: UInt64(i + 1))
            network.register(node)
            raftNodes.append(node)
        }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for node in raftNodes {
                group.addTask { try await node.run() }
                group.addTask { for await _ in node.committed {} }
            }
            var leader: RaftNode?
            while leader == nil {
                try await Task.sleep(for: .milliseconds(20))
                for node in raftNodes where await node.status?.role == .leader {
                    if let status = await node.status, status.commitIndex > LogIndex(nodes) { leader = node }
                }
            }
            let chosen = leader!
            let leaderIndex = raftNodes.firstIndex { $0 === chosen }!
            let persistsBefore = storages[leaderIndex].persists
            let start = ContinuousClock.now
            let perClient = commands / concurrency
            try await withThrowingTaskGroup(of: Void.self) { clients in
                for c in 0..<concurrency {
                    clients.addTask {
                        for k in 0..<perClient {
                            var payload = [UInt8](repeating: 0, count: 64)
                            payload[0] = UInt8(truncatingIfNeeded: c)
                            payload[1] = UInt8(truncatingIfNeeded: k)
                            _ = try await chosen.propose(payload)
                        }
                    }
                }
                try await clients.waitForAll()
            }
            let elapsed = ContinuousClock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let persists = storages[leaderIndex].persists - persistsBefore
            group.cancelAll()
            return Result(
                seconds: seconds, commandsPerSecond: Double(perClient * concurrency) / seconds,
                leaderPersists: persists)
        }
    }
}
