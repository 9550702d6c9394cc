import Foundation

/// A command's unique id (proposing node + its sequence number): a retried proposal is applied once.
public struct CommandID: Hashable, Sendable, Codable, CustomStringConvertible {
    public var node: String
    public var seq: UInt64

    public init(node: String, seq: UInt64) {
        self.node = node
        self.seq = seq
    }

    public var description: String { "\(node):\(seq)" }
}

/// Every change to the farm's state is one of these; `LedgerStore.apply` is the only place they take effect.
///
/// Commands carry everything `apply` needs (times included), so every node applying the same log ends in
/// the same state.
public enum LedgerCommand: Sendable, Equatable, Codable {
    case submitJob(SubmitJob)
    case assignChunk(AssignChunk)
    case completeFrame(CompleteFrame)
    case failFrame(FailFrame)
    case releaseFrames(ReleaseFrames)
    case cancelJob(CancelJob)
    /// Job control: no new frames start while paused; frames in flight finish.
    case pauseJob(JobTarget)
    case resumeJob(JobTarget)
    /// Failed frames go back to the queue with fresh attempts, and the job's node blocks are lifted.
    case retryFrames(RetryFrames)
    case setPriority(SetPriority)
    /// The job and everything the ledger knows of it go; nodes then drop its files and images.
    case removeJob(JobTarget)
    /// Raft membership changes, recorded so the ledger's indexes match Raft's and `rexnode ledger` shows them.
    case addNode(NodeChange)
    case removeNode(NodeChange)
    /// A learner becomes a voter (`voter: true`) or a voter a learner (`voter: false`).
    case setVoter(NodeChange)
    /// `rexnode recover`: Raft's membership became exactly these members (recorded like the changes above).
    case recoverMembers(MemberSet)
    /// Raft's no-op of a new term, and anything else that only occupies an index.
    case noop
    /// `rexnode rotate-key` / `revoke`: the farm switches to a new key epoch (and denies revoked identities).
    case farmKey(FarmKeyChange)
    /// `rexnode revoke`, its first entry: these identities are denied for good from here on (no leader adds them
    /// again, no member hands them a key); their removal and the key rotation follow as entries of their own.
    case revokeNodes(RevokeNodes)
    /// Retention: a node other than the submitter gives up its copies of a job's images the submitter holds.
    case dropImages(DropImages)

    /// The short name shown by `rexnode ledger` as `"type"`.
    public var typeName: String {
        switch self {
        case .submitJob: "SubmitJob"
        case .assignChunk: "AssignChunk"
        case .completeFrame: "CompleteFrame"
        case .failFrame: "FailFrame"
        case .releaseFrames: "ReleaseFrames"
        case .cancelJob: "CancelJob"
        case .pauseJob: "PauseJob"
        case .resumeJob: "ResumeJob"
        case .retryFrames: "RetryFrames"
        case .setPriority: "SetPriority"
        case .removeJob: "RemoveJob"
        case .addNode: "AddNode"
        case .removeNode: "RemoveNode"
        case .setVoter(let c): c.voter == false ? "Demote" : "Promote"
        case .recoverMembers: "Recover"
        case .noop: "Noop"
        case .farmKey: "FarmKey"
        case .revokeNodes: "RevokeNodes"
        case .dropImages: "DropImages"
        }
    }
}

