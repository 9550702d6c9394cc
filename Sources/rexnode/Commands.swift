import ArgumentParser
import Farm
import Foundation

// MARK: submit

extension RexNode {
    struct Submit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Render a .blend on the farm and wait until every frame is in the output folder.")
        @Argument(help: "The .blend file to render.") var file: String
        @Option(help: "Frames: 1-250, 1-100x5, 1,5,10-20 (default: the scene's own range).") var frames: String?
        @Option(help: "Frames per chunk handed to one render slot.") var chunk: Int?
        @Option(help: "Output folder (default: ./rex-out/NAME/).") var output: String?
        @Option(help: "Job name (default: the file's name).") var name: String?
        @Option(help: "Higher runs first.") var priority: Int = 0
        @Option(help: "Only nodes carrying every one of these tags render the job, T1,T2.") var tags: String?
        @Option(help: "Split every frame into C×R tiles rendered across the farm, then assembled (e.g. 3x2).")
        var tiles: String?
        @Flag(help: "Submit even if files the scene uses are missing (they render as Blender renders them missing).")
        var allowMissing = false
        @Flag(help: "Run the scene's Python drivers and scripts while rendering (Blender's -y).")
        var trustScripts = false
        @Flag(help: "Make NAME.mp4 (H.264) next to the output folder when the job is done (`rexnode video`).")
        var video = false
        @Option(
            help:
                "When the job ends (done, failed or canceled), this node's daemon runs `sh -c CMD` once, the job's JSON on stdin."
        )
        var onDone: String?
        @Flag(help: "Print the job id and return at once.") var noWait = false
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func validate() throws {
            if let chunk, chunk < 1 || chunk > FarmNode.maxChunk {
                throw ValidationError("--chunk must be between 1 and \(FarmNode.maxChunk).")
            }
        }

        func run() async throws {
            try await RexNode.guarded {
                let path = DataDirectory.absolute(file)
                try SceneFile.validate(path)
                if let frames { _ = try FrameSpec(frames) }
                if let tags { _ = try NodeTags.parse(tags, option: "submit --tags") }
                if let tiles { _ = try TileSpec.parse(tiles) }
                let jobName = SceneFile.jobName(from: name ?? path)
                let outputDir = DataDirectory.absolute(output ?? "rex-out/\(jobName)")
                try SceneFile.prepareOutput(outputDir)
                let ticket = "t" + UUID().uuidString.prefix(12).lowercased()
                let request = ControlRequest.submit(
                    SubmitRequest(
                        path: path, frames: frames, chunk: chunk, output: outputDir, name: jobName, priority: priority,
                        allowMissing: allowMissing, trustScripts: trustScripts, ticket: ticket, tags: tags,
                        tiles: tiles, onDone: onDone, video: video))
                // On a terminal, what the daemon is doing with a large project while the submit is answered.
                let shower =
                    !json.json && isatty(STDOUT_FILENO) != 0
                    ? Task { await Self.showProgress(ticket: ticket, file: path, data: data.directory) } : nil
                let job: JSONValue
                do {
                    job = try await ControlClient.send(request, data: data.directory)
                    shower?.cancel()
                    await shower?.value
                } catch {
                    shower?.cancel()
                    await shower?.value
                    throw error
                }
                let id = job["job"]?.string ?? "?"
                for warning in job["warnings"]?.array ?? [] {
                    if let text = warning.string {
                        FileHandle.standardError.write(Data(("warning: " + text + "\n").utf8))
                    }
                }
                if noWait {
                    print(json.json ? Self.summary(job).jsonText() : id)
                    return
                }
                // From here on the job is the farm's: Ctrl-C says so (installed before the job line, which a user
                // may interrupt at once).
                let interrupt = noWait ? nil : Waiter.onInterrupt(job: id)
                defer { interrupt?.cancel() }
                // The folder the daemon chose: another job's frames are never overwritten.
                let written = job["output"]?.string ?? outputDir
                if !json.json {
                    // Scripts parse this line as "Job ID (N frames) → DIR": keep its words, even for one frame.
                    print("Job \(id) (\(job["frames_total"]?.int ?? 0) frames) → \(written)")
                    print(Self.shipped(job))
                    fflush(nil)  // a script reading the pipe learns the job id as soon as it is accepted
                }
                try await Waiter(job: id, data: data.directory, quiet: json.json).follow(json: json.json)
            }
        }

