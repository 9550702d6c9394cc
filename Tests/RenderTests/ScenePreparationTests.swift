import Foundation
import Testing

@testable import Render

/// `prepare` opens the user's own file in real Blender: it must list every file an artist's project uses, name
/// the missing ones, bake unbaked simulations into a copy, and see Python that autoexec blocks.
@Suite("Scene preparation (real Blender)", .enabled(if: TestSupport.blenderInstalled), .serialized)
struct ScenePreparationTests {
    static let projectScript = TestSupport.repositoryRoot + "/Tests/Fixtures/make_project.py"

    /// Generates a fixture project (`make_project.py --kind KIND`) and returns (project, outside) folders.
    static func project(_ kind: String, frames: Int? = nil, extra: [String] = []) async throws -> (String, String) {
        let base = try TestSupport.temporaryDirectory(kind)
        let project = base + "/project"
        let outside = base + "/outside"
        let outcome = await runToEnd(
            executable: TestSupport.blenderPath,
            arguments: ["-b", "--factory-startup", "--python", projectScript, "--", project, outside, "--kind", kind]
                + (frames.map { ["--frames", String($0)] } ?? []) + extra,
            timeout: .seconds(120))
        guard outcome.status == 0 else {
            Issue.record("make_project.py failed: \(outcome.tail.lines.joined(separator: "\n"))")
            throw RenderError(.badScene, "fixture failed")
        }
        return (project, outside)
    }

    @Test func everyFileOfAProjectIsTracedByTheDataThatUsesIt() async throws {
        let (project, outside) = try await Self.project("full")
        let blender = try await TestSupport.installation()
        let prepared = try await blender.prepare(at: project + "/shot.blend", scratch: project + "/../scratch")
        let files = Set(prepared.trace.references.flatMap(\.files))
        let expected = [
            project + "/textures/checker.png", outside + "/abs_tex.png", project + "/seq/frame_0001.png",
            project + "/seq/frame_0002.png", project + "/seq/frame_0003.png", project + "/udim/tile.1001.png",
            project + "/udim/tile.1002.png", project + "/fonts/DejaVuSans.ttf", project + "/lib/props.blend",
            project + "/lib/tex/wood.png",
        ].map { URL(fileURLWithPath: $0).standardized.path }
        for file in expected {
            #expect(files.contains(file), "the trace lacks \(file): \(files.sorted())")
        }
        #expect(prepared.trace.missing.isEmpty)
        let kinds = Set(prepared.trace.references.map(\.kind))
        #expect(kinds.isSuperset(of: ["image", "library", "font"]))
        let absolute = prepared.trace.references.filter(\.isAbsolute).map(\.key)
        #expect(absolute == [URL(fileURLWithPath: outside + "/abs_tex.png").standardized.path])
        let library = try #require(prepared.trace.references.first { $0.data.contains("from props.blend") })
        #expect(library.stored == "//tex/wood.png", "a library's texture is stored relative to the library")
        #expect(prepared.scene.frameEnd == 3)
        #expect(prepared.bakedFile == nil)
    }

    @Test func aLibraryInsideALibraryAndItsOwnTextureAreFound() async throws {
        let (project, _) = try await Self.project("nested")
        let blender = try await TestSupport.installation()
        let prepared = try await blender.prepare(at: project + "/shot.blend", scratch: project + "/../scratch")
        let files = Set(prepared.trace.references.flatMap(\.files))
        let expected = ["/lib/a.blend", "/lib/sub/b.blend", "/lib/sub/tex/b.png"].map {
            URL(fileURLWithPath: project + $0).standardized.path
        }
        #expect(files == Set(expected), "\(prepared.trace.references)")
        #expect(prepared.trace.missing.isEmpty, "\(prepared.trace.missing)")
    }

    @Test func anUnbakedRigidBodyWorldIsBakedWithoutCrashingBlender() async throws {
        let (project, _) = try await Self.project("rigid", frames: 6)
        let blender = try await TestSupport.installation()
        let scratch = project + "/../scratch"
        let prepared = try await blender.prepare(
            at: project + "/shot.blend", scratch: scratch, bakeTo: scratch + "/baked.blend", lastFrame: 6)
        #expect(prepared.trace.simulations == ["rigid body world"])
        let baked = try #require(prepared.bakedFile)
        let again = try await blender.prepare(at: baked, scratch: scratch + "/again")
        #expect(again.trace.simulations.isEmpty, "the copy carries the bake")
    }

    @Test func aMissingFileIsNamedWithItsUser() async throws {
        let (project, _) = try await Self.project("missing")
        let blender = try await TestSupport.installation()
        let prepared = try await blender.prepare(at: project + "/shot.blend", scratch: project + "/../scratch")
        let missing = prepared.trace.missing
        #expect(missing.count == 1)
        #expect(missing.first?.file.hasSuffix("/textures/gone.png") == true)
        #expect(missing.first?.users == ["image gone.png"])
    }

    @Test func unbakedParticlesAreBakedIntoACopyAndScriptsAreSeen() async throws {
        let (particles, _) = try await Self.project("particles")
        let blender = try await TestSupport.installation()
        let scratch = particles + "/../scratch"
        let prepared = try await blender.prepare(
            at: particles + "/shot.blend", scratch: scratch, bakeTo: scratch + "/baked.blend", lastFrame: 6)
        #expect(prepared.trace.simulations.count == 1, "\(prepared.trace.simulations)")
        let baked = try #require(prepared.bakedFile)
        #expect(FileManager.default.fileExists(atPath: baked))
        // The copy carries the bake: traced again, nothing is left to bake.
        let again = try await blender.prepare(at: baked, scratch: scratch + "/again")
        #expect(again.trace.simulations.isEmpty, "\(again.trace.simulations)")

        let (driver, _) = try await Self.project("driver")
        let scripted = try await blender.prepare(at: driver + "/shot.blend", scratch: driver + "/../scratch")
        #expect(scripted.trace.scripts.count == 1)
        #expect(scripted.trace.scripts.first?.contains("bpy.context") == true)
    }

    @Test func fileOutputPassesKeepTheirLayoutFrameAfterFrameInOneSession() async throws {
        let (project, _) = try await Self.project("passes", frames: 3, extra: ["--passes-path", "//render/passes/"])
        let renderer = BlenderRenderer(installation: try await TestSupport.installation())
        let session = try await renderer.makeSession(
            for: RenderRequest(jobID: "passes", blendPath: project + "/shot.blend", threads: 1))
        defer { Task { await session.close() } }
        let out = project + "/../slot"
        for frame in 1...3 {
            let rendered = try await session.render(frame: frame, into: out) { _ in }
            let name = String(format: "render/passes/normal_%04d.png", frame)
            #expect(rendered.extras.map(\.path) == [name], "frame \(frame): \(rendered.extras)")
            #expect(rendered.extras.allSatisfy { FileManager.default.fileExists(atPath: $0.file) })
            #expect(rendered.path.hasSuffix(String(format: "rex_%06d.png", frame)))
        }
        // Nothing was written where the scene's own File Output node points at home.
        #expect(!FileManager.default.fileExists(atPath: project + "/render"))
        await session.close()
    }
}
