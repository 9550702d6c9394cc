/// A peer seen during discovery, as far as bootstrapping cares.
public struct DiscoveredPeer: Hashable, Sendable {
    public var id: NodeID
    /// True if the peer already belongs to a farm (it has a log or knows a leader).
    public var isMember: Bool

    public init(id: NodeID, isMember: Bool) {
        self.id = id
        self.isMember = isMember
    }
}

/// What a starting node should do about forming or joining a farm.
public enum BootstrapDecision: Hashable, Sendable {
    /// The node has a log already: restart Raft from storage.
    case resume
    /// Keep listening for peers until this time (the discovery window).
    case wait(until: RaftTime)
    /// Create the farm: persist `RaftInstance.bootstrapState(for:)` and run as its single member.
    case bootstrap
    /// Stay a non-voting follower with an empty log until a leader adds this node (`AddNode`).
    case join(contact: NodeID?)
}

/// Decides, as a pure function, who founds a farm when fresh nodes start together.
///
/// Every fresh node waits one discovery window; then the lowest id among the fresh nodes it can see
/// bootstraps and all others join. As long as the window covers a few beacon intervals, simultaneous starts
/// agree on the same lowest id and form exactly one farm.
public enum BootstrapPlanner {
    public static func decide(
        selfID: NodeID, hasState: Bool, peers: [DiscoveredPeer], startedAt: RaftTime, now: RaftTime,
        window: Duration
    ) -> BootstrapDecision {
        if hasState { return .resume }
        if let member = peers.filter(\.isMember).map(\.id).min() { return .join(contact: member) }
        let deadline = startedAt + window
        if now < deadline { return .wait(until: deadline) }
        let lowest = peers.map(\.id).filter { $0 != selfID }.min()
        if let lowest, lowest < selfID { return .join(contact: lowest) }
        return .bootstrap
    }

    /// What the founder persists before starting its `RaftNode`: term 1 and entry 1 = `addNode(founder)`.
    public static func foundingState(for founder: NodeID) -> PersistRequest {
        PersistRequest(
            hardState: HardState(term: 1), entries: [LogEntry(term: 1, index: 1, kind: .addNode(founder))])
    }
}
