import ArgumentParser
import Embedded
import Farm
import Foundation
import Render

// MARK: video

extension RexNode {
    struct Video: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an H.264 MP4 of a job's finished frames, in frame order, with ffmpeg.")
        @Argument(help: "The job: its id, a unique id prefix, or its unique name.") var job: String
        @Option(help: "The movie file (default: NAME.mp4 next to the job's output folder; never overwritten).")
        var output: String?
        @Option(help: "Frames per second (default: the scene's rate when the farm knows it, else 24).")
        var fps: Double?
        @OptionGroup var data: DataOption

        func validate() throws {
            if let fps, !(fps > 0 && fps <= 1000) { throw ValidationError("--fps must be between 0 and 1000.") }
        }

        func run() async throws {
            try await RexNode.guarded {
                let status = try await ControlClient.send(.status(job: job), data: data.directory)
                let id = status["job"]?.string ?? job
                let name = status["name"]?.string ?? id
                let jobOutput = status["output"]?.string ?? DataDirectory.absolute("rex-out/\(name)")
                let target =
                    output.map(DataDirectory.absolute)
                    ?? VideoFiles.freeName((jobOutput as NSString).deletingLastPathComponent + "/\(name)", ext: ".mp4")
                if FileManager.default.fileExists(atPath: target) {
                    throw FarmError(.badInput, "\(target) already exists; pass another --output.")
                }
                guard let ffmpeg = MovieEncoder.locate() else {
                    throw FarmError(.badInput, "ffmpeg is not installed on this machine; install it to make movies.")
                }
                // The frames, fetched as `fetch` does (from any holder) into a private folder beside the movie.
                let folder = (target as NSString).deletingLastPathComponent
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                let staging = "\(folder)/.rexnode-video-\(UUID().uuidString.prefix(8))"
                defer { try? FileManager.default.removeItem(atPath: staging) }
                _ = try await ControlClient.send(.fetch(job: id, output: staging), data: data.directory)
                let done = (status["frames"]?.array ?? []).filter { $0["state"]?.string == "done" }.compactMap {
                    $0["frame"]?.int
                }
                let files = VideoFiles.frames(in: staging, frames: Set(done))
                guard !files.isEmpty else {
                    throw FarmError(.badInput, "Job \(id) has no finished frames to make a movie of yet.")
                }
                let rate = fps ?? status["fps"]?.double ?? 24
                try await MovieEncoder.preview(ffmpeg: ffmpeg, fps: rate).encode(frames: files, to: target)
                print("\(files.count) frames of \(id) → \(target)")
            }
        }
    }
}

// MARK: addon

extension RexNode {
    struct Addon: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The Blender add-on shipped in this binary: print its folder, or install it into Blender.")
        @Flag(help: "Print the folder that holds the add-on package (rexnode_addon/).") var path = false
        @Flag(help: "Copy the add-on into this user's Blender add-ons folder.") var install = false
        @Option(help: "The Blender add-ons folder to install into (default: asked of Blender).") var addons: String?
        @OptionGroup var data: DataOption

        func validate() throws {
            if path == install { throw ValidationError("Pass one of --path or --install.") }
        }

        func run() async throws {
            try await RexNode.guarded {
                let directory = data.directory
                if FileManager.default.fileExists(atPath: directory.root) { ResourceCache.use(directory.resources) }
                let parent = try AddonFiles.parentFolder()
                if path { return print(parent) }
                let destination = try addons ?? Self.blenderAddonsFolder()
                let target = "\(destination)/\(AddonFiles.packageName)"
                let fm = FileManager.default
                try fm.createDirectory(atPath: destination, withIntermediateDirectories: true)
                let partial = "\(target).partial-\(getpid())"
                try? fm.removeItem(atPath: partial)
                try fm.copyItem(atPath: "\(parent)/\(AddonFiles.packageName)", toPath: partial)
                try? fm.removeItem(atPath: target)
                guard rename(partial, target) == 0 else {
                    throw FarmError(.badInput, "Cannot install the add-on into \(target).")
                }
                print("Installed the rexnode add-on into \(target); enable it in Blender's Preferences → Add-ons.")
            }
        }

        /// Blender's own answer (`bpy.utils.user_resource('SCRIPTS', path="addons")`), else the Linux default
        /// `~/.config/blender/<version>/scripts/addons`.
        static func blenderAddonsFolder() throws -> String {
            let expr = "import bpy; print('@@ADDONS ' + bpy.utils.user_resource('SCRIPTS', path='addons'))"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["blender", "-b", "--factory-startup", "--python-expr", expr]
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            if (try? process.run()) != nil {
                let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                process.waitUntilExit()
                if let line = out.split(separator: "\n").first(where: { $0.hasPrefix("@@ADDONS ") }) {
                    return String(line.dropFirst("@@ADDONS ".count))
                }
            }
            throw FarmError(
                .badInput,
                "Cannot ask Blender where its add-ons go (is `blender` on PATH?); pass --addons "
                    + "~/.config/blender/X.Y/scripts/addons.")
        }
    }
}
