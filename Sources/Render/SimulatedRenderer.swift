import Foundation

// MARK: - SimulatedRenderer

/// A stand-in for Blender (`--renderer simulated:MS`): sleeps, then writes a small real PNG whose pixels
/// depend on the frame number. Lets farm tests and demos run many nodes fast and deterministically on a
/// machine without Blender, while exercising the same session, progress and file paths.
public struct SimulatedRenderer: Renderer {
    public let millisecondsPerFrame: Int
    /// The simulated image's width and height.
    public static let size = 16

    public init(millisecondsPerFrame: Int) {
        self.millisecondsPerFrame = max(0, millisecondsPerFrame)
    }

    public func makeSession(for request: RenderRequest) async throws -> any RenderSession {
        SimulatedSession(jobID: request.jobID, millisecondsPerFrame: millisecondsPerFrame)
    }

    /// The image a simulated render of `frame` produces: 16×16 RGB, a colour field derived from the frame
    /// number with a marker column at `frame % 16`, so any two frames differ.
    public static func image(frame: Int, region: ImageRegion? = nil) -> [UInt8] {
        let size = SimulatedRenderer.size
        // A multiplicative hash spreads neighbouring frames over distinct colours.
        let hash = UInt64(bitPattern: Int64(frame)) &* 0x9E37_79B9_7F4A_7C15
        let base = (
            UInt8(truncatingIfNeeded: hash >> 40), UInt8(truncatingIfNeeded: hash >> 48),
            UInt8(truncatingIfNeeded: hash >> 56)
        )
        let marker = ((frame % size) + size) % size
        var rgb: [UInt8] = []
        rgb.reserveCapacity(size * size * 3)
        for y in 0..<size {
            for x in 0..<size {
                if x == marker {
                    rgb += [255, 255, 255]
                } else {
                    let shade = UInt8(y * 8)
                    rgb += [base.0 &+ shade, base.1, base.2 &+ UInt8(x * 4)]
                }
            }
        }
        guard let region else { return PNG.encode(width: size, height: size, rgb: rgb) }
        // A tile: the same pixels, cut to the region (clipped to the image).
        let x0 = max(0, min(size, region.x))
        let y0 = max(0, min(size, region.y))
        let x1 = max(x0, min(size, region.x + region.width))
        let y1 = max(y0, min(size, region.y + region.height))
        var cut: [UInt8] = []
        for y in y0..<y1 { cut += rgb[(y * size + x0) * 3..<(y * size + x1) * 3] }
        return PNG.encode(width: x1 - x0, height: y1 - y0, rgb: cut)
    }
}

/// A session of `SimulatedRenderer`; `close()` makes an in-flight render throw `.canceled`.
actor SimulatedSession: RenderSession {
    private let jobID: String
    private let millisecondsPerFrame: Int
    private var closed = false

    init(jobID: String, millisecondsPerFrame: Int) {
        self.jobID = jobID
        self.millisecondsPerFrame = millisecondsPerFrame
    }

    var sceneInfo: SceneInfo? { nil }

    func render(
        frame: Int, region: ImageRegion?, into directory: String,
        progress: @escaping @Sendable (FrameProgress) -> Void
    ) async throws -> RenderedFrame {
        let clock = ContinuousClock()
        let started = clock.now
        let steps = 4
        for step in 0..<steps {
            try checkOpen()
            do {
                try await Task.sleep(for: .milliseconds(millisecondsPerFrame) / steps)
            } catch {
                throw RenderError(.canceled, "The simulated render of frame \(frame) was cancelled.")
            }
            try checkOpen()
            progress(FrameProgress(frame: frame, sample: step + 1, samples: steps, fraction: Double(step + 1) / 4))
        }
        let name = BlenderSession.baseName(frame: frame) + (region.map { "_tile\($0.x)x\($0.y)" } ?? "") + ".png"
        let path = (directory.hasSuffix("/") ? directory : directory + "/") + name
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let temporary = path + ".part"
            try Data(SimulatedRenderer.image(frame: frame, region: region)).write(to: URL(fileURLWithPath: temporary))
            if FileManager.default.fileExists(atPath: path) {
                try FileManager.default.removeItem(atPath: path)
            }
            try FileManager.default.moveItem(atPath: temporary, toPath: path)
        } catch {
            throw RenderError(
                .frameFailed, "The simulated frame \(frame) could not be written to \(directory): \(error).")
        }
        let elapsed = clock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        // What a Blender would have printed, so the farm's frame logs have something to show.
        let log = [
            "Fra:\(frame) simulated render (\(millisecondsPerFrame) ms) | Sample \(steps)/\(steps)",
            "Saved: '\(path)'",
        ]
        return RenderedFrame(frame: frame, path: path, seconds: seconds, log: log)
    }

    func close() async {
        closed = true
    }

    private func checkOpen() throws {
        if closed {
            throw RenderError(.canceled, "The simulated render session for job \(jobID) was closed.")
        }
    }
}
