import Election

// MARK: - Configuration and results

/// Parameters of one simulated run; everything else follows from the seed.
struct SimConfig: Sendable {
    var trace = false
    var nodes: Int = 5
    var steps: Int = 5000
    var bug: InjectedBug?
    /// At most this many voters, the other members learners; nil: each seed chooses (all voters, or 3 of 4+).
    var voters: Int?
    var settings: RaftSettings {
        var s = RaftSettings()
        if let bug { s.injectedBugs = [bug] }
        return s
    }
}

/// Counters and samples from one seed.
struct SimResult: Sendable {
    var seed: UInt64
    var violation: String?
    var commits = 0
    var elections = 0
    var crashes = 0
    var partitions = 0
    var dropped = 0
    var failoverMs: [UInt64] = []
    var compactions = 0
    var snapshotsInstalled = 0
}

// MARK: - Event queue

/// A min-heap of timed events; ties break by insertion order so runs replay exactly.
struct EventQueue<Element> {
    private var heap: [(time: UInt64, seq: UInt64, item: Element)] = []
    private var counter: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }

    mutating func push(_ item: Element, at time: UInt64) {
        counter += 1
        heap.append((time, counter, item))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if less(i, parent) {
                heap.swapAt(i, parent)
                i = parent
            } else {
                break
            }
        }
    }

    mutating func pop() -> (time: UInt64, item: Element)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < heap.count && less(l, m) { m = l }
            if r < heap.count && less(r, m) { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return (top.time, top.item)
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        heap[a].time != heap[b].time ? heap[a].time < heap[b].time : heap[a].seq < heap[b].seq
    }
}

// MARK: - Simulation

private enum SimEvent {
    case deliver(from: Int, to: Int, bytes: [UInt8])
    case timer(node: Int, generation: UInt64)
    case propose
    case fault
    case heal
    case restart(node: Int)
}

private struct SimNode {
    var id: NodeID
    var instance: RaftInstance<SplitMix64>?
    // What survives a crash: only what a persist directive made durable.
    var durableHard = HardState()
    /// The stored snapshot, and the log after it.
    var durableSnapshot: RaftSnapshot?
    var durableLog: [LogEntry] = []
    /// The history hash at the snapshot's last index, and after each entry of `durableLog`.
    var chainBase: UInt64 = 0xCBF2_9CE4_8422_2325
    var chain: [UInt64] = []
    var timerGeneration: UInt64 = 0
    // The state machine, rebuilt from the snapshot and the log after a restart: how far it applied, a hash of every
    // entry applied in order, and the command ids it applied (for de-duplication).
    var applied: LogIndex = 0
    var digest: UInt64 = 0xCBF2_9CE4_8422_2325
    var appliedIDs: Set<CommandID> = []

    var snapshotIndex: LogIndex { durableSnapshot?.lastIndex ?? 0 }
    var durableLastIndex: LogIndex { snapshotIndex + LogIndex(durableLog.count) }
    var durableLastTerm: Term { durableLog.last?.term ?? durableSnapshot?.lastTerm ?? 0 }
}

/// The simulated state machine's snapshot: how far it applied, its digest, the command ids it applied.
private struct MachineState {
    var applied: LogIndex
    var digest: UInt64
    var ids: [UInt64]

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        for value in [applied, digest] + ids { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        return bytes
    }

    init(applied: LogIndex, digest: UInt64, ids: [UInt64]) {
        self.applied = applied
        self.digest = digest
        self.ids = ids
    }

    init?(_ bytes: [UInt8]) {
        guard bytes.count >= 16, bytes.count % 8 == 0 else { return nil }
        let words = stride(from: 0, to: bytes.count, by: 8).map { start in
            bytes[start..<start + 8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) }
        }
        self.init(applied: words[0], digest: words[1], ids: Array(words.dropFirst(2)))
    }
}

private struct IndexTerm: Hashable {
    var index: LogIndex
    var term: Term
}

