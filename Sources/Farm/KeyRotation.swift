import Election
import Foundation
import Ledger
import Logging
import Mesh
import Synchronization

/// Taking trust back: key epochs (`rexnode rotate-key`), revoked machines (`rexnode revoke`), and handing the
/// current key to a member that was away during a rotation. See docs/architecture.md, "Key rotation".
///
/// The replicated ledger is the source of truth (every epoch's key and every revoked node, from `FarmKey` entries);
/// the data folder keeps the current key in `farm.key` (what `rexnode token` prints) and every epoch in
/// `farm.keyring`, both mode 0600, written atomically.
final class KeyRotation: Sendable {
    let nodeID: String
    /// This node's `--name` (so `revoke` of itself by name says why it is refused).
    let name: String
    let data: DataDirectory
    let mesh: MeshNode
    let raft: RaftNode
    let ledger: LedgerStore
    let commandLog: any CommandLog
    let logger: Logger
    /// Current members' node ids, refreshed by `watchMembers` (read from event loops by the mesh).
    let members = Mutex<Set<String>>([])
    /// Revoked node ids, as the ledger has applied them (refreshed with `members`).
    private let revoked = Mutex<Set<String>>([])
    /// Serialises ring changes (apply and hand-over may race).
    private let changing = Mutex<Void>(())

    init(
        nodeID: String, name: String, data: DataDirectory, mesh: MeshNode, raft: RaftNode, ledger: LedgerStore,
        commandLog: any CommandLog, logger: Logger
    ) {
        self.nodeID = nodeID
        self.name = name
        self.data = data
        self.mesh = mesh
        self.raft = raft
        self.ledger = ledger
        self.commandLog = commandLog
        self.logger = logger
    }

    /// The join token of the current epoch.
    var token: String { mesh.keyRing.current.token }

    // MARK: Start

    /// Loads the ring from the data folder, catches up with epochs the ledger applied but the folder missed (a crash
    /// between the two), and hands the mesh the ring, the membership test and the revoked identities.
    func start() async throws {
        var ring = FarmKeyRing.load(from: data.farmKeyRing, current: mesh.keyRing.current)
        for row in try ledger.farmKeys() where row.epoch > ring.epoch {
            guard let bytes = [UInt8](hexString: row.key), let key = try? FarmKey(bytes: bytes) else { continue }
            ring = ring.rotated(to: key, epoch: row.epoch)
        }
        try persist(ring)
        mesh.setKeyRing(ring)
        mesh.setMembership { [self] key in isMember(String(key.hexString.prefix(16))) }
        let mesh = self.mesh
        await mesh.setKeyHandOver { [self] laggard in
            // Only a node that applied its current epoch from the log hands it over: one that was handed the key
            // itself may not have applied the removals that came with it yet (it would hand the revoked the key).
            guard isMember(laggard.nodeID), (try? ledger.farmKeys().last?.epoch) == mesh.keyRing.epoch else {
                return nil
            }
            let ring = mesh.keyRing
            var plain = WireWriter()
            plain.u32(ring.epoch)
            plain.raw(ring.current.bytes)
            return NodeIdentity.seal(plain.bytes, to: laggard.publicKey).map {
                PeerRequest.farmKey(sealed: $0).encoded()
            }
        }
        await refreshTrust()
    }

    /// After a snapshot replaced the ledger: switch to the latest farm key it holds (its entry never applied here)
    /// and take the membership and revocations it brought.
    func catchUp() async {
        if let last = try? ledger.farmKeys().last, last.epoch > mesh.keyRing.epoch {
            await apply(FarmKeyChange(epoch: last.epoch, key: last.key))
        }
        await refreshTrust()
    }

    func isMember(_ nodeID: String) -> Bool { members.withLock { $0.contains(nodeID) } }

    func isRevoked(_ nodeID: String) -> Bool { revoked.withLock { $0.contains(nodeID) } }

    /// Keeps `members` current (the mesh hears old epochs, and hands keys over, to members only).
    func watchMembers() async {
        while !Task.isCancelled {
            await refreshTrust()
            try? await Task.sleep(for: .milliseconds(250))
        }
    }

    /// Members are the Raft membership minus revoked identities. A revoked identity is shut out of the mesh once it
    /// is no longer a member: while it still is, its removal must be able to commit (in a farm of two it needs its
    /// acknowledgement), and it is refused every key hand-over and every peer request meanwhile.
    func refreshTrust() async {
        guard let status = await raft.status, let revoked = try? ledger.revokedNodes() else { return }
        members.withLock { $0 = status.members.subtracting(revoked) }
        self.revoked.withLock { $0 = revoked }
        await mesh.setRevoked(revoked.subtracting(status.members))
        // A member's epochs come from its log only, once the log has confirmed the key it holds.
        if !status.members.isEmpty, keyConfirmed() { mesh.stopLearningEpochs() }
    }

