// meshbench: the mesh's figures, measured side by side in one run on loopback.
//   meshbench                 all benchmarks (transfer, discovery latency, idle cost)
//   meshbench node ...        one node, used as a child process by the idle benchmark
import Foundation
import Logging
import Mesh
import NIOCore
import NIOPosix
import Synchronization

// MARK: In-memory blob store (so neither side of the transfer comparison touches the disk)

final class MemoryBlobs: BlobSource, BlobSink, Sendable {
    private let blobs = Mutex<[String: [UInt8]]>([:])
    private let partials = Mutex<[String: [UInt8]]>([:])

    func put(_ bytes: [UInt8], format: BlobAddress.Format = .tree) -> String {
        let hash = format == .tree ? BlobAddress.of(bytes) : BlobAddress.legacy(bytes)
        blobs.withLock { $0[hash] = bytes }
        return hash
    }
    func get(_ hash: String) -> [UInt8]? { blobs.withLock { $0[hash] } }

    func size(_ hash: String) async throws -> UInt64? { blobs.withLock { $0[hash].map { UInt64($0.count) } } }
    func read(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        blobs.withLock { b in
            guard let blob = b[hash], offset < blob.count else { return [] }
            return Array(blob[Int(offset)..<min(blob.count, Int(offset) + length)])
        }
    }
    func partialSize(_ hash: String) async throws -> UInt64 { partials.withLock { UInt64($0[hash]?.count ?? 0) } }
    func readPartial(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        partials.withLock { p in
            guard let part = p[hash], offset < part.count else { return [] }
            return Array(part[Int(offset)..<min(part.count, Int(offset) + length)])
        }
    }
    func writePartial(_ hash: String, offset: UInt64, bytes: [UInt8]) async throws {
        partials.withLock { p in
            var part = p[hash] ?? []
            p[hash] = nil  // keep the array uniquely referenced while it grows
            let end = Int(offset) + bytes.count
            if part.count < end { part.append(contentsOf: repeatElement(0, count: end - part.count)) }
            part.replaceSubrange(Int(offset)..<end, with: bytes)
            p[hash] = part
        }
    }
    /// As `DirectoryBlobStore`: a legacy address is checked over the whole blob; a tree address was proved chunk by
    /// chunk by the fetch.
    func finalize(_ hash: String, size: UInt64) async throws {
        let part = partials.withLock { $0.removeValue(forKey: hash) ?? [] }
        let tree = BlobAddress.format(hash) == .tree
        guard part.count == Int(size), tree || BlobAddress.legacy(part) == hash else {
            throw MeshError(.authentication, "The benchmark blob does not match its address.")
        }
        blobs.withLock { $0[hash] = part }
    }
}

// MARK: Settings

func settings(group: String, port: Int, interval: Duration, name: String) -> MeshNode.Settings {
    var s = MeshNode.Settings()
    s.name = name
    s.listenHost = "127.0.0.1"
    s.listenPort = 0
    s.discovery.group = group
    s.discovery.port = port
    s.discovery.interface = "127.0.0.1"  // loopback multicast, TTL 0: nothing leaves the host
    s.discovery.beaconInterval = interval
    s.requestTimeout = .seconds(30)
    s.blobWindow = window
    return s
}

let quiet: Logger = {
    var l = Logger(label: "meshbench")
    l.logLevel = .warning
    return l
}()
let window = Int(ProcessInfo.processInfo.environment["MESHBENCH_WINDOW"] ?? "") ?? MeshNode.Settings().blobWindow

func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

func waitFor(_ limit: Duration, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return false
}

// MARK: Raw TCP baseline

/// Server writes `size` bytes in 1 MiB buffers; the client counts them. Same loopback, same sizes.
final class CountingHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    var received = 0
    let expected: Int
    let done: EventLoopPromise<Void>
    init(expected: Int, done: EventLoopPromise<Void>) {
        self.expected = expected
        self.done = done
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += Self.unwrapInboundIn(data).readableBytes
        if received >= expected { done.succeed(()) }
    }
}

