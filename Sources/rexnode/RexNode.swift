import ArgumentParser
import Dashboard
import Farm
import Foundation
import Logging
import Mesh

/// The one binary every machine of the farm runs.
@main
struct RexNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rexnode",
        abstract: "A Blender render farm with no server: every machine runs `rexnode join`.",
        subcommands: [
            Init.self, Token.self, Join.self, Submit.self, Peers.self, Jobs.self, Status.self, Wait.self, Pause.self,
            Resume.self, Retry.self, Priority.self, Rerun.self, Remove.self, Fetch.self, Cancel.self, Ledger.self,
            Leave.self, Log.self, Recover.self, Revoke.self, RotateKey.self, Video.self, Addon.self,
            DashboardURL.self,
        ])

    /// Runs a command body, turning its errors into one sentence on stderr and a non-zero exit.
    static func guarded(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as FarmError {
            fail(error.message)
        } catch let error as MeshError {
            fail(error.message)
        } catch let error as ExitCode {
            throw error
        } catch {
            fail(ErrorSentence.describe(error) + ".")
        }
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("rexnode: \(message)\n".utf8))
        Foundation.exit(1)
    }
}

/// `--data DIR` (or `REXNODE_HOME`) selects the node.
struct DataOption: ParsableArguments {
    @Option(name: .long, help: "The node's data folder (default: $REXNODE_HOME or ~/.local/share/rexnode).")
    var data: String?

    var directory: DataDirectory { DataDirectory.resolve(data) }
}

struct JSONFlag: ParsableArguments {
    @Flag(name: .long, help: "Print JSON for scripts instead of a table.")
    var json = false
}

// MARK: init, token

extension RexNode {
    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a new farm; prints its join token last.")
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let dir = data.directory
                if FileManager.default.fileExists(atPath: dir.farmKey) {
                    throw FarmError(
                        .badInput, "\(dir.root) already belongs to a farm; `rexnode token` prints its join token.")
                }
                try dir.create()
                let key = FarmKey.generate()
                try key.save(to: dir.farmKey)
                let identity = try NodeIdentity.loadOrCreate(at: dir.identity)
                _ = FileManager.default.createFile(atPath: dir.founderMark, contents: nil)
                print("New farm created in \(dir.root) (node \(identity.nodeID)).")
                print("Join other machines with: rexnode join --token <token below>")
                print(key.token)
            }
        }
    }

    struct Token: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print this farm's join token.")
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let dir = data.directory
                guard FileManager.default.fileExists(atPath: dir.farmKey) else {
                    throw FarmError(.notFound, "\(dir.root) has no farm yet; run `rexnode init` or `rexnode join`.")
                }
                print(try FarmKey.load(from: dir.farmKey).token)
            }
        }
    }
}

// MARK: join, leave

extension RexNode {
    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run this machine as a farm node (foreground, until Ctrl-C or `rexnode leave`).")
        @OptionGroup var data: DataOption
        @Option(help: "The farm's join token (from `rexnode init` or `rexnode token`).") var token: String?
        @Option(help: "A file holding the farm key or token.") var key: String?
        @Option(help: "This node's name in `rexnode peers`.") var name: String?
        @Option(help: "Peer TCP address HOST:PORT (port 0: any free port).") var listen: String = "0.0.0.0:0"
        @Option(help: "Multicast group and port for discovery, GROUP:PORT.") var discovery: String =
            "239.255.77.77:7777"
        @Option(help: "Local IPv4 address for multicast (127.0.0.1: a one-machine farm).") var interface: String?
        @Option(
            help: ArgumentHelp(
                "A Blender executable, or a Python that can `import bpy`; repeat for several Blender versions "
                    + "(default: $BLENDER, then PATH).", valueName: "path")) var blender: [String] = []
        @Option(help: "Frames rendered at once on this machine (default 1; one per GPU with a GPU --device).")
        var slots: Int?
        @Option(help: "Cycles device: CPU, CUDA, OPTIX, HIP or ONEAPI, with :INDEX for one GPU.") var device: String?
        @Option(help: "Tags this node carries, T1,T2: jobs submitted with --tags render only on nodes with all.")
        var tags: String?
        @Option(help: "Post every job that ends, as its `status --json`, to this http:// URL.") var notify: String?
        @Option(help: "When this node takes work, node-local time, e.g. \"mon-fri 19:00-07:00; sat,sun\".")
        var schedule: String?
        @Option(help: "CPU threads per Blender process (default: all).") var threads: Int?
        @Option(help: "blender, or simulated:MS (sleeps MS per frame, writes a small PNG).") var renderer: String =
            "blender"
        @Option(help: "Seconds a dead node stays a member before it is removed from the farm.") var evictAfter: Int =
            600
        @Option(help: "Seconds of silence before a peer counts as dead (its frames go to others).") var deadAfter:
            Double = 10
        @Option(help: "At most this many members vote (the rest are learners: they render, never vote).")
        var voters: Int = 5
        @Option(help: "Snapshot the ledger and drop the log before it every N entries (0: never).")
        var snapshotEvery: Int = 10_000
        @Option(help: ArgumentHelp("Milliseconds between discovery beacons.", visibility: .hidden)) var beaconMs: Int =
            1000
        @Option(help: "Seconds a finished job's .blend is kept on this node.") var blendGrace: Double = 600
        @Option(
            help:
                "How long a finished job's images stay on this node when another node submitted it and holds them (7d, 36h, 90m, 30s)."
        ) var keepImages: String = "7d"
        @Option(help: "Take no new frames while the data folder's disk has less free than this (512M, 2G).")
        var minFree: String = "512M"
        @Option(help: "Dashboard and API address HOST:PORT (port 0: any free port), or off.") var http: String =
            DashboardSettings.defaultAddress

