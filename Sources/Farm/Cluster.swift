import Election
import Foundation
import Ledger
import Logging
import Mesh

// MARK: Wire types between daemons

/// Raft's messages leave through this queue; one loop hands them to the mesh, so Raft never waits on a socket.
struct OutboxTransport: RaftTransport {
    let outbox: AsyncStream<(peer: String, bytes: [UInt8])>.Continuation

    func send(_ bytes: [UInt8], to peer: NodeID) {
        outbox.yield((peer, bytes))
    }
}

/// A request one daemon makes of another over the mesh's control channel (JSON, opaque to the mesh).
struct PeerRequest: Codable, Sendable {
    enum Op: String, Codable, Sendable {
        /// Leader: propose these encoded ledger entries and answer with their log indexes.
        case propose
        /// Fetch blob `hash` from `from` and keep it: the second copy of a rendered frame.
        case replicate
        /// Leader: remove `node` from the farm's membership (`rexnode leave`).
        case leave
    }

    var op: Op
    var payloads: [[UInt8]]?
    var hash: String?
    var from: String?
    var node: String?

    init(op: Op, payloads: [[UInt8]]? = nil, hash: String? = nil, from: String? = nil, node: String? = nil) {
        self.op = op
        self.payloads = payloads
        self.hash = hash
        self.from = from
        self.node = node
    }

    func encoded() -> [UInt8] { Array(try! JSONEncoder().encode(self)) }

    init(bytes: [UInt8]) throws { self = try JSONDecoder().decode(PeerRequest.self, from: Data(bytes)) }
}

struct PeerAnswer: Codable, Sendable {
    var indexes: [UInt64]?

    func encoded() -> [UInt8] { Array(try! JSONEncoder().encode(self)) }

    init(indexes: [UInt64]? = nil) { self.indexes = indexes }

    init(bytes: [UInt8]) throws { self = try JSONDecoder().decode(PeerAnswer.self, from: Data(bytes)) }
}

/// What a node announces in its beacons, so peers can show it and the leader can schedule on it.
struct NodeStatus: Codable, Sendable, Equatable {
    /// Raft role: leader, follower, candidate, or joining (not a member yet).
    var r: String
    /// Render slots.
    var s: Int
    /// Has a Raft log (belongs to a farm); a fresh node with an empty log is `false`.
    var m: Bool
    /// Current task, `job/frame`, cut to fit a beacon.
    var t: String?

    func encoded() -> [UInt8] { Array(try! JSONEncoder().encode(self).prefix(Beacon.maxStatusBytes)) }

    init(r: String, s: Int, m: Bool, t: String?) {
        self.r = r
        self.s = s
        self.m = m
        self.t = t
    }

    init?(bytes: [UInt8]) {
        guard let decoded = try? JSONDecoder().decode(NodeStatus.self, from: Data(bytes)) else { return nil }
        self = decoded
    }
}

extension FarmNode {
    // MARK: Raft over the mesh

    /// Joins or founds the farm (after a discovery window when the log is empty), then runs Raft.
    func runRaft() async throws {
        let hasState = !(try raftStore.loadNow().log.isEmpty)
        let founderMark = settings.data.founderMark
        if !hasState && FileManager.default.fileExists(atPath: founderMark) {
            // `rexnode init` made this farm here: found it now; the mark goes once the log holds the founding.
            try raftStore.persistNow(BootstrapPlanner.foundingState(for: nodeID))
            logger.info("founded the farm made by rexnode init", metadata: ["raft/members": "1"])
        } else if !hasState {
            let clock = ContinuousClock()
            let started = clock.now
            let window = Duration.milliseconds(max(1000, settings.beaconMilliseconds * 3))
            decide: while true {
                if settings.createdFarm, await mesh.otherFarmsSeen() > 0 {
                    throw FarmError(
                        .alreadyRunning,
                        "Another rexnode farm is visible on this network; join it with --token "
                            + "(run `rexnode token` on one of its machines).")
                }
                let peers = await mesh.peers().filter { $0.state == .alive }.map { peer in
                    DiscoveredPeer(id: peer.nodeID, isMember: NodeStatus(bytes: peer.status)?.m ?? false)
                }
                let elapsed = clock.now - started
                let decision = BootstrapPlanner.decide(
                    selfID: nodeID, hasState: false, peers: peers,
                    startedAt: RaftTime(nanoseconds: 0), now: RaftTime(nanoseconds: elapsed.raftNanoseconds),
                    window: window)
                switch decision {
                case .resume: break decide
                case .wait: try await Task.sleep(for: .milliseconds(100))
                case .bootstrap:
                    try raftStore.persistNow(BootstrapPlanner.foundingState(for: nodeID))
                    logger.info("founded a new farm", metadata: ["raft/members": "1"])
                    if settings.createdFarm { onFounded() }
                    break decide
                case .join(let contact):
                    logger.info("joining the farm", metadata: ["contact": "\(contact ?? "-")"])
                    break decide
                }
            }
        }
        try? FileManager.default.removeItem(atPath: founderMark)
        try await raft.run()
    }

