import Foundation

/// Small JPEG previews of frame images, made once per image with ffmpeg and kept under `DATA/thumbs/HASH.jpg`.
/// EXR goes through ffmpeg too (its default conversion, no tone-mapping). Without ffmpeg there are no thumbnails.
actor Thumbnails {
    let folder: String
    private var making: [String: Task<String?, Never>] = [:]

    init(folder: String) { self.folder = folder }

    /// The thumbnail of the image at `source` (a blob, so its file name is its content hash), made if need be.
    func thumbnail(of source: String) async -> String? {
        let name = (source as NSString).lastPathComponent
        let target = folder + "/" + name + ".jpg"
        if FileManager.default.fileExists(atPath: target) { return target }
        if let task = making[name] { return await task.value }
        let folder = self.folder
        let task = Task.detached { () -> String? in
            try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let partial = target + ".part.jpg"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", source, "-vf", "scale=256:-2", "-frames:v", "1",
                partial,
            ]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            do {
                try process.run()
                process.waitUntilExit()
            } catch {
                return nil
            }
            guard process.terminationStatus == 0, rename(partial, target) == 0 else {
                unlink(partial)
                return nil
            }
            return target
        }
        making[name] = task
        let made = await task.value
        making[name] = nil
        return made
    }
}
