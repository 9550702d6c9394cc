import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - BlenderRenderer

/// Renders with real Blender: each session is one long-lived Blender process fed frame numbers by
/// `rex_driver.py`, because Blender's start-up (about 1 s) dominates small frames: the 24-frame demo took
/// 4.5 s in one session (as fast as `blender -a`) against 32.6 s with a process per frame, on 2 cores.
public struct BlenderRenderer: Renderer {
    public let installation: BlenderInstallation
    public let niceLevel: Int
    let logger: Logger?

    /// Cycles' "persistent data" for the session's process: nil keeps each scene's own setting; true keeps
    /// scene data between frames (same pixels, about 25 % faster on the demo; more memory held between frames).
    public let persistentData: Bool?

    public init(
        installation: BlenderInstallation, niceLevel: Int = 10, persistentData: Bool? = nil, logger: Logger? = nil
    ) {
        self.installation = installation
        self.niceLevel = niceLevel
        self.persistentData = persistentData
        self.logger = logger
        self.niceExecutable = BlenderLocator.resolve("nice", searchPath: "/usr/bin:/bin")
    }

    /// `nice` from coreutils; without it Blender runs at normal priority rather than not at all.
    let niceExecutable: String?

    /// Starts Blender on the request's .blend and returns once the scene is loaded (so `sceneInfo` is set).
    /// A file Blender cannot load throws `.badScene` with Blender's message.
    public func makeSession(for request: RenderRequest) async throws -> any RenderSession {
        try checkReadable(request.blendPath)
        let session = BlenderSession(
            command: try command(for: request), jobID: request.jobID, sourcePath: request.sourcePath, logger: logger)
        try await session.start()
        return session
    }

    /// The command line a session for `request` runs.
    func command(for request: RenderRequest) throws -> BlenderCommand {
        BlenderCommand(
            executable: installation.path,
            blendFile: request.blendPath,
            pythonScript: try DriverScripts.driver(),
            scriptArguments: (persistentData.map { ["--persistent-data", $0 ? "on" : "off"] } ?? [])
                + (request.remapFile.map { ["--remap", $0] } ?? []) + (request.device.map { ["--device", $0] } ?? []),
            threads: request.threads,
            niceLevel: niceExecutable == nil ? 0 : niceLevel,
            niceExecutable: niceExecutable ?? "nice",
            disableAutoexec: !request.trustScripts,
            pythonModule: installation.kind == .python)
    }
}

// MARK: - BlenderSession

