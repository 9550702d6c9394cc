import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Where and how often nodes announce themselves.
public struct DiscoverySettings: Sendable, Equatable {
    /// Multicast group address (IPv4).
    public var group: String = "239.255.77.1"
    public var port: Int = 7946
    /// Local IPv4 address whose interface carries multicast; 127.0.0.1 keeps the farm on one machine
    /// (then TTL is 0 and nothing leaves the host).
    public var interface: String = "127.0.0.1"
    public var beaconInterval: Duration = .seconds(1)
    /// Beacons whose clock differs from ours by more than this are dropped as stale or replayed.
    public var timeWindow: Duration = .seconds(30)
    public var peerTable = PeerTable.Settings()
    /// False: listen only, send no beacons (a node without a farm yet looking for other farms).
    public var announce = true
    /// Backoff between attempts to rebuild the discovery socket after a network error (a link down, an
    /// address gone): short, so a node is heard again within moments of its network coming back.
    public var retryMin: Duration = .milliseconds(100)
    public var retryMax: Duration = .seconds(2)
    /// How often the group membership is renewed (the kernel drops it when the interface goes away).
    public var rejoinInterval: Duration = .seconds(5)

    public init() {}

    /// Parses "GROUP:PORT", the form of the `--discovery` flag.
    public mutating func setGroup(_ spec: String) throws(MeshError) {
        let (host, port) = try parseHostPort(spec, what: "discovery group")
        group = host
        self.port = port
    }

    var isLoopback: Bool { interface.hasPrefix("127.") }
}

/// Splits "HOST:PORT" into its parts with a sentence a person can act on when it is malformed.
public func parseHostPort(_ spec: String, what: String) throws(MeshError) -> (String, Int) {
    guard let colon = spec.lastIndex(of: ":"), let port = Int(spec[spec.index(after: colon)...]),
        (0...65535).contains(port), colon != spec.startIndex
    else {
        throw MeshError(.protocolViolation, "The \(what) '\(spec)' is not HOST:PORT (for example 239.255.77.1:7946).")
    }
    return (String(spec[..<colon]), port)
}

/// Everything discovery decides, without sockets: datagrams and ticks in, peer changes out.
struct DiscoveryCore: Sendable {
    /// The current epoch's codec (rebuilt when the key ring changes) and the retired epochs' codecs.
    private(set) var codec: BeaconCodec
    private var retiredCodecs: [UInt32: BeaconCodec] = [:]
    let keys: KeyState
    /// Members heard on an older epoch after the overlap, for the mesh to hand the current key (drained by it).
    var laggards: [Laggard] = []
    var replay: ReplayGuard
    var table: PeerTable
    let ownKey: [UInt8]
    /// Other farms' fingerprints and when each was last heard (bounded).
    var foreign: [[UInt8]: ContinuousClock.Instant] = [:]
    static let maxForeign = 64
    /// Own beacons looped back by the kernel: proof that the socket sends and receives on the group.
    private(set) var ownBeaconsHeard = 0

    init(keys: KeyState, ownKey: [UInt8], settings: DiscoverySettings) {
        self.keys = keys
        let ring = keys.ring
        codec = BeaconCodec(farmKey: ring.current, epoch: ring.epoch)
        for (epoch, key) in ring.retired { retiredCodecs[epoch] = BeaconCodec(farmKey: key, epoch: epoch) }
        replay = ReplayGuard(timeWindowMillis: UInt64(settings.timeWindow.components.seconds) * 1000)
        table = PeerTable(settings: settings.peerTable)
        self.ownKey = ownKey
    }

    init(farmKey: FarmKey, ownKey: [UInt8], settings: DiscoverySettings) {
        self.init(keys: KeyState(FarmKeyRing(current: farmKey)), ownKey: ownKey, settings: settings)
    }

