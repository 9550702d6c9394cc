import Election
import Embedded
import Foundation
import Ledger
import Logging
import Mesh
import NIOPosix
import Render
import ServiceLifecycle
import Synchronization

/// The node daemon: it only wires the rooms together and runs them as one `ServiceGroup`.
///
/// Raft runs on a thread of its own, fed straight from the mesh connections and sending straight to them (see
/// `MeshRaftTransport`); every other room owns its state: `ControlAPI` (the control socket), `SubmitService`,
/// `WorkerPool` (render slots and sessions), `Delivery`, `LeaderService` (`LeaderDuties` and the scheduler),
/// `Janitor`, `Membership`, and `FarmQueries` (the read model). Background loops wake on `pulse` (fired after each
/// applied batch and on a timer) and read the ledger, so the ledger is the single source of truth and a restart
/// resumes from it.
public final class FarmNode: Sendable {
    public let settings: NodeSettings
    public let nodeID: String
    let farmKey: FarmKey
    let ledger: LedgerStore
    let blobs: BlobStore
    let mesh: MeshNode
    let raft: RaftNode
    let raftLog: RaftCommandLog
    let pulse = Pulse()
    let progress = SlotProgress()
    /// Whether this node rests now, outside its `--schedule`.
    let rest = RestState()
    let disk = DiskState()
    let roster: Roster
    let exchange: BlobExchange
    let workers: WorkerPool
    let delivery: Delivery
    let hooks: JobHooks
    let membership: Membership
    let control: ControlAPI
    let leader: LeaderService
    let janitor: Janitor
    let retention: ImageRetention
    let frameLogs: FrameLogService
    let keyRotation: KeyRotation
    let logger: Logger
    /// Raft's own thread (see `RaftNode`): nothing else runs on it.
    private let raftLoop: MultiThreadedEventLoopGroup
    private let lockFD: Int32
    private let group = GroupHandle()

    // MARK: Start