        /// Redraws one line with the daemon's progress on this submit until cancelled, then clears it.
        static func showProgress(ticket: String, file: String, data: DataDirectory) async {
            var drawn = false
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                guard !Task.isCancelled,
                    let row = try? await ControlClient.send(.progress(ticket: ticket), data: data), row != .null
                else { continue }
                let line: String
                switch row["phase"]?.string {
                case "storing":
                    line =
                        "Storing files: \(row["files"]?.int ?? 0)/\(row["files_total"]?.int ?? 0) · "
                        + "\(size(row["bytes"]?.int ?? 0)) of \(size(row["bytes_total"]?.int ?? 0))"
                case "committing": line = "Recording the job…"
                default: line = "Reading \((file as NSString).lastPathComponent) in Blender (tracing its files)…"
                }
                print("\r\u{1B}[K" + line, terminator: "")
                fflush(nil)
                drawn = true
            }
            if drawn {
                print("\r\u{1B}[K", terminator: "")
                fflush(nil)
            }
        }

        static func size(_ bytes: Int) -> String {
            let value = Double(bytes)
            return value >= 1e9
                ? String(format: "%.1f GB", value / 1e9)
                : value >= 1e6 ? String(format: "%.1f MB", value / 1e6) : String(format: "%.0f kB", value / 1e3)
        }

        /// "212 files, 1.1 GB, 3 new" (+ what was baked).
        static func shipped(_ job: JSONValue) -> String {
            let files = job["files"]?.int ?? 1
            var line =
                "\(files) file\(files == 1 ? "" : "s"), \(size(job["bytes"]?.int ?? 0)), "
                + "\(job["new_files"]?.int ?? 0) new"
            let baked = job["baked"]?.array?.compactMap(\.string) ?? []
            if !baked.isEmpty { line += "; baked \(baked.joined(separator: ", "))" }
            return line
        }

        static func summary(_ job: JSONValue) -> JSONValue {
            [
                "job": job["job"] ?? .null, "state": job["state"] ?? .null,
                "frames_total": job["frames_total"] ?? .null, "frames_done": job["frames_done"] ?? .null,
                "output": job["output"] ?? .null,
            ]
        }
    }
}

/// Follows a job until it ends and every done frame is in the output folder, drawing progress as it goes.
struct Waiter {
    let job: String
    let data: DataDirectory
    let quiet: Bool
    /// How long to keep waiting for a daemon that went away (it may be restarting).
    var daemonGrace: Duration = .seconds(120)
    /// How long frames may stay undeliverable after the job is done before `submit` gives up.
    var deliveryGrace: Duration = .seconds(15)

    /// Waits for the job as `submit` does and ends as it does: 0 once every frame is in the output folder (and the
    /// movie made), else one sentence and a non-zero exit. The caller has installed `onInterrupt` for the job.
    func follow(json: Bool) async throws {
        let final = try await wait()
        if json { print(RexNode.Submit.summary(final).jsonText()) }
        let id = final["job"]?.string ?? job
        let state = final["state"]?.string ?? "?"
        guard state == "done" else {
            let reason = final["message"]?.string.map { ": \($0)" } ?? ""
            throw FarmError(state == "canceled" ? .canceled : .failed, "Job \(id) \(state)\(reason)")
        }
        guard !json else { return }
        let output = final["output"]?.string ?? ""
        if final["delivers_here"]?.bool == false {
            print("All \(final["frames_total"]?.int ?? 0) frames are rendered; its submitter writes them to \(output)")
            return
        }
        print("All \(final["frames_total"]?.int ?? 0) frames are in \(output)")
        if let movie = final["movie"]?.string, final["movie_state"]?.string == "made" { print("The movie is \(movie)") }
    }

    /// Ctrl-C while following a job: the job is the farm's now; say so, and how to follow or stop it.
    static func onInterrupt(job: String) -> any DispatchSourceSignal {
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler {
            let text =
                "\nJob \(job) keeps running on the farm: `rexnode wait \(job)` follows it again, "
                + "`rexnode cancel \(job)` stops it.\n"
            FileHandle.standardError.write(Data(text.utf8))
            Foundation.exit(130)
        }
        source.resume()
        return source
    }

