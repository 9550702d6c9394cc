import NIOCore
import Synchronization

// The peer connection pipeline, bottom to top:
//   FrameDecoder / FrameEncoder  — 4-byte length prefix with a size cap
//   HandshakeHandler             — authenticates the peer, then passes frames through
//   StreamCryptoHandler          — secretstream decryption / encryption per direction
//   MessageCodecHandler          — bytes ↔ MeshMessage, and closes the connection on any error

// MARK: Framing

/// Splits the byte stream into frames; a length above the cap closes the connection before any allocation.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer
    let maxFrame: Int
    let counters: MeshCounters?

    public init(maxFrame: Int, counters: MeshCounters? = nil) {
        self.maxFrame = maxFrame
        self.counters = counters
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let prefix = buffer.readableBytesView.prefix(Framing.prefixBytes)
        switch Framing.parse(prefix: prefix, available: buffer.readableBytes, maxFrame: maxFrame) {
        case .needMore:
            return .needMoreData
        case .tooLarge(let length):
            counters?.increment(.framesTooLarge)
            throw MeshError(.tooLarge, "A peer announced a \(length)-byte frame; the limit is \(maxFrame) bytes.")
        case .frame(let length):
            buffer.moveReaderIndex(forwardBy: Framing.prefixBytes)
            context.fireChannelRead(Self.wrapInboundOut(buffer.readSlice(length: length)!))
            return .continue
        }
    }

    public mutating func decodeLast(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
    ) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Prepends the 4-byte big-endian length (written as a separate small buffer: the payload is not copied).
public final class FrameEncoder: ChannelOutboundHandler {
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let payload = Self.unwrapOutboundIn(data)
        var prefix = context.channel.allocator.buffer(capacity: 4)
        prefix.writeInteger(UInt32(payload.readableBytes))
        context.write(Self.wrapOutboundOut(prefix), promise: nil)
        context.write(Self.wrapOutboundOut(payload), promise: promise)
    }
}

// MARK: Handshake

/// Sent up the pipeline when the handshake succeeds, carrying the keys for `StreamCryptoHandler`.
final class SecureSessionEstablished {
    let keys: SessionKeys
    init(keys: SessionKeys) { self.keys = keys }
}

/// Runs `HandshakeStateMachine` on the connection; closes it on failure or after `timeout`.
final class HandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: HandshakeStateMachine
    private let timeout: TimeAmount
    private let counters: MeshCounters?
    private var timeoutTask: Scheduled<Void>?
    private var started = false
    /// Completes with the authenticated peer, or fails if the handshake does not finish.
    let done: EventLoopPromise<PeerIdentity>

    init(machine: HandshakeStateMachine, timeout: TimeAmount, counters: MeshCounters?, eventLoop: EventLoop) {
        self.machine = machine
        self.timeout = timeout
        self.counters = counters
        self.done = eventLoop.makePromise()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { begin(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        begin(context: context)
        context.fireChannelActive()
    }

    private func begin(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timeoutTask = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            guard !handler.machine.isComplete else { return }
            handler.counters?.increment(.handshakeTimeouts)
            handler.fail(context: context, MeshError(.timeout, "A peer did not finish the handshake in time."))
        }
        if machine.role == .initiator {
            let hello = machine.start()
            context.writeAndFlush(Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: hello)), promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if machine.isComplete {
            context.fireChannelRead(data)
            return
        }
        var frame = Self.unwrapInboundIn(data)
        let bytes = frame.readBytes(length: frame.readableBytes) ?? []
        do {
            switch try machine.receive(bytes) {
            case .send(let reply):
                context.writeAndFlush(
                    Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: reply)), promise: nil)
            case .sendAndComplete(let reply, let keys):
                context.writeAndFlush(
                    Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: reply)), promise: nil)
                finish(context: context, keys: keys)
            case .complete(let keys):
                finish(context: context, keys: keys)
            }
        } catch {
            counters?.increment(error.code == .authentication ? .peersDenied : .handshakeFailures)
            fail(context: context, error)
        }
    }

    private func finish(context: ChannelHandlerContext, keys: SessionKeys) {
        timeoutTask?.cancel()
        context.fireUserInboundEventTriggered(SecureSessionEstablished(keys: keys))
        done.succeed(keys.peer)
    }

    private func fail(context: ChannelHandlerContext, _ error: MeshError) {
        timeoutTask?.cancel()
        done.fail(error)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !machine.isComplete {
            counters?.increment(.handshakeFailures)
            done.fail(error)
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timeoutTask?.cancel()
        done.fail(MeshError(.closed, "The connection closed during the handshake."))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // A connect that fails never becomes active: the promise must still complete.
        timeoutTask?.cancel()
        done.fail(MeshError(.closed, "The connection closed during the handshake."))
    }
}