private struct VoteKey: Hashable {
    var node: Int
    var term: Term
}

private struct Violation: Error {
    var message: String
}

/// N real `RaftInstance`s over a simulated network and clock, with a checker run after every step.
struct Simulation {
    private let config: SimConfig
    private let seed: UInt64
    private let settings: RaftSettings
    /// Failover is only sampled on seeds that run the default timings.
    private let defaultTimings: Bool
    /// The configuration the committed entries make (members and voters).
    private var committedConfiguration = RaftConfiguration()
    private var committedMembers: Set<NodeID> { committedConfiguration.members }
    /// The membership driver keeps at most this many voters; the other members are learners.
    private let maxVoters: Int
    /// Each node compacts its log once it applied this many entries after its snapshot (0: never).
    private let snapshotEvery: LogIndex
    private var votesCast: [VoteKey: Int] = [:]
    private var rng: SplitMix64
    private var now: UInt64 = 0
    private var queue = EventQueue<SimEvent>()
    private var nodes: [SimNode]
    private var blocked: Set<Int> = []
    private var result: SimResult

    // Checker state.
    private var leaderOfTerm: [Term: Int] = [:]
    private var committed: [LogEntry] = []
    /// The term each committed entry was first seen committed in (the applying node's term, an upper bound).
    private var committedInTerm: [Term] = []
    /// The state machine digest after each committed index (`committedDigest[i]` covers entries 1…i+1).
    private var committedDigest: [UInt64] = []
    private var chainAt: [IndexTerm: UInt64] = [:]
    private var acked: Set<CommandID> = []
    private var pendingAcks: [Int: [LogIndex: CommandID]] = [:]

    // Client state.
    private var clientSequence: UInt64 = 0
    private var unacked: [RaftCommand] = []
    private var believedLeader = 0

    // Failover measurement.
    private var failoverStart: UInt64?
    private var failoverTerm: Term = 0

    init(config: SimConfig, seed: UInt64) {
        self.config = config
        self.seed = seed
        self.rng = SplitMix64(seed: seed &* 0x9E37_79B9 &+ 0x5EED)
        // Most seeds use the defaults; the rest explore the settings space: a narrow jitter range (so
        // candidates duel for the same term), no pre-vote, no check-quorum.
        var settings = config.settings
        let variant = UInt64.random(in: 0..<10, using: &rng)
        if variant < 3 { settings.electionTimeoutMax = settings.electionTimeoutMin + .milliseconds(15) }
        if variant == 3 || variant == 4 { settings.preVote = false }
        if variant == 4 || variant == 5 { settings.checkQuorum = false }
        // Snapshots: most seeds compact every few dozen entries; some send them in tiny chunks (and so appends of
        // one entry each); a few never compact.
        let compaction = UInt64.random(in: 0..<10, using: &rng)
        snapshotEvery = compaction < 2 ? 0 : UInt64.random(in: 3..<40, using: &rng)
        if compaction >= 7 { settings.maxAppendBytes = 40 }
        if compaction == 9 { settings.snapshotRetry = .milliseconds(100) }
        self.settings = settings
        self.defaultTimings = variant >= 6
        // Half the seeds of four nodes or more run learners: three voters, the rest learners.
        let draw = rng.next()
        let withLearners = config.nodes >= 4 && draw % 2 == 0
        self.maxVoters = config.voters ?? (withLearners ? 3 : config.nodes)
        self.result = SimResult(seed: seed)
        self.nodes = (0..<config.nodes).map { SimNode(id: "n\($0)") }
    }

    // MARK: Driver

    mutating func run() -> SimResult {
        do {
            try start()
            var steps = 0
            while steps < config.steps, let (time, event) = queue.pop() {
                now = max(now, time)
                try handle(event)
                try checkElectable()
                steps += 1
            }
            try finalCheck()
        } catch let violation as Violation {
            result.violation = violation.message
        } catch {
            result.violation = "unexpected error: \(error)"
        }
        return result
    }

