// MARK: - Directives

/// What a `RaftInstance` asks its shell to do, in order.
///
/// The order is part of the contract: a `.persist` must be durable before any later directive of the same
/// list is performed, so a vote or an acknowledgement never leaves the node before the state it promises.
public enum RaftDirective: Hashable, Sendable {
    /// Make this durable (one transaction), then call `onPersisted(_:now:)` with it.
    case persist(PersistRequest)
    /// Send a message to a peer; loss is tolerated.
    case send(to: NodeID, RaftMessage)
    /// Hand newly committed entries, in index order, to the state machine.
    case apply([LogEntry])
    /// Send `peer` the stored snapshot (at least as new as this one, whose `data` is empty), in `InstallSnapshot`
    /// chunks of at most `maxAppendBytes` (`InstallSnapshot.chunks`): the instance keeps no snapshot bytes, the
    /// shell reads them from storage. Performed like `.send`, after the writes before it.
    case sendSnapshot(to: NodeID, term: Term, snapshot: RaftSnapshot)
    /// Replace the state machine's state with this snapshot (installed from the leader); entries after it follow
    /// as `.apply`. Performed in order with `.apply`, after the `.persist` that stored it.
    case restore(RaftSnapshot)
    /// The node's role, term or known leader changed (for logs, metrics and `rexnode peers`).
    case roleChanged(role: RaftRole, term: Term, leader: NodeID?)
    /// Call `onTick(now:)` no later than this time.
    case scheduleTimer(at: RaftTime)
}

/// The result of `onRecover`: the recovery entry written, or why it was refused (one sentence).
public enum RecoveryOutcome: Hashable, Sendable {
    case recovered(term: Term, index: LogIndex, directives: [RaftDirective])
    case refused(reason: String)
}

/// The result of a proposal: the log indices assigned, or where the leader might be.
public enum ProposalOutcome: Hashable, Sendable {
    case accepted(first: LogIndex, last: LogIndex, directives: [RaftDirective])
    case notLeader(hint: NodeID?)
    /// A membership change was refused (another change pending, or no entry of this term committed yet).
    case rejected(reason: String)
}

// MARK: - RaftInstance

/// Raft-lite consensus as a pure value: each input (`onTick`, `onMessage`, `onPropose`, `onPersisted`)
/// mutates the state and returns directives; sockets, clocks, disk and randomness stay in the shell.
///
/// This is what makes the protocol testable by the thousand seeds in `rexsim` and in plain unit tests.
public struct RaftInstance<Random: RandomNumberGenerator>: Sendable where Random: Sendable {
    public let id: NodeID
    public let settings: RaftSettings
    private var random: Random

    // Persistent state (mirrored by storage).
    public private(set) var currentTerm: Term
    public private(set) var votedFor: NodeID?
    /// The latest snapshot's description (`nil`: the log was never compacted); it stands in for every entry up to
    /// its last index. Its `data` is always empty here: the bytes live in storage only (memory stays bounded by the
    /// log suffix, not by the state's size).
    public private(set) var snapshot: RaftSnapshot?
    /// The entries after the snapshot, in memory: `log[i]` has index `snapshotIndex + i + 1`.
    public private(set) var log: [LogEntry]
    /// The chunks of a snapshot being received from the leader: its description, the bytes so far, their total.
    private var incoming: (term: Term, snapshot: RaftSnapshot, total: UInt64)?
    /// When the leader last sent each member its snapshot, and how many times in a row (each resend waits twice as
    /// long: a large snapshot can take longer than `snapshotRetry` to arrive and install, and a resend's first chunk
    /// must not keep restarting it).
    private var snapshotSent: [NodeID: (index: LogIndex, at: RaftTime, copies: Int)] = [:]

    // Volatile state.
    public private(set) var role: RaftRole = .follower
    public private(set) var leaderID: NodeID?
    public private(set) var commitIndex: LogIndex
    public private(set) var appliedIndex: LogIndex
    /// Highest index this node knows to be on its own disk; a leader counts itself only up to here.
    public private(set) var durableIndex: LogIndex
    /// Every member, voters and learners, from the membership entries in the log (committed or not): the leader
    /// replicates to all of them.
    public private(set) var members: Set<NodeID> {
        didSet { peers = members.filter { $0 != id }.sorted() }
    }
    /// The members that vote, campaign and count for a quorum (the rest are learners).
    public private(set) var voters: Set<NodeID> {
        didSet { voterPeers = voters.filter { $0 != id }.sorted() }
    }
    /// The other members in a fixed order, so the directives' order never depends on hashing.
    private var peers: [NodeID] = []
    /// The other voters, in a fixed order: vote requests go to them only.
    private var voterPeers: [NodeID] = []
    private var configIndex: LogIndex
    /// The term of the latest `recover` entry in the log, 0 if none: the farm's *recovery epoch*. Beacons announce
    /// it, so a machine that comes back from before a recovery can tell that its log is stale.
    public private(set) var recoveryEpoch: Term = 0
    /// When this node last knew of a leader (itself, or one whose AppendEntries it accepted); it starts at `init`.
    private var lastLeaderSeen: RaftTime

