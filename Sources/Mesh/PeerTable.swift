/// Liveness of a peer as seen through its beacons.
public enum PeerState: String, Sendable, Equatable, Codable {
    case alive, suspect, dead
}

/// One row of the peer table: what the daemon shows in `rexnode peers` and what the mesh dials.
public struct PeerInfo: Sendable, Equatable {
    public var nodeID: String
    public var publicKey: [UInt8]
    public var name: String
    /// Source address of the beacon and the advertised TCP port, as "host:port".
    public var host: String
    public var port: Int
    public var state: PeerState
    public var status: [UInt8]
    public var lastSeen: ContinuousClock.Instant
    public var instanceID: UInt64

    public var address: String { "\(host):\(port)" }
}

/// A change in the peer table, streamed to the daemon so it never has to poll.
public enum PeerChange: Sendable, Equatable {
    /// First beacon from this node.
    case added(PeerInfo)
    /// Address, name, status or instance changed (state unchanged).
    case updated(PeerInfo)
    /// Liveness changed (alive ↔ suspect → dead, or dead → alive when it comes back).
    case stateChanged(PeerInfo, from: PeerState)
    /// Dead long enough to be forgotten.
    case removed(nodeID: String)

    public var peer: PeerInfo? {
        switch self {
        case .added(let p), .updated(let p), .stateChanged(let p, _): p
        case .removed: nil
        }
    }
}

/// Failure detection as a pure state machine: beacons and ticks in, changes out; `now` is injected.
///
/// A peer not heard from for `suspectAfter` is suspect, for `deadAfter` dead, and forgotten after
/// `forgetAfter`. Only authenticated, non-replayed beacons reach it, so it never holds phantom peers.
public struct PeerTable: Sendable {
    /// Liveness thresholds; short in tests, seconds on a real farm.
    public struct Settings: Sendable, Equatable {
        public var suspectAfter: Duration = .seconds(3)
        public var deadAfter: Duration = .seconds(10)
        public var forgetAfter: Duration = .seconds(300)
        public init(
            suspectAfter: Duration = .seconds(3), deadAfter: Duration = .seconds(10),
            forgetAfter: Duration = .seconds(300)
        ) {
            self.suspectAfter = suspectAfter
            self.deadAfter = deadAfter
            self.forgetAfter = forgetAfter
        }
    }

    public var settings: Settings
    public private(set) var peers: [String: PeerInfo] = [:]

    public init(settings: Settings = Settings()) { self.settings = settings }

    /// An authenticated, fresh beacon from `host`.
    public mutating func onBeacon(_ beacon: Beacon, host: String, now: ContinuousClock.Instant) -> [PeerChange] {
        let id = beacon.nodeID
        guard var peer = peers[id] else {
            let peer = PeerInfo(
                nodeID: id, publicKey: beacon.publicKey, name: beacon.name, host: host, port: Int(beacon.tcpPort),
                state: .alive, status: beacon.status, lastSeen: now, instanceID: beacon.instanceID)
            peers[id] = peer
            return [.added(peer)]
        }
        var changes: [PeerChange] = []
        let before = peer
        peer.lastSeen = max(peer.lastSeen, now)
        peer.name = beacon.name
        peer.host = host
        peer.port = Int(beacon.tcpPort)
        peer.status = beacon.status
        peer.instanceID = beacon.instanceID
        peer.publicKey = beacon.publicKey
        if peer.state != .alive {
            peer.state = .alive
            changes.append(.stateChanged(peer, from: before.state))
        } else if peer.name != before.name || peer.address != before.address || peer.status != before.status
            || peer.instanceID != before.instanceID
        {
            changes.append(.updated(peer))
        }
        peers[id] = peer
        return changes
    }

    /// Periodic check: moves silent peers to suspect, then dead, then forgets them.
    public mutating func onTick(now: ContinuousClock.Instant) -> [PeerChange] {
        var changes: [PeerChange] = []
        for id in peers.keys.sorted() {
            guard var peer = peers[id] else { continue }
            let silent = now - peer.lastSeen
            if silent >= settings.forgetAfter {
                peers[id] = nil
                changes.append(.removed(nodeID: id))
                continue
            }
            let target: PeerState =
                silent >= settings.deadAfter ? .dead : (silent >= settings.suspectAfter ? .suspect : .alive)
            if target != peer.state, target != .alive {
                let from = peer.state
                peer.state = target
                peers[id] = peer
                changes.append(.stateChanged(peer, from: from))
            }
        }
        return changes
    }

    /// Drops a peer at once (for example when its identity is removed from the farm).
    public mutating func remove(_ nodeID: String) -> Bool { peers.removeValue(forKey: nodeID) != nil }

    /// Snapshot sorted by node id.
    public var snapshot: [PeerInfo] { peers.values.sorted { $0.nodeID < $1.nodeID } }
}
