import Election
import Foundation
import Ledger
import Logging
import Mesh
import Synchronization

/// Raft's messages leave straight through the mesh connection of each peer, from Raft's own thread: no queue, no
/// actor, no pool thread in between, and a slow peer's full socket drops only its own messages (Raft retries).
struct MeshRaftTransport: RaftTransport {
    let mesh: MeshNode

    func send(_ bytes: [UInt8], to peer: NodeID) {
        mesh.sendRaft(bytes, to: peer)
    }
}

/// This node's place in the farm: founding or joining it, what its beacons announce, and leaving it.
struct Membership: Sendable {
    let nodeID: String
    let settings: NodeSettings
    let raft: RaftNode
    let raftStore: RaftLogStore
    let mesh: MeshNode
    let ledger: LedgerStore
    let commandLog: any CommandLog
    let roster: Roster
    let progress: SlotProgress
    let logger: Logger
    /// Set by `rexnode leave`: beacons announce it, so the leader does not add this node back.
    let leaving = Flag()
    let requestShutdown: @Sendable () async -> Void

    /// Joins or founds the farm (after a discovery window when the log is empty), then runs Raft until cancelled.
    func runRaft(onFounded: @Sendable () -> Void) async throws {
        let hasState = !(try raftStore.loadNow().log.isEmpty)
        let founderMark = settings.data.founderMark
        if !hasState && FileManager.default.fileExists(atPath: founderMark) {
            // `rexnode init` made this farm here: found it now; the mark goes once the log holds the founding.
            try raftStore.persist(BootstrapPlanner.foundingState(for: nodeID))
            logger.info("founded the farm made by rexnode init", metadata: ["raft/members": "1"])
        } else if !hasState {
            try await bootstrap(onFounded: onFounded)
        }
        try? FileManager.default.removeItem(atPath: founderMark)
        try await raft.run()
    }

    private func bootstrap(onFounded: @Sendable () -> Void) async throws {
        let clock = ContinuousClock()
        let started = clock.now
        let window = Duration.milliseconds(max(1000, settings.beaconMilliseconds * 3))
        while true {
            if settings.createdFarm, await mesh.otherFarmsSeen() > 0 {
                throw FarmError(
                    .alreadyRunning,
                    "Another rexnode farm is visible on this network; join it with --token "
                        + "(run `rexnode token` on one of its machines).")
            }
            let peers = await mesh.peers().filter { $0.state == .alive }.map { peer in
                DiscoveredPeer(id: peer.nodeID, isMember: NodeStatus(bytes: peer.status)?.hasLog ?? false)
            }
            let elapsed = clock.now - started
            let decision = BootstrapPlanner.decide(
                selfID: nodeID, hasState: false, peers: peers,
                startedAt: RaftTime(nanoseconds: 0), now: RaftTime(nanoseconds: elapsed.raftNanoseconds),
                window: window)
            switch decision {
            case .resume: return
            case .wait: try await Task.sleep(for: .milliseconds(100))
            case .bootstrap:
                try raftStore.persist(BootstrapPlanner.foundingState(for: nodeID))
                logger.info("founded a new farm", metadata: ["raft/members": "1"])
                if settings.createdFarm { onFounded() }
                return
            case .join(let contact):
                logger.info("joining the farm", metadata: ["farm/contact": "\(contact ?? "-")"])
                return
            }
        }
    }

    /// Logs every Raft role, term or leader change of this node, one line each, with a fixed message so logs can be
    /// searched: `raft role changed` with `raft/role`, `raft/term` and `raft/leader` ("-" for none).
    func logRoleChanges() async {
        var last: (RaftRole, UInt64, String?)?
        for await status in raft.roleChanges {
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

    /// Keeps the beacons' status current: role, slots, whether this node has a log, what it renders.
    func publishStatus() async {
        while !Task.isCancelled {
            let status = await raft.status
            let role = leaving.isSet ? .leaving : roster.role(in: status)
            let task = progress.snapshot().values.first.map { "\($0.job)/\($0.frame)" }
            let hasLog = (status?.lastIndex ?? 0) > 0
            await mesh.setStatus(NodeStatus(role: role, slots: settings.slots, hasLog: hasLog, task: task).encoded())
            try? await Task.sleep(for: .milliseconds(max(200, settings.beaconMilliseconds / 2)))
        }
    }

    /// Removal is enforced: a node removed from the farm has its current run shut out of this node's mesh, and
    /// a node added (back) is let in again. Only for a removal applied live: replaying history (a fresh node, or
    /// one catching up) must not shut out the current run of a node that was added back later in the log, nor
    /// the leader it is catching up from.
    static func enforce(_ change: LedgerCommand, at index: UInt64, raft: RaftNode, mesh: MeshNode) async {
        switch change {
        case .addNode(let c):
            await mesh.allow(nodeID: c.node)
        case .removeNode(let c):
            guard let status = await raft.status, status.leader != c.node, !status.members.contains(c.node),
                index + 16 >= status.commitIndex
            else { return }
            await mesh.deny(nodeID: c.node)
        default:
            break
        }
    }

    /// `rexnode leave`: hand this node's unfinished frames back and leave the membership, so the farm neither
    /// waits for it nor counts it in its majority. Best effort, a few seconds at most; then the daemon stops.
    func leave() async -> [String: String] {
        // From now on beacons say "leaving": the leader must not add this node back while it is still up.
        leaving.set()
        await mesh.setStatus(NodeStatus(role: .leaving, slots: settings.slots, hasLog: true, task: nil).encoded())
        if let status = await raft.status, status.members.contains(nodeID), status.members.count > 1 {
            if let mine = try? ledger.openAssignments(node: nodeID), !mine.isEmpty {
                _ = try? await withTimeout(.seconds(5)) { [commandLog] in
                    try await commandLog.propose(
                        mine.map { .releaseFrames(ReleaseFrames(assignment: $0.assignment, reason: "node left")) })
                }
            }
            if status.role == .leader {
                _ = try? await withTimeout(.seconds(3)) { [raft, nodeID] in try await raft.removeMember(nodeID) }
            } else if let leader = status.leader {
                _ = try? await mesh.request(to: leader, PeerRequest.leave(node: nodeID).encoded(), timeout: .seconds(5))
            }
        }
        // Shut down just after the answer is on its way.
        let shutdown = requestShutdown
        Task {
            try? await Task.sleep(for: .milliseconds(100))
            await shutdown()
        }
        return ["node": nodeID, "state": "leaving"]
    }
}

/// A flag set once, read from any thread.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)

    var isSet: Bool { value.load(ordering: .relaxed) }
    func set() { value.store(true, ordering: .relaxed) }
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
