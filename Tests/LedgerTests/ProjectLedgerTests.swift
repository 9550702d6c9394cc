import Foundation
import Testing

@testable import Ledger

/// A job's manifest, movie and script choice, and a frame's extra outputs, survive the log and the state machine;
/// entries written before they existed still decode to the same commands.
@Suite("Ledger: projects")
struct ProjectLedgerTests {
    @Test func aFramesExtraOutputsAreRecordedWithIt() throws {
        let ledger = try TestLedger()
        let blob = String(repeating: "c", count: 64)
        let manifest = JobManifest(
            scene: "p/shot.blend", files: [ManifestFile(path: "p/shot.blend", blob: blob, size: 9)],
            remap: ["/abs/x.png": "abs/x.png"])
        let movie = MovieSpec(
            container: "MPEG4", codec: "H264", fps: 24, fpsBase: 1, crf: "HIGH", bitrate: 0, fileExtension: ".mp4")
        try ledger.apply(
            .submitJob(
                SubmitJob(
                    job: "j1", name: "shot", submitter: "n1", blendHash: blob, blendSize: 9, frames: [1, 2], chunk: 2,
                    priority: 0, output: "/o", submittedAtMs: 1, manifest: manifest, movie: movie, trustScripts: true)))
        let job = try #require(try ledger.store.job("j1"))
        #expect(job.manifest == manifest)
        #expect(job.movie == movie)
        #expect(job.trustScripts)
        _ = try ledger.assign("a1", frames: [1, 2])
        let outputs = [FrameOutput(path: "passes/normal_0001.png", hash: String(repeating: "d", count: 64), size: 3)]
        // A peer naming an output outside the output folder, or by something that is not an address, is ignored.
        for hostile in [
            FrameOutput(path: "../../.ssh/authorized_keys", hash: String(repeating: "d", count: 64), size: 3),
            FrameOutput(path: "passes/x.png", hash: "../../../home/u/.ssh/id_ed25519", size: 3),
        ] {
            let outcome = try ledger.apply(
                .completeFrame(
                    CompleteFrame(
                        job: "j1", frame: 2, node: "n1", assignment: "a1", term: 1, hash: "h2", ext: ".png",
                        holders: ["n1"], outputs: [hostile])))
            #expect(outcome.first?.name == "ignored", "\(hostile) was applied")
        }
        #expect(try ledger.frame(2).state == "assigned")
        try ledger.apply(
            .completeFrame(
                CompleteFrame(
                    job: "j1", frame: 1, node: "n1", assignment: "a1", term: 1, hash: "h1", ext: ".png",
                    holders: ["n1", "n2"], outputs: outputs)))
        #expect(try ledger.store.outputs(of: "j1", frame: 1) == outputs)
        #expect(try ledger.store.outputs(of: "j1") == [1: outputs])
        #expect(try ledger.store.outputs(of: "j1", frame: 2).isEmpty)
    }

    @Test func legacyAndTreeAddressesAreBothAddresses() {
        let hex = String(repeating: "c", count: 64)
        #expect(JobManifest.isAddress(hex) && JobManifest.isAddress("t1" + hex))
        for bad in [
            "", "t1", "t2" + hex, "t1" + hex + "0", String(repeating: "C", count: 64), "t1../" + hex.dropFirst(4),
        ] {
            #expect(!JobManifest.isAddress(bad), "\(bad)")
        }
    }

    @Test func aJobWhoseManifestLeavesTheJobFolderIsIgnoredEverywhere() throws {
        let ledger = try TestLedger()
        let blob = String(repeating: "c", count: 64)
        let manifest = JobManifest(
            scene: "s.blend",
            files: [
                ManifestFile(path: "s.blend", blob: blob, size: 1), ManifestFile(path: "../x", blob: blob, size: 1),
            ])
        let outcome = try ledger.apply(
            .submitJob(
                SubmitJob(
                    job: "j1", name: "s", submitter: "n1", blendHash: blob, blendSize: 1, frames: [1], chunk: 1,
                    priority: 0, output: "/o", submittedAtMs: 1, manifest: manifest)))
        #expect(outcome.first?.name == "ignored")
        #expect(try ledger.store.job("j1") == nil)
    }

    @Test func entriesFromBeforeProjectsDecodeUnchanged() throws {
        let old =
            #"{"command":{"submitJob":{"_0":{"blendHash":"ab","blendSize":10,"chunk":2,"frames":[1],"job":"j1","#
            + #""name":"s","output":"\/o","priority":0,"submittedAtMs":1,"submitter":"n1"}}},"id":{"node":"n","seq":1}}"#
        let entry = try LedgerEntry(bytes: Array(old.utf8))
        guard case .submitJob(let submit) = entry.command else {
            Issue.record("not a submit: \(entry.command)")
            return
        }
        #expect(submit.manifest == nil && submit.movie == nil && submit.trustScripts == nil)
        // And encoding an old-shaped command gives the same bytes: nothing new appears for jobs without projects.
        #expect(String(decoding: entry.encoded(), as: UTF8.self) == old)
    }
}
