import ArgumentParser
import Election
import Foundation
import Ledger

extension RaftBench {
    /// Writes a long farm history into a stopped node's data folder, as the node itself would have written it: every
    /// entry in `raft_log` (Raft's storage) and applied to the ledger, in order. For the long-run benchmark
    /// (bench/longrun_bench.py): a month of a busy farm without waiting a month.
    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Append N committed entries (jobs, chunks, frames) to a stopped node's ledger.")

        @Option(help: "The node's data folder (it must have run once, so its log holds its own membership).")
        var data: String
        @Option(help: "Entries to append.") var entries: Int = 1_000_000
        @Option(help: "Frames per job.") var frames: Int = 250
        @Option(help: "Frames per chunk (one AssignChunk entry each).") var chunk: Int = 10
        @Option(help: "Remove each job once this many newer jobs are done (0: keep every job).")
        var keepJobs: Int = 0

        func run() async throws {
            let ledger = try LedgerStore(
                path: data + "/ledger.sqlite", extraMigrations: RaftLogStore.registerMigrations)
            let raft = RaftLogStore(writer: ledger.writer)
            let stored = try raft.loadNow()
            let me = try requireMember(stored)
            let term = max(stored.hardState.term, stored.log.last?.term ?? 1)
            var index = stored.lastIndex
            guard try ledger.appliedIndex() == index else {
                throw ValidationError("the node must have applied its whole log (stop it first)")
            }
            let submitter = "0000000000000000"  // nobody: no daemon delivers these jobs' images
            var seq: UInt64 = 1
            var written = 0
            var job = 0
            var batch: [(LogEntry, LedgerEntry)] = []
            let started = Date()

            func add(_ command: LedgerCommand) throws {
                index += 1
                let entry = LedgerEntry(id: Ledger.CommandID(node: me, seq: seq), command: command, floor: seq)
                let raw = LogEntry(
                    term: term, index: index,
                    kind: .command(
                        RaftCommand(id: Election.CommandID(origin: me, sequence: seq), payload: entry.encoded())))
                seq += 1
                batch.append((raw, entry))
                written += 1
                if batch.count >= 2_000 { try flush() }
            }
            func flush() throws {
                guard !batch.isEmpty else { return }
                try raft.persist(PersistRequest(entries: batch.map(\.0)))
                try ledger.apply(batch.map { ($0.0.index, $0.0.term, $0.1) })
                batch.removeAll(keepingCapacity: true)
            }

            while written < entries {
                job += 1
                let name = String(format: "shot%05d", job)
                let id = String(format: "%016x", 0xB0B0_0000_0000 + job)
                try add(
                    .submitJob(
                        SubmitJob(
                            job: id, name: name, submitter: submitter,
                            blendHash: "t1" + String(repeating: "ab", count: 32),
                            blendSize: 1 << 20, frames: Array(1...frames), chunk: chunk, priority: 0,
                            output: "/nowhere/\(name)", submittedAtMs: Int64(job) * 60_000)))
                for first in stride(from: 1, through: frames, by: chunk) {
                    let chunkFrames = Array(first...min(frames, first + chunk - 1))
                    let assignment = "\(id)-\(first)"
                    try add(
                        .assignChunk(
                            AssignChunk(
                                assignment: assignment, job: id, frames: chunkFrames, node: me, term: term,
                                leaseUntilMs: Int64.max / 2)))
                    for frame in chunkFrames {
                        try add(
                            .completeFrame(
                                CompleteFrame(
                                    job: id, frame: frame, node: me, assignment: assignment, term: term,
                                    hash: "t1" + String(format: "%016x%016x%032x", job, frame, 0), ext: ".png",
                                    holders: [me], renderMs: 10_000)))
                    }
                }
                if keepJobs > 0 && job > keepJobs {
                    try add(.removeJob(JobTarget(job: String(format: "%016x", 0xB0B0_0000_0000 + job - keepJobs))))
                }
            }
            try flush()
            let seconds = Date().timeIntervalSince(started)
            let kept = keepJobs > 0 ? min(job, keepJobs) : job
            print(
                "history: appended \(written) entries (\(job) jobs of \(frames) frames) up to index \(index) "
                    + "in \(String(format: "%.1f", seconds)) s; jobs=\(job) kept=\(kept)")
        }
    }
}

/// The node's own id: the one member of the log it wrote when it founded its farm.
private func requireMember(_ stored: StoredRaftState) throws -> String {
    var configuration = stored.snapshot?.configuration ?? RaftConfiguration()
    for entry in stored.log { configuration.apply(entry.kind) }
    guard configuration.members.count == 1, let me = configuration.members.first else {
        throw ValidationError("history needs the data folder of a one-node farm that ran once")
    }
    return me
}