    private mutating func random(_ range: Range<UInt64>) -> UInt64 {
        UInt64.random(in: range, using: &rng)
    }

    private mutating func chance(_ p: Double) -> Bool {
        Double(rng.next() >> 11) / Double(1 << 53) < p
    }

    private var time: RaftTime { RaftTime(nanoseconds: now) }

    private func trace(_ text: @autoclosure () -> String) {
        if config.trace { print("\(now / 1_000_000)ms \(text())") }
    }

    private mutating func start() throws {
        // Every node starts fresh at the same moment: the bootstrap rule must yield exactly one founder.
        let window = Duration.milliseconds(300)
        var founders: [Int] = []
        for i in nodes.indices {
            let peers = nodes.indices.filter { $0 != i }.map { DiscoveredPeer(id: nodes[$0].id, isMember: false) }
            let decision = BootstrapPlanner.decide(
                selfID: nodes[i].id, hasState: false, peers: peers, startedAt: .milliseconds(0),
                now: .milliseconds(300), window: window)
            if decision == .bootstrap { founders.append(i) }
        }
        guard founders.count == 1 else { throw Violation(message: "bootstrap chose \(founders.count) founders") }
        let founder = founders[0]
        let founding = RaftInstance<SplitMix64>.bootstrapState(for: nodes[founder].id)
        try persistDurable(node: founder, founding)
        now = 300_000_000
        for i in nodes.indices {
            try boot(node: i)
        }
        queue.push(.propose, at: now + 10_000_000)
        queue.push(.fault, at: now + random(500_000_000..<2_000_000_000))
    }

    private mutating func boot(node i: Int) throws {
        trace("\(nodes[i].id) boot durable last \(nodes[i].durableLastIndex) hard \(nodes[i].durableHard)")
        let instance = RaftInstance(
            id: nodes[i].id, settings: settings, hardState: nodes[i].durableHard,
            snapshot: nodes[i].durableSnapshot, log: nodes[i].durableLog, random: SplitMix64(seed: rng.next()),
            now: time)
        nodes[i].instance = instance
        nodes[i].applied = 0
        nodes[i].digest = 0xCBF2_9CE4_8422_2325
        nodes[i].appliedIDs = []
        // The state machine starts from the stored snapshot (the instance applies from just after it).
        if let snapshot = nodes[i].durableSnapshot { try restore(node: i, snapshot) }
        pendingAcks[i] = [:]
        try perform(node: i, nodes[i].instance!.onTick(now: time))
    }

    private mutating func handle(_ event: SimEvent) throws {
        switch event {
        case .deliver(let from, let to, let bytes):
            guard nodes[to].instance != nil else { return }
            if blocked.contains(from * config.nodes + to) {
                result.dropped += 1
                return
            }
            let message: RaftMessage
            do {
                message = try RaftMessage(bytes: bytes)
            } catch {
                throw Violation(message: "codec rejected its own output: \(error)")
            }
            let directives = nodes[to].instance!.onMessage(message, from: nodes[from].id, now: time)
            try perform(node: to, directives)
        case .timer(let i, let generation):
            guard nodes[i].instance != nil, nodes[i].timerGeneration == generation else { return }
            try perform(node: i, nodes[i].instance!.onTick(now: time))
        case .propose:
            try propose()
            // Mostly a steady stream; sometimes a quiet spell, so leaders also sit idle.
            let pause = chance(0.01) ? random(200_000_000..<1_500_000_000) : random(5_000_000..<30_000_000)
            queue.push(.propose, at: now + pause)
        case .fault:
            try fault()
        case .heal:
            trace("heal")
            blocked = []
            queue.push(.fault, at: now + random(200_000_000..<2_000_000_000))
        case .restart(let i):
            try boot(node: i)
        }
    }

    // MARK: Client and membership

