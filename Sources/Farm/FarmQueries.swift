import Election
import Foundation
import Ledger
import Mesh

// MARK: Rows (the CLI contract's JSON shapes)

/// One job as `jobs --json` and `status` show it. Absent values are `null`, never missing keys.
struct JobRow: Encodable, Sendable {
    var job, name, state: String
    var framesTotal, framesDone, framesFailed: Int
    var output: String
    var priority: Int
    var submitter: String
    var message: String?
    /// Tags a node must carry, every one, to render the job (`submit --tags`).
    var tags: [String]

    init(_ job: JobRecord) {
        tags = job.tags
        self.job = job.job
        name = job.name
        state = job.state
        framesTotal = job.framesTotal
        framesDone = job.framesDone
        framesFailed = job.framesFailed
        output = job.output
        priority = job.priority
        submitter = job.submitter
        message = job.message
    }

    enum CodingKeys: String, CodingKey {
        case job, name, state, output, priority, submitter, message, tags
        case framesTotal = "frames_total"
        case framesDone = "frames_done"
        case framesFailed = "frames_failed"
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(job, forKey: .job)
        try c.encode(name, forKey: .name)
        try c.encode(state, forKey: .state)
        try c.encode(framesTotal, forKey: .framesTotal)
        try c.encode(framesDone, forKey: .framesDone)
        try c.encode(framesFailed, forKey: .framesFailed)
        try c.encode(output, forKey: .output)
        try c.encode(priority, forKey: .priority)
        try c.encode(submitter, forKey: .submitter)
        try c.encode(message, forKey: .message)
        try c.encode(tags, forKey: .tags)
    }
}

/// The answer to `submit`: the job, and what was shipped and what the submitter should know.
struct SubmittedRow: Encodable, Sendable {
    var job: JobRow
    var outcome: SubmitService.Outcome

    init(_ outcome: SubmitService.Outcome) {
        job = JobRow(outcome.record)
        self.outcome = outcome
    }

    enum CodingKeys: String, CodingKey {
        case warnings, files, bytes, baked
        case newFiles = "new_files"
        case movie
    }

    func encode(to encoder: any Encoder) throws {
        try job.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(outcome.warnings, forKey: .warnings)
        try c.encode(outcome.files, forKey: .files)
        try c.encode(outcome.bytes, forKey: .bytes)
        try c.encode(outcome.newFiles, forKey: .newFiles)
        try c.encode(outcome.baked, forKey: .baked)
        try c.encodeIfPresent(
            outcome.record.movie.map { Delivery.movieFileName(job: outcome.record.name, movie: $0) }, forKey: .movie)
    }
}

/// One frame in `status --json`.
struct FrameRow: Encodable, Sendable {
    var frame: Int
    var state: String
    var node, hash: String?
    var holders: [String]
    /// Failed attempts since the frame was last retried.
    var attempts: Int
    var message: String?
    var progress: Double?
    /// The name of `node`, when this node knows it.
    var nodeName: String?
    var renderSeconds: Double?
    /// Each failed attempt: which node, and what it said.
    var failures: [Failure]?
    /// A tiled frame's tiles.
    var tiles: [Tile]?
    /// The log index at which a done frame was committed: the farm's order of completion.
    var doneIndex: UInt64? = nil

    struct Tile: Encodable, Sendable {
        var tile: Int
        var state: String
        var node: String?
        var nodeName: String?
        var renderSeconds: Double?

        enum CodingKeys: String, CodingKey {
            case tile, state, node
            case nodeName = "node_name"
            case renderSeconds = "render_seconds"
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(tile, forKey: .tile)
            try c.encode(state, forKey: .state)
            try c.encode(node, forKey: .node)
            try c.encodeIfPresent(nodeName, forKey: .nodeName)
            try c.encodeIfPresent(renderSeconds, forKey: .renderSeconds)
        }
    }

    struct Failure: Encodable, Sendable {
        var attempt: Int
        var node: String
        var nodeName: String
        var message: String