    /// Opens the node's data directory (creating identity and database on first use) and takes its lock.
    public init(settings: NodeSettings, farmKey: FarmKey, logger: Logger) async throws {
        var settings = settings
        let data = settings.data
        try data.create()
        lockFD = try Self.takeLock(data)
        ResourceCache.use(data.resources)
        let identity: NodeIdentity
        let ledger: LedgerStore
        let blobs: BlobStore
        let raftStore: RaftLogStore
        let logStore: FrameLogStore
        let renderer: any Renderer
        let blenders: [BlenderInstallation]
        var logger = logger
        logger[metadataKey: "farm/node"] = "\(settings.name)"
        do {
            identity = try NodeIdentity.loadOrCreate(at: data.identity)
            try FileManager.default.createDirectory(atPath: data.work, withIntermediateDirectories: true)
            ledger = try LedgerStore(path: data.database, extraMigrations: RaftLogStore.registerMigrations)
            blobs = try BlobStore(root: data.blobs)
            logStore = try FrameLogStore(root: data.logs, limits: settings.frameLogLimits)
            raftStore = RaftLogStore(writer: ledger.writer)
            let environment = ProcessInfo.processInfo.environment
            switch settings.renderer {
            case .blender:
                let found = try await BlenderLocator.locateAll(
                    explicit: settings.blenderPaths, environment: environment)
                blenders = found
                renderer = RuntimeRenderer(found.map { BlenderRenderer(installation: $0, logger: logger) })
            case .simulated(let ms):
                blenders =
                    (try? await BlenderLocator.locateAll(explicit: settings.blenderPaths, environment: environment))
                    ?? []
                renderer = SimulatedRenderer(millisecondsPerFrame: ms)
            }
            try await Self.checkDevice(&settings, blender: blenders.first)
        } catch {
            close(lockFD)
            throw error
        }
        let nodeID = identity.nodeID
        self.nodeID = nodeID
        self.farmKey = farmKey
        self.settings = settings
        self.logger = logger
        self.ledger = ledger
        self.blobs = blobs

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
        let mesh = MeshNode(
            settings: meshSettings, farmKey: farmKey, identity: identity, blobSource: blobs.directory,
            logger: meshLogger)
        self.mesh = mesh

        // Raft: its own thread; messages in straight from the connections, out straight to them.
        raftLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let raft = RaftNode(
            id: nodeID, settings: settings.raft, storage: raftStore, transport: MeshRaftTransport(mesh: mesh),
            appliedIndex: try ledger.appliedIndex(), eventLoop: raftLoop.next())
        self.raft = raft
        mesh.setRaftHandler { from, bytes in raft.receive(from: from, bytes: bytes) }
        let pulse = self.pulse
        // The rotation service needs the command log, and the log's apply hook needs the service: set once, below.
        let keys = Late<KeyRotation>()
        raftLog = try RaftCommandLog(
            raft: raft, ledger: ledger, node: nodeID, logger: logger, snapshotEvery: settings.snapshotEvery,
            forward: { leader, entries in
                // A leader we have no connection to is likely gone: fail now and retry as Raft moves on,
                // rather than wait out the request timeout.
                guard await mesh.connectedPeers().contains(leader) else {
                    throw FarmError(.notRunning, "The leader \(leader) is not connected.")
                }
                let answer = try await mesh.request(
                    to: leader, PeerRequest.propose(entries).encoded(), timeout: .seconds(5))
                return try PeerAnswer(bytes: answer).indexes
            },
            onApply: { pulse.fire() },
            onMembership: { change, index in
                switch change {
                case .farmKey(let c):
                    await keys.value?.apply(c)
                case .revokeNodes:
                    await keys.value?.refreshTrust()
                default:
                    await Membership.enforce(change, at: index, raft: raft, mesh: mesh)
                    // A revoked machine is shut out as soon as its removal applies (the leader too).
                    if case .removeNode = change { await keys.value?.refreshTrust() }
                }
            },
            onRestore: { snapshot in
                // The entries the snapshot stands for were never applied here: catch up with what they did.
                for member in snapshot.members { await mesh.allow(nodeID: member) }
                await keys.value?.catchUp()
            })
        let keyRotation = KeyRotation(
            nodeID: nodeID, name: settings.name, data: data, mesh: mesh, raft: raft, ledger: ledger,
            commandLog: raftLog, logger: logger)
        self.keyRotation = keyRotation
        keys.set(keyRotation)
        try await keyRotation.start()

        let roster = Roster(
            nodeID: nodeID, slots: settings.slots, raft: raft, mesh: mesh, tags: settings.tags, rest: rest,
            disk: disk, blender: settings.renderer == .blender ? blenders.map(\.version) : [])
        self.roster = roster
        let exchange = BlobExchange(
            nodeID: nodeID, blobs: blobs, mesh: mesh, roster: roster, sync: GroupSync(), logger: logger)
        self.exchange = exchange
        let work = WorkFolders(root: data.work, blobs: blobs)
        let inFlight = ScenesInFlight()
        let workers = WorkerPool(
            nodeID: nodeID, settings: settings, ledger: ledger, blobs: blobs, exchange: exchange, roster: roster,
            commandLog: raftLog, renderer: renderer, work: work, pulse: pulse, progress: progress, logger: logger,
            frameLogs: logStore, inFlight: inFlight)
        self.workers = workers
        let delivery = Delivery(
            nodeID: nodeID, ledger: ledger, blobs: blobs, exchange: exchange, pulse: pulse, logger: logger)
        self.delivery = delivery
        let group = self.group
        membership = Membership(
            nodeID: nodeID, settings: settings, raft: raft, raftStore: raftStore, mesh: mesh, ledger: ledger,
            commandLog: raftLog, roster: roster, progress: progress, logger: logger,
            requestShutdown: { await group.shutDown() })
        let submit = SubmitService(
            nodeID: nodeID, settings: settings, blobs: blobs, work: work, blenders: blenders, commandLog: raftLog,
            ledger: ledger, inFlight: inFlight, progress: SubmitProgress(), logger: logger, roster: roster,
            farmBlenders: { await roster.blenderVersions().values.flatMap { $0 } })
        let queries = FarmQueries(
            nodeID: nodeID, name: settings.name, listen: settings.listen, slots: settings.slots, ledger: ledger,
            raft: raft, mesh: mesh, roster: roster, progress: progress, delivery: delivery,
            devices: settings.slotDevices, hooks: data.hooks)
        let jobControl = JobControl(
            nodeID: nodeID, ledger: ledger, commandLog: raftLog, submitService: submit, exchange: exchange,
            roster: roster, logger: logger)
        let frameLogs = FrameLogService(
            nodeID: nodeID, name: settings.name, ledger: ledger, mesh: mesh, roster: roster, store: logStore)
        self.frameLogs = frameLogs
        control = ControlAPI(
            submitService: submit, queries: queries, delivery: delivery, membership: membership,
            jobControl: jobControl, commandLog: raftLog, ledger: ledger, pulse: pulse, keyRotation: keyRotation,
            logger: logger, frameLogs: frameLogs)
        leader = LeaderService(
            nodeID: nodeID, settings: settings, raft: raft, mesh: mesh, ledger: ledger, commandLog: raftLog,
            roster: roster, pulse: pulse, logger: logger)
        hooks = JobHooks(
            nodeID: nodeID, ledger: ledger, queries: queries, delivery: delivery, notifyURL: settings.notifyURL,
            folder: data.hooks, logger: logger)
        janitor = Janitor(
            nodeID: nodeID, settings: settings, ledger: ledger, blobs: blobs, work: work, inFlight: inFlight,
            logger: logger)
        retention = ImageRetention(
            nodeID: nodeID, keepMilliseconds: settings.keepImagesMilliseconds, ledger: ledger, blobs: blobs,
            commandLog: raftLog, inFlight: inFlight, file: data.retention, logger: logger,
            submitterReachable: { [roster] submitter in await roster.isLiveMember(submitter) })
    }

