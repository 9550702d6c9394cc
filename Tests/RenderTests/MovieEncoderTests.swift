import Testing

@testable import Render

@Suite("Movie encoder command")
struct MovieEncoderTests {
    func settings(codec: String = "H264", fps: Int = 24, base: Double = 1, crf: String = "HIGH", bitrate: Int = 0)
        -> MovieSettings
    {
        MovieSettings(
            container: "MPEG4", codec: codec, fps: fps, fpsBase: base, crf: crf, bitrate: bitrate, extension: ".mp4")
    }

    @Test func h264KeepsTheScenesRateAndQuality() {
        let arguments = MovieEncoder(ffmpeg: "ffmpeg", settings: settings()).arguments(
            pattern: "/t/%06d.png", output: "/o/a.mp4")
        let text = arguments.joined(separator: " ")
        #expect(text.contains("-framerate 24 -start_number 1 -i /t/%06d.png -c:v libx264"))
        #expect(text.contains("-pix_fmt yuv420p -crf 20"))
        #expect(arguments.last == "/o/a.mp4")
    }

    @Test func ntscRatesAndBitratesAreHonoured() {
        let ntsc = MovieEncoder(ffmpeg: "ffmpeg", settings: settings(fps: 30, base: 1.001))
        #expect(ntsc.rate == "30000/1001")
        let constant = MovieEncoder(ffmpeg: "ffmpeg", settings: settings(codec: "MPEG4", crf: "NONE", bitrate: 6000))
        let text = constant.arguments(pattern: "p", output: "o.mp4").joined(separator: " ")
        #expect(text.contains("-c:v mpeg4"))
        #expect(text.contains("-b:v 6000k"))
        #expect(!text.contains("-crf"))
    }
}
