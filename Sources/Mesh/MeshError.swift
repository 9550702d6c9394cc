/// An error from the mesh layer: a code for programs, a sentence for people.
public struct MeshError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case badKey, badToken, io, protocolViolation, authentication, tooLarge, timeout, closed
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
