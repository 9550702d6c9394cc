import Foundation

/// Encodes a movie from rendered frames with ffmpeg, as the scene's FFmpeg output asks: container (from the file's
/// extension), codec, frame rate and quality. The command is data (`arguments`), so its shape is tested without
/// running ffmpeg.
public struct MovieEncoder: Sendable {
    public var ffmpeg: String
    public var settings: MovieSettings
    /// Pads an odd width or height by one pixel instead of refusing (`rexnode video`: a preview, not the scene's
    /// own movie).
    public var padToEven: Bool

    public init(ffmpeg: String, settings: MovieSettings, padToEven: Bool = false) {
        self.ffmpeg = ffmpeg
        self.settings = settings
        self.padToEven = padToEven
    }

    /// The preview movie of `rexnode video`: H.264 in MP4, yuv420p, at `fps` frames per second.
    public static func preview(ffmpeg: String, fps: Double) -> MovieEncoder {
        let whole = fps.rounded() == fps && fps >= 1
        let settings = MovieSettings(
            container: "MPEG4", codec: "H264", fps: whole ? Int(fps) : Int((fps * 1000).rounded()),
            fpsBase: whole ? 1 : 1000, crf: "MEDIUM", bitrate: 0, extension: ".mp4")
        return MovieEncoder(ffmpeg: ffmpeg, settings: settings, padToEven: true)
    }

    /// ffmpeg on this machine, if any.
    public static func locate() -> String? {
        BlenderLocator.resolve("ffmpeg", searchPath: ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
    }

    /// Blender's names for its codecs -> ffmpeg's encoders.
    static let encoders: [String: String] = [
        "H264": "libx264", "H265": "libx265", "HEVC": "libx265", "MPEG4": "mpeg4", "MPEG2": "mpeg2video",
        "MPEG1": "mpeg1video", "FFV1": "ffv1", "PNG": "png", "QTRLE": "qtrle", "DNXHD": "dnxhd",
        "THEORA": "libtheora", "WEBM": "libvpx-vp9", "VP9": "libvpx-vp9", "AV1": "libaom-av1", "PRORES": "prores_ks",
        "HUFFYUV": "huffyuv", "FLASH": "flv", "DV": "dvvideo", "MJPEG": "mjpeg", "AVI_JPEG": "mjpeg",
        "AVI_RAW": "rawvideo",
    ]

    /// Blender's constant-rate-factor presets (its `ffmpeg_crf` values).
    static let rateFactors: [String: Int] = [
        "LOSSLESS": 0, "PERC_LOSSLESS": 17, "HIGH": 20, "MEDIUM": 23, "LOW": 26, "VERYLOW": 29, "LOWEST": 32,
    ]

    /// Frames per second as ffmpeg reads it: `24`, or `24000/1001` for Blender's fps 24 with base 1.001.
    var rate: String {
        if settings.fpsBase == 1 || settings.fpsBase <= 0 { return String(settings.fps) }
        if abs(settings.fpsBase - 1.001) < 1e-6 { return "\(settings.fps * 1000)/1001" }
        return String(Double(settings.fps) / settings.fpsBase)
    }

    /// Arguments reading the numbered sequence `pattern` (`/tmp/x/%06d.png`, from 1) and writing `output`.
    public func arguments(pattern: String, output: String) -> [String] {
        let encoder = Self.encoders[settings.codec] ?? "libx264"
        var arguments = ["-nostdin", "-y", "-loglevel", "error", "-framerate", rate, "-start_number", "1"]
        arguments += ["-i", pattern]
        if padToEven { arguments += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"] }
        arguments += ["-c:v", encoder]
        if ["libx264", "libx265", "mpeg4", "mpeg2video", "mpeg1video", "libtheora", "libvpx-vp9", "libaom-av1"]
            .contains(encoder)
        {
            arguments += ["-pix_fmt", "yuv420p"]
        }
        if let crf = Self.rateFactors[settings.crf],
            ["libx264", "libx265", "libvpx-vp9", "libaom-av1"].contains(encoder)
        {
            arguments += ["-crf", String(crf)]
            if encoder == "libvpx-vp9" || encoder == "libaom-av1" { arguments += ["-b:v", "0"] }
        } else if settings.bitrate > 0 {
            arguments += ["-b:v", "\(settings.bitrate)k"]
        }
        arguments += ["-r", rate, output]
        return arguments
    }

    /// Codecs whose 4:2:0 pictures need an even width and height: Blender refuses an odd size for them
    /// ("width not divisible by 2") and writes no movie, so the farm does the same, in words.
    var needsEvenSize: Bool {
        ["libx264", "libx265", "mpeg4", "mpeg2video", "mpeg1video", "libtheora", "libvpx-vp9", "libaom-av1"]
            .contains(Self.encoders[settings.codec] ?? "libx264")
    }

    /// Encodes `frames` (image files, in order) into `output`, written under a temporary name and renamed, so a
    /// movie file is either whole or absent. Throws with ffmpeg's own words.
    public func encode(frames: [String], to output: String) async throws {
        let fm = FileManager.default
        if needsEvenSize, !padToEven, let first = frames.first, let head = FileHandle(forReadingAtPath: first),
            let bytes = try? head.read(upToCount: 24), let size = PNG.size(of: Array(bytes)),
            size.width % 2 == 1 || size.height % 2 == 1
        {
            try? head.close()
            throw RenderError(
                .frameFailed,
                "The scene's \(settings.codec) movie needs an even width and height, and its frames are "
                    + "\(size.width)x\(size.height) (Blender refuses this size too); the frames are in the output folder."
            )
        }
        let folder = (output as NSString).deletingLastPathComponent
        let staging = "\(folder)/.rexnode-movie-\(UUID().uuidString.prefix(8))"
        try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: staging) }
        let ext = frames.first.map { ($0 as NSString).pathExtension } ?? "png"
        // Sequential names (the job's frames may have a step or gaps; ffmpeg reads a numbered run).
        for (index, frame) in frames.enumerated() {
            let link = String(format: "%@/%06d.%@", staging, index + 1, ext)
            try fm.createSymbolicLink(atPath: link, withDestinationPath: frame)
        }
        let partial = "\(staging)/movie" + (output as NSString).pathExtension.withDot
        let outcome = await runToEnd(
            executable: ffmpeg, arguments: arguments(pattern: "\(staging)/%06d.\(ext)", output: partial),
            timeout: .seconds(3600))
        if let failure = outcome.launchFailure {
            throw RenderError(.blenderMissing, "ffmpeg could not be started: \(failure).")
        }
        guard outcome.status == 0, fm.fileExists(atPath: partial) else {
            let said = outcome.tail.lines.suffix(3).joined(separator: "; ")
            throw RenderError(
                .frameFailed,
                "ffmpeg could not encode \(output) (\(outcome.statusDescription))"
                    + (said.isEmpty ? "." : ": \(said)."))
        }
        guard rename(partial, output) == 0 else {
            throw RenderError(
                .frameFailed, "Cannot move the movie into \(output): \(String(cString: strerror(errno))).")
        }
    }
}

extension String {
    fileprivate var withDot: String { isEmpty ? "" : "." + self }
}
