import Foundation
import Testing

@testable import Mesh

/// Replays the committed libFuzzer corpus (`fuzz/corpus/<decoder>/`) through the decoders on every `make test`.
@Suite struct FuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fuzz/corpus")

    static func files(_ decoder: String) -> [URL] {
        let dir = corpus.appendingPathComponent(decoder)
        return ((try? FileManager.default.contentsOfDirectory(at: dir, includingPropertiesForKeys: nil)) ?? [])
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    @Test func beaconCorpusReplaysWithoutCrashing() throws {
        let files = Self.files("beacon")
        #expect(files.count >= 5)
        var opened = 0
        for file in files {
            let bytes = Array(try Data(contentsOf: file))
            FuzzTargets.beacon(bytes)
            if case .beacon = FuzzTargets.beaconCodec.open(bytes) { opened += 1 }
        }
        #expect(opened >= 1, "the corpus should hold at least one valid beacon")
    }

    @Test func framesCorpusReplaysWithoutCrashing() throws {
        let files = Self.files("frames")
        #expect(files.count >= 5)
        for file in files { FuzzTargets.frames(Array(try Data(contentsOf: file))) }
    }

    /// `MESH_WRITE_CORPUS=1 swift test --filter writeSeedCorpus` regenerates the hand-made seeds.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["MESH_WRITE_CORPUS"] == "1"))
    func writeSeedCorpus() throws {
        func write(_ decoder: String, _ name: String, _ bytes: [UInt8]) throws {
            let dir = Self.corpus.appendingPathComponent(decoder)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            try Data(bytes).write(to: dir.appendingPathComponent("seed-" + name))
        }
        let codec = FuzzTargets.beaconCodec
        let id = try NodeIdentity.loadOrCreate(at: NSTemporaryDirectory() + "/fuzz-seed-\(UUID().uuidString)")
        let beacon = Beacon(
            publicKey: id.publicKey, instanceID: 1, sequence: 1, timeMillis: 1_700_000_000_000, tcpPort: 7000,
            name: "seed", status: [1, 4])
        try write("beacon", "valid", codec.seal(beacon))
        try write("beacon", "body", Array(codec.seal(beacon).dropFirst(17 + 24).dropLast(16)))
        try write("beacon", "other-farm", BeaconCodec(farmKey: .generate()).seal(beacon))
        var flipped = codec.seal(beacon)
        flipped[50] ^= 1
        try write("beacon", "flipped", flipped)
        try write("beacon", "header-only", Array(codec.seal(beacon).prefix(17)))
        var body = WireWriter()
        body.raw(id.publicKey)
        body.u64(1)
        body.u64(2)
        body.u64(3)
        body.u16(4)
        body.short(Array("n".utf8))
        body.short([9])
        try write("beacon", "plain-body", body.bytes)
        for (i, message) in MessageCodecTests.samples.enumerated() {
            let encoded = MessageCodec.encode(message)
            var frame = WireWriter()
            frame.long(encoded)
            try write("frames", String(format: "msg-%02d", i), frame.bytes)
        }
        try write("frames", "huge-prefix", [0xff, 0xff, 0xff, 0xff, 1, 2])
        try write(
            "frames", "two-frames",
            [0, 0, 0, 10] + MessageCodec.encode(.ping(1)) + [0, 0, 0, 10] + MessageCodec.encode(.pong(1)))
    }
}
