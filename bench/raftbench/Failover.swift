import Election

/// Failover time with default timings on a calm simulated LAN (0.2–2 ms one-way, no loss): a steady farm
/// whose leader is killed at a random moment; measured from the kill to the next commit by a new leader.
struct FailoverBench {
    var nodes: Int
    var trials: Int
    var seed: UInt64 = 1

    private enum Event {
        case deliver(from: Int, to: Int, bytes: [UInt8])
        case timer(node: Int, generation: UInt64)
        case propose
        case kill
    }

    func run() -> [UInt64] {
        var samples: [UInt64] = []
        for trial in 0..<trials {
            if let sample = runTrial(seed: seed &+ UInt64(trial) &* 7919) { samples.append(sample) }
        }
        return samples.sorted()
    }

    private func runTrial(seed: UInt64) -> UInt64? {
        var rng = SplitMix64(seed: seed)
        let ids = (0..<nodes).map { "node\($0)" }
        var log: [LogEntry] = []
        for (i, id) in ids.enumerated() {
            log.append(LogEntry(term: 1, index: LogIndex(i + 1), kind: .addNode(id)))
        }
        var instances: [RaftInstance<SplitMix64>?] = ids.map {
            RaftInstance(
                id: $0, hardState: HardState(term: 1), log: log, random: SplitMix64(seed: rng.next()),
                now: .milliseconds(0))
        }
        var generations = [UInt64](repeating: 0, count: nodes)
        var heap = MinHeap<Event>()
        func push(_ e: Event, _ t: UInt64) {
            heap.push(e, at: t)
        }
        var now: UInt64 = 0
        var killedAt: UInt64?
        var killedTerm: Term = 0
        var sequence: UInt64 = 0
        for i in 0..<nodes {
            push(.timer(node: i, generation: 0), 0)
        }
        push(.propose, 10_000_000)
        push(.kill, 3_000_000_000 + UInt64.random(in: 0..<1_000_000_000, using: &rng))

        func perform(_ i: Int, _ directives: [RaftDirective], _ rng: inout SplitMix64) -> UInt64? {
            for d in directives {
                switch d {
                case .persist(let request):
                    if let more = instances[i]?.onPersisted(request, now: RaftTime(nanoseconds: now)),
                        let done = perform(i, more, &rng)
                    {
                        return done
                    }
                case .send(let to, let message):
                    let j = ids.firstIndex(of: to)!
                    push(
                        .deliver(from: i, to: j, bytes: message.encode()),
                        now + UInt64.random(in: 200_000..<2_000_000, using: &rng))
                case .apply(let entries):
                    if let start = killedAt, instances[i]?.role == .leader,
                        entries.contains(where: { $0.term > killedTerm })
                    {
                        return now - start
                    }
                case .scheduleTimer(let at):
                    generations[i] += 1
                    push(.timer(node: i, generation: generations[i]), max(at.nanoseconds, now))
                case .roleChanged, .restore, .sendSnapshot:
                    break
                }
            }
            return nil
        }

        while !heap.isEmpty, now < 30_000_000_000 {
            let (time, event) = heap.pop()!
            now = max(now, time)
            let t = RaftTime(nanoseconds: now)
            var result: UInt64?
            switch event {
            case .deliver(let from, let to, let bytes):
                guard instances[to] != nil, let message = try? RaftMessage(bytes: bytes) else { continue }
                let out = instances[to]!.onMessage(message, from: ids[from], now: t)
                result = perform(to, out, &rng)
            case .timer(let i, let generation):
                guard instances[i] != nil, generations[i] == generation else { continue }
                result = perform(i, instances[i]!.onTick(now: t), &rng)
            case .propose:
                push(.propose, now + 10_000_000)
                if let leader = instances.indices.first(where: { instances[$0]?.role == .leader }) {
                    sequence += 1
                    let command = RaftCommand(id: CommandID(origin: "bench", sequence: sequence), payload: [1])
                    if case .accepted(_, _, let out) = instances[leader]!.onPropose([command], now: t) {
                        result = perform(leader, out, &rng)
                    }
                }
            case .kill:
                guard let leader = instances.indices.first(where: { instances[$0]?.role == .leader }) else {
                    push(.kill, now + 100_000_000)
                    continue
                }
                killedAt = now
                killedTerm = instances[leader]!.currentTerm
                instances[leader] = nil
            }
            if let result { return result / 1_000_000 }
        }
        return nil
    }
}

/// A min-heap of timed events; ties break by insertion order so trials replay exactly.
struct MinHeap<Element> {
    private var items: [(time: UInt64, seq: UInt64, item: Element)] = []
    private var counter: UInt64 = 0

    var isEmpty: Bool { items.isEmpty }

    mutating func push(_ item: Element, at time: UInt64) {
        counter += 1
        items.append((time, counter, item))
        var i = items.count - 1
        while i > 0, less(i, (i - 1) / 2) {
            items.swapAt(i, (i - 1) / 2)
            i = (i - 1) / 2
        }
    }

    mutating func pop() -> (UInt64, Element)? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var i = 0
        while true {
            var m = i
            for c in [2 * i + 1, 2 * i + 2] where c < items.count && less(c, m) { m = c }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return (top.time, top.item)
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        items[a].time != items[b].time ? items[a].time < items[b].time : items[a].seq < items[b].seq
    }
}
