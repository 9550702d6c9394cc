import Foundation
import Testing

@testable import Render

#if canImport(Glibc)
    import Glibc
#endif

/// Scenes built once per test run with the fixture script and shared by the tests that only read them.
actor SceneCache {
    static let shared = SceneCache()
    private var scenes: [String: Task<String, any Error>] = [:]
    private var directory: String?

    func scene(_ arguments: [String], name: String) async throws -> String {
        if let task = scenes[name] {
            return try await task.value
        }
        let directory = try self.directory ?? Self.makeDirectory()
        self.directory = directory
        let task = Task { try await TestSupport.makeScene(arguments, in: directory, name: name) }
        scenes[name] = task
        return try await task.value
    }

    /// One directory per test process (named by pid); those of earlier, finished runs are removed.
    private static func makeDirectory() throws -> String {
        let fileManager = FileManager.default
        let base = fileManager.temporaryDirectory.path
        let prefix = "rexnode-render-scenes-"
        for name in (try? fileManager.contentsOfDirectory(atPath: base)) ?? [] where name.hasPrefix(prefix) {
            if let pid = Int32(name.dropFirst(prefix.count)), pid != getpid(), kill(pid, 0) != 0 {
                try? fileManager.removeItem(atPath: base + "/" + name)
            }
        }
        let path = base + "/" + prefix + String(getpid())
        try fileManager.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// 64x48 at 50 % (so images are 32x24), 3 frames, 4 samples, denoising off.
    func standard() async throws -> String {
        try await scene(["--frames", "3", "--width", "64", "--height", "48", "--percentage", "50"], name: "std.blend")
    }
}

@Suite("BlenderRenderer with real Blender", .enabled(if: TestSupport.blenderInstalled))
struct BlenderRendererTests {
    @Test("locating Blender finds /usr/bin/blender and reads its version")
    func locateRealBlender() async throws {
        let installation = try await TestSupport.installation()
        #expect(installation.path == TestSupport.blenderPath)
        #expect(installation.version.first?.isNumber == true && installation.version.contains("."))
        let fromPath = try await BlenderLocator.locate(explicit: nil, environment: ["PATH": "/nonexistent:/usr/bin"])
        #expect(fromPath.path == "/usr/bin/blender")
        let fromVariable = try await BlenderLocator.locate(
            explicit: nil, environment: ["BLENDER": TestSupport.blenderPath, "PATH": "/nonexistent"])
        #expect(fromVariable.path == TestSupport.blenderPath)
    }

    @Test("probing the fixture scene reports the facts the fixture script set")
    func probeMatchesFixture() async throws {
        let scene = try await SceneCache.shared.standard()
        var info = try await TestSupport.installation().probeScene(at: scene)
        #expect(info.fps == 24)
        info.fps = nil
        #expect(
            info
                == SceneInfo(
                    frameStart: 1, frameEnd: 3, frameStep: 1, resolutionX: 64, resolutionY: 48,
                    resolutionPercentage: 50, engine: "CYCLES", fileFormat: "PNG", fileExtension: ".png",
                    camera: "Camera"))
    }

    @Test("one session renders three frames in one Blender process: right size, distinct images, progress")
    func rendersThreeFramesInOneProcess() async throws {
        let scene = try await SceneCache.shared.standard()
        let output = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: output) }
        let renderer = BlenderRenderer(installation: try await TestSupport.installation(), persistentData: true)
        let session = try await renderer.makeSession(for: RenderRequest(jobID: "j1", blendPath: scene, threads: 2))
        let blender = try #require(session as? BlenderSession)
        let info = try #require(await session.sceneInfo)
        #expect(info.outputWidth == 32 && info.outputHeight == 24 && info.fileExtension == ".png")
        let pid = try #require(await blender.processID)
        #expect(TestSupport.niceValue(of: pid) == 10, "Blender runs at nice 10")

        let log = ProgressLog()
        var images: [[UInt8]] = []
        for frame in 1...3 {
            let rendered = try await session.render(frame: frame, into: output + "/frames") { log.append($0) }
            #expect(rendered.frame == frame)
            #expect(rendered.path == output + "/frames/rex_00000\(frame).png")
            let bytes = try TestSupport.readBytes(rendered.path)
            let size = try #require(PNG.size(of: bytes))
            #expect(size.width == 32 && size.height == 24)
            images.append(bytes)
        }
        #expect(Set(images).count == 3, "the moving cube makes every frame different")
        #expect(await blender.starts == 1, "all frames came from the same Blender process")
        #expect(await blender.processID == pid)
        let progress = log.all
        #expect(progress.contains { $0.frame == 2 && $0.samples == 4 && $0.sample != nil })
        #expect(progress.filter { $0.frame == 3 }.last?.fraction == 1)
        #expect(progress.allSatisfy { (0...1).contains($0.fraction) })
        await session.close()
        #expect(!TestSupport.isAlive(pid))
    }

    @Test("a frame from the persistent session has the same pixels as `blender -b scene -f N`")
    func sessionMatchesBlenderCommandLine() async throws {
        let scene = try await SceneCache.shared.standard()
        let output = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: output) }
        let session = try await BlenderRenderer(installation: try await TestSupport.installation(), niceLevel: 0)
            .makeSession(for: RenderRequest(jobID: "j5", blendPath: scene))
        _ = try await session.render(frame: 1, into: output) { _ in }
        let ours = try await session.render(frame: 3, into: output) { _ in }
        await session.close()
        let reference = await runToEnd(
            executable: TestSupport.blenderPath,
            arguments: ["-b", scene, "-o", output + "/cli_####", "-f", "3"], timeout: .seconds(120))
        #expect(reference.status == 0)
        let compare = """
            import bpy, sys
            a = bpy.data.images.load(sys.argv[-2])
            b = bpy.data.images.load(sys.argv[-1])
            same = tuple(a.size) == tuple(b.size) and list(a.pixels) == list(b.pixels)
            print("PIXELS", "SAME" if same else "DIFFERENT", tuple(a.size))
            """
        let result = await runToEnd(
            executable: TestSupport.blenderPath,
            arguments: [
                "-b", "--factory-startup", "--python-expr", compare, "--", ours.path, output + "/cli_0003.png",
            ],
            timeout: .seconds(120))
        #expect(result.lines.contains("PIXELS SAME (32, 24)"), "\(result.lines.suffix(5))")
    }

    @Test("denoising on Debian's Blender fails the frame with Blender's OpenImageDenoiser message")
    func denoiseErrorIsSurfaced() async throws {
        let scene = try await SceneCache.shared.scene(
            ["--frames", "2", "--width", "32", "--height", "24", "--denoise"], name: "denoise.blend")
        let output = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: output) }
        let session = try await BlenderRenderer(installation: try await TestSupport.installation())
            .makeSession(for: RenderRequest(jobID: "j2", blendPath: scene))
        defer { Task { await session.close() } }
        do {
            _ = try await session.render(frame: 1, into: output) { _ in }
            Issue.record("rendering with denoising should fail on this Blender build")
        } catch let error as RenderError {
            #expect(error.code == .frameFailed)
            #expect(error.message.contains("OpenImageDenoiser"))
            #expect(error.message.contains("frame 1"))
            #expect(error.commandLine.contains(scene))
        }
        // The process survives a failed frame: the next request is answered by the same Blender.
        let blender = try #require(session as? BlenderSession)
        await #expect(throws: RenderError.self) { _ = try await session.render(frame: 2, into: output) { _ in } }
        #expect(await blender.starts == 1)
    }

    @Test("the scene's own format is kept (JPEG), a movie format renders PNG frames, no camera fails the frame")
    func formatsAndCameraless() async throws {
        let installation = try await TestSupport.installation()
        let output = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: output) }
        let small = ["--frames", "2", "--width", "24", "--height", "16", "--samples", "2"]
        async let jpegScene = SceneCache.shared.scene(small + ["--format", "JPEG"], name: "jpeg.blend")
        async let movieScene = SceneCache.shared.scene(small + ["--format", "FFMPEG"], name: "movie.blend")
        async let cameralessScene = SceneCache.shared.scene(small + ["--no-camera"], name: "nocamera.blend")
        let renderer = BlenderRenderer(installation: installation)

        let jpeg = try await renderer.makeSession(for: RenderRequest(jobID: "f1", blendPath: try await jpegScene))
        #expect(await jpeg.sceneInfo?.fileFormat == "JPEG")
        #expect(await jpeg.sceneInfo?.fileExtension == ".jpg")
        let jpegFrame = try await jpeg.render(frame: 2, into: output + "/jpeg") { _ in }
        await jpeg.close()
        #expect(jpegFrame.path.hasSuffix("rex_000002.jpg"))
        #expect(try TestSupport.readBytes(jpegFrame.path).prefix(3) == [0xFF, 0xD8, 0xFF])

        let movie = try await renderer.makeSession(for: RenderRequest(jobID: "f2", blendPath: try await movieScene))
        #expect(await movie.sceneInfo?.fileFormat == "PNG")
        let movieFrame = try await movie.render(frame: 1, into: output + "/movie") { _ in }
        await movie.close()
        #expect(PNG.size(of: try TestSupport.readBytes(movieFrame.path))?.width == 24)
        #expect(try await installation.probeScene(at: try await movieScene).fileExtension == ".png")

        let cameraless = try await renderer.makeSession(
            for: RenderRequest(jobID: "f3", blendPath: try await cameralessScene))
        #expect(await cameraless.sceneInfo != nil)
        #expect(await cameraless.sceneInfo?.camera == nil)
        await #expect { _ = try await cameraless.render(frame: 1, into: output + "/none") { _ in } } throws: {
            guard let error = $0 as? RenderError else { return false }
            return error.code == .frameFailed && error.message.contains("Cannot render, no camera")
        }
        await cameraless.close()
    }

    @Test("a truncated .blend gives badScene with Blender's own reason, from both probe and session")
    func truncatedBlendIsBadScene() async throws {
        let scene = try await SceneCache.shared.standard()
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let truncated = directory + "/truncated.blend"
        let bytes = try TestSupport.readBytes(scene)
        try Data(bytes.prefix(bytes.count / 3)).write(to: URL(fileURLWithPath: truncated))
        let installation = try await TestSupport.installation()
        do {
            _ = try await installation.probeScene(at: truncated)
            Issue.record("probe should fail")
        } catch let error as RenderError {
            #expect(error.code == .badScene)
            #expect(error.message.contains("truncated.blend"))
            #expect(error.message.contains("Failed to read blend file") || error.message.contains("not supported"))
        }
        do {
            _ = try await BlenderRenderer(installation: installation)
                .makeSession(for: RenderRequest(jobID: "j3", blendPath: truncated))
            Issue.record("session should fail")
        } catch let error as RenderError {
            #expect(error.code == .badScene)
            #expect(!error.outputTail.isEmpty)
        }
    }

    @Test("a file that is not a .blend and a missing file are badScene too")
    func notABlend() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let garbage = directory + "/garbage.blend"
        try "not a blend file\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        let installation = try await TestSupport.installation()
        await #expect { try await installation.probeScene(at: garbage) } throws: { error in
            (error as? RenderError)?.code == .badScene
                && (error as? RenderError)?.message.contains("File format is not supported") == true
        }
        await #expect { try await installation.probeScene(at: directory + "/missing.blend") } throws: { error in
            (error as? RenderError)?.code == .badScene
        }
    }

    @Test("close() kills Blender mid-frame: the render throws canceled and the process is gone")
    func closeKillsMidFrame() async throws {
        // Enough samples that frame 1 takes a few seconds.
        let scene = try await SceneCache.shared.scene(
            ["--frames", "1", "--width", "320", "--height", "240", "--samples", "4000"], name: "slow.blend")
        let output = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: output) }
        let session = try await BlenderRenderer(installation: try await TestSupport.installation())
            .makeSession(for: RenderRequest(jobID: "j4", blendPath: scene, threads: 1))
        let blender = try #require(session as? BlenderSession)
        let pid = try #require(await blender.processID)
        let log = ProgressLog()
        let render = Task { try await session.render(frame: 1, into: output) { log.append($0) } }
        #expect(
            await TestSupport.eventually(timeout: .seconds(30)) { log.all.contains { $0.sample != nil } },
            "rendering started")
        await session.close()
        await session.close()  // idempotent
        do {
            _ = try await render.value
            Issue.record("the in-flight render should throw")
        } catch let error as RenderError {
            #expect(error.code == .canceled)
        }
        #expect(!TestSupport.isAlive(pid))
        await #expect(throws: RenderError.self) { _ = try await session.render(frame: 1, into: output) { _ in } }
    }
}

