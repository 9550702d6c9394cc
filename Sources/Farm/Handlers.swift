import Foundation
import Ledger
import Render

extension FarmNode {
    // MARK: Control requests

    func handle(_ request: ControlRequest) async -> ControlResponse {
        do {
            return ControlResponse(result: try await answer(request))
        } catch let error as FarmError {
            return ControlResponse(error: error)
        } catch let error as RenderError {
            return ControlResponse(error: FarmError(.render, error.message))
        } catch {
            return ControlResponse(error: FarmError(.failed, "The request failed: \(error)."))
        }
    }

    private func answer(_ request: ControlRequest) async throws -> JSONValue {
        switch request.op {
        case .submit: return try await submit(request)
        case .peers: return try await peersJSON()
        case .jobs: return .array(try ledger.jobs().map(Self.jobJSON))
        case .status:
            let job = try findJob(request.job)
            return request.brief == true ? Self.jobJSON(job) : try await statusJSON(job)
        case .cancel:
            let job = try findJob(request.job)
            guard !job.isFinished else {
                throw FarmError(.badInput, "Job \(job.job) is already \(job.state); there is nothing to cancel.")
            }
            _ = try await commandLog.propose([.cancelJob(CancelJob(job: job.job))])
            return Self.jobJSON(try ledger.job(job.job) ?? job)
        case .ledger:
            // Off the actor: a long log takes seconds to turn into JSON, and this actor also carries Raft's
            // heartbeats (found by the fault suite: reading a 49,000-entry ledger cost the leader its term).
            let ledger = self.ledger
            return try await Task.detached(priority: .utility) { .array(try ledger.log().map(Self.logJSON)) }.value
        case .leave:
            logger.info("leaving the farm on request")
            await leaveFarm()
            // Shut down just after this answer is on its way.
            Task {
                try? await Task.sleep(for: .milliseconds(100))
                await self.requestShutdown()
            }
            return ["node": .string(nodeID), "state": "leaving"]
        case .token: return ["token": .string(farmKey.token)]
        case .fetch:
            let job = try findJob(request.job)
            guard let output = request.output else { throw FarmError(.badInput, "fetch needs --output DIR.") }
            try SceneFile.prepareOutput(output)
            let count = try await fetch(job, into: output)
            return ["job": .string(job.job), "frames": JSONValue(count), "output": .string(output)]
        }
    }

    private func findJob(_ id: String?) throws -> JobRecord {
        guard let id, !id.isEmpty else { throw FarmError(.badInput, "Name a job (see `rexnode jobs`).") }
        guard let job = try ledger.job(id) else {
            throw FarmError(.notFound, "There is no job '\(id)' in this farm (see `rexnode jobs`).")
        }
        return job
    }

    // MARK: Submit

