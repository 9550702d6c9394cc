import Foundation

/// Turns an error from Foundation, NIO or the system into one sentence a person can act on: no
/// "Error Domain=NSCocoaErrorDomain Code=516 …" or "connect(descriptor:addr:size:): … (errno: 111)" dumps.
public enum ErrorSentence {
    /// The sentence for `error`, without a trailing period (callers put it inside their own sentence).
    public static func describe(_ error: any Error) -> String {
        if let error = error as? FarmError { return trimmed(error.message) }
        if let error = error as? CocoaError { return cocoa(error) }
        let ns = error as NSError
        if ns.domain == NSCocoaErrorDomain {
            return cocoa(CocoaError(CocoaError.Code(rawValue: ns.code), userInfo: ns.userInfo))
        }
        if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
        let text = String(describing: error)
        if let errno = errnoValue(in: text) { return String(cString: strerror(errno)) }
        return trimmed(text)
    }

    /// `(errno: 111)` in NIO's `IOError` description.
    static func errnoValue(in text: String) -> Int32? {
        guard let range = text.range(of: "(errno: ") else { return nil }
        let digits = text[range.upperBound...].prefix { $0.isNumber }
        return Int32(digits)
    }

    static func cocoa(_ error: CocoaError) -> String {
        let path = error.filePath ?? error.url?.path
        let on = path.map { " \($0)" } ?? ""
        switch error.code {
        case .fileWriteFileExists: return "\(path ?? "the file") already exists"
        case .fileNoSuchFile, .fileReadNoSuchFile: return "\(path ?? "the file") does not exist"
        case .fileWriteNoPermission, .fileReadNoPermission:
            return "no permission to use\(on.isEmpty ? " the file" : on)"
        case .fileWriteOutOfSpace: return "the disk is full\(path.map { " (writing \($0))" } ?? "")"
        case .fileWriteVolumeReadOnly: return "\(path ?? "the file") is on a read-only disk"
        default:
            if let underlying = error.underlying as? POSIXError {
                return "\(path.map { "\($0): " } ?? "")\(String(cString: strerror(underlying.code.rawValue)))"
            }
            if let underlying = error.userInfo[NSUnderlyingErrorKey] as? NSError,
                underlying.domain == NSPOSIXErrorDomain
            {
                return "\(path.map { "\($0): " } ?? "")\(String(cString: strerror(Int32(underlying.code))))"
            }
            return "a file operation failed\(on.isEmpty ? "" : " on\(on)") (code \(error.code.rawValue))"
        }
    }

    static func trimmed(_ text: String) -> String {
        var text = text.trimmingCharacters(in: .whitespacesAndNewlines)
        while text.hasSuffix(".") { text.removeLast() }
        return text
    }
}
