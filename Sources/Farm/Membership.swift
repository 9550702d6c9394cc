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

    func sendWaiting(_ bytes: [UInt8], to peer: NodeID) -> Bool {
        mesh.sendRaftWaiting(bytes, to: peer)
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
    /// Set when a recovered farm's leader said this node's log predates the recovery: the daemon stops, sets the
    /// old ledger aside and starts again as a fresh node (`FarmNode.mustStartOver`).
    let startOver = Flag()
    let requestShutdown: @Sendable () async -> Void

    /// Joins or founds the farm (after a discovery window when the log is empty), then runs Raft until cancelled.
    func runRaft(onFounded: @Sendable () -> Void) async throws {
        let hasState = !(try raftStore.loadNow().isEmpty)
        let founderMark = settings.data.founderMark
        if !hasState && FileManager.default.fileExists(atPath: founderMark) {
            // `rexnode init` made this farm here: found it now; the mark goes once the log holds the founding.
            try raftStore.persist(BootstrapPlanner.foundingState(for: nodeID))
            logger.info("founded the farm made by rexnode init", metadata: ["raft/members": "1"])
        } else if !hasState {
            try await bootstrap(onFounded: onFounded)
        } else if let epoch = try await newerEpochHeard(within: discoveryWindow) {
            // A farm recovered without this machine is in sight: its log is stale; it must not campaign with it.
            await onStale(epoch: epoch)
            return
        }
        try? FileManager.default.removeItem(atPath: founderMark)
        try await raft.run()
    }

    /// How long a starting node listens to beacons before it acts: three beacon intervals, at least a second.
    private var discoveryWindow: Duration { .milliseconds(max(1000, settings.beaconMilliseconds * 3)) }

    /// The recovery epoch some live peer announces above this node's log's own, if one does within `window`.
    private func newerEpochHeard(within window: Duration) async throws -> UInt64? {
        let mine = try raftStore.loadNow().recoveryEpoch
        let deadline = ContinuousClock.now + window
        while ContinuousClock.now < deadline {
            if let newer = await newestEpoch(), newer > mine { return newer }
            try await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    /// The highest recovery epoch live peers announce (nil: none announces one).
    private func newestEpoch() async -> UInt64? {
        await mesh.peers().filter { $0.state == .alive }.compactMap { NodeStatus(bytes: $0.status)?.epoch }.max()
    }

    /// While running: a peer has announced a newer recovery epoch than this node's log for a whole discovery window,
    /// and this node follows no leader of that epoch (a fresh node catching up does), so it was left out of the
    /// recovery: it starts over.
    func watchEpochs() async {
        var since: ContinuousClock.Instant?
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(200))
            guard let status = await raft.status, status.lastIndex > 0, !leaving.isSet,
                let newer = await newestEpoch(), newer > status.recoveryEpoch,
                await leaderEpoch(status) < newer
            else {
                since = nil
                continue
            }
            let start = since ?? ContinuousClock.now
            since = start
            if ContinuousClock.now - start >= discoveryWindow {
                await onStale(epoch: newer)
                return
            }
        }
    }

    /// The recovery epoch of the leader this node follows (0 when it follows none or leads itself).
    private func leaderEpoch(_ status: RaftStatus) async -> UInt64 {
        guard let leader = status.leader, leader != nodeID else { return 0 }
        let announced = await mesh.peers().first { $0.nodeID == leader }.flatMap { NodeStatus(bytes: $0.status) }
        return announced?.epoch ?? 0
    }

    private func bootstrap(onFounded: @Sendable () -> Void) async throws {
        let clock = ContinuousClock()
        let started = clock.now
        let window = discoveryWindow
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
            // A node given the key of a farm that exists (`--token`, `--key`, or a folder whose ledger is gone)
            // never founds one: the farm was founded where its key was made (`rexnode init`, or `join` without a
            // token). Fresh machines that start before the founder would otherwise found a second farm with the
            // same key, which the first never merges with. It waits as a joining node until a member adds it.
            if !settings.createdFarm {
                if elapsed < window && !peers.contains(where: \.isMember) {
                    try await Task.sleep(for: .milliseconds(100))
                    continue
                }
                let contact = peers.filter(\.isMember).map(\.id).min()
                logger.info(
                    contact == nil
                        ? "joining the farm: no member is in sight yet; waiting for one to add this node"
                        : "joining the farm", metadata: ["farm/contact": "\(contact ?? "-")"])
                return
            }
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
    ///
    /// Before Raft runs (a node with a log listens one discovery window first), it announces what its stored log
    /// says: a log, its epoch, and `follower`, never `joining`, so a recovered farm's leader does not add it with
    /// that log but tells it the log is stale.
    func publishStatus() async {
        let stored = (try? raftStore.loadNow()) ?? StoredRaftState()
        while !Task.isCancelled {
            let status = await raft.status
            var role = leaving.isSet ? .leaving : roster.role(in: status)
            if status == nil && !stored.isEmpty && !leaving.isSet { role = .follower }
            let task = progress.snapshot().values.first.map { "\($0.job)/\($0.frame)" }
            let hasLog = status.map { $0.lastIndex > 0 } ?? !stored.isEmpty
            let epoch = status?.recoveryEpoch ?? stored.recoveryEpoch
            let announced = NodeStatus(
                role: role, slots: settings.slots, hasLog: hasLog, task: task, epoch: epoch, blender: roster.blender
            ).with(tags: settings.tags, devices: settings.slotDevices, restingUntilMs: roster.rest.restingUntilMs)
                .with(disk: roster.disk.current)
            await mesh.setStatus(announced.encoded())
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
    ///
    /// Refused (one sentence, nothing changed) unless `force` when the farm would be left with fewer than three
    /// voters: two cannot lose another machine without stopping, and then only `rexnode recover` helps.
    func leave(force: Bool = false) async throws -> [String: String] {
        // (A learner's leaving costs no vote; after a voter leaves, the leader promotes a learner if there is one.)
        if !force, let status = await raft.status, status.voters.contains(nodeID), status.members.count > 1,
            status.members.count - 1 < 3
        {
            let left = status.members.count - 1
            throw FarmError(
                .badInput,
                "Leaving would leave this farm with \(left) voter\(left == 1 ? "" : "s"), and fewer than 3 cannot "
                    + "lose another machine without stopping; run `rexnode leave --force` to leave anyway.")
        }
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

extension Membership {
    /// `rexnode recover` on a survivor of a lost quorum: the members this node can reach now (connected and alive)
    /// become the whole farm, at a new term (see `RaftInstance.onRecover`). Waits a few seconds for the farm to
    /// commit again and answers with one sentence saying what was done and what it risks.
    func recover() async throws -> RecoveryRow {
        guard let status = await raft.status else {
            throw FarmError(.notRunning, "Raft has not started on this node yet; try again in a moment.")
        }
        let connected = Set(await mesh.connectedPeers())
        let alive = Set(await mesh.peers().filter { $0.state == .alive }.map(\.nodeID))
        let live = status.members.filter { $0 == nodeID || (connected.contains($0) && alive.contains($0)) }
        let recovered: (term: UInt64, index: UInt64)
        do {
            recovered = try await raft.recover(keeping: live)
        } catch let error as RaftError where error.code == .recoveryRefused {
            throw FarmError(.badInput, error.message)
        }
        let missing = status.members.subtracting(live).sorted()
        logger.warning(
            "recovered the farm after a lost quorum",
            metadata: [
                "raft/term": "\(recovered.term)", "raft/members": "\(live.sorted().joined(separator: ","))",
                "raft/dropped": "\(missing.joined(separator: ","))",
            ])
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        var committed = false
        while clock.now < deadline {
            if let now = await raft.status, now.commitIndex >= recovered.index {
                committed = true
                break
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        let names = missing.map { String($0.prefix(12)) }.joined(separator: ", ")
        let message =
            "Recovered: the farm is now \(live.count) member\(live.count == 1 ? "" : "s") at term \(recovered.term)"
            + (committed ? " and commits again" : " (not committed yet)") + "; entries that only the missing "
            + "machine\(missing.count == 1 ? "" : "s") (\(names)) held may be lost, and "
            + "\(missing.count == 1 ? "it" : "they") must not come back with \(missing.count == 1 ? "its" : "their") "
            + "old data except to rejoin as new members."
        return RecoveryRow(
            node: nodeID, state: committed ? "recovered" : "recovering", term: recovered.term,
            members: live.sorted(), dropped: missing, message: message)
    }

    /// A recovered farm's leader says this node's log predates its recovery at `epoch`: if this node's own epoch is
    /// older, it stops and starts over as a fresh node (the old ledger is set aside, not deleted).
    ///
    /// `instance` (from the leader's request) is the run the leader saw announcing the stale log. A request for an
    /// earlier run is ignored: it waited for a connection to this node and reached the run that already started
    /// over, whose log (empty, or being filled by the recovered leader) is not stale; starting over again would
    /// throw away the durable state of a node the leader may have added meanwhile. `nil`: this run found out itself.
    func onStale(epoch: UInt64, instance: UInt64? = nil) async {
        if let instance, instance != mesh.instanceID {
            logger.info(
                "ignoring a stale-log notice meant for an earlier run of this node",
                metadata: ["farm/epoch": "\(epoch)"])
            return
        }
        let mine = await raft.status?.recoveryEpoch ?? 0
        guard epoch > mine, !startOver.isSet else { return }
        logger.warning(
            "this node's log is from before the farm's recovery; starting over as a new member",
            metadata: ["raft/epoch": "\(mine)", "farm/epoch": "\(epoch)"])
        startOver.set()
        let shutdown = requestShutdown
        Task {
            try? await Task.sleep(for: .milliseconds(100))
            await shutdown()
        }
    }
}

/// What `rexnode recover` answers.
struct RecoveryRow: Encodable, Sendable {
    var node: String
    var state: String
    var term: UInt64
    var members: [String]
    var dropped: [String]
    var message: String
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