    deinit {
        raftLoop.shutdownGracefully(queue: .global()) { _ in }
    }

    /// One daemon per data directory: an exclusive `flock` held for the daemon's lifetime.
    private static func takeLock(_ data: DataDirectory) throws -> Int32 {
        let fd = open(data.lock, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw FarmError(.io, "Cannot open the lock file \(data.lock).") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let pid =
                (try? String(contentsOfFile: data.lock, encoding: .utf8))?
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

    /// `--device`: a GPU must be one this node's Blender sees (probed once, here); without `--slots`, a GPU kind with
    /// no index gets one slot per device. Sets what each slot renders on.
    static func checkDevice(_ settings: inout NodeSettings, blender: BlenderInstallation?) async throws {
        guard let device = settings.device else {
            settings.slotDevices = Array(repeating: "CPU", count: settings.slots)
            return
        }
        var count = 1
        if device.kind != .cpu {
            guard let blender else {
                throw FarmError(.badInput, "--device \(device) needs a Blender to check it against; pass --blender.")
            }
            let seen = try await blender.probeDevices()
            try device.check(against: seen, version: blender.version)
            count = seen.devices[device.kind.rawValue]?.count ?? 1
            if !settings.slotsGiven && device.index == nil { settings.slots = max(1, count) }
        }
        settings.slotDevices = device.perSlot(slots: settings.slots, count: count)
    }

    // MARK: Run

    /// Runs until SIGINT/SIGTERM or `rexnode leave`; on the way out every Blender process is killed.
    /// - Parameter onFounded: called once if this start founds a new farm after its discovery window (the CLI
    ///   prints the join token then, not before it knows no other farm is in sight).
    /// - Parameter extraServices: services the executable adds (the dashboard), run in the same group.
    public func run(
        extraServices: [any Service] = [], onReady: @escaping @Sendable () -> Void = {},
        onFounded: @escaping @Sendable () -> Void = {}
    ) async throws {
        await mesh.setControlHandler { [self] from, payload in try await self.answerPeer(from: from, payload) }
        let (mesh, membership, raftLog, control, leader, workers, delivery, janitor, pulse) = (
            self.mesh, self.membership, self.raftLog, self.control, self.leader, self.workers, self.delivery,
            self.janitor, self.pulse
        )
        let tick = settings.tickMilliseconds
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            Self.essential("mesh") { try await mesh.run() },
            Self.essential("raft") { try await membership.runRaft(onFounded: onFounded) },
            .init(
                service: ControlServer(
                    path: settings.data.socket, logger: logger, handler: { await control.handle($0) }),
                successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "control"),
            Self.loop("apply") { await raftLog.applyCommitted() },
            Self.loop("roles") { await membership.logRoleChanges() },
            Self.loop("status") { await membership.publishStatus() },
            Self.loop("epochs") { await membership.watchEpochs() },
            Self.loop("members") { [keyRotation] in await keyRotation.watchMembers() },
            Self.loop("leader") { await leader.runDuties() },
            Self.loop("scheduler") { await leader.runScheduler() },
            Self.loop("delivery") { await delivery.run() },
            Self.loop("reaper") { await workers.runReaper() },
            Self.loop("janitor") { await janitor.run() },
            Self.loop("retention") { [retention] in await retention.run() },
            Self.loop("disk") { [disk, settings, logger] in
                await disk.watch(
                    root: settings.data.root, blobs: settings.data.blobs, minFree: settings.minFreeBytes,
                    logger: logger, onChange: { pulse.fire() })
            },
            Self.loop("hooks") { [hooks] in await hooks.run() },
            Self.loop("ticker") {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(tick))
                    pulse.fire()
                }
            },
        ]
        if let schedule = settings.schedule {
            let (rest, logger) = (self.rest, self.logger)
            services.append(
                Self.loop("schedule") {
                    await rest.watch(schedule) { resting in
                        if resting, let until = rest.restingUntilMs {
                            let wake = Date(timeIntervalSince1970: Double(until) / 1000)
                            logger.info(
                                "resting outside the schedule",
                                metadata: ["farm/wakes": "\(wake)", "farm/schedule": "\(schedule.text)"])
                        } else {
                            logger.info("the schedule's window is open; taking work")
                        }
                        pulse.fire()
                    }
                })
        }
        for service in extraServices {
            services.append(.init(service: service, serviceName: "\(service)"))
        }
        for slot in 0..<max(1, settings.slots) {
            services.append(Self.loop("slot-\(slot)") { await workers.runSlot(slot) })
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        self.group.set(group)
        logger.info(
            "node ready",
            metadata: [
                "farm/id": "\(nodeID)", "farm/socket": "\(settings.data.socket)", "farm/slots": "\(settings.slots)",
            ])
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
        await workers.closeAll()
        unlink(settings.data.socket)
        close(lockFD)
        logger.info("node stopped")
    }

