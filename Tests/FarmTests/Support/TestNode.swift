import Foundation
import Testing

/// Paths of the package under test, found from this file's location.
enum TestPaths {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The `rexnode` binary built with the tests (`REXNODE_BIN` overrides).
    static var rexnode: String {
        if let explicit = ProcessInfo.processInfo.environment["REXNODE_BIN"] { return explicit }
        return "\(root)/.build/debug/rexnode"
    }

    static let blender = ProcessInfo.processInfo.environment["BLENDER"] ?? "/usr/bin/blender"
}

/// The result of running a command to completion.
struct CommandResult: CustomStringConvertible {
    var status: Int32
    var stdout: String
    var stderr: String
    var description: String { "exit \(status)\nstdout: \(stdout)\nstderr: \(stderr)" }
}

/// Runs a program, collecting its output, with a time limit (the child is killed past it).
func runProgram(_ path: String, _ args: [String], cwd: String? = nil, timeout: Double = 120) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = args
    if let cwd { process.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let dir = NSTemporaryDirectory() + "rex-out-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    _ = FileManager.default.createFile(atPath: dir + "/o", contents: nil)
    _ = FileManager.default.createFile(atPath: dir + "/e", contents: nil)
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/o"))
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/e"))
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(20_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
    return CommandResult(
        status: process.terminationStatus,
        stdout: (try? String(contentsOfFile: dir + "/o", encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOfFile: dir + "/e", encoding: .utf8)) ?? "")
}

/// Generates test scenes with Blender's own Python, once per set of options per test run.
enum Scenes {
    nonisolated(unsafe) private static var cache: [String: String] = [:]
    private static let lock = NSLock()
    static let dir = NSTemporaryDirectory() + "rex-scenes-\(getpid())"

    static func make(_ options: [String]) throws -> String {
        lock.lock()
        defer { lock.unlock() }
        let key = options.joined(separator: " ")
        if let path = cache[key] { return path }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = "\(dir)/scene-\(cache.count).blend"
        let result = try runProgram(
            TestPaths.blender,
            ["-b", "--factory-startup", "--python", "\(TestPaths.root)/Tests/Fixtures/make_test_scene.py", "--", path]
                + options)
        guard FileManager.default.fileExists(atPath: path) else {
            throw TestFailure("Blender could not make the test scene: \(result)")
        }
        cache[key] = path
        return path
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A `rexnode join` daemon in its own data folder, started as a real child process.
final class TestNode {
    let data: String
    let name: String
    let extraArgs: [String]
    private(set) var process: Process?
    let logPath: String

    let discoveryPort: Int
    /// Variables added to the daemon's environment (e.g. `REXNODE_CLOCK_OFFSET_FILE`).
    let environment: [String: String]

    init(
        name: String = "n1", args: [String] = [], data: String? = nil, discoveryPort: Int? = nil, start: Bool = true,
        environment: [String: String] = [:]
    ) throws {
        self.environment = environment
        self.discoveryPort = discoveryPort ?? TestNode.freshPort()
        self.data = data ?? NSTemporaryDirectory() + "rex-node-\(UUID().uuidString.prefix(8))"
        self.name = name
        extraArgs = args
        logPath = self.data + ".log"
        if start { try self.start() }
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: data)
        try? FileManager.default.removeItem(atPath: logPath)
    }

    /// Starts the daemon and waits until its control socket answers.
    func start() throws {
        try launch()
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if !isRunning { throw TestFailure("rexnode join exited early:\n\(self.log)") }
            if let r = try? cli(["peers", "--json"], timeout: 10), r.status == 0 { return }
            usleep(100_000)
        }
        throw TestFailure("rexnode join did not answer within 30 s:\n\(self.log)")
    }

    /// A multicast port no other farm of this test run uses (different farms must not hear each other).
    static func freshPort() -> Int {
        portLock.lock()
        defer { portLock.unlock() }
        nextPort += 1
        return nextPort
    }

    nonisolated(unsafe) private static var nextPort = 20_000 + Int(getpid() % 2_000) * 10
    private static let portLock = NSLock()
    static let groupByte = 100 + Int(getpid() % 100)

    /// Launches the daemon without waiting for it (several nodes started at the same moment).
    func launch() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestPaths.rexnode)
        process.arguments =
            ["join", "--data", data, "--name", name, "--listen", "127.0.0.1:0", "--interface", "127.0.0.1",
                "--discovery", "239.255.77.\(TestNode.groupByte):\(discoveryPort)"]
            + extraArgs
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()  // a restarted node's log follows its earlier runs
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
    }

    var pid: Int32 { process?.processIdentifier ?? 0 }
    var isRunning: Bool { process?.isRunning ?? false }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// SIGKILL: no chance to clean up, as in a power cut.
    func kill9() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill9() }
    }

    /// Runs a `rexnode` command against this node.
    func cli(_ args: [String], timeout: Double = 120) throws -> CommandResult {
        try runProgram(TestPaths.rexnode, args + ["--data", data], timeout: timeout)
    }

    /// Runs a command whose stdout is JSON and decodes it.
    func json(_ args: [String]) throws -> Any {
        let r = try cli(args + ["--json"])
        guard r.status == 0 else { throw TestFailure("\(args) failed: \(r)") }
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8), options: [.fragmentsAllowed])
    }

    func status(_ job: String) throws -> [String: Any] {
        guard let s = try json(["status", job]) as? [String: Any] else { throw TestFailure("status is not an object") }
        return s
    }

    /// Polls until `condition` holds on the job's status, or fails after `timeout` seconds.
    @discardableResult
    func waitFor(_ job: String, timeout: Double = 120, _ condition: ([String: Any]) -> Bool) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        var last: [String: Any] = [:]
        while Date() < deadline {
            if let s = try? status(job) {
                last = s
                if condition(s) { return s }
            }
            usleep(200_000)
        }
        throw TestFailure("job \(job) did not reach the expected state in \(timeout) s; last: \(last)\n\(log)")
    }

    /// Submits without waiting and returns the job id.
    func submit(_ args: [String]) throws -> String {
        let r = try cli(["submit"] + args + ["--no-wait"])
        guard r.status == 0 else { throw TestFailure("submit failed: \(r)") }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Reads a PNG's width and height from its IHDR chunk.
func pngSize(_ path: String) -> (width: Int, height: Int)? {
    guard let data = FileManager.default.contents(atPath: path), data.count > 24,
        Array(data.prefix(8)) == [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]
    else { return nil }
    let b = Array(data[16..<24])
    let w = Int(b[0]) << 24 | Int(b[1]) << 16 | Int(b[2]) << 8 | Int(b[3])
    let h = Int(b[4]) << 24 | Int(b[5]) << 16 | Int(b[6]) << 8 | Int(b[7])
    return (w, h)
}

func tempDir(_ label: String) -> String {
    let dir = NSTemporaryDirectory() + "rex-\(label)-\(UUID().uuidString.prefix(8))"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Processes whose command line contains `needle` (for checking that Blender really went away).
func processes(matching needle: String) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let cmd = String(decoding: raw.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        return cmd.contains(needle) && !cmd.contains("rexnode join")
    }
}
