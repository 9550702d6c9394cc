// TEMPORARY API stub until the render branch merges (replaced by the real module).
import Foundation
import Logging

public struct SceneInfo: Sendable, Codable, Equatable {
    public var frameStart: Int, frameEnd: Int, frameStep: Int
    public var resolutionX: Int, resolutionY: Int, resolutionPercentage: Int
    public var engine: String
    public var fileFormat: String
    public var fileExtension: String
}
public struct BlenderInstallation: Sendable {
    public let path: String
    public let version: String
}
public enum BlenderLocator {
    public static func locate(explicit: String?, environment: [String: String]) async throws -> BlenderInstallation {
        fatalError()
    }
}
extension BlenderInstallation {
    public func probeScene(at blendPath: String) async throws -> SceneInfo { fatalError() }
}
public struct RenderRequest: Sendable {
    public var jobID: String
    public var blendPath: String
    public var threads: Int?
    public init(jobID: String, blendPath: String, threads: Int?) {
        self.jobID = jobID
        self.blendPath = blendPath
        self.threads = threads
    }
}
public struct FrameProgress: Sendable, Equatable {
    public var frame: Int
    public var sample: Int?
    public var samples: Int?
    public var fraction: Double
}
public struct RenderedFrame: Sendable {
    public var frame: Int
    public var path: String
    public var seconds: Double
}
public protocol Renderer: Sendable {
    func makeSession(for request: RenderRequest) async throws -> any RenderSession
}
public protocol RenderSession: AnyObject, Sendable {
    var sceneInfo: SceneInfo? { get async }
    func render(frame: Int, into directory: String, progress: @escaping @Sendable (FrameProgress) -> Void) async throws
        -> RenderedFrame
    func close() async
}
public struct RenderError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable { case blenderMissing, badScene, frameFailed, crashed, canceled }
    public var code: Code
    public var message: String
    public var commandLine: [String]
    public var outputTail: [String]
    public var description: String { message }
}
public struct BlenderRenderer: Renderer {
    public init(installation: BlenderInstallation, niceLevel: Int = 10, logger: Logger? = nil) {}
    public func makeSession(for request: RenderRequest) async throws -> any RenderSession { fatalError() }
}
public struct SimulatedRenderer: Renderer {
    public init(millisecondsPerFrame: Int) {}
    public func makeSession(for request: RenderRequest) async throws -> any RenderSession { fatalError() }
}