    mutating func onDatagram(
        _ bytes: [UInt8], host: String, now: ContinuousClock.Instant, nowMillis: UInt64, counters: MeshCounters,
        isDenied: (_ publicKey: [UInt8], _ instanceID: UInt64) -> Bool
    ) -> [PeerChange] {
        refreshCodecs()
        var opened = codec.open(bytes)
        if case .otherFarm(let print) = opened, print == codec.fingerprint, let epoch = Self.epoch(of: bytes),
            epoch > codec.epoch, keys.learnsEpochs
        {
            // This key at a higher epoch number: the farm's epoch, which a join token does not carry.
            let probe = BeaconCodec(farmKey: keys.ring.current, epoch: epoch)
            if case .beacon = probe.open(bytes) {
                keys.learnEpoch(epoch)
                refreshCodecs()
                opened = codec.open(bytes)
            }
        }
        if case .otherFarm = opened, let epoch = Self.epoch(of: bytes), let old = retiredCodecs[epoch] {
            // An older epoch of this farm: only a member is heard, and normally only while the overlap lasts.
            switch old.open(bytes) {
            case .beacon(let beacon) where beacon.publicKey != ownKey && keys.isMember(beacon.publicKey):
                if keys.overlapping()?.epoch == epoch {
                    opened = .beacon(beacon)
                } else {
                    counters.increment(.beaconsOldEpoch)
                    if laggards.count < 16, replay.check(beacon, nowMillis: nowMillis) == .fresh {
                        laggards.append(
                            Laggard(publicKey: beacon.publicKey, host: host, port: Int(beacon.tcpPort), epoch: epoch))
                    }
                    return []
                }
            default:
                counters.increment(.beaconsOldEpoch)
                return []
            }
        }
        switch opened {
        case .garbage:
            counters.increment(.beaconsGarbage)
        case .badAuthentication:
            counters.increment(.beaconsBadAuth)
        case .otherFarm(let print):
            counters.increment(.beaconsOtherFarm)
            if foreign[print] == nil, foreign.count >= Self.maxForeign,
                let oldest = foreign.min(by: { $0.value < $1.value })?.key
            {
                foreign[oldest] = nil
            }
            foreign[print] = now
        case .beacon(let beacon):
            if beacon.publicKey == ownKey {
                counters.increment(.beaconsOwn)
                ownBeaconsHeard += 1
                return []
            }
            switch replay.check(beacon, nowMillis: nowMillis) {
            case .replayed:
                counters.increment(.beaconsReplayed)
            case .stale:
                counters.increment(.beaconsStale)
            case .fresh:
                // After the replay guard: only a fresh beacon of a new run may lift a denied run's refusal.
                if isDenied(beacon.publicKey, beacon.instanceID) || keys.isRevoked(beacon.publicKey) {
                    counters.increment(.beaconsDenied)
                    return []
                }
                counters.increment(.beaconsAccepted)
                return table.onBeacon(beacon, host: host, now: now)
            }
        }
        return []
    }

    /// Seals with the current epoch's key (after a rotation, the next beacon carries the new epoch).
    mutating func sealing(_ beacon: Beacon) -> [UInt8] {
        refreshCodecs()
        return codec.seal(beacon)
    }

    /// The key epoch in a datagram's clear header (nil if it is not a beacon header).
    static func epoch(of bytes: [UInt8]) -> UInt32? {
        guard bytes.count >= BeaconCodec.headerBytes, Array(bytes[0..<4]) == BeaconCodec.magic else { return nil }
        return bytes[5..<9].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    }

    /// Rebuilds the codecs after a rotation (the key ring is shared with the layer that rotates it).
    private mutating func refreshCodecs() {
        let ring = keys.ring
        guard ring.epoch != codec.epoch else { return }
        codec = BeaconCodec(farmKey: ring.current, epoch: ring.epoch)
        retiredCodecs = [:]
        for (epoch, key) in ring.retired { retiredCodecs[epoch] = BeaconCodec(farmKey: key, epoch: epoch) }
    }

    /// Distinct other farms heard within `window`.
    func otherFarms(now: ContinuousClock.Instant, window: Duration) -> Int {
        foreign.values.filter { now - $0 <= window }.count
    }
}

