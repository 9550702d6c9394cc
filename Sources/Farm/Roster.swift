import Election
import Mesh

/// Who is in the farm and who can work now: the Raft membership crossed with what discovery sees.
struct Roster: Sendable {
    let nodeID: String
    let slots: Int
    let raft: RaftNode
    let mesh: MeshNode
    /// This node's tags and whether it rests now (outside its schedule).
    var tags: [String] = []
    var rest = RestState()
    /// This node's disk: nearly full, it takes no work.
    var disk = DiskState()
    /// The Blender versions this node renders with (empty with the simulated renderer).
    var blender: [String] = []

    /// Whether `node` is a member of the farm now and discovery hears it (this node: whether it is a member).
    func isLiveMember(_ node: String) async -> Bool {
        guard let members = await raft.status?.members, members.contains(node) else { return false }
        if node == nodeID { return true }
        return await mesh.peers().contains { $0.nodeID == node && $0.state == .alive }
    }

    /// Whether this node takes new frames now: not resting outside its schedule, not short of disk.
    var takesWork: Bool { !rest.isResting && !disk.isFull }

    /// Members that can take work now, with their render slots (this node's from its settings); a node resting
    /// outside its schedule has none.
    func renderSlots() async -> [(node: String, slots: Int)] {
        let members = await raft.status?.members ?? [nodeID]
        var result: [(String, Int)] = []
        if members.contains(nodeID) || members.isEmpty { result.append((nodeID, takesWork ? slots : 0)) }
        for peer in await mesh.peers() where peer.state == .alive && members.contains(peer.nodeID) {
            let announced = NodeStatus(bytes: peer.status)
            let away = announced?.restingUntilMs != nil || announced?.diskFull == true
            result.append((peer.nodeID, away ? 0 : announced?.slots ?? 1))
        }
        return result
    }

    /// The tags of each member discovery does not know dead, this node's from its settings (for the scheduler, the
    /// failed-frame rule and `submit`'s warning).
    func memberTags() async -> [String: Set<String>] {
        let members = await raft.status?.members ?? [nodeID]
        var result: [String: Set<String>] = [nodeID: Set(tags)]
        for peer in await mesh.peers() where peer.state != .dead && members.contains(peer.nodeID) {
            result[peer.nodeID] = Set(NodeStatus(bytes: peer.status)?.tags ?? [])
        }
        return result
    }

    /// The Blender versions of every member that can take work now (this node's from its runtimes, the others' from
    /// their beacons), by node id.
    func blenderVersions() async -> [String: [String]] {
        let members = await raft.status?.members ?? [nodeID]
        var result: [String: [String]] = [:]
        if members.contains(nodeID) || members.isEmpty { result[nodeID] = blender }
        for peer in await mesh.peers() where peer.state == .alive && members.contains(peer.nodeID) {
            result[peer.nodeID] = NodeStatus(bytes: peer.status)?.blender ?? []
        }
        return result
    }

    /// Other members that render and are not known dead (a suspect one, quiet for a moment under load, still
    /// counts): who else may take a frame that failed here.
    func otherWorkers() async -> Set<String> {
        let members = await raft.status?.members ?? []
        return Set(
            await mesh.peers().filter {
                $0.state != .dead && members.contains($0.nodeID) && (NodeStatus(bytes: $0.status)?.slots ?? 1) > 0
            }.map(\.nodeID))
    }

    /// Members this node can reach now (for copies of images), excluding itself.
    func alivePeers() async -> [String] {
        let members = await raft.status?.members ?? []
        return await mesh.peers().filter { $0.state == .alive && members.contains($0.nodeID) }.map(\.nodeID)
    }

    /// Whether the farm has a member besides this node.
    func hasOtherMembers() async -> Bool {
        !(await raft.status?.members ?? []).subtracting([nodeID]).isEmpty
    }

    /// This node's role as `peers` and beacons name it: a node that is not a member yet is joining; a member asking
    /// for pre-votes is a candidate (it has not raised its term, but it has lost its leader).
    func role(in status: RaftStatus?) -> NodeStatus.Role {
        guard let status, status.members.contains(nodeID) || status.role == .leader else { return .joining }
        switch status.role {
        case .leader: return .leader
        case .candidate, .preCandidate: return .candidate
        case .follower: return .follower
        }
    }
}
