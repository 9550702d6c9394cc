// MARK: - SceneInfo

/// The facts about a .blend that the farm needs before it renders: the default frame range, the image size
/// and the engine (for the job view), and the image format with its file extension (for output names).
/// Field names match the JSON keys written by `rex_probe.py` and `rex_driver.py`. A movie format (FFMPEG, AVI)
/// is reported as "PNG": frames cannot be written one by one in a movie format, so the driver renders PNGs.
public struct SceneInfo: Sendable, Codable, Equatable {
    public var frameStart: Int
    public var frameEnd: Int
    public var frameStep: Int
    public var resolutionX: Int
    public var resolutionY: Int
    public var resolutionPercentage: Int
    /// Blender's engine identifier: "CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH", ...
    public var engine: String
    /// Blender's image format identifier, e.g. "PNG", "OPEN_EXR", "JPEG".
    public var fileFormat: String
    /// What Blender appends for that format, e.g. ".png", ".exr", ".jpg".
    public var fileExtension: String
    /// The active camera's name; nil when the scene has none (every frame would fail: "Cannot render, no camera").
    public var camera: String?
    /// The scene's own format when it is a movie one ("FFMPEG"); the frames then render as `fileFormat` (PNG).
    public var originalFileFormat: String?
    /// What the scene's movie output asks for (nil for image formats).
    public var movie: MovieSettings?
    /// Why the scene's frames cannot be split into tiles (its compositor, denoiser or engine needs the whole
    /// image); nil: they can.
    public var untileable: String?
    /// For a lossy format (JPEG, a lossy OpenEXR codec): how the assembled frame of a tiled job is compressed, in
    /// oiiotool's words ("jpeg:90", "dwaa"); its tiles are written losslessly. nil: tiles keep the scene's format.
    public var tileCompression: String?
    /// Frames per second (Blender's fps / fps_base), for the preview movie; nil from older drivers.
    public var fps: Double?

    public init(
        frameStart: Int, frameEnd: Int, frameStep: Int,
        resolutionX: Int, resolutionY: Int, resolutionPercentage: Int,
        engine: String, fileFormat: String, fileExtension: String, camera: String? = nil
    ) {
        self.frameStart = frameStart
        self.frameEnd = frameEnd
        self.frameStep = frameStep
        self.resolutionX = resolutionX
        self.resolutionY = resolutionY
        self.resolutionPercentage = resolutionPercentage
        self.engine = engine
        self.fileFormat = fileFormat
        self.fileExtension = fileExtension
        self.camera = camera
    }

    /// The size in pixels of the images Blender writes (resolution scaled by the percentage).
    public var outputWidth: Int { resolutionX * resolutionPercentage / 100 }
    public var outputHeight: Int { resolutionY * resolutionPercentage / 100 }

    /// The scene's own frames, honouring the step.
    public var frames: [Int] {
        guard frameStep > 0, frameEnd >= frameStart else { return [] }
        return Array(stride(from: frameStart, through: frameEnd, by: frameStep))
    }
}

/// A scene's movie output, as Blender's FFmpeg settings name it: the submitter encodes the movie from lossless
/// frames with these.
public struct MovieSettings: Sendable, Codable, Equatable {
    /// "MPEG4", "MKV", "QUICKTIME", "WEBM", ... (for a plain AVI format: "AVI").
    public var container: String
    /// "H264", "MPEG4", "FFV1", "PNG", "WEBM", "AV1", ...
    public var codec: String
    public var fps: Int
    public var fpsBase: Double
    /// Blender's constant-rate-factor choice: "LOSSLESS", "PERC_LOSSLESS", "HIGH", "MEDIUM", "LOW", "VERYLOW",
    /// "LOWEST", or "NONE" (then `bitrate` in kbit/s applies).
    public var crf: String
    public var bitrate: Int
    /// ".mp4", ".mkv", ...
    public var `extension`: String
    /// Blender's movie would carry sound (an audio codec and a sound strip); the farm's has none yet.
    public var hasAudio: Bool?

    public init(
        container: String, codec: String, fps: Int, fpsBase: Double, crf: String, bitrate: Int, extension: String
    ) {
        self.container = container
        self.codec = codec
        self.fps = fps
        self.fpsBase = fpsBase
        self.crf = crf
        self.bitrate = bitrate
        self.extension = `extension`
    }
}
