import Foundation

/// Every external file a .blend needs, as Blender itself reports it from the user's own copy (`rex_prepare.py`):
/// what uses each file, which files are missing, the Python that autoexec would block, and the simulations that
/// are not baked.
public struct ProjectTrace: Sendable, Codable, Equatable {
    public var references: [Reference]
    /// Registered scripts and Python driver expressions that run only with autoexec on.
    public var scripts: [String]
    /// Unbaked point-cache simulations (particles, hair dynamics, cloth, soft body, dynamic paint, rigid body).
    public var simulations: [String]
    /// Simulations this farm does not bake (fluid domains, geometry-node simulation zones).
    public var unbakeable: [String]

    public init(references: [Reference], scripts: [String] = [], simulations: [String] = [], unbakeable: [String] = [])
    {
        self.references = references
        self.scripts = scripts
        self.simulations = simulations
        self.unbakeable = unbakeable
    }

    /// One path the scene stores and the files it stands for (a sequence or a UDIM set is one reference).
    public struct Reference: Sendable, Codable, Equatable {
        /// "image", "library", "font", "sound", "clip", "cache", "volume" or "other".
        public var kind: String
        /// The datablock that uses it ("checker.png", "wood.png (from props.blend)"); empty for "other".
        public var data: String
        /// The path as stored (`//textures/checker.png`, `/abs/x.png`, `//udim/tile.<UDIM>.png`).
        public var stored: String
        /// The stored path resolved against the file that stores it, normalised (may keep a `<UDIM>` token).
        public var key: String
        /// The files on disk it stands for, absolute.
        public var files: [String]
        /// Files it needs that do not exist.
        public var missing: [String]
        /// For a path found only by `blend_paths` ("other"): what is not there (maybe an unused setting).
        public var absent: [String]?

        public init(kind: String, data: String, stored: String, key: String, files: [String], missing: [String] = []) {
            self.kind = kind
            self.data = data
            self.stored = stored
            self.key = key
            self.files = files
            self.missing = missing
        }

        /// Stored as an absolute path, so the copy on a worker must be pointed at explicitly.
        public var isAbsolute: Bool { !stored.hasPrefix("//") }
    }

    /// Missing files, each with the data that uses it: "textures/gone.png (image gone.png)".
    public var missing: [(file: String, users: [String])] {
        var users: [String: [String]] = [:]
        var order: [String] = []
        for reference in references {
            for file in reference.missing {
                if users[file] == nil { order.append(file) }
                users[file, default: []].append(
                    reference.data.isEmpty ? reference.kind : "\(reference.kind) \(reference.data)")
            }
        }
        return order.map { ($0, users[$0] ?? []) }
    }
}

/// What opening the user's file at submit found: the scene's facts, its files, and a baked copy when asked.
public struct PreparedScene: Sendable {
    public var scene: SceneInfo
    public var trace: ProjectTrace
    /// A copy of the file carrying the baked simulations (paths as stored), when one was made.
    public var bakedFile: String?
}

extension BlenderInstallation {
    /// Opens the user's file where it lies (so relative paths resolve as at home), traces it, and with `bakeTo`
    /// bakes its unbaked point caches up to `lastFrame` into a copy saved there.
    /// `scratch` is a folder for the trace file.
    public func prepare(
        at blendPath: String, scratch: String, bakeTo: String? = nil, lastFrame: Int? = nil,
        trustScripts: Bool = false, timeout: Duration = .seconds(1800)
    ) async throws -> PreparedScene {
        try checkReadable(blendPath)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let traceFile = scratch + "/trace.json"
        var arguments: [String] = ["--trace-to", traceFile]
        if let bakeTo { arguments += ["--bake-to", bakeTo] }
        if let lastFrame { arguments += ["--last-frame", String(lastFrame)] }
        let command = self.command(
            blendFile: blendPath, script: try DriverScripts.prepare(), arguments: arguments, trustScripts: trustScripts)
        let invocation = command.invocation
        let outcome = await runToEnd(
            executable: invocation.executable, arguments: invocation.arguments, timeout: timeout)
        if let launchFailure = outcome.launchFailure {
            throw RenderError(
                .blenderMissing, "Blender could not be started: \(launchFailure).", commandLine: command.commandLine)
        }
        var scene: SceneInfo?
        var trace: ProjectTrace?
        var baked: String?
        for line in outcome.lines {
            guard let range = line.range(of: DriverEvent.tag) else { continue }
            let json = Data(line[range.upperBound...].utf8)
            let event = (try? JSONSerialization.jsonObject(with: json) as? [String: Any])?["event"] as? String
            switch event {
            case "scene": scene = try? JSONDecoder().decode(SceneInfo.self, from: json)
            case "trace":
                trace = FileManager.default.contents(atPath: traceFile).flatMap {
                    try? JSONDecoder().decode(ProjectTrace.self, from: $0)
                }
            case "baked":
                baked = (try? JSONSerialization.jsonObject(with: json) as? [String: Any])?["path"] as? String
            case "fatal":
                if case .fatal(let message) = DriverEvent.parse(line: line) {
                    throw RenderError(
                        .badScene, "Blender could not prepare \(blendPath): \(message).",
                        commandLine: command.commandLine, outputTail: outcome.tail.lines)
                }
            default: continue
            }
        }
        if trace != nil && scene == nil {
            // The file loaded and was traced; Blender died after that, while baking.
            let said = outcome.tail.errorLines.suffix(2).joined(separator: "; ")
            throw RenderError(
                .badScene,
                "Blender stopped while baking the simulations of \(blendPath) (\(outcome.statusDescription))"
                    + (said.isEmpty ? "; bake them in Blender and submit again." : ": \(said)."),
                commandLine: command.commandLine, outputTail: outcome.tail.lines)
        }
        guard let scene, let trace else {
            throw RenderError(
                .badScene, loadFailureMessage(blendPath, outcome.tail, outcome.statusDescription),
                commandLine: command.commandLine, outputTail: outcome.tail.lines)
        }
        return PreparedScene(scene: scene, trace: trace, bakedFile: baked)
    }
}