        func validate() throws {
            if let slots, !(1...64).contains(slots) { throw ValidationError("--slots must be between 1 and 64.") }
            if let threads, threads < 1 { throw ValidationError("--threads must be at least 1.") }
            if token != nil && key != nil { throw ValidationError("Give either --token or --key, not both.") }
            guard deadAfter >= 1 else { throw ValidationError("--dead-after must be at least 1 second.") }
            guard evictAfter >= 1 else { throw ValidationError("--evict-after must be at least 1 second.") }
            guard beaconMs >= 50 else { throw ValidationError("--beacon-ms must be at least 50.") }
            guard (1...99).contains(voters) else { throw ValidationError("--voters must be between 1 and 99.") }
            guard snapshotEvery == 0 || snapshotEvery >= 10 else {
                throw ValidationError("--snapshot-every must be 0 (never) or at least 10 entries.")
            }
        }

        func run() async throws {
            try await RexNode.guarded {
                // Bad capabilities fail before anything is written.
                let parsedTags = try tags.map { try NodeTags.parse($0) } ?? []
                let parsedSchedule = try schedule.map { try NodeSchedule($0) }
                let parsedDevice = try device.map { try DeviceChoice($0) }
                let dir = data.directory
                let httpSettings = try DashboardSettings.parse(http, data: dir)
                try dir.create()
                let hadKey = FileManager.default.fileExists(atPath: dir.farmKey)
                let farmKey = try resolveKey(dir)
                var settings = NodeSettings(data: dir, name: name ?? Self.defaultName(dir))
                settings.listen = listen
                settings.discovery = discovery
                settings.interface = interface
                settings.blenderPaths = blender
                settings.slots = slots ?? 1
                settings.slotsGiven = slots != nil
                settings.tags = parsedTags
                if let notify {
                    guard notify.hasPrefix("http://") else {
                        throw FarmError(.badInput, "--notify takes an http:// URL, such as http://127.0.0.1:8000/hook.")
                    }
                    settings.notifyURL = notify
                }
                settings.schedule = parsedSchedule
                settings.device = parsedDevice
                settings.threads = threads
                settings.renderer = try RendererChoice(renderer)
                settings.createdFarm = !hadKey && token == nil && key == nil
                settings.evictMilliseconds = evictAfter * 1000
                settings.deadMilliseconds = Int(deadAfter * 1000)
                settings.suspectMilliseconds = min(3000, settings.deadMilliseconds / 2)
                settings.beaconMilliseconds = beaconMs
                settings.maxVoters = voters
                settings.snapshotEvery = UInt64(snapshotEvery)
                settings.blendGraceMilliseconds = Int(blendGrace * 1000)
                settings.keepImagesMilliseconds = try RetentionSettings.parseDuration(keepImages)
                settings.minFreeBytes = try RetentionSettings.parseSize(minFree)
                LoggingSystem.bootstrap { label in
                    var handler = StreamLogHandler.standardError(label: label)
                    handler.logLevel =
                        ProcessInfo.processInfo.environment["REXNODE_LOG"].flatMap { Logger.Level(rawValue: $0) }
                        ?? .info
                    return handler
                }
                let logger = Logger(label: "rexnode")
                let node = try await FarmNode(settings: settings, farmKey: farmKey, logger: logger)
                let dashboard = try httpSettings.map {
                    try DashboardService(settings: $0, backend: node, logger: logger)
                }
                do {
                    try await node.run(
                        extraServices: dashboard.map { [$0] } ?? [],
                        onFounded: {
                            // Printed once the farm exists (no other farm was in sight). Unbuffered: `join` keeps
                            // running, and scripts read the token while it does.
                            let text =
                                "New farm created. Join other machines with: rexnode join --token <token below>\n"
                            FileHandle.standardOutput.write(Data((text + farmKey.token + "\n").utf8))
                        })
                } catch let error as FarmError where settings.createdFarm && error.code == .alreadyRunning {
                    // The farm this run created was never used: forget it, so the next run can join the other.
                    try? FileManager.default.removeItem(atPath: dir.farmKey)
                    try? FileManager.default.removeItem(atPath: dir.database)
                    throw error
                } catch let error where node.mustStartOver {
                    // The run was stopping to start over: what failed on the way out does not change that.
                    FileHandle.standardError.write(Data("rexnode: \(error) (while stopping to start over)\n".utf8))
                }
                // A recovered farm said this node's log is from before its recovery: set the old ledger aside and
                // start again as this same process (exec, so the old database is never closed over the new one's
                // files: SQLite removes its WAL by name when it closes).
                if node.mustStartOver {
                    try FarmNode.setAsideStaleLedger(dir)
                    Self.restartSelf()
                }
            }
        }