    private mutating func propose() throws {
        var target = believedLeader
        if nodes[target].instance == nil || chance(0.1) {
            target = Int(random(0..<UInt64(config.nodes)))
        }
        // Instances are mutated in place (never copied out), so their logs are not copied on write.
        guard let canChange = nodes[target].instance?.canChangeMembership else { return }
        // Membership driver: the leader adds every node that is not a member (a voter while there are fewer than
        // `maxVoters`, else a learner), keeps the voter count by promoting and demoting, and now and then removes a
        // member or demotes a voter.
        if canChange {
            let members = nodes[target].instance!.members
            let voters = nodes[target].instance!.voters
            let learners = members.subtracting(voters).sorted()
            let missing = nodes.indices.first { !members.contains(nodes[$0].id) }
            var change: EntryKind?
            if let missing {
                change = voters.count < maxVoters ? .addNode(nodes[missing].id) : .addLearner(nodes[missing].id)
            } else if voters.count < maxVoters, !learners.isEmpty {
                change = .promote(learners[Int(random(0..<UInt64(learners.count)))])
            } else if voters.count > maxVoters {
                let others = voters.filter { $0 != nodes[target].id }.sorted()
                if !others.isEmpty { change = .demote(others[Int(random(0..<UInt64(others.count)))]) }
            } else if chance(0.01) {
                let victim = Int(random(0..<UInt64(config.nodes)))
                if victim != target { change = .removeNode(nodes[victim].id) }
            } else if !learners.isEmpty && chance(0.01) {
                let victim = Int(random(0..<UInt64(config.nodes)))
                if victim != target && voters.contains(nodes[victim].id) { change = .demote(nodes[victim].id) }
            }
            if let change,
                case .accepted(let at, _, let directives) = nodes[target].instance!.onProposeMembership(
                    change, now: time)
            {
                trace("\(nodes[target].id) proposes \(change) at \(at)")
                try perform(node: target, directives)
                guard nodes[target].instance != nil else { return }
            }
        }
        var batch: [RaftCommand] = []
        let count = Int(random(1..<4))
        for _ in 0..<count {
            if !unacked.isEmpty && chance(0.15) {
                batch.append(unacked[Int(random(0..<UInt64(unacked.count)))])  // retry: same id again
            } else {
                clientSequence += 1
                let payload = withUnsafeBytes(of: rng.next().littleEndian) { Array($0) }
                let command = RaftCommand(id: CommandID(origin: "client", sequence: clientSequence), payload: payload)
                unacked.append(command)
                batch.append(command)
            }
        }
        switch nodes[target].instance!.onPropose(batch, now: time) {
        case .accepted(let first, _, let directives):
            for (offset, command) in batch.enumerated() {
                pendingAcks[target, default: [:]][first + LogIndex(offset)] = command.id
            }
            try perform(node: target, directives)
        case .notLeader(let hint):
            if let hint, let index = nodes.firstIndex(where: { $0.id == hint }) { believedLeader = index }
        case .rejected:
            break
        }
        if unacked.count > 64 { unacked.removeFirst(unacked.count - 64) }
    }

    // MARK: Faults

    private mutating func currentLeader() -> Int? {
        nodes.indices.filter { nodes[$0].instance?.role == .leader }
            .max { nodes[$0].instance!.currentTerm < nodes[$1].instance!.currentTerm }
    }

