import Ledger
import Logging

/// Group commit for workers' reports: while `maxInFlight` proposals are on their way, a new report waits and goes
/// with every report that piled up meanwhile, as one proposal (one forward to the leader, one Raft append, one
/// fsync per node). Nothing waits for a timer: below the limit each report goes at once (proposals stay
/// pipelined, as before batching); under load (many slots finishing short frames) reports ride together.
actor ReportBatcher {
    private let commandLog: any CommandLog
    private let logger: Logger
    /// At most this many commands in one proposal (it must fit one mesh request).
    private let maxBatch: Int
    private let maxInFlight: Int
    private var queued: [(commands: [LedgerCommand], done: CheckedContinuation<Void, Never>)] = []
    private var inFlight = 0

    init(commandLog: any CommandLog, logger: Logger, maxBatch: Int = 256, maxInFlight: Int = 4) {
        self.commandLog = commandLog
        self.logger = logger
        self.maxBatch = maxBatch
        self.maxInFlight = maxInFlight
    }

    /// Returns once the commands were proposed with the batch they joined (applied, or given up with a log line:
    /// a report that fails only delays the frames, whose lease returns them).
    func report(_ commands: [LedgerCommand]) async {
        guard !commands.isEmpty else { return }
        await withCheckedContinuation { continuation in
            queued.append((commands, continuation))
            if inFlight < maxInFlight {
                inFlight += 1
                Task { await self.drain() }
            }
        }
    }

    /// Proposes what is queued, batch after batch, until nothing is; several drains run at once (`maxInFlight`).
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
        inFlight -= 1
    }
}
