import Election
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
    let blobSync: GroupSync
    let renderer: any Renderer
    let blender: BlenderInstallation?
    let pulse = Pulse()
    let mesh: MeshNode
    let raft: RaftNode
    let raftStore: RaftLogStore
    let raftLog: RaftCommandLog
    var commandLog: any CommandLog { raftLog }
    let raftOutbox: AsyncStream<(peer: String, bytes: [UInt8])>.Continuation
    let raftOutgoing: AsyncStream<(peer: String, bytes: [UInt8])>
    var logger: Logger
    private let lockFD: Int32
    private var group: ServiceGroup?

    /// What each render slot is doing, for `peers` and `status`.
    let progress = SlotProgress()
    /// Each slot's open render session and its job (reused for the next chunk of the same job).
    var sessions: [Int: (job: String, session: any RenderSession)] = [:]
    /// Sessions opened at submit time to read a scene's frame range, waiting for the job's first chunk.
    /// Closed after `warmSessionLifetime` if no local slot took them (the job's chunks went to other nodes), so
    /// a burst of submits does not leave one idle Blender per job.
    var warmSessions: [String: (session: any RenderSession, since: ContinuousClock.Instant)] = [:]
    static let warmSessionLifetime: Duration = .seconds(30)
    var onFounded: @Sendable () -> Void = {}
    /// Set by `rexnode leave`: beacons announce it, so the leader does not add this node back.
    var leaving = false
    /// Scenes stored by submits not yet committed: clean-up must not take them.
    var submitting: Set<String> = []
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
            ledger = try LedgerStore(path: data.database, extraMigrations: RaftLogStore.registerMigrations)
            blobs = try BlobStore(root: data.blobs)
            raftStore = RaftLogStore(writer: ledger.writer)
            blobSync = GroupSync()
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
        var meshSettings = MeshNode.Settings()
        meshSettings.name = settings.name
        try meshSettings.setListen(settings.listen)
        try meshSettings.discovery.setGroup(settings.discovery)
        meshSettings.discovery.interface = settings.interface ?? "127.0.0.1"
        meshSettings.discovery.beaconInterval = .milliseconds(settings.beaconMilliseconds)
        meshSettings.discovery.peerTable.suspectAfter = .milliseconds(settings.suspectMilliseconds)
        meshSettings.discovery.peerTable.deadAfter = .milliseconds(settings.deadMilliseconds)
        var meshLogger = logger
        meshLogger.logLevel = max(logger.logLevel, .notice)
        mesh = MeshNode(
            settings: meshSettings, farmKey: farmKey, identity: identity,
            blobSource: blobs.directory, logger: meshLogger)
        (raftOutgoing, raftOutbox) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(8192))
        raft = RaftNode(
            id: identity.nodeID, settings: settings.raft, storage: raftStore,
            transport: OutboxTransport(outbox: raftOutbox), appliedIndex: try ledger.appliedIndex())
        let mesh = self.mesh
        raftLog = try RaftCommandLog(
            raft: raft, ledger: ledger, node: identity.nodeID, logger: logger,
            forward: { leader, entries in
                // A leader we have no connection to is likely gone: fail now and retry as Raft moves on,
                // rather than wait out the request timeout.
                guard await mesh.connectedPeers().contains(leader) else {
                    throw FarmError(.notRunning, "The leader \(leader) is not connected.")
                }
                let answer = try await mesh.request(
                    to: leader, PeerRequest(op: .propose, payloads: entries).encoded(), timeout: .seconds(5))
                return try PeerAnswer(bytes: answer).indexes ?? []
            },
            onApply: { pulse.fire() })
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
    /// - Parameter onFounded: called once if this start founds a new farm after its discovery window (the CLI
    ///   prints the join token then, not before it knows no other farm is in sight).
    public func run(
        onReady: @escaping @Sendable () -> Void = {}, onFounded: @escaping @Sendable () -> Void = {}
    ) async throws {
        self.onFounded = onFounded
        let handler: @Sendable (ControlRequest) async -> ControlResponse = { [self] request in
            await self.handle(request)
        }
        await mesh.setControlHandler { [self] from, payload in try await self.answerPeer(from: from, payload) }
        func loop(_ name: String, _ body: @escaping @Sendable () async -> Void) -> ServiceGroupConfiguration
            .ServiceConfiguration
        {
            .init(service: LoopService(name: name, body: body), serviceName: name)
        }
        let mesh = self.mesh
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(
                service: ThrowingService(name: "mesh") { try await mesh.run() },
                successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "mesh"),
            .init(
                service: ThrowingService(name: "raft") { [self] in try await self.runRaft() },
                successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "raft"),
            loop("apply") { [raftLog] in await raftLog.applyCommitted() },
            loop("raft-out") { [self] in await self.sendRaftMessages() },
            loop("raft-in") { [self] in await self.receiveMeshMessages() },
            loop("roles") { [raft, logger] in await Self.logRoleChanges(raft.roleChanges, logger: logger) },
            loop("leader") { [self] in await self.leaderDutiesLoop() },
            loop("status") { [self] in await self.publishStatusLoop() },
            .init(
                service: ControlServer(path: settings.data.socket, logger: logger, handler: handler),
                successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "control"),
            loop("ticker") { [self] in await self.tickLoop() },
            loop("scheduler") { [self] in await self.schedulerLoop() },
            loop("delivery") { [self] in await self.deliveryLoop() },
            loop("reaper") { [self] in await self.sessionReaperLoop() },
            loop("cleanup") { [self] in await self.blendCleanupLoop() },
        ]
        for slot in 0..<max(1, settings.slots) {
            services.append(loop("slot-\(slot)") { [self] in await self.slotLoop(slot) })
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
        for (_, warm) in warmSessions { await warm.session.close() }
        warmSessions.removeAll()
        unlink(settings.data.socket)
        close(lockFD)
        logger.info("node stopped")
    }

    func requestShutdown() async {
        await group?.triggerGracefulShutdown()
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
                let open = try ledger.openAssignments()
                let slots = await renderSlots().map { node, total in
                    Scheduler.Slot(node: node, free: max(0, total - open.filter { $0.node == node }.count))
                }
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

    static func nowMs() -> Int64 { WallClock.millis() }

    static func shortID() -> String {
        Sodium.randomBytes(6).hexString
    }
}

/// A long-lived task that ends the group when it stops (the mesh, Raft).
struct ThrowingService: Service, CustomStringConvertible {
    let name: String
    let body: @Sendable () async throws -> Void

    var description: String { name }

    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await body() }
        } catch is CancellationError {
            // Shutting down.
        }
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