    private mutating func fault() throws {
        let leader = currentLeader()
        let roll = random(0..<100)
        if roll < 45 {
            var victim = Int(random(0..<UInt64(config.nodes)))
            if let leader, chance(0.5) { victim = leader }
            if nodes[victim].instance != nil { crash(node: victim) }
            queue.push(.fault, at: now + random(200_000_000..<2_000_000_000))
            return
        }
        result.partitions += 1
        let n = config.nodes
        defer { trace("partition \(blocked.sorted().map { "\($0 / n)->\($0 % n)" })") }
        if roll < 70 {
            // Isolate one node, usually the leader.
            var victim = Int(random(0..<UInt64(n)))
            if let leader, chance(0.7) { victim = leader }
            for other in 0..<n where other != victim {
                blocked.insert(victim * n + other)
                blocked.insert(other * n + victim)
            }
            if victim == leader { startFailover(leader: victim) }
        } else if roll < 85 {
            // Split into two groups.
            var side: [Bool] = (0..<n).map { _ in chance(0.5) }
            if side.allSatisfy({ $0 }) || side.allSatisfy({ !$0 }) { side[0].toggle() }
            for a in 0..<n {
                for b in 0..<n where side[a] != side[b] { blocked.insert(a * n + b) }
            }
            if let leader {
                let together = side.filter { $0 == side[leader] }.count
                if together <= n / 2 { startFailover(leader: leader) }
            }
        } else {
            // Partial and asymmetric: cut random directed links.
            for a in 0..<n {
                for b in 0..<n where a != b && chance(0.3) { blocked.insert(a * n + b) }
            }
        }
        queue.push(.heal, at: now + random(200_000_000..<3_000_000_000))
    }

    private mutating func crash(node i: Int, quickly: Bool = false) {
        trace("\(nodes[i].id) CRASH durable last \(nodes[i].durableLastIndex) hard \(nodes[i].durableHard)")
        if nodes[i].instance?.role == .leader { startFailover(leader: i) }
        nodes[i].instance = nil
        nodes[i].timerGeneration += 1
        result.crashes += 1
        let delay = quickly ? random(10_000_000..<300_000_000) : random(100_000_000..<2_000_000_000)
        queue.push(.restart(node: i), at: now + delay)
    }

    private mutating func startFailover(leader i: Int) {
        // Sampled only in steady state: default timings and every node a committed member.
        guard defaultTimings, committedMembers.count == config.nodes, failoverStart == nil,
            let instance = nodes[i].instance, instance.role == .leader
        else {
            return
        }
        failoverStart = now
        failoverTerm = instance.currentTerm
    }

    // MARK: Directives

    private mutating func perform(node i: Int, _ directives: [RaftDirective]) throws {
        for directive in directives {
            guard nodes[i].instance != nil else { return }
            // A kill -9 can land between any two directives: later ones never happen.
            if chance(0.0005) {
                crash(node: i)
                return
            }
            switch directive {
            case .persist(let request):
                try persistDurable(node: i, request)
                let more = nodes[i].instance!.onPersisted(request, now: time)
                // Targeted fault: a leader dies right after writing entries, before replicating them.
                if nodes[i].instance?.role == .leader && !request.entries.isEmpty && chance(0.01) {
                    crash(node: i, quickly: true)
                    return
                }
                try perform(node: i, more)
            case .send(let to, let message):
                guard let target = nodes.firstIndex(where: { $0.id == to }) else { continue }
                if case .voteResponse(let response) = message, response.granted, !response.preVote {
                    // Vote safety: one vote per node and term, across crashes.
                    let key = VoteKey(node: i, term: response.term)
                    if let earlier = votesCast[key], earlier != target {
                        throw Violation(
                            message: "vote safety: \(nodes[i].id) voted for \(nodes[earlier].id) and "
                                + "\(nodes[target].id) in term \(response.term)")
                    }
                    votesCast[key] = target
                    trace("\(nodes[i].id) votes \(nodes[target].id) term \(response.term)")
                }
                send(from: i, to: target, message)
                // Targeted fault: a voter dies right after granting its vote.
                if case .voteResponse(let response) = message, response.granted, !response.preVote, chance(0.1) {
                    crash(node: i, quickly: true)
                    return
                }
            case .apply(let entries):
                try apply(node: i, entries)
                guard nodes[i].instance != nil else { return }
                try compactIfDue(node: i)
            case .restore(let snapshot):
                try restore(node: i, snapshot)
            case .sendSnapshot(let to, let term, let wanted):
                // As a shell does: the bytes come from storage, which holds this snapshot or a newer one.
                guard let target = nodes.firstIndex(where: { $0.id == to }) else { continue }
                guard let stored = nodes[i].durableSnapshot, stored.lastIndex >= wanted.lastIndex else {
                    throw Violation(message: "\(nodes[i].id) was asked to send a snapshot its storage does not hold")
                }
                for chunk in InstallSnapshot.chunks(
                    of: stored, term: term, leaderID: nodes[i].id, chunkBytes: settings.maxAppendBytes)
                {
                    send(from: i, to: target, .installSnapshot(chunk))
                }
            case .roleChanged(let role, let term, let leader):
                trace(
                    "\(nodes[i].id) \(role.rawValue) term \(term) leader \(leader ?? "-") "
                        + "last \(nodes[i].instance!.lastIndex) commit \(nodes[i].instance!.commitIndex) "
                        + "members \(nodes[i].instance!.members.sorted()) voters \(nodes[i].instance!.voters.sorted())")
                if role == .leader { try checkNewLeader(node: i, term: term) }
            case .scheduleTimer(let at):
                nodes[i].timerGeneration += 1
                queue.push(.timer(node: i, generation: nodes[i].timerGeneration), at: max(at.nanoseconds, now))
            }
        }
    }

