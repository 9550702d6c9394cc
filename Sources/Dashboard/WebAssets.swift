import Foundation

/// The dashboard's shipped web files (`Web/`). This is the one place they are read from, so how they ship (SwiftPM
/// resources now, embedded in the binary later) changes here only.
public enum WebAssets {
    /// A file's bytes and content type, or nil when there is no such file.
    public static func file(named name: String) -> (bytes: [UInt8], contentType: String)? {
        guard !name.contains(".."), !name.hasPrefix("/"),
            let url = Bundle.module.url(forResource: "Web/" + name, withExtension: nil),
            let data = try? Data(contentsOf: url)
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
