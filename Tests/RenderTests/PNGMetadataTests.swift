import Foundation
import Testing

@testable import Render

@Suite("PNG metadata")
struct PNGMetadataTests {
    /// A PNG with a tEXt chunk after IHDR, as Blender writes its metadata.
    func png(file: String) -> [UInt8] {
        let plain = PNG.encode(width: 2, height: 1, rgb: [255, 0, 0, 0, 255, 0])
        let ihdrEnd = 8 + 12 + 13
        let text = Array("File".utf8) + [0] + Array(file.utf8)
        let type = Array("tEXt".utf8)
        let length = UInt32(text.count)
        var chunk = [
            UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF),
        ]
        let crc = PNG.crc32(type + text)
        chunk +=
            type + text + [UInt8(crc >> 24), UInt8((crc >> 16) & 0xFF), UInt8((crc >> 8) & 0xFF), UInt8(crc & 0xFF)]
        return Array(plain[0..<ihdrEnd]) + chunk + Array(plain[ihdrEnd...])
    }

    @Test func theFileEntryNamesTheUsersFileAndNothingElseChanges() throws {
        let farmCopy = png(file: "/data/work/j1/root/shot.blend")
        let renamed = try #require(PNG.replacingText(in: farmCopy, key: "File", with: "/home/ann/shot.blend"))
        #expect(renamed == png(file: "/home/ann/shot.blend"), "the same bytes Blender would write at home")
        #expect(PNG.size(of: renamed)! == (2, 1))
        #expect(PNG.replacingText(in: PNG.encode(width: 1, height: 1, rgb: [0, 0, 0]), key: "File", with: "x") == nil)
        #expect(PNG.replacingText(in: Array("not a png".utf8), key: "File", with: "x") == nil)
    }
}