        enum CodingKeys: String, CodingKey {
            case attempt, node, message
            case nodeName = "node_name"
        }
    }

    enum CodingKeys: String, CodingKey {
        case frame, state, node, hash, holders, attempts, message, progress, failures, tiles
        case nodeName = "node_name"
        case renderSeconds = "render_seconds"
        case doneIndex = "done_index"
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(frame, forKey: .frame)
        try c.encode(state, forKey: .state)
        try c.encode(node, forKey: .node)
        try c.encode(hash, forKey: .hash)
        try c.encode(holders, forKey: .holders)
        try c.encode(attempts, forKey: .attempts)
        try c.encodeIfPresent(message, forKey: .message)
        try c.encodeIfPresent(progress, forKey: .progress)
        try c.encodeIfPresent(nodeName, forKey: .nodeName)
        try c.encodeIfPresent(renderSeconds, forKey: .renderSeconds)
        try c.encodeIfPresent(failures, forKey: .failures)
        try c.encodeIfPresent(tiles, forKey: .tiles)
        try c.encodeIfPresent(doneIndex, forKey: .doneIndex)
    }
}

/// `status JOB`: the job, and unless brief its frames (and why delivery is stuck, if it is).
struct JobStatusView: Encodable, Sendable {
    var job: JobRow
    var frames: [FrameRow]?
    var deliveryError: String?
    /// A movie job's movie file (where the submitter encodes it); on the submitter, how far it is
    /// (`waiting|encoding|made|failed`) and why it could not be made, if it could not.
    var movie: String?
    var movieState: String?
    /// The scene's frame rate when the ledger knows it (a movie job's), for `rexnode video`.
    var fps: Double?
    var movieError: String?
    /// This node is the job's submitter: it writes the frames into the output folder.
    var deliversHere = false
    /// Names of the nodes blocked for this job (their renders of it failed too often).
    var blockedNodes: [String] = []
    /// The Blender version every frame of the job renders with (null: any node, the simulated renderer).
    var blender: String?
    /// A tiled job: its grid ("3x2") and how many of its tiles are in.
    var tiles: String?
    var tilesDone = 0
    var tilesTotal = 0
    /// The most recently finished frame (the dashboard shows it large).
    var latestFrame: Int? = nil
    /// The movie is `submit --video`'s preview, not the scene's movie output: its path, state and error go out as
    /// `video`, `video_state`, `video_error`, so `submit` and `wait` (which wait for a scene's movie) do not wait
    /// for it or fail on it.
    var movieIsVideo = false

    /// The done frame committed last (the highest `done_index`); among frames without one (entries written before
    /// the ledger kept it), the highest number.
    static func latest(_ frames: [FrameRow]) -> Int? {
        frames.filter { $0.state == "done" }.max { ($0.doneIndex ?? 0, $0.frame) < ($1.doneIndex ?? 0, $1.frame) }?
            .frame
    }

    enum CodingKeys: String, CodingKey {
        case frames, movie, blender, tiles
        case tilesDone = "tiles_done"
        case tilesTotal = "tiles_total"
        case deliversHere = "delivers_here"
        case blockedNodes = "blocked_nodes"
        case deliveryError = "delivery_error"
        case movieState = "movie_state"
        case movieError = "movie_error"
        case latestFrame = "latest_frame"
        case fps
        case video
        case videoState = "video_state"
        case videoError = "video_error"
    }

    func encode(to encoder: any Encoder) throws {
        try job.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(frames, forKey: .frames)
        try c.encode(deliversHere, forKey: .deliversHere)
        try c.encode(blockedNodes, forKey: .blockedNodes)
        try c.encode(blender, forKey: .blender)
        if let tiles {
            try c.encode(tiles, forKey: .tiles)
            try c.encode(tilesDone, forKey: .tilesDone)
            try c.encode(tilesTotal, forKey: .tilesTotal)
        }
        try c.encodeIfPresent(deliveryError, forKey: .deliveryError)
        try c.encodeIfPresent(movie, forKey: movieIsVideo ? .video : .movie)
        try c.encodeIfPresent(movieState, forKey: movieIsVideo ? .videoState : .movieState)
        try c.encodeIfPresent(movieError, forKey: movieIsVideo ? .videoError : .movieError)
        try c.encodeIfPresent(fps, forKey: .fps)
        try c.encodeIfPresent(latestFrame, forKey: .latestFrame)
    }
}