    private mutating func send(from: Int, to: Int, _ message: RaftMessage) {
        if blocked.contains(from * config.nodes + to) || chance(0.02) {
            result.dropped += 1
            return
        }
        let bytes = message.encode()
        var delay = random(1_000_000..<10_000_000)
        if chance(0.05) { delay += random(20_000_000..<150_000_000) }  // reorder
        queue.push(.deliver(from: from, to: to, bytes: bytes), at: now + delay)
        if chance(0.02) {
            queue.push(.deliver(from: from, to: to, bytes: bytes), at: now + random(1_000_000..<100_000_000))
        }
    }

    private mutating func persistDurable(node i: Int, _ request: PersistRequest) throws {
        if let hard = request.hardState { nodes[i].durableHard = hard }
        if let snapshot = request.snapshot {
            // Only committed state is ever snapshotted: its last entry must be the committed one.
            let position = Int(snapshot.lastIndex) - 1
            guard position < committed.count, committed[position].term == snapshot.lastTerm,
                let base = chainAt[IndexTerm(index: snapshot.lastIndex, term: snapshot.lastTerm)]
            else {
                throw Violation(
                    message: "\(nodes[i].id) stored a snapshot at \(snapshot.lastIndex) term \(snapshot.lastTerm), "
                        + "which is not a committed entry")
            }
            let covered = Int(
                min(
                    snapshot.lastIndex - min(snapshot.lastIndex, nodes[i].snapshotIndex),
                    LogIndex(nodes[i].durableLog.count)))
            // Log matching: where this node holds the snapshot's last entry, it sits on the same history.
            let holdsLast = snapshot.lastIndex <= nodes[i].durableLastIndex && covered > 0
            if holdsLast && nodes[i].durableLog[covered - 1].term == snapshot.lastTerm
                && nodes[i].chain[covered - 1] != base
            {
                throw Violation(message: "log matching: \(nodes[i].id)'s history differs from its snapshot's")
            }
            // As a storage does: the entries the snapshot covers go; what follows goes only by `truncateFrom`.
            let beyond = snapshot.lastIndex > nodes[i].durableLastIndex
            nodes[i].durableLog.removeFirst(covered)
            nodes[i].chain.removeFirst(covered)
            if beyond {
                nodes[i].durableLog = []
                nodes[i].chain = []
            }
            nodes[i].durableSnapshot = snapshot
            nodes[i].chainBase = base
        }
        if let from = request.truncateFrom, from > nodes[i].snapshotIndex, from <= nodes[i].durableLastIndex {
            let cut = Int(from - nodes[i].snapshotIndex - 1)
            nodes[i].durableLog.removeSubrange(cut...)
            nodes[i].chain.removeSubrange(cut...)
        }
        for entry in request.entries {
            guard entry.index == nodes[i].durableLastIndex + 1 else {
                throw Violation(
                    message: "\(nodes[i].id) persisted entry \(entry.index) after \(nodes[i].durableLastIndex)")
            }
            // Log matching: the same (index, term) must always sit on top of the same history.
            let link = fnv(nodes[i].chain.last ?? nodes[i].chainBase, entry)
            nodes[i].durableLog.append(entry)
            nodes[i].chain.append(link)
            let key = IndexTerm(index: entry.index, term: entry.term)
            if let known = chainAt[key] {
                if known != link {
                    throw Violation(
                        message: "log matching: \(nodes[i].id) has a different history at index "
                            + "\(entry.index) term \(entry.term)")
                }
            } else {
                chainAt[key] = link
            }
        }
    }

