import Election
import Foundation
import Ledger
import Logging
import Mesh

/// What the leader does besides Raft, decided as a pure function (like `RaftInstance`): the membership and the
/// peer table in, what to change out. Time is a `Duration` on the caller's clock, so tests step it by hand.
///
/// One membership change at a time: first a fresh node that is alive (its log is empty, or it says it is joining
/// after it left or was evicted; a node saying "leaving" is never added back), as a voter while the farm has fewer
/// than `maxVoters`, else as a learner; then the voter count (a voter above `maxVoters` or dead for `demoteAfter`
/// while a live, caught-up learner can take its place is demoted; a live, caught-up learner is promoted while there
/// are fewer than `maxVoters`); then a member dead longer than `evictAfter`. A revoked identity is never added,
/// whatever it announces. Otherwise the frames of assignments whose node is dead, no longer a member, or whose lease
/// ran out go back to the queue. A member never heard from counts as dead only once this leader has listened for
/// `deadAfter`.
struct LeaderDuties: Sendable {
    struct Peer: Sendable, Equatable {
        var id: String
        var name: String
        var state: PeerState
        var announced: NodeStatus?
        /// The run (instance id) whose latest beacon `announced` came in.
        var instance: UInt64 = 0
        /// Whether this leader has an authenticated connection to it now: a node is added only then, or Raft's
        /// quorum would count a member the leader cannot reach yet (in a farm of one, that stops the farm).
        var connected: Bool = true
    }

    enum Directive: Sendable, Equatable {
        case addMember(id: String, name: String, voter: Bool)
        /// Promote a learner (`true`) or demote a voter (`false`).
        case setVoter(id: String, voter: Bool)
        case removeMember(id: String)
        case release([ReleaseFrames])
        /// Tell a machine from before this farm's recovery that its log is stale (`PeerRequest.stale`); `instance` is
        /// the run that announced it.
        case tellStale(id: String, instance: UInt64, epoch: UInt64)
    }

    let deadAfter: Duration
    let evictAfter: Duration
    let maxVoters: Int
    /// A voter dead this long gives its vote to a live learner (three times `deadAfter`).
    var demoteAfter: Duration { deadAfter * 3 }
    private var deadSince: [String: Duration] = [:]
    private var leadingSince: Duration?
    /// When each stale machine was last told, so it is told again only every few seconds.
    private var toldStale: [String: Duration] = [:]

    init(deadAfter: Duration, evictAfter: Duration, maxVoters: Int = 5) {
        self.deadAfter = deadAfter
        self.evictAfter = evictAfter
        self.maxVoters = maxVoters
    }

    /// This node is not the leader (any more): what it knew about dead members starts over when it leads again.
    mutating func stepDown() {
        leadingSince = nil
        deadSince = [:]
        toldStale = [:]
    }

