import Foundation

// MARK: - ProgressParser

/// Turns Blender's background status lines into `FrameProgress`, so a worker can report how far a frame is
/// without asking Blender anything. Understands Blender 3.x Cycles (`| Sample 8/16`), Eevee
/// (`| Rendering 3 / 64 samples`) and the final `| Finished`; any other `Fra:` line is progress 0.
public enum ProgressParser {
    public static func parse(line: String) -> FrameProgress? {
        // The status line may be preceded by other text when Blender's stdio buffers interleave.
        guard let start = line.range(of: "Fra:") else { return nil }
        let rest = line[start.upperBound...]
        let digits = rest.prefix { $0 == "-" || $0.isNumber }
        guard let frame = Int(digits) else { return nil }
        let fields = rest.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
        guard let last = fields.last else { return nil }
        if last == "Finished" {
            return FrameProgress(frame: frame, fraction: 1)
        }
        // Cycles: "Sample 8/16" (possibly followed by ", Denoising" or similar).
        for field in fields.reversed() {
            if field.hasPrefix("Sample "), let (sample, samples) = fraction(field.dropFirst("Sample ".count), "/") {
                return progress(frame: frame, sample: sample, samples: samples)
            }
            if field.hasPrefix("Rendering "), field.hasSuffix(" samples"),
                let (sample, samples) = fraction(field.dropFirst("Rendering ".count).dropLast(" samples".count), "/")
            {
                return progress(frame: frame, sample: sample, samples: samples)
            }
        }
        return FrameProgress(frame: frame, fraction: 0)
    }

    private static func progress(frame: Int, sample: Int, samples: Int) -> FrameProgress {
        let value = samples > 0 ? min(1, max(0, Double(sample) / Double(samples))) : 0
        return FrameProgress(frame: frame, sample: sample, samples: samples, fraction: value)
    }

    /// "8/16" or "3 / 64" (possibly with trailing text after the second number) → (8, 16).
    private static func fraction(_ text: Substring, _ separator: Character) -> (Int, Int)? {
        let parts = text.split(separator: separator, maxSplits: 1)
        guard parts.count == 2 else { return nil }
        let first = parts[0].trimmingCharacters(in: .whitespaces)
        let second = parts[1].trimmingCharacters(in: .whitespaces).prefix { $0.isNumber }
        guard let sample = Int(first), let samples = Int(second) else { return nil }
        return (sample, samples)
    }
}
