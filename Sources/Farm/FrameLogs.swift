import Foundation
import Ledger
import Logging
import Mesh
import Render
import Synchronization

// MARK: - Records

/// Blender's output for one frame attempt, kept by the node that made it: what `rexnode log` shows (issue 12).
struct FrameLogRecord: Codable, Sendable, Equatable {
    var job: String
    var frame: Int
    /// The node that made the attempt (id) and its name.
    var node: String
    var name: String
    var assignment: String
    /// 1 for a frame's first attempt: the failed attempts the ledger counted before it, plus one.
    var attempt: Int
    /// `done`, `failed` (Blender refused the frame), `crashed` (Blender died), `unloadable` (the scene did not load)
    /// or `no-blender` (Blender could not be started).
    var outcome: String
    /// The sentence the worker reported for a failed attempt (it names the exit status of a crash).
    var message: String?
    /// Wall-clock milliseconds when the attempt began and ended.
    var startedMs: Int64
    var endedMs: Int64
    var lines: [String]
    /// The tile of a tiled frame the attempt rendered (nil: the frame, or its assembly).
    var tile: Int? = nil

    enum CodingKeys: String, CodingKey {
        case job, frame, node, name, assignment, attempt, outcome, message, lines, tile
        case startedMs = "started_ms"
        case endedMs = "ended_ms"
    }

    /// Same attempt, whichever node's answer it came in.
    var key: String { "\(node)/\(assignment)/\(frame)/\(tile ?? -1)/\(attempt)/\(startedMs)" }

    /// The outcome word for a render error (nil: not an attempt worth a log, e.g. a closed session).
    static func outcome(of error: RenderError) -> String? {
        switch error.code {
        case .frameFailed: "failed"
        case .crashed: "crashed"
        case .badScene: "unloadable"
        case .blenderMissing: "no-blender"
        case .canceled: nil
        }
    }
}

/// How much frame log a node keeps (settings, per node).
public struct FrameLogLimits: Sendable, Equatable {
    /// Lines per attempt (the last ones).
    public var linesPerAttempt: Int = RenderedFrame.logLimit
    /// Characters per line; a longer line is cut (Blender may print a 64 KiB line).
    public var lineLength: Int = 1000
    /// Attempts kept on this node; the oldest go first.
    public var attempts: Int = 1000
    /// Bytes on disk for all attempts; the oldest go first.
    public var bytes: Int = 32 << 20

    public init() {}
}

// MARK: - Store

/// This node's frame logs: one JSON file per attempt in `DATA/logs/`, named `SEQ_FRAME_JOBHEX.json` (a sequence
/// number, so names sort by age; the job id in hex, so no id can name another path). The index lives in memory,
/// rebuilt from the names at start; past `FrameLogLimits` the oldest attempts are deleted.
final class FrameLogStore: Sendable {
    private struct Entry: Sendable {
        var seq: UInt64
        var job: String
        var frame: Int
        var bytes: Int
        var file: String
    }

    private struct State: Sendable {
        /// By `seq`, oldest first.
        var entries: [Entry] = []
        var nextSeq: UInt64 = 1
        var bytes = 0
    }

    let root: String
    let limits: FrameLogLimits
    private let state = Mutex(State())