    private func submit(_ request: ControlRequest) async throws -> JSONValue {
        guard let path = request.path else { throw FarmError(.badInput, "submit needs a .blend file.") }
        try SceneFile.validate(path)
        guard let output = request.output else { throw FarmError(.badInput, "submit needs an output folder.") }
        try SceneFile.prepareOutput(output)
        let stored = try blobs.put(fileAt: path)
        submitting.insert(stored.hash)
        defer { submitting.remove(stored.hash) }
        let name = SceneFile.jobName(from: request.name ?? path)
        let job = "j" + Self.shortID()
        let frames: [Int]
        // With no frame list, the scene's own range is read by starting the job's render session now (on the
        // farm's copy of the file): the session that read the facts renders the first chunk, so asking costs
        // no extra Blender start.
        var warm: (any RenderSession)?
        do {
            if let spec = request.frames {
                frames = try FrameSpec(spec).frames
            } else {
                var scene: SceneInfo?
                if settings.renderer == .blender {
                    let blend = try sceneFile(job: job, name: name, blendHash: stored.hash)
                    let session = try await renderer.makeSession(
                        for: RenderRequest(jobID: job, blendPath: blend, threads: settings.threads))
                    warm = session
                    scene = await session.sceneInfo
                }
                if scene == nil {
                    guard let blender else {
                        throw FarmError(
                            .badInput, "This node has no Blender to read the scene's frame range; pass --frames.")
                    }
                    scene = try await blender.probeScene(at: path)
                }
                guard let scene else { throw FarmError(.render, "Blender did not report the scene's frame range.") }
                frames = try FrameSpec(start: scene.frameStart, end: scene.frameEnd, step: scene.frameStep).frames
            }
            let chunk = request.chunk ?? Scheduler.defaultChunk(frames: frames.count, slots: settings.slots)
            guard chunk >= 1 && chunk <= Self.maxChunk else {
                throw FarmError(.badInput, "--chunk must be between 1 and \(Self.maxChunk).")
            }
            let outcomes = try await commandLog.propose([
                .submitJob(
                    SubmitJob(
                        job: job, name: name, submitter: nodeID, blendHash: stored.hash, blendSize: stored.size,
                        frames: frames, chunk: chunk, priority: request.priority ?? 0, output: output,
                        submittedAtMs: Self.nowMs()))
            ])
            guard let outcome = outcomes.first, outcome == .applied || outcome.isDuplicate else {
                throw FarmError(.failed, "The farm did not accept the job (\(outcomes)).")
            }
        } catch {
            await warm?.close()
            try? FileManager.default.removeItem(atPath: "\(settings.data.work)/\(job)")
            throw error
        }
        if let warm { warmSessions[job] = (warm, .now) }
        guard let record = try ledger.job(job) else { throw FarmError(.failed, "Job \(job) vanished after commit.") }
        logger.info("job submitted", metadata: ["job": "\(job)", "frames": "\(frames.count)", "name": "\(name)"])
        return Self.jobJSON(record)
    }

    // MARK: Views (the CLI contract's JSON shapes)

    static func jobJSON(_ job: JobRecord) -> JSONValue {
        [
            "job": .string(job.job), "name": .string(job.name), "state": .string(job.state),
            "frames_total": JSONValue(job.framesTotal), "frames_done": JSONValue(job.framesDone),
            "frames_failed": JSONValue(job.framesFailed), "output": .string(job.output),
            "priority": JSONValue(job.priority), "submitter": .string(job.submitter), "message": JSONValue(job.message),
        ]
    }

    /// Builds the per-frame list off the actor (a job can have tens of thousands of frames).
    private func statusJSON(_ job: JobRecord) async throws -> JSONValue {
        let live = progress.snapshot().values.filter { $0.job == job.job }
        let deliveryError = deliveryErrors[job.job]
        let ledger = self.ledger
        return try await Task.detached(priority: .utility) {
            try Self.statusJSON(job, frames: ledger.frames(of: job.job), live: live, deliveryError: deliveryError)
        }.value
    }

    private static func statusJSON(
        _ job: JobRecord, frames records: [FrameRecord], live: [SlotProgress.Task], deliveryError: String?
    ) -> JSONValue {
        var view = Self.jobJSON(job)
        let frames: [JSONValue] = records.map { f in
            var o: [String: JSONValue] = [
                "frame": JSONValue(f.frame), "state": .string(f.state), "node": JSONValue(f.node),
                "hash": JSONValue(f.hash), "holders": .array(f.holders.map(JSONValue.string)),
                "attempts": JSONValue(f.attempts),
            ]
            if let message = f.message { o["message"] = .string(message) }
            if let p = live.first(where: { $0.frame == f.frame }) { o["progress"] = .double(p.fraction) }
            return .object(o)
        }
        if case .object(var o) = view {
            o["frames"] = .array(frames)
            if let error = deliveryError { o["delivery_error"] = .string(error) }
            view = .object(o)
        }
        return view
    }

