import Foundation
import PackagePlugin

/// Embeds every file under a target's `Resources/` folder into the target as generated Swift source, so a copied
/// binary carries its scripts and web files (SwiftPM's `resources:` bundle is found through an absolute path into
/// `.build`). The generated file declares `enum EmbeddedResources` with one `EmbeddedFolder` (module `Embedded`).
@main
struct EmbedResources: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let root = target.directoryURL.appending(path: "Resources")
        let files = Self.files(under: root)
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedResources.swift")
        return [
            .buildCommand(
                displayName: "Embedding \(files.count) resource file(s) of \(target.name)",
                executable: try context.tool(named: "rex-embed").url,
                arguments: [output.path, root.path] + files.map(\.relative),
                inputFiles: files.map(\.url),
                outputFiles: [output])
        ]
    }

    /// Regular files under `root`, hidden files and caches left out, in a stable order.
    static func files(under root: URL) -> [(url: URL, relative: String)] {
        let fm = FileManager.default
        guard let walker = fm.enumerator(at: root, includingPropertiesForKeys: [.isRegularFileKey]) else {
            return []
        }
        var found: [(url: URL, relative: String)] = []
        let prefix = root.standardizedFileURL.path + "/"
        for case let url as URL in walker {
            let path = url.standardizedFileURL.path
            let relative = path.hasPrefix(prefix) ? String(path.dropFirst(prefix.count)) : url.lastPathComponent
            if relative.split(separator: "/").contains(where: { $0.hasPrefix(".") || $0 == "__pycache__" }) {
                continue
            }
            let isFile = (try? url.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) ?? false
            if isFile { found.append((url, relative)) }
        }
        return found.sorted { $0.relative < $1.relative }
    }
}