    private func fnv(_ previous: UInt64, _ entry: LogEntry) -> UInt64 {
        var h = previous
        func mix(_ byte: UInt8) {
            h ^= UInt64(byte)
            h = h &* 0x100_0000_01B3
        }
        withUnsafeBytes(of: entry.term.littleEndian) { $0.forEach(mix) }
        entry.kind.encode().forEach(mix)
        return h
    }

    private mutating func apply(node i: Int, _ entries: [LogEntry]) throws {
        guard let instance = nodes[i].instance else { return }
        for entry in entries {
            guard entry.index == nodes[i].applied + 1 else {
                throw Violation(message: "\(nodes[i].id) applied index \(entry.index) after \(nodes[i].applied)")
            }
            nodes[i].applied = entry.index
            nodes[i].digest = fnv(nodes[i].digest, entry)
            // Every node applies the same entry at each index.
            let position = Int(entry.index - 1)
            if position < committed.count {
                if committed[position] != entry {
                    throw Violation(
                        message: "state machine safety: \(nodes[i].id) applied \(describe(entry)) but "
                            + "\(describe(committed[position])) was committed at index \(entry.index)")
                }
            } else {
                committed.append(entry)
                committedInTerm.append(instance.currentTerm)
                committedDigest.append(nodes[i].digest)
                result.commits += 1
                committedConfiguration.apply(entry.kind)
            }
            if let id = entry.commandID {
                // De-duplication by command id: a retried command is applied once.
                if !nodes[i].appliedIDs.insert(id).inserted { continue }
                if pendingAcks[i]?.removeValue(forKey: entry.index) == id {
                    acked.insert(id)
                    unacked.removeAll { $0.id == id }
                }
            }
            if instance.role == .leader, let start = failoverStart {
                if entry.term > failoverTerm {
                    result.failoverMs.append((now - start) / 1_000_000)
                    failoverStart = nil
                } else if entry.term == failoverTerm && entry.index > 0
                    && nodes[i].instance?.currentTerm == failoverTerm
                {
                    failoverStart = nil  // the old leader came back before anyone replaced it
                }
            }
        }
    }

    /// The state machine takes the snapshot's state; it must be exactly the committed prefix up to its last index.
    private mutating func restore(node i: Int, _ snapshot: RaftSnapshot) throws {
        guard let state = MachineState(snapshot.data), state.applied == snapshot.lastIndex else {
            throw Violation(message: "\(nodes[i].id) got a snapshot whose data is not its state at its index")
        }
        let position = Int(snapshot.lastIndex) - 1
        guard position < committedDigest.count, committedDigest[position] == state.digest else {
            throw Violation(
                message: "state machine safety: \(nodes[i].id) restored a snapshot at \(snapshot.lastIndex) that is "
                    + "not the committed state there")
        }
        guard snapshot.lastIndex >= nodes[i].applied else {
            throw Violation(message: "\(nodes[i].id) restored a snapshot behind what it applied")
        }
        nodes[i].applied = state.applied
        nodes[i].digest = state.digest
        nodes[i].appliedIDs = Set(state.ids.map { CommandID(origin: "client", sequence: $0) })
        result.snapshotsInstalled += 1
    }

