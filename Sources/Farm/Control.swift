import Foundation

// MARK: Messages

/// A request on the control socket. On the wire: one JSON object per line, `{"op": …, …fields}`; the answer is
/// one line; the client closes. A request missing what its op needs is refused with one sentence.
public enum ControlRequest: Sendable, Equatable {
    case submit(SubmitRequest)
    case peers
    case jobs
    /// `brief` leaves out the per-frame list; `seen` makes the daemon wait (about a second at most) until the job
    /// differs from what the client last saw.
    case status(job: String, brief: Bool = false, seen: SeenJob? = nil)
    case cancel(job: String)
    /// The retained applied log from index `from` on (`rexnode ledger --from INDEX`).
    case ledger(from: UInt64 = 1)
    case leave
    case token
    case fetch(job: String, output: String)
    /// How far the submit carrying `ticket` is (asked on a second connection while the submit is answered).
    case progress(ticket: String)
    /// Steering a job: pause, resume, retry, priority, rerun, remove (each one ledger command).
    case steer(job: String, action: JobAction)

    /// What `steer` does to its job.
    public enum JobAction: Sendable, Equatable {
        case pause, resume
        /// Failed frames back to the queue: those in the frame spec, or all of them.
        case retry(frames: String?)
        case priority(Int)
        /// A new job from the same files and settings; `output` is where the CLI would put a new job's frames.
        case rerun(output: String?)
        /// Drops the job and its files everywhere; a job that is not finished needs `force`.
        case remove(force: Bool)
    }

    /// Blender's output for a frame of a job (every attempt the farm kept), or without a frame the job's failed
    /// frames' last attempts (`rexnode log`).
    case log(job: String, frame: Int?)
    /// `peers --all`: every machine discovery sees, members or not (`peers` shows members only).
    case allPeers
    /// `leave --force`: leave even when fewer than 3 voters would remain.
    case forceLeave
    /// `rexnode recover`: after a lost quorum, the live members become the farm.
    case recover
    /// `rexnode rotate-key`: a new farm key for every member, committed through the log.
    case rotateKey
    /// `rexnode revoke NODE`: remove a member and rotate the key with its identity denied for good.
    case revoke(node: String)

    /// What a waiting client last saw of a job.
    public struct SeenJob: Sendable, Equatable {
        public var framesDone: Int
        public var state: String

        public init(framesDone: Int, state: String) {
            self.framesDone = framesDone
            self.state = state
        }
    }
}

/// What `rexnode submit` asks for, checked again by the daemon (it trusts no client).
public struct SubmitRequest: Sendable, Equatable {
    public var path: String
    public var frames: String?
    public var chunk: Int?
    public var output: String
    public var name: String?
    public var priority: Int?
    /// Submit even though files the scene uses are missing (they render as Blender renders a missing file).
    public var allowMissing: Bool
    /// Render with the scene's Python drivers and scripts running (Blender's `-y`).
    public var trustScripts: Bool
    /// A client's name for this submit, to ask how far it is (`ControlRequest.progress`).
    public var ticket: String?
    /// `--tags T1,T2`: only nodes carrying every one render the job (checked by the daemon).
    public var tags: String?
    /// `--tiles CxR`: every frame renders as C×R tiles on the farm's slots, then is assembled.
    public var tiles: String?
    /// `--on-done CMD`: this daemon runs `sh -c CMD` once when the job ends, its JSON on stdin.
    public var onDone: String?
    /// `--video`: this daemon makes `NAME.mp4` next to the output folder when the job is done.
    public var video: Bool = false

    public init(
        path: String, frames: String? = nil, chunk: Int? = nil, output: String, name: String? = nil,
        priority: Int? = nil, allowMissing: Bool = false, trustScripts: Bool = false, ticket: String? = nil,
        tags: String? = nil, tiles: String? = nil, onDone: String? = nil, video: Bool = false
    ) {
        self.onDone = onDone
        self.video = video
        self.tags = tags
        self.tiles = tiles
        self.path = path
        self.frames = frames
        self.chunk = chunk
        self.output = output
        self.name = name
        self.priority = priority
        self.allowMissing = allowMissing
        self.trustScripts = trustScripts
        self.ticket = ticket
    }
}

