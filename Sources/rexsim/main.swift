import ArgumentParser
import Dispatch
import Election

#if canImport(Glibc)
    import Glibc
#endif

/// Deterministic simulation of Raft-lite: N real `RaftInstance`s, a hostile simulated network and clock,
/// crash-restarts, and a safety checker after every step. Any seed replays exactly.
struct RexSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rexsim",
        abstract: "Simulate a Raft-lite farm over many seeds and check Raft's safety properties.")

    @Option(help: "Nodes per simulated farm.")
    var nodes: Int = 5

    @Option(help: "At most this many voters (the other members are learners); default: each seed chooses.")
    var voters: Int?

    @Option(help: "First seed.")
    var seedStart: UInt64 = 1

    @Option(help: "Number of seeds to run.")
    var seeds: Int = 100

    @Option(help: "Simulation steps (events) per seed.")
    var steps: Int = 5000

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Option(
        help:
            "Switch on a deliberately broken variant: \(InjectedBug.allCases.map(\.rawValue).joined(separator: ", ")).")
    var injectBug: String?

    @Flag(name: .customLong("trace"), help: .hidden)
    var trace = false

    @Option(help: "Worker threads (seeds run in parallel; results do not depend on this).")
    var jobs: Int = 2

    mutating func validate() throws {
        guard (1...64).contains(nodes) else { throw ValidationError("--nodes must be between 1 and 64") }
        if let voters, !(1...nodes).contains(voters) {
            throw ValidationError("--voters must be between 1 and --nodes")
        }
        guard seeds >= 1 else { throw ValidationError("--seeds must be at least 1") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1") }
        guard jobs >= 1 else { throw ValidationError("--jobs must be at least 1") }
        if let injectBug, InjectedBug(rawValue: injectBug) == nil {
            throw ValidationError(
                "unknown bug '\(injectBug)'; known: "
                    + InjectedBug.allCases.map(\.rawValue).joined(separator: ", "))
        }
    }

    func run() throws {
        let config = SimConfig(
            trace: trace, nodes: nodes, steps: steps, bug: injectBug.flatMap(InjectedBug.init(rawValue:)),
            voters: voters)
        let summary = SeedRunner.run(config: config, seedStart: seedStart, seeds: seeds, jobs: jobs)
        if json {
            print(summary.json())
        } else {
            print(summary.table())
        }
        if let failure = summary.firstFailure {
            var replay = "rexsim --nodes \(nodes) --seed-start \(failure.seed) --seeds 1 --steps \(steps)"
            if let injectBug { replay += " --inject-bug \(injectBug)" }
            let message = "violation at seed \(failure.seed): \(failure.violation ?? "")\nreplay: \(replay)\n"
            FileHandleStderr.write(message)
            throw ExitCode(1)
        }
    }
}

enum FileHandleStderr {
    static func write(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

/// Runs seeds on a few threads and folds the results; the fold is order-independent.
enum SeedRunner {
    final class Box: @unchecked Sendable {
        // Each slot is written by exactly one worker; read after all workers finish.
        var results: [SimResult?]
        var stop = false
        let lock = NSLockLike()

        init(count: Int) {
            results = Array(repeating: nil, count: count)
        }
    }

    static func run(config: SimConfig, seedStart: UInt64, seeds: Int, jobs: Int) -> Summary {
        let box = Box(count: seeds)
        let started = DispatchTime.now().uptimeNanoseconds
        DispatchQueue.concurrentPerform(iterations: jobs) { worker in
            var k = worker
            while k < seeds {
                if box.lock.withLock({ box.stop }) { break }
                var sim = Simulation(config: config, seed: seedStart + UInt64(k))
                let result = sim.run()
                box.lock.withLock {
                    box.results[k] = result
                    if result.violation != nil { box.stop = true }
                }
                k += jobs
            }
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        return Summary(results: box.results.compactMap { $0 }, elapsed: elapsed)
    }
}

/// A pthread mutex; enough for the runner's two fields.
final class NSLockLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()

    init() {
        pthread_mutex_init(&mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(&mutex)
    }

    func withLock<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}

/// Totals over all seeds that ran.
struct Summary {
    var results: [SimResult]
    var elapsed: Double

    var firstFailure: SimResult? { results.filter { $0.violation != nil }.min { $0.seed < $1.seed } }
    var violations: Int { results.filter { $0.violation != nil }.count }

    func percentile(_ p: Double) -> UInt64 {
        let samples = results.flatMap(\.failoverMs).sorted()
        guard !samples.isEmpty else { return 0 }
        let rank = Int((p * Double(samples.count)).rounded(.up)) - 1
        return samples[min(max(rank, 0), samples.count - 1)]
    }

    func total(_ key: KeyPath<SimResult, Int>) -> Int { results.reduce(0) { $0 + $1[keyPath: key] } }

    func json() -> String {
        "{\"seeds\":\(results.count),\"violations\":\(violations),\"commits\":\(total(\.commits)),"
            + "\"elections\":\(total(\.elections)),\"crashes\":\(total(\.crashes)),"
            + "\"partitions\":\(total(\.partitions)),\"dropped\":\(total(\.dropped)),"
            + "\"compactions\":\(total(\.compactions)),\"snapshots_installed\":\(total(\.snapshotsInstalled)),"
            + "\"failover_ms_p50\":\(percentile(0.5)),\"failover_ms_p99\":\(percentile(0.99)),"
            + "\"failovers\":\(results.reduce(0) { $0 + $1.failoverMs.count }),"
            + "\"seconds\":\(Double(Int(elapsed * 1000)) / 1000)}"
    }

    func table() -> String {
        let rows: [(String, String)] = [
            ("seeds", "\(results.count)"), ("violations", "\(violations)"), ("commits", "\(total(\.commits))"),
            ("elections", "\(total(\.elections))"), ("crashes", "\(total(\.crashes))"),
            ("partitions", "\(total(\.partitions))"), ("dropped", "\(total(\.dropped))"),
            ("compactions", "\(total(\.compactions))"), ("installed", "\(total(\.snapshotsInstalled))"),
            ("failover p50", "\(percentile(0.5)) ms"), ("failover p99", "\(percentile(0.99)) ms"),
            ("wall time", "\(Double(Int(elapsed * 100)) / 100) s"),
        ]
        return rows.map { $0.0.padding(12) + "  " + $0.1 }.joined(separator: "\n")
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

RexSim.main()