    /// Logs every Raft role, term or leader change of this node, one line each, with a fixed message so logs can be
    /// searched: `raft role changed` with `raft/role`, `raft/term` and `raft/leader` ("-" for none). The stream
    /// belongs to the node's one `RaftNode` (run once per process) and ends when it stops.
    static func logRoleChanges(_ changes: AsyncStream<RaftStatus>, logger: Logger) async {
        var last: (RaftRole, UInt64, String?)?
        for await status in changes {
            // The node reports its state as of each report, so two reports in one step can repeat a state.
            if let last, last == (status.role, status.term, status.leader) { continue }
            last = (status.role, status.term, status.leader)
            logger.notice(
                "raft role changed",
                metadata: [
                    "raft/role": "\(status.role.rawValue)", "raft/term": "\(status.term)",
                    "raft/leader": "\(status.leader ?? "-")",
                ])
        }
    }

    func sendRaftMessages() async {
        for await (peer, bytes) in raftOutgoing {
            // Raft tolerates loss: a peer without a connection just misses this message.
            try? await mesh.send(to: peer, .raft(bytes))
        }
    }

    func receiveMeshMessages() async {
        for await (from, message) in mesh.incoming {
            if case .raft(let bytes) = message { raft.receive(from: from, bytes: bytes) }
        }
    }

    /// Answers another daemon's request (the mesh has already authenticated it as a farm member).
    func answerPeer(from: String, _ payload: [UInt8]) async throws -> [UInt8] {
        let request = try PeerRequest(bytes: payload)
        switch request.op {
        case .propose:
            return PeerAnswer(indexes: try await raftLog.proposeForwarded(request.payloads ?? [])).encoded()
        case .replicate:
            guard let hash = request.hash else { throw FarmError(.badInput, "replicate needs a blob hash.") }
            try await ensureBlob(hash, holders: [request.from ?? from])
            return PeerAnswer().encoded()
        case .leave:
            guard let node = request.node else { throw FarmError(.badInput, "leave needs a node.") }
            _ = try await raft.removeMember(node)
            return PeerAnswer().encoded()
        }
    }

    // MARK: Peers

    /// Members that can take work now, with their render slots (this node's from its settings).
    func renderSlots() async -> [(node: String, slots: Int)] {
        let members = await raft.status?.members ?? [nodeID]
        var slots: [(String, Int)] = []
        if members.contains(nodeID) || members.isEmpty { slots.append((nodeID, settings.slots)) }
        for peer in await mesh.peers() where peer.state == .alive && members.contains(peer.nodeID) {
            slots.append((peer.nodeID, NodeStatus(bytes: peer.status)?.s ?? 1))
        }
        return slots
    }

    /// Members this node can reach now (for copies of images), excluding itself.
    func alivePeers() async -> [String] {
        let members = await raft.status?.members ?? []
        return await mesh.peers().filter { $0.state == .alive && members.contains($0.nodeID) }.map(\.nodeID)
    }

    /// This node's role as `peers` and beacons name it: a follower that is not a member yet is joining.
    func role(in status: RaftStatus?) -> String {
        switch status?.role {
        case .leader?: "leader"
        case .candidate?: "candidate"
        case .follower? where status?.members.contains(nodeID) == true: "follower"
        default: "joining"
        }
    }

    func publishStatusLoop() async {
        while !Task.isCancelled {
            let status = await raft.status
            let role = leaving ? "leaving" : role(in: status)
            let task = progress.snapshot().values.first.map { "\($0.job)/\($0.frame)" }
            let isMember = (status?.lastIndex ?? 0) > 0
            await mesh.setStatus(NodeStatus(r: role, s: settings.slots, m: isMember, t: task).encoded())
            try? await Task.sleep(for: .milliseconds(max(200, settings.beaconMilliseconds / 2)))
        }
    }

    // MARK: Leader duties