    func wait() async throws -> JSONValue {
        let tty = isatty(STDOUT_FILENO) != 0 && !quiet
        let started = ContinuousClock.now
        var lastDone = -1
        var lastState = ""
        var firstDone: Int?
        var lastProgress = ContinuousClock.now
        var unreachableSince: ContinuousClock.Instant?
        var undeliverableSince: ContinuousClock.Instant?
        while true {
            // The frame list is only needed at the end, to check every file is in place. Until then the daemon
            // answers as soon as a frame commits or the state changes (or after a second), so no polling.
            let seen = lastDone >= 0 && lastState != "done"
            let request = ControlRequest.status(
                job: job, brief: lastState != "done",
                seen: seen ? .init(framesDone: lastDone, state: lastState) : nil)
            let asked = ContinuousClock.now
            guard let status = try await poll(request) else {
                let since = unreachableSince ?? .now
                if unreachableSince == nil && !quiet {
                    let text = "The daemon is not answering; waiting for it…"
                    print(tty ? "\n" + text : text)
                }
                unreachableSince = since
                if ContinuousClock.now - since > daemonGrace {
                    throw FarmError(.notRunning, "The rexnode daemon for \(data.root) stopped answering.")
                }
                try await Task.sleep(for: .milliseconds(500))
                continue
            }
            if unreachableSince != nil && !quiet { print(tty ? "\nThe daemon is back." : "The daemon is back.") }
            unreachableSince = nil
            let total = status["frames_total"]?.int ?? 0
            let done = status["frames_done"]?.int ?? 0
            let state = status["state"]?.string ?? "?"
            let since = firstDone ?? done
            firstDone = since
            if done != lastDone { lastProgress = .now }
            if tty {
                // Redrawn on every answer (about once a second), so the ETA can say when the job stalls.
                let bar = ProgressBar(
                    done: done, total: total, doneAtStart: since, elapsed: Self.seconds(ContinuousClock.now - started),
                    sinceProgress: Self.seconds(ContinuousClock.now - lastProgress), state: state,
                    tilesDone: status["tiles_done"]?.int ?? 0, tilesTotal: status["tiles_total"]?.int ?? 0)
                print("\r\u{1B}[K" + bar.line(width: ProgressBar.terminalWidth()), terminator: "")
                fflush(nil)
            } else if !quiet && (done != lastDone || state != lastState) {
                print("\(job): \(done)/\(total) frames done (\(state))")
            }
            let (lastDoneBefore, lastStateBefore) = (lastDone, lastState)
            lastDone = done
            lastState = state
            if ["failed", "canceled"].contains(state) {
                if tty { print("") }
                return status
            }
            if state == "done", status["frames"] != nil, status["delivers_here"]?.bool == false || allDelivered(status)
            {
                // A movie job ends when its movie is there too (the submitter's daemon encodes it).
                if let problem = status["movie_error"]?.string {
                    if tty { print("") }
                    throw FarmError(.failed, "Job \(job) rendered, but its movie was not made: \(problem)")
                }
                // Only the submitter's daemon encodes it (elsewhere `movie_state` is absent: nothing to wait for).
                if ["waiting", "encoding"].contains(status["movie_state"]?.string ?? "") {
                    try await Task.sleep(for: .milliseconds(200))
                    continue
                }
                if tty { print("") }
                return status
            }
            // Rendered, but the daemon cannot write the frames (folder gone or unwritable, images unreachable).
            if state == "done", let problem = status["delivery_error"]?.string {
                let since = undeliverableSince ?? .now
                undeliverableSince = since
                if ContinuousClock.now - since > deliveryGrace {
                    if tty { print("") }
                    throw FarmError(.failed, "Job \(job) rendered, but its frames cannot be delivered: \(problem)")
                }
            } else {
                undeliverableSince = nil
            }
            // Rendered, waiting for delivery (or a daemon that answered an unchanged job at once, as one from before
            // long polls does): look again shortly.
            let unchanged = done == lastDoneBefore && state == lastStateBefore
            let waitingForDelivery = state == "done" && lastStateBefore == "done"
            if waitingForDelivery || (unchanged && state != "done" && ContinuousClock.now - asked < .milliseconds(50)) {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// The job's status, or nil while the daemon is not reachable (it may be restarting).
    private func poll(_ request: ControlRequest) async throws -> JSONValue? {
        do {
            return try await ControlClient.send(request, data: data)
        } catch {
            if error.code == .notRunning { return nil }
            throw error
        }
    }

    /// Every done frame's file is in the output folder (the daemon writes each one atomically).
    private func allDelivered(_ status: JSONValue) -> Bool {
        guard let output = status["output"]?.string, let name = status["name"]?.string,
            let frames = status["frames"]?.array
        else { return false }
        let files = Set((try? FileManager.default.contentsOfDirectory(atPath: output)) ?? [])
        return frames.allSatisfy { frame in
            guard frame["state"]?.string == "done", let number = frame["frame"]?.int else { return true }
            let prefix = FarmNode.frameFileName(job: name, frame: number, ext: "")
            return files.contains { $0.hasPrefix(prefix) && !$0.hasPrefix(".") }
        }
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

}

// MARK: peers, jobs, status

extension RexNode {
    struct Peers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the farm's nodes.")
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption
        @Flag(help: "Also show machines that are not members (joining, or from before a recovery).") var all = false

        /// The Blender versions of a peers row, "3.4.1,5.0.1" ("-" for none).
        static func blender(_ value: JSONValue?) -> String {
            let versions = (value?.array ?? []).compactMap(\.string)
            return versions.isEmpty ? "-" : versions.joined(separator: ",")
        }

        /// Bytes as people read them: `812 MB`, `41.3 GB`.
        static func size(_ bytes: Int64) -> String {
            bytes >= 1_000_000_000
                ? String(format: "%.1f GB", Double(bytes) / 1e9) : "\(bytes / 1_000_000) MB"
        }

        func run() async throws {
            try await RexNode.guarded {
                let peers = try await ControlClient.send(all ? .allPeers : .peers, data: data.directory)
                if json.json { return print(peers.jsonText()) }
                let rows = (peers.array ?? []).map { p in
                    let tags = (p["tags"]?.array ?? []).compactMap(\.string).joined(separator: ",")
                    let devices = (p["devices"]?.array ?? []).compactMap(\.string).joined(separator: ",")
                    var state = p["state"]?.string ?? ""
                    if p["resting"]?.bool == true {
                        state += ", resting until " + Self.wake(p["resting_until"]?.string)
                    }
                    if p["disk_full"]?.bool == true { state += ", disk nearly full" }
                    // A member that does not vote is a learner (its JSON role stays `follower`).
                    var role = p["role"]?.string ?? ""
                    if p["member"]?.bool == true, p["voter"]?.bool == false, role == "follower" { role = "learner" }
                    let disk = p["disk_free_bytes"]?.int.map { Self.size(Int64($0)) + " free" } ?? "-"
                    return [
                        (p["self"]?.bool == true ? "*" : " ") + (p["name"]?.string ?? ""), p["id"]?.string ?? "",
                        p["address"]?.string ?? "", role, state,
                        "\(p["slots"]?.int ?? 0)", "\(p["frames_done"]?.int ?? 0)", devices.isEmpty ? "CPU" : devices,
                        tags.isEmpty ? "-" : tags, Self.blender(p["blender"]), disk, p["task"]?.string ?? "-",
                    ]
                }
                print(
                    Table.render(
                        [
                            "NAME", "ID", "ADDRESS", "ROLE", "STATE", "SLOTS", "FRAMES", "DEVICES", "TAGS", "BLENDER",
                            "DISK", "TASK",
                        ],
                        rows))
            }
        }

        /// `Thu 19:00` from an ISO 8601 time in this machine's zone.
        static func wake(_ iso: String?) -> String {
            guard let iso, let date = ISO8601DateFormatter().date(from: iso) else { return iso ?? "?" }
            let formatter = DateFormatter()
            formatter.dateFormat = "EEE HH:mm"
            return formatter.string(from: date)
        }
    }

    struct Jobs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the farm's jobs.")
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let jobs = try await ControlClient.send(.jobs, data: data.directory)
                if json.json { return print(ContractShapes.jobs(jobs).jsonText()) }
                let rows = (jobs.array ?? []).map { j in
                    [
                        j["job"]?.string ?? "", j["name"]?.string ?? "", j["state"]?.string ?? "",
                        "\(j["frames_done"]?.int ?? 0)/\(j["frames_total"]?.int ?? 0)", "\(j["priority"]?.int ?? 0)",
                    ]
                }
                print(Table.render(["JOB", "NAME", "STATE", "FRAMES", "PRIORITY"], rows))
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one job and each of its frames.")
        @Argument(help: "The job: its id, a unique id prefix, or its unique name.") var job: String
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let s = try await ControlClient.send(.status(job: job), data: data.directory)
                if json.json { return print(s.jsonText()) }
                print(
                    "\(s["job"]?.string ?? "") \(s["name"]?.string ?? ""): \(s["state"]?.string ?? "") — "
                        + "\(s["frames_done"]?.int ?? 0)/\(s["frames_total"]?.int ?? 0) frames → "
                        + (s["output"]?.string ?? ""))
                if let blender = s["blender"]?.string { print("renders with Blender \(blender)") }
                if let grid = s["tiles"]?.string {
                    print("tiled \(grid): \(s["tiles_done"]?.int ?? 0)/\(s["tiles_total"]?.int ?? 0) tiles in")
                }
                if let message = s["message"]?.string { print("last error: \(message)") }
                let blocked = s["blocked_nodes"]?.array?.compactMap(\.string) ?? []
                if !blocked.isEmpty {
                    print("blocked for this job (its renders failed there 3 times): \(blocked.joined(separator: ", "))")
                }
                let rows = (s["frames"]?.array ?? []).map { f in
                    [
                        "\(f["frame"]?.int ?? 0)", Self.stateWithTiles(f),
                        f["node_name"]?.string ?? f["node"]?.string ?? "-", "\(f["attempts"]?.int ?? 0)",
                        f["render_seconds"]?.double.map { String(format: "%.1f", $0) } ?? "-",
                        String((f["hash"]?.string ?? "-").prefix(12)),
                        (f["holders"]?.array ?? []).compactMap(\.string).joined(separator: ","),
                        (f["message"]?.string ?? f["failures"]?.array?.last?["message"]?.string).map {
                            String($0.prefix(70))
                        } ?? "",
                    ]
                }
                print(
                    Table.render(
                        ["FRAME", "STATE", "NODE", "FAILED", "SECONDS", "HASH", "HOLDERS", "LAST ERROR"], rows))
            }
        }

        /// A frame's state, and for a tiled frame not done yet how many of its tiles are in ("queued 4/6 tiles").
        static func stateWithTiles(_ frame: JSONValue) -> String {
            let state = frame["state"]?.string ?? ""
            guard let tiles = frame["tiles"]?.array, state != "done" else { return state }
            let done = tiles.filter { $0["state"]?.string == "done" }.count
            return "\(state) \(done)/\(tiles.count) tiles"
        }
    }
}

