import ArgumentParser
import Farm
import Foundation

// MARK: log

extension RexNode {
    struct Log: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show Blender's output for a frame (from the node that rendered it).",
            discussion: """
                With FRAME: every attempt at that frame the farm still keeps, each under a header line naming the \
                node, the attempt and its outcome. Without FRAME: the last attempt of each failed frame, or, if \
                none failed, a one-line summary and the log of the frame rendered last.
                """)
        @Argument(help: "The job id (or a unique prefix, or its name).") var job: String
        @Argument(help: "The frame number.") var frame: Int?
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let view = try await ControlClient.send(.log(job: job, frame: frame), data: data.directory)
                let attempts = view["attempts"]?.array ?? []
                let notes = (view["notes"]?.array ?? []).compactMap(\.string)
                if json.json {
                    for note in notes { FileHandle.standardError.write(Data(("note: " + note + "\n").utf8)) }
                    print(JSONValue.array(attempts.map(Self.row)).jsonText())
                    return
                }
                if let summary = view["summary"]?.string { print(summary) }
                for note in notes { print(note) }
                for attempt in attempts {
                    print(Self.header(attempt))
                    if let message = attempt["message"]?.string { print("# " + message) }
                    for line in attempt["lines"]?.array ?? [] { print(line.string ?? "") }
                }
                guard attempts.isEmpty else { return }
                let id = view["job"]?.string ?? job
                if let frame {
                    throw FarmError(.notFound, "No node has Blender's output for frame \(frame) of job \(id).")
                }
                if view["summary"] == nil {
                    throw FarmError(.notFound, "No node has Blender's output for the failed frames of job \(id).")
                }
            }
        }

        /// `=== frame 3 · attempt 2 · node n2 (ab12cd34ef56) · failed · 2025-05-01 12:00:03 ===`
        static func header(_ attempt: JSONValue) -> String {
            let name = attempt["name"]?.string ?? "?"
            let node = attempt["node"]?.string ?? "?"
            let when = attempt["ended_ms"]?.int.map { time(Double($0) / 1000) } ?? "?"
            let tile = attempt["tile"]?.int.map { " · tile \($0)" } ?? ""
            return "=== frame \(attempt["frame"]?.int ?? 0)\(tile) · attempt \(attempt["attempt"]?.int ?? 0) · node "
                + "\(name) (\(node.prefix(12))) · \(attempt["outcome"]?.string ?? "?") · \(when) ==="
        }

        /// The contract's keys first (`node`, `name`, `attempt`, `frame`, `outcome`, `lines`), then the rest.
        static func row(_ attempt: JSONValue) -> JSONValue {
            var object: [String: JSONValue] = [:]
            for key in ["node", "name", "attempt", "frame", "outcome", "lines", "job", "assignment", "message"] {
                object[key] = attempt[key] ?? .null
            }
            object["started_ms"] = attempt["started_ms"] ?? .null
            object["ended_ms"] = attempt["ended_ms"] ?? .null
            // A tiled frame's attempts say which tile they rendered.
            if let tile = attempt["tile"], tile.int != nil { object["tile"] = tile }
            return .object(object)
        }

        static func time(_ seconds: Double) -> String {
            let formatter = DateFormatter()
            formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
            return formatter.string(from: Date(timeIntervalSince1970: seconds))
        }
    }
}