extension ControlRequest: Codable {
    private enum Op: String, Codable {
        case submit, peers, jobs, status, cancel, ledger, leave, token, fetch, progress, log
        case pause, resume, retry, priority, rerun, remove
        case allPeers, forceLeave, recover
        case rotateKey, revoke
    }

    private enum Key: String, CodingKey {
        case op, path, frames, chunk, output, name, priority, job, brief, seenDone, seenState, allowMissing
        case trustScripts, ticket, force, frame, tags, tiles
        case node, onDone, video, from
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        func need(_ key: Key, _ sentence: String) throws -> String {
            guard let value = try c.decodeIfPresent(String.self, forKey: key), !value.isEmpty else {
                throw FarmError(.badInput, sentence)
            }
            return value
        }
        let op: Op
        do {
            op = try c.decode(Op.self, forKey: .op)
        } catch {
            throw FarmError(.protocolError, "The request was not understood.", cause: error)
        }
        switch op {
        case .submit:
            self = .submit(
                SubmitRequest(
                    path: try need(.path, "submit needs a .blend file."),
                    frames: try c.decodeIfPresent(String.self, forKey: .frames),
                    chunk: try c.decodeIfPresent(Int.self, forKey: .chunk),
                    output: try need(.output, "submit needs an output folder."),
                    name: try c.decodeIfPresent(String.self, forKey: .name),
                    priority: try c.decodeIfPresent(Int.self, forKey: .priority),
                    allowMissing: try c.decodeIfPresent(Bool.self, forKey: .allowMissing) ?? false,
                    trustScripts: try c.decodeIfPresent(Bool.self, forKey: .trustScripts) ?? false,
                    ticket: try c.decodeIfPresent(String.self, forKey: .ticket),
                    tags: try c.decodeIfPresent(String.self, forKey: .tags),
                    tiles: try c.decodeIfPresent(String.self, forKey: .tiles)))
            if case .submit(var r) = self {
                r.onDone = try c.decodeIfPresent(String.self, forKey: .onDone)
                r.video = try c.decodeIfPresent(Bool.self, forKey: .video) ?? false
                self = .submit(r)
            }
        case .peers: self = .peers
        case .jobs: self = .jobs
        case .status:
            let done = try c.decodeIfPresent(Int.self, forKey: .seenDone)
            let state = try c.decodeIfPresent(String.self, forKey: .seenState)
            self = .status(
                job: try need(.job, "Name a job (see `rexnode jobs`)."),
                brief: try c.decodeIfPresent(Bool.self, forKey: .brief) ?? false,
                seen: done.flatMap { d in state.map { SeenJob(framesDone: d, state: $0) } })
        case .cancel: self = .cancel(job: try need(.job, "Name a job (see `rexnode jobs`)."))
        case .ledger:
            let from = try c.decodeIfPresent(Int64.self, forKey: .from) ?? 1
            guard from >= 1 else { throw FarmError(.badInput, "--from needs a log index of 1 or more.") }
            self = .ledger(from: UInt64(from))
        case .leave: self = .leave
        case .token: self = .token
        case .progress: self = .progress(ticket: try need(.ticket, "progress needs a ticket."))
        case .log:
            self = .log(
                job: try need(.job, "Name a job (see `rexnode jobs`)."),
                frame: try c.decodeIfPresent(Int.self, forKey: .frame))
        case .allPeers: self = .allPeers
        case .forceLeave: self = .forceLeave
        case .recover: self = .recover
        case .rotateKey: self = .rotateKey
        case .revoke: self = .revoke(node: try need(.node, "Name a machine to revoke (see `rexnode peers`)."))
        case .fetch:
            self = .fetch(
                job: try need(.job, "Name a job (see `rexnode jobs`)."),
                output: try need(.output, "fetch needs --output DIR."))
        case .pause, .resume, .retry, .priority, .rerun, .remove:
            let job = try need(.job, "Name a job (see `rexnode jobs`).")
            let action: JobAction
            switch op {
            case .pause: action = .pause
            case .resume: action = .resume
            case .retry: action = .retry(frames: try c.decodeIfPresent(String.self, forKey: .frames))
            case .priority:
                guard let priority = try c.decodeIfPresent(Int.self, forKey: .priority) else {
                    throw FarmError(.badInput, "priority needs a number.")
                }
                action = .priority(priority)
            case .rerun: action = .rerun(output: try c.decodeIfPresent(String.self, forKey: .output))
            default: action = .remove(force: try c.decodeIfPresent(Bool.self, forKey: .force) ?? false)
            }
            self = .steer(job: job, action: action)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        switch self {
        case .submit(let r):
            try c.encode(Op.submit, forKey: .op)
            try c.encode(r.path, forKey: .path)
            try c.encodeIfPresent(r.frames, forKey: .frames)
            try c.encodeIfPresent(r.chunk, forKey: .chunk)
            try c.encode(r.output, forKey: .output)
            try c.encodeIfPresent(r.name, forKey: .name)
            try c.encodeIfPresent(r.priority, forKey: .priority)
            if r.allowMissing { try c.encode(true, forKey: .allowMissing) }
            if r.trustScripts { try c.encode(true, forKey: .trustScripts) }
            try c.encodeIfPresent(r.ticket, forKey: .ticket)
            try c.encodeIfPresent(r.tags, forKey: .tags)
            try c.encodeIfPresent(r.tiles, forKey: .tiles)
            try c.encodeIfPresent(r.onDone, forKey: .onDone)
            if r.video { try c.encode(true, forKey: .video) }
        case .peers: try c.encode(Op.peers, forKey: .op)
        case .jobs: try c.encode(Op.jobs, forKey: .op)
        case .status(let job, let brief, let seen):
            try c.encode(Op.status, forKey: .op)
            try c.encode(job, forKey: .job)
            if brief { try c.encode(true, forKey: .brief) }
            try c.encodeIfPresent(seen?.framesDone, forKey: .seenDone)
            try c.encodeIfPresent(seen?.state, forKey: .seenState)
        case .cancel(let job):
            try c.encode(Op.cancel, forKey: .op)
            try c.encode(job, forKey: .job)
        case .ledger(let from):
            try c.encode(Op.ledger, forKey: .op)
            if from != 1 { try c.encode(Int64(clamping: from), forKey: .from) }
        case .leave: try c.encode(Op.leave, forKey: .op)
        case .token: try c.encode(Op.token, forKey: .op)
        case .fetch(let job, let output):
            try c.encode(Op.fetch, forKey: .op)
            try c.encode(job, forKey: .job)
            try c.encode(output, forKey: .output)
        case .progress(let ticket):
            try c.encode(Op.progress, forKey: .op)
            try c.encode(ticket, forKey: .ticket)
        case .steer(let job, let action):
            try c.encode(job, forKey: .job)
            switch action {
            case .pause: try c.encode(Op.pause, forKey: .op)
            case .resume: try c.encode(Op.resume, forKey: .op)
            case .retry(let frames):
                try c.encode(Op.retry, forKey: .op)
                try c.encodeIfPresent(frames, forKey: .frames)
            case .priority(let priority):
                try c.encode(Op.priority, forKey: .op)
                try c.encode(priority, forKey: .priority)
            case .rerun(let output):
                try c.encode(Op.rerun, forKey: .op)
                try c.encodeIfPresent(output, forKey: .output)
            case .remove(let force):
                try c.encode(Op.remove, forKey: .op)
                if force { try c.encode(true, forKey: .force) }
            }
        case .log(let job, let frame):
            try c.encode(Op.log, forKey: .op)
            try c.encode(job, forKey: .job)
            try c.encodeIfPresent(frame, forKey: .frame)
        case .allPeers: try c.encode(Op.allPeers, forKey: .op)
        case .forceLeave: try c.encode(Op.forceLeave, forKey: .op)
        case .recover: try c.encode(Op.recover, forKey: .op)
        case .rotateKey: try c.encode(Op.rotateKey, forKey: .op)
        case .revoke(let node):
            try c.encode(Op.revoke, forKey: .op)
            try c.encode(node, forKey: .node)
        }
    }
}

/// What the server writes for one request: `{"result": …}` or `{"error": …, "code": …}`, encoded once from a
/// typed value (a big job's status is megabytes; it is not built twice).
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
    /// A number, whole or not (JSON does not say which: 2.0 may arrive as 2).
    public var double: Double? {
        switch self {
        case .double(let d): d
        case .int(let i): Double(i)
        default: nil
        }
    }
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