@Suite("Blender locating and crash handling without Blender")
struct FakeBlenderTests {
    @Test("a missing Blender gives blenderMissing with a readable sentence")
    func missingBlender() async throws {
        await #expect { try await BlenderLocator.locate(explicit: "/nonexistent/blender", environment: [:]) } throws: {
            guard let error = $0 as? RenderError else { return false }
            return error.code == .blenderMissing && error.message.contains("/nonexistent/blender")
                && error.message.contains("--blender")
        }
        await #expect {
            try await BlenderLocator.locate(explicit: nil, environment: ["PATH": "/nonexistent"])
        } throws: {
            ($0 as? RenderError)?.code == .blenderMissing
        }
        await #expect {
            try await BlenderLocator.locate(explicit: nil, environment: ["BLENDER": "/nope", "PATH": "/usr/bin"])
        } throws: { ($0 as? RenderError)?.message.contains("$BLENDER") == true }
    }

    @Test("an executable that is not Blender is rejected by the --version probe")
    func notBlender() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try TestSupport.writeScript("#!/bin/sh\necho 'hello'\nexit 3\n", to: directory + "/blender")
        await #expect { try await BlenderLocator.locate(explicit: directory + "/blender", environment: [:]) } throws: {
            ($0 as? RenderError)?.code == .blenderMissing
        }
    }

    /// Copies Tests/Fixtures/fake_blender.sh into `directory` (its marker files live next to it).
    static func installFakeBlender(in directory: String) throws -> String {
        let path = directory + "/blender"
        try FileManager.default.copyItem(
            atPath: TestSupport.repositoryRoot + "/Tests/Fixtures/fake_blender.sh", toPath: path)
        chmod(path, 0o755)
        return path
    }

    @Test("Blender dying mid-frame gives crashed with its output, and the next render restarts it")
    func crashThenRestart() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        let renderer = BlenderRenderer(
            installation: BlenderInstallation(path: directory + "/blender", version: "3.4.1"))
        let session = try await renderer.makeSession(
            for: RenderRequest(jobID: "c1", blendPath: directory + "/scene.blend"))
        let blender = try #require(session as? BlenderSession)
        #expect(await session.sceneInfo?.frameEnd == 9)
        let firstPID = try #require(await blender.processID)
        do {
            _ = try await session.render(frame: 4, into: directory + "/out") { _ in }
            Issue.record("the first render should crash")
        } catch let error as RenderError {
            #expect(error.code == .crashed)
            #expect(error.message.contains("signal 9"))
            #expect(error.message.contains("EXCEPTION_ACCESS_VIOLATION"))
            #expect(error.outputTail.contains { $0.hasPrefix("Fra:4") })
            #expect(error.commandLine.first == "/usr/bin/nice")
        }
        #expect(!TestSupport.isAlive(firstPID))
        let rendered = try await session.render(frame: 5, into: directory + "/out") { _ in }
        #expect(rendered.path == directory + "/out/rex_000005.png")
        #expect(FileManager.default.fileExists(atPath: rendered.path))
        #expect(await blender.starts == 2)
        #expect(await blender.processID != firstPID)
        let second = try await session.render(frame: 6, into: directory + "/out") { _ in }
        #expect(second.frame == 6)
        #expect(await blender.starts == 2)
        await session.close()
    }

    @Test("a crash is reported even when a leftover child keeps Blender's output pipe open")
    func crashWithOrphanHoldingPipe() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        var command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        command.environment["ORPHAN"] = "1"
        let session = BlenderSession(command: command, jobID: "c6", logger: nil)
        try await session.start()
        await #expect { _ = try await session.render(frame: 2, into: directory + "/out") { _ in } } throws: {
            ($0 as? RenderError)?.code == .crashed
        }
        let child = try #require(
            Int32(
                try String(contentsOfFile: directory + "/child.pid", encoding: .utf8)
                    .trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(await TestSupport.eventually(timeout: .seconds(2)) { !TestSupport.isAlive(child) })
        await session.close()
    }

    @Test("Blender killed while loading is a crash, not a bad scene (the file may be fine)")
    func crashWhileLoading() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        var command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        command.environment["CRASH_LOAD"] = "1"
        let session = BlenderSession(command: command, jobID: "c7", logger: nil)
        await #expect { try await session.start() } throws: {
            guard let error = $0 as? RenderError else { return false }
            return error.code == .crashed && error.message.contains("signal 9")
                && error.outputTail.contains("Read blend: fake")
        }
        #expect(await session.processID == nil)
    }

    @Test("megabytes of output during a frame neither block Blender nor the session")
    func chattyBlenderDoesNotDeadlock() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "".write(toFile: directory + "/crashed-once", atomically: true, encoding: .utf8)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        var command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        command.environment["CHATTY"] = "1"
        let session = BlenderSession(command: command, jobID: "c8", logger: nil)
        try await session.start()
        let log = ProgressLog()
        for frame in 1...2 {
            let rendered = try await session.render(frame: frame, into: directory + "/out") { log.append($0) }
            #expect(FileManager.default.fileExists(atPath: rendered.path))
        }
        #expect(log.all.count < 100, "repeated identical progress is forwarded once")
        #expect(log.all.last == FrameProgress(frame: 2, fraction: 1))
        await session.close()
    }

    @Test("a Blender that never finishes loading is killed after the load timeout")
    func loadTimeout() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        var command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        command.environment["HANG_LOAD"] = "1"
        let session = BlenderSession(command: command, jobID: "c9", logger: nil, loadTimeout: .milliseconds(300))
        // The fake never finishes loading: that `start` returns at all shows the kill (no bound on how soon: a busy
        // CI machine once took 10.6 s to start and reap a shell script).
        await #expect { try await session.start() } throws: {
            guard let error = $0 as? RenderError else { return false }
            return error.code == .crashed && error.message.contains("did not finish loading")
        }
        #expect(await session.processID == nil)
    }

    @Test("Blender inherits none of the daemon's descriptors (sockets, databases), only its three pipes")
    func noInheritedDescriptors() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        // A descriptor opened without O_CLOEXEC, like a careless library's.
        // Numbered high so it cannot coincide with one the shell opens itself.
        let opened = open(directory + "/scene.blend", O_RDONLY)
        let leaky = fcntl(opened, F_DUPFD, 500)
        close(opened)
        #expect(leaky >= 500)
        defer { close(leaky) }
        let command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        let session = BlenderSession(command: command, jobID: "c10", logger: nil)
        try await session.start()
        let pid = try #require(await session.processID)
        let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap {
            Int32($0)
        }
        #expect(!descriptors.contains(leaky))
        #expect(Set(descriptors).isSuperset(of: [0, 1, 2]))
        await session.close()
    }

    @Test("a short-lived run that overstays its timeout is killed and reported as timed out")
    func runToEndTimeout() async throws {
        let clock = ContinuousClock()
        let started = clock.now
        let outcome = await runToEnd(
            executable: "/bin/sh", arguments: ["-c", "echo hi; sleep 60"], timeout: .milliseconds(300))
        // Killed, not waited for: well under the child's 60 s, with room for a machine this busy.
        #expect(clock.now - started < .seconds(40))
        #expect(outcome.timedOut)
        #expect(outcome.statusDescription == "timed out")
        #expect(outcome.lines == ["hi"])
    }

    @Test("a session dropped without close() kills its Blender")
    func droppedSessionKillsBlender() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        let command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        var session: BlenderSession? = BlenderSession(command: command, jobID: "c5", logger: nil)
        try await session?.start()
        let pid = try #require(await session?.processID)
        #expect(TestSupport.isAlive(pid))
        session = nil
        #expect(await TestSupport.eventually { !TestSupport.isAlive(pid) })
    }

    @Test("Blender exiting between frames is restarted before the next frame, which then succeeds")
    func idleExitRestarts() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "".write(toFile: directory + "/crashed-once", atomically: true, encoding: .utf8)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        var command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        command.environment["EXIT_IDLE"] = "1"
        let session = BlenderSession(command: command, jobID: "c4", logger: nil)
        try await session.start()
        #expect(await TestSupport.eventually { FileManager.default.fileExists(atPath: directory + "/exited-once") })
        #expect(await TestSupport.eventually(timeout: .seconds(5)) { await session.processID == nil })
        let rendered = try await session.render(frame: 3, into: directory + "/out") { _ in }
        #expect(FileManager.default.fileExists(atPath: rendered.path))
        #expect(await session.starts == 2)
        await session.close()
    }

    @Test("close() kills the whole process group, children included, and fails the in-flight render")
    func closeKillsProcessGroup() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "".write(toFile: directory + "/crashed-once", atomically: true, encoding: .utf8)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        var command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py",
            niceLevel: 0)
        command.environment["HANG"] = "1"
        let session = BlenderSession(command: command, jobID: "c2", logger: nil)
        try await session.start()
        let pid = try #require(await session.processID)
        let render = Task { try await session.render(frame: 1, into: directory + "/out") { _ in } }
        let childFile = directory + "/child.pid"
        #expect(await TestSupport.eventually { FileManager.default.fileExists(atPath: childFile) })
        #expect(
            await TestSupport.eventually {
                (try? String(contentsOfFile: childFile, encoding: .utf8))?.hasSuffix("\n") == true
            })
        let childText = try String(contentsOfFile: childFile, encoding: .utf8)
        let child = try #require(Int32(childText.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(TestSupport.isAlive(pid) && TestSupport.isAlive(child))
        #expect(getpgid(child) == pid, "the child is in Blender's process group")
        await session.close()
        do {
            _ = try await render.value
            Issue.record("the in-flight render should throw")
        } catch let error as RenderError {
            #expect(error.code == .canceled)
        }
        #expect(!TestSupport.isAlive(pid))
        #expect(await TestSupport.eventually(timeout: .seconds(2)) { !TestSupport.isAlive(child) })
        await session.close()
    }

    @Test("cancelling the caller's task kills Blender; the next render starts a fresh process")
    func taskCancellation() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.installFakeBlender(in: directory)
        try "".write(toFile: directory + "/crashed-once", atomically: true, encoding: .utf8)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        var command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        command.environment["HANG"] = "1"
        let session = BlenderSession(command: command, jobID: "c3", logger: nil)
        try await session.start()
        let render = Task { try await session.render(frame: 1, into: directory + "/out") { _ in } }
        #expect(await TestSupport.eventually { FileManager.default.fileExists(atPath: directory + "/child.pid") })
        render.cancel()
        do {
            _ = try await render.value
            Issue.record("the cancelled render should throw")
        } catch let error as RenderError {
            #expect(error.code == .canceled)
        }
        #expect(await session.processID == nil)
        await session.close()
    }
}