    init(root: String, limits: FrameLogLimits = FrameLogLimits()) throws {
        self.root = root
        self.limits = limits
        let files = FileManager.default
        try files.createDirectory(atPath: root, withIntermediateDirectories: true)
        var entries: [Entry] = []
        for name in try files.contentsOfDirectory(atPath: root) {
            let path = root + "/" + name
            guard let parsed = Self.parse(name) else {
                // A write cut short by a crash (Foundation's temporary file) or something that is not ours.
                try? files.removeItem(atPath: path)
                continue
            }
            let size = ((try? files.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
            entries.append(Entry(seq: parsed.seq, job: parsed.job, frame: parsed.frame, bytes: size, file: path))
        }
        entries.sort { $0.seq < $1.seq }
        let restored = State(
            entries: entries, nextSeq: (entries.last?.seq ?? 0) + 1, bytes: entries.reduce(0) { $0 + $1.bytes })
        state.withLock { $0 = restored }
        prune()
    }

    /// Attempts kept and their bytes on disk.
    var usage: (attempts: Int, bytes: Int) { state.withLock { ($0.entries.count, $0.bytes) } }

    /// Keeps one attempt (lines and message trimmed to the limits), then drops the oldest past the limits.
    func record(_ record: FrameLogRecord) throws {
        var trimmed = record
        trimmed.lines = record.lines.suffix(max(0, limits.linesPerAttempt)).map(cut)
        trimmed.message = record.message.map(cut)
        let data = try JSONEncoder().encode(trimmed)
        let seq = state.withLock { state -> UInt64 in
            defer { state.nextSeq += 1 }
            return state.nextSeq
        }
        let name =
            String(format: "%012llu", seq) + "_\(record.frame)_"
            + Array(record.job.utf8).map { String(format: "%02x", $0) }.joined() + ".json"
        let path = root + "/" + name
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        state.withLock { state in
            let entry = Entry(seq: seq, job: record.job, frame: record.frame, bytes: data.count, file: path)
            let at = state.entries.lastIndex { $0.seq < seq }.map { $0 + 1 } ?? 0
            state.entries.insert(entry, at: at)
            state.bytes += data.count
        }
        prune()
    }

    /// The attempts kept of `job` (of `frames`, or of every frame when empty), oldest first. `lastOnly`: each
    /// frame's newest attempt only. At most `budget` bytes of them: the newest win.
    func records(job: String, frames: [Int] = [], lastOnly: Bool = false, budget: Int = .max) -> [FrameLogRecord] {
        let wanted = Set(frames)
        var chosen = state.withLock { state in
            state.entries.filter { $0.job == job && (wanted.isEmpty || wanted.contains($0.frame)) }
        }
        if lastOnly {
            var newest: [Int: Entry] = [:]
            for entry in chosen { newest[entry.frame] = entry }
            chosen = newest.values.sorted { $0.seq < $1.seq }
        }
        var spent = 0
        var kept: [Entry] = []
        for entry in chosen.reversed() {
            guard spent + entry.bytes <= budget || kept.isEmpty else { break }
            spent += entry.bytes
            kept.append(entry)
        }
        return kept.reversed().compactMap { entry in
            // Dropped by a prune since the lookup, or damaged: skipped.
            guard let data = FileManager.default.contents(atPath: entry.file) else { return nil }
            return try? JSONDecoder().decode(FrameLogRecord.self, from: data)
        }
    }

    private func cut(_ line: String) -> String {
        line.count <= limits.lineLength ? line : String(line.prefix(limits.lineLength)) + "…"
    }

    private func prune() {
        state.withLock { state in
            var drop = 0
            var bytes = state.bytes
            while state.entries.count - drop > 1
                && (state.entries.count - drop > limits.attempts || bytes > limits.bytes)
            {
                bytes -= state.entries[drop].bytes
                try? FileManager.default.removeItem(atPath: state.entries[drop].file)
                drop += 1
            }
            if drop > 0 {
                state.entries.removeFirst(drop)
                state.bytes = bytes
            }
        }
    }

    /// `SEQ_FRAME_JOBHEX.json` → its parts; nil for any other name.
    private static func parse(_ name: String) -> (seq: UInt64, frame: Int, job: String)? {
        guard name.hasSuffix(".json") else { return nil }
        let parts = name.dropLast(5).split(separator: "_", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let seq = UInt64(parts[0]), let frame = Int(parts[1]), parts[2].count % 2 == 0
        else { return nil }
        var bytes: [UInt8] = []
        var hex = parts[2][...]
        while !hex.isEmpty {
            guard let byte = UInt8(hex.prefix(2), radix: 16) else { return nil }
            bytes.append(byte)
            hex = hex.dropFirst(2)
        }
        guard let job = String(validating: bytes, as: UTF8.self), !job.isEmpty else { return nil }
        return (seq, frame, job)
    }
}

// MARK: - Recording (the worker's side)

/// An attempt as a render slot begins it: what its log record needs besides Blender's lines.
struct FrameAttempt: Sendable {
    var job: String
    var frame: Int
    var assignment: String
    var attempt: Int
    var startedMs: Int64
    var tile: Int? = nil
}

extension WorkerPool {
    /// Called as a slot starts rendering `frame`: the attempt's number comes from the ledger's count of failures.
    nonisolated func beginAttempt(job: String, frame: Int, assignment: String) -> FrameAttempt {
        let failures = (try? ledger.frame(job, frame))?.attempts ?? 0
        return FrameAttempt(
            job: job, frame: frame, assignment: assignment, attempt: failures + 1, startedMs: WallClock.millis())
    }

    /// Keeps the attempt's output: a rendered frame's `log`, or a failure's `attemptLog` (a closed session, or an
    /// error that is not Blender's, leaves nothing).
    nonisolated func logAttempt(_ attempt: FrameAttempt, rendered: RenderedFrame?, error: (any Error)?) async {
        let outcome: String
        var lines = rendered?.log ?? []
        var message: String?
        if let error {
            guard let render = error as? RenderError, let word = FrameLogRecord.outcome(of: render) else { return }
            outcome = word
            lines = render.attemptLog
            message = render.message
        } else {
            outcome = "done"
        }
        let record = FrameLogRecord(
            job: attempt.job, frame: attempt.frame, node: nodeID, name: settings.name, assignment: attempt.assignment,
            attempt: attempt.attempt, outcome: outcome, message: message, startedMs: attempt.startedMs,
            endedMs: WallClock.millis(), lines: lines, tile: attempt.tile)
        let store = frameLogs
        do {
            try await Blocking.run { try store.record(record) }
        } catch {
            logger.warning(
                "cannot keep a frame's log",
                metadata: ["farm/job": "\(attempt.job)", "farm/frame": "\(attempt.frame)", "error": "\(error)"])
        }
    }

    /// A session that could not start (the scene did not load): the load's output is every pending frame's attempt.
    nonisolated func logStartFailure(_ assignment: AssignmentRecord, _ error: any Error) async {
        guard error is RenderError else { return }
        let frames = assignment.pendingFrames + assignment.pendingTiles.map(\.frame)
        for frame in Array(Set(frames)).sorted() {
            let attempt = beginAttempt(job: assignment.job, frame: frame, assignment: assignment.assignment)
            await logAttempt(attempt, rendered: nil, error: error)
        }
    }
}

// MARK: - Asking the farm (`rexnode log`)

/// What `rexnode log` prints: the attempts found, in frame and attempt order, and sentences about what could not be
/// had (a node that is gone) or, without a frame, what the job looks like.
struct FrameLogView: Encodable, Sendable {
    var job: String
    var name: String
    var summary: String?
    var notes: [String]
    var attempts: [FrameLogRecord]
}

/// Finds the frames `rexnode log` asks about in the ledger and fetches their logs: from the node the frame row
/// names, else (that node gone, silent, or without them) from every live member, a few at a time, merged.
struct FrameLogService: Sendable {
    let nodeID: String
    let name: String
    let ledger: LedgerStore
    let mesh: MeshNode
    let roster: Roster
    let store: FrameLogStore
    var timeout: Duration = .seconds(5)

    /// Failed frames shown when no frame is named.
    static let maxFramesShown = 20
    /// Peers asked at once when the named node cannot answer.
    static let maxPeersAtOnce = 8
    /// The most a `frameLogs` answer carries (the mesh's frames are at most 2 MiB).
    static let answerBudget = 3 << 19

    /// Answers a peer's `frameLogs` request from this node's store: JSON, an array of records.
    func answer(job: String, frames: [Int], lastOnly: Bool) throws -> [UInt8] {
        let found = store.records(job: job, frames: frames, lastOnly: lastOnly, budget: Self.answerBudget)
        return Array(try JSONEncoder().encode(found))
    }

    func view(_ job: JobRecord, frame: Int?) async throws -> FrameLogView {
        let rows = try ledger.frames(of: job.job)
        var targets: [FrameRecord]
        var summary: String?
        let lastOnly: Bool
        if let frame {
            guard let row = rows.first(where: { $0.frame == frame }) else {
                throw FarmError(
                    .badInput,
                    "Frame \(frame) is not in job \(job.job) (its frames: \(Self.describe(rows.map(\.frame)))).")
            }
            targets = [row]
            lastOnly = false
        } else {
            lastOnly = true
            let failed = rows.filter { $0.state == "failed" }
            if !failed.isEmpty {
                targets = Array(failed.prefix(Self.maxFramesShown))
                if failed.count > targets.count {
                    summary =
                        "\(failed.count) frames of job \(job.job) failed; the last attempts of the first "
                        + "\(targets.count) follow."
                }
            } else {
                let last = rows.filter { $0.state == "done" }.max { ($0.doneIndex ?? 0) < ($1.doneIndex ?? 0) }
                targets = last.map { [$0] } ?? []
                summary =
                    "No frame of job \(job.job) (\(job.name), \(job.state)) failed: \(job.framesDone) of "
                    + "\(job.framesTotal) frames are done"
                    + (last.map { ", and frame \($0.frame) was rendered last; its log follows." } ?? ".")
            }
        }
        let (attempts, notes) = await gather(job: job.job, targets: targets, lastOnly: lastOnly)
        if let row = targets.first, frame != nil, attempts.isEmpty, notes.isEmpty {
            let why = Self.nothingYet(
                frame: row.frame, state: row.state, attempts: row.attempts, job: job.job, label: await label(row.node))
            throw FarmError(.notFound, why)
        }
        return FrameLogView(job: job.job, name: job.name, summary: summary, notes: notes, attempts: attempts)
    }

    /// Asks the node of each frame row, then everyone for what is still missing; merges and orders the attempts.
    private func gather(job: String, targets: [FrameRecord], lastOnly: Bool) async -> ([FrameLogRecord], [String]) {
        let peers = await mesh.peers()
        let live = Set(await roster.alivePeers())
        func label(_ id: String) -> String {
            let name = id == nodeID ? self.name : peers.first { $0.nodeID == id }?.name ?? id
            return name == id ? id : "\(name) (\(id.prefix(12)))"
        }
        var found: [FrameLogRecord] = []
        var notes: [String] = []
        var missing = Set(targets.filter { $0.node == nil }.map(\.frame))
        let byNode = Dictionary(grouping: targets.filter { $0.node != nil }) { $0.node! }
        for (node, rows) in byNode.sorted(by: { $0.key < $1.key }) {
            let frames = rows.map(\.frame).sorted()
            let which = frames.count == 1 ? "frame \(frames[0])" : "frames \(Self.describe(frames))"
            guard node == nodeID || live.contains(node) else {
                notes.append("Node \(label(node)), which last rendered \(which), is gone from the farm.")
                missing.formUnion(frames)
                continue
            }
            do {
                let got = try await ask(node, job: job, frames: frames, lastOnly: lastOnly)
                found += got
                for row in rows {
                    // Fewer attempts than the ledger counts: other nodes made the rest.
                    let expected = lastOnly ? 1 : row.attempts + (row.state == "done" ? 1 : 0)
                    if got.filter({ $0.frame == row.frame }).count < max(1, expected) { missing.insert(row.frame) }
                }
            } catch {
                let reason = (error as? MeshError)?.message ?? (error as? FarmError)?.message ?? "\(error)"
                notes.append("Node \(label(node)), which last rendered \(which), did not answer: \(reason)")
                missing.formUnion(frames)
            }
        }
        if !missing.isEmpty {
            found += await askEveryone(job: job, frames: missing.sorted(), lastOnly: lastOnly, live: live)
        }
        return (Self.merge(found, lastOnly: lastOnly), notes)
    }

    /// Why a frame has no log anywhere, in one sentence.
    static func nothingYet(frame number: Int, state: String, attempts: Int, job: String, label: String) -> String {
        let frame = "Frame \(number) of job \(job)"
        switch state {
        case "assigned": return "\(frame) is being rendered on \(label); its log is kept when the attempt ends."
        case "queued" where attempts == 0: return "\(frame) has not been rendered yet (it is queued)."
        case "canceled" where attempts == 0: return "\(frame) was canceled before it was rendered."
        default:
            return "No node has Blender's output for frame \(number) of job \(job) any more (each node keeps its "
                + "newest attempts only)."
        }
    }

    /// A node as sentences name it: `name (id)`.
    private func label(_ id: String?) async -> String {
        guard let id else { return "no node" }
        if id == nodeID { return "\(name) (\(id.prefix(12)))" }
        let name = await mesh.peers().first { $0.nodeID == id }?.name ?? id
        return name == id ? id : "\(name) (\(id.prefix(12)))"
    }

    /// Every live member (and this node), at most `maxPeersAtOnce` at a time; a peer that fails adds nothing.
    private func askEveryone(job: String, frames: [Int], lastOnly: Bool, live: Set<String>) async -> [FrameLogRecord] {
        var pending = [nodeID] + live.subtracting([nodeID]).sorted()
        return await withTaskGroup(of: [FrameLogRecord].self) { group in
            var merged: [FrameLogRecord] = []
            func next() {
                guard !pending.isEmpty else { return }
                let node = pending.removeFirst()
                group.addTask { (try? await self.ask(node, job: job, frames: frames, lastOnly: lastOnly)) ?? [] }
            }
            for _ in 0..<Self.maxPeersAtOnce { next() }
            while let got = await group.next() {
                merged += got
                next()
            }
            return merged
        }
    }

    private func ask(_ node: String, job: String, frames: [Int], lastOnly: Bool) async throws -> [FrameLogRecord] {
        if node == nodeID {
            let store = self.store
            return try await Blocking.run { store.records(job: job, frames: frames, lastOnly: lastOnly) }
        }
        let request = PeerRequest.frameLogs(job: job, frames: frames, lastOnly: lastOnly)
        let bytes = try await mesh.request(to: node, request.encoded(), timeout: timeout)
        guard let records = try? JSONDecoder().decode([FrameLogRecord].self, from: Data(bytes)) else {
            throw FarmError(.protocolError, "its answer could not be read.")
        }
        // Only what was asked for: a peer cannot slip in other jobs' lines.
        let wanted = Set(frames)
        return records.filter { $0.job == job && wanted.contains($0.frame) }
    }

    /// One record per attempt (nodes may both hold one), ordered by frame, attempt and time; `lastOnly` keeps each
    /// frame's latest.
    static func merge(_ records: [FrameLogRecord], lastOnly: Bool) -> [FrameLogRecord] {
        var seen: Set<String> = []
        var unique = records.filter { seen.insert($0.key).inserted }
        unique.sort { ($0.frame, $0.attempt, $0.startedMs) < ($1.frame, $1.attempt, $1.startedMs) }
        guard lastOnly else { return unique }
        var last: [Int: FrameLogRecord] = [:]
        for record in unique { last[record.frame] = record }
        return last.values.sorted { $0.frame < $1.frame }
    }

    /// "1-4", "1-3, 7, 9-10": a frame list for a sentence.
    static func describe(_ frames: [Int]) -> String {
        let sorted = Array(Set(frames)).sorted()
        guard !sorted.isEmpty else { return "none" }
        var runs: [String] = []
        var start = sorted[0]
        var previous = start
        for frame in sorted.dropFirst() + [Int.max] {
            if frame != previous + 1 || frame == Int.max {
                runs.append(start == previous ? "\(start)" : "\(start)-\(previous)")
                start = frame
            }
            previous = frame
        }
        return runs.prefix(8).joined(separator: ", ") + (runs.count > 8 ? ", …" : "")
    }
}
