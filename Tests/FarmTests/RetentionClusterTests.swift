import Foundation
import Testing

/// Issue 17's retention, on real daemons: images leave the nodes that did not submit once the submitter holds them
/// and `--keep-images` has passed; a node short of disk takes no work and `peers` says so.
extension ProcessTests {
    @Suite struct RetentionClusterTests {
        func frames(_ node: TestNode, _ job: String) throws -> [[String: Any]] {
            try #require((try node.json(["status", job]) as? [String: Any])?["frames"] as? [[String: Any]])
        }

        /// The blob files (content addresses) in a node's store.
        func blobFiles(_ node: TestNode) -> Set<String> {
            let root = node.data + "/blobs"
            let dirs = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
            return Set(
                dirs.filter { $0.count == 2 }.flatMap { dir in
                    (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/\(dir)")) ?? []
                })
        }

        func id(_ node: TestNode) throws -> String {
            let rows = try #require(try node.json(["peers"]) as? [[String: Any]])
            return try #require(rows.first { $0["self"] as? Bool == true }?["id"] as? String)
        }

        @Test func imagesLeaveTheOtherHoldersAfterTheirKeepTimeAndTheSubmitterKeepsAndServesThem() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            // n1 submits and keeps its images for the default 7 days; n2 keeps other nodes' images for 1 second.
            let farm = try TestFarm(
                count: 2, args: ["--renderer", "simulated:30", "--slots", "2"], perNode: [1: ["--keep-images", "1s"]])
            let (submitter, other) = (farm.nodes[0], farm.nodes[1])
            let submitterID = try id(submitter)
            let out = tempDir("retention")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try submitter.cli(["submit", scene, "--frames", "1-12", "--chunk", "1", "--output", out, "--json"])
            #expect(r.status == 0, "\(r)")
            let job = try #require((try submitter.json(["jobs"]) as? [[String: Any]])?.first?["job"] as? String)
            let hashes = Set(try frames(submitter, job).compactMap { $0["hash"] as? String })
            #expect(hashes.count >= 1)
            // In a farm of two, every image was on both; after n2's keep time the ledger names only the submitter,
            // on every node, and n2's store no longer has the files.
            try waitUntil(timeout: 120, "n2 leaves the holders of every image") {
                try [submitter, other].allSatisfy { node in
                    try frames(node, job).allSatisfy { ($0["holders"] as? [String]) == [submitterID] }
                }
            }
            try waitUntil(timeout: 60, "n2's image files go") { blobFiles(other).isDisjoint(with: hashes) }
            #expect(hashes.isSubset(of: blobFiles(submitter)), "the submitter keeps every image")
            #expect(try other.cli(["ledger", "--json"]).stdout.contains("\"DropImages\""))
            // A fetch on n2 still gets every frame, from the submitter.
            let fetched = tempDir("retention-fetch")
            defer { try? FileManager.default.removeItem(atPath: fetched) }
            let f = try other.cli(["fetch", job, "--output", fetched])
            #expect(f.status == 0, "\(f)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: fetched).count == 12)
        }

        /// While the submitter is away its copies cannot be fetched: the other holders keep theirs, whatever the
        /// keep time says, and drop them once it is back.
        @Test func imagesStayWhileTheSubmitterIsAwayAndGoOnceItIsBack() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            let farm = try TestFarm(
                count: 3, args: ["--renderer", "simulated:30"],
                perNode: [1: ["--keep-images", "6s"], 2: ["--keep-images", "6s"]])
            let (submitter, other) = (farm.nodes[0], farm.nodes[1])
            let out = tempDir("retention-away")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try submitter.cli(["submit", scene, "--frames", "1-6", "--chunk", "1", "--output", out, "--json"])
            #expect(r.status == 0, "\(r)")
            let job = try #require((try submitter.json(["jobs"]) as? [[String: Any]])?.first?["job"] as? String)
            let submitterID = try id(submitter)
            // Copies on the nodes that did not submit: every frame has one (a frame is on two peers).
            func othersCopies() throws -> Int {
                try frames(other, job).reduce(0) {
                    $0 + (($1["holders"] as? [String]) ?? []).filter { $0 != submitterID }.count
                }
            }
            let before = try othersCopies()
            #expect(before >= 6)
            submitter.kill9()
            // Well past the keep time, with the submitter away: nothing was given up.
            let away = Date().addingTimeInterval(12)
            while Date() < away { usleep(200_000) }
            #expect(try othersCopies() == before, "images were dropped while the submitter was away")
            #expect(!(try other.cli(["ledger", "--json"]).stdout.contains("\"DropImages\"")))
            try submitter.start()
            try waitUntil(timeout: 120, "the images leave the others once the submitter is back") {
                try othersCopies() == 0
            }
        }

        @Test func aNodeShortOfDiskTakesNoFramesAndPeersSaysSo() throws {
            let scene = try Scenes.make(["--frames", "2", "--width", "32", "--height", "24", "--samples", "1"])
            // n2 needs a petabyte free: no machine here has it, so its disk is "nearly full".
            let farm = try TestFarm(
                count: 2, args: ["--renderer", "simulated:30"], perNode: [1: ["--min-free", "1000T"]])
            let (roomy, full) = (farm.nodes[0], farm.nodes[1])
            func disks(_ view: TestNode) throws -> [String: [String: Any]] {
                let rows = try #require(try view.json(["peers"]) as? [[String: Any]])
                return Dictionary(
                    uniqueKeysWithValues: rows.compactMap { row in (row["name"] as? String).map { ($0, row) } })
            }
            // Both nodes see n2 full and n1 not (n2 from its own reading, n1 from n2's beacons).
            try waitUntil(timeout: 60, "every node sees n2's disk nearly full") {
                try [roomy, full].allSatisfy { node in
                    let rows = try disks(node)
                    return rows["n2"]?["disk_full"] as? Bool == true && rows["n1"]?["disk_full"] as? Bool == false
                        && (rows["n1"]?["disk_free_bytes"] as? Int ?? 0) > 0 && rows["n1"]?["disk_used_bytes"] is Int
                }
            }
            let out = tempDir("diskfull")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let r = try full.cli(["submit", scene, "--frames", "1-8", "--chunk", "1", "--output", out, "--json"])
            #expect(r.status == 0, "\(r)")
            let job = try #require((try full.json(["jobs"]) as? [[String: Any]])?.first?["job"] as? String)
            let renderers = Set(try frames(full, job).compactMap { $0["node"] as? String })
            #expect(renderers == [try id(roomy)], "only n1 rendered: \(renderers)")
            #expect(full.log.contains("disk is nearly full"), "n2 says why it takes no work")
        }
    }
}