/// A new job: the .blend is already in the submitter's blob store under `blendHash`, and so is every file of
/// `manifest` (absent in jobs from before projects were shipped: the .blend alone).
public struct SubmitJob: Sendable, Equatable, Codable {
    public var job: String
    public var name: String
    public var submitter: String
    public var blendHash: String
    public var blendSize: Int64
    public var frames: [Int]
    public var chunk: Int
    public var priority: Int
    /// Absolute output folder on the submitter's machine (delivery is the submitter's business).
    public var output: String
    public var submittedAtMs: Int64
    /// The project's files under the job root, the scene among them.
    public var manifest: JobManifest?
    /// Set when the scene asks for a movie: the frames render as PNG and the submitter encodes this.
    public var movie: MovieSpec?
    /// Render with Blender's autoexec on (`-y`), running the scene's Python drivers and scripts.
    public var trustScripts: Bool?
    /// The user's file as the submitter knows it (images name it in their metadata).
    public var sourcePath: String?
    /// Tags a node must carry, every one, to render this job (`submit --tags`); absent: any node.
    public var tags: [String]?
    /// The Blender version every frame renders with ("5.0.1"), chosen at submit; absent in older entries (and with
    /// the simulated renderer): any node. Optional, so entries written before it keep their bytes.
    public var blender: String?
    /// `submit --tiles CxR`: every frame renders as this grid of tiles, then is assembled (absent: whole frames).
    public var tiles: TileGrid?
    /// `submit --on-done CMD`: the submitter's daemon runs it once when the job ends (absent: none).
    public var onDone: String?
    /// `submit --video`: the submitter's daemon makes a preview movie when the job is done (absent: no).
    public var video: Bool?
    /// The scene's frame rate at submit (for `rexnode video`); absent in older entries.
    public var fps: Double?

    public init(
        job: String, name: String, submitter: String, blendHash: String, blendSize: Int64, frames: [Int],
        chunk: Int, priority: Int, output: String, submittedAtMs: Int64, manifest: JobManifest? = nil,
        movie: MovieSpec? = nil, trustScripts: Bool? = nil, sourcePath: String? = nil, tags: [String]? = nil,
        blender: String? = nil, tiles: TileGrid? = nil, onDone: String? = nil, video: Bool? = nil,
        fps: Double? = nil
    ) {
        self.fps = fps
        self.onDone = onDone
        self.video = video
        self.tiles = tiles
        self.blender = blender
        self.job = job
        self.name = name
        self.submitter = submitter
        self.blendHash = blendHash
        self.blendSize = blendSize
        self.frames = frames
        self.chunk = chunk
        self.priority = priority
        self.output = output
        self.submittedAtMs = submittedAtMs
        self.manifest = manifest
        self.movie = movie
        self.trustScripts = trustScripts
        self.sourcePath = sourcePath
        self.tags = tags?.isEmpty == true ? nil : tags
    }
}

/// The scheduler gives `frames` of `job` to `node`, under the leader's `term`, until `leaseUntilMs`.
public struct AssignChunk: Sendable, Equatable, Codable {
    public var assignment: String
    public var job: String
    public var frames: [Int]
    public var node: String
    public var term: UInt64
    public var leaseUntilMs: Int64
    /// Tiles of a tiled job's frames to render (`frames` then holds frames whose tiles are all in, to assemble).
    public var tiles: [FrameTile]?

    public init(
        assignment: String, job: String, frames: [Int], node: String, term: UInt64, leaseUntilMs: Int64,
        tiles: [FrameTile]? = nil
    ) {
        self.tiles = tiles?.isEmpty == true ? nil : tiles
        self.assignment = assignment
        self.job = job
        self.frames = frames
        self.node = node
        self.term = term
        self.leaseUntilMs = leaseUntilMs
    }
}

/// A rendered frame: its image (content address `hash`, file extension `ext`) is on every node in `holders`.
public struct CompleteFrame: Sendable, Equatable, Codable {
    public var job: String
    public var frame: Int
    public var node: String
    public var assignment: String
    public var term: UInt64
    public var hash: String
    public var ext: String
    public var holders: [String]
    /// Files the render wrote besides the frame (File Output passes), held by the same `holders`.
    public var outputs: [FrameOutput]?
    /// How long the render took on `node`, in milliseconds (absent in entries from before it was recorded).
    public var renderMs: Int64?
    /// Set when this is one tile of a tiled frame (its image is the tile's region only); nil: the frame itself.
    public var tile: Int?

