import Foundation
import Ledger
import Render

/// Where each file of a traced project lies under a job root, decided once at submit (pure: paths in, paths out).
///
/// The root stands for the deepest folder that holds the .blend and every file it needs, so the job root mirrors
/// that part of the submitter's disk: every relative path (the main file's, and each library's own) resolves on a
/// worker exactly as at home. Files the scene names by an absolute path get a remap entry, applied at load time in
/// the render session. A project whose files are all beside the .blend keeps its plain layout
/// (`shot.blend`, `textures/checker.png`); a texture on another disk makes the layout deeper, never wrong.
struct ProjectLayout: Sendable, Equatable {
    /// The folder on the submitter's machine that the job root stands for.
    var root: String
    /// The .blend's path under the root.
    var scene: String
    /// Every file to ship: its absolute path here and its path under the root (the scene first).
    var files: [(source: String, path: String)]
    /// Absolute paths as the scene resolves them -> paths under the root.
    var remap: [String: String]

    static func == (a: Self, b: Self) -> Bool {
        a.root == b.root && a.scene == b.scene && a.remap == b.remap
            && a.files.map { [$0.source, $0.path] } == b.files.map { [$0.source, $0.path] }
    }

    init(blend: String, trace: ProjectTrace) {
        let blend = Self.normalize(blend)
        var sources = [blend]
        var seen: Set<String> = [blend]
        for reference in trace.references {
            for file in reference.files.map(Self.normalize) where seen.insert(file).inserted {
                sources.append(file)
            }
        }
        let root = Self.commonFolder(sources)
        self.root = root
        scene = Self.relative(blend, to: root)
        files = sources.map { ($0, Self.relative($0, to: root)) }
        var remap: [String: String] = [:]
        for reference in trace.references where reference.isAbsolute {
            let key = Self.normalize(reference.key)
            // A UDIM set's key keeps its token; its folder is under the root like its tiles.
            guard key.hasPrefix("/"), Self.isInside(key, root) else { continue }
            remap[key] = Self.relative(key, to: root)
        }
        self.remap = remap
    }

    /// The deepest folder containing every path (each an absolute file path).
    static func commonFolder(_ paths: [String]) -> String {
        var common: [Substring]?
        for path in paths {
            let folder = Array(path.split(separator: "/").dropLast())
            guard let current = common else {
                common = folder
                continue
            }
            common = Array(zip(current, folder).prefix { $0 == $1 }.map(\.0))
        }
        return "/" + (common ?? []).joined(separator: "/")
    }

    static func isInside(_ path: String, _ folder: String) -> Bool {
        folder == "/" || path.hasPrefix(folder + "/")
    }

    static func relative(_ path: String, to root: String) -> String {
        root == "/" ? String(path.dropFirst()) : String(path.dropFirst(root.count + 1))
    }

    /// `/a/./b//c/../d` -> `/a/b/d` (Blender's `bpy.path.abspath` leaves `..` in; the trace normalises, this is a
    /// second line of defence).
    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." { continue }
            if part == ".." {
                if !parts.isEmpty { parts.removeLast() }
                continue
            }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }
}
