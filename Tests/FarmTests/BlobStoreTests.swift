import Foundation
import Mesh
import Testing

@testable import Farm

@Suite struct BlobStoreTests {
    let root = NSTemporaryDirectory() + "rex-blobs-\(UUID().uuidString)"

    @Test func storesByContentAddressAndDeduplicates() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try BlobStore(root: root)
        let file = root + "/in.bin"
        let bytes = Array((0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        _ = FileManager.default.createFile(atPath: file, contents: Data(bytes))
        let first = try store.put(fileAt: file)
        let second = try store.put(fileAt: file)
        #expect(first.hash == second.hash)
        #expect(first.size == 3_000_000)
        #expect(first.hash == BlobAddress.of(bytes))
        #expect(BlobAddress.format(first.hash) == .tree)
        #expect(store.has(first.hash))
        #expect(FileManager.default.contents(atPath: store.path(for: first.hash)) == Data(bytes))
        #expect(try BlobStore.hash(fileAt: file) == first.hash)
        store.remove(first.hash)
        #expect(!store.has(first.hash))
    }

    @Test func stagedBytesMustHaveTheirAddressInEitherFormat() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try BlobStore(root: root)
        let bytes: [UInt8] = Array(repeating: 7, count: 5000)
        for hash in [BlobAddress.of(bytes), BlobAddress.legacy(bytes)] {
            let staged = try store.stage(bytes: bytes, hash: hash)
            _ = try store.commit(staged: staged, hash: hash)
            #expect(store.has(hash))
            #expect(throws: FarmError.self) { try store.stage(bytes: bytes + [0], hash: hash) }
        }
        #expect(throws: FarmError.self) {
            try store.stage(bytes: bytes, hash: "t1" + String(repeating: "z", count: 64))
        }
    }

    @Test func missingSourceIsAClearError() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try BlobStore(root: root)
        #expect(throws: FarmError.self) { try store.put(fileAt: root + "/nope") }
    }
}

@Suite struct SceneFileTests {
    let dir = NSTemporaryDirectory() + "rex-scene-\(UUID().uuidString)"

    func write(_ name: String, _ bytes: [UInt8]) -> String {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    @Test func acceptsBlendAndCompressedBlend() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SceneFile.validate(write("a.blend", Array("BLENDER-v304RENDH".utf8)))
        try SceneFile.validate(write("b.blend", [0x1f, 0x8b] + Array(repeating: 0, count: 20)))
        try SceneFile.validate(write("c.blend", [0x28, 0xb5, 0x2f, 0xfd] + Array(repeating: 0, count: 20)))
    }

    @Test func rejectsWhatIsNotABlend() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cases: [(String, String)] = [
            (write("x.blend", Array("hello world, not blender".utf8)), "not a Blender file"),
            (write("y.blend", []), "is empty"),
            (write("z.blend", Array("BLEND".utf8)), "truncated"),
            (dir + "/missing.blend", "does not exist"),
            (write("t.txt", Array("hi\n".utf8)), "not a Blender file"),
            (dir, "is a folder"),
        ]
        for (path, fragment) in cases {
            #expect {
                try SceneFile.validate(path)
            } throws: { ($0 as? FarmError)?.message.contains(fragment) == true }
        }
    }

    @Test func outputFolderMustBeWritable() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SceneFile.prepareOutput(dir + "/out/deeper")
        #expect(FileManager.default.fileExists(atPath: dir + "/out/deeper"))
        let locked = dir + "/locked"
        try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: locked + "/file", contents: Data())
        // A path under a regular file can never be created, even by root.
        #expect(throws: FarmError.self) { try SceneFile.prepareOutput(locked + "/file/sub") }
    }

    @Test func jobNamesAreSafeFilePrefixes() {
        #expect(SceneFile.jobName(from: "/home/a/My Scene.blend") == "My_Scene")
        #expect(SceneFile.jobName(from: "shot-01.blend") == "shot-01")
        #expect(SceneFile.jobName(from: ".blend") == "job.blend")
    }
}
