import Foundation
import Testing

@testable import Render

@Suite("BlenderCommand as data")
struct BlenderCommandTests {
    @Test("driver command puts autoexec and threads before the file and the script after it")
    func driverCommandOrder() {
        let command = BlenderCommand(
            executable: "/usr/bin/blender", blendFile: "/jobs/a.blend", pythonScript: "/res/rex_driver.py",
            threads: 2)
        #expect(
            command.arguments == [
                "--background", "--disable-autoexec", "-noaudio", "--threads", "2", "/jobs/a.blend",
                "--python-exit-code", "1", "--python", "/res/rex_driver.py",
            ])
        #expect(!command.arguments.contains("--factory-startup"))
        #expect(command.invocation.executable == "/usr/bin/blender")
        #expect(command.commandLine.first == "/usr/bin/blender")
    }

    @Test("nice level wraps Blender in nice -n, keeping Blender's own arguments intact")
    func niceWrapsBlender() {
        let command = BlenderCommand(
            executable: "/opt/blender/blender", blendFile: "s.blend", pythonScript: "d.py", niceLevel: 10)
        let invocation = command.invocation
        #expect(invocation.executable == "/usr/bin/nice")
        #expect(Array(invocation.arguments.prefix(3)) == ["-n", "10", "/opt/blender/blender"])
        #expect(Array(invocation.arguments.dropFirst(3)) == command.arguments)
        #expect(command.commandLine == ["/usr/bin/nice", "-n", "10", "/opt/blender/blender"] + command.arguments)
    }

    @Test("without threads, script or script arguments the command stays minimal; a trusted job says -y")
    func minimalCommand() {
        let command = BlenderCommand(executable: "blender", blendFile: "x.blend", disableAutoexec: false)
        // Explicit: Blender's default would come from the machine's preferences.
        #expect(command.arguments == ["--background", "--enable-autoexec", "-noaudio", "x.blend"])
    }

    @Test("script arguments follow a double dash so Blender does not read them")
    func scriptArguments() {
        let command = BlenderCommand(
            executable: "blender", blendFile: "x.blend", pythonScript: "p.py", scriptArguments: ["--probe", "1"])
        #expect(Array(command.arguments.suffix(3)) == ["--", "--probe", "1"])
    }

    @Test("commands are equatable values")
    func equatable() {
        let a = BlenderCommand(executable: "blender", blendFile: "x.blend", environment: ["A": "1", "B": nil])
        var b = a
        #expect(a == b)
        b.threads = 4
        #expect(a != b)
    }

    @Test("BlenderRenderer's session command: nice 10, the driver resource, threads, persistent data on request")
    func rendererCommand() throws {
        let installation = BlenderInstallation(path: "/usr/bin/blender", version: "3.4.1")
        let request = RenderRequest(jobID: "j", blendPath: "/jobs/a.blend", threads: 3)
        let plain = try BlenderRenderer(installation: installation).command(for: request)
        #expect(plain.niceLevel == 10)
        #expect(plain.threads == 3)
        #expect(plain.pythonScript?.hasSuffix("rex_driver.py") == true)
        #expect(FileManager.default.fileExists(atPath: plain.pythonScript ?? ""))
        #expect(plain.scriptArguments.isEmpty)
        let persistent = try BlenderRenderer(installation: installation, niceLevel: 0, persistentData: true)
            .command(for: request)
        #expect(persistent.scriptArguments == ["--persistent-data", "on"])
        #expect(persistent.invocation.executable == "/usr/bin/blender")
    }
}
