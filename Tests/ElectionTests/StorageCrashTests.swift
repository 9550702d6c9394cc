import Foundation
import GRDB
import Ledger
import Testing

@testable import Election

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Child process helper

/// `raftbench storage-crash-child`: a real RaftInstance on a real SQLite file, spoken to line by line.
final class CrashChild {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var buffer: [UInt8] = []

    static func binary() -> URL? {
        let fm = FileManager.default
        var candidates: [URL] = []
        // The test bundle sits next to the package's executables in the build directory.
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = runner.deletingLastPathComponent()
        for _ in 0..<4 {
            candidates.append(dir.appendingPathComponent("raftbench"))
            dir = dir.deletingLastPathComponent()
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/debug/raftbench"))
        return candidates.first { fm.isExecutableFile(atPath: $0.path) }
    }

    init(db: String, extra: [String] = []) throws {
        guard let binary = Self.binary() else {
            throw RaftStorageError("raftbench is not built; run `swift build` (it hosts the crash child)")
        }
        process.executableURL = binary
        process.arguments = ["storage-crash-child", "--db", db] + extra
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        let ready = try readLine()
        guard ready == "ready" else { throw RaftStorageError("child said \(ready ?? "nothing") instead of ready") }
    }

    func send(_ message: RaftMessage, from: NodeID) {
        let line = "msg \(from) \(hex(message.encode()))\n"
        try? input.fileHandleForWriting.write(contentsOf: Data(line.utf8))
    }

    func requestStatus() throws -> [String] {
        try? input.fileHandleForWriting.write(contentsOf: Data("status\n".utf8))
        guard let line = try readLine(), line.hasPrefix("status ") else { throw RaftStorageError("no status") }
        return line.split(separator: " ").map(String.init)
    }

    /// Reads the next reply message, or nil when the child died.
    func readReply() throws -> RaftMessage? {
        guard let line = try readLine() else { return nil }
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[0] == "send", let bytes = unhex(String(parts[2])) else {
            throw RaftStorageError("unexpected child output: \(line)")
        }
        return try RaftMessage(bytes: bytes)
    }

    func readLine(timeoutMs: Int32 = 20_000) throws -> String? {
        let fd = output.fileHandleForReading.fileDescriptor
        while true {
            if let newline = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, timeoutMs)
            if ready == 0 { throw RaftStorageError("child did not answer within \(timeoutMs) ms") }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return nil }
            buffer.append(contentsOf: chunk[..<n])
        }
    }

    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func close() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }

    private func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    private func unhex(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            guard let byte = UInt8(text[index..<next], radix: 16) else { return nil }
            out.append(byte)
            index = next
        }
        return out
    }
}

private func temporaryDatabase(_ name: String) -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("raft-tests-\(getpid())-\(name)")
    try? FileManager.default.removeItem(at: dir)
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent("node.sqlite").path
}

private func append(term: Term, prev: LogIndex, prevTerm: Term, count: Int, commit: LogIndex = 0) -> RaftMessage {
    let entries = (0..<count).map {
        LogEntry(
            term: term, index: prev + LogIndex($0) + 1,
            kind: .command(
                RaftCommand(
                    id: CommandID(origin: "leader", sequence: prev + LogIndex($0) + 1), payload: [UInt8($0 & 0xFF)])))
    }
    return .appendEntries(
        AppendEntries(
            term: term, leaderID: "leader", prevLogIndex: prev, prevLogTerm: prevTerm, leaderCommit: commit,
            entries: entries))
}

// MARK: - SQLite storage

