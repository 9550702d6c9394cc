import Foundation
import Synchronization
import Testing

@testable import Mesh

/// Wraps a store to count the chunks it serves (to prove several holders were used at once).
struct CountingSource: BlobSource {
    let inner: DirectoryBlobStore
    let counter: @Sendable () -> Void

    func size(_ hash: String) async throws -> UInt64? { try await inner.size(hash) }
    func read(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        counter()
        return try await inner.read(hash, offset: offset, length: length)
    }
}

/// Wraps a sink to run `afterWrite` after each chunk (used to kill the connection half-way).
struct HookedSink: BlobSink {
    let inner: DirectoryBlobStore
    let afterWrite: @Sendable (Int) async -> Void
    let writes = Counter()

    func partialSize(_ hash: String) async throws -> UInt64 { try await inner.partialSize(hash) }
    func readPartial(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        try await inner.readPartial(hash, offset: offset, length: length)
    }
    func writePartial(_ hash: String, offset: UInt64, bytes: [UInt8]) async throws {
        try await inner.writePartial(hash, offset: offset, bytes: bytes)
        await afterWrite(writes.next())
    }
    func finalize(_ hash: String, size: UInt64) async throws { try await inner.finalize(hash, size: size) }
}

final class Counter: Sendable {
    private let value = Mutex(0)
    func next() -> Int {
        value.withLock {
            $0 += 1
            return $0
        }
    }
    var current: Int { value.withLock { $0 } }
}

func temporaryDirectory() -> String {
    let dir = NSTemporaryDirectory() + "mesh-test-" + UUID().uuidString
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

@Suite(.serialized) struct BlobTransferTests {
    let blob = Sodium.randomBytes(6 * (1 << 20) + 12345)

    @Test func directoryStoreRejectsContentThatDoesNotMatchItsLegacyAddress() async throws {
        let store = try DirectoryBlobStore(root: temporaryDirectory())
        let hash = BlobAddress.legacy([1, 2, 3])
        try await store.writePartial(hash, offset: 0, bytes: [1, 2, 4])
        await #expect(throws: MeshError.self) { try await store.finalize(hash, size: 3) }
        #expect(try await store.size(hash) == nil)
        try await store.writePartial(hash, offset: 0, bytes: [1, 2, 3])
        try await store.finalize(hash, size: 3)
        #expect(try await store.read(hash, offset: 0, length: 10) == [1, 2, 3])
        #expect(store.path(hash).hasSuffix("/\(hash.prefix(2))/\(hash)"))
    }

    @Test(.timeLimit(.minutes(1)), arguments: [BlobAddress.Format.tree, .legacy])
    func fetchFromTwoHoldersAtOnce(format: BlobAddress.Format) async throws {
        let farm = TestFarm()
        let storeA = try DirectoryBlobStore(root: temporaryDirectory())
        let storeB = try DirectoryBlobStore(root: temporaryDirectory())
        let hash = try storeA.put(blob, format: format)
        try storeB.put(blob, format: format)
        #expect(BlobAddress.format(hash) == format)
        let servedA = Counter()
        let servedB = Counter()
        let a = farm.node("a", source: CountingSource(inner: storeA, counter: { _ = servedA.next() }))
        let b = farm.node("b", source: CountingSource(inner: storeB, counter: { _ = servedB.next() }))
        let c = farm.node("c")
        let sinkStore = try DirectoryBlobStore(root: temporaryDirectory())
        try await withRunning([a, b, c]) {
            #expect(await eventually { await c.connectedPeers().count == 2 })
            try await c.fetchBlob(hash, from: [a.nodeID, b.nodeID], into: sinkStore)
        }
        let fetched = try await sinkStore.read(hash, offset: 0, length: blob.count + 10)
        #expect(fetched == blob)
        #expect(c.counters[.blobChunksFetched] == 7)
        // Each holder hashed the blob once for the chunk list (7 reads) and served some chunks.
        #expect(servedA.current > 7)
        #expect(servedB.current > 7)
    }

    @Test(.timeLimit(.minutes(1)), arguments: [BlobAddress.Format.tree, .legacy])
    func transferSurvivesAConnectionKilledHalfWay(format: BlobAddress.Format) async throws {
        let farm = TestFarm()
        let storeA = try DirectoryBlobStore(root: temporaryDirectory())
        let hash = try storeA.put(blob, format: format)
        let a = farm.node("a", source: storeA)
        let c = farm.node("c")
        let killed = Counter()
        let sink = HookedSink(inner: try DirectoryBlobStore(root: temporaryDirectory())) { written in
            if written == 3, killed.next() == 1 { await c.disconnect(from: a.nodeID) }
        }
        try await withRunning([a, c]) {
            #expect(await eventually { await c.connectedPeers() == [a.nodeID] })
            try await c.fetchBlob(hash, from: [a.nodeID], into: sink)
        }
        #expect(killed.current >= 1)
        #expect(try await sink.inner.read(hash, offset: 0, length: blob.count) == blob)
        #expect(c.counters[.blobChunksFetched] == 7)
    }

    @Test(.timeLimit(.minutes(1)), arguments: [BlobAddress.Format.tree, .legacy])
    func secondFetchResumesFromVerifiedPartialData(format: BlobAddress.Format) async throws {
        let farm = TestFarm()
        let storeA = try DirectoryBlobStore(root: temporaryDirectory())
        let hash = try storeA.put(blob, format: format)
        let sinkStore = try DirectoryBlobStore(root: temporaryDirectory())
        // Three good chunks and a damaged fourth are already on disk from an earlier, interrupted fetch.
        let chunk = 1 << 20
        try await sinkStore.writePartial(hash, offset: 0, bytes: Array(blob[0..<3 * chunk]))
        var bad = Array(blob[3 * chunk..<4 * chunk])
        bad[100] ^= 0xff
        try await sinkStore.writePartial(hash, offset: UInt64(3 * chunk), bytes: bad)
        let a = farm.node("a", source: storeA)
        let c = farm.node("c")
        try await withRunning([a, c]) {
            #expect(await eventually { await c.connectedPeers() == [a.nodeID] })
            try await c.fetchBlob(hash, from: [a.nodeID], into: sinkStore)
        }
        #expect(c.counters[.blobChunksFetched] == 4)
        #expect(try await sinkStore.read(hash, offset: 0, length: blob.count) == blob)
    }

    @Test(.timeLimit(.minutes(1))) func missingBlobFailsWithASentence() async throws {
        let farm = TestFarm()
        let a = farm.node("a", source: try DirectoryBlobStore(root: temporaryDirectory()))
        let c = farm.node("c")
        try await withRunning([a, c]) {
            #expect(await eventually { await c.connectedPeers() == [a.nodeID] })
            await #expect(throws: MeshError.self) {
                try await c.fetchBlob(
                    BlobAddress.of([1]), from: [a.nodeID], into: try DirectoryBlobStore(root: temporaryDirectory()))
            }
        }
    }
}