final class SendingHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let payload: [UInt8]
    init(payload: [UInt8]) { self.payload = payload }
    func channelActive(context: ChannelHandlerContext) {
        var offset = 0
        while offset < payload.count {
            let end = min(payload.count, offset + (1 << 20))
            context.write(
                Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: payload[offset..<end])), promise: nil)
            offset = end
        }
        context.flush()
    }
}

func rawTCP(_ payload: [UInt8]) async throws -> Double {
    let group = MultiThreadedEventLoopGroup.singleton
    let server = try await ServerBootstrap(group: group)
        .childChannelInitializer { ch in
            ch.eventLoop.makeCompletedFuture {
                try ch.pipeline.syncOperations.addHandler(SendingHandler(payload: payload))
            }
        }
        .bind(host: "127.0.0.1", port: 0).get()
    let done = group.next().makePromise(of: Void.self)
    let start = ContinuousClock.now
    let client = try await ClientBootstrap(group: group)
        .channelInitializer { ch in
            ch.eventLoop.makeCompletedFuture {
                try ch.pipeline.syncOperations.addHandler(CountingHandler(expected: payload.count, done: done))
            }
        }
        .connect(host: "127.0.0.1", port: server.localAddress!.port!).get()
    try await done.futureResult.get()
    let elapsed = seconds(ContinuousClock.now - start)
    try await client.close()
    try await server.close()
    return Double(payload.count) / elapsed / 1e6
}

// MARK: Benchmarks

func withNodes<T: Sendable>(_ nodes: [MeshNode], _ body: @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        for node in nodes {
            group.addTask {
                try await node.run()
                return nil
            }
        }
        for node in nodes { _ = try await node.listeningPort() }
        let result = try await body()
        group.cancelAll()
        while (try? await group.next()) != nil {}
        return result
    }
}

/// The secure channel alone: 1 MiB messages from one node to another (encrypt, frame, decrypt, decode).
func channelThroughput(size: Int, group: String, port: Int) async throws -> Figure {
    let key = FarmKey.generate()
    let a = MeshNode(
        settings: settings(group: group, port: port, interval: .milliseconds(200), name: "a"),
        farmKey: key, identity: .generate(), logger: quiet)
    let b = MeshNode(
        settings: settings(group: group, port: port, interval: .milliseconds(200), name: "b"),
        farmKey: key, identity: .generate(), logger: quiet)
    let chunk = Sodium.randomBytes(1 << 20)
    let count = size >> 20
    return try await withNodes([a, b]) {
        guard await waitFor(.seconds(10), { await b.connectedPeers() == [a.nodeID] }) else {
            throw MeshError(.timeout, "The benchmark nodes did not connect.")
        }
        let cpu = cpuSeconds()
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                var received = 0
                for await _ in b.incoming {
                    received += 1
                    if received == count { return }
                }
            }
            for _ in 0..<count { try await a.send(to: b.nodeID, .raft(chunk)) }
            try await group.waitForAll()
        }
        let wall = seconds(ContinuousClock.now - start)
        return Figure(rate: Double(size) / wall / 1e6, cpuPerMiB: (cpuSeconds() - cpu) * 1000 / Double(count))
    }
}

/// Process CPU time (user + system, every thread: both nodes and both TCP ends live in this process).
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return s(usage.ru_utime) + s(usage.ru_stime)
}

/// One measurement: MB/s of wall time and CPU milliseconds per MiB moved.
struct Figure {
    var rate: Double
    var cpuPerMiB: Double
}

func measure(_ bytes: Int, _ body: () async throws -> Void) async rethrows -> Figure {
    let cpu = cpuSeconds()
    let start = ContinuousClock.now
    try await body()
    let wall = seconds(ContinuousClock.now - start)
    return Figure(
        rate: Double(bytes) / wall / 1e6, cpuPerMiB: (cpuSeconds() - cpu) * 1000 / Double(bytes >> 20))
}

