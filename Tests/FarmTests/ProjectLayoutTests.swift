import Foundation
import Ledger
import Render
import Testing

@testable import Farm

/// Where a project's files go under a job root, and what a worker refuses to lay out.
@Suite("Project layout and manifests")
struct ProjectLayoutTests {
    func reference(_ stored: String, _ key: String, files: [String]? = nil, kind: String = "image")
        -> ProjectTrace.Reference
    {
        ProjectTrace.Reference(kind: kind, data: "x", stored: stored, key: key, files: files ?? [key])
    }

    @Test func aProjectBesideItsBlendKeepsItsOwnLayout() {
        let trace = ProjectTrace(references: [
            reference("//textures/a.png", "/home/u/proj/textures/a.png"),
            reference("//lib/props.blend", "/home/u/proj/lib/props.blend", kind: "library"),
            reference("//tex/wood.png", "/home/u/proj/lib/tex/wood.png"),
        ])
        let layout = ProjectLayout(blend: "/home/u/proj/shot.blend", trace: trace)
        #expect(layout.root == "/home/u/proj")
        #expect(layout.scene == "shot.blend")
        #expect(layout.files.map(\.path) == ["shot.blend", "textures/a.png", "lib/props.blend", "lib/tex/wood.png"])
        #expect(layout.remap.isEmpty, "relative paths resolve by themselves under the mirrored root")
    }