/// One node in `peers --json`; this node's own row also carries its Raft term and the leader it follows.
struct PeerRow: Encodable, Sendable {
    var id, name, address, role, state: String
    var slots, framesDone: Int
    var isSelf: Bool
    var task: String?
    var member: Bool
    /// Whether it votes (a member that does not is a learner: it replicates and renders, and its role is `follower`).
    var voter: Bool = false
    var term: UInt64?
    var leader: String?
    /// This node only: the longest its Raft loop went without running, and (as a follower) without hearing from
    /// its leader, in milliseconds since it started: what a busy machine cost Raft.
    var raftStallMs: Int?
    var leaderSilenceMs: Int?
    /// Tags the node carries, the devices its slots render on, and when it wakes if it rests outside its schedule.
    var tags: [String] = []
    var devices: [String] = ["CPU"]
    var restingUntilMs: Int64? = nil
    /// The Blender versions the node renders with (from its beacons; this node's from its runtimes).
    var blender: [String] = []
    /// Its disk (from its beacons; this node's from its own reading): free on the data folder's disk, used by its
    /// blob store, and whether it is nearly full (then it takes no work).
    var disk: DiskState.Reading? = nil

    enum CodingKeys: String, CodingKey {
        case id, name, address, role, state, slots, task, member, term, leader, blender
        case diskFree = "disk_free_bytes"
        case diskUsed = "disk_used_bytes"
        case diskFull = "disk_full"
        case voter, tags, devices, resting
        case restingUntil = "resting_until"
        case framesDone = "frames_done"
        case isSelf = "self"
        case raftStallMs = "raft_longest_stall_ms"
        case leaderSilenceMs = "raft_longest_leader_silence_ms"
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(name, forKey: .name)
        try c.encode(address, forKey: .address)
        try c.encode(role, forKey: .role)
        try c.encode(state, forKey: .state)
        try c.encode(slots, forKey: .slots)
        try c.encode(framesDone, forKey: .framesDone)
        try c.encode(isSelf, forKey: .isSelf)
        try c.encode(task, forKey: .task)
        try c.encode(member, forKey: .member)
        try c.encode(voter, forKey: .voter)
        try c.encode(tags, forKey: .tags)
        try c.encode(devices, forKey: .devices)
        try c.encode(restingUntilMs != nil, forKey: .resting)
        try c.encode(restingUntilMs.map(Self.localTime), forKey: .restingUntil)
        try c.encode(blender, forKey: .blender)
        try c.encode(disk?.full ?? false, forKey: .diskFull)
        try c.encodeIfPresent(disk.flatMap { $0.freeBytes == .max ? nil : $0.freeBytes }, forKey: .diskFree)
        try c.encodeIfPresent(disk?.usedBytes, forKey: .diskUsed)
        if isSelf {
            try c.encode(term ?? 0, forKey: .term)
            try c.encode(leader, forKey: .leader)
            try c.encodeIfPresent(raftStallMs, forKey: .raftStallMs)
            try c.encodeIfPresent(leaderSilenceMs, forKey: .leaderSilenceMs)
        }
    }

    /// A wall-clock time as ISO 8601 in this machine's zone, e.g. `2026-12-02T19:00:00+01:00`.
    static func localTime(_ ms: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = .current
        return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }
}

// MARK: The read model