func median(_ figures: [Figure]) -> Figure {
    let rates = figures.map(\.rate).sorted()
    let cpus = figures.map(\.cpuPerMiB).sorted()
    return Figure(rate: rates[rates.count / 2], cpuPerMiB: cpus[cpus.count / 2])
}

/// Raw TCP, then a verified fetch of the same bytes under a legacy and under a tree address, `rounds` times
/// interleaved (so load from other processes falls on all three alike); medians.
func transfer(size: Int, rounds: Int, group: String, port: Int) async throws -> (
    raw: Figure, legacy: Figure, tree: Figure
) {
    let payload = Sodium.randomBytes(size)
    let key = FarmKey.generate()
    let source = MemoryBlobs()
    let hashes = [source.put(payload, format: .legacy), source.put(payload, format: .tree)]
    let a = MeshNode(
        settings: settings(group: group, port: port, interval: .milliseconds(200), name: "a"),
        farmKey: key, identity: .generate(), blobSource: source, logger: quiet)
    let b = MeshNode(
        settings: settings(group: group, port: port, interval: .milliseconds(200), name: "b"),
        farmKey: key, identity: .generate(), logger: quiet)
    return try await withNodes([a, b]) {
        guard await waitFor(.seconds(10), { await b.connectedPeers() == [a.nodeID] }) else {
            throw MeshError(.timeout, "The benchmark nodes did not connect.")
        }
        // Warm the holder's chunk-hash caches so the figures are the transfer, not the holder's first pass.
        for hash in hashes { try await b.fetchBlob(hash, from: [a.nodeID], into: MemoryBlobs()) }
        var raw: [Figure] = []
        var fetched: [[Figure]] = [[], []]
        for _ in 0..<rounds {
            raw.append(try await measure(size) { _ = try await rawTCP(payload) })
            for (i, hash) in hashes.enumerated() {
                let sink = MemoryBlobs()
                fetched[i].append(try await measure(size) { try await b.fetchBlob(hash, from: [a.nodeID], into: sink) })
                guard sink.get(hash) == payload else {
                    throw MeshError(.authentication, "The transferred blob differs.")
                }
            }
        }
        return (median(raw), median(fetched[0]), median(fetched[1]))
    }
}

func discoveryLatency(group: String, port: Int, interval: Duration) async throws -> Double {
    let key = FarmKey.generate()
    let old = (0..<4).map {
        MeshNode(
            settings: settings(group: group, port: port, interval: interval, name: "n\($0)"), farmKey: key,
            identity: .generate(), logger: quiet)
    }
    let newcomer = MeshNode(
        settings: settings(group: group, port: port, interval: interval, name: "new"),
        farmKey: key, identity: .generate(), logger: quiet)
    return try await withNodes(old) {
        guard
            await waitFor(
                .seconds(15),
                {
                    for node in old where await node.peers().count != 3 { return false }
                    return true
                })
        else { throw MeshError(.timeout, "The first four nodes did not find each other.") }
        let start = ContinuousClock.now
        return try await withNodes([newcomer]) {
            _ = await waitFor(.seconds(15)) {
                for node in old where await !node.peers().contains(where: { $0.nodeID == newcomer.nodeID }) {
                    return false
                }
                return await newcomer.peers().count == 4
            }
            return seconds(ContinuousClock.now - start)
        }
    }
}

