import Foundation

/// Small JPEG previews of frame images, made once per image with ffmpeg and kept under `DATA/thumbs/HASH.jpg`
/// (`HASH.srgb.jpg` for a tone-mapped one).
/// Without ffmpeg there are no thumbnails.
///
/// An EXR frame holds linear light (values may pass 1): shown as is it comes out dark. It is tone-mapped to sRGB:
/// Reinhard on the linear values (`tonemap`, highlights compressed instead of clipped), then the sRGB transfer curve
/// (`zscale`). An ffmpeg without zscale gets the EXR decoder's own sRGB curve (`-apply_trc iec61966_2_1`) instead.
actor Thumbnails {
    let folder: String
    private var making: [String: Task<String?, Never>] = [:]

    init(folder: String) { self.folder = folder }

    /// ffmpeg's arguments for each way of making a thumbnail of an image in format `ext`, best first. A multilayer
    /// EXR (Blender's `OPEN_EXR_MULTILAYER`) is read through its combined pass (`layer`), which ffmpeg does not find
    /// by itself.
    static func recipes(source: String, ext: String, target: String, width: Int = 256, layer: String? = nil)
        -> [[String]]
    {
        // Never wider than the image itself (a large preview of a small frame stays its size).
        let scale = "scale=w=min(\(width)\\,iw):h=-2"
        let head = ["-nostdin", "-loglevel", "error", "-y"] + (layer.map { ["-layer", $0] } ?? [])
        let tail = ["-frames:v", "1", target]
        guard isLinear(ext) else { return [head + ["-i", source, "-vf", scale] + tail] }
        let toneMapped = [
            "zscale=tin=linear:t=linear:npl=100", "format=gbrpf32le", "tonemap=tonemap=reinhard:desat=0",
            "zscale=tin=linear:t=iec61966-2-1:m=bt709:r=pc", "format=rgb24", scale,
        ].joined(separator: ",")
        return [
            head + ["-i", source, "-vf", toneMapped] + tail,
            head + ["-apply_trc", "iec61966_2_1", "-i", source, "-vf", scale] + tail,
        ]
    }

    /// The layer holding a multilayer EXR's combined pass (`ViewLayer.Combined` for a channel
    /// `ViewLayer.Combined.R`), read from the channel list in the file's header; nil for a plain EXR.
    static func combinedLayer(_ path: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let header = try? handle.read(upToCount: 256 * 1024), header.starts(with: [0x76, 0x2f, 0x31, 0x01])
        else { return nil }
        let bytes = [UInt8](header)
        let needle = Array(".Combined.R".utf8) + [0]
        guard bytes.count > needle.count else { return nil }
        for end in needle.count...bytes.count where bytes[(end - needle.count)..<end].elementsEqual(needle) {
            var start = end - needle.count
            while start > 0 && bytes[start - 1] >= 0x20 && bytes[start - 1] < 0x7f { start -= 1 }
            let name = String(decoding: bytes[start..<(end - 3)], as: UTF8.self)
            if !name.isEmpty { return name }
        }
        return nil
    }

    /// Formats that hold linear light rather than display values.
    static func isLinear(_ ext: String) -> Bool {
        ["exr", "hdr"].contains(ext.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ".")))
    }

    /// The thumbnail of the image at `source` (a blob, so its file name is its content hash), made if need be; `ext`
    /// is the image's format (`png`, `exr`, …). `large`: a preview up to 1024 pixels wide instead (the job page's
    /// latest frame, for formats a browser cannot show).
    func thumbnail(of source: String, ext: String, large: Bool = false) async -> String? {
        // A tone-mapped thumbnail has a name of its own: one made before tone-mapping (dark) is not reused.
        let name =
            (source as NSString).lastPathComponent + (large ? ".large" : "") + (Self.isLinear(ext) ? ".srgb" : "")
        let target = folder + "/" + name + ".jpg"
        let width = large ? 1024 : 256
        if FileManager.default.fileExists(atPath: target) { return target }
        if let task = making[name] { return await task.value }
        let folder = self.folder
        // One ffmpeg at a time, on a queue of its own: waiting for it holds a thread, never one of Swift's shared
        // pool (which carries Raft), and a job page of many frames does not start many encoders at once.
        let task = Task { () -> String? in
            await withCheckedContinuation { done in
                Self.queue.async {
                    try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                    let partial = target + ".part.jpg"
                    let layer = Self.isLinear(ext) ? Self.combinedLayer(source) : nil
                    for arguments in Self.recipes(source: source, ext: ext, target: partial, width: width, layer: layer)
                    {
                        if Self.ffmpeg(arguments), rename(partial, target) == 0 {
                            return done.resume(returning: target)
                        }
                        unlink(partial)
                    }
                    done.resume(returning: nil)
                }
            }
        }
        making[name] = task
        let made = await task.value
        making[name] = nil
        return made
    }

    private static let queue = DispatchQueue(label: "rexnode.thumbnails")

    private static func ffmpeg(_ arguments: [String]) -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ffmpeg"] + arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do {
            try process.run()
            process.waitUntilExit()
        } catch {
            return false
        }
        return process.terminationStatus == 0
    }
}