    @Test func filesAboveOrOutsideTheProjectDeepenTheRootAndAbsolutePathsAreRemapped() {
        let trace = ProjectTrace(references: [
            reference("//../shared/tex.png", "/home/u/shared/tex.png"),
            reference("/mnt/lib/wall.png", "/mnt/lib/wall.png"),
            reference(
                "/home/u/proj/udim/t.<UDIM>.png", "/home/u/proj/udim/t.<UDIM>.png",
                files: ["/home/u/proj/udim/t.1001.png", "/home/u/proj/udim/t.1002.png"]),
        ])
        let layout = ProjectLayout(blend: "/home/u/proj/shots/../shot.blend", trace: trace)
        #expect(layout.root == "/")
        #expect(layout.scene == "home/u/proj/shot.blend")
        #expect(layout.files.map(\.path).contains("home/u/shared/tex.png"))
        #expect(
            layout.remap == [
                "/mnt/lib/wall.png": "mnt/lib/wall.png",
                "/home/u/proj/udim/t.<UDIM>.png": "home/u/proj/udim/t.<UDIM>.png",
            ])
        // A file used twice is shipped once.
        let twice = ProjectLayout(
            blend: "/p/s.blend",
            trace: ProjectTrace(references: [reference("//a.png", "/p/a.png"), reference("//a.png", "/p/a.png")]))
        #expect(twice.files.count == 2)
    }

    @Test func aManifestThatLeavesTheJobRootIsRefused() {
        let blob = String(repeating: "ab", count: 32)
        for path in ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./a", "", "a/."] {
            let manifest = JobManifest(scene: path, files: [ManifestFile(path: path, blob: blob, size: 1)])
            #expect(throws: ManifestError.self, "\(path) was accepted") { try manifest.validate() }
        }
        let remapOut = JobManifest(
            scene: "s.blend", files: [ManifestFile(path: "s.blend", blob: blob, size: 1)], remap: ["/x": "../x"])
        #expect(throws: ManifestError.self) { try remapOut.validate() }
        let noScene = JobManifest(scene: "t.blend", files: [ManifestFile(path: "s.blend", blob: blob, size: 1)])
        #expect(throws: ManifestError.self) { try noScene.validate() }
        let badBlob = JobManifest(scene: "s.blend", files: [ManifestFile(path: "s.blend", blob: "../x", size: 1)])
        #expect(throws: ManifestError.self) { try badBlob.validate() }
        let good = JobManifest(
            scene: "p/s.blend", files: [ManifestFile(path: "p/s.blend", blob: blob, size: 1)], remap: ["/x": "p/x"])
        #expect(throws: Never.self) { try good.validate() }
    }

    @Test func aWorkerLaysOutTheProjectFromItsBlobsAndWritesThePathTable() async throws {
        let f = try SubmitServiceTests.Fixture()
        let source = f.dir + "/src"
        try FileManager.default.createDirectory(atPath: source + "/tex", withIntermediateDirectories: true)
        let scene = f.scene()
        try Data("texture".utf8).write(to: URL(fileURLWithPath: source + "/tex/a.png"))
        let a = try f.blobs.put(fileAt: source + "/tex/a.png")
        let s = try f.blobs.put(fileAt: scene)
        let manifest = JobManifest(
            scene: "proj/shot.blend",
            files: [
                ManifestFile(path: "proj/shot.blend", blob: s.hash, size: s.size),
                ManifestFile(path: "proj/tex/a.png", blob: a.hash, size: a.size),
                ManifestFile(path: "mnt/a-again.png", blob: a.hash, size: a.size),
            ],
            remap: ["/mnt/a-again.png": "mnt/a-again.png"])
        let work = WorkFolders(root: f.dir + "/work", blobs: f.blobs)
        _ = try await f.log.propose([
            .submitJob(
                SubmitJob(
                    job: "j1", name: "shot", submitter: "node-a", blendHash: s.hash, blendSize: s.size, frames: [1],
                    chunk: 1, priority: 0, output: f.dir + "/out", submittedAtMs: 0, manifest: manifest))
        ])
        let record = try #require(try f.ledger.job("j1"))
        #expect(record.manifest == manifest)
        #expect(Set(record.blobs) == [s.hash, a.hash])
        let laidOut = try work.materialize(record)
        let root = work.projectRoot("j1")
        #expect(laidOut.scene == root + "/proj/shot.blend")
        #expect(try String(contentsOfFile: root + "/proj/tex/a.png", encoding: .utf8) == "texture")
        #expect(try String(contentsOfFile: root + "/mnt/a-again.png", encoding: .utf8) == "texture")
        let table = try JSONDecoder().decode(
            [String: String].self, from: Data(contentsOf: URL(fileURLWithPath: try #require(laidOut.remapFile))))
        #expect(table == ["/mnt/a-again.png": root + "/mnt/a-again.png"])
        // Twice is harmless (two slots may lay out the same job).
        #expect(try work.materialize(record) == laidOut)

        // A manifest that escapes the root is refused and writes nothing.
        var hostile = record
        hostile.job = "j2"
        hostile.manifest = JobManifest(
            scene: "s.blend",
            files: [
                ManifestFile(path: "s.blend", blob: s.hash, size: s.size),
                ManifestFile(path: "../../escaped.png", blob: a.hash, size: a.size),
            ])
        #expect(throws: FarmError.self) { try work.materialize(hostile) }
        #expect(!FileManager.default.fileExists(atPath: f.dir + "/escaped.png"))
        #expect(!FileManager.default.fileExists(atPath: work.jobFolder("j2")))
    }

    @Test func missingFilesAreRefusedByNameUnlessAllowedAndBlockedPythonIsNamed() throws {
        let trace = ProjectTrace(
            references: [
                ProjectTrace.Reference(
                    kind: "image", data: "gone.png", stored: "//t/gone.png", key: "/p/t/gone.png", files: [],
                    missing: ["/p/t/gone.png"])
            ],
            scripts: ["driver on Cube (bpy.context.scene.frame_current)"])
        let request = SubmitRequest(path: "/p/shot.blend", output: "/o")
        do {
            _ = try SubmitService.check(trace, file: "/p/shot.blend", request: request)
            Issue.record("a missing file was accepted")
        } catch let error as FarmError {
            #expect(error.message.contains("/p/t/gone.png (image gone.png)"))
            #expect(error.message.contains("--allow-missing"))
            #expect(!error.message.contains("\n"))
        }
        var allowed = request
        allowed.allowMissing = true
        let warnings = try SubmitService.check(trace, file: "/p/shot.blend", request: allowed)
        #expect(warnings.count == 2)
        #expect(warnings[0].contains("gone.png"))
        #expect(warnings[1].contains("--trust-scripts"))
        allowed.trustScripts = true
        #expect(try SubmitService.check(trace, file: "/p/shot.blend", request: allowed).count == 1)
    }
}
