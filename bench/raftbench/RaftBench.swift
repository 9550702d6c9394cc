import ArgumentParser
import Election
import Foundation

/// Benchmarks for the Election module; figures go to docs/benchmarks.md under "## Election".
@main
struct RaftBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "raftbench", abstract: "Raft-lite benchmarks: commit throughput and failover time.",
        subcommands: [Throughput.self, Failover.self, StorageCrashChild.self, History.self],
        defaultSubcommand: Throughput.self)
}

extension RaftBench {
    /// Commit throughput on real SQLite, unbatched (one client) and batched (many clients) side by side.
    struct Throughput: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Commit throughput on SQLite, 3 nodes in one process.")

        @Option(help: "Nodes.")
        var nodes: Int = 3

        @Option(help: "Commands for the batched run.")
        var commands: Int = 100_000

        @Option(help: "Concurrent clients in the batched run.")
        var concurrency: Int = 256

        @Option(help: "Directory for the SQLite files (deleted and recreated).")
        var dir: String = NSTemporaryDirectory() + "raftbench"

        func run() async throws {
            let single = try await ThroughputBench(
                nodes: nodes, commands: 2_000, concurrency: 1, directory: dir + "/single"
            ).run()
            let batched = try await ThroughputBench(
                nodes: nodes, commands: commands, concurrency: concurrency, directory: dir + "/batched"
            ).run()
            func row(_ name: String, _ r: ThroughputBench.Result, _ n: Int) -> String {
                let rate = String(format: "%9.0f", r.commandsPerSecond)
                let perFsync = String(format: "%6.1f", Double(n) / Double(max(r.leaderPersists, 1)))
                return "\(name)  \(rate) commands/s  \(perFsync) commands per leader fsync  "
                    + String(format: "%.2f s", r.seconds)
            }
            print("commit throughput, \(nodes) nodes, SQLite WAL synchronous=FULL, in-memory transport")
            print(row("1 client   ", single, 2_000))
            print(row("\(concurrency) clients", batched, commands / concurrency * concurrency))
            print(String(format: "batching speed-up: %.1fx", batched.commandsPerSecond / single.commandsPerSecond))
        }
    }

    /// Simulated failover with default timings: leader killed, time to the next commit.
    struct Failover: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Simulated failover p50/p99 for 3 and 5 nodes.")

        @Option(help: "Trials per farm size.")
        var trials: Int = 500

        func run() throws {
            print("failover (leader killed -> next commit), default timings, simulated LAN 0.2-2 ms")
            for n in [3, 5] {
                let samples = FailoverBench(nodes: n, trials: trials).run()
                guard !samples.isEmpty else {
                    print("\(n) nodes: no samples")
                    continue
                }
                func p(_ q: Double) -> UInt64 {
                    samples[min(samples.count - 1, max(0, Int((q * Double(samples.count)).rounded(.up)) - 1))]
                }
                let worst = samples.last!
                print("\(n) nodes  p50 \(p(0.5)) ms  p99 \(p(0.99)) ms  max \(worst) ms  (\(samples.count) trials)")
            }
        }
    }
}
