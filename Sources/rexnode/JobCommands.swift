import ArgumentParser
import Farm
import Foundation

// MARK: wait, pause, resume, retry, priority, rerun, remove

/// A job named on the command line: its id, a unique id prefix, or its unique name.
struct JobArgument: ParsableArguments {
    @Argument(help: "The job: its id, a unique id prefix, or its unique name.") var job: String
}

extension RexNode {
    /// Sends one job-control request and prints the job's new state in one line.
    static func steer(_ job: String, _ action: ControlRequest.JobAction, data: DataDirectory, json: Bool = false)
        async throws -> JSONValue
    {
        let row = try await ControlClient.send(.steer(job: job, action: action), data: data)
        if json { print(row.jsonText()) }
        return row
    }

    struct Wait: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Follow a job again (after Ctrl-C or from another terminal): its progress and exit status.")
        @OptionGroup var target: JobArgument
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                // Resolved once, so a name that later matches a second job still means this one.
                let job = try await ControlClient.send(.status(job: target.job, brief: true), data: data.directory)
                let id = job["job"]?.string ?? target.job
                let interrupt = Waiter.onInterrupt(job: id)
                defer { interrupt.cancel() }
                if !json.json {
                    print("Job \(id) (\(job["frames_total"]?.int ?? 0) frames) → \(job["output"]?.string ?? "")")
                }
                try await Waiter(job: id, data: data.directory, quiet: json.json).follow(json: json.json)
            }
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pause a job: no new frame starts; frames being rendered finish.")
        @OptionGroup var target: JobArgument
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let r = try await RexNode.steer(target.job, .pause, data: data.directory)
                print("Job \(r["job"]?.string ?? target.job) is paused; `rexnode resume` goes on.")
            }
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a paused job.")
        @OptionGroup var target: JobArgument
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let r = try await RexNode.steer(target.job, .resume, data: data.directory)
                print("Job \(r["job"]?.string ?? target.job) is \(r["state"]?.string ?? "running").")
            }
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put a job's failed frames back in the queue (after fixing the cause).")
        @OptionGroup var target: JobArgument
        @Option(help: "Only these failed frames: 1-250, 1-100x5, 1,5,10-20.") var frames: String?
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                if let frames { _ = try FrameSpec(frames) }
                let before = try await ControlClient.send(.status(job: target.job, brief: true), data: data.directory)
                let r = try await RexNode.steer(target.job, .retry(frames: frames), data: data.directory)
                let again = (before["frames_failed"]?.int ?? 0) - (r["frames_failed"]?.int ?? 0)
                let id = r["job"]?.string ?? target.job
                print(
                    "\(again) failed frame\(again == 1 ? "" : "s") of job \(id) back in the queue; "
                        + "`rexnode wait \(id)` follows it."
                )
            }
        }
    }

    struct Priority: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a job's priority (higher runs first).")
        @OptionGroup var target: JobArgument
        // Taken as text: a negative number would otherwise read as an option, and a word gets one sentence.
        @Argument(parsing: .allUnrecognized, help: "The new priority (a whole number; negative runs last).")
        var priority: [String] = []
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                guard priority.count == 1, let value = Int(priority[0]) else {
                    throw FarmError(
                        .badInput, "priority needs one whole number after the job (got '\(priority.joined(separator: " "))').")
                }
                let r = try await RexNode.steer(target.job, .priority(value), data: data.directory)
                print("Job \(r["job"]?.string ?? target.job) has priority \(r["priority"]?.int ?? value).")
            }
        }
    }

    struct Rerun: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Render a job again as a new job, from the same files and settings.")
        @OptionGroup var target: JobArgument
        @Option(help: "Output folder, for a job submitted from another node (default: ./rex-out/NAME/).")
        var output: String?
        @Flag(help: "Print the new job id and return at once.") var noWait = false
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let old = try await ControlClient.send(.status(job: target.job, brief: true), data: data.directory)
                let name = old["name"]?.string ?? "job"
                let folder = DataDirectory.absolute(output ?? "rex-out/\(name)")
                let r = try await RexNode.steer(target.job, .rerun(output: folder), data: data.directory)
                let id = r["job"]?.string ?? "?"
                if noWait {
                    print(json.json ? RexNode.Submit.summary(r).jsonText() : id)
                    return
                }
                let interrupt = Waiter.onInterrupt(job: id)
                defer { interrupt.cancel() }
                if !json.json {
                    print("Job \(id) (\(r["frames_total"]?.int ?? 0) frames) → \(r["output"]?.string ?? folder)")
                    fflush(nil)
                }
                try await Waiter(job: id, data: data.directory, quiet: json.json).follow(json: json.json)
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a finished job from the farm: its files and images go from every node.",
            discussion: "The frames already in its output folder stay: they are yours.")
        @OptionGroup var target: JobArgument
        @Flag(help: "Remove it even while it runs (it is canceled first).") var force = false
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let r = try await RexNode.steer(target.job, .remove(force: force), data: data.directory)
                print("Job \(r["job"]?.string ?? target.job) is removed; every node drops its files and images.")
            }
        }
    }
}