    public init(
        job: String, frame: Int, node: String, assignment: String, term: UInt64, hash: String, ext: String,
        holders: [String], outputs: [FrameOutput]? = nil, renderMs: Int64? = nil, tile: Int? = nil
    ) {
        self.tile = tile
        self.job = job
        self.frame = frame
        self.node = node
        self.assignment = assignment
        self.term = term
        self.hash = hash
        self.ext = ext
        self.holders = holders
        self.outputs = outputs
        self.renderMs = renderMs
    }
}

/// One failed attempt at a frame. The failure counts against the node first: the frame goes back to the queue
/// for another node, and fails for good only after `LedgerRules.maxAttempts` attempts on at least
/// `LedgerRules.nodesBeforeFailing` different nodes, or on the only node able to run it (`alone`).
public struct FailFrame: Sendable, Equatable, Codable {
    public var job: String
    public var frame: Int
    public var node: String
    public var assignment: String
    public var message: String
    /// Entries from before failures were scoped: the frame failed at once. New reports never set it.
    public var fatal: Bool
    /// The reporting node saw no other node of the farm able to take this frame (a farm of one, or every other
    /// node already failed it or is blocked for the job): its attempts alone decide.
    public var alone: Bool?
    /// The attempt was at this tile of the frame (it counts against the frame, as any of its attempts).
    public var tile: Int?

    public init(
        job: String, frame: Int, node: String, assignment: String, message: String, fatal: Bool = false,
        alone: Bool? = nil, tile: Int? = nil
    ) {
        self.tile = tile
        self.job = job
        self.frame = frame
        self.node = node
        self.assignment = assignment
        self.message = message
        self.fatal = fatal
        self.alone = alone
    }
}

/// How a tiled job splits each frame: `columns` × `rows` tiles of the `width` × `height` image (the scene's
/// resolution at submit, percentage applied). Tile 0 is the top-left one; tiles go left to right, then down.
public struct TileGrid: Sendable, Equatable, Codable, CustomStringConvertible {
    public var columns: Int
    public var rows: Int
    public var width: Int
    public var height: Int
    /// Set for a lossy format: tiles render losslessly (a JPEG scene's as PNG) and the assembled frame is
    /// compressed once, this way ("jpeg:90", "dwaa": OpenImageIO's names), as Blender would compress it whole.
    public var compression: String?

    public init(columns: Int, rows: Int, width: Int, height: Int, compression: String? = nil) {
        self.compression = compression
        self.columns = columns
        self.rows = rows
        self.width = width
        self.height = height
    }

    public var count: Int { columns * rows }
    public var description: String { "\(columns)x\(rows)" }

    /// A tile's pixels: `x`, `y` from the image's top-left corner. Neighbouring tiles share no pixel and leave
    /// none out (edges at ⌊i·width/columns⌋, ⌊j·height/rows⌋).
    public func region(_ tile: Int) -> TileRegion {
        let column = tile % columns
        let row = tile / columns
        let x0 = column * width / columns
        let x1 = (column + 1) * width / columns
        let y0 = row * height / rows
        let y1 = (row + 1) * height / rows
        return TileRegion(x: x0, y: y0, width: x1 - x0, height: y1 - y0)
    }

    /// `"3x2"` → 3 columns, 2 rows (the image size comes from the scene); nil beyond `LedgerRules.maxTiles`.
    public static func parse(_ text: String) -> (columns: Int, rows: Int)? {
        let parts = text.lowercased().split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 2, let c = Int(parts[0]), let r = Int(parts[1]), c >= 1, r >= 1,
            c <= LedgerRules.maxTiles, r <= LedgerRules.maxTiles, c * r <= LedgerRules.maxTiles
        else { return nil }
        return (c, r)
    }

    /// The file extension of the assembled frame: a JPEG scene's tiles are PNG, its frame `.jpg`.
    public func frameExtension(tiles: String) -> String {
        compression?.hasPrefix("jpeg") == true ? ".jpg" : tiles
    }
}

