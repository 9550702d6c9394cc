import Foundation

/// Turns one line read from the control socket into a request, or into the one-sentence error its client gets.
///
/// The daemon trusts no client: a line is capped in size (the framing refuses longer ones unread), its JSON nesting
/// is checked before parsing (`[` × 100,000 must not recurse through the parser), and every failure is an answer,
/// never a crash. NIO-free, so `make fuzz-control` compiles it standalone with libFuzzer (with `Control.swift` and
/// `FarmError.swift`).
public enum ControlRequestDecoder {
    /// The longest request line the daemon reads (a submit is a few hundred bytes; paths are at most 4 KB each).
    public static let maxLineBytes = 1 << 20
    /// No request nests deeper than its one object; anything past this is refused before parsing.
    public static let maxDepth = 16

    /// The answer to a line over `maxLineBytes` (the connection closes after it).
    public static let tooLong = FarmError(
        .protocolError, "The request is larger than \(maxLineBytes >> 20) MiB; the connection is closed.")

    /// Decodes one request line (without its newline; a trailing carriage return is ignored).
    public static func decode(_ line: [UInt8]) -> Result<ControlRequest, FarmError> {
        var bytes = line[...]
        if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
        guard bytes.count <= maxLineBytes else { return .failure(tooLong) }
        guard nestingFits(bytes) else {
            return .failure(FarmError(.protocolError, "The request was not understood (it nests too deeply)."))
        }
        do {
            return .success(try JSONDecoder().decode(ControlRequest.self, from: Data(bytes)))
        } catch let error as FarmError {
            return .failure(error)
        } catch {
            return .failure(FarmError(.protocolError, "The request was not understood.", cause: error))
        }
    }

    /// Whether the JSON text's bracket nesting (outside strings) stays within `maxDepth`. A cheap scan that does not
    /// validate: the parser does that, once it is known not to recurse deeply.
    static func nestingFits(_ bytes: ArraySlice<UInt8>) -> Bool {
        var depth = 0
        var inString = false
        var escaped = false
        for byte in bytes {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > maxDepth { return false }
            // More closing than opening brackets is malformed: the parser says so; the depth stays at 0.
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth = max(0, depth - 1)
            default: break
            }
        }
        return true
    }
}

/// Entry point of the libFuzzer harness `fuzz/FuzzControl.swift` and of the unit test that replays its corpus.
public enum ControlFuzzTarget {
    /// Any bytes as one request line: decoding never crashes, and a decoded request survives encode → decode.
    public static func request(_ data: [UInt8]) {
        switch ControlRequestDecoder.decode(data) {
        case .success(let request):
            guard let encoded = try? JSONEncoder().encode(request) else {
                preconditionFailure("a decoded request must encode")
            }
            let again = ControlRequestDecoder.decode(Array(encoded))
            guard case .success(let back) = again, back == request else {
                preconditionFailure("control request round trip: \(request) -> \(again)")
            }
        case .failure(let error):
            precondition(!error.message.isEmpty, "an error answer has a sentence")
        }
    }
}
