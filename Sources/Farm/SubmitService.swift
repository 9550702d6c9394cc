import Foundation
import Ledger
import Logging
import Mesh
import Render
import Synchronization

/// Validating, tracing, storing and proposing a job, on no shared actor: hashing and copying a large project holds
/// threads of the blocking pool, never the Swift pool or anything Raft or the control socket waits on.
///
/// With a Blender renderer the user's file is opened once where it lies (`BlenderInstallation.prepare`): Blender
/// lists every file the scene needs, a missing one refuses the job by name (unless `allowMissing`), unbaked
/// simulations are baked into a copy of the file, and every file is stored by content under a layout that
/// mirrors the project (`ProjectLayout`); the manifest is committed with `SubmitJob`. From then on the job needs
/// nothing from the user's disk. The simulated renderer ships the .blend alone (its files are never rendered).
struct SubmitService: Sendable {
    let nodeID: String
    let settings: NodeSettings
    let blobs: BlobStore
    let work: WorkFolders
    /// This node's Blenders: the job's is the one that opens the user's file at submit.
    let blenders: [BlenderInstallation]
    let commandLog: any CommandLog
    let ledger: LedgerStore
    let inFlight: ScenesInFlight
    let progress: SubmitProgress
    let logger: Logger
    /// Who is in the farm, to warn when no node carries a job's tags.
    var roster: Roster? = nil
    /// The Blender versions the farm's live members run (`Roster.blenderVersions`), to choose the job's from.
    var farmBlenders: @Sendable () async -> [String] = { [] }
    /// What each file submitted from this node hashed to, by path and stat (lives as long as the daemon).
    let hashes = FileHashes()
    /// Output folders being chosen by submits under way.
    let claims = OutputClaims()

    /// A committed job and what its submitter should be told.
    struct Outcome: Sendable {
        var record: JobRecord
        /// One sentence each: missing files allowed, scripts left off, simulations not baked.
        var warnings: [String]
        var files: Int
        var bytes: Int64
        /// Files this node's store did not hold before.
        var newFiles: Int
        var baked: [String]
    }

    func submit(_ request: SubmitRequest) async throws -> Outcome {
        let path = request.path
        try SceneFile.validate(path)
        // The file's version first: a job renders with one Blender at least as new as the file, chosen now.
        let blender = settings.renderer == .blender ? try await runtime(for: path) : nil
        let spec = try request.frames.map { try FrameSpec($0) }
        let tags = try request.tags.map { try NodeTags.parse($0, option: "submit --tags") } ?? []
        if let chunk = request.chunk, chunk < 1 || chunk > FarmNode.maxChunk {
            throw FarmError(.badInput, "--chunk must be between 1 and \(FarmNode.maxChunk).")
        }
        let tileCount = try request.tiles.map(TileSpec.parse)
        let name = SceneFile.jobName(from: request.name ?? path)
        let job = "j" + FarmNode.shortID()
        let (output, moved) = try claimOutput(request.output)
        defer { claims.release(output) }
        try SceneFile.prepareOutput(output)
        let ticket = request.ticket ?? job
        progress.set(ticket, .init(phase: "reading"))
        defer { progress.set(ticket, nil) }
        let scratch = work.jobFolder(job) + "/submit"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var warnings = moved.map { [$0] } ?? []
        var scene: SceneInfo?
        var layout: ProjectLayout
        var baked: [String] = []
        var bakedFile: String?
        if let blender {
            let prepared = try await blender.prepare(
                at: path, scratch: scratch, bakeTo: scratch + "/baked.blend", lastFrame: spec?.frames.max(),
                trustScripts: request.trustScripts)
            scene = prepared.scene
            warnings += try Self.check(prepared.trace, scene: prepared.scene, file: path, request: request)
            layout = ProjectLayout(blend: path, trace: prepared.trace)
            if let file = prepared.bakedFile, FileManager.default.fileExists(atPath: file) {
                bakedFile = file
                baked = prepared.trace.simulations
            }
        } else {
            layout = ProjectLayout(blend: path, trace: ProjectTrace(references: []))
        }
        let stored = try await store(layout, sceneReplacement: bakedFile, ticket: ticket)
        progress.set(ticket, .init(phase: "committing"))
        defer { for file in stored.manifest.files { inFlight.remove(file.blob) } }
        guard stored.manifest.sceneFile != nil else {
            throw FarmError(.failed, "The scene \(path) was not stored.")
        }
        do {
            let frames: [Int]
            if let spec {
                frames = spec.frames
            } else if let scene {
                frames = try FrameSpec(start: scene.frameStart, end: scene.frameEnd, step: scene.frameStep).frames
            } else if let blender {
                let probed = try await blender.probeScene(at: path)
                frames = try FrameSpec(start: probed.frameStart, end: probed.frameEnd, step: probed.frameStep).frames
            } else {
                throw FarmError(.badInput, "This node has no Blender to read the scene's frame range; pass --frames.")
            }
            let tiles = try tileCount.flatMap {
                try Self.grid($0, scene: scene, file: path, simulated: blender == nil, frames: frames.count)
            }
            // Tiles spread best one to a slot; a frame's tiles are its units of work.
            let chunk =
                request.chunk
                ?? (tiles == nil ? Scheduler.defaultChunk(frames: frames.count, slots: settings.slots) : 1)
            // The client went away (Ctrl-C) while Blender read the file or the files were stored: no job.
            if Task.isCancelled {
                throw FarmError(.canceled, "The submit of \(name) was interrupted; no job was made.")
            }
            var outcome = try await commit(
                Draft(
                    job: job, name: name, frames: frames, chunk: chunk, priority: request.priority ?? 0,
                    output: output, manifest: stored.manifest, movie: scene?.movie.map(MovieSpec.init),
                    trustScripts: request.trustScripts, sourcePath: path, claimed: true, tags: tags,
                    blender: blender?.version, tiles: tiles, onDone: request.onDone, video: request.video,
                    fps: scene?.fps))
            outcome.warnings = warnings + outcome.warnings
            outcome.newFiles = stored.newFiles
            outcome.baked = baked
            return outcome
        } catch {
            work.remove(job: job)
            throw error
        }
    }

