import Foundation
import Synchronization
import Testing

@testable import Render

#if canImport(Glibc)
import Glibc
#endif

/// Paths and helpers shared by the Render tests. Everything lives in the repository or a fresh temporary
/// directory; the only outside dependency is /usr/bin/blender.
enum TestSupport {
    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        url.deleteLastPathComponent()  // RenderTests
        url.deleteLastPathComponent()  // Tests
        url.deleteLastPathComponent()  // repository root
        return url.path
    }()

    static let sceneScript = repositoryRoot + "/Tests/Fixtures/make_test_scene.py"
    static let blenderPath = "/usr/bin/blender"

    static var blenderInstalled: Bool {
        FileManager.default.isExecutableFile(atPath: blenderPath)
    }

    static func temporaryDirectory(_ label: String = #function) throws -> String {
        let base = FileManager.default.temporaryDirectory.path
        let name = "rexnode-render-\(label.filter { $0.isLetter || $0.isNumber })-\(UUID().uuidString.prefix(8))"
        let path = base + "/" + name
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func installation() async throws -> BlenderInstallation {
        try await BlenderLocator.locate(explicit: blenderPath, environment: [:])
    }

    /// Builds a scene with the fixture script (one Blender start, about a second).
    static func makeScene(_ arguments: [String] = [], in directory: String, name: String = "scene.blend") async throws
        -> String
    {
        let output = directory + "/" + name
        let outcome = await runToEnd(
            executable: blenderPath,
            arguments: ["-b", "--factory-startup", "--python", sceneScript, "--", output] + arguments,
            timeout: .seconds(120))
        guard outcome.status == 0, FileManager.default.fileExists(atPath: output) else {
            Issue.record("make_test_scene.py failed: \(outcome.tail.lines.joined(separator: "\n"))")
            throw RenderError(.badScene, "fixture failed")
        }
        return output
    }

    static func readBytes(_ path: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Alive means: exists and is not a zombie (an orphan may wait for a reaper that never comes in a container).
    static func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).prefix(1)
        return state != "Z" && state != "X"
    }

    static func niceValue(of pid: Int32) -> Int? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // Fields after the command: state(3) ... priority(18) nice(19); index 0 here is field 3.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 16 ? Int(fields[16]) : nil
    }

    /// Waits until `condition` holds or the timeout passes.
    static func eventually(timeout: Duration = .seconds(10), _ condition: () async -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if await condition() {
                return true
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return await condition()
    }

    /// Writes an executable shell script standing in for Blender.
    static func writeScript(_ text: String, to path: String) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
    }
}

/// Collects progress callbacks from Blender's reader into something a test can inspect.
final class ProgressLog: Sendable {
    private let items = Mutex<[FrameProgress]>([])

    func append(_ progress: FrameProgress) {
        items.withLock { $0.append(progress) }
    }

    var all: [FrameProgress] {
        items.withLock { $0 }
    }
}
