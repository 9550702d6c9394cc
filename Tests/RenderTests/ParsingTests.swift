import Testing

@testable import Render

@Suite("Progress and driver output parsing")
struct ParsingTests {
    @Test("Cycles sample lines from Blender 3.4 give sample, samples and fraction")
    func cyclesSampleLine() {
        let line =
            "Fra:12 Mem:23.1M (Peak 24M) | Time:00:00.52 | Remaining:00:01.02 | Mem:0.78M, Peak:0.78M"
            + " | Scene, ViewLayer | Sample 8/16"
        #expect(ProgressParser.parse(line: line) == FrameProgress(frame: 12, sample: 8, samples: 16, fraction: 0.5))
    }

    @Test("real Blender 3.4.1 lines: setup steps are 0, Finished is 1")
    func realLines() {
        let setup =
            "Fra:2 Mem:9.40M (Peak 9.40M) | Time:00:00.06 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer"
            + " | Updating Scene BVH | Building BVH 0%"
        let first =
            "Fra:2 Mem:9.90M (Peak 10.16M) | Time:00:00.07 | Mem:0.76M, Peak:0.76M | Scene, ViewLayer"
            + " | Sample 0/4"
        let finished =
            "Fra:2 Mem:9.95M (Peak 10.16M) | Time:00:00.08 | Mem:0.78M, Peak:0.78M | Scene, ViewLayer"
            + " | Finished"
        #expect(ProgressParser.parse(line: setup) == FrameProgress(frame: 2, fraction: 0))
        #expect(ProgressParser.parse(line: first) == FrameProgress(frame: 2, sample: 0, samples: 4, fraction: 0))
        #expect(ProgressParser.parse(line: finished) == FrameProgress(frame: 2, fraction: 1))
    }

    @Test("Eevee's 'Rendering N / M samples' is understood too")
    func eeveeLine() {
        // Printed by Blender 3.4.1's Eevee in background mode on this machine.
        let line = "Fra:1 Mem:11.09M (Peak 12.20M) | Time:00:05.44 | Rendering 16 / 64 samples"
        #expect(ProgressParser.parse(line: line) == FrameProgress(frame: 1, sample: 16, samples: 64, fraction: 0.25))
    }

    @Test("negative frames and lines that are not status lines")
    func edgeCases() {
        #expect(ProgressParser.parse(line: "Fra:-3 Mem:1M | Sample 1/2")?.frame == -3)
        #expect(ProgressParser.parse(line: "Saved: '/tmp/x.png'") == nil)
        #expect(ProgressParser.parse(line: "Read blend: /tmp/a.blend") == nil)
        #expect(ProgressParser.parse(line: "") == nil)
    }

    @Test("driver events parse even when Blender's buffered text precedes the tag on the same line")
    func driverEvents() {
        let done =
            #"Fra:1 Mem:1M | Sam@@REX {"frame": 3, "path": "/o/rex_000003.png", "seconds": 0.5, "event": "done"}"#
        #expect(DriverEvent.parse(line: done) == .done(frame: 3, path: "/o/rex_000003.png", seconds: 0.5))
        let error = #"@@REX {"frame": 1, "message": "Build without OpenImageDenoiser", "event": "error"}"#
        #expect(DriverEvent.parse(line: error) == .error(frame: 1, message: "Build without OpenImageDenoiser"))
        let scene =
            #"@@REX {"event": "scene", "pid": 7, "frameStart": 1, "frameEnd": 24, "frameStep": 1, "#
            + #""resolutionX": 192, "resolutionY": 108, "resolutionPercentage": 100, "engine": "CYCLES", "#
            + #""fileFormat": "PNG", "fileExtension": ".png"}"#
        let info = SceneInfo(
            frameStart: 1, frameEnd: 24, frameStep: 1, resolutionX: 192, resolutionY: 108,
            resolutionPercentage: 100, engine: "CYCLES", fileFormat: "PNG", fileExtension: ".png")
        #expect(DriverEvent.parse(line: scene) == .scene(info, pid: 7))
        #expect(DriverEvent.parse(line: "@@REX not json") == nil)
        #expect(DriverEvent.parse(line: "Blender quit") == nil)
    }

