import Foundation
import Synchronization
import Testing

@testable import Mesh

/// The bytes `(i * 31 + 7) mod 256`, as the pinned addresses below were computed (with Python's hashlib.blake2b,
/// an implementation independent of libsodium).
func pattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) } }

func u64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64($0))) } }

@Suite struct BlobTreeAddressTests {
    let mib = 1 << 20

    @Test func pinnedAddressesOfKnownInputs() {
        #expect(BlobAddress.of([]) == "t169e27fad4427c55efc5e874863c96438de55e6729b6ecddad574e96046aa8aaa")
        #expect(
            BlobAddress.of(Array("abc".utf8)) == "t1c534f42e283308a070d50227292189e4da99f74416fc6bc4721d0012b1af2dcf")
        let pinned: [(Int, String)] = [
            (mib, "t10dafc473922011e20768453cc148ef1ce833163732b8bf36292af3f4a55eb738"),
            (2 * mib, "t1214fa92ebc2f20932b62bc62afcbf46b0a049d4a3ceb475f35dd7a1e3f7af328"),
            (3 * mib + 5, "t1defd5ef757c31a603c62b76529578130641b1c3c53bbc175f2893015f1f42b7b"),
            (5 * mib, "t1703a9c5d5d98d5823d0166bf9f062982eda7fcaf04d7de005c4d09beb3694ccb"),
            (7 * mib - 1, "t19bcef051ec460c35c91b0f16b107ff878d8d5a74d10e08c2cb3b84a316aff101"),
        ]
        for (size, address) in pinned { #expect(BlobAddress.of(pattern(size)) == address, "size \(size)") }
    }

    @Test func theTreeIsBuiltAsDocumented() {
        func h(_ bytes: [UInt8]) -> [UInt8] { Sodium.blake2b(bytes) }
        func leaf(_ i: Int, _ chunk: ArraySlice<UInt8>) -> [UInt8] {
            h([0x00] + u64(UInt64(i)) + Array(chunk) + u64(UInt64(chunk.count)))
        }
        func parent(_ l: [UInt8], _ r: [UInt8]) -> [UInt8] { h([0x01] + l + r) }
        func root(_ size: Int, _ top: [UInt8]) -> String { "t1" + h([0x02] + u64(UInt64(size)) + top).hexString }
        // Empty: one empty leaf.
        #expect(BlobAddress.of([]) == root(0, leaf(0, [])))
        // One chunk, short and exact.
        let one = pattern(1000)
        #expect(BlobAddress.of(one) == root(1000, leaf(0, one[...])))
        let exact = pattern(mib)
        #expect(BlobAddress.of(exact) == root(mib, leaf(0, exact[...])))
        // Exact multiple: two full leaves under one parent.
        let two = pattern(2 * mib)
        #expect(BlobAddress.of(two) == root(2 * mib, parent(leaf(0, two[0..<mib]), leaf(1, two[mib...]))))
        // Odd leaf counts: the last node rises unchanged; five leaves are ((0 1)(2 3)) 4.
        let three = pattern(2 * mib + 5)
        let l3 = (0..<3).map { leaf($0, three[($0 * mib)..<min(three.count, ($0 + 1) * mib)]) }
        #expect(BlobAddress.of(three) == root(three.count, parent(parent(l3[0], l3[1]), l3[2])))
        let five = pattern(4 * mib + 1)
        let l5 = (0..<5).map { leaf($0, five[($0 * mib)..<min(five.count, ($0 + 1) * mib)]) }
        let top5 = parent(parent(parent(l5[0], l5[1]), parent(l5[2], l5[3])), l5[4])
        #expect(BlobAddress.of(five) == root(five.count, top5))
        #expect(BlobTree.leafCount(size: 0) == 1 && BlobTree.leafCount(size: UInt64(4 * mib + 1)) == 5)
    }

