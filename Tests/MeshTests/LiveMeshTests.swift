import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import Mesh

/// Nodes of a test farm on loopback: multicast with IP_MULTICAST_IF=127.0.0.1 and TTL 0, random group/port.
struct TestFarm {
    let key: FarmKey
    let group: String
    let port: Int

    init(key: FarmKey = .generate(), group: String? = nil, port: Int? = nil) {
        self.key = key
        self.group = group ?? "239.255.77.\(Int.random(in: 1...250))"
        self.port = port ?? Int.random(in: 20_000...60_000)
    }

    func settings(name: String) -> MeshNode.Settings {
        var s = MeshNode.Settings()
        s.name = name
        s.listenHost = "127.0.0.1"
        s.listenPort = 0
        s.discovery.group = group
        s.discovery.port = port
        s.discovery.interface = "127.0.0.1"
        s.discovery.beaconInterval = .milliseconds(200)
        s.discovery.peerTable = .init(suspectAfter: .milliseconds(800), deadAfter: .seconds(3))
        s.handshakeTimeout = .seconds(2)
        s.requestTimeout = .seconds(5)
        s.reconnectMin = .milliseconds(50)
        s.reconnectMax = .milliseconds(500)
        s.redialMax = .milliseconds(500)
        return s
    }

    func node(_ name: String, source: (any BlobSource)? = nil) -> MeshNode {
        MeshNode(settings: settings(name: name), farmKey: key, identity: .generate(), blobSource: source)
    }
}

/// Polls `condition` every 50 ms for at most `seconds` (generous: a busy machine is normal); bounded so a broken mesh
/// fails instead of hanging.
func eventually(_ seconds: Double = 30, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

/// Runs the nodes for the duration of `body`, then cancels them.
func withRunning<T: Sendable>(_ nodes: [MeshNode], _ body: @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        for node in nodes {
            group.addTask {
                try await node.run()
                return nil
            }
        }
        for node in nodes { _ = try await node.listeningPort() }
        let result = try await body()
        group.cancelAll()
        while (try? await group.next()) != nil {}
        return result
    }
}

@Suite(.serialized) struct LiveMeshTests {
    @Test(.timeLimit(.minutes(1))) func threeNodesFindEachOtherAndIgnoreAnotherFarm() async throws {
        let farm = TestFarm()
        let stranger = TestFarm(group: farm.group, port: farm.port)  // same group, different key
        let nodes = [farm.node("a"), farm.node("b"), farm.node("c")]
        let outsider = stranger.node("x")
        try await withRunning(nodes + [outsider]) {
            for node in nodes {
                let found = await eventually {
                    let peers = await node.peers()
                    let connected = await node.connectedPeers()
                    return peers.count == 2 && peers.allSatisfy { $0.state == .alive } && connected.count == 2
                }
                let seen = await node.peers().map(\.nodeID)
                #expect(found, "node \(node.nodeID) sees \(seen)")
                let ids = Set(await node.peers().map(\.nodeID))
                #expect(!ids.contains(outsider.nodeID))
                #expect(await eventually { await node.otherFarmsSeen() == 1 })
            }
            #expect(await outsider.peers().isEmpty)
            #expect(await outsider.otherFarmsSeen() == 1)
            #expect(outsider.counters[.beaconsOtherFarm] > 0)
            // Status bytes travel in beacons.
            await nodes[0].setStatus([42])
            #expect(await eventually { await nodes[1].peers().first { $0.nodeID == nodes[0].nodeID }?.status == [42] })
            let peer = await nodes[1].peers().first { $0.nodeID == nodes[0].nodeID }
            #expect(peer?.name == "a")
            #expect(peer?.address.hasPrefix("127.0.0.1:") == true)
        }
    }

    @Test(.timeLimit(.minutes(1))) func listenOnlyNodeSeesAFarmWithoutBeingSeen() async throws {
        let farm = TestFarm()
        let member = farm.node("member")
        var quiet = TestFarm(group: farm.group, port: farm.port).settings(name: "fresh")
        quiet.discovery.announce = false
        let fresh = MeshNode(settings: quiet, farmKey: .generate(), identity: .generate())
        try await withRunning([member, fresh]) {
            #expect(await eventually { await fresh.otherFarmsSeen() == 1 })
            try await Task.sleep(for: .milliseconds(500))
            #expect(await member.otherFarmsSeen() == 0)
            #expect(await member.peers().isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1))) func scanCountsTheFarmsOnTheGroup() async throws {
        let farm = TestFarm()
        let other = TestFarm(group: farm.group, port: farm.port)
        let nodes = [farm.node("a"), farm.node("b"), other.node("x")]
        let discovery = farm.settings(name: "scan").discovery
        try await withRunning(nodes) {
            // Long enough for a few beacons even when the test machine is busy with other suites.
            let farms = try await MeshNode.scanForFarms(discovery: discovery, duration: .milliseconds(2500))
            #expect(farms == 2)
        }
        let empty = TestFarm()
        #expect(
            try await MeshNode.scanForFarms(
                discovery: empty.settings(name: "s").discovery, duration: .milliseconds(300)) == 0)
    }

