import Foundation

/// A rectangle of an image's pixels, from its top-left corner, within a `fullWidth` × `fullHeight` image: what a
/// tile render covers (Blender's render border, cropped to it).
public struct ImageRegion: Sendable, Equatable {
    public var x: Int
    public var y: Int
    public var width: Int
    public var height: Int
    public var fullWidth: Int
    public var fullHeight: Int

    public init(x: Int, y: Int, width: Int, height: Int, fullWidth: Int, fullHeight: Int) {
        self.x = x
        self.y = y
        self.width = width
        self.height = height
        self.fullWidth = fullWidth
        self.fullHeight = fullHeight
    }
}

/// Puts a frame's tiles back together into one image in the tiles' own format (PNG 8/16-bit, OpenEXR, multilayer
/// OpenEXR with every pass and view layer, JPEG…) with OpenImageIO's `oiiotool`: the first tile is extended to the
/// full size, each other tile is pasted at its place. Pixels are copied, never resampled or re-quantised, and the
/// channels, their names, data type and compression are the first tile's (Blender wrote them all the same way).
/// The command is data (`arguments`), so its shape is tested without running it.
public struct TileAssembler: Sendable {
    public var oiiotool: String

    public init(oiiotool: String) {
        self.oiiotool = oiiotool
    }

    /// oiiotool on this machine, if any.
    public static func locate() -> String? {
        BlenderLocator.resolve("oiiotool", searchPath: ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
    }

    public struct Tile: Sendable, Equatable {
        public var path: String
        public var region: ImageRegion

        public init(path: String, region: ImageRegion) {
            self.path = path
            self.region = region
        }
    }

    /// `tiles` must cover the image; the one at the top-left corner goes first.
    /// With `compression` (oiiotool's name: "jpeg:90", "dwaa"), the output is compressed so (the tiles are
    /// lossless). PNG, TIFF and Targa tiles keep straight alpha as Blender wrote it: read premultiplied, a pixel of
    /// low alpha would lose its colour in 8 bits.
    public func arguments(tiles: [Tile], output: String, compression: String? = nil) -> [String] {
        let ordered = tiles.sorted { ($0.region.y, $0.region.x) < ($1.region.y, $1.region.x) }
        guard let first = ordered.first else { return [] }
        let size = "\(first.region.fullWidth)x\(first.region.fullHeight)"
        // The setting holds for the next input read only.
        let straight = ["--iconfig", "oiio:UnassociatedAlpha", "1"]
        var arguments =
            ["-q", "--nosoftwareattrib"] + straight + [first.path, "--crop", size + "+0+0", "--fullpixels"]
        for tile in ordered.dropFirst() {
            // `--paste` puts the image below the top of the stack onto the top one: the tile goes first.
            arguments += straight + [tile.path, "--swap", "--paste", "+\(tile.region.x)+\(tile.region.y)"]
        }
        if let compression { arguments += ["--attrib", "Compression", compression] }
        arguments += ["-o", output]
        return arguments
    }

    /// Writes the assembled frame to `output` (under a temporary name first, so it is whole or absent). Throws in
    /// one sentence when a tile is missing, has another size than its region, or oiiotool fails.
    public func assemble(tiles: [Tile], to output: String, compression: String? = nil) async throws {
        guard let first = tiles.first else {
            throw RenderError(.frameFailed, "A tiled frame cannot be assembled from no tiles.")
        }
        let covered = tiles.reduce(0) { $0 + $1.region.width * $1.region.height }
        guard covered == first.region.fullWidth * first.region.fullHeight,
            tiles.contains(where: { $0.region.x == 0 && $0.region.y == 0 })
        else {
            throw RenderError(
                .frameFailed,
                "The \(tiles.count) tiles do not cover the \(first.region.fullWidth)x\(first.region.fullHeight) frame.")
        }
        let ext = (output as NSString).pathExtension
        let partial = (output as NSString).deletingPathExtension + ".part-\(UUID().uuidString.prefix(8))." + ext
        defer { try? FileManager.default.removeItem(atPath: partial) }
        let outcome = await runToEnd(
            executable: oiiotool, arguments: arguments(tiles: tiles, output: partial, compression: compression),
            timeout: .seconds(3600))
        if let failure = outcome.launchFailure {
            throw RenderError(.blenderMissing, "oiiotool (OpenImageIO) could not be started: \(failure).")
        }
        guard outcome.status == 0, FileManager.default.fileExists(atPath: partial) else {
            let said = outcome.tail.lines.suffix(3).joined(separator: "; ")
            throw RenderError(
                .frameFailed,
                "oiiotool could not assemble \((output as NSString).lastPathComponent) from its tiles "
                    + "(\(outcome.statusDescription))" + (said.isEmpty ? "." : ": \(said)."))
        }
        guard rename(partial, output) == 0 else {
            throw RenderError(
                .frameFailed, "Cannot move the assembled frame into \(output): \(String(cString: strerror(errno))).")
        }
    }
}
