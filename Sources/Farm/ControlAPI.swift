import Foundation
import Ledger
import Logging
import Render

/// The control socket's requests, each handed to the room that owns it: submit to `SubmitService`, reads to
/// `FarmQueries`, fetch to `Delivery`, leave to `Membership`. Runs on no shared actor.
struct ControlAPI: Sendable {
    let submitService: SubmitService
    let queries: FarmQueries
    let delivery: Delivery
    let membership: Membership
    let jobControl: JobControl
    let commandLog: any CommandLog
    let ledger: LedgerStore
    let pulse: Pulse
    let keyRotation: KeyRotation
    let logger: Logger
    let frameLogs: FrameLogService

    func handle(_ request: ControlRequest) async -> ControlReply {
        do {
            return try await answer(request)
        } catch let error as FarmError {
            return .failure(error)
        } catch let error as RenderError {
            return .failure(FarmError(.render, error.message, cause: error))
        } catch {
            return .failure(FarmError(.failed, "The request failed: \(ErrorSentence.describe(error)).", cause: error))
        }
    }

    private func answer(_ request: ControlRequest) async throws -> ControlReply {
        switch request {
        case .submit(let submit):
            return .success(SubmittedRow(try await submitService.submit(submit)))
        case .peers:
            return .success(try await queries.peers(all: false))
        case .allPeers:
            return .success(try await queries.peers(all: true))
        case .jobs:
            return .success(try queries.jobs())
        case .status(let id, let brief, let seen):
            var job = try queries.findJob(id)
            if let seen { job = try await changed(job, seen: seen) }
            let view = try await queries.status(job, brief: brief)
            // A big job's status is megabytes of JSON: encoded off Swift's shared pool, which carries Raft.
            return try await Blocking.run { .success(view) }
        case .steer(let id, let action):
            let job = try queries.findJob(id)
            return .success(JobRow(try await jobControl.perform(action, on: job)))
        case .cancel(let id):
            let job = try queries.findJob(id)
            guard !job.isFinished else {
                throw FarmError(.badInput, "Job \(job.job) is already \(job.state); there is nothing to cancel.")
            }
            _ = try await commandLog.propose([.cancelJob(CancelJob(job: job.job))])
            return .success(JobRow(try ledger.job(job.job) ?? job))
        case .ledger(let from):
            // A long log is a long read and a long encoding: off Swift's shared pool, which every loop of the daemon
            // runs on.
            let queries = self.queries
            return try await Blocking.run { .success(try queries.log(from: from)) }
        case .leave:
            logger.info("leaving the farm on request")
            return .success(try await membership.leave())
        case .forceLeave:
            logger.info("leaving the farm on request (forced)")
            return .success(try await membership.leave(force: true))
        case .recover:
            logger.warning("recovering the farm on request")
            return .success(try await membership.recover())
        case .token:
            return .success(["token": keyRotation.token])
        case .rotateKey:
            logger.warning("rotating the farm key on request")
            return .success(JSONValue.object(try await keyRotation.rotate()))
        case .revoke(let node):
            logger.warning("revoking a machine on request", metadata: ["farm/revoked": "\(node)"])
            return .success(JSONValue.object(try await keyRotation.revoke(node)))
        case .progress(let ticket):
            return .success(submitService.progress.row(ticket))
        case .log(let id, let frame):
            return .success(try await frameLogs.view(try queries.findJob(id), frame: frame))
        case .fetch(let id, let output):
            let job = try queries.findJob(id)
            try SceneFile.prepareOutput(output)
            let fetched = try await delivery.fetch(job, into: output)
            var answer: [String: JSONValue] = [
                "job": .string(job.job), "frames": JSONValue(fetched.frames), "output": .string(output),
            ]
            if let movie = fetched.movie { answer["movie"] = .string(movie) }
            if let problem = fetched.movieError { answer["movie_error"] = .string(problem) }
            return .success(JSONValue.object(answer))
        }
    }

    /// Waits until the job's done count or state differs from what the client saw, or about a second passes.
    private func changed(_ job: JobRecord, seen: ControlRequest.SeenJob) async throws -> JobRecord {
        func differs(_ j: JobRecord) -> Bool { j.framesDone != seen.framesDone || j.state != seen.state }
        if differs(job) { return job }
        let deadline = ContinuousClock.now + .seconds(1)
        let ticks = pulse.subscribe()
        for await _ in ticks {
            let now = try ledger.job(job.job) ?? job
            if differs(now) || ContinuousClock.now >= deadline || Task.isCancelled { return now }
        }
        return try ledger.job(job.job) ?? job
    }
}