    /// On the leader: add discovered nodes to the farm, evict long-dead ones, and give a dead node's unfinished
    /// frames to the others.
    func leaderDutiesLoop() async {
        var deadSince: [String: ContinuousClock.Instant] = [:]
        var leadingSince: ContinuousClock.Instant?
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(300))
            guard let status = await raft.status, status.role == .leader else {
                leadingSince = nil
                deadSince = [:]
                continue
            }
            let since = leadingSince ?? .now
            leadingSince = since
            let peers = await mesh.peers()
            let now = ContinuousClock.now
            // 1. One membership change at a time: a fresh node that is alive, then a member dead too long.
            // A fresh node (empty log), or one that left or was evicted and came back (it says it is joining).
            if let fresh = peers.first(where: { peer in
                let announced = NodeStatus(bytes: peer.status)
                return peer.state == .alive && !status.members.contains(peer.nodeID)
                    && (announced?.m == false || announced?.r == "joining")
            }) {
                logger.info("adding a node to the farm", metadata: ["peer": "\(fresh.name)", "id": "\(fresh.nodeID)"])
                _ = try? await raft.addMember(fresh.nodeID)
                continue
            }
            var dead: Set<String> = []
            for member in status.members where member != nodeID {
                let peer = peers.first { $0.nodeID == member }
                // A member not heard of at all counts as dead only once this leader has listened long enough.
                let unseenTooLong = peer == nil && now - since > .milliseconds(settings.deadMilliseconds)
                if unseenTooLong || peer?.state == .dead {
                    dead.insert(member)
                    deadSince[member] = deadSince[member] ?? now
                } else {
                    deadSince[member] = nil
                }
            }
            if let evict = deadSince.first(where: {
                now - $0.value > .milliseconds(settings.evictMilliseconds) && status.members.contains($0.key)
            }) {
                logger.info("removing a node dead for too long", metadata: ["id": "\(evict.key)"])
                _ = try? await raft.removeMember(evict.key)
                deadSince[evict.key] = nil
                continue
            }
            // 2. Frames held by dead nodes (or nodes no longer members) go back to the queue.
            guard let open = try? ledger.openAssignments() else { continue }
            let nowMs = Self.nowMs()
            let stale = open.filter { a in
                a.node != nodeID && (dead.contains(a.node) || !status.members.contains(a.node))
                    || a.leaseUntilMs < nowMs
            }
            guard !stale.isEmpty else { continue }
            logger.info("returning frames of lost workers to the queue", metadata: ["chunks": "\(stale.count)"])
            _ = try? await commandLog.propose(
                stale.map {
                    .releaseFrames(
                        ReleaseFrames(
                            assignment: $0.assignment,
                            reason: $0.leaseUntilMs < nowMs ? "lease expired" : "node \($0.node) is dead"))
                })
        }
    }

    /// `rexnode leave`: hand this node's unfinished frames back and leave the membership, so the farm neither
    /// waits for it nor counts it in its majority. Best effort, a few seconds at most: the node exits anyway.
    func leaveFarm() async {
        // From now on beacons say "leaving": the leader must not add this node back while it is still up.
        leaving = true
        await mesh.setStatus(NodeStatus(r: "leaving", s: settings.slots, m: true, t: nil).encoded())
        guard let status = await raft.status, status.members.contains(nodeID), status.members.count > 1 else {
            return
        }
        if let mine = try? ledger.openAssignments(node: nodeID), !mine.isEmpty {
            _ = try? await withTimeout(.seconds(5)) { [commandLog] in
                try await commandLog.propose(
                    mine.map { .releaseFrames(ReleaseFrames(assignment: $0.assignment, reason: "node left")) })
            }
        }
        if status.role == .leader {
            _ = try? await withTimeout(.seconds(3)) { [raft, nodeID] in try await raft.removeMember(nodeID) }
        } else if let leader = status.leader {
            _ = try? await mesh.request(
                to: leader, PeerRequest(op: .leave, node: nodeID).encoded(), timeout: .seconds(5))
        }
    }

    // MARK: Blobs across peers

    /// Makes sure blob `hash` is in this node's store, fetching it from `holders` (all at once) if not.
    func ensureBlob(_ hash: String, holders: [String]) async throws {
        if blobs.has(hash) { return }
        let sources = holders.filter { $0 != nodeID }
        guard !sources.isEmpty else {
            throw FarmError(.notFound, "Blob \(hash.prefix(12))… is not on this node and no peer holds it.")
        }
        try await mesh.fetchBlob(hash, from: sources, into: blobs.directory)
    }

    /// `replicate` until the image is on two nodes, or the farm has no other member to hold it: a frame counts
    /// only once it is on two nodes (or on the only one), so a worker cut off from its peers waits for them.
    func replicateUntilCopied(_ hash: String, submitter: String) async -> [String] {
        var delay = Duration.milliseconds(200)
        while true {
            let holders = await replicate(hash, submitter: submitter)
            let members = await raft.status?.members ?? []
            if holders.count >= 2 || members.subtracting([nodeID]).isEmpty || Task.isCancelled { return holders }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }

    /// Copies a rendered image to a second node (the submitter first) and returns every node that holds it.
    func replicate(_ hash: String, submitter: String) async -> [String] {
        // Only peers connected right now: a node that just died is skipped instead of waited for.
        let connected = Set(await mesh.connectedPeers())
        let alive = await alivePeers().filter { connected.contains($0) }
        let candidates = (alive.contains(submitter) ? [submitter] : []) + alive.filter { $0 != submitter }.sorted()
        for peer in candidates where peer != nodeID {
            let request = PeerRequest(op: .replicate, hash: hash, from: nodeID)
            do {
                _ = try await mesh.request(to: peer, request.encoded(), timeout: .seconds(30))
                return [nodeID, peer]
            } catch {
                logger.warning("could not copy an image to a peer", metadata: ["peer": "\(peer)", "error": "\(error)"])
            }
        }
        return [nodeID]
    }
}

/// Runs `body`, giving up after `limit`.
func withTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw FarmError(.failed, "timed out")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
