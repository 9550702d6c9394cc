import Farm
import Foundation

/// The dashboard's access token: random, kept in the data folder (mode 0600) so it survives restarts.
public struct AccessToken: Sendable, Equatable {
    public let value: String

    public init(_ value: String) { self.value = value }

    /// The token in `DATA/dashboard.token`, made on first use.
    public static func loadOrCreate(_ data: DataDirectory) throws -> AccessToken {
        let path = tokenPath(data)
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if token.count >= 32 { return AccessToken(token) }
        }
        var rng = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
        try DashboardFiles.writePrivate(token + "\n", to: path)
        return AccessToken(token)
    }

    public static func tokenPath(_ data: DataDirectory) -> String { data.root + "/dashboard.token" }

    /// Whether `candidate` is this token, compared in constant time (no early exit on the first different byte).
    public func matches(_ candidate: String?) -> Bool {
        guard let candidate else { return false }
        let a = Array(value.utf8)
        let b = Array(candidate.utf8)
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<a.count { difference |= a[i] ^ (i < b.count ? b[i] : 0) }
        return difference == 0
    }
}

/// Files the dashboard keeps in the data folder.
public enum DashboardFiles {
    /// This node's dashboard URL with its token, written when the server has bound (`rexnode dashboard` reads it).
    public static func urlPath(_ data: DataDirectory) -> String { data.root + "/dashboard.url" }

    /// Writes a file only its owner can read (0600), atomically.
    static func writePrivate(_ text: String, to path: String) throws {
        let temporary = path + ".tmp"
        guard
            FileManager.default.createFile(
                atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        else { throw FarmError(.io, "Cannot write \(path).") }
        _ = chmod(temporary, 0o600)
        guard rename(temporary, path) == 0 else { throw FarmError(.io, "Cannot write \(path).") }
    }

    /// The URL `rexnode dashboard` prints, or one sentence saying why there is none. The daemon must be listening on
    /// its control socket: one killed with SIGKILL leaves its socket and URL files behind, and the URL would be dead.
    public static func currentURL(_ data: DataDirectory) throws -> String {
        guard ControlClient.daemonListening(data) else {
            throw FarmError(
                .notRunning,
                "The rexnode daemon for \(data.root) is not running, so it has no dashboard; start it with "
                    + "`rexnode join`.")
        }
        guard let text = try? String(contentsOfFile: urlPath(data), encoding: .utf8) else {
            throw FarmError(
                .notRunning,
                "No dashboard is running for \(data.root): its node runs with --http off, is still starting, or could "
                    + "not bind its address (its log says which).")
        }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
