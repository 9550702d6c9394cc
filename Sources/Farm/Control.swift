import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

// MARK: Messages

/// A request on the control socket: one JSON object per line; the answer is one line; the client closes.
public struct ControlRequest: Codable, Sendable {
    public enum Op: String, Codable, Sendable { case submit, peers, jobs, status, cancel, ledger, leave, token, fetch }

    public var op: Op
    public var path: String?
    public var frames: String?
    public var chunk: Int?
    public var output: String?
    public var name: String?
    public var priority: Int?
    public var job: String?
    /// For `status`: leave out the per-frame list (cheap enough to poll).
    public var brief: Bool?
    /// For `status`: the frames-done count and state the client last saw. The daemon answers as soon as either
    /// differs (or after about a second), so a waiting client hears of each committed frame without polling.
    public var seenDone: Int?
    public var seenState: String?

    public init(op: Op) { self.op = op }
}

/// What the server writes for one request: `{"result": …}` or `{"error": …, "code": …}`, encoded once from a typed
/// value (a big job's status is megabytes; it is not built twice).
public struct ControlReply: Sendable {
    let json: Data

    private struct Success<T: Encodable>: Encodable { var result: T }

    static func success(_ value: some Encodable) -> ControlReply {
        do {
            return ControlReply(json: try JSONEncoder().encode(Success(result: value)))
        } catch {
            return failure(FarmError(.failed, "The answer could not be encoded.", cause: error))
        }
    }

    static func failure(_ error: FarmError) -> ControlReply {
        ControlReply(json: try! JSONEncoder().encode(ControlResponse(error: error)))
    }
}

/// The answer: either `error` (one sentence) or the op's result, already in the CLI contract's JSON shape.
public struct ControlResponse: Codable, Sendable {
    public var error: String?
    public var code: FarmError.Code?
    public var result: JSONValue?

    public init(result: JSONValue) { self.result = result }

    public init(error: FarmError) {
        self.error = error.message
        code = error.code
    }
}

/// A JSON value, so responses can carry the contract's shapes without one struct per command.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? c.decode(Int64.self) {
            self = .int(i)
        } else if let d = try? c.decode(Double.self) {
            self = .double(d)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var int: Int? { if case .int(let i) = self { Int(i) } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var array: [JSONValue]? { if case .array(let a) = self { a } else { nil } }

    /// Pretty, key-sorted JSON text (what `--json` prints).
    public func jsonText(pretty: Bool = true) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys]
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }

    /// Converts any Encodable value (through JSON) into a JSONValue.
    public static func from(_ value: some Encodable) -> JSONValue {
        let data = try! JSONEncoder().encode(value)
        return try! JSONDecoder().decode(JSONValue.self, from: data)
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByDictionaryLiteral, ExpressibleByArrayLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(Int64(value)) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { $1 }))
    }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(nilLiteral: ()) { self = .null }
}

extension JSONValue {
    public init(_ s: String?) { self = s.map(JSONValue.string) ?? .null }
    public init(_ i: Int) { self = .int(Int64(i)) }
}

// MARK: Server

/// Serves the control socket `DATA/rexnode.sock` (mode 0600): the CLI's only way into the daemon.
struct ControlServer: Service {
    let path: String
    let logger: Logger
    let handler: @Sendable (ControlRequest) async -> ControlReply

    func run() async throws {
        let oldUmask = umask(0o177)
        let server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(LineBasedFrameDecoder()))
                        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
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

    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                for try await line in inbound {
                    let reply: ControlReply
                    let bytes = Data(line.readableBytesView)
                    if let request = try? JSONDecoder().decode(ControlRequest.self, from: bytes) {
                        reply = await handler(request)
                    } else {
                        reply = .failure(FarmError(.protocolError, "The request was not understood."))
                    }
                    var out = ByteBuffer(bytes: reply.json)
                    out.writeInteger(UInt8(ascii: "\n"))
                    // Keep the connection until the client closes it: closing here could cut a large answer short.
                    try await outbound.write(out)
                }
            }
        } catch {
            logger.debug("control connection ended", metadata: ["error": "\(error)"])
        }
    }
}

// MARK: Client

/// Sends one request to a node's daemon and returns its answer.
public enum ControlClient {
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
                "Cannot reach the rexnode daemon for \(data.root) (\(error)); is `rexnode join` running?")
        }
        if let message = response.error { throw FarmError(response.code ?? .failed, message) }
        return response.result ?? .null
    }
}