    /// This node, then every peer discovery knows or the farm's membership lists.
    private func peersJSON() async throws -> JSONValue {
        let done = try ledger.framesDoneByNode()
        let status = await raft.status
        let members = status?.members ?? []
        let tasks = progress.snapshot().values.sorted { ($0.job, $0.frame) < ($1.job, $1.frame) }
        let task: JSONValue =
            tasks.isEmpty ? .null : .string(tasks.map { "\($0.job)/\($0.frame)" }.joined(separator: ","))
        let role = role(in: status)
        let port = (try? await mesh.listeningPort()).map(String.init) ?? "?"
        let host = settings.listen.split(separator: ":").dropLast().joined(separator: ":")
        var rows: [JSONValue] = [
            [
                "id": .string(nodeID), "name": .string(settings.name), "address": .string("\(host):\(port)"),
                "role": .string(role), "state": "alive", "slots": JSONValue(settings.slots),
                "frames_done": JSONValue(done[nodeID] ?? 0), "self": true, "task": task,
                "member": .bool(members.contains(nodeID)),
                // This node's Raft view: its current term (0 before Raft started) and the leader it follows.
                "term": .int(Int64(clamping: status?.term ?? 0)),
                "leader": status?.leader.map { .string($0) } ?? .null,
            ]
        ]
        var seen: Set<String> = [nodeID]
        for peer in await mesh.peers() {
            seen.insert(peer.nodeID)
            let announced = NodeStatus(bytes: peer.status)
            var peerRole = announced?.r ?? "joining"
            // The contract's roles are leader|follower|candidate|joining; a node on its way out still follows.
            if peerRole == "leaving" { peerRole = "follower" }
            if peerRole == "leader" && status?.leader != nil && status?.leader != peer.nodeID { peerRole = "follower" }
            rows.append([
                "id": .string(peer.nodeID), "name": .string(peer.name), "address": .string(peer.address),
                "role": .string(peer.state == .dead ? "follower" : peerRole), "state": .string(peer.state.rawValue),
                "slots": JSONValue(announced?.s ?? 0), "frames_done": JSONValue(done[peer.nodeID] ?? 0),
                "self": false, "task": peer.state == .alive ? JSONValue(announced?.t) : .null,
                "member": .bool(members.contains(peer.nodeID)),
            ])
        }
        for member in members.sorted() where !seen.contains(member) {
            rows.append([
                "id": .string(member), "name": .string(member), "address": "", "role": "follower", "state": "dead",
                "slots": 0, "frames_done": JSONValue(done[member] ?? 0), "self": false, "task": .null, "member": true,
            ])
        }
        return .array(rows)
    }

    static func logJSON(_ logged: LoggedEntry) -> JSONValue {
        var o: [String: JSONValue] = [
            "index": .int(Int64(logged.index)), "term": .int(Int64(logged.term)),
            "type": .string(logged.entry.command.typeName), "id": .string(logged.entry.id.description),
        ]
        if logged.duplicate { o["duplicate"] = true }
        let fields: JSONValue =
            switch logged.entry.command {
            case .submitJob(let c): .from(c)
            case .assignChunk(let c): .from(c)
            case .completeFrame(let c): .from(c)
            case .failFrame(let c): .from(c)
            case .releaseFrames(let c): .from(c)
            case .cancelJob(let c): .from(c)
            case .addNode(let c), .removeNode(let c): .from(c)
            case .noop: [:]
            }
        if case .object(let f) = fields { for (k, v) in f where o[k] == nil { o[k] = v } }
        // What applying it did (absent for entries applied before outcomes were recorded). The command's own
        // fields keep their keys: ReleaseFrames has a `reason` of its own, so `ignored_reason` always carries why.
        if let outcome = logged.outcome {
            o["outcome"] = .string(outcome.name)
            switch outcome {
            case .ignored(let reason):
                o["ignored_reason"] = .string(reason)
                if o["reason"] == nil { o["reason"] = .string(reason) }
            case .duplicate(let first):
                o["duplicate_of"] = .int(Int64(clamping: first))
            case .applied:
                break
            }
        }
        return .object(o)
    }
}
