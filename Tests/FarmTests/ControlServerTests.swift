import Foundation
import Logging
import Synchronization
import Testing

@testable import Farm

#if canImport(Glibc)
    import Glibc
#endif

/// The control socket: a client that goes away before its submit is answered (Ctrl-C while Blender reads the file
/// or the files are stored) cancels the submit; other requests run to their end.
@Suite("Control server")
struct ControlServerTests {
    final class Seen: Sendable {
        let events = Mutex<[String]>([])
        func add(_ event: String) { events.withLock { $0.append(event) } }
        var all: [String] { events.withLock { $0 } }
    }

    /// Connects to the Unix socket and writes one request line; the caller closes the descriptor unanswered.
    func send(_ json: String, to path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(connected == 0, "cannot connect to \(path)")
        let line = Array((json + "\n").utf8)
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        return fd
    }

    /// Waits (generously) until `seen` holds `event`.
    func wait(for event: String, in seen: Seen) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while !seen.all.contains(event) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test func aSubmitWhoseClientHangsUpIsCancelledOtherRequestsFinish() async throws {
        let dir = NSTemporaryDirectory() + "rex-control-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/rexnode.sock"
        let seen = Seen()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = ControlServer(path: path, logger: logger) { request in
            let name = if case .submit = request { "submit" } else { "peers" }
            seen.add("\(name) started")
            do {
                try await Task.sleep(for: name == "submit" ? .seconds(120) : .milliseconds(800))
                seen.add("\(name) finished")
            } catch {
                seen.add("\(name) cancelled")
            }
            return .success(["ok": true] as JSONValue)
        }
        let running = Task { try await server.run() }
        defer { running.cancel() }
        let ready = ContinuousClock.now + .seconds(30)
        while !FileManager.default.fileExists(atPath: path) && ContinuousClock.now < ready {
            try await Task.sleep(for: .milliseconds(20))
        }
        // Each client hangs up once the daemon works on its request (so the order is certain, not the timing).
        let submit = try send(#"{"op":"submit","path":"/x.blend","output":"/o"}"#, to: path)
        try await wait(for: "submit started", in: seen)
        close(submit)
        let peers = try send(#"{"op":"peers"}"#, to: path)
        try await wait(for: "peers started", in: seen)
        close(peers)
        try await wait(for: "submit cancelled", in: seen)
        try await wait(for: "peers finished", in: seen)
        #expect(seen.all.contains("submit cancelled"), "\(seen.all)")
        #expect(seen.all.contains("peers finished"), "\(seen.all)")
        #expect(!seen.all.contains("submit finished"))
    }

    /// Starts a server on a fresh socket; returns its path and the task running it.
    func start(_ server: (String) -> ControlServer) async throws -> (String, Task<Void, any Error>) {
        let dir = NSTemporaryDirectory() + "rex-control-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/rexnode.sock"
        let made = server(path)
        let running = Task { try await made.run() }
        let ready = ContinuousClock.now + .seconds(30)
        while !FileManager.default.fileExists(atPath: path) && ContinuousClock.now < ready {
            try await Task.sleep(for: .milliseconds(20))
        }
        return (path, running)
    }

    /// Reads what the server sends until it closes the connection (or `seconds` pass: nil), on a thread of its own:
    /// a blocking read on Swift's shared pool would starve the server under test.
    func readUntilClosed(_ fd: Int32, seconds: Int32, orLine: Bool = false) async -> String? {
        await withCheckedContinuation { done in
            Thread.detachNewThread {
                done.resume(returning: Self.blockingReadUntilClosed(fd, seconds: seconds, orLine: orLine))
            }
        }
    }

    static func blockingReadUntilClosed(_ fd: Int32, seconds: Int32, orLine: Bool) -> String? {
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&poller, 1, seconds * 1000) > 0 {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { return String(decoding: text, as: UTF8.self) }
            text += buffer[0..<n]
            if orLine && text.contains(UInt8(ascii: "\n")) { return String(decoding: text, as: UTF8.self) }
        }
        return nil
    }

    /// A client that opens the socket and says nothing is closed after the idle timeout; one whose request is still
    /// being answered is not, however long the answer takes.
    @Test func anIdleConnectionIsClosedButOneWaitingForItsAnswerIsNot() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let (path, running) = try await start { path in
            ControlServer(path: path, logger: logger, idleTimeout: .milliseconds(300)) { _ in
                try? await Task.sleep(for: .seconds(2))
                return .success(["ok": true] as JSONValue)
            }
        }
        defer { running.cancel() }
        let quiet = try RawControlClient.connect(path)
        defer { close(quiet) }
        #expect(await readUntilClosed(quiet, seconds: 60) == "", "the idle connection was not closed")
        let waiting = try send(#"{"op":"peers"}"#, to: path)
        defer { close(waiting) }
        let answer = try #require(await readUntilClosed(waiting, seconds: 60))
        #expect(answer.contains("\"ok\""), "\(answer)")
    }

    /// The cap counts a connection from accept to close. Two clients whose requests the handler holds are surely
    /// counted (a request is read only after its connection is), so a third is refused in one sentence and closed;
    /// once the two are answered and closed, a client is answered again.
    @Test func connectionsOverTheCapAreAnsweredWithOneSentenceAndClosed() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let seen = Seen()
        let released = Atomic<Bool>(false)
        let (path, running) = try await start { path in
            ControlServer(path: path, logger: logger, maxConnections: 2) { _ in
                seen.add("held")
                while !released.load(ordering: .relaxed) { try? await Task.sleep(for: .milliseconds(10)) }
                return .success(["ok": true] as JSONValue)
            }
        }
        defer { running.cancel() }
        let held = try (0..<2).map { _ in try send(#"{"op":"peers"}"#, to: path) }
        let deadline = ContinuousClock.now + .seconds(60)
        while seen.all.count < 2 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(seen.all.count == 2, "the two held requests did not reach the handler")
        let extra = try RawControlClient.connect(path)
        let refused = await readUntilClosed(extra, seconds: 60)
        close(extra)
        #expect(refused?.contains("too many control connections") == true, "\(refused ?? "no answer")")
        #expect(refused?.contains("try again in a moment") == true)
        released.store(true, ordering: .relaxed)
        for fd in held {
            #expect((await readUntilClosed(fd, seconds: 60, orLine: true) ?? "").contains("\"ok\""))
            close(fd)
        }
        // Once they are closed (the server counts the close when it sees it), a client is answered again.
        var answered = false
        while !answered && ContinuousClock.now < deadline {
            let fd = try send(#"{"op":"peers"}"#, to: path)
            let answer = await readUntilClosed(fd, seconds: 60, orLine: true) ?? ""
            answered = answer.contains("\"ok\"")
            close(fd)
            if !answered { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(answered)
    }
}