    @Test func streamingInAnyPiecesGivesTheSameAddressAndLeaves() {
        let bytes = pattern(3 * mib + 777)
        let hasher = BlobTreeHasher()
        var offset = 0
        for step in [1, 999, mib - 1000, 1, mib, 3, mib + 10, 10_000_000] where offset < bytes.count {
            let end = min(bytes.count, offset + step)
            hasher.update(Array(bytes[offset..<end]))
            offset = end
        }
        let (address, leaves) = hasher.finish()
        #expect(address == BlobAddress.of(bytes))
        #expect(leaves.count == 4)
        #expect(leaves[3] == BlobTree.leaf(index: 3, chunk: Array(bytes[(3 * mib)...])))
        let digest = try! BlobAddress.digest(address).bytes
        #expect(BlobTree.verify(leaves: leaves, size: UInt64(bytes.count), root: digest))
        // A leaf swapped, a leaf changed, a size that lies or a leaf missing: no longer the address.
        #expect(
            !BlobTree.verify(leaves: [leaves[1], leaves[0]] + leaves[2...], size: UInt64(bytes.count), root: digest))
        var changed = leaves
        changed[2][0] ^= 1
        #expect(!BlobTree.verify(leaves: changed, size: UInt64(bytes.count), root: digest))
        #expect(!BlobTree.verify(leaves: leaves, size: UInt64(bytes.count - 1), root: digest))
        #expect(!BlobTree.verify(leaves: Array(leaves.dropLast()), size: UInt64(3 * mib), root: digest))
        // The same chunk at another index has another leaf.
        #expect(BlobTree.leaf(index: 0, chunk: [1, 2]) != BlobTree.leaf(index: 1, chunk: [1, 2]))
    }

    @Test func bothFormatsAreValidAndNothingElseIs() throws {
        let legacy = BlobAddress.legacy([1, 2, 3])
        let tree = BlobAddress.of([1, 2, 3])
        #expect(legacy.count == 64 && legacy == Sodium.blake2b([1, 2, 3] as [UInt8]).hexString)
        #expect(tree.count == 66 && tree.hasPrefix("t1"))
        #expect(BlobAddress.format(legacy) == .legacy && BlobAddress.format(tree) == .tree)
        for bad in ["", "t1", "t2" + legacy, "T1" + legacy, "t1" + legacy.uppercased(), legacy + "0", "../" + legacy] {
            #expect(!BlobAddress.isValid(bad), "\(bad)")
        }
        let (format, digest) = try BlobAddress.digest(tree)
        #expect(format == .tree && BlobAddress.string(.tree, digest) == tree)
        #expect(BlobAddress.shard(tree) == tree.dropFirst(2).prefix(2))
        let store = try DirectoryBlobStore(root: temporaryDirectory())
        #expect(store.path(tree).hasSuffix("/\(tree.dropFirst(2).prefix(2))/\(tree)"))
        #expect(store.path("t1../../../etc/passwd").hasSuffix("/partial/.not-an-address"))
    }

    @Test func treeMessagesRoundTripAndALeafCountThatIsNotTheBlobsIsRefused() throws {
        let root = [UInt8](repeating: 9, count: 32)
        let leaves = (0..<3).map { [UInt8](repeating: UInt8($0), count: 32) }
        let info = MeshMessage.BlobInfo(
            hash: root, size: 2 * UInt64(mib) + 1, chunkSize: UInt32(mib), chunkHashes: leaves)
        for message: MeshMessage in [
            .treeQuery(id: 1, root: root), .treeInfo(id: 2, info: nil), .treeInfo(id: 3, info: info),
            .treeRead(id: 4, root: root, offset: UInt64(mib), length: UInt32(mib)),
        ] {
            #expect(try MessageCodec.decode(MessageCodec.encode(message)) == message)
        }
        var wrong = info
        wrong.size = 3 * UInt64(mib) + 1
        #expect(throws: MeshError.self) { try MessageCodec.decode(MessageCodec.encode(.treeInfo(id: 5, info: wrong))) }
        #expect(throws: MeshError.self) {
            try MessageCodec.decode(
                MessageCodec.encode(.treeRead(id: 6, root: root, offset: 0, length: UInt32(mib + 1))))
        }
    }

    @Test func aTreeBlobIsFinalizedWithoutRehashingButNotWhenShort() async throws {
        let store = try DirectoryBlobStore(root: temporaryDirectory())
        let hash = BlobAddress.of([1, 2, 3])
        try await store.writePartial(hash, offset: 0, bytes: [1, 2])
        await #expect(throws: MeshError.self) { try await store.finalize(hash, size: 3) }
        #expect(try await store.size(hash) == nil)
        try await store.writePartial(hash, offset: 0, bytes: [1, 2, 3])
        try await store.finalize(hash, size: 3)
        #expect(try await store.read(hash, offset: 0, length: 10) == [1, 2, 3])
        // A second fetch of the same blob that finishes later leaves the first one's copy alone.
        try await store.writePartial(hash, offset: 0, bytes: [1, 2, 3])
        try await store.finalize(hash, size: 3)
        #expect(try await store.partialSize(hash) == 0)
        // The empty blob has nothing to fetch and still becomes a file.
        let empty = BlobAddress.of([])
        try await store.finalize(empty, size: 0)
        #expect(try await store.size(empty) == 0)
    }
}

