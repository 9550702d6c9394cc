import Foundation
import Ledger
import Logging
import Synchronization

// MARK: Disk

/// This node's disk as the daemon last measured it: free bytes on the data folder's file system, bytes of its blob
/// store, and whether it is nearly full (under `--min-free`): then it takes no new frames (the roster gives it no
/// slot, its beacon says so, a chunk already given goes back) until space is freed.
public final class DiskState: Sendable {
    public struct Reading: Sendable, Equatable {
        public var freeBytes: Int64
        public var usedBytes: Int64
        public var full: Bool
    }

    private let reading = Mutex<Reading?>(nil)

    public init() {}

    public var current: Reading? { reading.withLock { $0 } }
    public var isFull: Bool { current?.full ?? false }

    /// Sets the reading; returns whether `full` changed.
    @discardableResult
    func set(_ new: Reading) -> Bool {
        reading.withLock { old in
            defer { old = new }
            return (old?.full ?? false) != new.full
        }
    }

    /// Measures the data folder: `statvfs` for what is free, the blob store's files for what rexnode uses.
    static func measure(root: String, blobs: String, minFree: Int64) -> Reading {
        var fs = statvfs()
        let free: Int64 = statvfs(root, &fs) == 0 ? Int64(fs.f_bavail) * Int64(fs.f_frsize) : .max
        var used: Int64 = 0
        if let walker = FileManager.default.enumerator(
            at: URL(fileURLWithPath: blobs), includingPropertiesForKeys: [.fileSizeKey, .isRegularFileKey])
        {
            for case let url as URL in walker {
                let values = try? url.resourceValues(forKeys: [.fileSizeKey, .isRegularFileKey])
                if values?.isRegularFile == true { used += Int64(values?.fileSize ?? 0) }
            }
        }
        return Reading(freeBytes: free, usedBytes: used, full: free < minFree)
    }

    /// Measures every few seconds; says in one sentence when the node stops and starts taking work for its disk.
    func watch(root: String, blobs: String, minFree: Int64, logger: Logger, onChange: @Sendable () -> Void) async {
        while !Task.isCancelled {
            // Walking the blob store holds a thread: on NIO's blocking pool, not Swift's shared one (Raft's).
            guard let reading = try? await Blocking.run({ Self.measure(root: root, blobs: blobs, minFree: minFree) })
            else { return }
            if set(reading) {
                if reading.full {
                    let free = Self.megabytes(reading.freeBytes)
                    logger.warning(
                        "This node's disk is nearly full (\(free) free, under --min-free \(Self.megabytes(minFree))): it takes no new frames until space is freed."
                    )
                } else {
                    logger.info(
                        "This node's disk has room again (\(Self.megabytes(reading.freeBytes)) free); taking work.")
                }
                onChange()
            }
            try? await Task.sleep(for: .seconds(5))
        }
    }

    static func megabytes(_ bytes: Int64) -> String { "\(bytes / 1_000_000) MB" }
}

// MARK: Images kept on holders that did not submit

/// Retention (`--keep-images`): on a node that is not a job's submitter, the job's images go once the job has been
/// finished this long and the submitter holds them (it delivers, and `fetch` finds them there). The ledger is told
/// first (`DropImages`: this node leaves those images' holders), then the files go, so no holders list names a
/// node without the image. When this node first saw each job finished is kept in `DATA/retention.json` (wall
/// clock), so a restart does not start the wait again.
struct ImageRetention: Sendable {
    let nodeID: String
    let keepMilliseconds: Int64
    let ledger: LedgerStore
    let blobs: BlobStore
    let commandLog: any CommandLog
    let inFlight: ScenesInFlight
    let file: String
    let logger: Logger
    /// Whether the submitter is a member this node hears now: its copies are the ones left, so none are dropped
    /// while it is away (left, evicted, dead).
    let submitterReachable: @Sendable (String) async -> Bool
    /// A blob written, received or fetched this recently (10 minutes, or the keep time when shorter) is left for a
    /// later round: a completion naming this node as its holder, or a copy being placed, may be on its way.
    var freshSeconds: Double { min(600, Double(keepMilliseconds) / 1000) }

