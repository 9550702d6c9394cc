import Foundation
import Ledger

// MARK: What the dashboard reads and does, through the same rooms as the control socket

extension FarmNode {
    /// Answers one control request with the same `ControlAPI` the control socket uses: the dashboard's API acts
    /// through it, so each action has one implementation.
    public func answer(_ request: ControlRequest) async -> ControlResponse {
        let reply = await control.handle(request)
        do {
            // A big job's status is megabytes: decoded off Swift's shared pool, which carries Raft.
            let json = reply.json
            return try await Blocking.run { try JSONDecoder().decode(ControlResponse.self, from: json) }
        } catch {
            return ControlResponse(error: FarmError(.failed, "The answer could not be read."))
        }
    }

    /// The file holding a done frame's image on this node (fetched from a holder first when this node has none),
    /// and its extension (`png`, `exr`, …).
    public func frameImage(job id: String, frame number: Int) async throws -> (path: String, ext: String) {
        let job = try control.queries.findJob(id)
        guard let frame = try ledger.frame(job.job, number), frame.state == "done", let hash = frame.hash else {
            throw FarmError(.notFound, "Frame \(number) of job \(job.job) has no image yet.")
        }
        do {
            try await exchange.ensure(hash, holders: frame.holders)
        } catch {
            throw FarmError(.notFound, "Frame \(number) of job \(job.job) is on no peer this node can reach now.")
        }
        return (blobs.path(for: hash), frame.ext ?? "png")
    }

    /// How long this node's proposals took to be committed and applied here (`/metrics`).
    public func commitLatency() -> CommitLatency.Snapshot { raftLog.commitLatency.snapshot }

    /// The file of a job's movie (its scene's movie format, or `submit --video`'s preview) when this node made it: the
    /// submitter makes a job's movie, in or beside its output folder. Else one sentence saying why there is none.
    public func movieFile(job id: String) async throws -> String {
        let job = try control.queries.findJob(id)
        let view = try await control.queries.status(job, brief: false)
        guard let movie = view.movie ?? (job.video ? "" : nil) else {
            throw FarmError(
                .notFound, "Job \(job.job) has no movie (submit it with --video, or give its scene a movie format).")
        }
        guard job.submitter == nodeID else {
            let names = await control.queries.nodeNames()
            throw FarmError(
                .notFound,
                "Job \(job.job)'s movie is made by the node that submitted it (\(names[job.submitter] ?? job.submitter)); "
                    + "open that node's dashboard, or run `rexnode video \(job.job)` here.")
        }
        guard view.movieState == "made", !movie.isEmpty else {
            throw FarmError(
                .notFound,
                view.movieState == "failed"
                    ? "Job \(job.job)'s movie could not be made: \((view.movieError ?? "see the node's log").trimmingCharacters(in: .init(charactersIn: ".")))."
                    : "Job \(job.job)'s movie is not made yet (\(view.movieState ?? "waiting")).")
        }
        guard FileManager.default.fileExists(atPath: movie) else {
            throw FarmError(.notFound, "Job \(job.job)'s movie is no longer at \(movie).")
        }
        return movie
    }
}

/// The CLI contract's JSON shapes that are narrower than the read model's rows, in one place so `rexnode … --json`
/// and the dashboard's API answer the same.
public enum ContractShapes {
    /// `jobs --json`: each job's id, name, state, frame counts and priority.
    public static func jobs(_ rows: JSONValue) -> JSONValue {
        .array(
            (rows.array ?? []).map { j in
                [
                    "job": j["job"] ?? .null, "name": j["name"] ?? .null, "state": j["state"] ?? .null,
                    "frames_total": j["frames_total"] ?? .null, "frames_done": j["frames_done"] ?? .null,
                    "priority": j["priority"] ?? .null,
                ]
            })
    }
}
