import Foundation
import Ledger
import Logging
import Render
import Testing

@testable import Farm

/// A `CommandLog` that applies straight to a ledger: the submit use case without Raft, sockets or processes.
actor DirectCommandLog: CommandLog {
    let ledger: LedgerStore
    private var index: UInt64
    private var seq: UInt64 = 0
    private(set) var proposed: [LedgerCommand] = []

    init(ledger: LedgerStore) throws {
        self.ledger = ledger
        index = try ledger.appliedIndex()
    }

    func propose(_ commands: [LedgerCommand]) async throws -> [ApplyOutcome] {
        proposed += commands
        let rows = commands.map { command -> (index: UInt64, term: UInt64, entry: LedgerEntry) in
            index += 1
            seq += 1
            return (index, 1, LedgerEntry(id: CommandID(node: "test", seq: seq), command: command))
        }
        return try await ledger.applyAsync(rows)
    }

    func currentTerm() async -> UInt64 { 1 }
    func isLeader() async -> Bool { true }
}

@Suite("SubmitService")
struct SubmitServiceTests {
    struct Fixture {
        let dir: String
        let ledger: LedgerStore
        let blobs: BlobStore
        let log: DirectCommandLog
        let service: SubmitService
        let inFlight = ScenesInFlight()

        init() throws {
            dir = NSTemporaryDirectory() + "rex-submit-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            ledger = try LedgerStore(path: dir + "/ledger.sqlite")
            blobs = try BlobStore(root: dir + "/blobs")
            log = try DirectCommandLog(ledger: ledger)
            var settings = NodeSettings(data: DataDirectory(dir), name: "n1")
            settings.renderer = .simulated(milliseconds: 0)
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            service = SubmitService(
                nodeID: "node-a", settings: settings, blobs: blobs,
                work: WorkFolders(root: dir + "/work", blobs: blobs),
                blenders: [], commandLog: log, ledger: ledger, inFlight: inFlight, progress: SubmitProgress(),
                logger: logger)
        }

        func scene(_ bytes: [UInt8] = Array("BLENDER-v304".utf8) + Array(repeating: 1, count: 4096)) -> String {
            let path = dir + "/scene-\(UUID().uuidString.prefix(6)).blend"
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
            return path
        }
    }

    @Test func aJobIsStoredByContentAndCommittedWithItsFrames() async throws {
        let f = try Fixture()
        let path = f.scene()
        let job = try await f.service.submit(
            SubmitRequest(path: path, frames: "1-10x3", chunk: 2, output: f.dir + "/out", name: "shot", priority: 5)
        ).record
        #expect(job.name == "shot")
        #expect(job.framesTotal == 4)
        #expect(job.priority == 5)
        #expect(job.submitter == "node-a")
        #expect(try BlobStore.hash(fileAt: path) == job.blendHash)
        #expect(f.blobs.has(job.blendHash))
        #expect(try f.ledger.frames(of: job.job).map(\.frame) == [1, 4, 7, 10])
        #expect(FileManager.default.fileExists(atPath: f.dir + "/out"))
        // The job no longer needs the user's file.
        try FileManager.default.removeItem(atPath: path)
        #expect(f.blobs.has(job.blendHash))
        #expect(f.inFlight.all.isEmpty)
    }

    @Test func badInputIsRefusedInOneSentenceAndNothingIsProposed() async throws {
        let f = try Fixture()
        let cases: [(SubmitRequest, String)] = [
            (SubmitRequest(path: f.dir + "/missing.blend", frames: "1", output: f.dir + "/o"), "does not exist"),
            (
                SubmitRequest(path: f.scene(Array("hello world!".utf8)), frames: "1", output: f.dir + "/o"),
                "not a Blender"
            ),
            (SubmitRequest(path: f.scene(), frames: "5-1", output: f.dir + "/o"), "backwards"),
            (SubmitRequest(path: f.scene(), frames: "1-3", chunk: 0, output: f.dir + "/o"), "--chunk"),
            (SubmitRequest(path: f.scene(), frames: nil, output: f.dir + "/o"), "--frames"),
        ]
        for (request, words) in cases {
            do {
                _ = try await f.service.submit(request)
                Issue.record("accepted \(request)")
            } catch let error as FarmError {
                #expect(error.message.contains(words), "\(error.message)")
                #expect(!error.message.contains("\n"))
            }
        }
        #expect(await f.log.proposed.isEmpty)
        #expect(try f.ledger.jobs().isEmpty)
    }
}
