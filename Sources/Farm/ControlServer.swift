import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import Synchronization

// MARK: Server

/// Serves the control socket `DATA/rexnode.sock` (mode 0600): the CLI's only way into the daemon.
///
/// The file mode is the first fence; the second is the peer's credentials (`SO_PEERCRED`): only the daemon's own
/// user and root are answered, so a socket made reachable by a mistake (a permissive umask, a copied folder) still
/// lets no other user in. Lines are capped at `ControlRequestDecoder.maxLineBytes`; junk gets an error answer.
struct ControlServer: Service {
    let path: String
    let logger: Logger
    /// A connection with no request in flight that sends nothing for this long is closed (a client that opened the
    /// socket and went quiet, or sends a line byte by byte, holds no resources for ever).
    var idleTimeout: TimeAmount = .seconds(60)
    /// Connections open at once; one more is answered with an error and closed.
    var maxConnections = 128
    let handler: @Sendable (ControlRequest) async -> ControlReply
    private let open = OpenConnections()

    init(
        path: String, logger: Logger, idleTimeout: TimeAmount = .seconds(60), maxConnections: Int = 128,
        handler: @escaping @Sendable (ControlRequest) async -> ControlReply
    ) {
        self.path = path
        self.logger = logger
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.handler = handler
    }

    func run() async throws {
        let oldUmask = umask(0o177)
        let server: NIOAsyncChannel<NIOAsyncChannel<ControlLine, ByteBuffer>, Never>
        do {
            let idle = idleTimeout
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandlers(
                            IdleStateHandler(readTimeout: idle),
                            ByteToMessageHandler(ControlLineDecoder(maxBytes: ControlRequestDecoder.maxLineBytes)),
                            ControlIdleCloser())
                        return try NIOAsyncChannel<ControlLine, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            umask(oldUmask)
        } catch {
            umask(oldUmask)
            throw FarmError(.io, "Cannot open the control socket \(path): \(error).")
        }
        chmod(path, 0o600)
        logger.debug("control socket ready", metadata: ["path": "\(path)"])
        // Graceful shutdown cancels the accept loop; open requests are cancelled with it.
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    try await server.executeThenClose { inbound in
                        for try await connection in inbound {
                            group.addTask { await serve(connection) }
                        }
                    }
                }
            }
        } catch is CancellationError {
            // The group is shutting down: not a failure.
        }
        unlink(path)
    }

    /// Answers each request line in a task of its own while watching the connection: a client that goes away
    /// before its `submit` is answered (Ctrl-C during a long trace or bake) cancels it, so no job it no longer
    /// waits for is committed. Other requests run to their end.
    private func serve(_ connection: NIOAsyncChannel<ControlLine, ByteBuffer>) async {
        let allowed = await Self.peerAllowed(connection.channel)
        let room = open.enter(limit: maxConnections)
        defer { open.leave() }
        do {
            try await connection.executeThenClose { inbound, outbound in
                guard allowed else {
                    logger.warning("refused a control connection from another user")
                    try await Self.write(.failure(Self.otherUser), to: outbound)
                    return
                }
                guard room else {
                    logger.warning("refused a control connection: too many are open")
                    try await Self.write(.failure(Self.tooMany), to: outbound)
                    return
                }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    var submits = 0
                    for try await line in inbound {
                        guard case .line(let bytes) = line else {
                            // Too long: answered, and the rest of the connection is not read.
                            try await Self.write(.failure(ControlRequestDecoder.tooLong), to: outbound)
                            break
                        }
                        let request: ControlRequest
                        switch ControlRequestDecoder.decode(Array(bytes.readableBytesView)) {
                        case .success(let decoded): request = decoded
                        case .failure(let error):
                            try await Self.write(.failure(error), to: outbound)
                            continue
                        }
                        if case .submit = request { submits += 1 }
                        let handler = self.handler
                        group.addTask { try await Self.write(await handler(request), to: outbound) }
                    }
                    // The client closed its side. Keep the connection until answers are written (closing early
                    // could cut a large answer short), except for a submit nobody waits for.
                    if submits > 0 { group.cancelAll() }
                    try await group.waitForAll()
                }
            }
        } catch {
            logger.debug("control connection ended", metadata: ["error": "\(error)"])
        }
    }

    static let tooMany = FarmError(
        .failed, "The rexnode daemon has too many control connections open; try again in a moment.")

    static let otherUser = FarmError(
        .badInput, "This rexnode daemon answers only its own user and root; run the command as that user.")

    /// Whether the process at the other end runs as this daemon's user or as root (`SO_PEERCRED`; unknown: no).
    static func peerAllowed(_ channel: any Channel) async -> Bool {
        guard let provider = channel as? SocketOptionProvider else { return false }
        let future: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: .socket, name: NIOBSDSocket.Option(rawValue: PeerCredentials.option))
        guard let credentials = try? await future.get() else { return false }
        return credentials.uid == 0 || credentials.uid == getuid()
    }

    private static func write(_ reply: ControlReply, to outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>)
        async throws
    {
        var out = ByteBuffer(bytes: reply.json)
        out.writeInteger(UInt8(ascii: "\n"))
        try await outbound.write(out)
    }
}

