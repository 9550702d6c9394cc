import Embedded
import Foundation

// MARK: - BlenderInstallation

/// A Blender executable that answered `--version`; everything that starts Blender starts from one of these,
/// so a missing or broken Blender is reported once, at start-up, in one clear sentence.
public struct BlenderInstallation: Sendable {
    /// How this Blender is started: the Blender program, or a Python interpreter that imports Blender as a module
    /// (PyPI's `bpy`); the same driver scripts run in either.
    public enum Kind: String, Sendable, Equatable {
        /// `blender -b FILE --python SCRIPT -- ARGS`.
        case executable
        /// `python SCRIPT FILE -- ARGS`: the script opens FILE itself.
        case python
    }

    public let path: String
    /// The version Blender reports, e.g. "3.4.1".
    public let version: String
    public let kind: Kind

    public init(path: String, version: String, kind: Kind = .executable) {
        self.path = path
        self.version = version
        self.kind = kind
    }

    /// The command that runs `script` on `blendFile` in this Blender (scripts run after the file is loaded).
    func command(
        blendFile: String, script: String?, arguments: [String] = [], threads: Int? = nil, niceLevel: Int = 0,
        trustScripts: Bool = false
    ) -> BlenderCommand {
        BlenderCommand(
            executable: path, blendFile: blendFile, pythonScript: script, scriptArguments: arguments,
            threads: threads, niceLevel: niceLevel, disableAutoexec: !trustScripts, pythonModule: kind == .python)
    }
}

// MARK: - BlenderLocator

/// Finds Blender the way the CLI documents it: `--blender PATH`, else `$BLENDER`, else `blender` on `PATH`.
public enum BlenderLocator {
    /// `--blender` path, else $BLENDER, else PATH; probes `blender --version` once. Clear RenderError when missing.
    public static func locate(explicit: String?, environment: [String: String]) async throws -> BlenderInstallation {
        let source: String
        let candidate: String
        if let explicit, !explicit.isEmpty {
            (source, candidate) = ("--blender", explicit)
        } else if let fromEnvironment = environment["BLENDER"], !fromEnvironment.isEmpty {
            (source, candidate) = ("$BLENDER", fromEnvironment)
        } else {
            (source, candidate) = ("PATH", "blender")
        }
        guard let path = resolve(candidate, searchPath: environment["PATH"]) else {
            let hint =
                source == "PATH"
                ? "Blender was not found on PATH; install it (apt-get install blender) or pass --blender PATH"
                : "Blender was not found at '\(candidate)' (from \(source)); pass --blender with an executable"
            throw RenderError(.blenderMissing, hint + ".")
        }
        return try await probe(path)
    }

    /// Every `--blender PATH` given (or the default one when none is): each probed once. Two paths that are the
    /// same Blender version are refused, since a job names its Blender by version.
    public static func locateAll(explicit: [String], environment: [String: String]) async throws
        -> [BlenderInstallation]
    {
        if explicit.isEmpty { return [try await locate(explicit: nil, environment: environment)] }
        var found: [BlenderInstallation] = []
        for candidate in explicit {
            let installation = try await locate(explicit: candidate, environment: environment)
            if let twin = found.first(where: { $0.version == installation.version }) {
                throw RenderError(
                    .blenderMissing,
                    "--blender \(candidate) and --blender \(twin.path) are both Blender \(installation.version); "
                        + "give each version once.")
            }
            found.append(installation)
        }
        return found
    }