    private var votes: Set<NodeID> = []
    private var nextIndex: [NodeID: LogIndex] = [:]
    public private(set) var matchIndex: [NodeID: LogIndex] = [:]
    private var heardFrom: Set<NodeID> = []
    private var termStartIndex: LogIndex = 0

    private var lastLeaderContact: RaftTime?
    private var electionDeadline: RaftTime
    private var heartbeatDeadline: RaftTime
    private var quorumCheckDeadline: RaftTime
    private var scheduledTimer: RaftTime?
    private var lastReportedRole: (RaftRole, Term, NodeID?)?

    /// Restores a node from what its storage holds: hard state, snapshot and the entries after it. `appliedIndex` is
    /// how far the state machine already applied (those entries are committed by definition); pass 0 for a state
    /// machine rebuilt from the log. A state machine behind the snapshot must be restored from it first (the shell
    /// does that), so the applied index is never below the snapshot's.
    public init(
        id: NodeID, settings: RaftSettings = RaftSettings(), hardState: HardState = HardState(),
        snapshot: RaftSnapshot? = nil, log: [LogEntry] = [], appliedIndex: LogIndex = 0, random: Random,
        now: RaftTime
    ) {
        self.id = id
        self.settings = settings
        self.random = random
        self.currentTerm = hardState.term
        self.votedFor = hardState.votedFor
        self.snapshot = snapshot?.header
        self.log = log
        let base = snapshot?.lastIndex ?? 0
        let last = base + LogIndex(log.count)
        self.commitIndex = max(base, min(appliedIndex, last))
        self.appliedIndex = max(base, min(appliedIndex, last))
        self.durableIndex = last
        self.members = []
        self.voters = []
        self.configIndex = 0
        self.electionDeadline = now
        self.heartbeatDeadline = now
        self.quorumCheckDeadline = now
        self.lastLeaderSeen = now
        recomputeMembers()
        // The farm's only voter campaigns at its first tick: its own vote is a quorum and no one else can lead, so
        // waiting out an election timeout would only delay a restarted one-machine farm.
        electionDeadline = voters == [id] ? now : now + randomElectionTimeout()
    }

    /// The first entry a brand-new farm writes: the bootstrapping node as its only member, at term 1.
    public static func bootstrapState(for id: NodeID) -> PersistRequest {
        BootstrapPlanner.foundingState(for: id)
    }

    // MARK: Queries

    public var lastIndex: LogIndex { snapshotIndex + LogIndex(log.count) }
    public var lastTerm: Term { log.last?.term ?? snapshotTerm }
    /// The last index the snapshot covers (0: none); the log in memory starts after it.
    public var snapshotIndex: LogIndex { snapshot?.lastIndex ?? 0 }
    public var snapshotTerm: Term { snapshot?.lastTerm ?? 0 }
    public var hardState: HardState { HardState(term: currentTerm, votedFor: votedFor) }
    public var isLeader: Bool { role == .leader }

    /// The term of the entry at `index`; `nil` past the end and for entries compacted into the snapshot (only the
    /// snapshot's own last index keeps its term).
    public func term(at index: LogIndex) -> Term? {
        if index == snapshotIndex { return snapshotTerm }
        guard index > snapshotIndex, index <= lastIndex else { return nil }
        return log[Int(index - snapshotIndex - 1)].term
    }

    /// The entry at `index`, if it is in the log (after the snapshot).
    public func entry(at index: LogIndex) -> LogEntry? {
        guard index > snapshotIndex, index <= lastIndex else { return nil }
        return log[Int(index - snapshotIndex - 1)]
    }

    /// The members that do not vote.
    public var learners: Set<NodeID> { members.subtracting(voters) }

    /// Whether a membership change may be proposed now (leader, own-term entry committed, none pending).
    public var canChangeMembership: Bool {
        role == .leader && commitIndex >= termStartIndex && configIndex <= commitIndex
    }

    // MARK: Inputs

    /// Advances timers: heartbeats and check-quorum for a leader, (pre-)elections for everyone else.
    public mutating func onTick(now: RaftTime) -> [RaftDirective] {
        var out: [RaftDirective] = []
        if role == .leader {
            if settings.checkQuorum && now >= quorumCheckDeadline {
                let active = heardFrom.intersection(voters).count + (voters.contains(id) ? 1 : 0)
                heardFrom = []
                quorumCheckDeadline = now + settings.electionTimeoutMin
                if active < quorum {
                    becomeFollower(term: currentTerm, leader: nil, now: now, out: &out)
                    finish(now: now, out: &out)
                    return out
                }
            }
            if now >= heartbeatDeadline {
                broadcastAppend(now: now, out: &out, heartbeat: true)
            }
        } else if (role == .candidate || role == .preCandidate) && now >= heartbeatDeadline
            && now < electionDeadline
        {
            // Votes can be lost: ask the members that have not granted yet again, once per heartbeat.
            heartbeatDeadline = now + settings.heartbeatInterval
            let request = VoteRequest(
                term: role == .candidate ? currentTerm : currentTerm + 1, candidateID: id, lastLogIndex: lastIndex,
                lastLogTerm: lastTerm)
            for peer in votePeers where !votes.contains(peer) {
                out.append(.send(to: peer, role == .candidate ? .requestVote(request) : .preVote(request)))
            }
        } else if now >= electionDeadline {
            if voters.contains(id) {
                if settings.preVote {
                    startPreVote(now: now, out: &out)
                } else {
                    startElection(now: now, out: &out)
                }
            } else {
                electionDeadline = now + randomElectionTimeout()
            }
        }
        finish(now: now, out: &out)
        return out
    }

