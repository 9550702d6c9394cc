import Foundation
import Testing

@testable import Farm

/// The bounded per-node store behind `rexnode log`, and its peer request.
@Suite struct FrameLogStoreTests {
    let root = NSTemporaryDirectory() + "rex-logs-\(UUID().uuidString)"

    func attempt(
        _ job: String, _ frame: Int, attempt: Int = 1, outcome: String = "done",
        lines: [String] = ["Fra:1 | Sample 1/1"]
    ) -> FrameLogRecord {
        FrameLogRecord(
            job: job, frame: frame, node: "node-b", name: "n2", assignment: "a\(frame)-\(attempt)", attempt: attempt,
            outcome: outcome, message: outcome == "done" ? nil : "Blender failed", startedMs: Int64(attempt),
            endedMs: Int64(attempt) + 1, lines: lines)
    }

    @Test func keepsTheLastLinesOfAnAttemptAndCutsLongLines() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        var limits = FrameLogLimits()
        limits.linesPerAttempt = 200
        limits.lineLength = 50
        let store = try FrameLogStore(root: root, limits: limits)
        let lines = (1...500).map { "line \($0)" } + [String(repeating: "x", count: 10_000)]
        try store.record(attempt("j1", 1, lines: lines))
        let kept = try #require(store.records(job: "j1", frames: [1]).first)
        #expect(kept.lines.count == 200)
        #expect(kept.lines.first == "line 302")
        #expect(kept.lines.last == String(repeating: "x", count: 50) + "…")
    }

    @Test func eachFramesAttemptsAreItsOwnAndLastOnlyPicksTheNewest() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try FrameLogStore(root: root)
        try store.record(attempt("j1", 1, attempt: 1, outcome: "failed", lines: ["Error: one"]))
        try store.record(attempt("j1", 2, attempt: 1, lines: ["Fra:2"]))
        try store.record(attempt("j1", 1, attempt: 2, lines: ["Fra:1"]))
        try store.record(attempt("j2", 1, lines: ["other job"]))
        let frame1 = store.records(job: "j1", frames: [1])
        #expect(frame1.map(\.attempt) == [1, 2])
        #expect(frame1.map(\.lines) == [["Error: one"], ["Fra:1"]])
        #expect(store.records(job: "j1", frames: [2]).map(\.lines) == [["Fra:2"]])
        #expect(store.records(job: "j1").count == 3, "no frames named: every frame of the job")
        #expect(store.records(job: "j1", frames: [1, 2], lastOnly: true).map(\.attempt).sorted() == [1, 2])
        #expect(store.records(job: "j1", frames: [1], lastOnly: true).first?.outcome == "done")
        #expect(store.records(job: "j3").isEmpty)
    }

    @Test func theOldestAttemptsGoPastTheCountAndByteLimitsAndAReopenedStoreKeepsTheRest() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        var limits = FrameLogLimits()
        limits.attempts = 5
        let store = try FrameLogStore(root: root, limits: limits)
        for frame in 1...12 { try store.record(attempt("j1", frame)) }
        #expect(store.usage.attempts == 5)
        #expect(store.records(job: "j1").map(\.frame) == [8, 9, 10, 11, 12])
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).count == 5, "dropped attempts leave disk")

        // Bytes: each attempt here is about 10 kB; 30 kB holds two of them.
        var small = FrameLogLimits()
        small.bytes = 30_000
        let reopened = try FrameLogStore(root: root, limits: small)
        #expect(reopened.usage.attempts == 5, "a bigger count limit and small records: all five are back")
        for frame in 13...15 {
            try reopened.record(
                attempt(
                    "j1", frame, lines: (1...100).map { "Fra:\(frame) line \($0) " + String(repeating: "p", count: 90) }
                ))
        }
        #expect(reopened.usage.bytes <= 30_000)
        #expect(reopened.records(job: "j1").map(\.frame) == [14, 15])
        // New records after a restart sort after the old ones.
        let again = try FrameLogStore(root: root, limits: small)
        try again.record(attempt("j1", 16))
        #expect(again.records(job: "j1").map(\.frame).last == 16)
    }

    @Test func aJobIdCannotNameAPathAndStrayFilesAreDropped() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try FrameLogStore(root: root)
        try store.record(attempt("../../etc/x_y", -3))
        _ = FileManager.default.createFile(atPath: root + "/.tmp-cut-short", contents: Data("{".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).count == 2)
        let reopened = try FrameLogStore(root: root)
        #expect(reopened.records(job: "../../etc/x_y", frames: [-3]).count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).count == 1)
    }

    @Test func anAnswerStaysWithinItsBudgetKeepingTheNewest() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try FrameLogStore(root: root)
        for a in 1...10 {
            try store.record(attempt("j1", 1, attempt: a, lines: (1...100).map { "line \($0) of \(a)" }))
        }
        let some = store.records(job: "j1", frames: [1], budget: 5_000)
        #expect(!some.isEmpty && some.count < 10)
        #expect(some.last?.attempt == 10)
    }

    @Test func theFrameLogsRequestRoundTripsAndRefusesBadBytes() throws {
        let requests: [PeerRequest] = [
            .frameLogs(job: "j1", frames: [1, -5, 100_000], lastOnly: false),
            .frameLogs(job: "j1", frames: [], lastOnly: true),
        ]
        for request in requests { #expect(try PeerRequest(bytes: request.encoded()) == request) }
        let good = PeerRequest.frameLogs(job: "j1", frames: [1], lastOnly: true).encoded()
        for bad in [Array(good.dropLast()), good + [0], Array(good.dropLast()) + [2]] {
            #expect(throws: FarmError.self) { _ = try PeerRequest(bytes: bad) }
        }
    }

    @Test func theControlRequestRoundTrips() throws {
        for request in [ControlRequest.log(job: "j1", frame: 7), .log(job: "j1", frame: nil)] {
            let decoded = try JSONDecoder().decode(ControlRequest.self, from: JSONEncoder().encode(request))
            #expect(decoded == request)
        }
        #expect(throws: FarmError.self) {
            _ = try JSONDecoder().decode(ControlRequest.self, from: Data(#"{"op":"log"}"#.utf8))
        }
    }

    @Test func mergingKeepsOneCopyOfEachAttemptInOrder() {
        let a1 = attempt("j", 2, attempt: 1, outcome: "failed")
        let a2 = attempt("j", 2, attempt: 2)
        let b = attempt("j", 1)
        #expect(FrameLogService.merge([a2, b, a1, a2], lastOnly: false) == [b, a1, a2])
        #expect(FrameLogService.merge([a2, b, a1], lastOnly: true) == [b, a2])
        #expect(FrameLogService.describe([4, 1, 2, 3, 7, 9, 10]) == "1-4, 7, 9-10")
    }

    @Test func aFrameWithoutALogSaysWhyInOneSentence() {
        func row(_ state: String, attempts: Int) -> String {
            FrameLogService.nothingYet(frame: 4, state: state, attempts: attempts, job: "j1", label: "n2 (abc)")
        }
        #expect(row("queued", attempts: 0) == "Frame 4 of job j1 has not been rendered yet (it is queued).")
        #expect(row("assigned", attempts: 0).contains("is being rendered on n2 (abc)"))
        #expect(row("done", attempts: 0).hasPrefix("No node has Blender's output for frame 4 of job j1"))
    }
}