    /// Answers another daemon's request (the mesh has already authenticated it as a farm member).
    private func answerPeer(from: String, _ payload: [UInt8]) async throws -> [UInt8] {
        let request = try PeerRequest(bytes: payload)
        switch request {
        case .propose, .replicate, .store, .leave, .frameLogs:
            // What changes the farm, fills this node's disk or reads its logs is for members only (as this node's
            // Raft membership has them, revoked identities excepted); holding the current key is not enough.
            guard await raft.status?.members.contains(from) == true, !keyRotation.isRevoked(from) else {
                throw FarmError(.badInput, "Only a member of this farm may ask this node that.")
            }
        case .stale, .farmKey:
            // A stale-log notice is checked against this node's own epoch and run; a key hand-over against its
            // members and its identity (`KeyRotation.receive`).
            break
        }
        switch request {
        case .propose(let entries):
            return PeerAnswer(indexes: try await raftLog.proposeForwarded(entries)).encoded()
        case .replicate(let hash, let holder):
            try await exchange.replicate(hash, from: holder)
        case .store(let hash, let bytes):
            try await exchange.receive(hash, bytes: bytes)
        case .leave(let node):
            _ = try await raft.removeMember(node)
        case .frameLogs(let job, let frames, let lastOnly):
            let frameLogs = self.frameLogs
            return try await Blocking.run { try frameLogs.answer(job: job, frames: frames, lastOnly: lastOnly) }
        case .stale(let epoch, let instance):
            await membership.onStale(epoch: epoch, instance: instance)
        case .farmKey(let sealed):
            try keyRotation.receive(sealed: sealed, from: from)
        }
        return PeerAnswer().encoded()
    }