        /// The farm key: from --token or --key (saved for next time), else the saved one, else a new farm.
        private func resolveKey(_ dir: DataDirectory) throws -> FarmKey {
            let saved = FileManager.default.fileExists(atPath: dir.farmKey) ? try FarmKey.load(from: dir.farmKey) : nil
            let given = try token.map { try FarmKey(token: $0) } ?? key.map { try FarmKey.load(from: $0) }
            if let given, let saved, given != saved,
                FarmKeyRing.load(from: dir.farmKeyRing, current: saved).isRetired(given)
            {
                // An older key of this farm (a token from before a rotation): the folder's current key wins.
                return saved
            }
            if let given {
                if let saved, saved != given {
                    guard FileManager.default.fileExists(atPath: dir.database) else {
                        throw FarmError(
                            .badInput,
                            "\(dir.root) already belongs to another farm; use a new --data folder to join this one.")
                    }
                    // A folder that was in a farm and holds a key this token is not in: it missed rotations (away
                    // longer than --evict-after, or handed a false key). The token's key is used from now on; the
                    // node learns the farm's epoch from its beacons until its ledger holds that key.
                    var ring = FarmKeyRing.load(from: dir.farmKeyRing, current: saved)
                    ring.current = given
                    _ = FileManager.default.createFile(
                        atPath: dir.farmKeyUnconfirmed, contents: Data("unconfirmed\n".utf8),
                        attributes: [.posixPermissions: 0o600])
                    try ring.save(to: dir.farmKeyRing)
                    try given.save(to: dir.farmKey)
                    FileHandle.standardError.write(
                        Data(
                            ("rexnode: \(dir.root) now uses the key of the token given (its own key was older); if the "
                                + "token is another farm's, stop and use a new --data folder for that farm.\n").utf8))
                    return given
                }
                try given.save(to: dir.farmKey)
                return given
            }
            if let saved { return saved }
            let fresh = FarmKey.generate()
            try fresh.save(to: dir.farmKey)
            return fresh
        }

        /// Replaces this process with a new run of the same command line; returns only if that failed.
        static func restartSelf() -> Never {
            let arguments = CommandLine.arguments.map { strdup($0) } + [nil]
            execv("/proc/self/exe", arguments)
            RexNode.fail("Could not restart to rejoin the recovered farm (errno \(errno)); run the same command again.")
        }

        static func defaultName(_ dir: DataDirectory) -> String {
            var host = [CChar](repeating: 0, count: 256)
            gethostname(&host, host.count)
            let hostname = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let folder = (dir.root as NSString).lastPathComponent
            return folder == "rexnode" || folder.isEmpty ? hostname : "\(hostname)-\(folder)"
        }
    }

    struct DashboardURL: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dashboard", abstract: "Print this node's dashboard URL (with its access token) last.")
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let url = try DashboardFiles.currentURL(data.directory)
                print("Open this node's dashboard (the link carries its access token; keep it private):")
                print(url)
            }
        }
    }

    struct Leave: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Leave the farm gracefully; the daemon exits.")
        @OptionGroup var data: DataOption
        @Flag(help: "Leave even if fewer than 3 voters would remain.") var force = false

        func run() async throws {
            try await RexNode.guarded {
                _ = try await ControlClient.send(force ? .forceLeave : .leave, data: data.directory)
                print("The node is leaving the farm.")
            }
        }
    }
}
