import Testing

@testable import Election

@Suite("RaftMessage codec")
struct CodecTests {
    static let samples: [RaftMessage] = [
        .appendEntries(
            AppendEntries(
                term: 7, leaderID: "0123456789abcdef", prevLogIndex: 41, prevLogTerm: 6, leaderCommit: 40,
                entries: [
                    LogEntry(term: 7, index: 42, kind: .noop),
                    LogEntry(
                        term: 7, index: 43,
                        kind: .command(
                            RaftCommand(
                                id: CommandID(origin: "0123456789abcdef", sequence: 1 << 40),
                                payload: [0, 1, 2, 255]))),
                    LogEntry(term: 7, index: 44, kind: .addNode("fedcba9876543210")),
                    LogEntry(term: 7, index: 45, kind: .removeNode("fedcba9876543210")),
                ])),
        .appendEntries(
            AppendEntries(
                term: 1, leaderID: "a", prevLogIndex: 0, prevLogTerm: 0, leaderCommit: 0,
                entries: [])),
        .appendResponse(AppendResponse(term: UInt64.max, success: true, index: 12)),
        .appendResponse(AppendResponse(term: 3, success: false, index: 0)),
        .requestVote(VoteRequest(term: 9, candidateID: "b", lastLogIndex: 100, lastLogTerm: 8)),
        .preVote(VoteRequest(term: 10, candidateID: "b", lastLogIndex: 100, lastLogTerm: 8)),
        .voteResponse(VoteResponse(term: 9, granted: true, preVote: false)),
        .voteResponse(VoteResponse(term: 10, granted: false, preVote: true)),
    ]

    @Test(arguments: samples)
    func everyMessageRoundTrips(_ message: RaftMessage) throws {
        let bytes = message.encode()
        #expect(bytes[0] == 1, "first byte is the codec version")
        #expect(try RaftMessage(bytes: bytes) == message)
    }

    @Test(arguments: samples)
    func everyTruncationIsRejected(_ message: RaftMessage) {
        let bytes = message.encode()
        for length in 0..<bytes.count {
            #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: Array(bytes[..<length])) }
        }
    }

    @Test func trailingBytesUnknownVersionsAndTagsAreRejected() {
        let valid = CodecTests.samples[4].encode()
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: valid + [0]) }
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: [2] + valid.dropFirst()) }
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: [1, 99]) }
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: []) }
    }

    @Test func overlongVarintsHugeLengthsAndBadUTF8AreRejected() {
        // requestVote with a term varint of 11 continuation bytes.
        #expect(throws: RaftCodecError.self) {
            try RaftMessage(bytes: [1, 3] + [UInt8](repeating: 0xFF, count: 10) + [0x01, 1, 0x61, 0, 0])
        }
        // Non-minimal varint (0x80 0x00 encodes 0 in two bytes).
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: [1, 2, 0x80, 0x00, 1, 0]) }
        // Candidate id claims 2^32 bytes.
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: [1, 3, 1, 0x80, 0x80, 0x80, 0x80, 0x10]) }
        // Invalid UTF-8 in the candidate id.
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: [1, 3, 1, 1, 0xFF, 0, 0]) }
        // Entry count larger than the remaining bytes could hold.
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: [1, 1, 1, 1, 0x61, 0, 0, 0, 0xFF, 0x7F]) }
        // A boolean that is neither 0 nor 1.
        #expect(throws: RaftCodecError.self) { try RaftMessage(bytes: [1, 2, 1, 7, 0]) }
    }

    @Test func randomGarbageNeverTrapsAndMutationsEitherFailOrReEncodeExactly() {
        var rng = SplitMix64(seed: 2026)
        for _ in 0..<20_000 {
            let length = Int(rng.next() % 64)
            let bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if let message = try? RaftMessage(bytes: bytes) {
                #expect(message.encode() == bytes, "a decoded message must re-encode to the same bytes")
            }
        }
        for sample in CodecTests.samples {
            let bytes = sample.encode()
            for _ in 0..<500 {
                var mutated = bytes
                mutated[Int(rng.next() % UInt64(bytes.count))] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
                if let message = try? RaftMessage(bytes: mutated) {
                    #expect(message.encode() == mutated)
                }
            }
        }
    }

    @Test func entryKindBlobRoundTripsForStorage() throws {
        let kinds: [EntryKind] = [
            .noop, .addNode("x"), .removeNode("y"), .addLearner("l"), .promote("p"), .demote("d"),
            .command(RaftCommand(id: CommandID(origin: "o", sequence: 3), payload: Array(repeating: 9, count: 1000))),
        ]
        for kind in kinds {
            #expect(try EntryKind(bytes: kind.encode()) == kind)
        }
        #expect(throws: RaftCodecError.self) { try EntryKind(bytes: [4]) }
    }
}

@Suite("Bootstrap")
struct BootstrapTests {
    let window = Duration.seconds(3)

    @Test func fiveFreshNodesStartingTogetherFormExactlyOneFarm() {
        let ids = ["9f00000000000000", "0a00000000000000", "5500000000000000", "0a00000000000001", "ff00000000000000"]
        var founders: [NodeID] = []
        var joiners: [NodeID] = []
        for id in ids {
            let peers = ids.filter { $0 != id }.map { DiscoveredPeer(id: $0, isMember: false) }
            switch BootstrapPlanner.decide(
                selfID: id, hasState: false, peers: peers, startedAt: .milliseconds(0),
                now: .milliseconds(3_000), window: window)
            {
            case .bootstrap: founders.append(id)
            case .join(let contact):
                joiners.append(id)
                #expect(contact == "0a00000000000000")
            default: Issue.record("unexpected decision for \(id)")
            }
        }
        #expect(founders == ["0a00000000000000"])
        #expect(joiners.count == 4)
    }

    @Test func freshNodeWaitsForTheDiscoveryWindow() {
        let decision = BootstrapPlanner.decide(
            selfID: "a", hasState: false, peers: [], startedAt: .milliseconds(1_000), now: .milliseconds(2_000),
            window: window)
        #expect(decision == .wait(until: .milliseconds(4_000)))
    }

    @Test func freshNodeThatSeesAnExistingFarmJoinsItEvenWithTheLowestID() {
        let decision = BootstrapPlanner.decide(
            selfID: "0000", hasState: false, peers: [DiscoveredPeer(id: "ffff", isMember: true)],
            startedAt: .milliseconds(0), now: .milliseconds(0), window: window)
        #expect(decision == .join(contact: "ffff"))
    }

    @Test func aloneAfterTheWindowBootstraps() {
        let decision = BootstrapPlanner.decide(
            selfID: "a", hasState: false, peers: [], startedAt: .milliseconds(0), now: .milliseconds(3_000),
            window: window)
        #expect(decision == .bootstrap)
    }

    @Test func nodeWithStateResumes() {
        let decision = BootstrapPlanner.decide(
            selfID: "a", hasState: true, peers: [], startedAt: .milliseconds(0), now: .milliseconds(0), window: window)
        #expect(decision == .resume)
    }

    @Test func bootstrapStateMakesTheFounderTheOnlyMember() {
        let state = Instance.bootstrapState(for: "f")
        let node = Instance(
            id: "f", hardState: state.hardState!, log: state.entries, random: SplitMix64(seed: 1),
            now: .milliseconds(0))
        #expect(node.members == ["f"])
        #expect(node.currentTerm == 1)
    }
}
