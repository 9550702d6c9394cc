import Farm
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// What the dashboard needs from a node: the control API's answers (the read model and every action), a done
/// frame's image, a job's movie, and the node's commit latency. `FarmNode` is one; tests use a stand-in.
public protocol DashboardBackend: Sendable {
    func answer(_ request: ControlRequest) async -> ControlResponse
    func frameImage(job: String, frame: Int) async throws -> (path: String, ext: String)
    /// The job's movie file on this node, or a `FarmError` saying in one sentence why there is none.
    func movieFile(job: String) async throws -> String
    /// Propose-to-applied seconds of this node's proposals, measured by the node.
    func commitLatency() async -> CommitLatency.Snapshot
}

extension FarmNode: DashboardBackend {}

/// `join --http HOST:PORT|off`.
public struct DashboardSettings: Sendable {
    public var host: String
    public var port: Int
    public var data: DataDirectory

    public static let defaultAddress = "127.0.0.1:7780"

    public init(host: String, port: Int, data: DataDirectory) {
        self.host = host
        self.port = port
        self.data = data
    }

    /// `HOST:PORT` (port 0: any free port), or nil for `off`.
    public static func parse(_ text: String, data: DataDirectory) throws -> DashboardSettings? {
        if text == "off" { return nil }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, let port = Int(parts[1]), (0...65535).contains(port) else {
            throw FarmError(.badInput, "--http takes HOST:PORT (for example 127.0.0.1:7780) or off.")
        }
        return DashboardSettings(host: String(parts[0]), port: port, data: data)
    }
}

/// Serves the dashboard as one service of the daemon. A port it cannot bind is said in one sentence and the node
/// keeps running: the farm matters more than the page.
public struct DashboardService: Service, CustomStringConvertible {
    let settings: DashboardSettings
    let backend: any DashboardBackend
    let token: AccessToken
    let logger: Logger

    public var description: String { "dashboard" }

    public init(settings: DashboardSettings, backend: any DashboardBackend, logger: Logger) throws {
        self.settings = settings
        self.backend = backend
        self.logger = logger
        token = try AccessToken.loadOrCreate(settings.data)
    }

    public func run() async throws {
        let (settings, token, logger) = (self.settings, self.token, self.logger)
        let urlFile = DashboardFiles.urlPath(settings.data)
        unlink(urlFile)
        let app = Application(
            router: DashboardRoutes(backend: backend, token: token, data: settings.data, logger: logger).router(),
            configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: "rexnode"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? settings.port
                let host = ["0.0.0.0", "::", "[::]"].contains(settings.host) ? "127.0.0.1" : settings.host
                let url = "http://\(host):\(port)/?token=\(token.value)"
                do {
                    try DashboardFiles.writePrivate(url + "\n", to: urlFile)
                } catch {
                    logger.warning("cannot record the dashboard's address", metadata: ["error": "\(error)"])
                }
                logger.info("dashboard ready (`rexnode dashboard` prints its URL)", metadata: ["http/port": "\(port)"])
            },
            logger: Self.quiet(logger))
        do {
            try await app.run()
        } catch {
            if !Task.isCancelled {
                let sentence =
                    "The dashboard cannot listen on \(settings.host):\(settings.port) (busy, or not this machine's "
                    + "address); the node runs without it (see join --http)."
                logger.warning("\(sentence)")
                try? await gracefulShutdown()
            }
        }
        unlink(urlFile)
    }

    private static func quiet(_ logger: Logger) -> Logger {
        var logger = logger
        logger.logLevel = max(logger.logLevel, .warning)
        return logger
    }
}
