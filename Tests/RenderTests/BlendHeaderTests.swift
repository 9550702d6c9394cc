import Foundation
import Testing

@testable import Render

/// The version that saved a .blend, read from its header before any Blender starts (issue 14).
@Suite("Blend header")
struct BlendHeaderTests {
    @Test("the old 12-byte form gives major.minor from three digits, either pointer size and endianness")
    func oldForm() {
        #expect(BlendHeader.parse(Array("BLENDER-v304REND".utf8)) == BlendVersion(major: 3, minor: 4))
        #expect(BlendHeader.parse(Array("BLENDER_V279".utf8)) == BlendVersion(major: 2, minor: 79))
        #expect(BlendHeader.parse(Array("BLENDER-v405".utf8)) == BlendVersion(major: 4, minor: 5))
    }

    @Test("the Blender 5 form carries its header size, file format and four digits")
    func newForm() {
        #expect(BlendHeader.parse(Array("BLENDER17-01v0500REND".utf8)) == BlendVersion(major: 5, minor: 0))
        #expect(BlendHeader.parse(Array("BLENDER17-01v0501".utf8)) == BlendVersion(major: 5, minor: 1))
        #expect(BlendHeader.parse(Array("BLENDER17-01V1203".utf8)) == BlendVersion(major: 12, minor: 3))
    }

    @Test("garbage, truncated headers and other files have no version")
    func garbage() {
        for text in [
            "", "BLENDER", "BLENDER-v3", "BLENDER-x304", "BLENDER-vABC", "BLENDER17-01v05", "BLENDER18-01v0500",
            "BLENDER17_01v0500", "PNG\r\n", "blender-v304",
        ] {
            #expect(BlendHeader.parse(Array(text.utf8)) == nil, "\(text)")
        }
        #expect(BlendHeader.parse([0x28, 0xb5, 0x2f, 0xfd, 0, 0]) == nil)
    }

    @Test("versions compare numerically and read from version strings")
    func versions() {
        #expect(BlendVersion("3.4.1") == BlendVersion(major: 3, minor: 4))
        #expect(BlendVersion("5.0") == BlendVersion(major: 5, minor: 0))
        #expect(BlendVersion("4.10.2")! > BlendVersion("4.9")!)
        #expect(BlendVersion("five") == nil)
        #expect(BlendVersion("5") == nil)
        #expect(BlendVersion(major: 5, minor: 0).description == "5.0")
    }

    @Test("read() finds the version in plain, gzip and zstd files, and names the file when it cannot")
    func readsCompressedFiles() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let body = Data(repeating: 0x41, count: 100_000)
        let old = dir + "/old.blend"
        let new = dir + "/new.blend"
        try (Data("BLENDER-v304REND".utf8) + body).write(to: URL(fileURLWithPath: old))
        try (Data("BLENDER17-01v0500REND".utf8) + body).write(to: URL(fileURLWithPath: new))
        #expect(try BlendHeader.read(old) == BlendVersion(major: 3, minor: 4))
        #expect(try BlendHeader.read(new) == BlendVersion(major: 5, minor: 0))
        for tool in ["gzip", "zstd"] {
            let compressedOld = "\(dir)/old-\(tool).blend"
            let compressedNew = "\(dir)/new-\(tool).blend"
            try compress(old, with: tool, to: compressedOld)
            try compress(new, with: tool, to: compressedNew)
            #expect(
                BlendHeader.container(of: try TestSupport.readBytes(compressedOld)) == (tool == "gzip" ? .gzip : .zstd))
            #expect(try BlendHeader.read(compressedOld) == BlendVersion(major: 3, minor: 4), "\(tool)")
            #expect(try BlendHeader.read(compressedNew) == BlendVersion(major: 5, minor: 0), "\(tool)")
        }
        let junk = dir + "/shot.blend"
        try Data("not a blend at all".utf8).write(to: URL(fileURLWithPath: junk))
        let error = #expect(throws: RenderError.self) { try BlendHeader.read(junk) }
        #expect(error?.message == "shot.blend is not a Blender file (it does not start with BLENDER).")
        let fakeZstd = dir + "/broken.blend"
        try Data([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]).write(to: URL(fileURLWithPath: fakeZstd))
        let broken = #expect(throws: RenderError.self) { try BlendHeader.read(fakeZstd) }
        #expect(broken?.message.hasPrefix("broken.blend ") == true)
        let compressedJunk = dir + "/junk-gzip.blend"
        try compress(junk, with: "gzip", to: compressedJunk)
        let noHeader = #expect(throws: RenderError.self) { try BlendHeader.read(compressedJunk) }
        #expect(noHeader?.message.hasPrefix("junk-gzip.blend has no Blender header") == true)
    }

    private func compress(_ path: String, with tool: String, to output: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool, "-c", path]
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(tool) failed")
    }
}