/// Announces this node and listens for others on the multicast group; owns the peer table.
actor Discovery {
    let settings: DiscoverySettings
    let identity: NodeIdentity
    let counters: MeshCounters
    let logger: Logger
    private var core: DiscoveryCore
    /// This run of the node: a new random id every start, carried in its beacons.
    nonisolated let instanceID = UInt64.random(in: 1...UInt64.max)
    private var sequence: UInt64 = 0
    private var name: String
    private var status: [UInt8] = []
    private var isDenied: @Sendable ([UInt8], UInt64) -> Bool = { _, _ in false }
    let changes: AsyncStream<PeerChange>
    private let changesContinuation: AsyncStream<PeerChange>.Continuation
    /// Members heard on an older key epoch (see `Laggard`).
    let laggards: AsyncStream<Laggard>
    private let laggardsContinuation: AsyncStream<Laggard>.Continuation

    init(
        settings: DiscoverySettings, keys: KeyState, identity: NodeIdentity, name: String, counters: MeshCounters,
        logger: Logger
    ) {
        self.settings = settings
        self.identity = identity
        self.counters = counters
        self.logger = logger
        self.name = name
        core = DiscoveryCore(keys: keys, ownKey: identity.publicKey, settings: settings)
        (changes, changesContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1024))
        (laggards, laggardsContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(16))
    }

    func setStatus(_ bytes: [UInt8]) { status = Array(bytes.prefix(Beacon.maxStatusBytes)) }
    func setName(_ name: String) { self.name = name }
    func setDenyList(_ denied: @escaping @Sendable ([UInt8], UInt64) -> Bool) { isDenied = denied }
    func peers() -> [PeerInfo] { core.table.snapshot }
    func peer(_ nodeID: String) -> PeerInfo? { core.table.peers[nodeID] }
    func otherFarmsSeen() -> Int { core.otherFarms(now: .now, window: .seconds(30)) }

    /// Removes a peer from the table at once (used when it is denied).
    func forget(_ nodeID: String) {
        if core.table.remove(nodeID) {
            changesContinuation.yield(.removed(nodeID: nodeID))
        }
    }

    func nextBeacon(tcpPort: Int) -> [UInt8] {
        sequence += 1
        let beacon = Beacon(
            publicKey: identity.publicKey, instanceID: instanceID, sequence: sequence, timeMillis: Self.wallMillis(),
            tcpPort: UInt16(clamping: tcpPort), name: name, status: status)
        return core.sealing(beacon)
    }

    func receive(_ bytes: [UInt8], host: String) {
        let heard = core.ownBeaconsHeard
        let changes = core.onDatagram(
            bytes, host: host, now: .now, nowMillis: Self.wallMillis(), counters: counters, isDenied: isDenied)
        if core.ownBeaconsHeard != heard { noteWorking() }
        publish(changes)
        if !core.laggards.isEmpty {
            for laggard in core.laggards { laggardsContinuation.yield(laggard) }
            core.laggards = []
        }
    }

    func tick() { publish(core.table.onTick(now: .now)) }

    private func publish(_ changes: [PeerChange]) {
        for change in changes {
            switch change {
            case .added(let p):
                logger.info("peer discovered", metadata: ["mesh/peer": "\(p.nodeID)", "mesh/address": "\(p.address)"])
            case .stateChanged(let p, let from):
                logger.info("peer \(from.rawValue) -> \(p.state.rawValue)", metadata: ["mesh/peer": "\(p.nodeID)"])
            default: break
            }
            changesContinuation.yield(change)
        }
    }

    static func wallMillis() -> UInt64 { UInt64(max(0, WallClock.millis())) }

    func finish() { changesContinuation.finish() }

    /// Beacons and listens on the multicast group until cancelled; only cancellation ends it.
    ///
    /// The peer table ages on its own clock, so a network error never freezes it. The socket (bind, interface,
    /// group membership) is rebuilt after any failure of it — a beacon the kernel refuses while the link is
    /// down (SwiftNIO closes the socket on ENETUNREACH and EADDRNOTAVAIL), an interface address that vanished,
    /// a receive error — with a short backoff, until the network is back. The membership is renewed every
    /// `rejoinInterval`, in case the kernel dropped it with the interface.
    func run(tcpPort: Int, group eventLoopGroup: any EventLoopGroup) async throws {
        let settings = self.settings
        let groupAddress = try SocketAddress(ipAddress: settings.group, port: settings.port)
        var address = in_addr()
        guard inet_pton(AF_INET, settings.interface, &address) == 1 else {
            throw MeshError(.io, "The interface address '\(settings.interface)' is not an IPv4 address.")
        }
        try await withThrowingDiscardingTaskGroup { tasks in
            tasks.addTask {
                while true {
                    await self.tick()
                    try await Task.sleep(for: settings.beaconInterval)
                }
            }
            tasks.addTask {
                while true {
                    do {
                        try await self.serveSocket(tcpPort: tcpPort, groupAddress: groupAddress, eventLoopGroup)
                    } catch {
                        try Task.checkCancellation()
                        await self.noteFailure(error)
                    }
                    try Task.checkCancellation()
                    try await Task.sleep(for: await self.retryDelay())
                }
            }
        }
    }

    /// What went wrong with the discovery socket, for the log.
    struct SocketFailure: Error, CustomStringConvertible {
        var stage: String
        var cause: any Error
        var description: String { "\(stage): \(cause)" }
    }

    /// Consecutive socket failures since discovery last worked.
    private var failures = FailureRun(
        first: "discovery cannot use the network; retrying until it can", again: "discovery still without network",
        back: "discovery has the network back")
    private var listenedOnce = false

    /// Counts a failure and logs the first of a run of them.
    private func noteFailure(_ error: any Error) {
        counters.increment(.discoverySocketErrors)
        failures.failed(error, logger: logger, metadata: ["mesh/group": "\(settings.group):\(settings.port)"])
    }

    /// The socket works again: its own beacon came back (or, listening only, the group was joined). A write
    /// that returns proves nothing: the async writer only queues it.
    private func noteWorking() { failures.recovered(logger: logger) }

    /// Exponential backoff over the current run of failures, within the settings' bounds.
    private func retryDelay() -> Duration { failures.backoff(minimum: settings.retryMin, maximum: settings.retryMax) }

    /// One discovery socket, from bind to failure (or cancellation).
    private func serveSocket(tcpPort: Int, groupAddress: SocketAddress, _ eventLoopGroup: any EventLoopGroup)
        async throws
    {
        let settings = self.settings
        let sendFailure = SendFailure(counters: counters)
        let channel: NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>
        do {
            channel = try await DatagramBootstrap(group: eventLoopGroup)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelOption(
                    ChannelOptions.Types.SocketOption(
                        level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT)), value: 1
                )
                .bind(host: settings.group, port: settings.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(SendOutcomeHandler(failure: sendFailure))
                        return try NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>(
                            wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw SocketFailure(stage: "binding \(settings.group):\(settings.port)", cause: error)
        }
        try await channel.executeThenClose { inbound, outbound in
            do {
                try await Self.configureMulticast(channel.channel, settings: settings, groupAddress: groupAddress)
            } catch {
                throw SocketFailure(stage: "joining the group on \(settings.interface)", cause: error)
            }
            self.noteListening()
            try await withThrowingDiscardingTaskGroup { tasks in
                tasks.addTask {
                    do {
                        for try await envelope in inbound {
                            var data = envelope.data
                            guard data.readableBytes <= BeaconCodec.maxDatagramBytes else {
                                self.counters.increment(.beaconsGarbage)
                                continue
                            }
                            let bytes = data.readBytes(length: data.readableBytes) ?? []
                            await self.receive(bytes, host: envelope.remoteAddress.ipAddress ?? "?")
                        }
                    } catch {
                        try Task.checkCancellation()
                        throw sendFailure.explain(SocketFailure(stage: "receiving", cause: error))
                    }
                    try Task.checkCancellation()
                    throw sendFailure.explain(
                        SocketFailure(stage: "receiving", cause: MeshError(.closed, "The socket closed.")))
                }
                if settings.announce {
                    tasks.addTask {
                        while true {
                            let datagram = await self.nextBeacon(tcpPort: tcpPort)
                            do {
                                try await outbound.write(
                                    AddressedEnvelope(remoteAddress: groupAddress, data: ByteBuffer(bytes: datagram)))
                            } catch {
                                try Task.checkCancellation()
                                throw sendFailure.explain(SocketFailure(stage: "sending a beacon", cause: error))
                            }
                            try await Task.sleep(for: settings.beaconInterval)
                        }
                    }
                }
                tasks.addTask {
                    while true {
                        try await Task.sleep(for: settings.rejoinInterval)
                        let rejoined: Bool
                        do {
                            rejoined = try await Self.configureMulticast(
                                channel.channel, settings: settings, groupAddress: groupAddress, renewing: true)
                        } catch {
                            try Task.checkCancellation()
                            throw SocketFailure(stage: "renewing the group membership", cause: error)
                        }
                        if rejoined {
                            self.counters.increment(.discoveryRejoins)
                            self.logger.notice(
                                "discovery rejoined the multicast group",
                                metadata: ["mesh/group": "\(settings.group):\(settings.port)"])
                        }
                    }
                }
            }
        }
    }

    private func noteListening() {
        let metadata: Logger.Metadata = ["mesh/group": "\(settings.group):\(settings.port)"]
        if listenedOnce {
            logger.debug("discovery socket rebuilt", metadata: metadata)
        } else {
            logger.info("discovery listening", metadata: metadata)
            listenedOnce = true
        }
        if !settings.announce { noteWorking() }
    }

    /// Joins the group on the interface that owns `settings.interface`, forcing the multicast flag on `lo`
    /// (SwiftNIO refuses otherwise although the kernel accepts it), and keeps loopback farms on the host.
    /// `renewing`: the socket already joined once; being a member still (EADDRINUSE) is fine. Returns whether
    /// the group was joined now (false: it was a member already).
    @discardableResult
    static func configureMulticast(
        _ channel: Channel, settings: DiscoverySettings, groupAddress: SocketAddress, renewing: Bool = false
    ) async throws -> Bool {
        guard let provider = channel as? SocketOptionProvider else {
            throw MeshError(.io, "The discovery socket does not accept multicast options.")
        }
        var address = in_addr()
        guard inet_pton(AF_INET, settings.interface, &address) == 1 else {
            throw MeshError(.io, "The interface address '\(settings.interface)' is not an IPv4 address.")
        }
        try await provider.setIPMulticastIF(address).get()
        if !renewing {
            try await provider.setIPMulticastTTL(settings.isLoopback ? 0 : 1).get()
            try await provider.setIPMulticastLoop(1).get()
        }
        let device = try System.enumerateDevices().first { $0.address?.ipAddress == settings.interface }
        guard var device else {
            throw MeshError(.io, "No network interface has the address \(settings.interface).")
        }
        device.multicastSupported = true
        guard let multicast = channel as? MulticastChannel else {
            throw MeshError(.io, "The discovery socket cannot join multicast groups.")
        }
        do {
            try await multicast.joinGroup(groupAddress, device: device).get()
            return true
        } catch let error as IOError where renewing && error.errnoCode == EADDRINUSE {
            return false
        }
    }
}