    /// The grid a tiled job splits each frame into, on the scene's output size; nil for 1x1 (whole frames).
    /// Refused, with the reason, for a scene whose tiles would not put together into the image Blender renders
    /// whole (its compositor, denoiser or engine works on the whole image).
    static func grid(
        _ count: (columns: Int, rows: Int), scene: SceneInfo?, file: String, simulated: Bool, frames: Int
    ) throws -> TileGrid? {
        guard count.columns * count.rows > 1 else { return nil }
        let name = (file as NSString).lastPathComponent
        if let reason = scene?.untileable {
            throw FarmError(.badInput, "\(name) cannot be split into tiles: \(reason).")
        }
        guard scene != nil || simulated else {
            throw FarmError(.badInput, "\(name) cannot be split into tiles: its image size could not be read.")
        }
        guard frames * count.columns * count.rows <= LedgerRules.maxTileUnits else {
            throw FarmError(
                .badInput,
                "\(frames) frames of \(count.columns * count.rows) tiles are more than the \(LedgerRules.maxTileUnits) "
                    + "tiles a job may have; split fewer frames or use fewer tiles.")
        }
        // The simulated renderer's frames are its small fixed image.
        let width = scene?.outputWidth ?? SimulatedRenderer.size
        let height = scene?.outputHeight ?? SimulatedRenderer.size
        guard count.columns <= width, count.rows <= height else {
            throw FarmError(
                .badInput,
                "\(name) renders \(width)x\(height) pixels, too few for \(count.columns)x\(count.rows) tiles.")
        }
        return TileGrid(
            columns: count.columns, rows: count.rows, width: width, height: height, compression: scene?.tileCompression)
    }

    /// A job ready to commit: its files are in the store (or held by the farm), its settings checked.
    struct Draft: Sendable {
        var job = "j" + FarmNode.shortID()
        var name: String
        var frames: [Int]
        var chunk: Int
        var priority: Int
        var output: String
        var manifest: JobManifest
        var movie: MovieSpec?
        var trustScripts: Bool
        var sourcePath: String?
        /// The output folder is already claimed by the caller (else `commit` claims one from `output`).
        var claimed = false
        /// Tags a node must carry, every one, to render the job.
        var tags: [String] = []
        /// The Blender version every frame renders with (nil: any, the simulated renderer).
        var blender: String?
        /// Every frame splits into these tiles (nil: whole frames).
        var tiles: TileGrid?
        /// Run by the submitter when the job ends (`submit --on-done`).
        var onDone: String?
        /// The submitter makes a preview movie when the job is done (`submit --video`).
        var video = false
        /// The scene's frame rate (nil: unknown).
        var fps: Double?
    }