    /// `voters` are the members that vote (nil: every member); `caughtUp` the learners whose log is close enough to
    /// this leader's to be promoted.
    mutating func onTick(
        now: Duration, nowMs: Int64, selfID: String, members: Set<String>, peers: [Peer], open: [AssignmentRecord],
        epoch: UInt64 = 0, revoked: Set<String> = [], voters: Set<String>? = nil, caughtUp: Set<String> = []
    ) -> [Directive] {
        let voters = voters ?? members
        let since = leadingSince ?? now
        leadingSince = since
        // A machine that is not a member, has a log (whether it thinks it is a member or asks to join again) and
        // does not say leaving, and whose log is from before this farm's recovery, cannot catch up: its log may hold
        // entries the farm never had, committed ones among them, which Raft would have to overwrite. It is never
        // added with that log; it is told to start over, and the next tick adds it as a fresh node.
        let isStale = { (peer: Peer) -> Bool in
            guard epoch > 0, let announced = peer.announced else { return false }
            return announced.hasLog && announced.role != .leaving && announced.epoch ?? 0 < epoch
        }
        if let stale = peers.first(where: { peer in
            guard peer.state == .alive, !members.contains(peer.id), isStale(peer) else { return false }
            return toldStale[peer.id].map { now - $0 > .seconds(3) } ?? true
        }) {
            toldStale[stale.id] = now
            return [.tellStale(id: stale.id, instance: stale.instance, epoch: epoch)]
        }
        if let fresh = peers.first(where: { peer in
            peer.state == .alive && peer.connected && !members.contains(peer.id) && !isStale(peer)
                && !revoked.contains(peer.id) && (peer.announced?.hasLog == false || peer.announced?.role == .joining)
        }) {
            return [.addMember(id: fresh.id, name: fresh.name, voter: voters.count < maxVoters)]
        }
        var dead: Set<String> = []
        for member in members where member != selfID {
            let peer = peers.first { $0.id == member }
            let unseenTooLong = peer == nil && now - since > deadAfter
            if unseenTooLong || peer?.state == .dead {
                dead.insert(member)
                deadSince[member] = deadSince[member] ?? now
            } else {
                deadSince[member] = nil
            }
        }
        for member in deadSince.keys where !members.contains(member) { deadSince[member] = nil }
        if let change = voterChange(
            now: now, selfID: selfID, members: members, voters: voters, peers: peers,
            caughtUp: caughtUp, dead: dead)
        {
            return [change]
        }
        if let evict = deadSince.filter({ now - $0.value > evictAfter }).keys.sorted().first {
            deadSince[evict] = nil
            return [.removeMember(id: evict)]
        }
        let stale = open.filter { a in
            a.node != selfID && (dead.contains(a.node) || !members.contains(a.node)) || a.leaseUntilMs < nowMs
        }
        guard !stale.isEmpty else { return [] }
        return [
            .release(
                stale.map {
                    ReleaseFrames(
                        assignment: $0.assignment,
                        reason: $0.leaseUntilMs < nowMs ? "lease expired" : "node \($0.node) is dead")
                })
        ]
    }

    /// Keeps `maxVoters` voters, one change at a time (each a single-server change of the voting configuration).
    private func voterChange(
        now: Duration, selfID: String, members: Set<String>, voters: Set<String>, peers: [Peer],
        caughtUp: Set<String>, dead: Set<String>
    ) -> Directive? {
        let live = Set(peers.filter { $0.state == .alive && $0.connected }.map(\.id))
        let ready = members.subtracting(voters).filter { live.contains($0) && caughtUp.contains($0) }.sorted()
        let others = voters.subtracting([selfID])
        if voters.count > maxVoters {
            // Too many voters (an older farm, or a lower --voters on this leader): dead ones go first.
            let pick = others.filter(dead.contains).sorted().first ?? others.sorted().last
            return pick.map { .setVoter(id: $0, voter: false) }
        }
        if !ready.isEmpty,
            let gone = others.filter({ deadSince[$0].map { now - $0 > demoteAfter } ?? false }).sorted().first
        {
            return .setVoter(id: gone, voter: false)
        }
        if voters.count < maxVoters, let learner = ready.first {
            return .setVoter(id: learner, voter: true)
        }
        return nil
    }
}

/// The leader's loops: membership and lost work (`LeaderDuties`, every 300 ms), and turning free slots into
/// assignments whenever the ledger changes (`Scheduler`). Followers' loops idle.
struct LeaderService: Sendable {
    let nodeID: String
    let settings: NodeSettings
    let raft: RaftNode
    let mesh: MeshNode
    let ledger: LedgerStore
    let commandLog: any CommandLog
    let roster: Roster
    let pulse: Pulse
    let logger: Logger