// MARK: fetch, cancel, ledger

extension RexNode {
    struct Fetch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Copy a job's finished frames into a folder.")
        @Argument(help: "The job id (or a unique prefix).") var job: String
        @Option(help: "Where to put the frames.") var output: String
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let request = ControlRequest.fetch(job: job, output: DataDirectory.absolute(output))
                let r = try await ControlClient.send(request, data: data.directory)
                let output = r["output"]?.string ?? ""
                print("\(r["frames"]?.int ?? 0) frames of \(r["job"]?.string ?? job) are in \(output)")
                if let movie = r["movie"]?.string { print("The movie is \(movie)") }
                if let problem = r["movie_error"]?.string {
                    FileHandle.standardError.write(Data(("warning: the movie was not made: " + problem + "\n").utf8))
                }
            }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a job; its Blender processes stop at once.")
        @Argument(help: "The job id (or a unique prefix).") var job: String
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let r = try await ControlClient.send(.cancel(job: job), data: data.directory)
                print("Job \(r["job"]?.string ?? job) is \(r["state"]?.string ?? "canceled").")
            }
        }
    }

    struct Ledger: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the applied log: index, term, command.")
        @Option(help: "Start at this log index (the log kept on this node may start later).") var from: Int64?
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                if let from, from < 1 { throw FarmError(.badInput, "--from needs a log index of 1 or more.") }
                let log = try await ControlClient.send(.ledger(from: UInt64(from ?? 1)), data: data.directory)
                if json.json { return print(log.jsonText()) }
                let rows = (log.array ?? []).map { e in
                    [
                        "\(e["index"]?.int ?? 0)", "\(e["term"]?.int ?? 0)", e["type"]?.string ?? "",
                        e["job"]?.string ?? "", e["frame"]?.int.map(String.init) ?? "",
                        e["node"]?.string ?? e["submitter"]?.string ?? "",
                    ]
                }
                print(Table.render(["INDEX", "TERM", "TYPE", "JOB", "FRAME", "NODE"], rows))
            }
        }
    }
}

/// Aligned columns for people.
enum Table {
    static func render(_ header: [String], _ rows: [[String]]) -> String {
        let all = [header] + rows
        let widths = header.indices.map { i in all.map { $0[i].count }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}