    // MARK: Starting over

    /// The run ended because a recovered farm said this node's log predates its recovery: set the old ledger aside
    /// (`setAsideStaleLedger`) and run a new `FarmNode` on the same folder; it joins as a fresh node.
    public var mustStartOver: Bool { membership.startOver.isSet }

    /// Moves the ledger database (and its WAL files) into `DATA/stale-TIME/`, kept for inspection; the node's
    /// identity, farm key and blobs stay. Call only after `run()` has returned.
    public static func setAsideStaleLedger(_ data: DataDirectory) throws {
        let folder = data.root + "/stale-\(WallClock.millis())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let name = (data.database as NSString).lastPathComponent
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: data.database + suffix) {
            try FileManager.default.moveItem(atPath: data.database + suffix, toPath: folder + "/" + name + suffix)
        }
    }

    // MARK: Helpers

    /// The largest chunk a job may ask for (the scheduler reads no more queued frames than slots × this).
    public static let maxChunk = 1000

    /// The file name a frame gets in the output folder: `NAME_0001.png` (zero-padded, the image's own extension).
    public static func frameFileName(job name: String, frame: Int, ext: String) -> String {
        Delivery.frameFileName(job: name, frame: frame, ext: ext)
    }

    static func shortID() -> String { Sodium.randomBytes(6).hexString }

    /// A task the node cannot live without (the mesh, Raft): when it ends, the whole group shuts down.
    private static func essential(_ name: String, _ body: @escaping @Sendable () async throws -> Void)
        -> ServiceGroupConfiguration.ServiceConfiguration
    {
        .init(
            service: ThrowingService(name: name, body: body), successTerminationBehavior: .gracefullyShutdownGroup,
            failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: name)
    }

    /// A background loop: it runs until the group shuts down, and one that is done sooner waits for that.
    static func loop(_ name: String, _ body: @escaping @Sendable () async -> Void)
        -> ServiceGroupConfiguration.ServiceConfiguration
    {
        .init(service: LoopService(name: name, body: body), serviceName: name)
    }
}

/// A value set once after it is made (breaks a cycle between two rooms built in one initializer).
final class Late<Value: Sendable>: Sendable {
    private let stored = Mutex<Value?>(nil)
    func set(_ value: Value) { stored.withLock { $0 = value } }
    var value: Value? { stored.withLock { $0 } }
}

/// The running group, so `rexnode leave` can end it.
final class GroupHandle: Sendable {
    private let group = Mutex<ServiceGroup?>(nil)

    func set(_ group: ServiceGroup) { self.group.withLock { $0 = group } }
    func shutDown() async { await group.withLock { $0 }?.triggerGracefulShutdown() }
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
///
/// A loop may be done before that (`watchEpochs` once it has asked the node to start over, a loop whose stream
/// ended): it then waits for the shutdown. Returning at once would end the whole group with
/// `serviceFinishedUnexpectedly` (a `ServiceGroup` treats a service that finishes by itself as a failure, and so
/// does its graceful shutdown for any service but the one it is stopping), and the daemon would exit with that error
/// instead of stopping cleanly, or of restarting to rejoin a recovered farm.
struct LoopService: Service, CustomStringConvertible {
    let name: String
    let body: @Sendable () async -> Void

    var description: String { name }

    func run() async throws {
        await cancelWhenGracefulShutdown { await body() }
        // Cancelled (the group is going down) or shutting down gracefully: this returns at once.
        try? await gracefulShutdown()
    }
}