    func run() async {
        var seen = load()
        // Jobs whose images this node no longer holds: not looked at again in this run.
        var cleared: Set<String> = []
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(min(30_000, max(250, keepMilliseconds / 4))))
            guard let jobs = try? ledger.jobs() else { continue }
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let finished = jobs.filter { $0.isFinished && $0.submitter != nodeID }
            var changed = false
            for job in finished where seen[job.job] == nil {
                seen[job.job] = now
                changed = true
            }
            // Jobs no longer in the ledger (removed) need no entry.
            let known = Set(jobs.map(\.job))
            for job in seen.keys where !known.contains(job) {
                seen[job] = nil
                changed = true
            }
            if changed { save(seen) }
            let inputs = Set(jobs.filter { !$0.isFinished }.flatMap(\.blobs))
            for job in finished where !cleared.contains(job.job) {
                guard let since = seen[job.job], now - since >= keepMilliseconds else { continue }
                guard await submitterReachable(job.submitter) else { continue }
                if await drop(job.job, keeping: inputs) { cleared.insert(job.job) }
            }
        }
    }

    /// Leaves the holders of the job's images the submitter holds, then deletes every image file of the job this
    /// node no longer holds by the ledger (one another frame or job still names with this node is kept, and so is
    /// an input of a running job, a blob being recorded, and a fresh one). Returns whether nothing of the job is left
    /// here to drop.
    func drop(_ job: String, keeping inputs: Set<String>) async -> Bool {
        if ((try? ledger.droppableImages(job: job, node: nodeID)) ?? 0) > 0 {
            do {
                _ = try await commandLog.propose([.dropImages(DropImages(job: job, node: nodeID))])
            } catch {
                logger.debug(
                    "could not record dropped images yet", metadata: ["farm/job": "\(job)", "error": "\(error)"])
                return false
            }
        }
        guard let hashes = try? ledger.imageBlobs(job: job) else { return false }
        var dropped = 0
        var left = false
        for hash in hashes where blobs.has(hash) {
            // Checked just before the file goes: the ledger may name this node again meanwhile.
            guard (try? ledger.isHeld(hash, by: nodeID)) == false else { continue }
            guard !inputs.contains(hash), !inFlight.all.contains(hash),
                !blobs.modifiedRecently(hash, within: freshSeconds)
            else {
                left = true
                continue
            }
            blobs.remove(hash)
            dropped += 1
        }
        if dropped > 0 {
            logger.info(
                "dropped a finished job's images (its submitter holds them)",
                metadata: ["farm/job": "\(job)", "farm/images": "\(dropped)"])
        }
        return !left && ((try? ledger.droppableImages(job: job, node: nodeID)) ?? 1) == 0
    }

    func load() -> [String: Int64] {
        guard let data = FileManager.default.contents(atPath: file),
            let table = try? JSONDecoder().decode([String: Int64].self, from: data)
        else { return [:] }
        return table
    }

    func save(_ table: [String: Int64]) {
        guard let data = try? JSONEncoder().encode(table) else { return }
        try? data.write(to: URL(fileURLWithPath: file), options: .atomic)
    }
}

/// `--keep-images 7d`, `36h`, `90m`, `30s` or plain seconds; `--min-free 512M`, `2G`, `100K` or plain bytes.
public enum RetentionSettings {
    public static func parseDuration(_ text: String) throws -> Int64 {
        let seconds = try scaled(
            text, units: ["s": 1, "m": 60, "h": 3600, "d": 86400], below: 1e9,
            "--keep-images takes a time such as 7d, 36h, 90m or 30s, not '\(text)'.")
        return Int64(seconds * 1000)
    }

    public static func parseSize(_ text: String) throws -> Int64 {
        var trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        if trimmed.hasSuffix("b") { trimmed.removeLast() }
        return Int64(
            try scaled(
                trimmed, units: ["k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12], below: 9e18,
                "--min-free takes a size such as 512M, 2G or 100K, not '\(text)'."))
    }

    /// A non-negative number with an optional one-letter unit from `units`, below `limit`.
    static func scaled(_ text: String, units: [Character: Double], below limit: Double, _ sentence: String) throws
        -> Double
    {
        var number = Substring(text.trimmingCharacters(in: .whitespaces).lowercased())
        var scale = 1.0
        if let last = number.last, let unit = units[last] {
            scale = unit
            number = number.dropLast()
        }
        guard let value = Double(number), value >= 0, value.isFinite, value * scale < limit else {
            throw FarmError(.badInput, sentence)
        }
        return value * scale
    }
}