@Suite("Blender command for Blender as a Python module")
struct PythonModuleCommandTests {
    @Test("a bpy runtime runs the script first, then the file, threads and autoexec after the double dash")
    func pythonForm() {
        var command = BlenderCommand(
            executable: "/venv/bin/python", blendFile: "/w/scene.blend", pythonScript: "/r/rex_driver.py",
            scriptArguments: ["--remap", "/w/remap.json"], threads: 2, disableAutoexec: false, pythonModule: true)
        #expect(
            command.arguments == [
                "-u", "/r/rex_driver.py", "/w/scene.blend", "--", "--remap", "/w/remap.json", "--rex-threads", "2",
                "--rex-autoexec",
            ])
        command.niceLevel = 10
        #expect(command.invocation.executable == "/usr/bin/nice")
        #expect(command.invocation.arguments.prefix(4) == ["-n", "10", "/venv/bin/python", "-u"])
        command.threads = nil
        command.disableAutoexec = true
        #expect(command.arguments.last == "/w/remap.json")
    }

    @Test("an installation of kind python builds the python form")
    func installationKind() {
        let module = BlenderInstallation(path: "/venv/bin/python", version: "5.0.1", kind: .python)
        #expect(module.command(blendFile: "/a.blend", script: "/p.py").arguments == ["-u", "/p.py", "/a.blend", "--"])
        let blender = BlenderInstallation(path: "/usr/bin/blender", version: "3.4.1")
        #expect(blender.command(blendFile: "/a.blend", script: "/p.py").arguments.first == "--background")
    }
}

/// `--blender PATH` given a Python with bpy (the venv `make bpy-venv` makes; `REXNODE_BPY_PYTHON` overrides): it
/// fails, naming the make target, when the venv is absent, since `make test` installs it.
@Suite("Runtimes: Blender as a Python module")
struct PythonRuntimeTests {
    static let python =
        ProcessInfo.processInfo.environment["REXNODE_BPY_PYTHON"] ?? TestSupport.repositoryRoot
        + "/.venv-bpy/bin/python"

    @Test("a Python that imports bpy is probed as Blender 5.0.1 of kind python; the same version twice is refused")
    func probesBpy() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.python),
            "bpy is missing at \(Self.python): run `make bpy-venv` (make test does)")
        let found = try await BlenderLocator.locateAll(
            explicit: [TestSupport.blenderPath, Self.python], environment: [:])
        #expect(found.map(\.version) == ["3.4.1", "5.0.1"])
        #expect(found.map(\.kind) == [.executable, .python])
        let twice = await #expect(throws: RenderError.self) {
            try await BlenderLocator.locateAll(explicit: [Self.python, Self.python], environment: [:])
        }
        #expect(twice?.message.contains("are both Blender 5.0.1") == true)
    }

    @Test("a Python without bpy is refused in one sentence saying so")
    func pythonWithoutBpy() async throws {
        let error = await #expect(throws: RenderError.self) {
            try await BlenderLocator.locate(explicit: "/usr/bin/python3", environment: [:])
        }
        #expect(error?.message.contains("neither Blender nor a Python that can import bpy") == true)
    }
}