    func runDuties() async {
        var duties = LeaderDuties(
            deadAfter: .milliseconds(settings.deadMilliseconds), evictAfter: .milliseconds(settings.evictMilliseconds),
            maxVoters: settings.maxVoters)
        let origin = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(300))
            guard let status = await raft.status, status.role == .leader else {
                duties.stepDown()
                continue
            }
            let connected = Set(await mesh.connectedPeers())
            let peers = await mesh.peers().map {
                LeaderDuties.Peer(
                    id: $0.nodeID, name: $0.name, state: $0.state, announced: NodeStatus(bytes: $0.status),
                    instance: $0.instanceID, connected: connected.contains($0.nodeID))
            }
            guard let open = try? ledger.openAssignments(), let revoked = try? ledger.revokedNodes() else { continue }
            // A learner is ready for a vote once its log is within a few hundred entries of what the farm committed.
            let caughtUp = Set(status.matchIndex.filter { $0.value + 256 >= status.commitIndex }.keys)
            let directives = duties.onTick(
                now: ContinuousClock.now - origin, nowMs: WallClock.millis(), selfID: nodeID,
                members: status.members, peers: peers, open: open, epoch: status.recoveryEpoch, revoked: revoked,
                voters: status.voters, caughtUp: caughtUp)
            for directive in directives {
                // A node is added only once this leader has applied everything committed before its term (the
                // ledger's revoked identities are then complete): a new leader must not add back a machine revoked
                // under the previous one.
                if case .addMember = directive {
                    guard status.canChangeMembership, let applied = try? ledger.appliedIndex(),
                        applied >= status.commitIndex
                    else { continue }
                }
                await perform(directive)
            }
        }
    }

    private func perform(_ directive: LeaderDuties.Directive) async {
        switch directive {
        case .addMember(let id, let name, let voter):
            logger.info(
                voter ? "adding a node to the farm" : "adding a node to the farm as a learner",
                metadata: ["farm/peer": "\(name)", "farm/node": "\(id)"])
            _ = try? await (voter ? raft.addMember(id) : raft.addLearner(id))
        case .setVoter(let id, let voter):
            logger.info(
                voter ? "promoting a learner to voter" : "demoting a voter to learner", metadata: ["farm/node": "\(id)"]
            )
            _ = try? await raft.setVoter(id, voter)
        case .removeMember(let id):
            logger.info("removing a node dead for too long", metadata: ["farm/node": "\(id)"])
            _ = try? await raft.removeMember(id)
        case .release(let releases):
            logger.info("returning frames of lost workers to the queue", metadata: ["farm/chunks": "\(releases.count)"])
            _ = try? await commandLog.propose(releases.map { .releaseFrames($0) })
        case .tellStale(let id, let instance, let epoch):
            logger.notice(
                "telling a machine from before the recovery to start over",
                metadata: ["farm/node": "\(id)", "raft/epoch": "\(epoch)"])
            let request = PeerRequest.stale(epoch: epoch, instance: instance)
            _ = try? await mesh.request(to: id, request.encoded(), timeout: .seconds(5))
        }
    }

    /// Turns free slots into assignments whenever the ledger changes, while this node leads.
    func runScheduler() async {
        for await _ in pulse.subscribe() {
            guard await commandLog.isLeader() else { continue }
            do {
                let open = try ledger.openAssignments()
                let tags = await roster.memberTags()
                let versions = await roster.blenderVersions()
                let slots = await roster.renderSlots().map { node, total in
                    Scheduler.Slot(
                        node: node, free: max(0, total - open.filter { $0.node == node }.count), tags: tags[node] ?? [],
                        blender: versions[node] ?? [])
                }
                let free = slots.reduce(0) { $0 + max(0, $1.free) }
                guard free > 0 else { continue }
                let queue = try ledger.queuedWork(framesPerJob: free * FarmNode.maxChunk)
                guard !queue.isEmpty else { continue }
                let decisions = Scheduler.assign(queue: queue, slots: slots)
                guard !decisions.isEmpty else { continue }
                let term = await commandLog.currentTerm()
                let lease = WallClock.millis() + settings.leaseMilliseconds
                _ = try await commandLog.propose(
                    decisions.map {
                        .assignChunk(
                            AssignChunk(
                                assignment: "a-" + FarmNode.shortID(), job: $0.job, frames: $0.frames, node: $0.node,
                                term: term, leaseUntilMs: lease, tiles: $0.tiles))
                    })
            } catch {
                logger.error("scheduling failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
