import Foundation
import Ledger

// MARK: What the dashboard reads and does, through the same rooms as the control socket

extension FarmNode {
    /// Answers one control request with the same `ControlAPI` the control socket uses: the dashboard's API acts
    /// through it, so each action has one implementation.
    public func answer(_ request: ControlRequest) async -> ControlResponse {
        let reply = await control.handle(request)
        do {
            return try JSONDecoder().decode(ControlResponse.self, from: reply.json)
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
