import Foundation

/// Every file a job needs, as it lies under the job root: the project's layout, each file by content address.
///
/// `scene` is the .blend's path under the root. Paths are relative, `/`-separated, and never leave the root
/// (`validate`). `remap` maps a path as the scene resolves it on the submitter's machine (absolute, normalised) to
/// the path under the root where its copy lies; the render session points those datablocks there at load time.
/// Paths that the scene stores relative to itself need no entry: the root mirrors the project around the .blend.
public struct JobManifest: Sendable, Equatable, Codable {
    public var scene: String
    public var files: [ManifestFile]
    public var remap: [String: String]

    public init(scene: String, files: [ManifestFile], remap: [String: String] = [:]) {
        self.scene = scene
        self.files = files
        self.remap = remap
    }

    /// Bytes of all files together.
    public var totalSize: Int64 { files.reduce(0) { $0 + $1.size } }

    /// Every blob the job needs (the scene's included), once each.
    public var blobs: [String] {
        var seen = Set<String>()
        return files.map(\.blob).filter { seen.insert($0).inserted }
    }

    /// The scene's own file entry.
    public var sceneFile: ManifestFile? { files.first { $0.path == scene } }

    /// Refuses a manifest whose paths could write outside a job root, or that names its scene nowhere.
    public func validate() throws(ManifestError) {
        var seen = Set<String>()
        for file in files {
            try Self.checkRelative(file.path)
            guard seen.insert(file.path).inserted else { throw ManifestError("\(file.path) is listed twice.") }
            guard Self.isAddress(file.blob) else {
                throw ManifestError("\(file.path) has no valid content address.")
            }
        }
        for target in remap.values { try Self.checkRelative(target) }
        guard seen.contains(scene) else { throw ManifestError("the scene \(scene) is not among the job's files.") }
    }

    /// A blob's content address: 64 lowercase hexadecimal characters (legacy), or `t1` and 64 of them (a tree
    /// address). The same rule as `Mesh.BlobAddress.isValid`, which this module does not import.
    public static func isAddress(_ text: String) -> Bool {
        let utf8 = text.utf8
        let digest = utf8.count == 66 && text.hasPrefix("t1") ? utf8.dropFirst(2) : utf8[...]
        return digest.count == 64 && digest.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// A path that stays under the root: relative, no `.`/`..`/empty component, no NUL.
    public static func checkRelative(_ path: String) throws(ManifestError) {
        guard !path.isEmpty, !path.hasPrefix("/"), !path.contains("\0") else {
            throw ManifestError("the path \"\(path)\" is not relative.")
        }
        for part in path.split(separator: "/", omittingEmptySubsequences: false) {
            guard !part.isEmpty, part != ".", part != ".." else {
                throw ManifestError("the path \"\(path)\" leaves the job's folder.")
            }
        }
    }
}

public struct ManifestFile: Sendable, Equatable, Codable {
    public var path: String
    public var blob: String
    public var size: Int64

    public init(path: String, blob: String, size: Int64) {
        self.path = path
        self.blob = blob
        self.size = size
    }
}

public struct ManifestError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A movie the submitter encodes from the job's frames once they are all in: the scene's container, codec,
/// frame rate and quality, as Blender's FFmpeg settings name them.
public struct MovieSpec: Sendable, Equatable, Codable {
    public var container: String
    public var codec: String
    public var fps: Int
    public var fpsBase: Double
    public var crf: String
    public var bitrate: Int
    /// The file's extension with its dot (".mp4").
    public var fileExtension: String

    public init(
        container: String, codec: String, fps: Int, fpsBase: Double, crf: String, bitrate: Int,
        fileExtension: String
    ) {
        self.container = container
        self.codec = codec
        self.fps = fps
        self.fpsBase = fpsBase
        self.crf = crf
        self.bitrate = bitrate
        self.fileExtension = fileExtension
    }
}

/// A file a frame's render wrote besides the frame (a compositor File Output pass), by its path under the output
/// folder.
public struct FrameOutput: Sendable, Equatable, Codable {
    public var path: String
    public var hash: String
    public var size: Int64

    public init(path: String, hash: String, size: Int64) {
        self.path = path
        self.hash = hash
        self.size = size
    }
}
