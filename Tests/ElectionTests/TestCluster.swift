@testable import Election

typealias Instance = RaftInstance<SplitMix64>

/// A handful of pure `RaftInstance`s with an instant, loss-free network and a manual clock, for tests that
/// walk through a situation step by step.
struct TestCluster {
    var nodes: [NodeID: Instance] = [:]
    var durable: [NodeID: StoredRaftState] = [:]
    var applied: [NodeID: [LogEntry]] = [:]
    /// The snapshots each node's state machine was told to install, in order.
    var restored: [NodeID: [RaftSnapshot]] = [:]
    /// How many `InstallSnapshot` chunks reached their node.
    var snapshotChunksDelivered = 0
    /// How many times a leader had a snapshot sent (`.sendSnapshot` directives).
    var snapshotCopiesSent = 0
    /// Every `InstallSnapshot` chunk is lost on the way.
    var lostSnapshotChunks = false
    var inFlight: [(from: NodeID, to: NodeID, message: RaftMessage)] = []
    var cut: Set<NodeID> = []
    var now = RaftTime.milliseconds(0)

    /// A farm whose log already lists every node as a member (as after bootstrap and joins): `ids` as voters, then
    /// `learners` as learners.
    init(_ ids: [NodeID], learners: [NodeID] = [], settings: RaftSettings = RaftSettings()) {
        let kinds = ids.map { EntryKind.addNode($0) } + learners.map { EntryKind.addLearner($0) }
        let log = kinds.enumerated().map { LogEntry(term: 1, index: LogIndex($0.offset + 1), kind: $0.element) }
        for (i, id) in (ids + learners).enumerated() {
            nodes[id] = Instance(
                id: id, settings: settings, hardState: HardState(term: 1), log: log,
                random: SplitMix64(seed: UInt64(i + 1)), now: now)
            durable[id] = StoredRaftState(hardState: HardState(term: 1), log: log)
            applied[id] = []
        }
    }

    /// Performs directives like a shell: persist (then ack), queue sends, record applies.
    mutating func perform(_ id: NodeID, _ directives: [RaftDirective]) {
        for directive in directives {
            switch directive {
            case .persist(let request):
                try! durable[id]!.apply(request)
                perform(id, nodes[id]!.onPersisted(request, now: now))
            case .send(let to, let message):
                inFlight.append((id, to, message))
            case .apply(let entries):
                applied[id, default: []].append(contentsOf: entries)
            case .restore(let snapshot):
                restored[id, default: []].append(snapshot)
            case .sendSnapshot(let to, let term, _):
                snapshotCopiesSent += 1
                let stored = durable[id]!.snapshot!
                for chunk in InstallSnapshot.chunks(
                    of: stored, term: term, leaderID: id, chunkBytes: nodes[id]!.settings.maxAppendBytes)
                {
                    inFlight.append((id, to, .installSnapshot(chunk)))
                }
            case .roleChanged, .scheduleTimer:
                break
            }
        }
    }

    mutating func tick(_ id: NodeID) {
        perform(id, nodes[id]!.onTick(now: now))
    }

    /// Moves the clock and ticks everyone.
    mutating func advance(by ms: UInt64) {
        now = now + .milliseconds(Int64(ms))
        for id in nodes.keys.sorted() { tick(id) }
    }

    /// Delivers queued messages (and whatever they cause) until the network is quiet.
    mutating func deliverAll(limit: Int = 10_000) {
        var steps = 0
        while !inFlight.isEmpty && steps < limit {
            let (from, to, message) = inFlight.removeFirst()
            steps += 1
            if cut.contains(from) || cut.contains(to) { continue }
            guard nodes[to] != nil else { continue }
            if case .installSnapshot = message {
                if lostSnapshotChunks { continue }
                snapshotChunksDelivered += 1
            }
            perform(to, nodes[to]!.onMessage(message, from: from, now: now))
        }
    }

    /// Ticks in 10 ms steps, delivering messages each time, until a leader exists (or gives up).
    mutating func electLeader(maxMs: UInt64 = 10_000) -> NodeID? {
        var waited: UInt64 = 0
        while waited < maxMs {
            advance(by: 10)
            deliverAll()
            waited += 10
            let leaders = nodes.values.filter { $0.role == .leader && !cut.contains($0.id) }
            if let leader = leaders.max(by: { $0.currentTerm < $1.currentTerm }) { return leader.id }
        }
        return nil
    }

    /// Has `id`'s state machine save its state as of everything it applied (`data`: the indexes applied) and
    /// compacts its log there; returns the snapshot's last index (nil: nothing to compact).
    @discardableResult
    mutating func compact(_ id: NodeID) -> LogIndex? {
        let index = nodes[id]!.appliedIndex
        let directives = nodes[id]!.compact(through: index, data: Self.stateData(through: index), now: now)
        guard !directives.isEmpty else { return nil }
        perform(id, directives)
        return index
    }

    /// The test state machine's snapshot data at `index`: the index, eight bytes, padded to 100 bytes so that small
    /// chunk sizes split it.
    static func stateData(through index: LogIndex) -> [UInt8] {
        withUnsafeBytes(of: index.littleEndian) { Array($0) } + [UInt8](repeating: 0xAB, count: 92)
    }

    mutating func propose(_ id: NodeID, _ payloads: [[UInt8]], sequence: UInt64 = 1) -> ProposalOutcome {
        let commands = payloads.enumerated().map {
            RaftCommand(id: CommandID(origin: "test", sequence: sequence + UInt64($0.offset)), payload: $0.element)
        }
        let outcome = nodes[id]!.onPropose(commands, now: now)
        if case .accepted(_, _, let directives) = outcome { perform(id, directives) }
        return outcome
    }
}