    @Test(.timeLimit(.minutes(1))) func raftMessagesAndControlRequestsFlow() async throws {
        let farm = TestFarm()
        let a = farm.node("a")
        let b = farm.node("b")
        await b.setControlHandler { from, payload in Array("echo:".utf8) + payload + Array(from.utf8.prefix(4)) }
        try await withRunning([a, b]) {
            #expect(
                await eventually {
                    let fromA = await a.connectedPeers()
                    let fromB = await b.connectedPeers()
                    return fromA == [b.nodeID] && fromB == [a.nodeID]
                })
            let reply = try await a.request(to: b.nodeID, Array("hi".utf8))
            #expect(reply == Array("echo:hi".utf8) + Array(a.nodeID.utf8.prefix(4)))
            // No handler on a: the request fails with the peer's sentence, not a hang.
            await #expect(throws: MeshError.self) { try await b.request(to: a.nodeID, [1]) }
            try await a.send(to: b.nodeID, .raft([7, 7]))
            var iterator = b.incoming.makeAsyncIterator()
            let first = await iterator.next()
            #expect(first?.from == a.nodeID)
            #expect(first?.message == .raft([7, 7]))
            await #expect(throws: MeshError.self) { try await a.send(to: "0000000000000000", .raft([1])) }
        }
    }

    @Test(.timeLimit(.minutes(1))) func silentPeerGoesSuspectThenDead() async throws {
        let farm = TestFarm()
        let a = farm.node("a")
        let b = farm.node("b")
        try await withRunning([a]) {
            try await withRunning([b]) {
                #expect(await eventually { await a.peers().first?.state == .alive })
            }
            #expect(await eventually(3) { await a.peers().first?.state == .suspect })
            #expect(await eventually(5) { await a.peers().first?.state == .dead })
            #expect(await eventually(3) { await a.connectedPeers().isEmpty })
        }
    }

    @Test(.timeLimit(.minutes(1))) func deniedPeerIsDisconnectedAndIgnored() async throws {
        let farm = TestFarm()
        let a = farm.node("a")
        let b = farm.node("b")
        try await withRunning([a, b]) {
            #expect(await eventually { await a.connectedPeers() == [b.nodeID] })
            await a.deny(publicKey: b.identity.publicKey)
            #expect(await eventually { await a.connectedPeers().isEmpty })
            try await Task.sleep(for: .milliseconds(600))
            #expect(await a.peers().isEmpty)
            #expect(await a.connectedPeers().isEmpty)
            #expect(a.counters[.beaconsDenied] > 0)
        }
    }

    /// A node removed from the farm is shut out for the rest of its run (no connection, beacons ignored), and heard
    /// again once it restarts: then it may ask to join afresh.
    @Test(.timeLimit(.minutes(1))) func aRemovedNodesRunIsShutOutUntilItRestarts() async throws {
        let farm = TestFarm()
        let a = farm.node("a")
        let identity = NodeIdentity.generate()
        let b = MeshNode(settings: farm.settings(name: "b"), farmKey: farm.key, identity: identity)
        // The same machine started again later: a new run, with a new instance id in its beacons.
        let again = MeshNode(settings: farm.settings(name: "b"), farmKey: farm.key, identity: identity)
        try await withRunning([a]) {
            let first = Task { try await b.run() }
            #expect(await eventually { await a.connectedPeers() == [b.nodeID] })
            #expect(await eventually { await a.peers().map(\.nodeID) == [b.nodeID] })
            await a.deny(nodeID: b.nodeID)
            #expect(await eventually { await a.connectedPeers().isEmpty })
            // b keeps beaconing and dialing: its beacons are dropped, and it stays out.
            #expect(await eventually { a.counters[.beaconsDenied] >= 3 })
            #expect(await a.peers().isEmpty)
            #expect(await a.connectedPeers().isEmpty)
            first.cancel()
            _ = await first.result
            let second = Task { try await again.run() }
            #expect(await eventually { await a.connectedPeers() == [again.nodeID] })
            #expect(await a.peers().map(\.nodeID) == [again.nodeID])
            second.cancel()
            _ = await second.result
        }
    }

    /// Without its interface address (a laptop before its Wi-Fi is up, an address that went away) discovery keeps
    /// retrying instead of ending the node's `run`; only cancellation ends it. No datagram leaves: the socket
    /// fails when it selects the interface, before any send.
    @Test(.timeLimit(.minutes(1))) func discoveryWithoutItsAddressKeepsRetrying() async throws {
        let farm = TestFarm()
        var settings = farm.settings(name: "a")
        settings.discovery.interface = "198.18.255.254"
        settings.discovery.retryMax = .milliseconds(100)
        let a = MeshNode(settings: settings, farmKey: farm.key, identity: .generate())
        let ended = Mutex(false)
        let running = Task {
            defer { ended.withLock { $0 = true } }
            try await a.run()
        }
        _ = try await a.listeningPort()
        #expect(await eventually { a.counters[.discoverySocketErrors] >= 3 })
        #expect(!ended.withLock { $0 })
        running.cancel()
        _ = await running.result
    }
}