    /// Whether the ledger vouches for the key this node holds: it is the last epoch's key, or the farm never
    /// rotated and this node holds its first key. A key given by `join --token` on a folder that missed rotations is
    /// not vouched for until the log catches up, so until then the node still learns the farm's epoch from beacons.
    private func keyConfirmed() -> Bool {
        let mark = data.farmKeyUnconfirmed
        guard FileManager.default.fileExists(atPath: mark) else { return true }
        guard let last = try? ledger.farmKeys().last, last.key == mesh.keyRing.current.bytes.hexString else {
            return false
        }
        try? FileManager.default.removeItem(atPath: mark)
        logger.notice(
            "the ledger vouches for the farm key given with --token", metadata: ["farm/epoch": "\(last.epoch)"])
        return true
    }

    private func persist(_ ring: FarmKeyRing) throws {
        do {
            // The ring first: a crash between the two leaves farm.key on the old epoch, which the ring still holds.
            try ring.save(to: data.farmKeyRing)
            try ring.current.save(to: data.farmKey)
        } catch {
            throw FarmError(.io, "Cannot save the new farm key in \(data.root): \(error.message)", cause: error)
        }
    }

    /// Switches to `key` at `epoch` if it is newer than this node's: saved first, then the mesh uses it.
    private func switchTo(_ key: FarmKey, epoch: UInt32) throws -> Bool {
        try changing.withLock { _ in
            let ring = mesh.keyRing
            guard epoch > ring.epoch else { return false }
            let next = ring.rotated(to: key, epoch: epoch)
            try persist(next)
            mesh.setKeyRing(next)
            return true
        }
    }

    // MARK: Applying

    /// A committed `FarmKey` entry, applied here: every member switches at the same log index.
    func apply(_ change: FarmKeyChange) async {
        guard let bytes = [UInt8](hexString: change.key), let key = try? FarmKey(bytes: bytes) else { return }
        var failures = FailureRun(
            first: "cannot save the new farm key; retrying", again: "still cannot save the new farm key",
            back: "saved the new farm key")
        while !Task.isCancelled {
            do {
                if try switchTo(key, epoch: change.epoch) {
                    logger.notice(
                        "switched to a new farm key",
                        metadata: ["farm/epoch": "\(change.epoch)", "farm/revoked": "\(change.revoked)"])
                    // A peer that connected under the old key without being a member keeps no connection.
                    if !members.withLock({ $0.isEmpty }) {
                        await mesh.closeConnections { [self] id in isMember(id) }
                    }
                }
                failures.recovered(logger: logger)
                break
            } catch {
                failures.failed(error, logger: logger)
                try? await Task.sleep(for: failures.backoff(minimum: .milliseconds(100), maximum: .seconds(5)))
            }
        }
        if !change.revoked.isEmpty { await refreshTrust() }
    }

    /// A member handed this node the current key (it was away during a rotation): accepted from a member of this
    /// node's own view of the farm, for a newer epoch, when it opens with this node's identity.
    func receive(sealed: [UInt8], from peer: String) throws {
        guard members.withLock({ $0.contains(peer) }) else {
            throw FarmError(.badInput, "Only a member hands this node a farm key.")
        }
        guard let plain = mesh.identity.openSealed(sealed), plain.count == 4 + FarmKey.byteCount else {
            throw FarmError(.badInput, "The farm key handed over does not open with this node's identity.")
        }
        var reader = WireReader(plain)
        guard let epoch = reader.u32(), let bytes = reader.raw(FarmKey.byteCount), let key = try? FarmKey(bytes: bytes)
        else { throw FarmError(.badInput, "The farm key handed over is malformed.") }
        if try switchTo(key, epoch: epoch) {
            logger.notice(
                "received the current farm key from a member (this node missed a rotation)",
                metadata: ["farm/epoch": "\(epoch)", "mesh/peer": "\(peer)"])
        }
    }

    // MARK: Commands