@Suite("RaftLogStore on SQLite")
struct RaftLogStoreTests {
    @Test func hardStateAndLogSurviveReopeningWithTruncation() async throws {
        let path = temporaryDatabase("reopen")
        do {
            let store = try RaftLogStore.openStandalone(path: path)
            try store.persist(
                PersistRequest(
                    hardState: HardState(term: 3, votedFor: "n1"),
                    entries: (1...5).map { LogEntry(term: 2, index: $0, kind: .noop) }))
            try store.persist(
                PersistRequest(truncateFrom: 4, entries: [LogEntry(term: 3, index: 4, kind: .addNode("n9"))]))
        }
        let reopened = try RaftLogStore.openStandalone(path: path)
        let stored = try await reopened.load()
        let (hard, log) = (stored.hardState, stored.log)
        #expect(hard == HardState(term: 3, votedFor: "n1"))
        #expect(log.map(\.index) == [1, 2, 3, 4])
        #expect(log.last == LogEntry(term: 3, index: 4, kind: .addNode("n9")))
    }

    @Test func entriesAndHardStateCanBeReadForTheLedgerCommand() throws {
        let store = try RaftLogStore.openStandalone(path: temporaryDatabase("read"))
        #expect(try store.hardState() == HardState())
        try store.persist(
            PersistRequest(
                hardState: HardState(term: 4, votedFor: "v"),
                entries: (1...10).map { LogEntry(term: 4, index: $0, kind: .addNode("n\($0)")) }))
        #expect(try store.hardState() == HardState(term: 4, votedFor: "v"))
        #expect(try store.entries(from: 8).map(\.index) == [8, 9, 10])
        #expect(try store.entries(from: 2, limit: 2) == [
            LogEntry(term: 4, index: 2, kind: .addNode("n2")), LogEntry(term: 4, index: 3, kind: .addNode("n3")),
        ])
    }

    @Test func migrationsCanJoinAnotherModulesMigrator() throws {
        let path = temporaryDatabase("migrator")
        let pool = try GRDBPoolFactory.pool(path)
        var migrator = GRDBPoolFactory.migrator()
        RaftLogStore.registerMigrations(&migrator)
        try migrator.migrate(pool)
        let store = RaftLogStore(writer: pool)
        try store.persist(PersistRequest(hardState: HardState(term: 1)))
        #expect(try store.loadNow().hardState.term == 1)
        #expect(try GRDBPoolFactory.tables(pool).isSuperset(of: ["raft_hard_state", "raft_log"]))
    }

    @Test func inMemoryStorageRejectsAGapInTheLog() async throws {
        let storage = InMemoryRaftStorage()
        #expect(throws: RaftStorageError.self) {
            try storage.persist(PersistRequest(entries: [LogEntry(term: 1, index: 2, kind: .noop)]))
        }
        try storage.persist(PersistRequest(entries: [LogEntry(term: 1, index: 1, kind: .noop)]))
        #expect(try await storage.load().log.count == 1)
    }
}

// MARK: - Crash tests with kill -9

@Suite("Durability under kill -9", .serialized)
struct CrashTests {
    @Test func voteSurvivesAKillBetweenPersistingAndReplying() throws {
        let db = temporaryDatabase("vote")
        let child = try CrashChild(db: db, extra: ["--die-after-persist", "1"])
        child.send(.requestVote(VoteRequest(term: 5, candidateID: "a", lastLogIndex: 0, lastLogTerm: 0)), from: "a")
        #expect(try child.readReply() == nil, "the child dies before it can reply")
        child.process.waitUntilExit()
        #expect(child.process.terminationReason == .uncaughtSignal)
        #expect(child.process.terminationStatus == SIGKILL)

        let hard = try RaftLogStore.openStandalone(path: db).loadNow().hardState
        #expect(hard == HardState(term: 5, votedFor: "a"))

        // The restarted node resumes with its vote: a rival candidate in the same term is refused.
        let restarted = try CrashChild(db: db)
        restarted.send(.requestVote(VoteRequest(term: 5, candidateID: "b", lastLogIndex: 9, lastLogTerm: 4)), from: "b")
        #expect(try restarted.readReply() == .voteResponse(VoteResponse(term: 5, granted: false, preVote: false)))
        #expect(try restarted.requestStatus() == ["status", "5", "a", "0", "0"])
        restarted.close()
    }

