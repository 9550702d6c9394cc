import Foundation
import Ledger
import Logging
import Render
import Synchronization

/// What each render slot is doing right now; read by `peers` and `status` without waiting on anything.
final class SlotProgress: Sendable {
    struct Task: Sendable, Equatable {
        var job: String
        var frame: Int
        var fraction: Double
    }

    private let table = Mutex<[Int: Task]>([:])

    func set(_ slot: Int, _ task: Task?) { table.withLock { $0[slot] = task } }
    func snapshot() -> [Int: Task] { table.withLock { $0 } }
}

/// This node's render slots and their Blender sessions.
///
/// A slot takes an open assignment of this node, reuses its session when the job is the same (else fetches the
/// job's files, lays out its project and opens one), renders each frame still assigned to it, stores the image
/// and any extra outputs, copies them to a second member and proposes `CompleteFrame`; the next frame renders
/// while that happens.
extension TileGrid {
    /// A tile's region as the renderer takes it.
    func imageRegion(_ unit: FrameTile) -> ImageRegion {
        let r = region(unit.tile)
        return ImageRegion(x: r.x, y: r.y, width: r.width, height: r.height, fullWidth: width, fullHeight: height)
    }
}

actor WorkerPool {
    let nodeID: String
    let settings: NodeSettings
    let ledger: LedgerStore
    let blobs: BlobStore
    let exchange: BlobExchange
    let roster: Roster
    let commandLog: any CommandLog
    /// Group commit of this node's reports (completions, failures, releases) across its slots.
    private let batcher: ReportBatcher
    let renderer: any Renderer
    let work: WorkFolders
    let pulse: Pulse
    let progress: SlotProgress
    let logger: Logger
    /// Blender's output of each frame attempt (`rexnode log`; see FrameLogs.swift).
    let frameLogs: FrameLogStore
    /// Images stored here and not yet recorded in the ledger: clean-up leaves them alone.
    let inFlight: ScenesInFlight

    private var sessions: [Int: (job: String, session: any RenderSession)] = [:]
    /// Assignments a slot is working on.
    private var claimed: Set<String> = []
    /// The job each busy slot is working on.
    private var busy: [Int: String] = [:]
    /// Set once this run's ledger has caught up with the log this node started with (see `hasCaughtUp`).
    private var caughtUp = false
    /// The last index of this node's log when Raft first ran in this run, and whether the log was cut below it since
    /// (its tail was never committed).
    private var startLast: UInt64?
    private var startTailCut = false

    init(
        nodeID: String, settings: NodeSettings, ledger: LedgerStore, blobs: BlobStore, exchange: BlobExchange,
        roster: Roster, commandLog: any CommandLog, renderer: any Renderer, work: WorkFolders, pulse: Pulse,
        progress: SlotProgress, logger: Logger, frameLogs: FrameLogStore, inFlight: ScenesInFlight
    ) {
        self.inFlight = inFlight
        self.nodeID = nodeID
        self.settings = settings
        self.ledger = ledger
        self.blobs = blobs
        self.exchange = exchange
        self.roster = roster
        self.commandLog = commandLog
        batcher = ReportBatcher(commandLog: commandLog, logger: logger)
        self.renderer = renderer
        self.work = work
        self.pulse = pulse
        self.progress = progress
        self.logger = logger
        self.frameLogs = frameLogs
    }

    func closeAll() async {
        for (_, open) in sessions { await open.session.close() }
        sessions.removeAll()
    }

    // MARK: Slots

    /// One render slot: takes this node's open assignments one at a time.
    func runSlot(_ slot: Int) async {
        for await _ in pulse.subscribe() {
            guard await hasCaughtUp(), let assignment = nextAssignment() else { continue }
            claimed.insert(assignment.assignment)
            busy[slot] = assignment.job
            await render(assignment, slot: slot)
            busy[slot] = nil
            claimed.remove(assignment.assignment)
            progress.set(slot, nil)
            pulse.fire()
        }
    }

    /// After a restart the ledger may lag this node's own log (a completion appended, the kill came before it was
    /// applied): an assignment read then still lists frames already done, and rendering them again is wasted (the
    /// ledger ignores the second completion). So slots start once this run hears a leader and its ledger has applied
    /// every entry its log held at start (or the log was cut below that: those entries were never committed); a node
    /// that leads (a farm of one) also waits for its term's first entry to commit, as that commits all before it.
    private func hasCaughtUp() async -> Bool {
        if caughtUp { return true }
        guard let status = await roster.raft.status else { return false }
        let start = startLast ?? status.lastIndex
        startLast = start
        if status.lastIndex < start { startTailCut = true }
        guard status.leader != nil, status.role != .leader || status.canChangeMembership,
            let applied = try? ledger.appliedIndex(), applied >= status.commitIndex, applied >= start || startTailCut
        else { return false }
        caughtUp = true
        return true
    }

    private func nextAssignment() -> AssignmentRecord? {
        do {
            return try ledger.openAssignments(node: nodeID).first { !claimed.contains($0.assignment) }
        } catch {
            logger.error("cannot read assignments", metadata: ["error": "\(error)"])
            return nil
        }
    }

    private func render(_ assignment: AssignmentRecord, slot: Int) async {
        let job = assignment.job
        guard !isPaused(job) else {
            await handBackPaused(assignment)
            return
        }
        // Outside its schedule: a chunk given before the leader saw this node rest goes back, after a short pause so
        // the leader's next round sees the beacon that says so.
        guard roster.takesWork else {
            try? await Task.sleep(for: .seconds(1))
            await handBackResting(assignment)
            return
        }
        let record = try? ledger.job(job)
        let grid = record?.tiles
        // Units of the chunk: tiles to render, then frames to render whole or, in a tiled job, to assemble.
        let units = assignment.pendingTiles.map { Unit.tile($0) } + assignment.pendingFrames.map { Unit.frame($0) }
        // Assembling needs no Blender: a chunk of frames to assemble opens no session.
        let needsBlender = grid == nil || !assignment.pendingTiles.isEmpty
        var session: (any RenderSession)?
        if needsBlender {
            do {
                session = try await openSession(for: job, slot: slot)
            } catch {
                switch Self.classify(error) {
                case .spendAttempts(let message):
                    logger.error("cannot start rendering", metadata: ["farm/job": "\(job)", "error": "\(message)"])
                    await logStartFailure(assignment, error)
                    var failures: [LedgerCommand] = []
                    for unit in units {
                        failures.append(await failure(job: job, unit: unit, assignment: assignment, message: message))
                    }
                    await report(failures)
                case .handBack(let reason):
                    // A pause first, so this node does not take the chunk straight back.
                    logger.warning("returning a chunk", metadata: ["farm/job": "\(job)", "error": "\(reason)"])
                    try? await Task.sleep(for: .seconds(1))
                    await report([.releaseFrames(ReleaseFrames(assignment: assignment.assignment, reason: reason))])
                }
                return
            }
        }
        let submitter = record?.submitter ?? nodeID
        let outDir = work.slotFolder(job: job, slot: slot)
        try? FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
        // Results are recorded while the next frame renders; the chunk ends when all are in the ledger.
        var paused = false
        var resting = false
        var unreachable: String?
        await withDiscardingTaskGroup { reports in
            for unit in units {
                guard stillMine(job: job, unit: unit, assignment: assignment.assignment) else { continue }
                // Paused: the frame in flight has finished; the rest of the chunk goes back once it is recorded.
                if isPaused(job) {
                    paused = true
                    break
                }
                // The schedule's window closed: the frame in flight has finished; the rest goes back.
                if !roster.takesWork {
                    resting = true
                    break
                }
                let frame = unit.frame
                progress.set(slot, .init(job: job, frame: frame, fraction: 0))
                let progress = self.progress
                var attempt = beginAttempt(job: job, frame: frame, assignment: assignment.assignment)
                attempt.tile = unit.tile?.tile
                do {
                    let started = ContinuousClock.now
                    let rendered: RenderedFrame
                    if let grid, case .frame = unit {
                        rendered = try await assemble(
                            job: job, frame: frame, grid: grid, submitter: submitter, into: outDir)
                    } else if let session {
                        rendered = try await session.render(
                            frame: frame, region: unit.tile.flatMap { tile in grid.map { $0.imageRegion(tile) } },
                            into: outDir
                        ) { p in
                            progress.set(slot, .init(job: job, frame: frame, fraction: p.fraction))
                        }
                    } else {
                        continue
                    }
                    let renderMs = (ContinuousClock.now - started).raftNanoseconds / 1_000_000
                    await logAttempt(attempt, rendered: rendered, error: nil)
                    let blobs = self.blobs
                    let (stored, outputs) = try await Blocking.run { () throws -> ((String, Int64), [FrameOutput]) in
                        defer {
                            try? FileManager.default.removeItem(atPath: rendered.path)
                            for extra in rendered.extras { try? FileManager.default.removeItem(atPath: extra.file) }
                        }
                        let image = try blobs.put(fileAt: rendered.path, sync: false)
                        let outputs = try rendered.extras.map { extra in
                            let put = try blobs.put(fileAt: extra.file, sync: false)
                            return FrameOutput(path: extra.path, hash: put.hash, size: put.size)
                        }
                        return ((image.hash, image.size), outputs)
                    }
                    let ext = (rendered.path as NSString).pathExtension
                    logger.debug("frame rendered", metadata: ["farm/job": "\(job)", "farm/frame": "\(unit)"])
                    let complete = CompleteFrameDraft(
                        job: job, frame: frame, assignment: assignment.assignment, term: assignment.term,
                        hash: stored.0, size: stored.1, ext: ext.isEmpty ? "" : "." + ext, outputs: outputs,
                        renderMs: Int64(renderMs), tile: unit.tile?.tile)
                    reports.addTask { await self.record(complete, submitter: submitter) }
                } catch let error as RenderError
                    where error.code == .canceled || (needsBlender && sessions[slot] == nil)
                {
                    // The job was canceled (or finished elsewhere) and the reaper closed the session.
                    break
                } catch let error as FarmError where grid != nil && unit.tile == nil {
                    // Assembling, the tiles could not be had (their holders are away): not the frame's fault, so
                    // the chunk goes back untouched, as a chunk whose scene cannot be fetched does.
                    unreachable = error.message
                    break
                } catch {
                    let renderError = error as? RenderError
                    let message = renderError?.message ?? (error as? FarmError)?.message ?? "\(error)"
                    await logAttempt(attempt, rendered: nil, error: error)
                    logger.warning(
                        "frame failed",
                        metadata: ["farm/job": "\(job)", "farm/frame": "\(unit)", "error": "\(message)"])
                    let command = await failure(job: job, unit: unit, assignment: assignment, message: message)
                    reports.addTask { await self.report([command]) }
                }
            }
        }
        if paused { await handBackPaused(assignment) }
        if resting && !paused { await handBackResting(assignment) }
        if let unreachable, !paused && !resting {
            logger.warning("returning a chunk", metadata: ["farm/job": "\(job)", "error": "\(unreachable)"])
            try? await Task.sleep(for: .seconds(1))
            await report([.releaseFrames(ReleaseFrames(assignment: assignment.assignment, reason: unreachable))])
        }
    }

    /// A failed attempt, counted against this node: `alone` when no other node of the farm can take the frame
    /// (each failed it already or is blocked for the job), so its attempts here decide.
    private func failure(job: String, unit: Unit, assignment: AssignmentRecord, message: String) async
        -> LedgerCommand
    {
        let frame = unit.frame
        // Only nodes that may take the job count: those carrying its tags.
        let needs = Set((try? ledger.job(job))?.tags ?? [])
        let carriers = await roster.memberTags().filter { needs.isSubset(of: $0.value) }.keys
        let others = await roster.otherWorkers().intersection(carriers)
        let failed = (try? ledger.failedNodes(job: job, frame: frame)) ?? []
        let blocked = (try? ledger.blockedNodes(job: job)) ?? []
        return .failFrame(
            FailFrame(
                job: job, frame: frame, node: nodeID, assignment: assignment.assignment,
                message: Self.naming(message, node: settings.name), alone: others.isSubset(of: failed.union(blocked)),
                tile: unit.tile?.tile))
    }

    /// Blender's words, then the node they happened on: "… (on attic)."
    static func naming(_ message: String, node: String) -> String {
        message.hasSuffix(".") ? "\(message.dropLast()) (on \(node))." : "\(message) (on \(node))"
    }

    private func isPaused(_ job: String) -> Bool { (try? ledger.job(job))?.state == "paused" }

    /// The frames of a paused job's chunk that did not start go back to the queue.
    private func handBackPaused(_ assignment: AssignmentRecord) async {
        logger.info("job paused; returning the rest of its chunk", metadata: ["farm/job": "\(assignment.job)"])
        await report([.releaseFrames(ReleaseFrames(assignment: assignment.assignment, reason: "job paused"))])
    }

    /// Resting outside its schedule: the frames of the chunk that did not start go back to the queue.
    private func handBackResting(_ assignment: AssignmentRecord) async {
        let reason = roster.disk.isFull ? "node's disk nearly full" : "node resting"
        logger.info("\(reason); returning a chunk", metadata: ["farm/job": "\(assignment.job)"])
        await report([.releaseFrames(ReleaseFrames(assignment: assignment.assignment, reason: reason))])
    }

    /// What a slot does with a chunk it cannot start.
    enum ChunkFailure: Sendable, Equatable {
        /// Blender's (or the scene's) fault: the frames spend an attempt here and go to another node first.
        case spendAttempts(message: String)
        /// Not Blender's fault (the scene could not be fetched yet, the node is shutting down): the frames go back
        /// to the queue untouched.
        case handBack(reason: String)
    }

    static func classify(_ error: any Error) -> ChunkFailure {
        if let layout = error as? LayoutFailure {
            // The job's files cannot be laid out here (a disk problem, a manifest this node refuses): an attempt
            // spent here, so the frames try other nodes and fail with the reason once they have failed there too.
            return .spendAttempts(message: layout.message)
        }
        guard let render = error as? RenderError else {
            return .handBack(reason: (error as? FarmError)?.message ?? "\(error)")
        }
        // Even a scene that does not load here may load elsewhere (a broken or older Blender, no memory).
        return .spendAttempts(message: render.message)
    }

    /// Laying out a job's fetched files failed.
    struct LayoutFailure: Error, Sendable {
        var message: String
    }

    /// What a slot knows of a rendered frame before it is durable and copied.
    private struct CompleteFrameDraft: Sendable {
        var job: String
        var frame: Int
        var assignment: String
        var term: UInt64
        var hash: String
        var size: Int64
        var ext: String
        var outputs: [FrameOutput]
        var renderMs: Int64
        /// The tile of a tiled frame this image is (nil: the frame).
        var tile: Int?
    }

    /// Makes the image durable here, copies it to a second member (the submitter first), then records the frame:
    /// a frame counts once its image is on two nodes (or on the only one).
    private nonisolated func record(_ frame: CompleteFrameDraft, submitter: String) async {
        let files = [(frame.hash, frame.size)] + frame.outputs.map { ($0.hash, $0.size) }
        // Until the ledger names them, only this marks them as wanted (the store's write time covers the moment
        // between storing and here).
        for (hash, _) in files { inFlight.insert(hash) }
        defer { for (hash, _) in files { inFlight.remove(hash) } }
        await exchange.sync.flush(files.map { blobs.path(for: $0.0) })
        let holders = await exchange.copyUntilHeldTwice(files, submitter: submitter)
        await report([
            .completeFrame(
                CompleteFrame(
                    job: frame.job, frame: frame.frame, node: nodeID, assignment: frame.assignment, term: frame.term,
                    hash: frame.hash, ext: frame.ext, holders: holders,
                    outputs: frame.outputs.isEmpty ? nil : frame.outputs, renderMs: frame.renderMs, tile: frame.tile))
        ])
    }

    /// The slot's session for `job`: reused when it is already open for that job, else a new one on the job's
    /// project, laid out here from its blobs (fetched from every holder at once).
    private func openSession(for job: String, slot: Int) async throws -> any RenderSession {
        if let open = sessions[slot], open.job == job { return open.session }
        if let old = sessions.removeValue(forKey: slot) { await old.session.close() }
        guard let record = try ledger.job(job) else { throw FarmError(.notFound, "Job \(job) is not in the ledger.") }
        let holders = [record.submitter] + (await roster.alivePeers())
        try await exchange.ensureAll(record.blobs, holders: holders)
        let work = self.work
        let project: WorkFolders.Materialized
        do {
            project = try await Blocking.run { try work.materialize(record) }
        } catch let error as FarmError where error.code == .badInput {
            throw LayoutFailure(message: error.message)
        } catch {
            let reason = (error as? FarmError)?.message ?? error.localizedDescription
            throw LayoutFailure(message: "The files of job \(job) cannot be laid out: \(reason)")
        }
        let session = try await renderer.makeSession(
            for: RenderRequest(
                jobID: job, blendPath: project.scene, threads: settings.threads, remapFile: project.remapFile,
                trustScripts: record.trustScripts, sourcePath: record.sourcePath,
                device: settings.device == nil || settings.slotDevices.isEmpty
                    ? nil : settings.slotDevices[slot % settings.slotDevices.count], blender: record.blender))
        sessions[slot] = (job, session)
        return session
    }

    private func stillMine(job: String, unit: Unit, assignment: String) -> Bool {
        switch unit {
        case .frame(let frame):
            guard let record = try? ledger.frame(job, frame) else { return false }
            return record.state == "assigned" && record.assignment == assignment
        case .tile(let tile):
            guard let record = try? ledger.tile(job, tile.frame, tile.tile) else { return false }
            return record.state == "assigned" && record.assignment == assignment
        }
    }

    /// One unit of a chunk: a frame (rendered whole, or assembled from its tiles in a tiled job) or one tile.
    enum Unit: Sendable, CustomStringConvertible {
        case frame(Int)
        case tile(FrameTile)

        var frame: Int {
            switch self {
            case .frame(let frame): frame
            case .tile(let tile): tile.frame
            }
        }

        var tile: FrameTile? {
            if case .tile(let tile) = self { return tile }
            return nil
        }

        var description: String {
            switch self {
            case .frame(let frame): "\(frame)"
            case .tile(let tile): "\(tile.frame) tile \(tile.tile)"
            }
        }
    }

    /// A tiled frame put together from its tiles (fetched from their holders) in the tiles' own format.
    private func assemble(
        job: String, frame: Int, grid: TileGrid, submitter: String, into folder: String
    ) async throws -> RenderedFrame {
        let started = ContinuousClock.now
        let tiles = (try ledger.tiles(of: job))[frame] ?? []
        guard tiles.count == grid.count, tiles.allSatisfy({ $0.state == "done" && $0.hash != nil }) else {
            throw FarmError(.failed, "Frame \(frame) of job \(job) does not have all its \(grid.count) tiles yet.")
        }
        guard let oiiotool = TileAssembler.locate() else {
            throw RenderError(
                .blenderMissing,
                "This node has no oiiotool (OpenImageIO) to assemble tiles; install the openimageio-tools package.")
        }
        let holders = Array(Set(tiles.flatMap(\.holders) + [submitter]))
        try await exchange.ensureAll(tiles.compactMap(\.hash), holders: holders + (await roster.alivePeers()))
        let ext = grid.frameExtension(tiles: tiles[0].ext ?? "")
        let staging = folder + "/tiles-\(frame)"
        let output = folder + "/assembled_\(frame)" + ext
        let blobs = self.blobs
        try await Blocking.run {
            let fm = FileManager.default
            try? fm.removeItem(atPath: staging)
            try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        }
        defer { try? FileManager.default.removeItem(atPath: staging) }
        // The store names files by content; the assembler reads a format by its file's extension.
        var parts: [TileAssembler.Tile] = []
        for tile in tiles {
            let link = staging + "/tile\(tile.tile)" + (tile.ext ?? "")
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: blobs.path(for: tile.hash!))
            parts.append(
                TileAssembler.Tile(path: link, region: grid.imageRegion(FrameTile(frame: frame, tile: tile.tile))))
        }
        try await TileAssembler(oiiotool: oiiotool).assemble(tiles: parts, to: output, compression: grid.compression)
        let seconds = Double((ContinuousClock.now - started).raftNanoseconds) / 1e9
        return RenderedFrame(
            frame: frame, path: output, seconds: seconds,
            log: ["Assembled frame \(frame) from \(grid.count) tiles (\(grid) of \(grid.width)x\(grid.height))."])
    }

    /// Proposes a worker's report, with whatever other reports of this node pile up meanwhile (`ReportBatcher`); a
    /// failure here only delays it (the lease returns the frames).
    private nonisolated func report(_ commands: [LedgerCommand]) async {
        await batcher.report(commands)
    }

    // MARK: Reaper

    /// Closes sessions whose job is no longer runnable: a canceled job's Blender dies at once, a finished job's
    /// Blender does not linger.
    func runReaper() async {
        for await _ in pulse.subscribe() {
            for (slot, open) in sessions {
                let state = (try? ledger.job(open.job))?.state
                guard state != "queued" && state != "running" else { continue }
                // A paused job's frame in flight finishes; its session closes once the slot is done with it.
                if state == "paused" && busy[slot] == open.job { continue }
                // The map may have changed during an earlier close: only drop the session we looked at.
                guard let current = sessions[slot], current.session === open.session else { continue }
                sessions[slot] = nil
                await open.session.close()
                logger.debug(
                    "render session closed", metadata: ["farm/job": "\(open.job)", "state": "\(state ?? "-")"])
            }
        }
    }
}
