import Election
import Foundation
import Logging
import Mesh
import Testing

@testable import Farm

/// Three daemons in this process (real multicast and TCP on loopback, real SQLite), with Swift's shared pool kept
/// busy on purpose: Raft runs on its own threads and must keep its leader and term.
@Suite("Raft under load", .serialized)
struct RaftUnderLoadTests {
    @Test func aBusyProcessDoesNotCostTheLeaderItsTerm() async throws {
        let root = NSTemporaryDirectory() + "rex-load-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let key = FarmKey.generate()
        let port = TestNode.freshPort()
        var logger = Logger(label: "load")
        logger.logLevel = .critical
        var nodes: [FarmNode] = []
        for i in 0..<3 {
            var settings = NodeSettings(data: DataDirectory("\(root)/n\(i)"), name: "n\(i)")
            settings.listen = "127.0.0.1:0"
            settings.discovery = "239.255.78.\(TestNode.groupByte):\(port)"
            settings.interface = "127.0.0.1"
            // Frames take a minute: the ledger holds one big job, not a stream of completions.
            settings.renderer = .simulated(milliseconds: 60_000)
            settings.beaconMilliseconds = 200
            settings.suspectMilliseconds = 2000
            settings.deadMilliseconds = 6000
            try settings.data.create()
            // The first node founds the farm at once (as after `rexnode init`); the others join it.
            if i == 0 { _ = FileManager.default.createFile(atPath: settings.data.founderMark, contents: nil) }
            nodes.append(try await FarmNode(settings: settings, farmKey: key, logger: logger))
        }
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in nodes { group.addTask { try await node.run() } }
            defer { group.cancelAll() }
            // Wait for one farm of three with one leader everyone follows.
            func view() async -> [RaftStatus] { await nodes.asyncMap { await $0.raft.status }.compactMap { $0 } }
            try await eventually(seconds: 60, "a farm of three with one leader") {
                let v = await view()
                return v.count == 3 && v.allSatisfy { $0.members.count == 3 && $0.leader != nil }
                    && Set(v.map(\.leader)).count == 1 && Set(v.map(\.term)).count == 1
            }
            let formed = ContinuousClock.now
            for node in nodes { await node.raft.resetStallStatistics() }
            let before = await view()
            let leaderID = try #require(before.first?.leader)
            let leader = try #require(nodes.first { $0.nodeID == leaderID })
            // Something to read: a job of 5,000 frames.
            let scene = root + "/scene.blend"
            _ = FileManager.default.createFile(
                atPath: scene, contents: Data(Array("BLENDER-v304".utf8) + Array(repeating: 0, count: 1 << 20)))
            let submit = ControlRequest.submit(
                SubmitRequest(path: scene, frames: "1-5000", chunk: 1000, output: root + "/out"))
            let job = try #require(try await ControlClient.send(submit, data: leader.settings.data)["job"]?.string)
            // A big file to hash and copy, on the shared pool's threads, without ever yielding them.
            let big = root + "/big.bin"
            _ = FileManager.default.createFile(atPath: big, contents: Data(repeating: 7, count: 32 << 20))
            try await withThrowingTaskGroup(of: Void.self) { load in
                for worker in 0..<8 {
                    load.addTask {
                        for round in 0..<1 {
                            _ = try BlobStore.hash(fileAt: big)
                            let copy = "\(root)/copy-\(worker)-\(round)"
                            try FileManager.default.copyItem(atPath: big, toPath: copy)
                            try FileManager.default.removeItem(atPath: copy)
                        }
                    }
                }
                for n in 0..<50 {
                    load.addTask {
                        let request: ControlRequest = n.isMultiple(of: 2) ? .ledger() : .status(job: job)
                        _ = try await ControlClient.send(request, data: leader.settings.data)
                    }
                }
                try await load.waitForAll()
            }
            print("load test: formed at \(formed - started), load took \(ContinuousClock.now - formed)")
            for node in nodes {
                let (stall, silence) = (await node.raft.longestStall, await node.raft.longestLeaderSilence)
                print("load test: \(node.settings.name) longest stall \(stall), longest leader silence \(silence)")
            }
            let after = await view()
            #expect(after.map(\.term) == before.map(\.term), "an election happened while the process was busy")
            #expect(after.allSatisfy { $0.leader == leaderID })
        }
    }
}

/// Waits for `condition`, polling, up to a generous bound (no test asserts how fast).
func eventually(seconds: Double, _ what: String, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    throw TestFailure("timed out waiting for \(what)")
}

extension Array where Element: Sendable {
    func asyncMap<T>(_ transform: (Element) async -> T) async -> [T] {
        var out: [T] = []
        for element in self { out.append(await transform(element)) }
        return out
    }
}
