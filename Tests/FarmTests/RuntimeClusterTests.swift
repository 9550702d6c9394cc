import Foundation
import Testing

/// Blender 5.0 as a Python module (PyPI's bpy), in the venv `make bpy-venv` makes (`REXNODE_BPY_PYTHON`
/// overrides). Tests that need it fail, naming the make target, when it is absent: `make test` installs it.
enum ModernBlender {
    static let python: String =
        ProcessInfo.processInfo.environment["REXNODE_BPY_PYTHON"] ?? "\(TestPaths.root)/.venv-bpy/bin/python"

    static func require() throws -> String {
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw TestFailure(
                "Blender 5.0 as a Python module is missing at \(python): run `make bpy-venv` (make test does).")
        }
        return python
    }

    /// A scene written by bpy 5.0 itself (zstd-compressed, the new header), named `name`.
    static func scene(_ name: String, options: [String]) throws -> String {
        let python = try require()
        let dir = tempDir("bpy-scene")
        let path = "\(dir)/\(name)"
        let made = try runProgram(
            python, ["\(TestPaths.root)/Tests/Fixtures/make_test_scene.py", "--", path, "--compress"] + options,
            timeout: 300)
        guard FileManager.default.fileExists(atPath: path) else {
            throw TestFailure("bpy could not make the test scene: \(made)")
        }
        return path
    }
}

/// Renders frames `first...last` of `scene` in the Blender at `blender` itself (`blender -b FILE -o … -a`, or bpy's
/// `render(animation=True)`), as `ref_0001.png` …, into a new folder.
func referenceRender(_ scene: String, blender: String, bpy: Bool, first: Int, last: Int) throws -> String {
    let dir = tempDir("reference")
    let pattern = "\(dir)/ref_####"
    let result: CommandResult
    if bpy {
        let script = """
            import sys, bpy
            bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
            scene = bpy.context.scene
            scene.render.filepath = sys.argv[2]
            scene.frame_start, scene.frame_end = int(sys.argv[3]), int(sys.argv[4])
            bpy.ops.render.render(animation=True)
            """
        result = try runProgram(blender, ["-c", script, scene, pattern, "\(first)", "\(last)"], timeout: 600)
    } else {
        result = try runProgram(
            blender, ["-b", scene, "-o", pattern, "-s", "\(first)", "-e", "\(last)", "-a"], timeout: 600)
    }
    guard result.status == 0 else { throw TestFailure("reference render failed: \(result)") }
    return dir
}

/// Decodes both images (with Blender's own decoders) and compares them channel by channel.
func imagesMatch(_ a: String, _ b: String, tolerance: Int = 0) throws -> CommandResult {
    try runProgram(
        TestPaths.blender,
        [
            "-b", "--factory-startup", "--python", "\(TestPaths.root)/Tests/Fixtures/compare_images.py", "--", a, b,
            "--tolerance", "\(tolerance)",
        ], timeout: 300)
}

extension ProcessTests {
    @Suite struct RuntimeClusterTests {
        @Test func aFarmWithOnlyBlender34RefusesABlender50FileNamingBothVersions() throws {
            let scene = try ModernBlender.scene("shot.blend", options: ["--frames", "1"])
            defer { try? FileManager.default.removeItem(atPath: (scene as NSString).deletingLastPathComponent) }
            let node = try TestNode(name: "old", args: ["--blender", TestPaths.blender])
            let out = tempDir("refused")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try node.cli(["submit", scene, "--output", out])
            #expect(r.status != 0)
            #expect(
                r.stderr.contains(
                    "shot.blend was saved by Blender 5.0; this farm's nodes have 3.4.1 — add a node with Blender 5.0 "
                        + "or newer (`rexnode join --blender …`)."), "\(r)")
            #expect(!r.stderr.contains("/work/"), "the farm's own copy is not named: \(r.stderr)")
            #expect((try node.json(["jobs"]) as? [Any])?.isEmpty == true)
        }