/// CPU and RSS of one node process with four peers (each a child process), sampled from /proc.
func idleCost(group: String, port: Int, sampleSeconds: Int) async throws -> (cpuPercent: Double, rssMiB: Double) {
    let key = FarmKey.generate()
    let me = CommandLine.arguments[0]
    var children: [Process] = []
    for i in 0..<5 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: me)
        p.arguments = ["node", key.token, group, String(port), "n\(i)"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        children.append(p)
    }
    defer {
        for child in children where child.isRunning { child.terminate() }
        for child in children { child.waitUntilExit() }
    }
    try await Task.sleep(for: .seconds(5))  // converge: beacons, handshakes, 4 connections each
    let pid = children[0].processIdentifier
    let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
    func cpuTicks() -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)  // utime + stime
    }
    let before = cpuTicks()
    try await Task.sleep(for: .seconds(sampleSeconds))
    let after = cpuTicks()
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let rssKiB =
        status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
        .flatMap { Double($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
    return ((after - before) / ticks / Double(sampleSeconds) * 100, rssKiB / 1024)
}

// MARK: Main

let args = CommandLine.arguments
if args.count >= 6, args[1] == "node" {
    let key = try FarmKey(token: args[2])
    let node = MeshNode(
        settings: settings(group: args[3], port: Int(args[4])!, interval: .seconds(1), name: args[5]),
        farmKey: key, identity: .generate(), logger: quiet)
    try await node.run()
    exit(0)
}

let group = "239.255.77.\(Int.random(in: 100...250))"
let basePort = Int.random(in: 30_000...50_000)
let cores = ProcessInfo.processInfo.activeProcessorCount
print("meshbench — loopback only (multicast IF 127.0.0.1, TTL 0), \(cores) cores")
print("")
let probe = Sodium.randomBytes(1 << 20)
var t0 = ContinuousClock.now
for _ in 0..<64 { _ = Sodium.blake2b(probe) }
let hashRate = 64.0 * 1.048576 / seconds(ContinuousClock.now - t0)
print(String(format: "single core: BLAKE2b-256 %.0f MB/s (the per-chunk check)", hashRate))
print("")
let rounds = Int(ProcessInfo.processInfo.environment["MESHBENCH_ROUNDS"] ?? "") ?? 5
print("encrypted blob transfer (1 MiB chunks, secretstream) vs raw TCP, memory to memory, side by side:")
print("  legacy address: each chunk checked against its BLAKE2b-256, then the whole blob in finalize (two passes)")
print("  tree address:   each chunk checked once against its leaf, leaves against the root (one pass)")
print("  medians of \(rounds) interleaved rounds; CPU = this process's CPU time (both ends) per MiB moved")
for (i, size) in [16 << 20, 128 << 20].enumerated() {
    let channel = try await channelThroughput(size: size, group: group, port: basePort + 5 + i)
    let r = try await transfer(size: size, rounds: rounds, group: group, port: basePort + i)
    print(
        String(
            format: "  %4d MiB: raw TCP %7.1f MB/s (CPU %.2f ms/MiB) |"
                + " encrypted channel %7.1f MB/s (%3.0f %%) CPU %.2f ms/MiB",
            size >> 20, r.raw.rate, r.raw.cpuPerMiB, channel.rate, channel.rate / r.raw.rate * 100,
            channel.cpuPerMiB))
    for (name, f) in [("legacy", r.legacy), ("tree  ", r.tree)] {
        print(
            String(
                format: "            verified fetch, \(name) address %7.1f MB/s (%3.0f %% of raw TCP) CPU %.2f ms/MiB",
                f.rate, f.rate / r.raw.rate * 100, f.cpuPerMiB))
    }
    print(
        String(
            format: "            tree / legacy: %.2fx the throughput, %.2fx the CPU", r.tree.rate / r.legacy.rate,
            r.tree.cpuPerMiB / r.legacy.cpuPerMiB))
}
print("")
let interval = Duration.milliseconds(500)
let latency = try await discoveryLatency(group: group, port: basePort + 10, interval: interval)
print(
    String(
        format: "discovery: 5th node in all 4 peers' lists (and they in its) after %.0f ms"
            + " = %.2f beacon intervals (%.0f ms)",
        latency * 1000, latency / seconds(interval), seconds(interval) * 1000))
let idle = try await idleCost(group: group, port: basePort + 20, sampleSeconds: 10)
print(
    String(
        format: "idle node with 4 peers (separate processes, 1 s beacons): CPU %.2f %% of one core, RSS %.1f MiB",
        idle.cpuPercent, idle.rssMiB))
