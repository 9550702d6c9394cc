import Logging

/// A run of consecutive failures of one long-lived loop (a socket, a listener, an applier): the first failure is
/// logged as a warning, the rest at debug level (a link can stay down for hours), the recovery once; and the
/// backoff before the next try grows with the run. Only shutdown ends such a loop.
public struct FailureRun: Sendable {
    public private(set) var count = 0
    private let first: Logger.Message
    private let again: Logger.Message
    private let back: Logger.Message

    /// - Parameters: the three log lines: the first failure, a repeated one, and the loop working again.
    public init(first: Logger.Message, again: Logger.Message, back: Logger.Message) {
        self.first = first
        self.again = again
        self.back = back
    }

    public mutating func failed(_ error: any Error, logger: Logger, metadata: Logger.Metadata = [:]) {
        count += 1
        var metadata = metadata
        metadata["error"] = "\(error)"
        if count == 1 {
            logger.warning(first, metadata: metadata)
        } else {
            logger.debug(again, metadata: metadata)
        }
    }

    /// The loop works again: logs it once if it had failed, and starts a new run.
    public mutating func recovered(logger: Logger, metadata: Logger.Metadata = [:]) {
        guard count > 0 else { return }
        var metadata = metadata
        metadata["failures"] = "\(count)"
        logger.notice(back, metadata: metadata)
        count = 0
    }

    /// `minimum` doubled for each failure after the first, at most `maximum`.
    public func backoff(minimum: Duration, maximum: Duration) -> Duration {
        min(minimum * (1 << min(max(count - 1, 0), 16)), maximum)
    }
}
