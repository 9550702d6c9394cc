import Ledger
import Logging

/// Group commit for workers' reports: a report made while another is being proposed waits and goes with every
/// report that piled up meanwhile, as one proposal (one forward to the leader, one Raft append, one fsync per
/// node). Nothing waits for a timer: with one report at a time each goes alone at once; under load (many slots
/// finishing short frames) the reports of a whole round ride together.
actor ReportBatcher {
    private let commandLog: any CommandLog
    private let logger: Logger
    /// At most this many commands in one proposal (it must fit one mesh request).
    private let maxBatch: Int
    private var queued: [(commands: [LedgerCommand], done: CheckedContinuation<Void, Never>)] = []
    private var proposing = false

    init(commandLog: any CommandLog, logger: Logger, maxBatch: Int = 256) {
        self.commandLog = commandLog
        self.logger = logger
        self.maxBatch = maxBatch
    }

    /// Returns once the commands were proposed with the batch they joined (applied, or given up with a log line:
    /// a report that fails only delays the frames, whose lease returns them).
    func report(_ commands: [LedgerCommand]) async {
        guard !commands.isEmpty else { return }
        await withCheckedContinuation { continuation in
            queued.append((commands, continuation))
            if !proposing {
                proposing = true
                Task { await self.drain() }
            }
        }
    }

    private func drain() async {
        while !queued.isEmpty {
            var take = 0
            var count = 0
            while take < queued.count, take == 0 || count + queued[take].commands.count <= maxBatch {
                count += queued[take].commands.count
                take += 1
            }
            let batch = queued.prefix(take)
            queued.removeFirst(take)
            do {
                _ = try await commandLog.propose(batch.flatMap(\.commands))
            } catch {
                logger.error(
                    "cannot record frame results", metadata: ["error": "\(error)", "farm/commands": "\(count)"])
            }
            for item in batch { item.done.resume() }
        }
        proposing = false
    }
}
