import Election
import Foundation

/// Where a node keeps everything: one folder per node (`--data`, `REXNODE_HOME`).
public struct DataDirectory: Sendable {
    public let root: String

    public init(_ root: String) {
        self.root = (root as NSString).standardizingPath
    }

    /// `--data`, else `$REXNODE_HOME`, else `~/.local/share/rexnode`.
    public static func resolve(_ explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment)
        -> DataDirectory
    {
        if let explicit, !explicit.isEmpty { return DataDirectory(absolute(explicit)) }
        if let home = environment["REXNODE_HOME"], !home.isEmpty { return DataDirectory(absolute(home)) }
        return DataDirectory(NSHomeDirectory() + "/.local/share/rexnode")
    }

    /// A user's path made absolute (`~` expanded, relative to the working folder) and standardized.
    public static func absolute(_ path: String) -> String {
        let expanded = (path as NSString).expandingTildeInPath
        let full = expanded.hasPrefix("/") ? expanded : FileManager.default.currentDirectoryPath + "/" + expanded
        return (full as NSString).standardizingPath
    }

    public var farmKey: String { root + "/farm.key" }
    /// Every key epoch this node knows ("EPOCH TOKEN" lines, mode 0600), next to `farm.key` (the current one).
    public var farmKeyRing: String { root + "/farm.keyring" }
    /// Left by `join --token` when the token's key is not in this folder's ring (the folder missed rotations, or was
    /// handed a false key): the key is used, but vouched for only once the ledger holds it (see `KeyRotation`).
    public var farmKeyUnconfirmed: String { root + "/farm.key.unconfirmed" }
    public var identity: String { root + "/node.key" }
    public var database: String { root + "/ledger.sqlite" }
    public var blobs: String { root + "/blobs" }
    public var socket: String { root + "/rexnode.sock" }
    public var lock: String { root + "/rexnode.lock" }
    /// When this node first saw each finished job of another submitter (wall-clock ms), for `--keep-images`.
    public var retention: String { root + "/retention.json" }
    public var work: String { root + "/work" }
    /// Blender's output of this node's recent frame attempts (`rexnode log`).
    public var logs: String { root + "/logs" }
    /// The binary's embedded scripts and add-on, extracted once per version (`resources/<content hash>/`).
    public var resources: String { root + "/resources" }
    /// Markers of the end-of-job actions this node has run (`JOB.on-done`, `JOB.notify`, `JOB.video`).
    public var hooks: String { root + "/hooks" }
    /// Left by `rexnode init`: this node founds the farm at its first start, without a discovery window.
    public var founderMark: String { root + "/founder" }

    /// Made (or kept) private to its owner: the database holds every epoch's farm key, the folder the node key.
    public func create() throws {
        try FileManager.default.createDirectory(
            atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        _ = chmod(root, 0o700)
    }
}

/// Which renderer a node uses: real Blender, or a stand-in that sleeps and writes a small PNG (for scale tests).
public enum RendererChoice: Sendable, Equatable {
    case blender
    case simulated(milliseconds: Int)

    public init(_ text: String) throws(FarmError) {
        if text == "blender" {
            self = .blender
        } else if text.hasPrefix("simulated:"), let ms = Int(text.dropFirst("simulated:".count)), ms >= 0 {
            self = .simulated(milliseconds: ms)
        } else {
            throw FarmError(.badInput, "--renderer takes 'blender' or 'simulated:MS' (for example simulated:200).")
        }
    }
}

/// Everything `rexnode join` configures, with the defaults a one-machine farm needs.
public struct NodeSettings: Sendable {
    public var data: DataDirectory
    public var name: String
    public var listen: String = "0.0.0.0:0"
    public var discovery: String = "239.255.77.77:7777"
    public var interface: String?
    /// `join --blender PATH`, repeatable: Blender executables or Pythons that import bpy (none: $BLENDER, PATH).
    public var blenderPaths: [String] = []
    /// The first `--blender` (a node with one Blender).
    public var blenderPath: String? {
        get { blenderPaths.first }
        set { blenderPaths = newValue.map { [$0] } ?? [] }
    }
    public var slots: Int = 1
    public var threads: Int?
    public var renderer: RendererChoice = .blender
    /// How long a worker owns an assignment before the leader may give its frames to another node.
    public var leaseMilliseconds: Int64 = 10 * 60 * 1000
    /// How often background loops look at the ledger even when nothing was signalled.
    public var tickMilliseconds: Int = 250
    /// Discovery: beacon interval, and how long a silent peer takes to be suspect, then dead.
    public var beaconMilliseconds: Int = 1000
    public var suspectMilliseconds: Int = 3000
    public var deadMilliseconds: Int = 10_000
    /// A member dead this long is removed from the farm's membership (`--evict-after`).
    public var evictMilliseconds: Int = 10 * 60 * 1000
    /// At most this many members vote (`--voters`); the others are learners. A leader keeps the count: it adds
    /// new machines as voters until there are this many, promotes a learner when a voter is removed or has been
    /// dead for `promoteAfterDeadFactor` × `deadMilliseconds`, and demotes voters above the count.
    public var maxVoters: Int = 5
    /// Every this many applied entries the ledger's state becomes Raft's snapshot and the log before it is dropped
    /// (`--snapshot-every`; 0: never). New and lagging members are brought up to date from the snapshot.
    public var snapshotEvery: UInt64 = 10_000
    /// Raft timing (heartbeat 100 ms, election timeout 500–1000 ms by default).
    public var raft = RaftSettings()
    /// How long a finished job's .blend stays in this node's blob store (images stay until removed by hand).
    public var blendGraceMilliseconds: Int = 10 * 60 * 1000
    /// How long images of a finished job stay on this node when it did not submit the job and the submitter holds
    /// them (`--keep-images`, default 7 days).
    public var keepImagesMilliseconds: Int64 = 7 * 24 * 3600 * 1000
    /// Under this many free bytes on the data folder's disk the node takes no new frames (`--min-free`).
    public var minFreeBytes: Int64 = 512_000_000
    /// How much of Blender's output per frame attempt this node keeps, and for how many attempts.
    public var frameLogLimits = FrameLogLimits()
    /// Tags this node carries (`--tags`): jobs that need tags render only on nodes carrying all of them.
    public var tags: [String] = []
    /// `join --notify URL`: every job that ends is posted there as its `status --json` (plain HTTP).
    public var notifyURL: String?
    /// When this node takes work (`--schedule`); nil: always.
    public var schedule: NodeSchedule?
    /// The Cycles device its slots render on (`--device`); nil: the scene's own setting (CPU here).
    public var device: DeviceChoice?
    /// `--slots` was given; else a GPU device without an index gets one slot per GPU.
    public var slotsGiven = true
    /// What each slot renders on, once the node has checked its device (`CPU`, `OPTIX:0`, …).
    public var slotDevices: [String] = []
    /// Set when this run created the farm key: then another farm already visible on the network is an error.
    public var createdFarm = false

    public init(data: DataDirectory, name: String) {
        self.data = data
        self.name = name
    }
}