    /// Handles one message from a peer.
    public mutating func onMessage(_ message: RaftMessage, from peer: NodeID, now: RaftTime) -> [RaftDirective] {
        var out: [RaftDirective] = []
        var persist = PersistRequest()
        switch message {
        case .appendEntries(let m):
            handleAppend(m, from: peer, now: now, persist: &persist, out: &out)
        case .appendResponse(let m):
            handleAppendResponse(m, from: peer, now: now, persist: &persist, out: &out)
        case .requestVote(let m):
            handleVoteRequest(m, from: peer, now: now, persist: &persist, out: &out)
        case .preVote(let m):
            handlePreVote(m, from: peer, now: now, out: &out)
        case .voteResponse(let m):
            handleVoteResponse(m, from: peer, now: now, persist: &persist, out: &out)
        case .installSnapshot(let m):
            handleInstallSnapshot(m, from: peer, now: now, persist: &persist, out: &out)
        }
        if !persist.isEmpty {
            out.insert(.persist(persist), at: 0)
        }
        finish(now: now, out: &out)
        return out
    }

    /// Appends commands as one batch (one persist, one round of AppendEntries) if this node leads.
    public mutating func onPropose(_ commands: [RaftCommand], now: RaftTime) -> ProposalOutcome {
        guard role == .leader else { return .notLeader(hint: leaderID) }
        guard !commands.isEmpty else { return .accepted(first: lastIndex + 1, last: lastIndex, directives: []) }
        return appendAsLeader(commands.map { .command($0) }, now: now)
    }

    /// Proposes adding or removing one voting member. Refused unless this leader has committed an entry
    /// of its own term and no other membership change is still uncommitted (one change at a time).
    public mutating func onProposeMembership(_ change: EntryKind, now: RaftTime) -> ProposalOutcome {
        guard role == .leader else { return .notLeader(hint: leaderID) }
        guard change.isMembershipChange else { return .rejected(reason: "not a membership change") }
        guard commitIndex >= termStartIndex else {
            return .rejected(reason: "the leader has not committed an entry of its own term yet")
        }
        guard configIndex <= commitIndex else { return .rejected(reason: "another membership change is pending") }
        switch change {
        case .addNode(let node) where members.contains(node), .addLearner(let node) where members.contains(node):
            return .rejected(reason: "\(node) is already a member")
        case .removeNode(let node) where !members.contains(node):
            return .rejected(reason: "\(node) is not a member")
        case .promote(let node) where !learners.contains(node):
            return .rejected(reason: "\(node) is not a learner")
        case .demote(let node) where !voters.contains(node) || node == id:
            return .rejected(reason: node == id ? "the leader cannot demote itself" : "\(node) is not a voter")
        case .recover:
            return .rejected(reason: "a recovery is written by `onRecover`, not proposed")
        default:
            break
        }
        return appendAsLeader([change], now: now)
    }

    /// The recovery epoch a log carries: the term of its latest `recover` entry (0 if none).
    public static func lastRecoveryTerm(in log: [LogEntry]) -> Term {
        log.last { if case .recover = $0.kind { return true } else { return false } }?.term ?? 0
    }

    /// `rexnode recover`: after the farm lost its majority for good, makes `live` (this node and the members it can
    /// still reach) the whole configuration, so the farm can elect and commit again.
    ///
    /// Refused while a leader is known or was heard within `recoveryQuietPeriod`, when this node is not a member,
    /// and when `live` is not a proper subset of the members that includes this node. Otherwise one durable write
    /// (the first directive; the shell performs nothing after it until it is on disk): the term jumps to
    /// `recoveryTermGap` above every term this node knows, the node votes for itself in it (so no one else can lead
    /// that term), and a `recover(live)` entry of that term goes after the last entry. Nothing is truncated: this
    /// node's uncommitted entries commit under the new configuration. Entries only the missing members held are
    /// lost; a missing member that comes back has an older epoch and must start over as a new member.
    public mutating func onRecover(members live: Set<NodeID>, now: RaftTime) -> RecoveryOutcome {
        guard voters.contains(id) else {
            return .refused(reason: "This node is not a voting member of the farm, so it has nothing to recover.")
        }
        if role == .leader {
            return .refused(
                reason: "This node leads the farm, so its majority is intact and there is nothing to recover.")
        }
        let quiet = now.nanoseconds(since: lastLeaderSeen)
        let needed = settings.recoveryQuietPeriod.raftNanoseconds
        if quiet < needed {
            let who = leaderID.map { "the leader \($0)" } ?? "a leader"
            return .refused(
                reason: "Refusing to recover: \(who) was heard from \(quiet / 1_000_000) ms ago, and recover is only "
                    + "for a farm that has had no leader for \(needed / 1_000_000) ms.")
        }
        guard live.contains(id), live.isSubset(of: members) else {
            return .refused(reason: "The recovered farm must keep this node and only current members.")
        }
        guard live.intersection(voters) != voters else {
            return .refused(
                reason: "Every member is reachable, so the farm has not lost its majority; nothing to recover.")
        }
        currentTerm = max(currentTerm, lastTerm) + settings.recoveryTermGap
        votedFor = id
        let entry = LogEntry(term: currentTerm, index: lastIndex + 1, kind: .recover(members: live.sorted()))
        log.append(entry)
        applyMembership(entry.kind, at: entry.index)
        role = .follower
        leaderID = nil
        votes = []
        // Campaign at the next tick: the members left can elect at once.
        electionDeadline = now
        var out: [RaftDirective] = [.persist(PersistRequest(hardState: hardState, entries: [entry]))]
        finish(now: now, out: &out)
        return .recovered(term: entry.term, index: entry.index, directives: out)
    }