    /// `rexnode rotate-key` (and the second half of `revoke`): a new key, committed through the log; answers once it
    /// is applied here, with the new token.
    func rotate(revoking: [String] = []) async throws -> [String: JSONValue] {
        let key = FarmKey.generate()
        // The log's epoch, never a beacon's (anyone holding the key can claim any epoch in a header).
        let last = (try ledger.farmKeys().last?.epoch) ?? 0
        guard last < UInt32.max - 1 else {
            throw FarmError(.failed, "The farm key is at its last epoch (\(last)); it cannot be rotated again.")
        }
        let epoch = last + 1
        let change = FarmKeyChange(epoch: epoch, key: key.bytes.hexString, revoked: revoking)
        try await proposeUntilApplied(.farmKey(change), what: "the new key")
        _ = try switchTo(key, epoch: epoch)
        logger.notice("rotated the farm key", metadata: ["farm/epoch": "\(epoch)", "farm/revoked": "\(revoking)"])
        return ["epoch": .int(Int64(epoch)), "token": .string(key.token), "revoked": .from(revoking)]
    }

    /// `rexnode revoke NODE` (a node id, a unique id prefix, or a member's name), three entries in this order:
    /// 1. `RevokeNodes`: the identity is denied for good on every node (no leader adds it back, no member hands it a
    ///    key or answers its requests);
    /// 2. its removal from the membership (the leader's too: it steps down, and every node shuts it out);
    /// 3. the key rotation, proposed once it is no longer a member, so the new key is never replicated to it.
    /// Each step is idempotent: a revoke that stopped halfway is run again with the node's full id.
    func revoke(_ spec: String) async throws -> [String: JSONValue] {
        guard let status = await raft.status else {
            throw FarmError(.notRunning, "Raft has not started on this node yet; try again in a moment.")
        }
        let target = try await resolve(spec, members: status.members)
        guard target != nodeID else {
            throw FarmError(.badInput, "A node cannot revoke itself; run `rexnode revoke` on another member.")
        }
        try await proposeUntilApplied(.revokeNodes(RevokeNodes(nodes: [target])), what: "the revocation")
        logger.warning("revoked a machine: its identity is denied", metadata: ["farm/revoked": "\(target)"])
        let deadline = ContinuousClock.now + .seconds(60)
        while let now = await raft.status, now.members.contains(target) {
            guard ContinuousClock.now < deadline else {
                throw FarmError(.notRunning, "The farm did not remove \(target) within 60 s; try again.")
            }
            if now.role == .leader {
                _ = try? await withTimeout(.seconds(5)) { [raft] in try await raft.removeMember(target) }
            } else if let leader = now.leader {
                _ = try? await mesh.request(to: leader, PeerRequest.leave(node: target).encoded(), timeout: .seconds(5))
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        logger.warning("revoked a machine: removed from the farm", metadata: ["farm/revoked": "\(target)"])
        var answer = try await rotate(revoking: [target])
        answer["node"] = .string(target)
        return answer
    }

    /// Proposes one entry and waits until it is applied here, retrying while there is no leader for a moment (a
    /// revoked leader stepping down) for up to 30 s.
    private func proposeUntilApplied(_ command: LedgerCommand, what: String) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        var outcome: ApplyOutcome?
        while outcome == nil {
            do {
                outcome = try await commandLog.propose([command]).first
            } catch {
                guard ContinuousClock.now < deadline else {
                    throw FarmError(.notRunning, "The farm did not commit \(what) within 30 s: \(error).", cause: error)
                }
                try await Task.sleep(for: .milliseconds(300))
            }
        }
        if case .ignored(let why) = outcome {
            throw FarmError(
                .failed, "\(what.prefix(1).uppercased() + what.dropFirst()) was not applied (\(why)); run it again.")
        }
    }

    /// A member's node id from an id, a unique id prefix or a name (as `rexnode peers` shows them).
    private func resolve(_ spec: String, members: Set<String>) async throws -> String {
        if members.contains(spec) { return spec }
        if spec == name || (spec.count >= 4 && nodeID.hasPrefix(spec)) { return nodeID }
        let byPrefix = members.filter { $0.hasPrefix(spec) }
        if byPrefix.count == 1, let id = byPrefix.first { return id }
        let byName = await mesh.peers().filter { $0.name == spec && members.contains($0.nodeID) }.map(\.nodeID)
        if Set(byName).count == 1, let id = byName.first { return id }
        if byName.count > 1 || byPrefix.count > 1 {
            throw FarmError(.badInput, "'\(spec)' names more than one member; use its id from `rexnode peers`.")
        }
        // A full node id that is no longer a member: a revoke whose rotation did not go through can be run again.
        if spec.count == 16, spec.allSatisfy(\.isHexDigit), spec != nodeID { return spec }
        throw FarmError(.notFound, "No member of this farm is called '\(spec)'; see `rexnode peers`.")
    }
}
