import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// The mesh as the daemon sees it: discovery, authenticated peer connections, messages, requests and
/// blob transfer behind one actor, started with `run()` and stopped by cancelling it.
public actor MeshNode {
    /// Everything configurable about a node's mesh layer, with defaults that suit a LAN farm.
    public struct Settings: Sendable {
        public var listenHost = "127.0.0.1"
        /// 0 picks any free port; the chosen one is announced in beacons.
        public var listenPort = 0
        public var discovery = DiscoverySettings()
        public var name = ProcessInfo.processInfo.hostName
        /// Largest frame accepted on a connection (must exceed a 1 MiB blob chunk plus headers).
        public var maxFrameBytes = 2 << 20
        /// Unauthenticated connections allowed at once; more are closed on accept (a flood cannot grow memory).
        public var maxPendingHandshakes = 128
        public var handshakeTimeout: Duration = .seconds(5)
        public var requestTimeout: Duration = .seconds(10)
        public var reconnectMin: Duration = .milliseconds(100)
        public var reconnectMax: Duration = .seconds(5)
        /// The longest wait between dials of a peer that discovery still sees alive. Short, because a missing
        /// connection between two followers can leave too few links for an election when the leader fails
        /// (seen in the fault suite: 2 s after a burst of 50 % loss, four followers could not elect).
        public var redialMax: Duration = .seconds(1)
        /// Chunk requests kept in flight per holder during a blob fetch.
        public var blobWindow = 4

        public init() {}

        /// Parses "HOST:PORT", the form of the `--listen` flag.
        public mutating func setListen(_ spec: String) throws(MeshError) {
            (listenHost, listenPort) = try parseHostPort(spec, what: "listen address")
        }
    }

    public typealias ControlHandler = @Sendable (_ from: String, _ payload: [UInt8]) async throws -> [UInt8]

    public nonisolated let settings: Settings
    public nonisolated let identity: NodeIdentity
    public nonisolated let nodeID: String
    /// Drop and refusal counts by reason.
    public nonisolated let counters: MeshCounters
    /// Messages for the layers above (Raft and any other non-internal traffic), with the sender's node id.
    public nonisolated let incoming: AsyncStream<(from: String, message: MeshMessage)>
    /// Peer table changes as discovery sees them.
    public nonisolated let peerChanges: AsyncStream<PeerChange>

    /// The key ring, membership and revoked identities, shared with discovery and the handshakes.
    private nonisolated let keys: KeyState
    private var keyHandOver: (@Sendable (Laggard) async -> [UInt8]?)?
    /// When each laggard was last handed the key (one try per node per 10 s; bounded).
    private var handedOver: [String: ContinuousClock.Instant] = [:]
    private let logger: Logger
    private let discovery: Discovery
    private let blobSource: (any BlobSource)?
    private let incomingContinuation: AsyncStream<(from: String, message: MeshMessage)>.Continuation
    private let peerChangesContinuation: AsyncStream<PeerChange>.Continuation
    private let dialContinuation: AsyncStream<String>.Continuation
    private let dialRequests: AsyncStream<String>
    private let eventLoopGroup: any EventLoopGroup

    private struct Connection {
        let id: UInt64
        let channel: Channel
        let dialed: Bool
    }
    private var connections: [String: Connection] = [:]
    /// The same channels, readable from any thread: Raft sends through it without entering this actor.
    private nonisolated let channels = ChannelDirectory()
    private nonisolated let raftTap = RaftTap()
    private var dialing: Set<String> = []
    private var pending: [UInt64: (peer: String, continuation: CheckedContinuation<MeshMessage, Error>)] = [:]
    private var nextID: UInt64 = 1
    private var controlHandler: ControlHandler?
    private var boundPort: Int?
    private var portWaiters: [CheckedContinuation<Int, Error>] = []
    private var infoCache: [String: MeshMessage.BlobInfo] = [:]

    public init(
        settings: Settings, farmKey: FarmKey, identity: NodeIdentity, blobSource: (any BlobSource)? = nil,
        logger: Logger = Logger(label: "rexnode.mesh"),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        precondition(Sodium.ready, "libsodium failed to initialise")
        self.settings = settings
        let keys = KeyState(FarmKeyRing(current: farmKey))
        self.keys = keys
        self.identity = identity
        self.nodeID = identity.nodeID
        self.logger = logger
        self.blobSource = blobSource
        self.eventLoopGroup = eventLoopGroup
        let counters = MeshCounters()
        self.counters = counters
        slots = HandshakeSlots(limit: settings.maxPendingHandshakes)
        discovery = Discovery(
            settings: settings.discovery, keys: keys, identity: identity, name: settings.name,
            counters: counters, logger: logger)
        (incoming, incomingContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(4096))
        (peerChanges, peerChangesContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1024))
        (dialRequests, dialContinuation) = AsyncStream.makeStream(bufferingPolicy: .unbounded)
    }

    // MARK: Public API

    /// Snapshot of the peer table (every node heard from, with its liveness).
    public func peers() async -> [PeerInfo] { await discovery.peers() }

    /// This run of this node (its beacons carry it; a restart draws a new one), so a message meant for one run of a
    /// node is not taken by the next.
    public nonisolated var instanceID: UInt64 { discovery.instanceID }

    /// Node ids with an authenticated connection right now.
    public func connectedPeers() -> [String] { connections.keys.sorted() }

    /// Bytes announced in every beacon (role, slots, ...), at most `Beacon.maxStatusBytes`.
    public func setStatus(_ bytes: [UInt8]) async { await discovery.setStatus(bytes) }

    /// Distinct other farms whose beacons were heard in the last 30 s (`join` without a token refuses then).
    public func otherFarmsSeen() async -> Int { await discovery.otherFarmsSeen() }

    /// Answers `controlRequest`s from peers; without one they get an error response.
    public func setControlHandler(_ handler: ControlHandler?) { controlHandler = handler }

    /// Removes a node from the farm as far as the mesh is concerned: its beacons are ignored, its handshakes
    /// refused and any open connection closed.
    public func deny(publicKey: [UInt8]) async {
        deniedShared.insert(publicKey)
        await shutOut(String(publicKey.hexString.prefix(16)))
    }

    /// Shuts out the current run of a node removed from the farm: beacons from this run of it are ignored, its
    /// handshakes refused and its connection closed. Once it restarts (its beacons carry a new instance id) it is
    /// heard again and may ask to join afresh. A node never heard of has nothing to shut out.
    public func deny(nodeID: String) async {
        guard nodeID != self.nodeID else { return }
        guard let peer = await discovery.peer(nodeID) else {
            // Not heard of (no beacon yet, so no run to name): drop any connection; its beacons decide the rest.
            connections[nodeID]?.channel.close(promise: nil)
            return
        }
        deniedShared.insert(peer.publicKey, instance: peer.instanceID)
        logger.notice("peer removed from the farm; refused until it restarts", metadata: ["mesh/peer": "\(nodeID)"])
        await shutOut(nodeID)
    }

    /// Lifts a run's deny (the node was added to the farm again).
    public func allow(nodeID: String) async {
        guard let peer = await discovery.peer(nodeID) else {
            deniedShared.lift(nodeID: nodeID)
            return
        }
        deniedShared.lift(peer.publicKey)
    }

    private func shutOut(_ nodeID: String) async {
        let shared = deniedShared
        await discovery.setDenyList { shared.refuses(beaconFrom: $0, instance: $1) }
        await discovery.forget(nodeID)
        if let conn = connections[nodeID] { conn.channel.close(promise: nil) }
    }

    // MARK: Keys

    /// The keys this node holds now (current epoch and the retired ones).
    public nonisolated var keyRing: FarmKeyRing { keys.ring }

    /// Switches to a new key ring: the next beacon carries its epoch, new handshakes use its key, and the previous
    /// epoch is accepted from members for `KeyState.overlap`. Open connections stay (both ends proved membership).
    public nonisolated func setKeyRing(_ ring: FarmKeyRing) {
        let before = keys.ring.epoch
        keys.set(ring)
        if ring.epoch != before {
            logger.notice("farm key epoch changed", metadata: ["mesh/epoch": "\(ring.epoch)", "mesh/was": "\(before)"])
        }
    }

    /// This node has a log: its epochs come from it only, never from a beacon's header.
    public nonisolated func stopLearningEpochs() { keys.stopLearningEpochs() }

    /// Closes the connections of peers that are not members, after a key change: a stranger that connected under the
    /// old key keeps nothing of the farm.
    public func closeConnections(keeping isMember: @Sendable (String) -> Bool) {
        for (id, conn) in connections where !isMember(id) {
            logger.notice("closing a non-member's connection after a key change", metadata: ["mesh/peer": "\(id)"])
            conn.channel.close(promise: nil)
        }
    }

    /// Who is a member (by identity key): only members are heard on an older epoch or handed the current key.
    public nonisolated func setMembership(_ isMember: @escaping @Sendable ([UInt8]) -> Bool) {
        keys.setMembership(isMember)
    }

    /// Identities refused for good, whatever key they hold (`rexnode revoke`); their connections close now.
    public func setRevoked(_ nodeIDs: Set<String>) async {
        // Called on every membership refresh: only a change forgets peers and closes connections.
        guard keys.setRevoked(nodeIDs) else { return }
        for id in nodeIDs where id != nodeID {
            await discovery.forget(id)
            connections[id]?.channel.close(promise: nil)
        }
    }

    /// What to send a member heard on an older epoch (a control request payload carrying the current key sealed to
    /// its identity), or nil to send nothing. Without it, laggards are only counted.
    public func setKeyHandOver(_ offer: (@Sendable (Laggard) async -> [UInt8]?)?) { keyHandOver = offer }

    /// Dials a member that announced an older epoch, with that epoch's key and its identity as the one it must prove,
    /// sends it the hand-over request, waits (bounded) for its answer and closes.
    private func handOver(_ laggard: Laggard) async {
        let now = ContinuousClock.now
        if let last = handedOver[laggard.nodeID], now - last < .seconds(10) { return }
        if handedOver.count >= 1024 { handedOver = handedOver.filter { now - $0.value < .seconds(10) } }
        handedOver[laggard.nodeID] = now
        guard connections[laggard.nodeID] == nil, let oldKey = keys.ring.retired[laggard.epoch],
            keys.isMember(laggard.publicKey), let offer = keyHandOver, let payload = await offer(laggard)
        else { return }
        do {
            let peer = PeerInfo(handOver: laggard)
            let accepted = try await connect(to: peer, key: oldKey)
            let channel = accepted.channel.channel
            await withDiscardingTaskGroup { group in
                group.addTask { await self.serve(accepted, dialed: true) }
                group.addTask {
                    do {
                        _ = try await self.request(to: laggard.nodeID, payload, timeout: .seconds(10))
                        self.counters.increment(.keysHandedOver)
                        self.logger.notice(
                            "handed the current farm key to a member that missed a rotation",
                            metadata: ["mesh/peer": "\(laggard.nodeID)", "mesh/epoch": "\(laggard.epoch)"])
                    } catch {
                        self.logger.debug(
                            "key hand-over failed", metadata: ["mesh/peer": "\(laggard.nodeID)", "error": "\(error)"])
                    }
                    channel.close(promise: nil)
                }
            }
        } catch {
            logger.debug(
                "key hand-over dial failed", metadata: ["mesh/peer": "\(laggard.nodeID)", "error": "\(error)"])
        }
    }

    /// Closes the connection to a peer, if any (the lower node id redials while the peer is alive).
    public func disconnect(from nodeID: String) {
        connections[nodeID]?.channel.close(promise: nil)
    }

    /// The TCP port the listener is bound to, once `run()` has bound it.
    public func listeningPort() async throws -> Int {
        if let boundPort { return boundPort }
        return try await withCheckedThrowingContinuation { portWaiters.append($0) }
    }

    /// Raft's way in: `handler` gets every Raft message the moment a connection decodes it, on that connection's
    /// event loop (it must only hand the bytes over). Without one they arrive on `incoming` like the rest.
    public nonisolated func setRaftHandler(_ handler: RaftTap.Handler?) { raftTap.set(handler) }

    /// Raft's way out: queues `bytes` on the peer's connection and returns at once, from any thread. Each connection
    /// has its own bounded buffer, so a slow peer delays only itself: when its socket is backed up (or there is no
    /// connection) the message is dropped and counted, which Raft treats as a lost message.
    @discardableResult
    public nonisolated func sendRaft(_ bytes: [UInt8], to nodeID: String) -> Bool {
        guard let channel = channels[nodeID] else {
            counters.increment(.raftDroppedUnconnected)
            return false
        }
        guard channel.isWritable else {
            counters.increment(.raftDroppedBackedUp)
            return false
        }
        channel.writeAndFlush(MeshMessage.raft(bytes), promise: nil)
        counters.increment(.raftSent)
        return true
    }

    /// Raft's bulk way out (a snapshot's chunks): queues `bytes` on the peer's connection and blocks the calling
    /// thread until they are written to the socket, so a stream of them never overruns the bounded buffer above.
    /// `false` when there is no connection or the write failed. Never call it on an event loop.
    public nonisolated func sendRaftWaiting(_ bytes: [UInt8], to nodeID: String) -> Bool {
        guard let channel = channels[nodeID] else {
            counters.increment(.raftDroppedUnconnected)
            return false
        }
        do {
            try channel.writeAndFlush(MeshMessage.raft(bytes)).wait()
        } catch {
            return false
        }
        counters.increment(.raftSent)
        return true
    }

    /// Sends one message to a connected peer; throws at once when there is no connection (Raft retries).
    public func send(to nodeID: String, _ message: MeshMessage) async throws {
        guard let conn = connections[nodeID] else {
            throw MeshError(.closed, "Node \(nodeID) is not connected.")
        }
        try await conn.channel.writeAndFlush(message).get()
    }

    /// Sends a control request and waits for the peer's answer; waits for a connection within the timeout.
    public func request(to nodeID: String, _ payload: [UInt8], timeout: Duration? = nil) async throws -> [UInt8] {
        let reply = try await exchange(nodeID, timeout: timeout ?? settings.requestTimeout) {
            .controlRequest(id: $0, payload: payload)
        }
        guard case .controlResponse(_, let result) = reply else {
            throw MeshError(.protocolViolation, "Node \(nodeID) answered a request with the wrong message.")
        }
        switch result {
        case .success(let bytes): return bytes
        case .failure(let text): throw MeshError(.protocolViolation, "Node \(nodeID) refused the request: \(text)")
        }
    }

    /// Listens on the discovery group for `duration` without announcing anything and returns how many
    /// distinct farms were heard: what `rexnode join` without a token checks before creating a new farm.
    public static func scanForFarms(
        discovery: DiscoverySettings, duration: Duration, logger: Logger = Logger(label: "rexnode.mesh")
    ) async throws -> Int {
        var settings = Settings()
        settings.discovery = discovery
        settings.discovery.announce = false
        settings.listenHost = "127.0.0.1"
        settings.listenPort = 0
        let node = MeshNode(settings: settings, farmKey: .generate(), identity: .generate(), logger: logger)
        return try await withThrowingTaskGroup(of: Int?.self) { group in
            group.addTask {
                try await node.run()
                return nil
            }
            group.addTask {
                _ = try await node.listeningPort()
                try await Task.sleep(for: duration)
                return await node.otherFarmsSeen()
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            return 0
        }
    }

    // MARK: Run

    /// Binds the peer listener, starts discovery, dials peers and serves connections until cancelled.
    public func run() async throws {
        let server: NIOAsyncChannel<Accepted, Never>
        do {
            server = try await listen(port: settings.listenPort)
        } catch {
            let failure = MeshError(.io, "Cannot listen on \(settings.listenHost):\(settings.listenPort): \(error).")
            for waiter in portWaiters { waiter.resume(throwing: failure) }
            portWaiters = []
            throw failure
        }
        let port = server.channel.localAddress?.port ?? settings.listenPort
        boundPort = port
        for waiter in portWaiters { waiter.resume(returning: port) }
        portWaiters = []
        logger.info("mesh listening", metadata: ["mesh/node": "\(nodeID)", "mesh/port": "\(port)"])
        try await withThrowingDiscardingTaskGroup { group in
            // These end only when cancelled, or on a configuration error; then the dial requests end too, so
            // `run` returns the error instead of waiting for dial requests that will never come.
            group.addTask {
                defer { self.dialContinuation.finish() }
                try await self.acceptLoop(server, port: port)
            }
            group.addTask {
                defer { self.dialContinuation.finish() }
                try await self.discovery.run(tcpPort: port, group: self.eventLoopGroup)
            }
            group.addTask {
                for await change in self.discovery.changes { await self.onPeerChange(change) }
            }
            group.addTask {
                // One hand-over at a time (each bounded): a flood of old-epoch beacons cannot fan out dials.
                for await laggard in self.discovery.laggards { await self.handOver(laggard) }
            }
            for await peer in dialRequests {
                group.addTask { await self.dialLoop(peer) }
            }
            group.cancelAll()
        }
    }

    /// Accepts peers until cancelled. An accept error (EMFILE, say) ends a listener's stream, so the listener is
    /// bound again on the same port after a backoff rather than taking the mesh down; connections already
    /// accepted carry on meanwhile. The first failure of a run is logged; an accepted connection ends the run.
    private nonisolated func acceptLoop(_ first: NIOAsyncChannel<Accepted, Never>, port: Int) async throws {
        try await withThrowingDiscardingTaskGroup { connections in
            var server: NIOAsyncChannel<Accepted, Never>? = first
            var failures = FailureRun(
                first: "the peer listener failed; listening again shortly", again: "the peer listener failed again",
                back: "mesh listening again")
            func failed(_ error: any Error) {
                counters.increment(.listenerErrors)
                failures.failed(error, logger: logger, metadata: ["mesh/port": "\(port)"])
            }
            while true {
                if let listening = server {
                    do {
                        try await listening.executeThenClose { inbound in
                            for try await accepted in inbound {
                                failures.recovered(logger: logger, metadata: ["mesh/port": "\(port)"])
                                counters.increment(.connectionsAccepted)
                                connections.addTask { await self.serve(accepted, dialed: false) }
                            }
                        }
                        try Task.checkCancellation()
                        throw MeshError(.closed, "The listener closed.")
                    } catch {
                        try Task.checkCancellation()
                        failed(error)
                    }
                }
                let delay = failures.backoff(minimum: settings.reconnectMin * 2, maximum: settings.reconnectMax)
                try await Task.sleep(for: delay)
                do {
                    server = try await listen(port: port)
                } catch {
                    server = nil
                    failed(error)
                }
            }
        }
    }

    /// Binds the peer listener on `listenHost`:`port`.
    private nonisolated func listen(port: Int) async throws -> NIOAsyncChannel<Accepted, Never> {
        return try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: Self.writeWatermark)
            .bind(host: settings.listenHost, port: port) { [slots, counters] child in
                // Refuse by closing, not by failing: a failed initializer ends the listener's accept stream.
                child.eventLoop.makeCompletedFuture {
                    guard slots.acquire() else {
                        counters.increment(.connectionsRefused)
                        child.close(promise: nil)
                        let channel = try NIOAsyncChannel<MeshMessage, Never>(
                            wrappingChannelSynchronously: child, configuration: Self.asyncConfiguration)
                        let refused = MeshError(.closed, "Too many connections are handshaking.")
                        return Accepted(channel: channel, handshake: child.eventLoop.makeFailedFuture(refused))
                    }
                    // The protocol handlers go in first, then the async wrapper at the tail. The pipeline is made per
                    // connection: it carries the key of the epoch current now (a rotation changes it).
                    let pipeline = self.connectionPipeline()
                    let handshake: EventLoopFuture<PeerIdentity>
                    do {
                        handshake = try pipeline.install(on: child, role: .responder, expectedPeer: nil)
                    } catch {
                        slots.release()  // only when the child is already closed
                        throw error
                    }
                    handshake.whenComplete { _ in slots.release() }
                    let channel = try NIOAsyncChannel<MeshMessage, Never>(
                        wrappingChannelSynchronously: child, configuration: Self.asyncConfiguration)
                    return Accepted(channel: channel, handshake: handshake)
                }
            }
    }

    private nonisolated func connectionPipeline(key: FarmKey? = nil) -> ConnectionPipeline {
        let shared = deniedShared
        let keys = self.keys
        var pipeline = ConnectionPipeline(
            identity: identity, farmKey: key ?? keys.ring.current, maxFrame: settings.maxFrameBytes,
            handshakeTimeout: .nanoseconds(
                Int64(settings.handshakeTimeout.components.seconds) * 1_000_000_000
                    + settings.handshakeTimeout.components.attoseconds / 1_000_000_000),
            counters: counters, authorize: { !shared.contains($0) && !keys.isRevoked($0) }, raftTap: raftTap)
        pipeline.olderKeys = keys.overlapping().map { [$0.key] } ?? []
        pipeline.isMember = { keys.isMember($0) }
        return pipeline
    }

    // Deny-list lookups from the event loop: a lock-protected copy, since the handshake runs off the actor.
    private nonisolated let deniedShared = DenySet()
    private nonisolated let slots: HandshakeSlots

    private func onPeerChange(_ change: PeerChange) async {
        peerChangesContinuation.yield(change)
        guard let peer = change.peer, peer.state == .alive else { return }
        if nodeID < peer.nodeID, connections[peer.nodeID] == nil, !dialing.contains(peer.nodeID) {
            dialing.insert(peer.nodeID)
            dialContinuation.yield(peer.nodeID)
        }
    }

    /// Lower node id dials (one connection per pair); retries with exponential backoff while the peer lives.
    private func dialLoop(_ peerID: String) async {
        defer { dialing.remove(peerID) }
        var backoff = settings.reconnectMin
        while !Task.isCancelled {
            guard let peer = await discovery.peer(peerID), peer.state != .dead,
                !deniedShared.contains(peer.publicKey)
            else { return }
            if connections[peerID] == nil {
                do {
                    let accepted = try await connect(to: peer)
                    counters.increment(.connectionsDialed)
                    if await serve(accepted, dialed: true) {
                        // It was up: redial at once. A refused handshake falls through to the backoff.
                        backoff = settings.reconnectMin
                        continue
                    }
                } catch {
                    logger.debug("dial failed", metadata: ["mesh/peer": "\(peerID)", "error": "\(error)"])
                }
            }
            let jitter = Double.random(in: 0.8...1.2)
            try? await Task.sleep(for: backoff * jitter)
            backoff = min(backoff * 2, settings.redialMax)
        }
    }

    private func connect(to peer: PeerInfo, key: FarmKey? = nil) async throws -> Accepted {
        let pipeline = connectionPipeline(key: key)
        let expected = peer.publicKey
        return try await ClientBootstrap(group: eventLoopGroup)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: Self.writeWatermark)
            .connectTimeout(.seconds(3))
            .connect(host: peer.host, port: peer.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handshake = try pipeline.install(on: channel, role: .initiator, expectedPeer: expected)
                    let async = try NIOAsyncChannel<MeshMessage, Never>(
                        wrappingChannelSynchronously: channel, configuration: Self.asyncConfiguration)
                    return Accepted(channel: async, handshake: handshake)
                }
            }
    }

    /// Serves one connection until it ends; its errors end it and nothing else.
    /// Returns whether the peer authenticated (so a dialer knows whether to back off).
    @discardableResult
    private nonisolated func serve(_ accepted: Accepted, dialed: Bool) async -> Bool {
        let channel = accepted.channel.channel
        var peerID: String?
        var connectionID: UInt64 = 0
        do {
            try await accepted.channel.executeThenClose { inbound in
                let peer = try await accepted.handshake.get()
                peerID = peer.nodeID
                connectionID = await self.register(peer, channel: channel, dialed: dialed)
                try await withThrowingDiscardingTaskGroup { tasks in
                    for try await message in inbound {
                        switch message {
                        case .ping(let n):
                            channel.writeAndFlush(MeshMessage.pong(n), promise: nil)
                        case .controlRequest(let id, let payload):
                            tasks.addTask {
                                await self.answerControl(id: id, payload: payload, from: peer.nodeID, channel)
                            }
                        case .blobQuery(let id, let hash):
                            let address = BlobAddress.string(.legacy, hash)
                            tasks.addTask { await self.answerBlobQuery(id: id, hash: address, channel) }
                        case .treeQuery(let id, let root):
                            let address = BlobAddress.string(.tree, root)
                            tasks.addTask { await self.answerBlobQuery(id: id, hash: address, channel) }
                        case .blobRead(let id, let hash, let offset, let length):
                            let address = BlobAddress.string(.legacy, hash)
                            tasks.addTask {
                                await self.answerBlobRead(
                                    id: id, hash: address, offset: offset, length: length, channel)
                            }
                        case .treeRead(let id, let root, let offset, let length):
                            let address = BlobAddress.string(.tree, root)
                            tasks.addTask {
                                await self.answerBlobRead(
                                    id: id, hash: address, offset: offset, length: length, channel)
                            }
                        case .controlResponse, .blobInfo, .treeInfo, .blobData, .blobError, .pong:
                            if let id = message.responseID { await self.resolve(id, with: message) }
                        case .raft:
                            self.incomingContinuation.yield((from: peer.nodeID, message: message))
                        }
                    }
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["mesh/peer": "\(peerID ?? "?")", "error": "\(error)"])
        }
        if let peerID { await unregister(peerID, id: connectionID) }
        return peerID != nil
    }

    /// How much a connection buffers each way. Inbound: up to 256 messages wait for the async reader before NIO
    /// stops reading the socket (Raft's messages are taken out below it, but a stopped socket would stop them too).
    /// Outbound: the write buffer's watermarks sit above four in-flight 1 MiB blob chunks, so Raft's messages are
    /// dropped only when a peer is really backed up, not whenever a blob streams.
    static let asyncConfiguration = NIOAsyncChannel<MeshMessage, Never>.Configuration(
        backPressureStrategy: .init(lowWatermark: 16, highWatermark: 256))
    static let writeWatermark = ChannelOptions.Types.WriteBufferWaterMark(low: 6 << 20, high: 12 << 20)

    private func register(_ peer: PeerIdentity, channel: Channel, dialed: Bool) -> UInt64 {
        let id = nextID
        nextID += 1
        if deniedShared.contains(peer.publicKey) {
            // Denied while its handshake was under way.
            channel.close(promise: nil)
            return id
        }
        if let old = connections[peer.nodeID] {
            // One connection per pair: the newest wins (the old one is usually a half-dead leftover).
            old.channel.close(promise: nil)
        }
        connections[peer.nodeID] = Connection(id: id, channel: channel, dialed: dialed)
        channels[peer.nodeID] = channel
        logger.info("peer connected", metadata: ["mesh/peer": "\(peer.nodeID)", "mesh/dialed": "\(dialed)"])
        return id
    }

    private func unregister(_ peerID: String, id: UInt64) {
        guard let conn = connections[peerID], conn.id == id else { return }
        connections[peerID] = nil
        channels[peerID] = nil
        logger.info("peer disconnected", metadata: ["mesh/peer": "\(peerID)"])
        // The lower id dials: a connection the peer opened (a key hand-over, say) that ends leaves it to redial now;
        // no discovery event may come to start it (the dial loop returns at once if the peer is not alive).
        if nodeID < peerID, !dialing.contains(peerID) {
            dialing.insert(peerID)
            dialContinuation.yield(peerID)
        }
        let error = MeshError(.closed, "The connection to node \(peerID) closed.")
        for (rid, entry) in pending where entry.peer == peerID {
            pending[rid] = nil
            entry.continuation.resume(throwing: error)
        }
    }

    // MARK: Requests

    /// Sends the message built with a fresh request id and waits for the response with that id.
    func exchange(
        _ peerID: String, timeout: Duration, _ build: @Sendable (UInt64) -> MeshMessage
    ) async throws -> MeshMessage {
        let deadline = ContinuousClock.now + timeout
        while connections[peerID] == nil {
            guard ContinuousClock.now < deadline else {
                throw MeshError(.timeout, "Node \(peerID) is not connected.")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let id = nextID
        nextID += 1
        let message = build(id)
        return try await withThrowingTaskGroup(of: MeshMessage?.self) { group in
            group.addTask { try await self.awaitResponse(id, peer: peerID, message: message) }
            group.addTask {
                try? await Task.sleep(until: deadline)
                await self.resolve(id, failing: MeshError(.timeout, "Node \(peerID) did not answer in time."))
                return nil
            }
            while let result = try await group.next() {
                if let result {
                    group.cancelAll()
                    return result
                }
            }
            throw MeshError(.timeout, "Node \(peerID) did not answer in time.")
        }
    }

    private func awaitResponse(_ id: UInt64, peer: String, message: MeshMessage) async throws -> MeshMessage {
        guard let conn = connections[peer] else { throw MeshError(.closed, "Node \(peer) is not connected.") }
        return try await withCheckedThrowingContinuation { continuation in
            pending[id] = (peer, continuation)
            conn.channel.writeAndFlush(message, promise: nil)
        }
    }

    private func resolve(_ id: UInt64, with message: MeshMessage) {
        pending.removeValue(forKey: id)?.continuation.resume(returning: message)
    }

    private func resolve(_ id: UInt64, failing error: Error) {
        pending.removeValue(forKey: id)?.continuation.resume(throwing: error)
    }

    private func answerControl(id: UInt64, payload: [UInt8], from peer: String, _ channel: Channel) async {
        let result: MeshMessage.ControlResult
        if let handler = controlHandler {
            do {
                result = .success(try await handler(peer, payload))
            } catch {
                result = .failure("\(error)")
            }
        } else {
            result = .failure("This node does not answer control requests.")
        }
        counters.increment(.controlRequestsServed)
        channel.writeAndFlush(MeshMessage.controlResponse(id: id, result: result), promise: nil)
    }

    // MARK: Blob serving

    static let chunkSize = 1 << 20

    /// Size and chunk hashes of a held blob, computed once (one pass over it) and cached. For a tree address the
    /// chunk hashes are the leaves, and a blob whose leaves do not give its address (damaged on this disk) is not
    /// served.
    private func blobInfo(_ hash: String) async throws -> MeshMessage.BlobInfo? {
        if let cached = infoCache[hash] { return cached }
        guard let source = blobSource, let size = try await source.size(hash) else { return nil }
        let (format, digest) = try BlobAddress.digest(hash)
        var hashes: [[UInt8]] = []
        var offset: UInt64 = 0
        repeat {
            let piece = try await source.read(
                hash, offset: offset, length: Int(min(UInt64(Self.chunkSize), size - offset)))
            guard !piece.isEmpty || size == 0 else { throw MeshError(.io, "Blob \(hash) is shorter than its size.") }
            hashes.append(format == .tree ? BlobTree.leaf(index: hashes.count, chunk: piece) : Sodium.blake2b(piece))
            offset += UInt64(piece.count)
        } while offset < size
        if format == .legacy, size == 0 { hashes = [] }
        if format == .tree, !BlobTree.verify(leaves: hashes, size: size, root: digest) {
            logger.warning("a held blob does not match its address; not served", metadata: ["blob": "\(hash)"])
            return nil
        }
        let info = MeshMessage.BlobInfo(
            hash: digest, size: size, chunkSize: UInt32(Self.chunkSize), chunkHashes: hashes)
        if infoCache.count >= 64 { infoCache.removeAll() }
        infoCache[hash] = info
        return info
    }

    private func answerBlobQuery(id: UInt64, hash: String, _ channel: Channel) async {
        let info = try? await blobInfo(hash)
        let tree = BlobAddress.format(hash) == .tree
        channel.writeAndFlush(
            tree ? MeshMessage.treeInfo(id: id, info: info ?? nil) : MeshMessage.blobInfo(id: id, info: info ?? nil),
            promise: nil)
    }

    private nonisolated func answerBlobRead(
        id: UInt64, hash: String, offset: UInt64, length: UInt32, _ channel: Channel
    ) async {
        guard let source = blobSource else {
            channel.writeAndFlush(MeshMessage.blobError(id: id, message: "This node serves no blobs."), promise: nil)
            return
        }
        do {
            let data = try await source.read(hash, offset: offset, length: Int(length))
            try await channel.writeAndFlush(MeshMessage.blobData(id: id, offset: offset, data: data)).get()
        } catch {
            channel.writeAndFlush(MeshMessage.blobError(id: id, message: "\(error)"), promise: nil)
        }
    }

    // MARK: Blob fetching

    /// What a fetch checks chunks against.
    struct FetchPlan: Sendable {
        let hash: String
        let format: BlobAddress.Format
        let info: MeshMessage.BlobInfo

        var count: Int { info.chunkHashes.count }

        func range(_ index: Int) -> (offset: UInt64, length: Int) {
            let offset = UInt64(index) * UInt64(info.chunkSize)
            return (offset, Int(min(UInt64(info.chunkSize), info.size - offset)))
        }

        /// One hash of the chunk's bytes, compared with its leaf (tree) or its listed chunk hash (legacy).
        func accepts(_ index: Int, _ bytes: [UInt8]) -> Bool {
            let expected = info.chunkHashes[index]
            return switch format {
            case .tree: Sodium.equal(BlobTree.leaf(index: index, chunk: bytes), expected)
            case .legacy: Sodium.equal(Sodium.blake2b(bytes), expected)
            }
        }

        func read(id: UInt64, offset: UInt64, length: UInt32) -> MeshMessage {
            format == .tree
                ? .treeRead(id: id, root: info.hash, offset: offset, length: length)
                : .blobRead(id: id, hash: info.hash, offset: offset, length: length)
        }
    }

    /// Fetches a blob into `sink` from the given holders at once, verifying each 1 MiB chunk, resuming from
    /// partial data already in the sink, and riding out dropped connections while a holder stays alive.
    ///
    /// A tree address: the first holder's leaf list that hashes to the address is the plan (any other that does is
    /// the same list), each chunk is checked once against its leaf, and the sink's `finalize` does not hash again.
    /// A legacy address: the chunk-hash list most holders agree on, each chunk checked against it, then the whole
    /// blob against the address in `finalize`.
    public func fetchBlob(_ hash: String, from holders: [String], into sink: any BlobSink) async throws {
        let (format, digest) = try BlobAddress.digest(hash)
        let timeout = settings.requestTimeout
        // 1. Ask every holder for size and chunk hashes.
        var answers: [(String, MeshMessage.BlobInfo)] = []
        await withTaskGroup(of: (String, MeshMessage.BlobInfo?).self) { group in
            for holder in Set(holders) where holder != nodeID {
                group.addTask {
                    let reply = try? await self.exchange(holder, timeout: timeout) {
                        format == .tree ? .treeQuery(id: $0, root: digest) : .blobQuery(id: $0, hash: digest)
                    }
                    switch reply {
                    case .treeInfo(_, let info?) where format == .tree && info.hash == digest:
                        guard BlobTree.verify(leaves: info.chunkHashes, size: info.size, root: digest) else {
                            self.counters.increment(.blobChunksRejected)
                            return (holder, nil)
                        }
                        return (holder, info)
                    case .blobInfo(_, let info?) where format == .legacy && info.hash == digest:
                        return (holder, info)
                    default:
                        return (holder, nil)
                    }
                }
            }
            for await (holder, info) in group { if let info { answers.append((holder, info)) } }
        }
        var votes: [[[UInt8]]: Int] = [:]
        for (_, info) in answers { votes[info.chunkHashes, default: 0] += 1 }
        guard let best = votes.max(by: { $0.value < $1.value })?.key,
            let info = answers.first(where: { $0.1.chunkHashes == best })?.1
        else {
            throw MeshError(.closed, "No holder of blob \(hash.prefix(14))… answered.")
        }
        let sources = answers.filter { $0.1.chunkHashes == best }.map(\.0)
        let plan = FetchPlan(hash: hash, format: format, info: info)
        // 2. Re-verify partial data already in the sink (never trusted as it is); only missing or bad chunks are
        // fetched.
        let present = try await sink.partialSize(hash)
        var missing: [Int] = []
        for index in 0..<plan.count {
            let (start, length) = plan.range(index)
            if length > 0, start + UInt64(length) <= present,
                let bytes = try? await sink.readPartial(hash, offset: start, length: length),
                bytes.count == length, plan.accepts(index, bytes)
            {
                continue
            }
            if length > 0 { missing.append(index) }
        }
        logger.debug(
            "blob fetch",
            metadata: [
                "blob": "\(hash.prefix(14))", "mesh/holders": "\(sources.count)",
                "chunks": "\(missing.count)/\(plan.count)",
            ])
        // 3. Workers per holder pull chunk indices from one queue.
        let queue = ChunkQueue(missing: missing, total: plan.count)
        let window = max(1, settings.blobWindow)
        await withTaskGroup(of: Void.self) { group in
            for holder in sources {
                for _ in 0..<window {
                    group.addTask {
                        await self.fetchWorker(holder: holder, plan: plan, queue: queue, sink: sink)
                    }
                }
            }
        }
        guard await queue.finished else {
            throw MeshError(
                .closed, "Blob \(hash.prefix(14))… could not be fetched completely; the partial data is kept.")
        }
        try await sink.finalize(hash, size: info.size)
    }

    private nonisolated func fetchWorker(
        holder: String, plan: FetchPlan, queue: ChunkQueue, sink: any BlobSink
    ) async {
        var failures = 0
        var backoff = settings.reconnectMin
        while !Task.isCancelled, let index = await queue.take() {
            let (offset, length) = plan.range(index)
            do {
                let reply = try await exchange(holder, timeout: settings.requestTimeout) {
                    plan.read(id: $0, offset: offset, length: UInt32(length))
                }
                guard case .blobData(_, let off, let data) = reply, off == offset, data.count == length,
                    plan.accepts(index, data)
                else {
                    counters.increment(.blobChunksRejected)
                    throw MeshError(.authentication, "Node \(holder) sent a chunk that does not match its hash.")
                }
                try await sink.writePartial(plan.hash, offset: offset, bytes: data)
                counters.increment(.blobChunksFetched)
                await queue.complete(index)
                failures = 0
                backoff = settings.reconnectMin
            } catch {
                await queue.giveBack(index)
                failures += 1
                // A dropped connection: wait for the redial, unless the holder is gone or keeps failing.
                let alive = await discovery.peer(holder).map { $0.state != .dead } ?? false
                if failures >= 8 || (!alive && failures >= 2) { return }
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, settings.reconnectMax)
            }
        }
    }
}

/// A connection as the channel initializer returns it: the async wrapper plus the handshake's outcome.
struct Accepted: Sendable {
    let channel: NIOAsyncChannel<MeshMessage, Never>
    let handshake: EventLoopFuture<PeerIdentity>
}

/// Counts connections still in their handshake, so a flood of idle sockets is refused instead of held.
final class HandshakeSlots: Sendable {
    private let used = Mutex(0)
    let limit: Int
    init(limit: Int) { self.limit = limit }
    func acquire() -> Bool {
        used.withLock { n in
            n < limit
                ? {
                    n += 1
                    return true
                }() : false
        }
    }
    func release() { used.withLock { $0 = max(0, $0 - 1) } }
}

/// The deny-list, readable from event-loop threads during handshakes.
/// Node id → open channel, behind a lock (Raft's sends read it from its own thread).
final class ChannelDirectory: Sendable {
    private let table = Mutex<[String: any Channel]>([:])

    subscript(_ nodeID: String) -> (any Channel)? {
        get { table.withLock { $0[nodeID] } }
        set { table.withLock { $0[nodeID] = newValue } }
    }
}

/// Denied nodes: for good (by key), or one run of a node (key and instance id) until a beacon shows it restarted.
final class DenySet: Sendable {
    private struct State {
        var keys: Set<[UInt8]> = []
        var instances: [[UInt8]: UInt64] = [:]
    }
    private let state = Mutex(State())

    func insert(_ key: [UInt8]) { state.withLock { _ = $0.keys.insert(key) } }
    func insert(_ key: [UInt8], instance: UInt64) { state.withLock { $0.instances[key] = instance } }
    func lift(_ key: [UInt8]) { state.withLock { _ = $0.instances.removeValue(forKey: key) } }
    func lift(nodeID: String) {
        state.withLock { s in
            for key in s.instances.keys where String(key.hexString.prefix(16)) == nodeID { s.instances[key] = nil }
        }
    }

    /// Handshakes and dials: refused while the key, or its current run, is denied.
    func contains(_ key: [UInt8]) -> Bool { state.withLock { $0.keys.contains(key) || $0.instances[key] != nil } }

    /// Beacons: a denied run stays refused; a beacon of a new run lifts that node's deny.
    func refuses(beaconFrom key: [UInt8], instance: UInt64) -> Bool {
        state.withLock { s in
            if s.keys.contains(key) { return true }
            guard let denied = s.instances[key] else { return false }
            if denied == instance { return true }
            s.instances[key] = nil
            return false
        }
    }
}