    /// The shell made `request` durable: a leader may now count its own copy of those entries.
    public mutating func onPersisted(_ request: PersistRequest, now: RaftTime) -> [RaftDirective] {
        var out: [RaftDirective] = []
        if let from = request.truncateFrom {
            durableIndex = min(durableIndex, from - 1)
        }
        if let installed = request.snapshot, term(at: installed.lastIndex) == installed.lastTerm {
            durableIndex = max(durableIndex, installed.lastIndex)
        }
        if let last = request.entries.last, last.index <= lastIndex, term(at: last.index) == last.term {
            durableIndex = max(durableIndex, last.index)
        }
        durableIndex = min(durableIndex, lastIndex)
        if role == .leader {
            advanceCommit(now: now, out: &out)
        }
        finish(now: now, out: &out)
        return out
    }

    /// The state machine has saved its state as of `index` (at or below what was applied): that state becomes the
    /// snapshot and the log before it is dropped, here and (first directive) on disk (Raft §7). Members whose next
    /// entry is gone get the snapshot instead. Returns no directive when `index` is not after the current snapshot or
    /// was not applied yet.
    public mutating func compact(through index: LogIndex, data: [UInt8], now: RaftTime) -> [RaftDirective] {
        guard index > snapshotIndex, index <= appliedIndex, let term = term(at: index) else { return [] }
        var configuration = snapshot?.configuration ?? RaftConfiguration()
        var epoch = snapshot?.recoveryEpoch ?? 0
        for entry in log.prefix(Int(index - snapshotIndex)) where entry.kind.isMembershipChange {
            configuration.apply(entry.kind)
            if case .recover = entry.kind { epoch = entry.term }
        }
        let compacted = RaftSnapshot(
            lastIndex: index, lastTerm: term, members: Array(configuration.members),
            voters: Array(configuration.voters), recoveryEpoch: epoch, data: data)
        log.removeFirst(Int(index - snapshotIndex))
        snapshot = compacted.header
        var out: [RaftDirective] = [.persist(PersistRequest(snapshot: compacted))]
        finish(now: now, out: &out)
        return out
    }

    // MARK: Elections

    private var quorum: Int { voters.count / 2 + 1 }

    /// Who a (pre-)candidate asks for votes: the voters (with the injected bug, every member).
    private var votePeers: [NodeID] {
        settings.injectedBugs.contains(.countLearnerVote) ? peers : voterPeers
    }

    /// Whether `peer`'s vote counts: a voter's only (with the injected bug, any member's).
    private func countsVote(of peer: NodeID) -> Bool {
        settings.injectedBugs.contains(.countLearnerVote) ? members.contains(peer) : voters.contains(peer)
    }

    private mutating func randomElectionTimeout() -> Duration {
        let low = settings.electionTimeoutMin.raftNanoseconds
        let high = max(settings.electionTimeoutMax.raftNanoseconds, low + 1)
        return .nanoseconds(Int64(UInt64.random(in: low..<high, using: &random)))
    }

    private func inLease(now: RaftTime) -> Bool {
        guard settings.checkQuorum else { return false }
        if role == .leader { return true }
        guard leaderID != nil, let contact = lastLeaderContact else { return false }
        return now.nanoseconds(since: contact) < settings.electionTimeoutMin.raftNanoseconds
    }

    private func isUpToDate(lastLogIndex: LogIndex, lastLogTerm: Term) -> Bool {
        lastLogTerm > lastTerm || (lastLogTerm == lastTerm && lastLogIndex >= lastIndex)
    }

    private mutating func startPreVote(now: RaftTime, out: inout [RaftDirective]) {
        role = .preCandidate
        leaderID = nil
        votes = [id]
        electionDeadline = now + randomElectionTimeout()
        heartbeatDeadline = now + settings.heartbeatInterval
        if votes.count >= quorum {
            startElection(now: now, out: &out)
            return
        }
        let request = VoteRequest(
            term: currentTerm + 1, candidateID: id, lastLogIndex: lastIndex, lastLogTerm: lastTerm)
        for peer in votePeers {
            out.append(.send(to: peer, .preVote(request)))
        }
    }

    private mutating func startElection(now: RaftTime, out: inout [RaftDirective]) {
        currentTerm += 1
        votedFor = id
        role = .candidate
        leaderID = nil
        votes = [id]
        electionDeadline = now + randomElectionTimeout()
        heartbeatDeadline = now + settings.heartbeatInterval
        // The self-vote must be durable before anyone sees the request.
        out.append(.persist(PersistRequest(hardState: hardState)))
        if votes.count >= quorum {
            becomeLeader(now: now, out: &out)
            return
        }
        let request = VoteRequest(term: currentTerm, candidateID: id, lastLogIndex: lastIndex, lastLogTerm: lastTerm)
        for peer in votePeers {
            out.append(.send(to: peer, .requestVote(request)))
        }
    }