/// The first failed send of one discovery socket. SwiftNIO closes a datagram socket whose send fails with most
/// errors (ENETUNREACH, EADDRNOTAVAIL) and tells only the write's promise, which the async writer does not
/// keep; `SendOutcomeHandler` keeps it, so the failure is counted and the log names the real cause.
final class SendFailure: Sendable {
    private let first = Mutex<(any Error)?>(nil)
    private let counters: MeshCounters

    init(counters: MeshCounters) { self.counters = counters }

    func record(_ error: any Error) {
        counters.increment(.beaconSendErrors)
        first.withLock { if $0 == nil { $0 = error } }
    }

    /// `failure`, or the send failure that closed the socket when there was one.
    func explain(_ failure: Discovery.SocketFailure) -> Discovery.SocketFailure {
        first.withLock { $0 }.map { Discovery.SocketFailure(stage: "sending a beacon", cause: $0) } ?? failure
    }
}

/// Watches every datagram write of the discovery socket and records the ones that fail.
final class SendOutcomeHandler: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>
    let failure: SendFailure

    init(failure: SendFailure) { self.failure = failure }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let promise = promise ?? context.eventLoop.makePromise()
        promise.futureResult.whenFailure { [failure] in failure.record($0) }
        context.write(data, promise: promise)
    }
}
