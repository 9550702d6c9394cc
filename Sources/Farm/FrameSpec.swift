/// A frame list as users write it: `1-250`, `1-100x5` (every 5th), `1,5,10-20`.
public struct FrameSpec: Sendable, Equatable, CustomStringConvertible {
    /// Blender's own limit on frame numbers.
    public static let maxFrameNumber = 1_048_574
    /// More frames than any one job can sensibly mean (catches `1-100000000`).
    public static let maxFrameCount = 100_000

    public let frames: [Int]
    public let description: String

    public init(_ text: String) throws(FarmError) {
        let spec = text.replacingOccurrences(of: " ", with: "")
        guard !spec.isEmpty else {
            throw FarmError(.badInput, "The frame list is empty; write it like 1-250 or 1,5,10-20.")
        }
        var frames = Set<Int>()
        for part in spec.split(separator: ",", omittingEmptySubsequences: false) {
            guard !part.isEmpty else {
                throw FarmError(.badInput, "The frame list '\(text)' has an empty item; write it like 1,5,10-20.")
            }
            for frame in try Self.parseItem(String(part), whole: text) {
                frames.insert(frame)
                if frames.count > Self.maxFrameCount {
                    throw FarmError(
                        .badInput,
                        "The frame list '\(text)' has more than \(Self.maxFrameCount) frames; "
                            + "split it into several jobs.")
                }
            }
        }
        self.frames = frames.sorted()
        description = spec
    }

    /// Every frame of a scene's own range.
    public init(start: Int, end: Int, step: Int = 1) throws(FarmError) {
        try self.init(step > 1 ? "\(start)-\(end)x\(step)" : "\(start)-\(end)")
    }

    private static func parseItem(_ item: String, whole: String) throws(FarmError) -> StrideThrough<Int> {
        let hint = "write frames like 1-250, 1-100x5 or 1,5,10-20"
        var rangePart = Substring(item)
        var step = 1
        if let x = item.firstIndex(where: { $0 == "x" || $0 == "X" }) {
            guard let s = Int(item[item.index(after: x)...]), s > 0 else {
                throw FarmError(.badInput, "The step in '\(item)' must be a positive number; \(hint).")
            }
            step = s
            rangePart = item[..<x]
        }
        if item.hasPrefix("-") {
            throw FarmError(.badInput, "Frame numbers cannot be negative ('\(item)' in '\(whole)'); \(hint).")
        }
        let bounds = rangePart.split(separator: "-", omittingEmptySubsequences: false)
        guard bounds.count <= 2, let first = Int(bounds[0]), let last = Int(bounds.last!) else {
            throw FarmError(.badInput, "'\(item)' is not a frame or a frame range; \(hint).")
        }
        guard first <= last else {
            throw FarmError(
                .badInput, "The range '\(item)' runs backwards; write the lower frame first (\(last)-\(first)).")
        }
        guard last <= maxFrameNumber else {
            throw FarmError(.badInput, "Frame \(last) is beyond Blender's last frame (\(maxFrameNumber)).")
        }
        if bounds.count == 1 && step != 1 {
            throw FarmError(.badInput, "A step needs a range, like 1-100x5, not '\(item)'.")
        }
        if (last - first) / step + 1 > maxFrameCount {
            throw FarmError(
                .badInput,
                "The frame list '\(whole)' has more than \(maxFrameCount) frames; split it into several jobs.")
        }
        return stride(from: first, through: last, by: step)
    }
}