/// Answers `peers`, `jobs`, `status` and `ledger` from the ledger and the peer table, as typed rows whose keys are
/// the CLI contract's. The control socket uses it; the dashboard will use the same one.
struct FarmQueries: Sendable {
    let nodeID: String
    let name: String
    let listen: String
    let slots: Int
    let ledger: LedgerStore
    let raft: RaftNode
    let mesh: MeshNode
    let roster: Roster
    let progress: SlotProgress
    let delivery: Delivery
    /// What this node's slots render on (`CPU`, `OPTIX:0`, …).
    var devices: [String] = ["CPU"]
    /// `JobHooks`' markers (`DATA/hooks`): where a `submit --video` job's movie went.
    var hooks: String? = nil

    func jobs() throws -> [JobRow] { try ledger.jobs().map(JobRow.init) }

    /// A job by id, unique name or unique id prefix; an ambiguous word fails naming what it matches.
    private func countTiles(_ job: JobRecord, into view: inout JobStatusView) throws {
        guard let grid = job.tiles else { return }
        let counts = try ledger.tileCounts(of: job.job)
        view.tiles = grid.description
        view.tilesDone = counts.done
        view.tilesTotal = counts.total
    }

    func findJob(_ id: String) throws -> JobRecord {
        let matches = try ledger.jobs(matching: id, limit: 6)
        guard let job = matches.first else {
            throw FarmError(.notFound, "There is no job '\(id)' in this farm (see `rexnode jobs`).")
        }
        guard matches.count == 1 else {
            let named = matches.prefix(5).map { "\($0.job) (\($0.name), \($0.state))" }.joined(separator: ", ")
            throw FarmError(
                .badInput,
                "'\(id)' matches \(matches.count > 5 ? "more than 5" : "\(matches.count)") jobs: \(named)"
                    + "; use more of the job id.")
        }
        return job
    }

    func status(_ job: JobRecord, brief: Bool) async throws -> JobStatusView {
        guard !brief else {
            var view = JobStatusView(job: JobRow(job), deliversHere: job.submitter == nodeID, blender: job.blender)
            try countTiles(job, into: &view)
            return view
        }
        let live = progress.snapshot().values.filter { $0.job == job.job }
        let problem = await delivery.problem(job: job.job)
        let names = await nodeNames()
        // A big job's frames are a long read: off Swift's shared pool, which every loop of the daemon runs on.
        let ledger = self.ledger
        let frames = try await Blocking.run { () throws -> [FrameRow] in
            let (records, attempts, tiles) = (
                try ledger.frames(of: job.job), try ledger.attempts(of: job.job), try ledger.tiles(of: job.job)
            )
            let fractions = Dictionary(live.map { ($0.frame, $0.fraction) }, uniquingKeysWith: { a, _ in a })
            return records.map { f in
                FrameRow(
                    frame: f.frame, state: f.state, node: f.node, hash: f.hash, holders: f.holders,
                    attempts: f.attempts, message: f.message, progress: fractions[f.frame],
                    nodeName: f.node.map { names[$0] ?? $0 }, renderSeconds: f.renderMs.map { Double($0) / 1000 },
                    failures: attempts[f.frame].map { list in
                        list.map {
                            .init(
                                attempt: $0.attempt, node: $0.node, nodeName: names[$0.node] ?? $0.node,
                                message: $0.message)
                        }
                    },
                    tiles: tiles[f.frame].map { list in
                        list.map {
                            .init(
                                tile: $0.tile, state: $0.state, node: $0.node,
                                nodeName: $0.node.map { names[$0] ?? $0 },
                                renderSeconds: $0.renderMs.map { Double($0) / 1000 })
                        }
                    }, doneIndex: f.state == "done" ? f.doneIndex : nil)
            }
        }
        var view = JobStatusView(
            job: JobRow(job), frames: frames, deliveryError: problem, deliversHere: job.submitter == nodeID,
            blockedNodes: try ledger.blockedNodes(job: job.job).map { names[$0] ?? $0 }.sorted(), blender: job.blender)
        try countTiles(job, into: &view)
        view.latestFrame = JobStatusView.latest(frames)
        view.fps = job.fps
        if let movie = job.movie {
            view.fps = view.fps ?? (movie.fpsBase > 0 ? Double(movie.fps) / movie.fpsBase : Double(movie.fps))
            view.movie = "\(job.output)/\(Delivery.movieFileName(job: job.name, movie: movie))"
            if job.submitter == nodeID {
                let state = await delivery.movieState(job: job.job)
                view.movieState = state.name
                if case .failed(let why) = state { view.movieError = why }
            }
        }
        if job.video, job.submitter == nodeID, view.movie == nil || view.movieState != "made", let hooks {
            view.movieIsVideo = view.movie == nil
            switch VideoRecord.read(folder: hooks, job: job.job) {
            case .made(let path)?:
                (view.movie, view.movieState, view.movieError) = (path, "made", nil)
            case .failed(let why)?:
                if view.movie == nil { (view.movieState, view.movieError) = ("failed", why) }
            case .encoding?:
                if view.movie == nil { view.movieState = "encoding" }
            case nil:
                if view.movie == nil { view.movieState = "waiting" }
            }
        }
        return view
    }