    @Test func entriesSurviveAKillBetweenPersistingAndReplying() throws {
        let db = temporaryDatabase("entries")
        let child = try CrashChild(db: db, extra: ["--die-after-persist", "1"])
        child.send(append(term: 2, prev: 0, prevTerm: 0, count: 3), from: "leader")
        #expect(try child.readReply() == nil)
        child.process.waitUntilExit()
        #expect(child.process.terminationStatus == SIGKILL)

        let restarted = try CrashChild(db: db)
        #expect(try restarted.requestStatus() == ["status", "2", "-", "3", "2"])
        // The leader repeats the same append: the restarted follower already has it and acknowledges.
        restarted.send(append(term: 2, prev: 0, prevTerm: 0, count: 3), from: "leader")
        #expect(try restarted.readReply() == .appendResponse(AppendResponse(term: 2, success: true, index: 3)))
        restarted.close()
    }

    @Test func randomKillsNeverLoseAnAcknowledgedEntryOrVote() throws {
        let db = temporaryDatabase("random")
        var rng = SplitMix64(seed: 99)
        var acknowledgedIndex: LogIndex = 0
        var grantedVote: (Term, NodeID)?
        var term: Term = 1
        for round in 0..<6 {
            let child = try CrashChild(db: db, extra: ["--pause-after-persist-ms", "3"])
            let status = try child.requestStatus()
            let lastIndex = LogIndex(status[3])!
            let lastTerm = Term(status[4])!
            // Nothing acknowledged before a kill may be missing after it.
            #expect(lastIndex >= acknowledgedIndex, "round \(round): lost acknowledged entries")
            if let (voteTerm, candidate) = grantedVote {
                let storedTerm = Term(status[1])!
                #expect(
                    storedTerm > voteTerm || (storedTerm == voteTerm && status[2] == candidate),
                    "round \(round): lost a granted vote")
            }
            term = max(term, Term(status[1])!) + 1
            // A candidate asks for a vote in a new term.
            child.send(
                .requestVote(
                    VoteRequest(
                        term: term, candidateID: "c\(round)", lastLogIndex: lastIndex,
                        lastLogTerm: lastTerm)), from: "c\(round)")
            if case .voteResponse(let r)? = try child.readReply(), r.granted { grantedVote = (term, "c\(round)") }
            term += 1
            var prev = lastIndex
            var prevTerm = lastTerm
            let sends = 5 + Int(rng.next() % 20)
            for k in 0..<sends {
                child.send(
                    append(term: term, prev: prev, prevTerm: prevTerm, count: 1 + Int(rng.next() % 4)),
                    from: "leader")
                if k == sends - 1 {
                    usleep(UInt32(rng.next() % 4_000))
                    child.kill9()
                    break
                }
                guard case .appendResponse(let r)? = try child.readReply() else { break }
                #expect(r.success)
                acknowledgedIndex = max(acknowledgedIndex, r.index)
                prev = r.index
                prevTerm = term
            }
        }
        let stored = try RaftLogStore.openStandalone(path: db).loadNow()
        let (hard, log) = (stored.hardState, stored.log)
        #expect(LogIndex(log.count) >= acknowledgedIndex)
        #expect(hard.term >= term - 1)
    }
}

// MARK: - GRDB access for the migrator test

enum GRDBPoolFactory {
    static func pool(_ path: String) throws -> DatabasePool {
        try DatabasePool(path: path)
    }

    static func migrator() -> DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("ledger_v1") { db in
            try db.execute(sql: "CREATE TABLE ledger_example (id INTEGER PRIMARY KEY)")
        }
        return migrator
    }

    static func tables(_ pool: DatabasePool) throws -> Set<String> {
        try pool.read { db in
            Set(try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table'"))
        }
    }
}
