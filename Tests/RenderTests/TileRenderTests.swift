import Foundation
import Testing

@testable import Render

/// One tile of a frame in a render session, and the scenes whose frames cannot be tiled (real Blender).
@Suite("Tiles with real Blender", .enabled(if: TestSupport.blenderInstalled))
struct TileRenderTests {
    @Test("a tile renders just its region, and the next whole frame of the session is whole again")
    func tileThenWholeFrame() async throws {
        let scene = try await SceneCache.shared.standard()  // 32x24 images
        let output = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: output) }
        let session = try await BlenderRenderer(installation: try await TestSupport.installation(), niceLevel: 0)
            .makeSession(for: RenderRequest(jobID: "tiles", blendPath: scene))
        defer { Task { await session.close() } }
        let region = ImageRegion(x: 10, y: 7, width: 11, height: 9, fullWidth: 32, fullHeight: 24)
        let tile = try await session.render(frame: 2, region: region, into: output) { _ in }
        #expect(PNG.size(of: try TestSupport.readBytes(tile.path)).map { [$0.width, $0.height] } == [11, 9])
        let whole = try await session.render(frame: 2, into: output) { _ in }
        #expect(PNG.size(of: try TestSupport.readBytes(whole.path)).map { [$0.width, $0.height] } == [32, 24])
        // A region of another image size than the scene's is refused in words, not rendered wrong.
        let wrong = ImageRegion(x: 0, y: 0, width: 8, height: 8, fullWidth: 64, fullHeight: 48)
        await #expect {
            _ = try await session.render(frame: 2, region: wrong, into: output) { _ in }
        } throws: { error in
            (error as? RenderError)?.message.contains("the job's tiles split a 64x48 image") == true
        }
    }

    @Test("probing names why a scene cannot be tiled: the denoiser, an engine other than Cycles")
    func untileableScenes() async throws {
        let installation = try await TestSupport.installation()
        #expect(try await installation.probeScene(at: try await SceneCache.shared.standard()).untileable == nil)
        let denoised = try await SceneCache.shared.scene(["--denoise"], name: "denoised.blend")
        let reason = try await installation.probeScene(at: denoised).untileable
        #expect(reason?.contains("denoiser") == true, "\(reason ?? "nil")")
        let workbench = try await SceneCache.shared.scene(["--engine", "BLENDER_WORKBENCH"], name: "workbench.blend")
        let engine = try await installation.probeScene(at: workbench).untileable
        #expect(engine?.contains("tiles need Cycles") == true, "\(engine ?? "nil")")
    }
}

@Suite struct TileAssemblerTests {
    @Test func theTopLeftTileIsTheCanvasAndEveryOtherIsPastedAtItsPlace() {
        let tiles = [
            TileAssembler.Tile(
                path: "/t/1.exr", region: .init(x: 5, y: 0, width: 5, height: 4, fullWidth: 10, fullHeight: 8)),
            TileAssembler.Tile(
                path: "/t/2.exr", region: .init(x: 0, y: 4, width: 5, height: 4, fullWidth: 10, fullHeight: 8)),
            TileAssembler.Tile(
                path: "/t/0.exr", region: .init(x: 0, y: 0, width: 5, height: 4, fullWidth: 10, fullHeight: 8)),
        ]
        #expect(
            TileAssembler(oiiotool: "oiiotool").arguments(tiles: tiles, output: "/o.exr")
                == [
                    "-q", "--nosoftwareattrib", "--iconfig", "oiio:UnassociatedAlpha", "1", "/t/0.exr", "--crop",
                    "10x8+0+0", "--fullpixels", "--iconfig", "oiio:UnassociatedAlpha", "1", "/t/1.exr", "--swap",
                    "--paste", "+5+0", "--iconfig", "oiio:UnassociatedAlpha", "1", "/t/2.exr", "--swap", "--paste",
                    "+0+4", "-o", "/o.exr",
                ])
        // A JPEG frame is compressed once, at the scene's quality.
        #expect(
            TileAssembler(oiiotool: "oiiotool").arguments(tiles: [tiles[2]], output: "/o.jpg", compression: "jpeg:90")
                .suffix(6) == ["--fullpixels", "--attrib", "Compression", "jpeg:90", "-o", "/o.jpg"])
    }

    @Test func tilesThatDoNotCoverTheFrameAreRefusedInWords() async {
        let tile = TileAssembler.Tile(
            path: "/t/0.png", region: .init(x: 0, y: 0, width: 5, height: 4, fullWidth: 10, fullHeight: 8))
        await #expect {
            try await TileAssembler(oiiotool: "/bin/false").assemble(tiles: [tile], to: "/tmp/never.png")
        } throws: { error in
            (error as? RenderError)?.message == "The 1 tiles do not cover the 10x8 frame."
        }
    }
}