    /// This node, then the other members (those discovery has never seen are dead), as they are: a dead node's role
    /// is `-`, a node that left is gone. With `all`, also the machines discovery sees that are not members: `joining`
    /// (waiting to be added) or what they claim (a machine from before a recovery, told to start over).
    func peers(all: Bool) async throws -> [PeerRow] {
        try await peers().compactMap { row in
            var row = row
            if row.isSelf { return row }
            if row.state == "dead" { row.role = "-" }
            if row.member { return row }
            if !all || row.role == NodeStatus.Role.leaving.rawValue { return nil }
            // Not a member: a peer saying it leads leads nothing this node knows of.
            if row.role == "leader" { row.role = "follower" }
            return row
        }
    }

    /// This node, then every peer discovery knows, then members discovery has never seen (dead).
    func peers() async throws -> [PeerRow] {
        let done = try ledger.framesDoneByNode()
        let status = await raft.status
        let members = status?.members ?? []
        let tasks = progress.snapshot().values.sorted { ($0.job, $0.frame) < ($1.job, $1.frame) }
        let port = (try? await mesh.listeningPort()).map(String.init) ?? "?"
        let host = listen.split(separator: ":").dropLast().joined(separator: ":")
        var rows = [
            PeerRow(
                id: nodeID, name: name, address: "\(host):\(port)", role: roster.role(in: status).rawValue,
                state: "alive", slots: slots, framesDone: done[nodeID] ?? 0, isSelf: true,
                task: tasks.isEmpty ? nil : tasks.map { "\($0.job)/\($0.frame)" }.joined(separator: ","),
                member: members.contains(nodeID), term: status?.term ?? 0, leader: status?.leader,
                raftStallMs: Self.milliseconds(await raft.longestStall),
                leaderSilenceMs: Self.milliseconds(await raft.longestLeaderSilence), tags: roster.tags,
                devices: Array(Set(devices)).sorted(), restingUntilMs: roster.rest.restingUntilMs,
                blender: roster.blender, disk: roster.disk.current)
        ]
        var seen: Set<String> = [nodeID]
        for peer in await mesh.peers() {
            seen.insert(peer.nodeID)
            let announced = NodeStatus(bytes: peer.status)
            var role = announced?.role ?? .joining
            // The contract's roles are leader|follower|candidate|joining; a member on its way out still follows, and
            // a node that left is marked so that `peers(all:)` leaves it out.
            if role == .leaving { role = members.contains(peer.nodeID) ? .follower : .leaving }
            // A member whose beacon has not caught up with its addition yet already follows.
            if role == .joining && members.contains(peer.nodeID) { role = .follower }
            if role == .leader && status?.leader != nil && status?.leader != peer.nodeID { role = .follower }
            rows.append(
                PeerRow(
                    id: peer.nodeID, name: peer.name, address: peer.address,
                    role: peer.state == .dead ? "follower" : role.rawValue, state: peer.state.rawValue,
                    slots: announced?.slots ?? 0, framesDone: done[peer.nodeID] ?? 0, isSelf: false,
                    task: peer.state == .alive ? announced?.task : nil, member: members.contains(peer.nodeID),
                    tags: announced?.tags ?? [], devices: announced?.devices ?? ["CPU"],
                    restingUntilMs: peer.state == .alive ? announced?.restingUntilMs : nil,
                    blender: announced?.blender ?? [],
                    disk: announced.flatMap { a in
                        a.diskUsedMB == nil && a.diskFull != true
                            ? nil
                            : DiskState.Reading(
                                freeBytes: a.diskFreeMB.map { $0 * 1_000_000 } ?? .max,
                                usedBytes: (a.diskUsedMB ?? 0) * 1_000_000, full: a.diskFull ?? false)
                    }))
        }
        for member in members.sorted() where !seen.contains(member) {
            rows.append(
                PeerRow(
                    id: member, name: member, address: "", role: "follower", state: "dead", slots: 0,
                    framesDone: done[member] ?? 0, isSelf: false, task: nil, member: true))
        }
        let voters = status?.voters ?? []
        for i in rows.indices { rows[i].voter = voters.contains(rows[i].id) }
        return rows
    }

