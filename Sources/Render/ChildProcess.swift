import Subprocess
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - ChildProcess

/// One external process (Blender, or a stand-in in tests) in its own process group, with its output turned
/// into a stream of lines and its stdin fed from a queue. Its stdout and stderr share one pipe, read all the
/// time whether or not anyone is listening, so a chatty Blender never blocks on a full pipe. If the parent
/// dies, Blender's stdin reaches end-of-file and the driver quits after the current frame.
///
/// Subprocess keeps a process alive only inside the closure passed to `run`, so a child task owned by this
/// object hosts that closure for the process's whole life; `wait()` awaits it.
final class ChildProcess: Sendable {
    enum Event: Sendable, Equatable {
        /// The process is running with this pid (also its process group id).
        case started(pid: Int32)
        /// One line of stdout or stderr (one pipe, in the order the process wrote them).
        case line(String)
        /// The process ended with an exit status or by a signal.
        case exited(status: Int32?, signal: Int32?)
        /// The process could not be started at all.
        case launchFailed(String)
    }

    let events: AsyncStream<Event>
    private let input: AsyncStream<String>.Continuation
    private let host: Task<Void, Never>
    private let pidBox: PIDBox

    init(executable: String, arguments: [String], environment: [String: String?] = [:]) {
        ignoreSIGPIPE()
        let (events, eventSink) = AsyncStream.makeStream(of: Event.self)
        let (inputs, input) = AsyncStream.makeStream(of: String.self)
        let pidBox = PIDBox()
        self.events = events
        self.input = input
        self.pidBox = pidBox
        self.host = Task {
            await Self.host(
                executable: executable, arguments: arguments, environment: environment,
                inputs: inputs, events: eventSink, pidBox: pidBox)
        }
    }

    /// The pid once started (it leads its own process group), nil before and after.
    var pid: Int32? { pidBox.value }

    /// True once the process has exited (or failed to start); its events may still be unread.
    var hasEnded: Bool { pidBox.hasEnded }

    /// Queues a line for the process's stdin.
    func send(_ line: String) {
        input.yield(line)
    }

    /// Closes the process's stdin once queued lines are written.
    func closeInput() {
        input.finish()
    }

    /// SIGKILL to the whole process group (Blender and anything it started). Safe to call any time.
    func killGroup() {
        pidBox.killGroup()
    }

    /// Returns when the process has exited and its output is fully read.
    func wait() async {
        await host.value
    }

    // MARK: Hosting

    private static func host(
        executable: String, arguments: [String], environment: [String: String?],
        inputs: AsyncStream<String>, events: AsyncStream<Event>.Continuation, pidBox: PIDBox
    ) async {
        var options = PlatformOptions()
        options.processGroupID = 0  // a new group led by the child: close() kills the group
        var overrides: [Environment.Key: String?] = [:]
        for (key, value) in environment {
            overrides[Environment.Key(stringLiteral: key)] = value
        }
        do {
            let result = try await run(
                .path(.init(executable)),
                arguments: Arguments(arguments),
                environment: .inherit.updating(overrides),
                platformOptions: options,
                input: .inputWriter,
                output: .sequence,
                error: .combinedWithOutput
            ) { execution in
                let pid = execution.processIdentifier.value
                pidBox.set(pid)
                events.yield(.started(pid: pid))
                await withTaskGroup(of: Bool.self) { group in
                    group.addTask {
                        var splitter = LineSplitter()
                        do {
                            for try await buffer in execution.standardOutput {
                                let bytes = buffer.withUnsafeBytes { Array($0) }
                                for line in splitter.push(bytes) {
                                    events.yield(.line(line))
                                }
                            }
                        } catch {
                            // Nobody would drain the pipe any more and the process could block forever.
                            events.yield(.line("rexnode: reading the process's output failed: \(error)"))
                            pidBox.killGroup()
                        }
                        if let last = splitter.finish() {
                            events.yield(.line(last))
                        }
                        return true
                    }
                    group.addTask {
                        let writer = execution.standardInputWriter
                        for await line in inputs {
                            do {
                                _ = try await writer.write(line)
                            } catch {
                                break  // the process is gone; its exit is reported by the reader
                            }
                        }
                        try? await writer.finish()
                        return false
                    }
                    // When the output ends the process is exiting: stop waiting for more input.
                    while let finishedReader = await group.next() {
                        if finishedReader {
                            group.cancelAll()
                        }
                    }
                }
            }
            // Nothing Blender started may outlive it: take down what is left of its process group. (Subprocess
            // ends the output stream when the process exits, even if such a leftover still holds the pipe.)
            pidBox.killGroup()
            pidBox.clear()
            switch result.terminationStatus {
            case .exited(let code):
                events.yield(.exited(status: code, signal: nil))
            case .signaled(let signal):
                events.yield(.exited(status: nil, signal: signal))
            }
        } catch {
            pidBox.clear()
            events.yield(.launchFailed("\(error)"))
        }
        events.finish()
    }
}

/// The child's pid and whether it has ended, readable from any thread (a cancellation handler must be able
/// to kill without awaiting, and a session checks for a Blender that died between frames).
private final class PIDBox: Sendable {
    private struct State {
        var pid: Int32?
        var ended = false
        /// A kill asked for before the spawn reported its pid (a timeout or close racing a slow start).
        var killRequested = false
    }

    private let state = Mutex(State())

    var value: Int32? {
        state.withLock { $0.pid }
    }

    var hasEnded: Bool {
        state.withLock { $0.ended }
    }

    /// Records the pid; if a kill was already asked for, it happens now, so no kill is ever lost to the race
    /// between starting a process and stopping it.
    func set(_ pid: Int32) {
        state.withLock {
            $0.pid = pid
            if $0.killRequested, pid > 0 { _ = kill(-pid, SIGKILL) }
        }
    }

    func clear() {
        state.withLock {
            $0.pid = nil
            $0.ended = true
        }
    }

    /// Under the lock, so the pid cannot be cleared (and later reused) between the check and the kill.
    func killGroup() {
        state.withLock {
            $0.killRequested = true
            if let pid = $0.pid, pid > 0 {
                _ = kill(-pid, SIGKILL)
            }
        }
    }
}

/// Writing to the stdin of a process that just died raises SIGPIPE, which would end rexnode; with the signal
/// ignored the write fails with EPIPE instead and the crash is reported normally. Process-wide, done once.
private let sigpipeIgnored: Void = {
    _ = signal(SIGPIPE, SIG_IGN)
}()

private func ignoreSIGPIPE() {
    _ = sigpipeIgnored
}