    /// A Blender executable (`--version` says "Blender X.Y.Z"), else a Python interpreter that can `import bpy`.
    static func probe(_ path: String) async throws -> BlenderInstallation {
        do {
            return BlenderInstallation(path: path, version: try await probeVersion(path))
        } catch let blenderError {
            let script = "import bpy, sys; sys.stdout.write('\\nrex-bpy-version ' + bpy.app.version_string + '\\n')"
            let outcome = await runToEnd(executable: path, arguments: ["-c", script], timeout: .seconds(120))
            let marker = "rex-bpy-version "
            if outcome.status == 0,
                let line = outcome.lines.last(where: { $0.hasPrefix(marker) }),
                let version = parseVersion("Blender " + line.dropFirst(marker.count))
            {
                return BlenderInstallation(path: path, version: version, kind: .python)
            }
            if outcome.lines.contains(where: { $0.hasPrefix("Python ") }) || path.contains("python") {
                throw RenderError(
                    .blenderMissing,
                    "'\(path)' is neither Blender nor a Python that can import bpy (\(outcome.statusDescription)); "
                        + "install it with `pip install bpy`.",
                    commandLine: [path, "-c", script], outputTail: Array(outcome.tail.lines.suffix(20)))
            }
            throw blenderError
        }
    }

    /// An executable file for `candidate`: a path (with a slash) is taken as is, a bare name is searched on PATH.
    static func resolve(_ candidate: String, searchPath: String?) -> String? {
        let fileManager = FileManager.default
        func usable(_ path: String) -> Bool {
            var isDirectory: ObjCBool = false
            return fileManager.fileExists(atPath: path, isDirectory: &isDirectory) && !isDirectory.boolValue
                && fileManager.isExecutableFile(atPath: path)
        }
        if candidate.contains("/") {
            let absolute =
                candidate.hasPrefix("/")
                ? candidate : fileManager.currentDirectoryPath + "/" + candidate
            return usable(absolute) ? (absolute as NSString).standardizingPath : nil
        }
        let directories = (searchPath ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":")
        for directory in directories where !directory.isEmpty {
            let path = "\(directory)/\(candidate)"
            if usable(path) {
                return path
            }
        }
        return nil
    }

    /// Runs `blender --version` and returns "3.4.1" from its first line "Blender 3.4.1".
    static func probeVersion(_ path: String) async throws -> String {
        let outcome = await runToEnd(executable: path, arguments: ["--version"], timeout: .seconds(60))
        let commandLine = [path, "--version"]
        if let launchFailure = outcome.launchFailure {
            throw RenderError(
                .blenderMissing, "Blender at '\(path)' could not be started: \(launchFailure).",
                commandLine: commandLine)
        }
        guard outcome.status == 0, let version = outcome.lines.lazy.compactMap(parseVersion).first else {
            throw RenderError(
                .blenderMissing,
                "'\(path)' did not answer --version like Blender does (\(outcome.statusDescription)).",
                commandLine: commandLine, outputTail: Array(outcome.lines.suffix(20)))
        }
        return version
    }

    static func parseVersion(_ line: String) -> String? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("Blender ") else { return nil }
        let version = trimmed.dropFirst("Blender ".count).prefix { $0.isNumber || $0 == "." }
        return version.isEmpty ? nil : String(version)
    }
}

// MARK: - Probing a scene

extension BlenderInstallation {
    /// One Blender start with rex_probe.py: reads the scene's facts.
    /// A corrupt/truncated .blend -> RenderError with Blender's text.
    public func probeScene(at blendPath: String) async throws -> SceneInfo {
        try await probeScene(at: blendPath, niceLevel: 0)
    }

    func probeScene(at blendPath: String, niceLevel: Int) async throws -> SceneInfo {
        try checkReadable(blendPath)
        let command = self.command(blendFile: blendPath, script: try DriverScripts.probe(), niceLevel: niceLevel)
        let invocation = command.invocation
        let outcome = await runToEnd(
            executable: invocation.executable, arguments: invocation.arguments, timeout: .seconds(300))
        if let launchFailure = outcome.launchFailure {
            throw RenderError(
                .blenderMissing, "Blender could not be started: \(launchFailure).", commandLine: command.commandLine)
        }
        for line in outcome.lines {
            switch DriverEvent.parse(line: line) {
            case .scene(let info, _):
                return info
            case .fatal(let message):
                throw RenderError(
                    .badScene, "Blender could not read \(blendPath): \(message).",
                    commandLine: command.commandLine, outputTail: outcome.tail.lines)
            default:
                continue
            }
        }
        throw RenderError(
            .badScene, loadFailureMessage(blendPath, outcome.tail, outcome.statusDescription),
            commandLine: command.commandLine, outputTail: outcome.tail.lines)
    }
}