    private mutating func becomeLeader(now: RaftTime, out: inout [RaftDirective]) {
        role = .leader
        leaderID = id
        nextIndex = [:]
        matchIndex = [:]
        for peer in peers {
            nextIndex[peer] = lastIndex + 1
            matchIndex[peer] = 0
        }
        heardFrom = []
        quorumCheckDeadline = now + settings.electionTimeoutMin
        termStartIndex = lastIndex + 1
        if settings.injectedBugs.contains(.commitOldTerm) {
            // Broken on purpose: no no-op, and (in advanceCommit) old-term entries commit by counting.
            termStartIndex = 0
            broadcastAppend(now: now, out: &out, heartbeat: true)
        } else {
            let entry = LogEntry(term: currentTerm, index: lastIndex + 1, kind: .noop)
            log.append(entry)
            out.append(.persist(PersistRequest(entries: [entry])))
            broadcastAppend(now: now, out: &out, heartbeat: true)
        }
    }

    private mutating func becomeFollower(term: Term, leader: NodeID?, now: RaftTime, out: inout [RaftDirective]) {
        if term > currentTerm {
            currentTerm = term
            votedFor = nil
        }
        if role != .follower {
            electionDeadline = now + randomElectionTimeout()
        }
        role = .follower
        leaderID = leader
        votes = []
    }

    /// Adopts a higher term seen in any message; returns whether the hard state changed.
    private mutating func observeTerm(_ term: Term, now: RaftTime, out: inout [RaftDirective]) -> Bool {
        guard term > currentTerm else { return false }
        becomeFollower(term: term, leader: nil, now: now, out: &out)
        return true
    }

    private mutating func handleVoteRequest(
        _ m: VoteRequest, from peer: NodeID, now: RaftTime, persist: inout PersistRequest,
        out: inout [RaftDirective]
    ) {
        if m.term > currentTerm && inLease(now: now) && leaderID != m.candidateID {
            // Leader lease: a live leader exists, so this candidate is disruptive; ignore it entirely.
            return
        }
        var dirty = observeTerm(m.term, now: now, out: &out)
        var granted = false
        if m.term == currentTerm && (votedFor == nil || votedFor == m.candidateID)
            && isUpToDate(lastLogIndex: m.lastLogIndex, lastLogTerm: m.lastLogTerm)
        {
            granted = true
            if votedFor != m.candidateID {
                votedFor = m.candidateID
                dirty = true
            }
            electionDeadline = now + randomElectionTimeout()
            if settings.injectedBugs.contains(.skipVotePersist) {
                dirty = false  // Broken on purpose: the vote is sent but never made durable.
            }
        }
        if dirty {
            persist.hardState = hardState
        }
        out.append(.send(to: peer, .voteResponse(VoteResponse(term: currentTerm, granted: granted, preVote: false))))
    }

    private mutating func handlePreVote(_ m: VoteRequest, from peer: NodeID, now: RaftTime, out: inout [RaftDirective])
    {
        // A pre-vote changes nothing here; it only predicts whether a real vote would be granted.
        let granted =
            m.term > currentTerm && !inLease(now: now)
            && isUpToDate(lastLogIndex: m.lastLogIndex, lastLogTerm: m.lastLogTerm)
        let term = granted ? m.term : currentTerm
        out.append(.send(to: peer, .voteResponse(VoteResponse(term: term, granted: granted, preVote: true))))
    }

    private mutating func handleVoteResponse(
        _ m: VoteResponse, from peer: NodeID, now: RaftTime, persist: inout PersistRequest,
        out: inout [RaftDirective]
    ) {
        if m.preVote {
            if m.granted {
                guard role == .preCandidate, m.term == currentTerm + 1, countsVote(of: peer) else { return }
                votes.insert(peer)
                if votes.count >= quorum {
                    startElection(now: now, out: &out)
                }
            } else if m.term > currentTerm {
                if observeTerm(m.term, now: now, out: &out) {
                    persist.hardState = hardState
                }
            }
            return
        }
        if observeTerm(m.term, now: now, out: &out) {
            persist.hardState = hardState
            return
        }
        guard role == .candidate, m.term == currentTerm, m.granted, countsVote(of: peer) else { return }
        votes.insert(peer)
        if votes.count >= quorum {
            becomeLeader(now: now, out: &out)
        }
    }

    // MARK: Replication

    private mutating func appendAsLeader(_ kinds: [EntryKind], now: RaftTime) -> ProposalOutcome {
        var out: [RaftDirective] = []
        let first = lastIndex + 1
        var entries: [LogEntry] = []
        entries.reserveCapacity(kinds.count)
        for kind in kinds {
            let entry = LogEntry(term: currentTerm, index: lastIndex + 1, kind: kind)
            log.append(entry)
            entries.append(entry)
            if kind.isMembershipChange {
                applyMembership(kind, at: entry.index)
            }
        }
        out.append(.persist(PersistRequest(entries: entries)))
        broadcastAppend(now: now, out: &out, heartbeat: false)
        finish(now: now, out: &out)
        return .accepted(first: first, last: lastIndex, directives: out)
    }

