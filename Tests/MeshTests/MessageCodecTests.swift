import NIOCore
import NIOEmbedded
import Testing

@testable import Mesh

@Suite struct MessageCodecTests {
    static let samples: [MeshMessage] = [
        .ping(1), .pong(UInt64.max), .raft([]), .raft([1, 2, 3]),
        .controlRequest(id: 9, payload: Array("hello".utf8)),
        .controlResponse(id: 9, result: .success([0, 1])),
        .controlResponse(id: 10, result: .failure("no leader")),
        .blobQuery(id: 3, hash: [UInt8](repeating: 7, count: 32)),
        .blobInfo(id: 3, info: nil),
        .blobInfo(
            id: 4,
            info: .init(
                hash: [UInt8](repeating: 1, count: 32), size: 3 << 20, chunkSize: 1 << 20,
                chunkHashes: [[UInt8]](repeating: [UInt8](repeating: 2, count: 32), count: 3))),
        .blobRead(id: 5, hash: [UInt8](repeating: 7, count: 32), offset: 1 << 20, length: 1 << 20),
        .blobData(id: 5, offset: 1 << 20, data: [9, 9, 9]),
        .blobError(id: 6, message: "gone"),
    ]

    @Test(arguments: samples) func roundTrip(_ message: MeshMessage) throws {
        #expect(try MessageCodec.decode(MessageCodec.encode(message)) == message)
    }

    @Test(arguments: samples) func everyTruncationIsRejected(_ message: MeshMessage) {
        let bytes = MessageCodec.encode(message)
        for n in 0..<bytes.count {
            #expect(throws: MeshError.self) { try MessageCodec.decode(Array(bytes.prefix(n))) }
        }
        #expect(throws: MeshError.self) { try MessageCodec.decode(bytes + [0]) }
    }

    @Test func unknownTypeAndVersionAreRejected() {
        #expect(throws: MeshError.self) { try MessageCodec.decode([1, 0x77, 0, 0]) }
        #expect(throws: MeshError.self) { try MessageCodec.decode([2, 0x01, 0, 0, 0, 0, 0, 0, 0, 1]) }
    }

    @Test func oversizedPayloadLengthIsRejected() {
        #expect(throws: MeshError.self) {
            try MessageCodec.decode([1, 0x10, 0xff, 0xff, 0xff, 0xff], maxPayload: 1024)
        }
        #expect(throws: MeshError.self) {
            try MessageCodec.decode(MessageCodec.encode(.raft([UInt8](repeating: 0, count: 2048))), maxPayload: 1024)
        }
    }

    @Test func inconsistentChunkCountIsRejected() {
        var bytes = MessageCodec.encode(Self.samples[9])
        // size field sits after version, type, id, found flag, hash: make it disagree with the hash count.
        bytes[2 + 8 + 1 + 32 + 7] = 1
        #expect(throws: MeshError.self) { try MessageCodec.decode(bytes) }
    }
}

@Suite struct FramingTests {
    @Test func frameDecoderFedOneByteAtATime() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(maxFrame: 64)))
        let payloads: [[UInt8]] = [[1, 2, 3], [], [UInt8](repeating: 5, count: 64)]
        var stream: [UInt8] = []
        for p in payloads { stream += [0, 0, 0, UInt8(p.count)] + p }
        var frames: [[UInt8]] = []
        for byte in stream {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
            while var frame = try channel.readInbound(as: ByteBuffer.self) {
                frames.append(frame.readBytes(length: frame.readableBytes)!)
            }
        }
        #expect(frames == payloads)
        #expect(try channel.finish().isClean)
    }

    @Test func hugeLengthPrefixIsRejectedBeforeAllocation() throws {
        let counters = MeshCounters()
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(maxFrame: 1024, counters: counters)))
        #expect(throws: MeshError.self) { try channel.writeInbound(ByteBuffer(bytes: [0xff, 0xff, 0xff, 0xf0])) }
        #expect(counters[.framesTooLarge] == 1)
        _ = try? channel.finish()
    }

    @Test func encoderPrependsLength() throws {
        let channel = EmbeddedChannel(handler: FrameEncoder())
        try channel.writeOutbound(ByteBuffer(bytes: [7, 8]))
        var out: [UInt8] = []
        while var b = try channel.readOutbound(as: ByteBuffer.self) { out += b.readBytes(length: b.readableBytes)! }
        #expect(out == [0, 0, 0, 2, 7, 8])
        _ = try channel.finish()
    }

    @Test func framingParseLimits() {
        #expect(Framing.parse(prefix: [0, 0], available: 2, maxFrame: 10) == .needMore)
        #expect(Framing.parse(prefix: [0, 0, 0, 11], available: 100, maxFrame: 10) == .tooLarge(length: 11))
        #expect(Framing.parse(prefix: [0, 0, 0, 10], available: 13, maxFrame: 10) == .needMore)
        #expect(Framing.parse(prefix: [0, 0, 0, 10], available: 14, maxFrame: 10) == .frame(length: 10))
    }
}

@Suite struct BulkPathTests {
    /// The handler's fast path must produce and accept exactly the bytes of the general codec.
    @Test(arguments: [
        MeshMessage.raft([]), .raft([1, 2, 3]), .blobData(id: 7, offset: 1 << 20, data: [4, 5]),
        .blobData(id: 0, offset: 0, data: []),
    ])
    func fastPathMatchesTheCodec(_ message: MeshMessage) throws {
        let channel = EmbeddedChannel(handler: MessageCodecHandler(maxPayload: 1 << 20, counters: nil))
        try channel.writeOutbound(message)
        var out = try #require(try channel.readOutbound(as: ByteBuffer.self))
        let bytes = out.readBytes(length: out.readableBytes)!
        #expect(bytes == MessageCodec.encode(message))
        try channel.writeInbound(ByteBuffer(bytes: bytes))
        #expect(try channel.readInbound(as: MeshMessage.self) == message)
        // Trailing byte: the fast path declines and the general decoder rejects it.
        #expect(throws: (any Error).self) { try channel.writeInbound(ByteBuffer(bytes: bytes + [0])) }
        _ = try? channel.finish()
    }
}