/// A readable "could not load" sentence built from Blender's own error lines.
func loadFailureMessage(_ blendPath: String, _ tail: OutputTail, _ status: String) -> String {
    let errors = tail.errorLines
    if !errors.isEmpty {
        return "Blender could not load \(blendPath): \(errors.joined(separator: "; "))."
    }
    if let exception = tail.pythonException {
        return "rexnode's Blender script failed on \(blendPath) (\(status)): \(exception)."
    }
    return "Blender could not load \(blendPath) (\(status)) and printed no error."
}

/// Fails early, with a plain message, when the .blend is not there (Blender's own message is less clear).
func checkReadable(_ blendPath: String) throws {
    guard FileManager.default.isReadableFile(atPath: blendPath) else {
        throw RenderError(.badScene, "The scene \(blendPath) does not exist or is not readable.")
    }
}

// MARK: - Driver scripts

/// The Python scripts, embedded in the binary (`Resources/`, by the EmbedResources plugin) and extracted once per
/// version into the resource cache, because Blender runs a script by path.
enum DriverScripts {
    static func driver() throws -> String {
        try path(of: "rex_driver")
    }

    static func probe() throws -> String {
        try path(of: "rex_probe")
    }

    static func prepare() throws -> String {
        try path(of: "rex_prepare")
    }

    private static func path(of name: String) throws -> String {
        do {
            return try EmbeddedResources.folder.path(of: name + ".py")
        } catch {
            throw RenderError(.blenderMissing, "\(error)")
        }
    }
}

/// The Blender add-on shipped in the binary (`rexnode addon`).
public enum AddonFiles {
    /// The add-on package's folder name: Blender imports it by this name.
    public static let packageName = "rexnode_addon"

    /// The extracted folder that holds the `rexnode_addon/` package.
    public static func parentFolder() throws -> String {
        do {
            return try EmbeddedResources.folder.extract() + "/addon"
        } catch {
            throw RenderError(.blenderMissing, "\(error)")
        }
    }
}

// MARK: - Running to completion

/// What a short-lived process left behind.
struct ProcessOutcome: Sendable {
    var lines: [String] = []
    var tail = OutputTail()
    var status: Int32?
    var signal: Int32?
    var launchFailure: String?
    var timedOut = false

    var statusDescription: String {
        if timedOut {
            return "timed out"
        }
        if let signal {
            return "killed by signal \(signal)"
        }
        if let status {
            return "exit status \(status)"
        }
        return "no exit status"
    }
}

/// Runs a process to its end, keeping every line (these runs are short: `--version`, the probe). A timeout or
/// the caller's cancellation kills the process group.
func runToEnd(executable: String, arguments: [String], timeout: Duration) async -> ProcessOutcome {
    let process = ChildProcess(executable: executable, arguments: arguments)
    var outcome = ProcessOutcome()
    return await withTaskGroup(of: Bool.self) { group in
        group.addTask {
            do {
                try await Task.sleep(for: timeout)
            } catch {
                return false
            }
            process.killGroup()
            return true
        }
        for await event in process.events {
            switch event {
            case .started:
                break
            case .line(let line):
                if outcome.lines.count < 100_000 {
                    outcome.lines.append(line)
                }
                outcome.tail.append(line)
            case .exited(let status, let signal):
                outcome.status = status
                outcome.signal = signal
            case .launchFailed(let message):
                outcome.launchFailure = message
            }
        }
        if Task.isCancelled {
            // The event stream ends early on cancellation; the process must not be left running.
            process.killGroup()
        }
        group.cancelAll()
        outcome.timedOut = await group.next() ?? false
        await process.wait()
        return outcome
    }
}