        @Test func aMixedFarmRendersEachJobOnlyWithItsOwnBlenderAndMatchesThatBlendersRender() throws {
            let bpy = try ModernBlender.require()
            let options = ["--frames", "4", "--width", "32", "--height", "24", "--samples", "2"]
            let modern = try ModernBlender.scene("shot50.blend", options: options)
            defer { try? FileManager.default.removeItem(atPath: (modern as NSString).deletingLastPathComponent) }
            let classic = try Scenes.make(options)
            let farm = try TestFarm(
                count: 3, args: ["--threads", "1"],
                perNode: [
                    0: ["--blender", TestPaths.blender], 1: ["--blender", bpy],
                    2: ["--blender", TestPaths.blender, "--blender", bpy],
                ])
            let (old, new) = (farm.nodes[0], farm.nodes[1])
            // Every node sees what every other can run (beacons), then names the nodes by id.
            var ids: [String: String] = [:]
            try waitUntil(timeout: 30, "peers announce their Blenders") {
                let rows = try #require(try old.json(["peers"]) as? [[String: Any]])
                let versions = Dictionary(
                    uniqueKeysWithValues: rows.map { ($0["name"] as? String ?? "", $0["blender"] as? [String] ?? []) })
                ids = Dictionary(
                    uniqueKeysWithValues: rows.map { ($0["name"] as? String ?? "", $0["id"] as? String ?? "") })
                return versions == ["n1": ["3.4.1"], "n2": ["5.0.1"], "n3": ["3.4.1", "5.0.1"]]
            }
            let out50 = tempDir("out50")
            let out34 = tempDir("out34")
            defer {
                try? FileManager.default.removeItem(atPath: out50)
                try? FileManager.default.removeItem(atPath: out34)
            }
            let job50 = try new.submit([modern, "--chunk", "1", "--output", out50])
            let job34 = try old.submit([classic, "--chunk", "1", "--output", out34, "--name", "shot34"])
            let done50 = try new.waitFor(job50, timeout: 600) { $0["state"] as? String == "done" }
            let done34 = try old.waitFor(job34, timeout: 600) { $0["state"] as? String == "done" }
            #expect(done50["blender"] as? String == "5.0.1")
            #expect(done34["blender"] as? String == "3.4.1")
            let nodes50 = Set((done50["frames"] as? [[String: Any]] ?? []).compactMap { $0["node"] as? String })
            let nodes34 = Set((done34["frames"] as? [[String: Any]] ?? []).compactMap { $0["node"] as? String })
            #expect(!nodes50.isEmpty && nodes50.isSubset(of: [ids["n2"]!, ids["n3"]!]), "5.0 frames on \(nodes50)")
            #expect(!nodes34.isEmpty && nodes34.isSubset(of: [ids["n1"]!, ids["n3"]!]), "3.4 frames on \(nodes34)")
            // Each frame equals what that Blender renders of the file by itself.
            try waitUntil(timeout: 120, "every frame delivered") {
                try FileManager.default.contentsOfDirectory(atPath: out50).filter { $0.hasSuffix(".png") }.count == 4
                    && FileManager.default.contentsOfDirectory(atPath: out34).filter { $0.hasSuffix(".png") }.count == 4
            }
            let reference50 = try referenceRender(modern, blender: bpy, bpy: true, first: 1, last: 4)
            let reference34 = try referenceRender(classic, blender: TestPaths.blender, bpy: false, first: 1, last: 4)
            defer {
                try? FileManager.default.removeItem(atPath: reference50)
                try? FileManager.default.removeItem(atPath: reference34)
            }
            for frame in 1...4 {
                let padded = String(format: "%04d", frame)
                let a = try imagesMatch("\(out50)/shot50_\(padded).png", "\(reference50)/ref_\(padded).png")
                #expect(a.status == 0, "5.0 frame \(frame): \(a.stdout.split(separator: "\n").last ?? "")")
                let b = try imagesMatch("\(out34)/shot34_\(padded).png", "\(reference34)/ref_\(padded).png")
                #expect(b.status == 0, "3.4 frame \(frame): \(b.stdout.split(separator: "\n").last ?? "")")
            }
        }
    }
}