/// Serves a store faithfully for the chunk list (the first read of each offset), then corrupts the chunk at
/// `corruptOffset` on the next `corruptions` reads of it: a holder that lies after answering honestly.
final class LyingSource: BlobSource {
    let inner: DirectoryBlobStore
    let corruptOffset: UInt64
    let corruptions: Int
    private let reads = Mutex<[UInt64: Int]>([:])
    let lies = Counter()

    init(inner: DirectoryBlobStore, corruptOffset: UInt64, corruptions: Int) {
        self.inner = inner
        self.corruptOffset = corruptOffset
        self.corruptions = corruptions
    }

    func size(_ hash: String) async throws -> UInt64? { try await inner.size(hash) }
    func read(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        var bytes = try await inner.read(hash, offset: offset, length: length)
        let n = reads.withLock { r -> Int in
            r[offset, default: 0] += 1
            return r[offset]!
        }
        if offset == corruptOffset, n >= 2, n - 1 <= corruptions, !bytes.isEmpty {
            bytes[bytes.count / 2] ^= 0x5a
            _ = lies.next()
        }
        return bytes
    }
}

/// Records every chunk written (offset and whether it was the original bytes).
final class RecordingSink: BlobSink {
    let inner: DirectoryBlobStore
    let original: [UInt8]
    let written = Mutex<[(UInt64, Bool)]>([])

    init(inner: DirectoryBlobStore, original: [UInt8]) {
        self.inner = inner
        self.original = original
    }

    func partialSize(_ hash: String) async throws -> UInt64 { try await inner.partialSize(hash) }
    func readPartial(_ hash: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        try await inner.readPartial(hash, offset: offset, length: length)
    }
    func writePartial(_ hash: String, offset: UInt64, bytes: [UInt8]) async throws {
        let good = Array(original[Int(offset)..<(Int(offset) + bytes.count)]) == bytes
        written.withLock { $0.append((offset, good)) }
        try await inner.writePartial(hash, offset: offset, bytes: bytes)
    }
    func finalize(_ hash: String, size: UInt64) async throws { try await inner.finalize(hash, size: size) }
}

@Suite(.serialized) struct BlobTreeTransferTests {
    let blob = Sodium.randomBytes(6 * (1 << 20) + 12345)
    let mib = 1 << 20