/// How many control connections are open (each counted from accept to close).
final class OpenConnections: Sendable {
    private let count = Atomic<Int>(0)

    /// Counts one more; false if that one is over `limit` (it is counted all the same until `leave`).
    func enter(limit: Int) -> Bool { count.wrappingAdd(1, ordering: .relaxed).newValue <= limit }
    func leave() { count.wrappingSubtract(1, ordering: .relaxed) }
}

/// Closes a control connection the `IdleStateHandler` reports as idle, unless a request on it is still being
/// answered (a long `submit` or `wait` sends nothing while the daemon works): each request line is answered by
/// exactly one write, so lines read minus answers written is the work in flight.
final class ControlIdleCloser: ChannelDuplexHandler, Sendable {
    typealias InboundIn = ControlLine
    typealias InboundOut = ControlLine
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let inFlight = Atomic<Int>(0)

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        inFlight.wrappingAdd(1, ordering: .relaxed)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        inFlight.wrappingSubtract(1, ordering: .relaxed)
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if inFlight.load(ordering: .relaxed) <= 0 { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// `struct ucred` (Linux): what `SO_PEERCRED` reports about the process that connected.
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = UInt32.max
    var gid: UInt32 = UInt32.max
    /// `SO_PEERCRED` (asm-generic/socket.h).
    static let option: CInt = 17
}

// MARK: Framing

/// One unit the control socket's framing hands on: a request line, or the news that a line passed the cap.
enum ControlLine: Sendable {
    case line(ByteBuffer)
    case tooLong
}

/// Newline-delimited framing with a size cap: a line longer than `maxBytes` is never buffered whole; the decoder
/// reports `.tooLong` once and discards everything after it (the server answers and closes). Bytes left without a
/// newline at the end of the stream (a truncated request) are dropped.
struct ControlLineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ControlLine

    let maxBytes: Int
    /// How many bytes of the current line were already searched for a newline.
    private var scanned = 0
    private var discarding = false

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if discarding {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .needMoreData
        }
        let view = buffer.readableBytesView
        if let newline = view.dropFirst(scanned).firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - view.startIndex
            scanned = 0
            guard length <= maxBytes else { return overflow(context: context, buffer: &buffer) }
            let line = buffer.readSlice(length: length)!
            buffer.moveReaderIndex(forwardBy: 1)
            context.fireChannelRead(wrapInboundOut(.line(line)))
            return .continue
        }
        scanned = view.count
        return view.count > maxBytes ? overflow(context: context, buffer: &buffer) : .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        while try decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        return .needMoreData
    }

    private mutating func overflow(context: ChannelHandlerContext, buffer: inout ByteBuffer) -> DecodingState {
        discarding = true
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        context.fireChannelRead(wrapInboundOut(.tooLong))
        return .needMoreData
    }
}

// MARK: Client

/// Sends one request to a node's daemon and returns its answer.
public enum ControlClient {
    /// Whether a daemon listens on the node's control socket now. A daemon killed with SIGKILL leaves its socket file
    /// behind; connecting to it is refused, which is how a dead daemon is told from a live one.
    public static func daemonListening(_ data: DataDirectory) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(data.socket.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.count < capacity else { return FileManager.default.fileExists(atPath: data.socket) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path)
            raw[path.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        // Only a refused connection or a missing socket means no daemon: a full backlog (EAGAIN) is a busy one.
        return connected == 0 || (errno != ECONNREFUSED && errno != ENOENT)
    }

    public static func send(_ request: ControlRequest, data: DataDirectory) async throws(FarmError) -> JSONValue {
        guard FileManager.default.fileExists(atPath: data.socket) else {
            throw FarmError(
                .notRunning, "No rexnode daemon is running for \(data.root); start one with `rexnode join`.")
        }
        let response: ControlResponse
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: data.socket) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(LineBasedFrameDecoder()))
                        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            response = try await channel.executeThenClose { inbound, outbound in
                var out = ByteBuffer(bytes: try JSONEncoder().encode(request))
                out.writeInteger(UInt8(ascii: "\n"))
                try await outbound.write(out)
                for try await line in inbound {
                    return try JSONDecoder().decode(ControlResponse.self, from: Data(line.readableBytesView))
                }
                throw FarmError(.protocolError, "The daemon closed the connection without answering.")
            }
        } catch let error as FarmError {
            throw error
        } catch {
            throw FarmError(
                .notRunning,
                "Cannot reach the rexnode daemon for \(data.root) (\(ErrorSentence.describe(error))); is `rexnode join` "
                    + "running?")
        }
        if let message = response.error { throw FarmError(response.code ?? .failed, message) }
        return response.result ?? .null
    }
}
