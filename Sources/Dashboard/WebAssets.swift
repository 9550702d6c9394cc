import Foundation

/// The dashboard's web files (`Resources/Web/`), embedded in the binary by the `EmbedResources` plugin: a copied
/// binary serves its pages with no files beside it. This is the one place they are read from.
public enum WebAssets {
    /// A file's bytes and content type, or nil when there is no such file.
    public static func file(named name: String) -> (bytes: [UInt8], contentType: String)? {
        guard !name.contains(".."), !name.hasPrefix("/"),
            let data = EmbeddedResources.folder.file(named: "Web/" + name)
        else { return nil }
        return ([UInt8](data), contentType(of: name))
    }

    static func contentType(of name: String) -> String {
        switch (name as NSString).pathExtension.lowercased() {
        case "html": "text/html; charset=utf-8"
        case "css": "text/css; charset=utf-8"
        case "js": "text/javascript; charset=utf-8"
        case "svg": "image/svg+xml"
        case "png": "image/png"
        default: "application/octet-stream"
        }
    }
}