    /// Proposes the job and returns it as committed. Used by `submit` and by `rerun` (same files, new job).
    func commit(_ draft: Draft) async throws -> Outcome {
        var draft = draft
        var warnings: [String] = []
        if !draft.claimed {
            let (folder, moved) = try claimOutput(draft.output)
            draft.output = folder
            warnings += moved.map { [$0] } ?? []
        }
        defer { if !draft.claimed { claims.release(draft.output) } }
        try SceneFile.prepareOutput(draft.output)
        guard let scene = draft.manifest.sceneFile else { throw FarmError(.failed, "The job has no scene file.") }
        let job = draft.job
        let outcomes = try await commandLog.propose([
            .submitJob(
                SubmitJob(
                    job: job, name: draft.name, submitter: nodeID, blendHash: scene.blob, blendSize: scene.size,
                    frames: draft.frames, chunk: draft.chunk, priority: draft.priority, output: draft.output,
                    submittedAtMs: WallClock.millis(), manifest: draft.manifest, movie: draft.movie,
                    trustScripts: draft.trustScripts ? true : nil, sourcePath: draft.sourcePath,
                    tags: draft.tags.isEmpty ? nil : draft.tags, blender: draft.blender, tiles: draft.tiles,
                    onDone: draft.onDone, video: draft.video ? true : nil, fps: draft.fps))
        ])
        guard let outcome = outcomes.first, outcome == .applied || outcome.isDuplicate else {
            throw FarmError(.failed, "The farm did not accept the job (\(outcomes)).")
        }
        guard let record = try ledger.job(job) else { throw FarmError(.failed, "Job \(job) vanished after commit.") }
        logger.info(
            "job submitted",
            metadata: [
                "farm/job": "\(job)", "farm/frames": "\(record.framesTotal)", "farm/name": "\(draft.name)",
                "farm/files": "\(draft.manifest.files.count)", "farm/output": "\(draft.output)",
            ])
        if let missing = await tagsNoNodeCarries(draft.tags) { warnings.append(missing) }
        return Outcome(
            record: record, warnings: warnings, files: draft.manifest.files.count, bytes: draft.manifest.totalSize,
            newFiles: 0, baked: [])
    }

    /// One sentence when no live member carries every tag of a job: it waits in the queue until one joins.
    private func tagsNoNodeCarries(_ tags: [String]) async -> String? {
        guard !tags.isEmpty, let roster else { return nil }
        let carried = await roster.memberTags()
        guard !carried.values.contains(where: { Set(tags).isSubset(of: $0) }) else { return nil }
        let list = tags.joined(separator: ",")
        return "No live node carries the tag\(tags.count == 1 ? "" : "s") \(list); the job stays queued until one "
            + "joins (`rexnode join --tags \(list)`)."
    }

    /// This node's Blender for the job of the file at `path`: the version `RuntimeChoice` picks from what the farm's
    /// live members run. Refused in one sentence when no member has a Blender as new as the file, or when the one
    /// chosen is not on this node (the submit-time trace must run in the job's own Blender).
    private func runtime(for path: String) async throws -> BlenderInstallation {
        let name = (path as NSString).lastPathComponent
        let file: BlendVersion
        do {
            file = try BlendHeader.read(path)
        } catch let error as RenderError {
            throw FarmError(.badInput, error.message)
        }
        let local = blenders.map(\.version)
        let farm = Set(await farmBlenders() + local)
        guard let chosen = RuntimeChoice.choose(file: file, available: Array(farm), preferred: local) else {
            let have = RuntimeChoice.sorted(Array(farm))
            throw FarmError(
                .badInput,
                "\(name) was saved by Blender \(file); this farm's nodes have "
                    + (have.isEmpty ? "no Blender" : have.joined(separator: ", "))
                    + " — add a node with Blender \(file) or newer (`rexnode join --blender …`).")
        }
        guard let installation = blenders.first(where: { $0.version == chosen }) else {
            throw FarmError(
                .badInput,
                "\(name) renders with Blender \(chosen), which this node does not have; submit it from a node "
                    + "started with `--blender` of Blender \(chosen).")
        }
        return installation
    }

    /// The folder a new job writes to: the one asked for, unless it holds another job's frames (then the next free
    /// `-2`, `-3`, …, with a sentence saying so). Never a folder a job of this node already writes to.
    private func claimOutput(_ requested: String) throws -> (folder: String, moved: String?) {
        // This node's jobs are read after each folder is reserved: a submit that committed meanwhile is seen.
        let nodeID = self.nodeID
        let ledger = self.ledger
        let folder = try claims.claim(requested) { candidate in
            try ledger.jobs().contains { $0.submitter == nodeID && $0.output == candidate }
        }
        guard folder != requested else { return (folder, nil) }
        let mine = try ledger.jobs().filter { $0.submitter == nodeID }
        let owner = mine.last { $0.output == requested }.map { "job \($0.job) (\($0.name))" } ?? "earlier frames"
        return (folder, "\(requested) already holds \(owner); this job writes to \(folder) instead.")
    }