    private mutating func applyMembership(_ kind: EntryKind, at index: LogIndex) {
        guard kind.isMembershipChange else { return }
        var configuration = RaftConfiguration(members: members, voters: voters)
        configuration.apply(kind)
        (members, voters) = (configuration.members, configuration.voters)
        switch kind {
        case .addNode(let node), .addLearner(let node):
            if role == .leader && node != id && nextIndex[node] == nil {
                nextIndex[node] = lastIndex + 1
                matchIndex[node] = 0
                // Check-quorum counts a new member as heard from until the next check but one (as etcd marks a new
                // peer recently active): added just before a check, it has had no time to answer, and in a farm
                // growing from one to two that check would depose a healthy leader, and stop the farm for an
                // election, at every join.
                heardFrom.insert(node)
            }
        case .removeNode(let node):
            nextIndex[node] = nil
            matchIndex[node] = nil
            snapshotSent[node] = nil
        case .promote(let node):
            // Like a new member, a promoted learner gets a whole check-quorum period before it counts as silent.
            if role == .leader { heardFrom.insert(node) }
        case .recover:
            for node in nextIndex.keys where !members.contains(node) {
                nextIndex[node] = nil
                matchIndex[node] = nil
            }
            if let term = term(at: index) { recoveryEpoch = term }
        default:
            break
        }
        configIndex = index
    }

    private mutating func recomputeMembers() {
        var configuration = snapshot?.configuration ?? RaftConfiguration()
        configIndex = snapshotIndex
        recoveryEpoch = snapshot?.recoveryEpoch ?? 0
        for entry in log where entry.kind.isMembershipChange {
            configuration.apply(entry.kind)
            if case .recover = entry.kind { recoveryEpoch = entry.term }
            configIndex = entry.index
        }
        members = configuration.members
        voters = configuration.voters
        if role == .leader {
            for peer in peers where nextIndex[peer] == nil {
                nextIndex[peer] = lastIndex + 1
                matchIndex[peer] = 0
            }
        }
    }

    private mutating func broadcastAppend(now: RaftTime, out: inout [RaftDirective], heartbeat: Bool) {
        for peer in peers {
            sendAppend(to: peer, now: now, out: &out, heartbeat: heartbeat)
        }
        if heartbeat {
            heartbeatDeadline = now + settings.heartbeatInterval
        }
    }

    /// Sends the entries from `nextIndex` on (pipelined: `nextIndex` moves past what was sent); a
    /// heartbeat goes out even with nothing new, so followers keep their election timers reset.
    private mutating func sendAppend(to peer: NodeID, now: RaftTime, out: inout [RaftDirective], heartbeat: Bool) {
        let next = min(nextIndex[peer] ?? lastIndex + 1, lastIndex + 1)
        if next <= snapshotIndex {
            // The entries this member needs next were compacted away: it gets the snapshot instead.
            sendSnapshot(to: peer, now: now, out: &out)
            return
        }
        let available = Int(lastIndex + 1 - next)
        if available == 0 && !heartbeat { return }
        let prev = next - 1
        let start = Int(prev - snapshotIndex)
        var count = 0
        var bytes = 0
        // Cap by count and by payload bytes (at least one entry), so a message fits the transport's frame.
        while count < min(available, settings.maxEntriesPerAppend) {
            bytes += log[start + count].approximateSize
            if count > 0 && bytes > settings.maxAppendBytes { break }
            count += 1
        }
        let entries = count == 0 ? [] : Array(log[start..<start + count])
        let message = AppendEntries(
            term: currentTerm, leaderID: id, prevLogIndex: prev, prevLogTerm: term(at: prev) ?? 0,
            leaderCommit: commitIndex, entries: entries)
        nextIndex[peer] = next + LogIndex(count)
        out.append(.send(to: peer, .appendEntries(message)))
    }

    /// Has the shell send the snapshot (all its chunks at once: the transport keeps them in order), and moves the
    /// member's next index past it, so heartbeats probe whether it was installed. A member that answers that it
    /// still lacks it gets it again, but not sooner than `snapshotRetry` after the first copy, twice that after the
    /// second, and so on (up to 32 times).
    private mutating func sendSnapshot(to peer: NodeID, now: RaftTime, out: inout [RaftDirective]) {
        guard let snapshot else { return }
        nextIndex[peer] = snapshotIndex + 1
        var copies = 1
        if let sent = snapshotSent[peer], sent.index == snapshotIndex {
            let wait = settings.snapshotRetry.raftNanoseconds << UInt64(min(sent.copies - 1, 5))
            if now.nanoseconds(since: sent.at) < wait { return }
            copies = sent.copies + 1
        }
        snapshotSent[peer] = (snapshotIndex, now, copies)
        out.append(.sendSnapshot(to: peer, term: currentTerm, snapshot: snapshot))
    }

