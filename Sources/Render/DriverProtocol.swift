import Foundation

// MARK: - Driver protocol

/// The messages `rex_driver.py` and `rex_probe.py` print, each on a line after the tag `@@REX `.
/// Kept in one place so the Python side and the Swift side can be checked against each other in tests.
enum DriverEvent: Sendable, Equatable {
    case scene(SceneInfo, pid: Int?)
    case done(frame: Int, path: String, seconds: Double, extras: [RenderedFrame.Extra] = [])
    case error(frame: Int?, message: String)
    /// The driver cannot work at all (e.g. Blender started without a file).
    case fatal(message: String)

    static let tag = "@@REX "

    /// Finds a tagged message anywhere in the line (Blender's stdio buffer may precede it on the same line).
    static func parse(line: String) -> DriverEvent? {
        guard let range = line.range(of: tag) else { return nil }
        let json = Data(line[range.upperBound...].utf8)
        guard let object = try? JSONSerialization.jsonObject(with: json) as? [String: Any],
            let event = object["event"] as? String
        else { return nil }
        switch event {
        case "scene":
            guard let info = try? JSONDecoder().decode(SceneInfo.self, from: json) else { return nil }
            return .scene(info, pid: object["pid"] as? Int)
        case "done":
            guard let frame = object["frame"] as? Int, let path = object["path"] as? String else { return nil }
            let extras = (object["extras"] as? [[String: Any]] ?? []).compactMap { item -> RenderedFrame.Extra? in
                guard let path = item["path"] as? String, let file = item["file"] as? String else { return nil }
                return RenderedFrame.Extra(path: path, file: file)
            }
            return .done(frame: frame, path: path, seconds: (object["seconds"] as? Double) ?? 0, extras: extras)
        case "error":
            return .error(frame: object["frame"] as? Int, message: (object["message"] as? String) ?? "unknown error")
        case "fatal":
            return .fatal(message: (object["message"] as? String) ?? "unknown error")
        default:
            return nil
        }
    }
}

/// A request written to the driver's stdin, one JSON object per line.
enum DriverCommand: Sendable, Equatable {
    case render(frame: Int, output: String, extras: String? = nil, region: ImageRegion? = nil)
    case quit

    var line: String {
        let object: [String: Any]
        switch self {
        case .render(let frame, let output, let extras, let region):
            var request: [String: Any] = ["cmd": "render", "frame": frame, "output": output]
            if let extras { request["extras"] = extras }
            if let region {
                request["region"] = [
                    "x": region.x, "y": region.y, "width": region.width, "height": region.height,
                    "fullWidth": region.fullWidth, "fullHeight": region.fullHeight,
                ]
            }
            object = request
        case .quit:
            object = ["cmd": "quit"]
        }
        // JSONSerialization never fails for these plain values.
        let data =
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}

// MARK: - Output handling

/// Splits a byte stream into lines without ever holding more than `maxLineLength` bytes of one line, so an
/// endless line from Blender cannot exhaust memory or stall the pipe (longer lines are cut).
struct LineSplitter: Sendable {
    var maxLineLength: Int
    private var pending: [UInt8] = []
    private var dropping = false

    init(maxLineLength: Int = 64 * 1024) {
        self.maxLineLength = maxLineLength
    }

    mutating func push(_ bytes: some Sequence<UInt8>) -> [String] {
        var lines: [String] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                if !dropping {
                    lines.append(Self.text(pending))
                }
                pending.removeAll(keepingCapacity: true)
                dropping = false
            } else if !dropping {
                pending.append(byte)
                if pending.count >= maxLineLength {
                    lines.append(Self.text(pending))
                    pending.removeAll(keepingCapacity: true)
                    dropping = true
                }
            }
        }
        return lines
    }

    /// The unterminated last line at end of stream, if any.
    mutating func finish() -> String? {
        defer { pending.removeAll() }
        return pending.isEmpty || dropping ? nil : Self.text(pending)
    }

    private static func text(_ bytes: [UInt8]) -> String {
        var line = String(decoding: bytes, as: UTF8.self)
        if line.hasSuffix("\r") {
            line.removeLast()
        }
        return line
    }
}

/// The last lines a process printed, for error messages and logs.
struct OutputTail: Sendable {
    let capacity: Int
    private(set) var lines: [String] = []

    init(capacity: Int = 40) {
        self.capacity = capacity
    }

    mutating func append(_ line: String) {
        guard !line.isEmpty, !line.contains(DriverEvent.tag) else { return }
        lines.append(line)
        if lines.count > capacity {
            lines.removeFirst(lines.count - capacity)
        }
    }

    /// The last line of a Python traceback ("NameError: name 'x' is not defined"), if one was printed.
    var pythonException: String? {
        guard let start = lines.lastIndex(where: { $0.hasPrefix("Traceback (most recent call last)") }) else {
            return nil
        }
        return lines[(start + 1)...].first { !$0.hasPrefix(" ") && !$0.isEmpty }
    }

    /// Blender's error lines ("Error: ..."), prefix removed, most useful for a one-sentence message.
    var errorLines: [String] {
        lines.compactMap { line in
            guard let range = line.range(of: "Error: ") else { return nil }
            return String(line[range.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
    }
}
