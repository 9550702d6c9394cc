import Ledger
import Render
import Testing

@testable import Farm

/// Which Blender a job renders with, and where its frames may go (issue 14).
@Suite struct RuntimeChoiceTests {
    let v50 = BlendVersion(major: 5, minor: 0)
    let v34 = BlendVersion(major: 3, minor: 4)

    @Test func theFilesOwnMajorMinorWinsOverNewerOnes() {
        #expect(RuntimeChoice.choose(file: v34, available: ["5.0.1", "3.4.1"]) == "3.4.1")
        #expect(RuntimeChoice.choose(file: v50, available: ["5.0.1", "3.4.1", "5.1.0"]) == "5.0.1")
    }

    @Test func elseTheNearestNewerOneNeverAnOlderOne() {
        #expect(
            RuntimeChoice.choose(file: BlendVersion(major: 3, minor: 6), available: ["5.0.1", "3.4.1", "4.5.3"])
                == "4.5.3")
        #expect(RuntimeChoice.choose(file: v50, available: ["3.4.1", "4.5.3"]) == nil)
        #expect(RuntimeChoice.choose(file: v50, available: []) == nil)
    }

    @Test func amongPatchReleasesTheSubmittersOneThenTheNewest() {
        #expect(RuntimeChoice.choose(file: v50, available: ["5.0.0", "5.0.1"]) == "5.0.1")
        #expect(RuntimeChoice.choose(file: v50, available: ["5.0.0", "5.0.1"], preferred: ["5.0.0"]) == "5.0.0")
    }

    @Test func versionsSortNumerically() {
        #expect(RuntimeChoice.sorted(["5.0.1", "3.10.0", "3.4.1", "3.4.1"]) == ["3.4.1", "3.10.0", "5.0.1"])
    }

    @Test func aJobGoesOnlyToSlotsOfItsVersion() {
        let queue = [
            QueuedJob(job: "new", priority: 0, chunk: 1, queuedFrames: [1, 2], openAssignments: 0, blender: "5.0.1"),
            QueuedJob(job: "old", priority: 0, chunk: 1, queuedFrames: [1, 2], openAssignments: 0, blender: "3.4.1"),
        ]
        let slots: [Scheduler.Slot] = [
            .init(node: "a34", free: 2, blender: ["3.4.1"]), .init(node: "b50", free: 2, blender: ["5.0.1"]),
            .init(node: "sim", free: 2),
        ]
        let decisions = Scheduler.assign(queue: queue, slots: slots)
        #expect(decisions.filter { $0.job == "new" }.allSatisfy { $0.node == "b50" })
        #expect(decisions.filter { $0.job == "old" }.allSatisfy { $0.node == "a34" })
        #expect(decisions.flatMap(\.frames).count == 4)
        // A node with both takes either; a job without a version goes anywhere.
        let both = Scheduler.assign(queue: queue, slots: [.init(node: "ab", free: 4, blender: ["3.4.1", "5.0.1"])])
        #expect(both.count == 4)
        let any = QueuedJob(job: "any", priority: 0, chunk: 1, queuedFrames: [1], openAssignments: 0)
        #expect(Scheduler.assign(queue: [any], slots: [.init(node: "sim", free: 1)]).map(\.node) == ["sim"])
        #expect(Scheduler.assign(queue: [queue[0]], slots: [.init(node: "sim", free: 1)]).isEmpty)
    }

    @Test func theBeaconStatusCarriesTheVersionsWithinItsLimit() {
        let status = NodeStatus(
            role: .follower, slots: 2, hasLog: true, task: "j0123456789abcdef/120", epoch: 1_000_001,
            blender: ["3.4.1", "5.0.1"])
        let bytes = status.encoded()
        #expect(bytes.count <= 200)
        #expect(NodeStatus(bytes: bytes)?.blender == ["3.4.1", "5.0.1"])
        #expect(
            NodeStatus(bytes: NodeStatus(role: .leader, slots: 1, hasLog: true, task: nil).encoded())?.blender == nil)
        let many = NodeStatus(
            role: .follower, slots: 2, hasLog: true, task: "j0123456789abcdef/120",
            blender: (0..<40).map { "4.\($0).10" })
        #expect(many.encoded().count <= 200)
        #expect(NodeStatus(bytes: many.encoded())?.blender?.first == "4.0.10")
    }
}
