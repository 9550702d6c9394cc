// MARK: - Renderer protocol

/// What a worker asks for: render frames of this job's .blend. One request makes one session.
public struct RenderRequest: Sendable {
    public var jobID: String
    public var blendPath: String
    /// Render threads for Blender (`-t`); nil lets Blender use every core.
    public var threads: Int?
    /// A JSON table (path as the scene resolves it on the submitter -> path of its copy here) applied at load.
    public var remapFile: String?
    /// Run the scene's Python drivers and scripts (Blender's `-y`); off by default.
    public var trustScripts: Bool
    /// The user's own file on the submitter's machine: images name it in their metadata ("File"), as at home,
    /// instead of the farm's copy.
    public var sourcePath: String?
    /// The Cycles device the session renders on (`CPU`, `OPTIX:1`, …); nil keeps the scene's own setting.
    public var device: String?
    /// The Blender version the job renders with (chosen at submit, e.g. "5.0.1"); nil: any (jobs from before).
    public var blender: String?

    public init(
        jobID: String, blendPath: String, threads: Int? = nil, remapFile: String? = nil, trustScripts: Bool = false,
        sourcePath: String? = nil, device: String? = nil, blender: String? = nil
    ) {
        self.device = device
        self.blender = blender
        self.jobID = jobID
        self.blendPath = blendPath
        self.threads = threads
        self.remapFile = remapFile
        self.trustScripts = trustScripts
        self.sourcePath = sourcePath
    }
}

/// How far one frame is, parsed from Blender's status lines; fed to progress bars and heartbeats.
public struct FrameProgress: Sendable, Equatable {
    public var frame: Int
    public var sample: Int?
    public var samples: Int?
    /// 0...1 within this frame.
    public var fraction: Double

    public init(frame: Int, sample: Int? = nil, samples: Int? = nil, fraction: Double) {
        self.frame = frame
        self.sample = sample
        self.samples = samples
        self.fraction = fraction
    }
}

/// One finished frame: the image file Blender wrote (scene's own format) and how long the render took.
public struct RenderedFrame: Sendable {
    public var frame: Int
    public var path: String
    public var seconds: Double
    /// Files the render wrote besides the frame (File Output passes), by their path under the output folder.
    public var extras: [Extra]
    /// What Blender printed (stdout and stderr) while it rendered this frame, and nothing of other frames: at most
    /// `logLimit` lines, the last ones. A restart of a crashed Blender before the frame counts as part of it.
    public var log: [String]

    /// Lines kept of one frame attempt's output: enough for Blender's error and the render steps before it.
    public static let logLimit = 200

    public struct Extra: Sendable, Equatable {
        /// Where it goes under the output folder, e.g. `passes/normal_0001.png`.
        public var path: String
        /// Where it lies now.
        public var file: String

        public init(path: String, file: String) {
            self.path = path
            self.file = file
        }
    }

    public init(frame: Int, path: String, seconds: Double, extras: [Extra] = [], log: [String] = []) {
        self.frame = frame
        self.path = path
        self.seconds = seconds
        self.extras = extras
        self.log = log
    }
}

/// Makes render sessions. The farm holds one `Renderer` and asks it for a session per render slot and job,
/// so a real Blender farm and a simulated one (for tests and demos without Blender) look the same.
public protocol Renderer: Sendable {
    /// One session per render slot and job (one long-lived Blender process for `BlenderRenderer`).
    func makeSession(for request: RenderRequest) async throws -> any RenderSession
}

/// A warm renderer for one job: frames are rendered one after another without paying Blender's start-up
/// (about 1 s) per frame. Implementations are actors; `render` calls are made one at a time.
public protocol RenderSession: AnyObject, Sendable {
    /// Scene facts as reported by the driver when it loaded the file (no extra Blender start). nil for simulated.
    var sceneInfo: SceneInfo? { get async }
    /// Renders one frame, writes the image in the scene's own format into `directory`, returns its path.
    /// With a `region`, only that tile of the frame renders (Blender's border, cropped to it), with the frame's
    /// own seed and settings, so its pixels are those of the full frame there.
    /// If the Blender process crashed earlier, it is restarted first. Throws `RenderError` carrying Blender's text.
    func render(
        frame: Int, region: ImageRegion?, into directory: String,
        progress: @escaping @Sendable (FrameProgress) -> Void
    ) async throws -> RenderedFrame
    /// Kills the whole process group. Idempotent. An in-flight render throws.
    func close() async
}

extension RenderSession {
    /// Renders the whole frame.
    public func render(
        frame: Int, into directory: String, progress: @escaping @Sendable (FrameProgress) -> Void
    ) async throws -> RenderedFrame {
        try await render(frame: frame, region: nil, into: directory, progress: progress)
    }
}

// MARK: - Several Blenders

/// A node's Blenders (`join --blender` repeated), one renderer each: a session opens in the one the job names, so
/// every frame of a job comes from the same Blender version wherever it renders.
public struct RuntimeRenderer: Renderer {
    public let renderers: [BlenderRenderer]

    public init(_ renderers: [BlenderRenderer]) {
        precondition(!renderers.isEmpty, "a node renders with at least one Blender")
        self.renderers = renderers
    }

    /// The versions this node can render with, in the order given.
    public var versions: [String] { renderers.map(\.installation.version) }

    public func makeSession(for request: RenderRequest) async throws -> any RenderSession {
        guard let wanted = request.blender else { return try await renderers[0].makeSession(for: request) }
        guard let renderer = renderers.first(where: { $0.installation.version == wanted }) else {
            throw RenderError(
                .blenderMissing,
                "Job \(request.jobID) renders with Blender \(wanted) and this node has "
                    + versions.joined(separator: ", ") + ".")
        }
        return try await renderer.makeSession(for: request)
    }
}