    /// Compacts once `snapshotEvery` entries were applied after the snapshot (and, now and then, at once).
    private mutating func compactIfDue(node i: Int) throws {
        guard snapshotEvery > 0, let instance = nodes[i].instance else { return }
        let behind = nodes[i].applied - min(nodes[i].applied, instance.snapshotIndex)
        guard behind >= snapshotEvery || (behind > 0 && chance(0.002)) else { return }
        let state = MachineState(
            applied: nodes[i].applied, digest: nodes[i].digest,
            ids: nodes[i].appliedIDs.filter { $0.origin == "client" }.map(\.sequence).sorted())
        let directives = nodes[i].instance!.compact(through: nodes[i].applied, data: state.encoded(), now: time)
        if !directives.isEmpty { result.compactions += 1 }
        try perform(node: i, directives)
    }

    private func describe(_ entry: LogEntry) -> String {
        let what: String
        switch entry.kind {
        case .noop: what = "noop"
        case .command(let c): what = "command \(c.id)"
        case .addNode(let n): what = "add \(n)"
        case .removeNode(let n): what = "remove \(n)"
        case .recover(let members): what = "recover \(members.joined(separator: ","))"
        case .addLearner(let n): what = "add learner \(n)"
        case .promote(let n): what = "promote \(n)"
        case .demote(let n): what = "demote \(n)"
        }
        return "[\(entry.index) t\(entry.term) \(what)]"
    }

    private mutating func checkNewLeader(node i: Int, term: Term) throws {
        result.elections += 1
        if let other = leaderOfTerm[term], other != i {
            throw Violation(message: "election safety: \(nodes[other].id) and \(nodes[i].id) both lead term \(term)")
        }
        leaderOfTerm[term] = i
        // Leader completeness: a leader holds every entry committed in an earlier term. (A leader of an
        // older term can still be elected late, by delayed votes; it cannot commit anything.)
        guard let instance = nodes[i].instance else { return }
        for (position, entry) in committed.enumerated()
        where committedInTerm[position] < term && entry.index > instance.snapshotIndex
            && instance.entry(at: entry.index) != entry
        {
            throw Violation(
                message: "leader completeness: \(nodes[i].id) leads term \(term) without committed "
                    + "\(describe(entry))")
        }
    }

    /// The inductive core of leader completeness: no voter lacking a committed entry may look up to date to
    /// a majority of the committed voters (otherwise it could win an election and overwrite it).
    private func checkElectable() throws {
        guard let last = committed.last else { return }
        let members = committedConfiguration.voters
        let quorum = members.count / 2 + 1
        for x in nodes.indices where members.contains(nodes[x].id) {
            let node = nodes[x]
            if last.index <= node.snapshotIndex { continue }  // a snapshot holds only committed state
            if node.durableLastIndex >= last.index && node.durableLog[Int(last.index - node.snapshotIndex) - 1] == last
            {
                continue
            }
            let xLast = (node.durableLastTerm, node.durableLastIndex)
            var supporters = 0
            for y in nodes.indices where members.contains(nodes[y].id) {
                let yLast = (nodes[y].durableLastTerm, nodes[y].durableLastIndex)
                if xLast.0 > yLast.0 || (xLast.0 == yLast.0 && xLast.1 >= yLast.1) { supporters += 1 }
            }
            if supporters >= quorum {
                throw Violation(
                    message: "leader completeness: \(nodes[x].id) lacks committed \(describe(last)) "
                        + "but \(supporters) of \(members.count) voters would elect it")
            }
        }
    }

    private func finalCheck() throws {
        let committedIDs = Set(committed.compactMap(\.commandID))
        for id in acked where !committedIDs.contains(id) {
            throw Violation(message: "acknowledged command \(id) is not in the committed log")
        }
    }
}
