/// An error a person can act on: a code for programs, one sentence for people, and the cause if any.
public struct FarmError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Codable {
        case badInput, notFound, alreadyRunning, notRunning, io, render, protocolError, canceled, failed
    }

    public let code: Code
    public let message: String
    public let cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String { message }
}
