import Foundation
import Ledger
import Logging
import Mesh
import Render

/// Validating, storing and proposing a job, on no shared actor: hashing and copying a large .blend holds a thread
/// of the blocking pool, never the Swift pool or anything Raft or the control socket waits on.
///
/// With no frame list the scene's own range is read by opening the job's render session on the farm's copy of
/// the file: that session renders the job's first local chunk (`adoptWarm`), so asking costs no extra Blender
/// start. A file Blender cannot load fails here, with Blender's own words, before any job exists.
struct SubmitService: Sendable {
    let nodeID: String
    let settings: NodeSettings
    let blobs: BlobStore
    let work: WorkFolders
    let renderer: any Renderer
    let blender: BlenderInstallation?
    let commandLog: any CommandLog
    let ledger: LedgerStore
    let inFlight: ScenesInFlight
    let logger: Logger
    /// Takes the session opened to read the scene, for the job's first chunk on this node.
    let adoptWarm: @Sendable (_ session: any RenderSession, _ job: String) async -> Void

    func submit(_ request: SubmitRequest) async throws -> JobRecord {
        let path = request.path
        try SceneFile.validate(path)
        try SceneFile.prepareOutput(request.output)
        let spec = try request.frames.map { try FrameSpec($0) }
        if let chunk = request.chunk, chunk < 1 || chunk > FarmNode.maxChunk {
            throw FarmError(.badInput, "--chunk must be between 1 and \(FarmNode.maxChunk).")
        }
        let blobs = self.blobs
        let stored = try await Blocking.run { try blobs.put(fileAt: path) }
        inFlight.insert(stored.hash)
        defer { inFlight.remove(stored.hash) }
        let name = SceneFile.jobName(from: request.name ?? path)
        let job = "j" + FarmNode.shortID()
        var warm: (any RenderSession)?
        do {
            let frames: [Int]
            if let spec {
                frames = spec.frames
            } else {
                let (scene, session) = try await readScene(job: job, name: name, path: path, blendHash: stored.hash)
                warm = session
                frames = try FrameSpec(start: scene.frameStart, end: scene.frameEnd, step: scene.frameStep).frames
            }
            let chunk = request.chunk ?? Scheduler.defaultChunk(frames: frames.count, slots: settings.slots)
            let outcomes = try await commandLog.propose([
                .submitJob(
                    SubmitJob(
                        job: job, name: name, submitter: nodeID, blendHash: stored.hash, blendSize: stored.size,
                        frames: frames, chunk: chunk, priority: request.priority ?? 0, output: request.output,
                        submittedAtMs: WallClock.millis()))
            ])
            guard let outcome = outcomes.first, outcome == .applied || outcome.isDuplicate else {
                throw FarmError(.failed, "The farm did not accept the job (\(outcomes)).")
            }
        } catch {
            await warm?.close()
            work.remove(job: job)
            throw error
        }
        if let warm { await adoptWarm(warm, job) }
        guard let record = try ledger.job(job) else { throw FarmError(.failed, "Job \(job) vanished after commit.") }
        logger.info(
            "job submitted",
            metadata: ["farm/job": "\(job)", "farm/frames": "\(record.framesTotal)", "farm/name": "\(name)"])
        return record
    }

    /// The scene's frame range, from the job's own render session when the renderer is Blender (returned to be
    /// reused), else from a one-off probe.
    private func readScene(job: String, name: String, path: String, blendHash: String) async throws -> (
        SceneInfo, (any RenderSession)?
    ) {
        var session: (any RenderSession)?
        if settings.renderer == .blender {
            let blend = try work.sceneFile(job: job, name: name, blendHash: blendHash)
            let opened = try await renderer.makeSession(
                for: RenderRequest(jobID: job, blendPath: blend, threads: settings.threads))
            session = opened
            if let scene = await opened.sceneInfo { return (scene, opened) }
        }
        guard let blender else {
            await session?.close()
            throw FarmError(.badInput, "This node has no Blender to read the scene's frame range; pass --frames.")
        }
        do {
            return (try await blender.probeScene(at: path), session)
        } catch {
            await session?.close()
            throw error
        }
    }
}