/// A rectangle of pixels of an image, from its top-left corner.
public struct TileRegion: Sendable, Equatable, Codable {
    public var x: Int
    public var y: Int
    public var width: Int
    public var height: Int

    public init(x: Int, y: Int, width: Int, height: Int) {
        self.x = x
        self.y = y
        self.width = width
        self.height = height
    }
}

/// One tile of one frame: a tiled job's unit of work.
public struct FrameTile: Sendable, Hashable, Codable {
    public var frame: Int
    public var tile: Int

    public init(frame: Int, tile: Int) {
        self.frame = frame
        self.tile = tile
    }
}

/// Frames of an assignment that were not finished go back to the queue (worker restarted, died, lease expired).
public struct ReleaseFrames: Sendable, Equatable, Codable {
    public var assignment: String
    public var reason: String

    public init(assignment: String, reason: String) {
        self.assignment = assignment
        self.reason = reason
    }
}

/// A node joining or leaving the farm's voting membership.
public struct NodeChange: Sendable, Equatable, Codable {
    public var node: String
    /// Whether the node votes after the change: `false` for a learner added or a voter demoted, `true` for a
    /// learner promoted; absent for a voter added (and every entry from before learners).
    public var voter: Bool?

    public init(node: String, voter: Bool? = nil) {
        self.node = node
        self.voter = voter
    }
}

/// The members a recovery kept (sorted node ids).
public struct MemberSet: Sendable, Equatable, Codable {
    public var members: [String]

    public init(members: [String]) { self.members = members }
}

/// The job a job-control command acts on.
public struct JobTarget: Sendable, Equatable, Codable {
    public var job: String

    public init(job: String) { self.job = job }
}

/// `cancelJob`'s payload: the same `{"job"}` as every job-control command (entries keep their bytes).
public typealias CancelJob = JobTarget

/// Failed frames of `job` back to the queue: those in `frames`, or every failed frame when nil.
public struct RetryFrames: Sendable, Equatable, Codable {
    public var job: String
    public var frames: [Int]?

    public init(job: String, frames: [Int]? = nil) {
        self.job = job
        self.frames = frames
    }
}

public struct SetPriority: Sendable, Equatable, Codable {
    public var job: String
    public var priority: Int

    public init(job: String, priority: Int) {
        self.job = job
        self.priority = priority
    }
}

/// What the log carries: the command and its unique id, encoded as bytes (opaque to Raft).
///
/// `floor` is the proposer's command floor when it made the entry: the lowest sequence number it still had in
/// flight (this one's at most). Every id of that node below it was settled, applied or given up, so the ledger
/// forgets their rows and refuses a late copy of one (Raft's client sessions, Ongaro's thesis §6.3). Entries from
/// before floors, and Raft's own, have none: their ids are remembered for ever, as before.
public struct LedgerEntry: Sendable, Equatable, Codable {
    public var id: CommandID
    public var command: LedgerCommand
    public var floor: UInt64?

    public init(id: CommandID, command: LedgerCommand, floor: UInt64? = nil) {
        self.id = id
        self.command = command
        self.floor = floor
    }

    public func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try! encoder.encode(self))
    }

    public init(bytes: [UInt8]) throws {
        self = try JSONDecoder().decode(LedgerEntry.self, from: Data(bytes))
    }
}

/// Fixed rules every node applies identically.
public enum LedgerRules {
    /// A frame fails for good after this many attempts in all (on at least `nodesBeforeFailing` nodes).
    public static let maxAttempts = 3
    /// Different nodes a frame must have failed on before it fails for good (unless no other node can take it).
    public static let nodesBeforeFailing = 2
    /// A node whose renders of a job failed this many times gets no more of that job's frames.
    public static let nodeFailuresBeforeBlock = 3
    /// The most tiles a frame may be split into, and a job's frames × tiles at most.
    public static let maxTiles = 1024
    public static let maxTileUnits = 100_000
}