    static func milliseconds(_ d: Duration) -> Int { Int(d.raftNanoseconds / 1_000_000) }

    /// Node id → name, for every node this node has heard of (itself included).
    func nodeNames() async -> [String: String] {
        var names = [nodeID: name]
        for peer in await mesh.peers() { names[peer.nodeID] = peer.name }
        return names
    }

    /// The retained applied log, one row per entry (`ledger --json`).
    func log(from index: UInt64 = 1) throws -> [JSONValue] { try ledger.log(from: index).map(Self.logRow) }

    /// One applied entry: index, term, type and command id, the command's own fields, and what applying it did.
    static func logRow(_ logged: LoggedEntry) -> JSONValue {
        var o: [String: JSONValue] = [
            "index": .int(Int64(logged.index)), "term": .int(Int64(logged.term)),
            "type": .string(logged.entry.command.typeName), "id": .string(logged.entry.id.description),
        ]
        if logged.duplicate { o["duplicate"] = true }
        let fields: JSONValue =
            switch logged.entry.command {
            case .submitJob(let c): .from(c)
            case .assignChunk(let c): .from(c)
            case .completeFrame(let c): .from(c)
            case .failFrame(let c): .from(c)
            case .releaseFrames(let c): .from(c)
            case .cancelJob(let c), .pauseJob(let c), .resumeJob(let c), .removeJob(let c): .from(c)
            case .retryFrames(let c): .from(c)
            case .setPriority(let c): .from(c)
            case .addNode(let c), .removeNode(let c), .setVoter(let c): .from(c)
            case .recoverMembers(let c): .from(c)
            // Never the key itself: only its epoch and whom it shut out.
            case .farmKey(let c): ["epoch": .int(Int64(c.epoch)), "revoked": .from(c.revoked)]
            case .revokeNodes(let c): .from(c)
            case .dropImages(let c): .from(c)
            case .noop: [:]
            }
        if case .object(let f) = fields { for (k, v) in f where o[k] == nil { o[k] = v } }
        // What applying it did (absent for entries applied before outcomes were recorded). The command's own
        // fields keep their keys: ReleaseFrames has a `reason` of its own, so `ignored_reason` always carries why.
        if let outcome = logged.outcome {
            o["outcome"] = .string(outcome.name)
            switch outcome {
            case .ignored(let reason):
                o["ignored_reason"] = .string(reason)
                if o["reason"] == nil { o["reason"] = .string(reason) }
            case .duplicate(let first):
                o["duplicate_of"] = .int(Int64(clamping: first))
            case .applied:
                break
            }
        }
        return .object(o)
    }
}
