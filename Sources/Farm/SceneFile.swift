import Foundation

/// Checks on user-supplied files and folders, shared by the CLI (fail fast) and the daemon (trust nothing).
public enum SceneFile {
    /// A .blend starts with `BLENDER`; Blender also reads gzip- and zstd-compressed ones.
    public static func validate(_ path: String) throws(FarmError) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw FarmError(.badInput, "The file \(path) does not exist.")
        }
        guard !isDir.boolValue else { throw FarmError(.badInput, "\(path) is a folder, not a .blend file.") }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw FarmError(.badInput, "The file \(path) cannot be read (check its permissions).")
        }
        defer { try? handle.close() }
        let head = Array((try? handle.read(upToCount: 12)) ?? Data())
        let isBlend = head.starts(with: Array("BLENDER".utf8))
        let isGzip = head.starts(with: [0x1f, 0x8b])
        let isZstd = head.starts(with: [0x28, 0xb5, 0x2f, 0xfd])
        guard isBlend || isGzip || isZstd else {
            if head.isEmpty { throw FarmError(.badInput, "\(path) is empty, not a .blend file.") }
            if Array("BLENDER".utf8).starts(with: head) {
                throw FarmError(.badInput, "\(path) is truncated: it ends inside the .blend header.")
            }
            throw FarmError(.badInput, "\(path) is not a Blender file (it does not start with BLENDER).")
        }
        if isBlend && head.count < 12 {
            throw FarmError(.badInput, "\(path) is truncated: it ends inside the .blend header.")
        }
    }

    /// Creates the output folder if needed and proves it is writable.
    public static func prepareOutput(_ path: String) throws(FarmError) {
        var built = ""
        for component in path.split(separator: "/") {
            built += "/" + component
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: built, isDirectory: &isDir) {
                guard isDir.boolValue else {
                    throw FarmError(.badInput, "Cannot create the output folder \(path): \(built) is a file.")
                }
                continue
            }
            guard mkdir(built, 0o755) == 0 || errno == EEXIST else {
                throw FarmError(
                    .badInput, "Cannot create the output folder \(path): \(String(cString: strerror(errno))).")
            }
        }
        let probe = "\(path)/.rexnode-write-test-\(getpid())"
        guard FileManager.default.createFile(atPath: probe, contents: Data()) else {
            throw FarmError(.badInput, "The output folder \(path) is not writable.")
        }
        try? FileManager.default.removeItem(atPath: probe)
    }

    /// A job name safe to use as a file-name prefix.
    public static func jobName(from text: String) -> String {
        let base = ((text as NSString).lastPathComponent as NSString).deletingPathExtension
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))
        let cleaned = String(base.unicodeScalars.map { allowed.contains($0) ? Character($0) : "_" })
        return cleaned.isEmpty || cleaned.hasPrefix(".") ? "job" + cleaned : cleaned
    }
}
