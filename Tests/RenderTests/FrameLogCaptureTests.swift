import Foundation
import Testing

@testable import Render

/// A persistent session renders many frames: each frame's log holds Blender's lines for that frame only (issue 12).
@Suite("Frame logs from a render session")
struct FrameLogCaptureTests {
    private func session(_ directory: String, environment: [String: String?] = [:]) throws -> BlenderSession {
        _ = try FakeBlenderTests.installFakeBlender(in: directory)
        try "BLENDER-fake".write(toFile: directory + "/scene.blend", atomically: true, encoding: .utf8)
        var command = BlenderCommand(
            executable: directory + "/blender", blendFile: directory + "/scene.blend", pythonScript: "unused.py")
        for (key, value) in environment { command.environment[key] = value }
        return BlenderSession(command: command, jobID: "logs", logger: nil)
    }

    @Test("each rendered frame carries its own lines and none of the load's or another frame's")
    func linesAreAttributedToTheirFrame() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let session = try session(directory)
        try "".write(toFile: directory + "/crashed-once", atomically: true, encoding: .utf8)
        try await session.start()
        var logs: [Int: [String]] = [:]
        for frame in [3, 4, 7] {
            logs[frame] = try await session.render(frame: frame, into: directory + "/out") { _ in }.log
        }
        await session.close()
        for (frame, log) in logs {
            #expect(log.contains { $0.hasPrefix("Fra:\(frame) ") }, "frame \(frame): \(log)")
            #expect(!log.contains { $0.hasPrefix("Fra:") && !$0.hasPrefix("Fra:\(frame) ") }, "frame \(frame): \(log)")
            #expect(!log.contains { $0.contains("Read blend") }, "the load is not a frame's output")
            #expect(!log.contains { $0.contains("@@REX") }, "driver messages are not Blender's output")
        }
    }

    @Test("a crash's error carries that attempt's output, and the restart's load belongs to the next frame")
    func aCrashedAttemptKeepsItsLines() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let session = try session(directory)
        try await session.start()
        do {
            _ = try await session.render(frame: 5, into: directory + "/out") { _ in }
            Issue.record("the first render should crash")
        } catch let error as RenderError {
            #expect(error.code == .crashed)
            #expect(error.attemptLog.contains { $0.hasPrefix("Fra:5 ") }, "\(error.attemptLog)")
            #expect(error.attemptLog.contains { $0.contains("EXCEPTION_ACCESS_VIOLATION") }, "\(error.attemptLog)")
            #expect(!error.attemptLog.contains { $0.contains("Read blend") })
        }
        // Blender is restarted for the next frame: its start-up is part of that attempt.
        let again = try await session.render(frame: 6, into: directory + "/out") { _ in }
        #expect(again.log.contains { $0.contains("Read blend") }, "\(again.log)")
        #expect(again.log.contains { $0.hasPrefix("Fra:6 ") })
        #expect(!again.log.contains { $0.contains("EXCEPTION_ACCESS_VIOLATION") })
        await session.close()
    }

    @Test("a chatty frame keeps only its last lines")
    func theLogIsBounded() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let session = try session(directory, environment: ["CHATTY": "1"])
        try "".write(toFile: directory + "/crashed-once", atomically: true, encoding: .utf8)
        try await session.start()
        let rendered = try await session.render(frame: 2, into: directory + "/out") { _ in }
        await session.close()
        #expect(rendered.log.count == RenderedFrame.logLimit)
        // The fake prints 10,000 stdout lines, then 2,000 on stderr: the kept ones are the last, from stderr.
        #expect(rendered.log.last == "Warning: chatty stderr line")
    }
}