    /// Refuses a project with missing files (unless allowed) and says what will differ from a render at home.
    static func check(_ trace: ProjectTrace, scene: SceneInfo? = nil, file: String, request: SubmitRequest) throws
        -> [String]
    {
        var warnings: [String] = []
        let name = (file as NSString).lastPathComponent
        let missing = trace.missing
        if !missing.isEmpty {
            let shown = missing.prefix(20).map { "\($0.file) (\($0.users.joined(separator: ", ")))" }
            let more = missing.count > 20 ? " and \(missing.count - 20) more" : ""
            let list = shown.joined(separator: "; ") + more
            let count = missing.count == 1 ? "1 file" : "\(missing.count) files"
            guard request.allowMissing else {
                throw FarmError(
                    .badInput,
                    "\(name) uses \(count) that \(missing.count == 1 ? "is" : "are") missing: \(list). Put "
                        + "\(missing.count == 1 ? "it" : "them") back, or pass --allow-missing to render without.")
            }
            warnings.append("Rendering without \(count) that \(missing.count == 1 ? "is" : "are") missing: \(list).")
        }
        if !trace.scripts.isEmpty && !request.trustScripts {
            let list = trace.scripts.prefix(5).joined(separator: "; ")
            warnings.append(
                "\(name) has Python that the farm does not run (\(list)); it renders as Blender does with "
                    + "auto-run scripts off. Pass --trust-scripts to run it.")
        }
        let absent = trace.references.flatMap { $0.absent ?? [] }
        if !absent.isEmpty {
            warnings.append(
                "\(name) names \(absent.count == 1 ? "a path" : "\(absent.count) paths") that \(absent.count == 1 ? "is" : "are") "
                    + "not there (\(absent.prefix(5).joined(separator: "; "))); if the scene reads "
                    + "\(absent.count == 1 ? "it" : "them"), those parts render without.")
        }
        let pinned = trace.references.filter { $0.kind == "other" && $0.isAbsolute && !$0.files.isEmpty }
        if !pinned.isEmpty {
            warnings.append(
                "\(name) names \(pinned.map(\.key).prefix(5).joined(separator: "; ")) by absolute path in data the farm "
                    + "cannot point at its copy (a sequencer strip, an IES file, a cache): on a machine without that "
                    + "file it renders without. Make the paths relative in Blender (File > External Data > Make "
                    + "Paths Relative).")
        }
        if scene?.movie?.hasAudio == true {
            warnings.append(
                "\(name)'s movie has sound, and the farm's movie will not: it is encoded from the frames alone (render "
                    + "the audio in Blender with Render > Render Audio and add it to the movie).")
        }
        if !trace.unbakeable.isEmpty {
            warnings.append(
                "\(name) has simulations the farm does not bake (\(trace.unbakeable.joined(separator: "; "))): each "
                    + "node simulates them from its first frame, so frames may differ from a render at home; bake "
                    + "them in Blender first.")
        }
        return warnings
    }

