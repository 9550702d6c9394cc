import Embedded
import Foundation
import Render
import Testing

@testable import Farm

/// Install anywhere, previews, notifications (issue 16): the pure parts.
@Suite("Install and end of job")
struct InstallTests {
    @Test("An embedded folder extracts once per version, whole, and its files read back")
    func embeddedFolderExtracts() throws {
        let root = NSTemporaryDirectory() + "rexnode-embed-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let folder = EmbeddedFolder(
            version: "v1", base64Files: ["a.py": Data("print(1)\n".utf8).base64EncodedString(), "pkg/b.txt": ""])
        #expect(folder.names == ["a.py", "pkg/b.txt"])
        let first = try folder.extract(into: root)
        #expect(first == root + "/v1")
        #expect(try String(contentsOfFile: first + "/a.py", encoding: .utf8) == "print(1)\n")
        #expect(FileManager.default.fileExists(atPath: first + "/pkg/b.txt"))
        #expect(try folder.extract(into: root) == first)
        #expect(try folder.path(of: "a.py", root: root) == first + "/a.py")
        #expect(throws: EmbeddedFolderError.self) { try folder.path(of: "missing.py", root: root) }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: root)
        #expect(leftovers == ["v1"])
    }

    @Test("Render's scripts and the add-on are in the binary")
    func renderResourcesAreEmbedded() throws {
        let parent = try AddonFiles.parentFolder()
        #expect(FileManager.default.fileExists(atPath: parent + "/rexnode_addon/__init__.py"))
        #expect(
            FileManager.default.fileExists(atPath: (parent as NSString).deletingLastPathComponent + "/rex_driver.py"))
    }

    @Test("The cache root follows XDG_CACHE_HOME, then HOME")
    func cacheRoot() {
        #expect(
            ResourceCache.defaultRoot(environment: ["XDG_CACHE_HOME": "/c", "HOME": "/h"]) == "/c/rexnode/resources")
        #expect(ResourceCache.defaultRoot(environment: ["HOME": "/h"]) == "/h/.cache/rexnode/resources")
    }

    @Test("Foundation and NIO errors become one sentence")
    func errorSentences() {
        let exists = CocoaError(.fileWriteFileExists, userInfo: [NSFilePathErrorKey: "/out/x.png"])
        #expect(ErrorSentence.describe(exists) == "/out/x.png already exists")
        let ns = NSError(domain: NSCocoaErrorDomain, code: 516, userInfo: [NSFilePathErrorKey: "/a"])
        #expect(ErrorSentence.describe(ns) == "/a already exists")
        struct Fake: Error, CustomStringConvertible {
            var description: String { "connect(descriptor:addr:size:): Connection refused (errno: 111)" }
        }
        #expect(ErrorSentence.describe(Fake()) == String(cString: strerror(111)))
        #expect(ErrorSentence.describe(FarmError(.badInput, "No such job.")) == "No such job")
    }

    @Test("The preview movie is H.264 yuv420p, padded to an even size, at the given rate")
    func previewArguments() {
        let encoder = MovieEncoder.preview(ffmpeg: "ffmpeg", fps: 25)
        let arguments = encoder.arguments(pattern: "/s/%06d.png", output: "/o.mp4")
        #expect(arguments.contains("libx264"))
        #expect(arguments.contains("yuv420p"))
        #expect(arguments.contains("pad=ceil(iw/2)*2:ceil(ih/2)*2"))
        #expect(arguments[arguments.firstIndex(of: "-framerate")! + 1] == "25")
        let ntsc = MovieEncoder.preview(ffmpeg: "ffmpeg", fps: 23.976).arguments(pattern: "p", output: "o")
        #expect(ntsc[ntsc.firstIndex(of: "-framerate")! + 1] == "23.976")
    }

    @Test("Frames of a fetched job come in frame order; a movie name is never reused")
    func videoFiles() throws {
        let folder = NSTemporaryDirectory() + "rexnode-video-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        for name in ["a_0010.png", "a_0002.png", "a_0001.png", ".hidden_0003.png", "a.mp4", "notes.txt"] {
            _ = FileManager.default.createFile(atPath: "\(folder)/\(name)", contents: Data())
        }
        #expect(
            VideoFiles.frames(in: folder, frames: []).map { ($0 as NSString).lastPathComponent } == [
                "a_0001.png", "a_0002.png", "a_0010.png",
            ])
        #expect(VideoFiles.frames(in: folder, frames: [2]).count == 1)
        #expect(VideoFiles.freeName("\(folder)/a", ext: ".mp4") == "\(folder)/a-2.mp4")
        #expect(VideoFiles.freeName("\(folder)/b", ext: ".mp4") == "\(folder)/b.mp4")
    }

    @Test("submit's --on-done and --video cross the control socket; older requests decode without them")
    func submitRequestRoundTrip() throws {
        let request = ControlRequest.submit(
            SubmitRequest(path: "/s.blend", output: "/o", onDone: "cat > /tmp/x", video: true))
        let decoded = try JSONDecoder().decode(ControlRequest.self, from: JSONEncoder().encode(request))
        #expect(decoded == request)
        let old = try JSONDecoder().decode(
            ControlRequest.self, from: Data(#"{"op":"submit","path":"/s.blend","output":"/o"}"#.utf8))
        guard case .submit(let r) = old else {
            Issue.record("not a submit")
            return
        }
        #expect(r.onDone == nil && r.video == false)
    }
}