// MARK: Encryption

/// Decrypts inbound frames and encrypts outbound ones; holds outbound writes until the handshake is done.
final class StreamCryptoHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var keys: SessionKeys?
    private var pending: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var pendingFlush = false
    private let counters: MeshCounters?

    init(counters: MeshCounters?) { self.counters = counters }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let established = event as? SecureSessionEstablished else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        keys = established.keys
        let queued = pending
        pending = []
        for (buffer, promise) in queued {
            context.write(Self.wrapOutboundOut(seal(buffer, context: context)), promise: promise)
        }
        if pendingFlush || !queued.isEmpty { context.flush() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let keys else {
            context.fireErrorCaught(MeshError(.protocolViolation, "Data arrived before the handshake finished."))
            context.close(promise: nil)
            return
        }
        let cipher = Self.unwrapInboundIn(data)
        let plainCount = cipher.readableBytes - SecretStreamPush.overhead
        guard plainCount >= 0 else {
            counters?.increment(.framesUndecryptable)
            context.fireErrorCaught(MeshError(.authentication, "A peer sent a frame too short to be encrypted."))
            context.close(promise: nil)
            return
        }
        var plain = context.channel.allocator.buffer(capacity: plainCount)
        let ok = cipher.withUnsafeReadableBytes { c in
            plain.writeWithUnsafeMutableBytes(minimumWritableBytes: plainCount) { out in
                keys.pull.open(c, into: UnsafeMutableRawBufferPointer(rebasing: out[0..<plainCount])) ? plainCount : 0
            }
        }
        guard ok == plainCount, !keys.pull.failed else {
            counters?.increment(.framesUndecryptable)
            context.fireErrorCaught(
                MeshError(.authentication, "A frame failed to decrypt (tampered, replayed or reordered)."))
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(Self.wrapInboundOut(plain))
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let plain = Self.unwrapOutboundIn(data)
        guard keys != nil else {
            pending.append((plain, promise))
            return
        }
        context.write(Self.wrapOutboundOut(seal(plain, context: context)), promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        if keys == nil { pendingFlush = true } else { context.flush() }
    }

    private func seal(_ plain: ByteBuffer, context: ChannelHandlerContext) -> ByteBuffer {
        let count = plain.readableBytes + SecretStreamPush.overhead
        var out = context.channel.allocator.buffer(capacity: count)
        _ = plain.withUnsafeReadableBytes { p in
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { o in
                keys!.push.seal(p, into: UnsafeMutableRawBufferPointer(rebasing: o[0..<count]))
                return count
            }
        }
        return out
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error = MeshError(.closed, "The connection closed before the handshake finished.")
        for (_, promise) in pending { promise?.fail(error) }
        pending = []
        context.fireChannelInactive()
    }
}

// MARK: Messages

/// Decodes plaintext frames into `MeshMessage` and encodes outbound ones; closes the connection on any
/// error that reaches it, so one bad connection never lingers half-open.
final class MessageCodecHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = MeshMessage
    typealias OutboundIn = MeshMessage
    typealias OutboundOut = ByteBuffer

    private let counters: MeshCounters?
    private let maxPayload: Int

    init(maxPayload: Int, counters: MeshCounters?) {
        self.maxPayload = maxPayload
        self.counters = counters
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = Self.unwrapInboundIn(data)
        if let message = Self.decodeBulk(&buffer, maxPayload: maxPayload) {
            context.fireChannelRead(Self.wrapInboundOut(message))
            return
        }
        let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
        do {
            let message = try MessageCodec.decode(bytes, maxPayload: maxPayload)
            context.fireChannelRead(Self.wrapInboundOut(message))
        } catch {
            counters?.increment(.messagesMalformed)
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    /// Fast path for the two bulk messages (`raft`, `blobData`): one copy instead of three. Same layout as
    /// `MessageCodec`; anything unusual returns nil and goes through the general decoder.
    static func decodeBulk(_ buffer: inout ByteBuffer, maxPayload: Int) -> MeshMessage? {
        let start = buffer.readerIndex
        guard let version: UInt8 = buffer.getInteger(at: start), version == MessageCodec.version,
            let tag: UInt8 = buffer.getInteger(at: start + 1)
        else { return nil }
        switch tag {
        case MessageCodec.Tag.raft.rawValue:
            guard let length: UInt32 = buffer.getInteger(at: start + 2), Int(length) <= maxPayload,
                buffer.readableBytes == 6 + Int(length),
                let payload = buffer.getBytes(at: start + 6, length: Int(length))
            else { return nil }
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .raft(payload)
        case MessageCodec.Tag.blobData.rawValue:
            guard let id: UInt64 = buffer.getInteger(at: start + 2),
                let offset: UInt64 = buffer.getInteger(at: start + 10),
                let length: UInt32 = buffer.getInteger(at: start + 18), Int(length) <= MessageCodec.maxChunkBytes,
                buffer.readableBytes == 22 + Int(length),
                let data = buffer.getBytes(at: start + 22, length: Int(length))
            else { return nil }
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .blobData(id: id, offset: offset, data: data)
        default:
            return nil
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let message = Self.unwrapOutboundIn(data)
        switch message {
        case .raft(let payload):
            var buffer = context.channel.allocator.buffer(capacity: payload.count + 6)
            buffer.writeInteger(MessageCodec.version)
            buffer.writeInteger(MessageCodec.Tag.raft.rawValue)
            buffer.writeInteger(UInt32(payload.count))
            buffer.writeBytes(payload)
            context.write(Self.wrapOutboundOut(buffer), promise: promise)
            return
        case .blobData(let id, let offset, let payload):
            var buffer = context.channel.allocator.buffer(capacity: payload.count + 22)
            buffer.writeInteger(MessageCodec.version)
            buffer.writeInteger(MessageCodec.Tag.blobData.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(offset)
            buffer.writeInteger(UInt32(payload.count))
            buffer.writeBytes(payload)
            context.write(Self.wrapOutboundOut(buffer), promise: promise)
            return
        default:
            break
        }
        let bytes = MessageCodec.encode(message)
        context.write(Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let mesh = error as? MeshError, mesh.code == .tooLarge || mesh.code == .protocolViolation {
            // counted where detected
        } else {
            counters?.increment(.connectionErrors)
        }
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }
}

// MARK: Pipeline assembly

/// Settings of one peer connection's pipeline.
struct ConnectionPipeline {
    var identity: NodeIdentity
    var farmKey: FarmKey
    var maxFrame: Int
    var handshakeTimeout: TimeAmount
    var counters: MeshCounters?
    var authorize: @Sendable ([UInt8]) -> Bool
    /// A responder's older keys, accepted from members only (the previous epoch during the overlap).
    var olderKeys: [FarmKey] = []
    var isMember: @Sendable ([UInt8]) -> Bool = { _ in false }
    /// Where Raft messages go as soon as they are decoded (none: they travel up with the rest).
    var raftTap: RaftTap?

    /// Adds the four layers; returns the handshake handler's completion future.
    func install(
        on channel: Channel, role: HandshakeStateMachine.Role, expectedPeer: [UInt8]?
    ) throws -> EventLoopFuture<PeerIdentity> {
        let machine = HandshakeStateMachine(
            role: role, identity: identity, farmKey: farmKey, expectedPeer: expectedPeer, authorize: authorize,
            olderKeys: role == .responder ? olderKeys : [], isMember: isMember)
        let handshake = HandshakeHandler(
            machine: machine, timeout: handshakeTimeout, counters: counters, eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(FrameDecoder(maxFrame: maxFrame, counters: counters)),
            FrameEncoder(),
            handshake,
            StreamCryptoHandler(counters: counters),
            MessageCodecHandler(maxPayload: maxFrame, counters: counters),
        ])
        if let raftTap { try channel.pipeline.syncOperations.addHandler(RaftTapHandler(tap: raftTap)) }
        return handshake.done.futureResult
    }
}

// MARK: Raft's fast path

/// Where a node's Raft messages go the moment a connection decodes them: set once by the layer above. Called on
/// the connection's event loop, so the handler must only hand the bytes over (RaftNode.receive does).
public final class RaftTap: Sendable {
    public typealias Handler = @Sendable (_ from: String, _ bytes: [UInt8]) -> Void
    private let handler = Mutex<Handler?>(nil)

    public init() {}

    func set(_ handler: Handler?) { self.handler.withLock { $0 = handler } }

    /// Hands the message over; false when no handler is set (the message then travels up as before).
    func deliver(from peer: String, _ bytes: [UInt8]) -> Bool {
        guard let handler = handler.withLock({ $0 }) else { return false }
        handler(peer, bytes)
        return true
    }
}

/// Takes `.raft` messages out of the pipeline on the event loop and gives them to the `RaftTap`: they never wait
/// for the async channel, the Swift pool or an actor. Learns the peer from the handshake's event.
final class RaftTapHandler: ChannelInboundHandler {
    typealias InboundIn = MeshMessage
    typealias InboundOut = MeshMessage

    private let tap: RaftTap
    private var peer: String?

    init(tap: RaftTap) { self.tap = tap }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let established = event as? SecureSessionEstablished { peer = established.keys.peer.nodeID }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .raft(let bytes) = Self.unwrapInboundIn(data), let peer, tap.deliver(from: peer, bytes) { return }
        context.fireChannelRead(data)
    }
}