    /// Stores every file of the layout by content (a file already in the store is only hashed) and returns the
    /// manifest. `sceneReplacement` (the baked copy) is stored in the scene's place. Each blob is marked in flight
    /// as soon as it is known, so clean-up cannot take it before the job commits; the caller unmarks them.
    private func store(_ layout: ProjectLayout, sceneReplacement: String?, ticket: String) async throws -> (
        manifest: JobManifest, newFiles: Int
    ) {
        let blobs = self.blobs
        let entries = layout.files.map { file -> (source: String, path: String) in
            file.path == layout.scene ? (sceneReplacement ?? file.source, file.path) : file
        }
        let inFlight = self.inFlight
        let progress = self.progress
        let hashes = self.hashes
        let sizes = entries.map {
            ((try? FileManager.default.attributesOfItem(atPath: $0.source)[.size]) as? NSNumber)?.int64Value ?? 0
        }
        let start = SubmitProgress.Row(
            phase: "storing", files: 0, filesTotal: entries.count, bytes: 0, bytesTotal: sizes.reduce(0, +))
        progress.set(ticket, start)
        // The copying runs on the blocking pool, outside this task: a flag carries a cancellation (the client hung
        // up) to it, checked before each file.
        let interrupted = Mutex(false)
        let stored = try await withTaskCancellationHandler {
            try await Blocking.run { () throws -> [(ManifestFile, Bool)] in
                var shown = start
                var marked: [String] = []
                do {
                    return try entries.enumerated().map { index, entry in
                        if interrupted.withLock({ $0 }) {
                            throw FarmError(.canceled, "The submit was interrupted; no job was made.")
                        }
                        defer {
                            shown.files += 1
                            shown.bytes += sizes[index]
                            progress.set(ticket, shown)
                        }
                        // A file unchanged since this node last stored it is not read again.
                        let stamp = FileHashes.Stamp(path: entry.source)
                        if let stamp, let known = hashes.hash(of: entry.source, stamp: stamp) {
                            inFlight.insert(known)
                            if blobs.has(known) {
                                marked.append(known)
                                return (ManifestFile(path: entry.path, blob: known, size: stamp.size), false)
                            }
                            inFlight.remove(known)  // cleaned up since: stored again below
                        }
                        // Hashed while copied (one read); a blob already held is left as it was.
                        let put = try blobs.store(fileAt: entry.source)
                        inFlight.insert(put.hash)
                        marked.append(put.hash)
                        if let stamp { hashes.remember(entry.source, stamp: stamp, hash: put.hash) }
                        return (ManifestFile(path: entry.path, blob: put.hash, size: put.size), put.new)
                    }
                } catch {
                    for hash in marked { inFlight.remove(hash) }
                    throw error
                }
            }
        } onCancel: {
            interrupted.withLock { $0 = true }
        }
        let manifest = JobManifest(scene: layout.scene, files: stored.map(\.0), remap: layout.remap)
        do {
            try manifest.validate()
        } catch {
            for file in manifest.files { inFlight.remove(file.blob) }
            throw FarmError(.badInput, "The project cannot be shipped: \(error.description)")
        }
        return (manifest, stored.filter(\.1).count)
    }
}

/// How far each submit under way is, by the client's ticket: read by `rexnode submit` on a second connection
/// while it waits, to show what it is doing with a large project.
final class SubmitProgress: Sendable {
    struct Row: Sendable, Encodable, Equatable {
        /// "reading" (Blender traces, and bakes if needed), "storing" (hashing and copying files), "committing".
        var phase: String
        var files = 0
        var filesTotal = 0
        var bytes: Int64 = 0
        var bytesTotal: Int64 = 0

        enum CodingKeys: String, CodingKey {
            case phase, files, bytes
            case filesTotal = "files_total"
            case bytesTotal = "bytes_total"
        }
    }

    private let rows = Mutex<[String: Row]>([:])

    func set(_ ticket: String, _ row: Row?) { rows.withLock { $0[ticket] = row } }
    func row(_ ticket: String) -> Row? { rows.withLock { $0[ticket] } }
}

/// The content address of files this node stored, keyed by path and checked against size, modification and
/// change times and inode: a resubmit reads only the files that changed. A file rewritten within the clock's
/// resolution with the same size would be missed, as `make` would miss it; the times here are nanoseconds.
final class FileHashes: Sendable {
    struct Stamp: Sendable, Equatable {
        var size: Int64
        var modified: Int64
        var changed: Int64
        var inode: UInt64
        var device: UInt64

        init?(path: String) {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            size = Int64(info.st_size)
            modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
            changed = Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec)
            inode = UInt64(info.st_ino)
            device = UInt64(info.st_dev)
        }
    }

    private let known = Mutex<[String: (Stamp, String)]>([:])

    func hash(of path: String, stamp: Stamp) -> String? {
        known.withLock { table in table[path].flatMap { $0.0 == stamp ? $0.1 : nil } }
    }

    func remember(_ path: String, stamp: Stamp, hash: String) {
        known.withLock { $0[path] = (stamp, hash) }
    }
}

/// `submit --tiles CxR`.
public enum TileSpec {
    /// Columns and rows, refused in one sentence when the text is not that.
    public static func parse(_ text: String) throws -> (columns: Int, rows: Int) {
        // TileGrid.parse bounds the grid (LedgerRules.maxTiles).
        guard let count = TileGrid.parse(text) else {
            throw FarmError(
                .badInput,
                "--tiles takes columns x rows, such as 3x2 (at most \(LedgerRules.maxTiles) tiles), not \"\(text)\".")
        }
        return count
    }
}
