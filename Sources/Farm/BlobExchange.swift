import Foundation
import Logging
import Mesh

/// Blobs across peers: fetching what this node lacks, and making the second copy of a rendered frame durable on
/// another member before the frame is recorded.
struct BlobExchange: Sendable {
    let nodeID: String
    let blobs: BlobStore
    let mesh: MeshNode
    let roster: Roster
    /// Syncs shared by every copy arriving at once (and the worker's own images): one round of fsyncs for many.
    let sync: GroupSync
    let logger: Logger

    /// Makes sure blob `hash` is in this node's store, fetching it from `holders` (all at once) if not.
    func ensure(_ hash: String, holders: [String]) async throws {
        if blobs.has(hash) { return }
        let sources = holders.filter { $0 != nodeID }
        guard !sources.isEmpty else {
            throw FarmError(.notFound, "Blob \(hash.prefix(12))… is not on this node and no peer holds it.")
        }
        do {
            try await mesh.fetchBlob(hash, from: sources, into: blobs.directory)
        } catch {
            throw FarmError(
                .notFound, "Blob \(hash.prefix(12))… could not be fetched from its holders.", cause: error)
        }
    }

    /// Makes sure every blob in `hashes` is here, fetching the missing ones a few at a time (each from all its
    /// holders at once).
    func ensureAll(_ hashes: [String], holders: [String], parallel: Int = 4) async throws {
        let missing = hashes.filter { !blobs.has($0) }
        guard !missing.isEmpty else { return }
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = missing.makeIterator()
            for _ in 0..<parallel {
                guard let hash = next.next() else { break }
                group.addTask { try await ensure(hash, holders: holders) }
            }
            while try await group.next() != nil {
                guard let hash = next.next() else { continue }
                group.addTask { try await ensure(hash, holders: holders) }
            }
        }
    }

    /// Copies a frame's files (its image, then any extra outputs) to a second member until one holds them all
    /// durably, or the farm has no other member: a frame counts only once it is on two nodes (or on the only one),
    /// so a worker cut off from its peers waits for them.
    func copyUntilHeldTwice(_ files: [(hash: String, size: Int64)], submitter: String) async -> [String] {
        var delay = Duration.milliseconds(200)
        while true {
            let holders = await copyOnce(files, submitter: submitter)
            if holders.count >= 2 || Task.isCancelled { return holders }
            if !(await roster.hasOtherMembers()) { return holders }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }

    /// Pushes the files to one connected member (the submitter first) and returns every node that holds them all.
    /// Small files travel in the request; larger ones are fetched by the peer. Either way the peer answers only
    /// once the copy is synced to its disk.
    private func copyOnce(_ files: [(hash: String, size: Int64)], submitter: String) async -> [String] {
        // Only peers connected right now: a node that just died is skipped instead of waited for.
        let connected = Set(await mesh.connectedPeers())
        let alive = await roster.alivePeers().filter { connected.contains($0) }
        let candidates = ((alive.contains(submitter) ? [submitter] : []) + alive.filter { $0 != submitter }.sorted())
            .filter { $0 != nodeID }
        guard !candidates.isEmpty else { return [nodeID] }
        var requests: [PeerRequest] = []
        for (hash, size) in files {
            if size <= Int64(PeerRequest.inlineBlobLimit), let bytes = try? await read(hash) {
                requests.append(.store(hash: hash, bytes: bytes))
            } else {
                requests.append(.replicate(hash: hash, from: nodeID))
            }
        }
        for peer in candidates {
            do {
                for request in requests {
                    _ = try await mesh.request(to: peer, request.encoded(), timeout: .seconds(30))
                }
                return [nodeID, peer]
            } catch {
                logger.warning(
                    "could not copy an image to a peer", metadata: ["farm/peer": "\(peer)", "error": "\(error)"])
            }
        }
        return [nodeID]
    }

    private func read(_ hash: String) async throws -> [UInt8] {
        let path = blobs.path(for: hash)
        return try await Blocking.run { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }
    }

    /// The receiving side of `store`: keep the bytes, durably (file synced before it takes its name, then the
    /// folder), before answering.
    func receive(_ hash: String, bytes: [UInt8]) async throws {
        let blobs = self.blobs
        guard !blobs.has(hash) else {
            // Held already (an identical image of another frame or job): fresh again, so retention, which may have
            // just seen it unneeded, leaves it while the completion naming this node is on its way.
            blobs.touch(hash)
            return await makeDurable(hash)
        }
        let staged = try await Blocking.run { try blobs.stage(bytes: bytes, hash: hash) }
        await sync.flush(staged)
        let final = try await Blocking.run { try blobs.commit(staged: staged, hash: hash) }
        await sync.flush((final as NSString).deletingLastPathComponent)
    }

    /// The receiving side of `replicate`: fetch the blob from `holder` and make it durable.
    func replicate(_ hash: String, from holder: String) async throws {
        if blobs.has(hash) { blobs.touch(hash) }
        try await ensure(hash, holders: [holder])
        await makeDurable(hash)
    }

    /// Syncs a stored blob's file and its folder (a fetched blob is renamed into place without a sync).
    private func makeDurable(_ hash: String) async {
        let path = blobs.path(for: hash)
        await sync.flush([path, (path as NSString).deletingLastPathComponent])
    }
}