/// One Blender process for one job and render slot. The actor owns the process and reads its events only
/// while it waits for something (start-up or a frame); between frames the events queue up in the stream.
actor BlenderSession: RenderSession {
    let command: BlenderCommand
    private let jobID: String
    private let sourcePath: String?
    private let logger: Logger?
    private var process: ChildProcess?
    private var events: AsyncStream<ChildProcess.Event>.Iterator?
    private var scene: SceneInfo?
    private var tail = OutputTail()
    /// Output since the current frame (or the scene load) began: `RenderedFrame.log` and `RenderError.attemptLog`.
    /// The driver answers one request at a time and flushes Blender's output before each answer, so every line
    /// read between a render request and its answer belongs to that frame.
    private var attemptLog = OutputTail(capacity: RenderedFrame.logLimit)
    private var closed = false
    private var busy = false
    /// How many times Blender was started (1 + restarts after crashes).
    private(set) var starts = 0

    /// How long Blender may take to load the scene before it is killed: a hung load must not block a
    /// submit or a render slot forever.
    let loadTimeout: Duration

    init(
        command: BlenderCommand, jobID: String, sourcePath: String? = nil, logger: Logger?,
        loadTimeout: Duration = .seconds(300)
    ) {
        self.command = command
        self.jobID = jobID
        self.sourcePath = sourcePath
        self.logger = logger
        self.loadTimeout = loadTimeout
    }

    /// A session dropped without `close()` must not leave Blender running for the life of the daemon.
    deinit {
        process?.killGroup()
    }

    var sceneInfo: SceneInfo? { scene }

    /// The running Blender's pid (and process group id); nil when no process runs.
    var processID: Int32? { process?.pid }

    /// The scene as the user knows it, for messages: their own file when known, else the copy rendered here.
    private var sceneName: String { sourcePath ?? command.blendFile }

    // MARK: Start

    func start() async throws {
        guard !closed else {
            throw RenderError(.canceled, "The render session for job \(jobID) is closed.", commandLine: commandLine)
        }
        let invocation = command.invocation
        let process = ChildProcess(
            executable: invocation.executable, arguments: invocation.arguments, environment: command.environment)
        self.process = process
        self.events = process.events.makeAsyncIterator()
        tail = OutputTail()
        if !busy {
            // A restart inside `render` keeps the frame's log: the load is part of that attempt.
            attemptLog = OutputTail(capacity: RenderedFrame.logLimit)
        }
        starts += 1
        logger?.info("starting Blender", metadata: ["job": "\(jobID)", "render/command": "\(commandLine)"])
        let clock = ContinuousClock()
        let deadline = clock.now + loadTimeout
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await Task.sleep(until: deadline, clock: clock)
                    process.killGroup()
                }
                defer { group.cancelAll() }
                try await awaitScene(loadingTimedOut: { clock.now >= deadline })
            }
        } catch var error as RenderError {
            error.attemptLog = attemptLog.lines
            throw error
        }
    }

    private func awaitScene(loadingTimedOut: () -> Bool) async throws {
        while let event = await nextEvent() {
            switch event {
            case .started(let pid):
                logger?.debug("Blender started", metadata: ["job": "\(jobID)", "render/pid": "\(pid)"])
            case .line(let line):
                if let driverEvent = DriverEvent.parse(line: line) {
                    switch driverEvent {
                    case .scene(let info, _):
                        scene = info
                        return
                    case .fatal(let message):
                        await stopProcess()
                        throw RenderError(
                            .badScene,
                            "Blender could not read \(sceneName): "
                                + "\(message.replacingOccurrences(of: command.blendFile, with: sceneName)).",
                            commandLine: commandLine, outputTail: tail.lines)
                    case .done, .error:
                        continue
                    }
                }
                tail.append(line)
                attemptLog.append(line)
            case .exited(let status, let signal):
                await stopProcess()
                if closed {
                    throw canceledError()
                }
                if signal != nil, loadingTimedOut() {
                    throw RenderError(
                        .crashed, "Blender did not finish loading \(sceneName) within \(loadTimeout).",
                        commandLine: commandLine, outputTail: tail.lines)
                }
                if let signal, tail.errorLines.isEmpty {
                    // Killed while loading without a word (out of memory, a crash): not evidence of a bad file.
                    throw RenderError(
                        .crashed, "Blender was killed by signal \(signal) while loading \(sceneName).",
                        commandLine: commandLine, outputTail: tail.lines)
                }
                let statusText = signal.map { "killed by signal \($0)" } ?? "exit status \(status ?? -1)"
                throw RenderError(
                    .badScene, loadFailureMessage(sceneName, tail, statusText),
                    commandLine: commandLine, outputTail: tail.lines)
            case .launchFailed(let message):
                await stopProcess()
                throw RenderError(
                    .blenderMissing, "Blender could not be started: \(message).", commandLine: commandLine)
            }
        }
        await stopProcess()
        throw canceledError()
    }

    // MARK: Render

    func render(
        frame: Int, region: ImageRegion?, into directory: String,
        progress: @escaping @Sendable (FrameProgress) -> Void
    ) async throws -> RenderedFrame {
        guard !closed else {
            throw canceledError()
        }
        guard !busy else {
            throw RenderError(
                .frameFailed, "The render session for job \(jobID) is already rendering a frame.",
                commandLine: commandLine)
        }
        busy = true
        defer { busy = false }
        attemptLog = OutputTail(capacity: RenderedFrame.logLimit)
        do {
            return try await renderFrame(frame, region: region, into: directory, progress: progress)
        } catch var error as RenderError {
            error.attemptLog = attemptLog.lines
            throw error
        }
    }

    private func renderFrame(
        _ frame: Int, region: ImageRegion?, into directory: String,
        progress: @escaping @Sendable (FrameProgress) -> Void
    ) async throws -> RenderedFrame {
        if let process, process.hasEnded {
            // Blender died between frames (e.g. killed for memory); its exit is old news, not this frame's failure.
            logger?.warning("Blender exited between frames", metadata: ["job": "\(jobID)"])
            await stopProcess()
        }
        if process == nil {
            logger?.info("restarting Blender", metadata: ["job": "\(jobID)"])
            try await start()
        }
        guard let process else {
            throw canceledError()
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw RenderError(
                .frameFailed, "The output directory \(directory) cannot be created: \(error.localizedDescription).")
        }
        let absoluteDirectory =
            directory.hasPrefix("/")
            ? directory : FileManager.default.currentDirectoryPath + "/" + directory
        let tileSuffix = region.map { "_tile\($0.x)x\($0.y)" } ?? ""
        let output = absoluteDirectory + "/" + Self.baseName(frame: frame) + tileSuffix
        // Each frame's extra outputs land in a folder of their own, so none is taken for another frame's. A tile
        // has none: a scene that writes File Output passes is not tiled (its compositor needs the whole image).
        let extras = region == nil ? absoluteDirectory + "/extras/" + Self.baseName(frame: frame) : nil
        if let extras { try? FileManager.default.removeItem(atPath: extras) }
        let clock = ContinuousClock()
        let started = clock.now
        process.send(DriverCommand.render(frame: frame, output: output, extras: extras, region: region).line)
        return try await withTaskCancellationHandler {
            try await awaitFrame(frame, progress: progress, started: started, clock: clock)
        } onCancel: {
            // Blender cannot be interrupted mid-frame: kill it; the next render starts a fresh process.
            process.killGroup()
        }
    }

    /// "Blender failed to render frame 3 of a.blend: <Blender's words>." plus advice for errors we know.
    static func frameFailureMessage(frame: Int, file: String, _ blenderMessage: String) -> String {
        var text = blenderMessage.trimmingCharacters(in: .whitespacesAndNewlines)
        if !text.hasSuffix(".") {
            text += "."
        }
        var message = "Blender failed to render frame \(frame) of \(file): \(text)"
        if blenderMessage.contains("OpenImageDenoiser") {
            message += " This Blender is built without OpenImageDenoise: turn off Denoise in the scene's"
            message += " Cycles sampling settings, or render on a node whose Blender has it."
        } else if blenderMessage.contains("no camera") {
            message += " Set an active camera in the scene."
        }
        return message
    }

    /// Blender writes the path of the file it rendered into a PNG's metadata ("File"); a farm renders a copy, so
    /// the user's own path is put back. Other formats keep what Blender wrote.
    static func nameSource(_ source: String, inMetadataOf image: String) {
        guard image.hasSuffix(".png"), let bytes = FileManager.default.contents(atPath: image),
            let renamed = PNG.replacingText(in: Array(bytes), key: "File", with: source)
        else { return }
        try? Data(renamed).write(to: URL(fileURLWithPath: image), options: .atomic)
    }

    /// Output file base name; Blender appends the format's extension.
    static func baseName(frame: Int) -> String {
        frame < 0 ? "rex_-" + zeroPadded(-frame, width: 6) : "rex_" + zeroPadded(frame, width: 6)
    }

    private static func zeroPadded(_ value: Int, width: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    private func awaitFrame(
        _ frame: Int, progress: @escaping @Sendable (FrameProgress) -> Void,
        started: ContinuousClock.Instant, clock: ContinuousClock
    ) async throws -> RenderedFrame {
        var lastProgress: FrameProgress?
        while let event = await nextEvent() {
            switch event {
            case .started:
                continue
            case .line(let line):
                if let driverEvent = DriverEvent.parse(line: line) {
                    switch driverEvent {
                    case .done(let doneFrame, let path, _, let extras) where doneFrame == frame:
                        let elapsed = clock.now - started
                        let seconds =
                            Double(elapsed.components.seconds)
                            + Double(elapsed.components.attoseconds) / 1e18
                        let finished = FrameProgress(frame: frame, fraction: 1)
                        if lastProgress != finished {
                            progress(finished)
                        }
                        logger?.debug(
                            "frame rendered",
                            metadata: ["job": "\(jobID)", "render/frame": "\(frame)", "render/seconds": "\(seconds)"])
                        if let sourcePath {
                            for file in [path] + extras.map(\.file) {
                                Self.nameSource(sourcePath, inMetadataOf: file)
                            }
                        }
                        return RenderedFrame(
                            frame: frame, path: path, seconds: seconds, extras: extras, log: attemptLog.lines)
                    case .error(let errorFrame, let message) where errorFrame == frame || errorFrame == nil:
                        throw RenderError(
                            .frameFailed, Self.frameFailureMessage(frame: frame, file: sceneName, message),
                            commandLine: commandLine, outputTail: tail.lines)
                    default:
                        continue
                    }
                }
                tail.append(line)
                attemptLog.append(line)
                if let update = ProgressParser.parse(line: line), update.frame == frame, update != lastProgress {
                    // Blender repeats status lines while it works; forward changes only.
                    lastProgress = update
                    progress(update)
                }
            case .exited(let status, let signal):
                await stopProcess()
                if closed || Task.isCancelled {
                    throw canceledError()
                }
                let how = signal.map { "was killed by signal \($0)" } ?? "exited with status \(status ?? -1)"
                let errors = tail.errorLines
                let reason = errors.isEmpty ? "" : ": " + errors.suffix(3).joined(separator: "; ")
                logger?.warning(
                    "Blender crashed",
                    metadata: ["job": "\(jobID)", "render/frame": "\(frame)", "render/exit": "\(how)"])
                throw RenderError(
                    .crashed, "Blender \(how) while rendering frame \(frame) of \(sceneName)\(reason).",
                    commandLine: commandLine, outputTail: tail.lines)
            case .launchFailed(let message):
                await stopProcess()
                throw RenderError(
                    .blenderMissing, "Blender could not be started: \(message).", commandLine: commandLine)
            }
        }
        // The stream also ends early when the calling task is cancelled (AsyncStream stops on cancellation).
        await stopProcess()
        throw closed || Task.isCancelled
            ? canceledError()
            : RenderError(
                .crashed, "Blender's output ended while rendering frame \(frame).",
                commandLine: commandLine, outputTail: tail.lines)
    }

    // MARK: Close

    func close() async {
        closed = true
        await stopProcess()
    }

    /// Kills the process group and waits until the process is reaped, so no Blender outlives its session.
    private func stopProcess() async {
        guard let process else { return }
        process.closeInput()
        process.killGroup()
        await process.wait()
        if self.process === process {
            self.process = nil
            self.events = nil
        }
    }

    // MARK: Helpers

    private func nextEvent() async -> ChildProcess.Event? {
        guard var iterator = events else { return nil }
        let event = await iterator.next(isolation: self)
        if events != nil {
            events = iterator
        }
        return event
    }

    private var commandLine: [String] { command.commandLine }

    private func canceledError() -> RenderError {
        let how = closed ? "was closed" : "was cancelled"
        return RenderError(
            .canceled, "The render session for job \(jobID) \(how).", commandLine: commandLine,
            outputTail: tail.lines)
    }
}
