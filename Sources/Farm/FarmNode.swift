import Foundation
import Ledger
import Logging
import Mesh
import Render
import ServiceLifecycle

/// The node daemon: ledger, blob store, scheduler, workers, delivery and the control socket, as one service group.
///
/// Every background loop wakes on `pulse` (fired after each applied batch and on a timer) and reads the ledger,
/// so the ledger is the single source of truth and a restart resumes from it.
public actor FarmNode {
    public let settings: NodeSettings
    public let nodeID: String
    let identity: NodeIdentity
    let farmKey: FarmKey
    let ledger: LedgerStore
    let blobs: BlobStore
    let renderer: any Renderer
    let blender: BlenderInstallation?
    let pulse = Pulse()
    var commandLog: (any CommandLog)!
    var logger: Logger
    private let lockFD: Int32
    private var group: ServiceGroup?

    /// What each render slot is doing, for `peers` and `status`.
    let progress = SlotProgress()
    /// Each slot's open render session and its job (reused for the next chunk of the same job).
    var sessions: [Int: (job: String, session: any RenderSession)] = [:]
    /// Sessions opened at submit time to read a scene's frame range, waiting for the job's first chunk.
    var warmSessions: [String: any RenderSession] = [:]
    /// Assignments a slot is working on.
    var claimed: Set<String> = []
    /// Delivery has looked at every frame committed up to this log index.
    var deliveredThrough: UInt64 = 0
    /// Frames of this node's jobs that could not be written yet (folder unwritable, image not here yet).
    var deliveryRetries: [String: FrameRecord] = [:]
    var deliveryErrors: [String: String] = [:]

    // MARK: Start

    /// Opens the node's data directory (creating identity and database on first use) and takes its lock.
    public init(settings: NodeSettings, farmKey: FarmKey, logger: Logger) async throws {
        let data = settings.data
        try data.create()
        lockFD = try Self.takeLock(data)
        do {
            identity = try NodeIdentity.loadOrCreate(at: data.identity)
            nodeID = identity.nodeID
            self.farmKey = farmKey
            self.settings = settings
            var logger = logger
            logger[metadataKey: "node"] = "\(settings.name)"
            self.logger = logger
            try FileManager.default.createDirectory(atPath: data.work, withIntermediateDirectories: true)
            ledger = try LedgerStore(path: data.database)
            blobs = try BlobStore(root: data.blobs)
            switch settings.renderer {
            case .blender:
                let found = try await BlenderLocator.locate(
                    explicit: settings.blenderPath, environment: ProcessInfo.processInfo.environment)
                blender = found
                renderer = BlenderRenderer(installation: found, logger: logger)
            case .simulated(let ms):
                blender = try? await BlenderLocator.locate(
                    explicit: settings.blenderPath, environment: ProcessInfo.processInfo.environment)
                renderer = SimulatedRenderer(millisecondsPerFrame: ms)
            }
        } catch {
            close(lockFD)
            throw error
        }
        let pulse = self.pulse
        commandLog = LocalCommandLog(ledger: ledger, node: nodeID, onApply: { pulse.fire() })
    }

    /// One daemon per data directory: an exclusive `flock` held for the daemon's lifetime.
    private static func takeLock(_ data: DataDirectory) throws -> Int32 {
        let fd = open(data.lock, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw FarmError(.io, "Cannot open the lock file \(data.lock).") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let pid = (try? String(contentsOfFile: data.lock, encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            close(fd)
            throw FarmError(
                .alreadyRunning,
                "Another rexnode daemon (pid \(pid)) is already running on \(data.root); use another --data folder.")
        }
        ftruncate(fd, 0)
        let pid = Array("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        return fd
    }

    // MARK: Run

    /// Runs until SIGINT/SIGTERM or `rexnode leave`; on the way out every Blender process is killed.
    public func run(onReady: @escaping @Sendable () -> Void = {}) async throws {
        try await recoverAfterRestart()
        let handler: @Sendable (ControlRequest) async -> ControlResponse = { [self] request in
            await self.handle(request)
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(
                service: ControlServer(path: settings.data.socket, logger: logger, handler: handler),
                successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "control"),
            .init(service: LoopService(name: "ticker") { [self] in await self.tickLoop() }, serviceName: "ticker"),
            .init(
                service: LoopService(name: "scheduler") { [self] in await self.schedulerLoop() },
                serviceName: "scheduler"),
            .init(
                service: LoopService(name: "delivery") { [self] in await self.deliveryLoop() },
                serviceName: "delivery"),
            .init(
                service: LoopService(name: "reaper") { [self] in await self.sessionReaperLoop() },
                serviceName: "reaper"),
        ]
        for slot in 0..<max(1, settings.slots) {
            services.append(
                .init(
                    service: LoopService(name: "slot-\(slot)") { [self] in await self.slotLoop(slot) },
                    serviceName: "slot-\(slot)"))
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        self.group = group
        logger.info(
            "node ready",
            metadata: ["id": "\(nodeID)", "socket": "\(settings.data.socket)", "slots": "\(settings.slots)"])
        onReady()
        do {
            try await group.run()
        } catch {
            await shutdown()
            throw error
        }
        await shutdown()
    }

    private func shutdown() async {
        pulse.finish()
        for (_, open) in sessions { await open.session.close() }
        sessions.removeAll()
        for (_, warm) in warmSessions { await warm.close() }
        warmSessions.removeAll()
        unlink(settings.data.socket)
        close(lockFD)
        logger.info("node stopped")
    }

    func requestShutdown() async {
        await group?.triggerGracefulShutdown()
    }

    /// After a crash or `kill -9`: this node's unfinished assignments go back to the queue.
    private func recoverAfterRestart() async throws {
        let mine = try ledger.openAssignments(node: nodeID)
        guard !mine.isEmpty else { return }
        logger.info("returning unfinished frames to the queue after a restart", metadata: ["chunks": "\(mine.count)"])
        _ = try await commandLog.propose(
            mine.map { .releaseFrames(ReleaseFrames(assignment: $0.assignment, reason: "node restarted")) })
    }

    private func tickLoop() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(settings.tickMilliseconds))
            pulse.fire()
        }
    }

    // MARK: Scheduler

    /// On the leader: turn free slots into assignments whenever the ledger changes.
    private func schedulerLoop() async {
        for await _ in pulse.subscribe() {
            guard await commandLog.isLeader() else { continue }
            do {
                let busy = try ledger.openAssignments(node: nodeID).count
                let slots = [Scheduler.Slot(node: nodeID, free: max(0, settings.slots) - busy)]
                let free = slots.reduce(0) { $0 + max(0, $1.free) }
                guard free > 0 else { continue }
                let queue = try ledger.queuedWork(framesPerJob: free * Self.maxChunk)
                guard !queue.isEmpty else { continue }
                let decisions = Scheduler.assign(queue: queue, slots: slots)
                guard !decisions.isEmpty else { continue }
                let term = await commandLog.currentTerm()
                let lease = Self.nowMs() + settings.leaseMilliseconds
                _ = try await commandLog.propose(
                    decisions.map {
                        .assignChunk(
                            AssignChunk(
                                assignment: "a-" + Self.shortID(), job: $0.job, frames: $0.frames, node: $0.node,
                                term: term, leaseUntilMs: lease))
                    })
            } catch {
                logger.error("scheduling failed: \(error)")
            }
        }
    }

    // MARK: Helpers

    /// The largest chunk a job may ask for (the scheduler reads no more queued frames than slots × this).
    public static let maxChunk = 1000

    static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    static func shortID() -> String {
        Sodium.randomBytes(6).hexString
    }
}

/// A background loop as a `Service`: it ends when the group shuts down.
struct LoopService: Service, CustomStringConvertible {
    let name: String
    let body: @Sendable () async -> Void

    var description: String { name }

    func run() async throws {
        await cancelWhenGracefulShutdown { await body() }
    }
}
