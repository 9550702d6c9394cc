import Foundation
import Logging
import NIOCore
import NIOPosix

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
    let codec: BeaconCodec
    var replay: ReplayGuard
    var table: PeerTable
    let ownKey: [UInt8]
    /// Other farms' fingerprints and when each was last heard (bounded).
    var foreign: [[UInt8]: ContinuousClock.Instant] = [:]
    static let maxForeign = 64

    init(farmKey: FarmKey, ownKey: [UInt8], settings: DiscoverySettings) {
        codec = BeaconCodec(farmKey: farmKey)
        replay = ReplayGuard(timeWindowMillis: UInt64(settings.timeWindow.components.seconds) * 1000)
        table = PeerTable(settings: settings.peerTable)
        self.ownKey = ownKey
    }

    mutating func onDatagram(
        _ bytes: [UInt8], host: String, now: ContinuousClock.Instant, nowMillis: UInt64, counters: MeshCounters,
        isDenied: ([UInt8]) -> Bool
    ) -> [PeerChange] {
        switch codec.open(bytes) {
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
                return []
            }
            if isDenied(beacon.publicKey) {
                counters.increment(.beaconsDenied)
                return []
            }
            switch replay.check(beacon, nowMillis: nowMillis) {
            case .replayed:
                counters.increment(.beaconsReplayed)
            case .stale:
                counters.increment(.beaconsStale)
            case .fresh:
                counters.increment(.beaconsAccepted)
                return table.onBeacon(beacon, host: host, now: now)
            }
        }
        return []
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
    private let instanceID = UInt64.random(in: 1...UInt64.max)
    private var sequence: UInt64 = 0
    private var name: String
    private var status: [UInt8] = []
    private var isDenied: @Sendable ([UInt8]) -> Bool = { _ in false }
    let changes: AsyncStream<PeerChange>
    private let changesContinuation: AsyncStream<PeerChange>.Continuation

    init(
        settings: DiscoverySettings, farmKey: FarmKey, identity: NodeIdentity, name: String, counters: MeshCounters,
        logger: Logger
    ) {
        self.settings = settings
        self.identity = identity
        self.counters = counters
        self.logger = logger
        self.name = name
        core = DiscoveryCore(farmKey: farmKey, ownKey: identity.publicKey, settings: settings)
        (changes, changesContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1024))
    }

    func setStatus(_ bytes: [UInt8]) { status = Array(bytes.prefix(Beacon.maxStatusBytes)) }
    func setName(_ name: String) { self.name = name }
    func setDenyList(_ denied: @escaping @Sendable ([UInt8]) -> Bool) { isDenied = denied }
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
        return core.codec.seal(beacon)
    }

    func receive(_ bytes: [UInt8], host: String) {
        let changes = core.onDatagram(
            bytes, host: host, now: .now, nowMillis: Self.wallMillis(), counters: counters, isDenied: isDenied)
        publish(changes)
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

    /// Binds the group port (shared with other nodes on the host), joins the group, then beacons and listens
    /// until cancelled.
    func run(tcpPort: Int, group eventLoopGroup: any EventLoopGroup) async throws {
        let settings = self.settings
        let groupAddress = try SocketAddress(ipAddress: settings.group, port: settings.port)
        let channel = try await DatagramBootstrap(group: eventLoopGroup)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(
                ChannelOptions.Types.SocketOption(
                    level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT)), value: 1
            )
            .bind(host: settings.group, port: settings.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>(
                        wrappingChannelSynchronously: channel)
                }
            }
        try await channel.executeThenClose { inbound, outbound in
            try await Self.configureMulticast(channel.channel, settings: settings, groupAddress: groupAddress)
            logger.info("discovery listening", metadata: ["mesh/group": "\(settings.group):\(settings.port)"])
            try await withThrowingDiscardingTaskGroup { tasks in
                tasks.addTask {
                    for try await envelope in inbound {
                        var data = envelope.data
                        guard data.readableBytes <= BeaconCodec.maxDatagramBytes else {
                            self.counters.increment(.beaconsGarbage)
                            continue
                        }
                        let bytes = data.readBytes(length: data.readableBytes) ?? []
                        await self.receive(bytes, host: envelope.remoteAddress.ipAddress ?? "?")
                    }
                }
                tasks.addTask {
                    while !Task.isCancelled {
                        if settings.announce {
                            let datagram = await self.nextBeacon(tcpPort: tcpPort)
                            try await outbound.write(
                                AddressedEnvelope(remoteAddress: groupAddress, data: ByteBuffer(bytes: datagram)))
                        }
                        await self.tick()
                        try await Task.sleep(for: settings.beaconInterval)
                    }
                }
            }
        }
    }

    /// Joins the group on the interface that owns `settings.interface`, forcing the multicast flag on `lo`
    /// (SwiftNIO refuses otherwise although the kernel accepts it), and keeps loopback farms on the host.
    static func configureMulticast(_ channel: Channel, settings: DiscoverySettings, groupAddress: SocketAddress)
        async throws
    {
        guard let provider = channel as? SocketOptionProvider else {
            throw MeshError(.io, "The discovery socket does not accept multicast options.")
        }
        var address = in_addr()
        guard inet_pton(AF_INET, settings.interface, &address) == 1 else {
            throw MeshError(.io, "The interface address '\(settings.interface)' is not an IPv4 address.")
        }
        try await provider.setIPMulticastIF(address).get()
        try await provider.setIPMulticastTTL(settings.isLoopback ? 0 : 1).get()
        try await provider.setIPMulticastLoop(1).get()
        let device = try System.enumerateDevices().first { $0.address?.ipAddress == settings.interface }
        guard var device else {
            throw MeshError(.io, "No network interface has the address \(settings.interface).")
        }
        device.multicastSupported = true
        guard let multicast = channel as? MulticastChannel else {
            throw MeshError(.io, "The discovery socket cannot join multicast groups.")
        }
        try await multicast.joinGroup(groupAddress, device: device).get()
    }
}
