import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Synchronization
import Testing

@testable import Dashboard
@testable import Farm

/// A node stand-in: fixed answers in the read model's shapes, and a record of every request it was asked.
final class FakeBackend: DashboardBackend {
    let asked = Mutex<[ControlRequest]>([])

    func answer(_ request: ControlRequest) async -> ControlResponse {
        asked.withLock { $0.append(request) }
        switch request {
        case .peers:
            return ControlResponse(result: [
                ["id": "a", "name": "n1", "role": "leader", "state": "alive", "self": true]
            ])
        case .jobs:
            return ControlResponse(result: [
                [
                    "job": "j1", "name": "shot", "state": "running", "frames_total": 4, "frames_done": 1,
                    "frames_failed": 0, "priority": 0, "output": "/tmp/x", "submitter": "a", "message": nil,
                    "tags": [],
                ]
            ])
        case .status(let job, _, _), .cancel(let job), .steer(let job, _):
            guard job == "j1" else { return ControlResponse(error: FarmError(.notFound, "There is no job '\(job)'.")) }
            return ControlResponse(result: ["job": "j1", "state": "running", "frames": []])
        default:
            return ControlResponse(error: FarmError(.badInput, "Not here."))
        }
    }

    func frameImage(job: String, frame: Int) async throws -> (path: String, ext: String) {
        throw FarmError(.notFound, "Frame \(frame) of job \(job) has no image yet.")
    }
}

@Suite struct DashboardTests {
    static let token = AccessToken(String(repeating: "ab", count: 32))

    func app(_ backend: FakeBackend) throws -> some ApplicationProtocol {
        let data = DataDirectory(NSTemporaryDirectory() + "rex-dash-\(UUID().uuidString)")
        let routes = DashboardRoutes(backend: backend, token: Self.token, data: data, logger: Logger(label: "test"))
        return Application(router: routes.router())
    }

    static func json(_ buffer: ByteBuffer) -> JSONValue {
        (try? JSONDecoder().decode(JSONValue.self, from: Data(buffer.readableBytesView))) ?? .null
    }

    @Test func withoutTheTokenEveryRouteIs401() async throws {
        try await app(FakeBackend()).test(.router) { client in
            for uri in ["/", "/api/peers", "/api/jobs", "/api/jobs/j1", "/api/events", "/metrics", "/assets/app.js"] {
                try await client.execute(uri: uri, method: .get) { response in
                    #expect(response.status == .unauthorized, "\(uri)")
                    #expect(Self.json(response.body)["error"]?.string != nil)
                }
            }
            try await client.execute(uri: "/api/jobs?token=wrong", method: .get) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/api/jobs", method: .get, headers: [.authorization: "Bearer wrong"]) {
                #expect($0.status == .unauthorized)
            }
            try await client.execute(uri: "/api/jobs/j1/cancel", method: .post) { #expect($0.status == .unauthorized) }
        }
    }