    @Test(.timeLimit(.minutes(1)), arguments: [BlobAddress.Format.tree, .legacy])
    func aCorruptedChunkIsRejectedAtThatChunkAndFetchedAgain(format: BlobAddress.Format) async throws {
        let farm = TestFarm()
        let storeA = try DirectoryBlobStore(root: temporaryDirectory())
        let hash = try storeA.put(blob, format: format)
        let liar = LyingSource(inner: storeA, corruptOffset: UInt64(3 * mib), corruptions: 1)
        let a = farm.node("a", source: liar)
        let c = farm.node("c")
        let sink = RecordingSink(inner: try DirectoryBlobStore(root: temporaryDirectory()), original: blob)
        try await withRunning([a, c]) {
            #expect(await eventually { await c.connectedPeers() == [a.nodeID] })
            try await c.fetchBlob(hash, from: [a.nodeID], into: sink)
        }
        #expect(liar.lies.current == 1)
        #expect(c.counters[.blobChunksRejected] == 1)
        #expect(c.counters[.blobChunksFetched] == 7)
        // The bad bytes never reached the sink: seven writes, every one the original chunk.
        let writes = sink.written.withLock { $0 }
        #expect(writes.count == 7 && writes.allSatisfy(\.1))
        #expect(try await sink.inner.read(hash, offset: 0, length: blob.count + 1) == blob)
    }

    @Test(.timeLimit(.minutes(1))) func aHolderThatKeepsLyingFailsTheFetchAndAnHonestOneFinishesIt() async throws {
        let farm = TestFarm()
        let storeA = try DirectoryBlobStore(root: temporaryDirectory())
        let storeB = try DirectoryBlobStore(root: temporaryDirectory())
        let hash = try storeA.put(blob)
        try storeB.put(blob)
        let liar = LyingSource(inner: storeA, corruptOffset: UInt64(2 * mib), corruptions: .max)
        let a = farm.node("a", source: liar)
        let b = farm.node("b", source: storeB)
        let c = farm.node("c")
        let sinkStore = try DirectoryBlobStore(root: temporaryDirectory())
        try await withRunning([a, b, c]) {
            #expect(await eventually { await c.connectedPeers().count == 2 })
            await #expect(throws: MeshError.self) { try await c.fetchBlob(hash, from: [a.nodeID], into: sinkStore) }
            #expect(try await sinkStore.size(hash) == nil)
            #expect(c.counters[.blobChunksFetched] == 6)
            #expect(c.counters[.blobChunksRejected] >= 2)
            // Resume from the honest holder: the six chunks on disk are checked again, only the rejected one moves.
            try await c.fetchBlob(hash, from: [b.nodeID], into: sinkStore)
        }
        #expect(c.counters[.blobChunksFetched] == 7)
        #expect(try await sinkStore.read(hash, offset: 0, length: blob.count + 1) == blob)
    }

    @Test(.timeLimit(.minutes(1))) func aHolderWhoseCopyIsDamagedDoesNotServeItAndTheOtherHolderDoes() async throws {
        let farm = TestFarm()
        let storeA = try DirectoryBlobStore(root: temporaryDirectory())
        let storeB = try DirectoryBlobStore(root: temporaryDirectory())
        let hash = try storeA.put(blob)
        try storeB.put(blob)
        var damaged = blob
        damaged[5 * mib + 1] ^= 1
        try Data(damaged).write(to: URL(fileURLWithPath: storeA.path(hash)))
        let servedA = Counter()
        let a = farm.node("a", source: CountingSource(inner: storeA, counter: { _ = servedA.next() }))
        let b = farm.node("b", source: storeB)
        let c = farm.node("c")
        let sinkStore = try DirectoryBlobStore(root: temporaryDirectory())
        try await withRunning([a, b, c]) {
            #expect(await eventually { await c.connectedPeers().count == 2 })
            try await c.fetchBlob(hash, from: [a.nodeID, b.nodeID], into: sinkStore)
        }
        #expect(try await sinkStore.read(hash, offset: 0, length: blob.count + 1) == blob)
        // A read its own copy: seven chunks hashed for the leaf list, which did not give the address; nothing served.
        #expect(servedA.current == 7)
        #expect(c.counters[.blobChunksFetched] == 7)
    }
}
