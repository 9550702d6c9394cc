import Synchronization

/// Everything the mesh dropped or refused, by reason: hostile input must show up here, never as a crash; so do
/// the network errors it rode out (a failed beacon send, a discovery socket rebuilt, a listener bound again).
public enum MeshCounter: String, Sendable, CaseIterable {
    case beaconsAccepted, beaconsGarbage, beaconsBadAuth, beaconsReplayed, beaconsStale, beaconsOtherFarm
    case beaconsDenied, beaconsOwn, beaconSendErrors, discoverySocketErrors, discoveryRejoins
    case connectionsAccepted, connectionsRefused, connectionsDialed, handshakeFailures, handshakeTimeouts, peersDenied
    case framesTooLarge, framesUndecryptable, messagesMalformed, connectionErrors, listenerErrors
    case blobChunksRejected, blobChunksFetched, controlRequestsServed
    /// Raft messages: handed straight to the layer above, sent, or dropped (no connection, or the peer's socket
    /// is backed up: Raft treats both as a lost message and retries).
    case raftReceived, raftSent, raftDroppedUnconnected, raftDroppedBackedUp
    /// Key epochs: beacons of an older epoch dropped (or answered with a key hand-over), keys handed to laggards.
    case beaconsOldEpoch, keysHandedOver
}

/// Thread-safe counters shared by the discovery socket, every connection pipeline and the facade.
public final class MeshCounters: Sendable {
    private let values = Mutex<[MeshCounter: Int]>([:])

    public init() {}

    public func increment(_ counter: MeshCounter, by n: Int = 1) {
        values.withLock { $0[counter, default: 0] += n }
    }

    public subscript(_ counter: MeshCounter) -> Int { values.withLock { $0[counter, default: 0] } }

    /// All counters, zeros included, keyed by name (for JSON and logs).
    public var snapshot: [String: Int] {
        values.withLock { v in
            Dictionary(uniqueKeysWithValues: MeshCounter.allCases.map { ($0.rawValue, v[$0, default: 0]) })
        }
    }
}
