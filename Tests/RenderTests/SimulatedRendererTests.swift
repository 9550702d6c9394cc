import Foundation
import Testing

@testable import Render

@Suite("SimulatedRenderer and the PNG encoder")
struct SimulatedRendererTests {
    @Test("CRC-32 and Adler-32 match their published check values")
    func checksums() {
        #expect(PNG.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(PNG.adler32(Array("Wikipedia".utf8)) == 0x11E6_0398)
    }

    @Test("a simulated session writes valid, distinct 16x16 PNGs and reports progress")
    func writesDistinctPNGs() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let session = try await SimulatedRenderer(millisecondsPerFrame: 20)
            .makeSession(for: RenderRequest(jobID: "sim", blendPath: "/nonexistent.blend"))
        #expect(await session.sceneInfo == nil)
        let log = ProgressLog()
        var images: [[UInt8]] = []
        for frame in [1, 2, 3, 17] {
            let rendered = try await session.render(frame: frame, into: directory) { log.append($0) }
            #expect(rendered.frame == frame)
            #expect(rendered.path.hasSuffix(".png"))
            #expect(rendered.seconds >= 0.015)
            let bytes = try TestSupport.readBytes(rendered.path)
            try checkPNG(bytes)
            let size = try #require(PNG.size(of: bytes))
            #expect(size.width == 16 && size.height == 16)
            images.append(bytes)
        }
        #expect(Set(images).count == images.count, "every frame's image differs")
        #expect(log.all.filter { $0.frame == 17 }.last?.fraction == 1)
        await session.close()
        await #expect(throws: RenderError.self) {
            _ = try await session.render(frame: 4, into: directory) { _ in }
        }
    }

    @Test("close() makes an in-flight simulated render throw canceled")
    func closeCancels() async throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let session = try await SimulatedRenderer(millisecondsPerFrame: 2_000)
            .makeSession(for: RenderRequest(jobID: "sim", blendPath: "x.blend"))
        let render = Task { try await session.render(frame: 1, into: directory) { _ in } }
        try await Task.sleep(for: .milliseconds(100))
        await session.close()
        do {
            _ = try await render.value
            Issue.record("render should have thrown")
        } catch let error as RenderError {
            #expect(error.code == .canceled)
        }
    }

    /// Walks the chunks, checks every CRC, inflates the stored deflate blocks and checks Adler-32 and size.
    private func checkPNG(_ bytes: [UInt8]) throws {
        #expect(Array(bytes.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var offset = 8
        var types: [String] = []
        var idat: [UInt8] = []
        func u32(_ at: Int) -> UInt32 { bytes[at..<(at + 4)].reduce(0) { $0 << 8 | UInt32($1) } }
        while offset + 12 <= bytes.count {
            let length = Int(u32(offset))
            let type = Array(bytes[(offset + 4)..<(offset + 8)])
            let data = Array(bytes[(offset + 8)..<(offset + 8 + length)])
            #expect(PNG.crc32(type + data) == u32(offset + 8 + length))
            types.append(String(decoding: type, as: UTF8.self))
            if types.last == "IDAT" {
                idat += data
            }
            offset += 12 + length
        }
        #expect(types == ["IHDR", "IDAT", "IEND"])
        #expect(offset == bytes.count)
        #expect(idat.prefix(2) == [0x78, 0x01])
        var raw: [UInt8] = []
        var position = 2
        while true {
            let final = idat[position] & 1
            let length = Int(idat[position + 1]) | Int(idat[position + 2]) << 8
            raw += idat[(position + 5)..<(position + 5 + length)]
            position += 5 + length
            if final == 1 { break }
        }
        let adler = idat[position..<(position + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        #expect(adler == PNG.adler32(raw))
        #expect(raw.count == 16 * (16 * 3 + 1))
    }
}