    @Test("render commands are one JSON line with unescaped paths")
    func commandLine() {
        let line = DriverCommand.render(frame: 12, output: "/tmp/out/rex_000012").line
        #expect(line == #"{"cmd":"render","frame":12,"output":"/tmp/out/rex_000012"}"# + "\n")
        #expect(DriverCommand.quit.line == #"{"cmd":"quit"}"# + "\n")
    }

    @Test("line splitter joins chunks, strips CR and cuts endless lines")
    func lineSplitter() {
        var splitter = LineSplitter(maxLineLength: 8)
        #expect(splitter.push(Array("ab".utf8)).isEmpty)
        #expect(splitter.push(Array("c\r\nde\n".utf8)) == ["abc", "de"])
        #expect(splitter.push(Array("0123456789XYZ\nok\n".utf8)) == ["01234567", "ok"])
        #expect(splitter.push(Array("tail".utf8)).isEmpty)
        #expect(splitter.finish() == "tail")
    }

    @Test("output tail keeps the last lines and extracts Blender's error lines")
    func outputTail() {
        var tail = OutputTail(capacity: 3)
        for line in ["a", "Error: Failed to read blend file 'x': Missing DNA block", "b", "c"] {
            tail.append(line)
        }
        tail.append(#"@@REX {"event":"done"}"#)
        #expect(tail.lines == ["Error: Failed to read blend file 'x': Missing DNA block", "b", "c"])
        #expect(tail.errorLines == ["Failed to read blend file 'x': Missing DNA block"])
    }

    @Test("scene info derives output size and frames")
    func sceneInfoDerived() {
        let info = SceneInfo(
            frameStart: 1, frameEnd: 10, frameStep: 3, resolutionX: 1920, resolutionY: 1080,
            resolutionPercentage: 50, engine: "CYCLES", fileFormat: "PNG", fileExtension: ".png")
        #expect(info.outputWidth == 960)
        #expect(info.outputHeight == 540)
        #expect(info.frames == [1, 4, 7, 10])
    }

    @Test("Blender's --version first line gives the version")
    func versionLine() {
        #expect(BlenderLocator.parseVersion("Blender 3.4.1") == "3.4.1")
        #expect(BlenderLocator.parseVersion("Blender 4.2.0 LTS") == "4.2.0")
        #expect(BlenderLocator.parseVersion("\tbuild date: 2023-01-01") == nil)
    }

    @Test("frame failure messages keep Blender's words and add advice for known errors")
    func frameFailureMessages() {
        let oidn = BlenderSession.frameFailureMessage(frame: 3, file: "/j/a.blend", "Build without OpenImageDenoiser")
        #expect(oidn.hasPrefix("Blender failed to render frame 3 of /j/a.blend: Build without OpenImageDenoiser."))
        #expect(oidn.contains("turn off Denoise"))
        let other = BlenderSession.frameFailureMessage(frame: 1, file: "b.blend", "Out of memory in CUDA queue.")
        #expect(other == "Blender failed to render frame 1 of b.blend: Out of memory in CUDA queue.")
    }

    @Test("a Python traceback's last line explains a driver failure")
    func pythonException() {
        var tail = OutputTail()
        for line in [
            "Read blend: /j/a.blend", "Traceback (most recent call last):",
            "  File \"/res/rex_driver.py\", line 3, in <module>", "    import bpy_missing",
            "ModuleNotFoundError: No module named 'bpy_missing'", "", "Blender quit",
        ] {
            tail.append(line)
        }
        #expect(tail.pythonException == "ModuleNotFoundError: No module named 'bpy_missing'")
        let message = loadFailureMessage("/j/a.blend", tail, "exit status 1")
        #expect(message.contains("No module named 'bpy_missing'"))
        #expect(OutputTail().pythonException == nil)
    }
}
