import Foundation
import Render
import Testing

extension ProcessTests {
    /// Tiled jobs on a farm of simulated renderers (no Blender): the same units, scheduling, assembly (oiiotool)
    /// and delivery as with Blender, fast enough to split frames finely across several nodes.
    @Suite struct TileClusterTests {
        @Test(.enabled(if: TileAssembler.locate() != nil, "needs oiiotool (make setup installs openimageio-tools)"))
        func tiledFramesAssembleIntoTheWholeSimulatedImage() throws {
            let farm = try TestFarm(count: 3, args: ["--renderer", "simulated:150"])
            let scene = try Scenes.make(["--frames", "3", "--width", "32", "--height", "24", "--samples", "1"])
            let out = tempDir("tiles")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try farm.nodes[0].cli(["submit", scene, "--frames", "1-3", "--tiles", "4x2", "--output", out])
            #expect(r.status == 0, "\(r)")
            let job = try #require((try farm.nodes[0].json(["jobs"]) as? [[String: Any]])?.first?["job"] as? String)
            let status = try farm.nodes[1].status(job)
            #expect(status["tiles"] as? String == "4x2")
            #expect(status["tiles_done"] as? Int == 24)
            let frames = try #require(status["frames"] as? [[String: Any]])
            let tileNodes = Set(
                frames.flatMap { ($0["tiles"] as? [[String: Any]] ?? []).compactMap { $0["node"] as? String } })
            #expect(tileNodes.count >= 2, "tiles were rendered by \(tileNodes)")
            let name = (scene as NSString).lastPathComponent.replacingOccurrences(of: ".blend", with: "")
            for frame in 1...3 {
                // The simulated renderer's whole image of the frame, next to the farm's assembled one.
                let whole = out + "/whole_\(frame).png"
                try Data(SimulatedRenderer.image(frame: frame)).write(to: URL(fileURLWithPath: whole))
                let assembled = out + "/\(name)_\(String(format: "%04d", frame)).png"
                let diff = try runProgram("/usr/bin/env", ["oiiotool", whole, assembled, "--fail", "0", "--diff"])
                #expect(diff.status == 0, "frame \(frame): \(diff.stdout)\(diff.stderr)")
            }
        }

        @Test(.enabled(if: TileAssembler.locate() != nil, "needs oiiotool (make setup installs openimageio-tools)"))
        func aBlender50StillTiledOnTwoNodesEqualsBlender50sOwnRender() throws {
            let bpy = try ModernBlender.require()
            let scene = try ModernBlender.scene(
                "still50.blend", options: ["--frames", "1", "--width", "61", "--height", "37", "--samples", "8"])
            defer { try? FileManager.default.removeItem(atPath: (scene as NSString).deletingLastPathComponent) }
            let farm = try TestFarm(count: 2, args: ["--threads", "1", "--blender", bpy])
            let out = tempDir("tiles50")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try farm.nodes[0].cli(["submit", scene, "--tiles", "3x2", "--output", out], timeout: 600)
            #expect(r.status == 0, "\(r)")
            let reference = try referenceRender(scene, blender: bpy, bpy: true, first: 1, last: 1)
            defer { try? FileManager.default.removeItem(atPath: reference) }
            // Within 8-bit dither (2/255) on the stored values.
            let diff = try runProgram(
                "/usr/bin/env",
                ["oiiotool", "\(reference)/ref_0001.png", "\(out)/still50_0001.png", "--fail", "0.0079", "--diff"])
            #expect(diff.status == 0, "\(diff.stdout)\(diff.stderr)")
        }
    }
}
