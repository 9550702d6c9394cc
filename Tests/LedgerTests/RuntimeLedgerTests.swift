import Foundation
import Testing

@testable import Ledger

/// The Blender version a job renders with, in the replicated ledger (issue 14).
@Suite struct RuntimeLedgerTests {
    @Test func aJobsBlenderIsStoredAndReachesTheScheduler() throws {
        let ledger = try TestLedger()
        try ledger.apply(
            .submitJob(
                SubmitJob(
                    job: "j5", name: "shot", submitter: "n1", blendHash: "ab", blendSize: 10, frames: [1, 2], chunk: 1,
                    priority: 0, output: "/tmp/out", submittedAtMs: 1, blender: "5.0.1")))
        try ledger.submit("jold")
        #expect(try ledger.store.job("j5")?.blender == "5.0.1")
        #expect(try ledger.store.job("jold")?.blender == nil)
        let queued = try ledger.store.queuedWork()
        #expect(queued.first { $0.job == "j5" }?.blender == "5.0.1")
        #expect(queued.first { $0.job == "jold" }.map { $0.blender == nil } == true)
    }

    @Test func anEntryWithoutBlenderKeepsItsBytes() throws {
        let old = SubmitJob(
            job: "j1", name: "scene", submitter: "n1", blendHash: "ab", blendSize: 10, frames: [1], chunk: 1,
            priority: 0, output: "/tmp/out", submittedAtMs: 1)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let bytes = try encoder.encode(old)
        #expect(!String(decoding: bytes, as: UTF8.self).contains("blender"))
        #expect(try encoder.encode(try JSONDecoder().decode(SubmitJob.self, from: bytes)) == bytes)
        var new = old
        new.blender = "3.4.1"
        #expect(try JSONDecoder().decode(SubmitJob.self, from: try encoder.encode(new)).blender == "3.4.1")
    }
}