    @Test func theTokenInTheQueryHeaderOrCookieLetsIn() async throws {
        try await app(FakeBackend()).test(.router) { client in
            try await client.execute(uri: "/?token=\(Self.token.value)", method: .get) { response in
                #expect(response.status == .ok)
                let cookie = response.headers[.setCookie] ?? ""
                #expect(cookie.contains("rexnode_token=\(Self.token.value)"))
                #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"))
                #expect(String(buffer: response.body).contains("<html"))
            }
            try await client.execute(
                uri: "/api/peers", method: .get, headers: [.authorization: "Bearer \(Self.token.value)"]
            ) { #expect($0.status == .ok) }
            try await client.execute(
                uri: "/api/peers", method: .get, headers: [.cookie: "other=1; rexnode_token=\(Self.token.value)"]
            ) { #expect($0.status == .ok) }
        }
    }

    @Test func routesAnswerTheCLIShapes() async throws {
        let auth: HTTPFields = [.authorization: "Bearer \(Self.token.value)"]
        try await app(FakeBackend()).test(.router) { client in
            try await client.execute(uri: "/api/jobs", method: .get, headers: auth) { response in
                let jobs = Self.json(response.body)
                // `jobs --json`'s keys, exactly.
                #expect(jobs == ContractShapes.jobs(await FakeBackend().answer(.jobs).result!))
                if case .object(let row) = jobs.array?.first {
                    #expect(
                        Set(row.keys) == ["job", "name", "state", "frames_total", "frames_done", "priority"])
                } else {
                    Issue.record("no job row")
                }
            }
            try await client.execute(uri: "/api/peers", method: .get, headers: auth) { response in
                #expect(Self.json(response.body) == (await FakeBackend().answer(.peers).result!))
            }
            try await client.execute(uri: "/api/jobs/j1", method: .get, headers: auth) { response in
                #expect(Self.json(response.body)["job"]?.string == "j1")
            }
            try await client.execute(uri: "/api/jobs/nope", method: .get, headers: auth) { response in
                #expect(response.status == .notFound)
                #expect(Self.json(response.body)["error"]?.string == "There is no job 'nope'.")
            }
        }
    }

    @Test func actionsGoThroughTheControlAPI() async throws {
        let backend = FakeBackend()
        let auth: HTTPFields = [.authorization: "Bearer \(Self.token.value)"]
        try await app(backend).test(.router) { client in
            for action in ["cancel", "pause", "resume", "retry", "remove"] {
                try await client.execute(uri: "/api/jobs/j1/\(action)", method: .post, headers: auth) {
                    #expect($0.status == .ok, "\(action)")
                }
            }
            try await client.execute(
                uri: "/api/jobs/j1/priority", method: .post, headers: auth,
                body: ByteBuffer(string: #"{"priority": 7}"#)
            ) { #expect($0.status == .ok) }
            try await client.execute(uri: "/api/jobs/j1/priority?n=3", method: .post, headers: auth) {
                #expect($0.status == .ok)
            }
            try await client.execute(uri: "/api/jobs/j1/priority", method: .post, headers: auth) {
                #expect($0.status == .badRequest)
            }
            try await client.execute(uri: "/api/jobs/j1/explode", method: .post, headers: auth) {
                #expect($0.status == .badRequest)
            }
        }
        let asked = backend.asked.withLock { $0 }
        #expect(
            asked == [
                .cancel(job: "j1"), .steer(job: "j1", action: .pause), .steer(job: "j1", action: .resume),
                .steer(job: "j1", action: .retry(frames: nil)), .steer(job: "j1", action: .remove(force: false)),
                .steer(job: "j1", action: .priority(7)), .steer(job: "j1", action: .priority(3)),
            ])
    }

    @Test func metricsAndMissingImagesAnswerPlainly() async throws {
        let auth: HTTPFields = [.authorization: "Bearer \(Self.token.value)"]
        try await app(FakeBackend()).test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get, headers: auth) { response in
                let text = String(buffer: response.body)
                #expect(response.status == .ok)
                #expect(text.contains("rexnode_frames_done_total 1\n"))
                #expect(text.contains("rexnode_peers_alive 1\n"))
                #expect(text.contains("# TYPE rexnode_raft_term gauge"))
            }
            for kind in ["image", "thumb"] {
                try await client.execute(uri: "/api/jobs/j1/frames/2/\(kind)", method: .get, headers: auth) {
                    #expect($0.status == .notFound)
                    #expect(Self.json($0.body)["error"]?.string == "Frame 2 of job j1 has no image yet.")
                }
            }
        }
    }

    @Test func theTokenIsKeptPrivateAndStable() throws {
        let data = DataDirectory(NSTemporaryDirectory() + "rex-token-\(UUID().uuidString)")
        try data.create()
        let first = try AccessToken.loadOrCreate(data)
        let again = try AccessToken.loadOrCreate(data)
        #expect(first == again)
        #expect(first.value.count == 64)
        let mode = try FileManager.default.attributesOfItem(atPath: AccessToken.tokenPath(data))[.posixPermissions]
        #expect((mode as? NSNumber)?.intValue == 0o600)
        #expect(first.matches(first.value))
        #expect(!first.matches(nil) && !first.matches("") && !first.matches(first.value + "0"))
        #expect(!first.matches(String(first.value.dropLast())))
    }

    @Test func httpSettingsParse() throws {
        let data = DataDirectory("/tmp/x")
        #expect(try DashboardSettings.parse("off", data: data) == nil)
        let s = try #require(try DashboardSettings.parse("127.0.0.1:0", data: data))
        #expect(s.host == "127.0.0.1" && s.port == 0)
        #expect(throws: FarmError.self) { try DashboardSettings.parse("nope", data: data) }
        #expect(throws: FarmError.self) { try DashboardSettings.parse("h:70000", data: data) }
    }
}