    private mutating func handleAppend(
        _ m: AppendEntries, from peer: NodeID, now: RaftTime, persist: inout PersistRequest,
        out: inout [RaftDirective]
    ) {
        guard acceptLeader(m.leaderID, from: peer, term: m.term, now: now, persist: &persist, out: &out) else { return }
        var m = m
        if m.prevLogIndex < snapshotIndex {
            // Entries up to the snapshot are committed, so they match the leader's: only what follows it is news.
            let covered = Int(min(snapshotIndex - m.prevLogIndex, LogIndex(m.entries.count)))
            let lastSent = m.prevLogIndex + LogIndex(m.entries.count)
            m.entries.removeFirst(covered)
            m.prevLogIndex = snapshotIndex
            m.prevLogTerm = snapshotTerm
            if lastSent < snapshotIndex {
                out.append(
                    .send(to: peer, .appendResponse(AppendResponse(term: currentTerm, success: true, index: lastSent))))
                return
            }
        }

        // Log matching: the entry before the new ones must be ours too.
        guard m.prevLogIndex <= lastIndex else {
            out.append(
                .send(
                    to: peer,
                    .appendResponse(
                        AppendResponse(
                            term: currentTerm, success: false,
                            index: lastIndex + 1))))
            return
        }
        let skipCheck = settings.injectedBugs.contains(.noLogCheck)
        if !skipCheck, let ours = term(at: m.prevLogIndex), ours != m.prevLogTerm {
            // Hint: retry from the first entry of our conflicting term (never below the commit point).
            var hint = m.prevLogIndex
            while hint > commitIndex + 1, term(at: hint - 1) == ours {
                hint -= 1
            }
            out.append(
                .send(
                    to: peer,
                    .appendResponse(
                        AppendResponse(
                            term: currentTerm, success: false,
                            index: max(hint, 1)))))
            return
        }
        var newEntries: [LogEntry] = []
        for entry in m.entries {
            if entry.index <= lastIndex {
                if term(at: entry.index) == entry.term && newEntries.isEmpty { continue }
                // Conflict: drop this entry and everything after it (never a committed one).
                if newEntries.isEmpty {
                    truncate(from: entry.index)
                    persist.truncateFrom = entry.index
                }
            }
            newEntries.append(entry)
        }
        if !newEntries.isEmpty {
            for entry in newEntries {
                log.append(entry)
            }
            persist.entries = newEntries
            if newEntries.contains(where: { $0.kind.isMembershipChange }) || persist.truncateFrom != nil {
                recomputeMembers()
            }
        }
        let lastNew = m.prevLogIndex + LogIndex(m.entries.count)
        if m.leaderCommit > commitIndex {
            commitIndex = max(commitIndex, min(m.leaderCommit, lastNew))
        }
        out.append(.send(to: peer, .appendResponse(AppendResponse(term: currentTerm, success: true, index: lastNew))))
        emitApply(out: &out)
    }

    /// A message from `leader` (sent by `peer`): from an older term it is refused (answered with our term) and this
    /// returns false; else this node adopts the term, follows it and resets its election timer.
    private mutating func acceptLeader(
        _ leader: NodeID, from peer: NodeID, term: Term, now: RaftTime, persist: inout PersistRequest,
        out: inout [RaftDirective]
    ) -> Bool {
        if term < currentTerm {
            out.append(.send(to: peer, .appendResponse(AppendResponse(term: currentTerm, success: false, index: 0))))
            return false
        }
        if observeTerm(term, now: now, out: &out) {
            persist.hardState = hardState
        }
        if role != .follower || leaderID != leader {
            becomeFollower(term: term, leader: leader, now: now, out: &out)
        }
        lastLeaderContact = now
        lastLeaderSeen = now
        electionDeadline = now + randomElectionTimeout()
        return true
    }

    private mutating func truncate(from index: LogIndex) {
        guard index > snapshotIndex, index <= lastIndex else { return }
        precondition(
            index > commitIndex || settings.injectedBugs.isEmpty == false,
            "Raft safety: truncating committed entry \(index) (commit \(commitIndex))")
        log.removeSubrange(Int(index - snapshotIndex - 1)...)
        durableIndex = min(durableIndex, index - 1)
    }

    /// A chunk of the leader's snapshot: assembled in order; with the last one the snapshot replaces every entry it
    /// covers (entries after it that agree with it stay), is stored (first directive), handed to the state machine
    /// and acknowledged as matching up to its last index. A snapshot this node's commit index already passed changes
    /// nothing but is acknowledged the same way.
    private mutating func handleInstallSnapshot(
        _ m: InstallSnapshot, from peer: NodeID, now: RaftTime, persist: inout PersistRequest,
        out: inout [RaftDirective]
    ) {
        guard acceptLeader(m.leaderID, from: peer, term: m.term, now: now, persist: &persist, out: &out) else { return }
        let last = m.snapshot.lastIndex
        if last <= commitIndex {
            incoming = nil
            if m.isLast {
                out.append(
                    .send(to: peer, .appendResponse(AppendResponse(term: currentTerm, success: true, index: last))))
            }
            return
        }
        let same =
            incoming.map {
                $0.term == m.term && $0.snapshot.lastIndex == last && $0.snapshot.lastTerm == m.snapshot.lastTerm
                    && $0.total == m.total
            } ?? false
        if same, m.offset < UInt64(incoming!.snapshot.data.count) {
            return  // A copy of a chunk already held (the leader sent the snapshot again): keep going with this one.
        } else if same, var held = incoming, UInt64(held.snapshot.data.count) == m.offset {
            incoming = nil
            held.snapshot.data += m.snapshot.data
            incoming = held
        } else if m.offset == 0 {
            incoming = (m.term, m.snapshot, m.total)
        } else {
            incoming = nil  // Not the continuation of what we hold: wait for the leader to send it again.
            return
        }
        guard let held = incoming, UInt64(held.snapshot.data.count) == held.total else { return }
        incoming = nil
        let installed = held.snapshot
        if term(at: last) == installed.lastTerm {
            log.removeFirst(Int(last - snapshotIndex))  // Log matching: what follows agrees with the leader too.
        } else {
            log = []
            persist.truncateFrom = last + 1
        }
        snapshot = installed.header
        persist.snapshot = installed
        commitIndex = last
        appliedIndex = last
        durableIndex = min(durableIndex, lastIndex)
        recomputeMembers()
        out.append(.restore(installed))
        out.append(.send(to: peer, .appendResponse(AppendResponse(term: currentTerm, success: true, index: last))))
    }

