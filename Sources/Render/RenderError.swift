// MARK: - RenderError

/// Everything that goes wrong between rexnode and Blender, as one small value: a code the scheduler can act
/// on, a sentence a person can read (with Blender's own words in it), the command that ran, and the tail
/// of Blender's output for the log.
public struct RenderError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is; decides whether a frame is retried, the job fails, or the node is unfit.
    public enum Code: String, Sendable {
        /// No usable Blender executable (missing path, not executable, `--version` failed).
        case blenderMissing
        /// Blender could not load the .blend file (corrupt, truncated, not a .blend at all).
        case badScene
        /// Blender loaded the scene but refused to render a frame; the message carries Blender's reason.
        case frameFailed
        /// The Blender process died while rendering; the next render restarts it.
        case crashed
        /// The session was closed or the caller's task was cancelled.
        case canceled
    }

    public var code: Code
    /// One readable sentence including Blender's own error text.
    public var message: String
    /// The command line that ran (executable first), empty when nothing was started.
    public var commandLine: [String]
    /// The last lines Blender printed before the failure.
    public var outputTail: [String]
    /// Blender's output for the one frame attempt (or scene load) that failed, as `RenderedFrame.log` keeps it for a
    /// frame that rendered: what the farm shows in `rexnode log`. Empty when nothing ran.
    public var attemptLog: [String] = []

    public init(_ code: Code, _ message: String, commandLine: [String] = [], outputTail: [String] = []) {
        self.code = code
        self.message = message
        self.commandLine = commandLine
        self.outputTail = outputTail
    }

    public var description: String {
        message
    }
}