    private mutating func handleAppendResponse(
        _ m: AppendResponse, from peer: NodeID, now: RaftTime, persist: inout PersistRequest,
        out: inout [RaftDirective]
    ) {
        if observeTerm(m.term, now: now, out: &out) {
            persist.hardState = hardState
            return
        }
        guard role == .leader, m.term == currentTerm, members.contains(peer) else { return }
        heardFrom.insert(peer)
        if m.success {
            let match = min(m.index, lastIndex)
            if match > matchIndex[peer] ?? 0 {
                matchIndex[peer] = match
            }
            if (nextIndex[peer] ?? 0) < match + 1 {
                nextIndex[peer] = match + 1
            }
            if match >= snapshotSent[peer]?.index ?? .max { snapshotSent[peer] = nil }
            advanceCommit(now: now, out: &out)
            if (nextIndex[peer] ?? 0) <= lastIndex {
                sendAppend(to: peer, now: now, out: &out, heartbeat: false)
            }
        } else {
            let floor = (matchIndex[peer] ?? 0) + 1
            let current = nextIndex[peer] ?? lastIndex + 1
            let retry = max(floor, min(m.index, current > 1 ? current - 1 : 1))
            nextIndex[peer] = retry
            sendAppend(to: peer, now: now, out: &out, heartbeat: true)
        }
    }

    /// Commits the highest index stored on a quorum, but only if that entry is of the leader's own term
    /// (Raft §5.4.2); earlier entries are then committed with it.
    private mutating func advanceCommit(now: RaftTime, out: inout [RaftDirective]) {
        guard role == .leader else { return }
        let counted = settings.injectedBugs.contains(.countLearnerVote) ? members : voters
        var indices: [LogIndex] = counted.map { $0 == id ? durableIndex : (matchIndex[$0] ?? 0) }
        guard !indices.isEmpty else { return }
        indices.sort(by: >)
        let candidate = indices[min(quorum, indices.count) - 1]
        guard candidate > commitIndex else { return }
        let ownTermOnly = !settings.injectedBugs.contains(.commitOldTerm)
        if ownTermOnly && term(at: candidate) != currentTerm { return }
        commitIndex = candidate
        emitApply(out: &out)
        if !voters.contains(id) && configIndex <= commitIndex {
            // This leader removed itself and the change is committed: step down (Raft §6).
            becomeFollower(term: currentTerm, leader: nil, now: now, out: &out)
        }
    }

    private mutating func emitApply(out: inout [RaftDirective]) {
        guard commitIndex > appliedIndex else { return }
        let upTo = min(commitIndex, lastIndex)
        guard upTo > appliedIndex else { return }
        out.append(.apply(Array(log[Int(appliedIndex - snapshotIndex)..<Int(upTo - snapshotIndex)])))
        appliedIndex = upTo
    }

    // MARK: Bookkeeping

    /// Appends a role report and the next timer, each only when it changed.
    private mutating func finish(now: RaftTime, out: inout [RaftDirective]) {
        if role == .leader { lastLeaderSeen = now }
        if let last = lastReportedRole, last.0 == role, last.1 == currentTerm, last.2 == leaderID {
        } else {
            lastReportedRole = (role, currentTerm, leaderID)
            out.append(.roleChanged(role: role, term: currentTerm, leader: leaderID))
        }
        let next: RaftTime
        if role == .leader {
            next = settings.checkQuorum ? min(heartbeatDeadline, quorumCheckDeadline) : heartbeatDeadline
        } else if role == .candidate || role == .preCandidate {
            next = min(electionDeadline, heartbeatDeadline)
        } else {
            next = electionDeadline
        }
        if scheduledTimer != next {
            scheduledTimer = next
            out.append(.scheduleTimer(at: next))
        }
    }
}

extension LogEntry {
    /// Roughly the encoded size; used to keep AppendEntries messages under `maxAppendBytes`.
    var approximateSize: Int {
        switch kind {
        case .noop: return 12
        case .command(let command): return 24 + command.id.origin.utf8.count + command.payload.count
        case .addNode(let node), .removeNode(let node), .addLearner(let node), .promote(let node), .demote(let node):
            return 12 + node.utf8.count
        case .recover(let members): return 12 + members.reduce(0) { $0 + 2 + $1.utf8.count }
        }
    }
}
