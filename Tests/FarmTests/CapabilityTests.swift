import Foundation
import Ledger
import Render
import Testing

@testable import Farm

/// Schedules, tags and devices as values: parsing, the time a node rests and wakes, routing by tags.
@Suite struct CapabilityTests {
    let utc = TimeZone(identifier: "UTC")!

    /// 2026-11-30 was a Monday.
    func date(_ day: Int, _ hour: Int, _ minute: Int = 0) -> Date {
        var c = DateComponents()
        (c.year, c.month, c.day, c.hour, c.minute) = (2026, 11, 30 + day - 1, hour, minute)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = utc
        return calendar.date(from: c)!
    }

    // MARK: Schedules

    @Test func aWindowCrossingMidnightIsOpenOnTheEveningAndTheMorningAfter() throws {
        let s = try NodeSchedule("mon-fri 19:00-07:00")
        #expect(s.isOpen(at: date(1, 19), timeZone: utc))  // Monday evening
        #expect(s.isOpen(at: date(2, 6, 59), timeZone: utc))  // Tuesday morning
        #expect(!s.isOpen(at: date(2, 7), timeZone: utc))
        #expect(!s.isOpen(at: date(1, 6), timeZone: utc))  // Monday morning: Sunday evening was not listed
        #expect(s.isOpen(at: date(6, 6), timeZone: utc))  // Saturday morning, after Friday evening
        #expect(!s.isOpen(at: date(6, 19), timeZone: utc))
        #expect(!s.isOpen(at: date(1, 12), timeZone: utc))
    }

    @Test func aDayListWithNoTimeIsOpenAllDay() throws {
        let s = try NodeSchedule("mon-fri 19:00-07:00; sat,sun")
        #expect(s.isOpen(at: date(6, 12), timeZone: utc))
        #expect(s.isOpen(at: date(7, 0), timeZone: utc))
        #expect(s.isOpen(at: date(7, 23, 59), timeZone: utc))
        // Monday 03:00: Sunday was open all day, but the night window starts on Monday evening.
        #expect(!s.isOpen(at: date(1, 3), timeZone: utc))
    }

    @Test func dayRangesWrapAroundTheWeek() throws {
        let s = try NodeSchedule("fri-mon")
        for day in [5, 6, 7, 1] { #expect(s.isOpen(at: date(day, 12), timeZone: utc)) }
        for day in [2, 3, 4] { #expect(!s.isOpen(at: date(day, 12), timeZone: utc)) }
        let t = try NodeSchedule("Tue 22:00-24:00")
        #expect(t.isOpen(at: date(2, 23, 30), timeZone: utc))
        #expect(!t.isOpen(at: date(3, 0, 10), timeZone: utc))
    }

    @Test func aRestingNodeKnowsWhenItWakes() throws {
        let s = try NodeSchedule("mon-fri 19:00-07:00; sat,sun")
        #expect(s.nextOpening(after: date(1, 12, 30), timeZone: utc) == date(1, 19))
        #expect(s.nextOpening(after: date(1, 19, 30), timeZone: utc) == nil)
        let weekly = try NodeSchedule("wed 10:00-11:00")
        #expect(weekly.nextOpening(after: date(3, 11, 0), timeZone: utc) == date(10, 10))
    }

    @Test(arguments: [
        "", " ; ", "weekdays", "mon 19:00", "mon 19-07", "mon 25:00-07:00", "mon 19:00-07:60", "mon,,tue",
        "mon 10:00-10:00", "mon 10:00-11:00 extra", "moon", "mon-", "19:00-07:00",
    ])
    func garbageIsRefusedInOneSentence(_ text: String) {
        #expect {
            _ = try NodeSchedule(text)
        } throws: { error in
            guard let error = error as? FarmError else { return false }
            return error.code == .badInput && error.message.hasPrefix("--schedule")
                && !error.message.contains("\n") && error.message.hasSuffix(".")
        }
    }

    @Test func theRestStateTellsWhenItChanges() {
        let rest = RestState()
        #expect(!rest.isResting)
        #expect(rest.set(1000))
        #expect(!rest.set(2000))
        #expect(rest.restingUntilMs == 2000)
        #expect(rest.set(nil))
        #expect(!rest.isResting)
    }

    // MARK: Tags

    @Test func tagsAreNormalisedAndCheckedInOneSentence() throws {
        #expect(try NodeTags.parse("studio, GPU,gpu") == ["gpu", "studio"])
        for bad in ["", "gpu,", "a b", "gpu;studio", String(repeating: "x", count: 25)] {
            #expect(throws: FarmError.self) { try NodeTags.parse(bad) }
        }
        #expect(throws: FarmError.self) { try NodeTags.parse((1...12).map { "tag\($0)" }.joined(separator: ",")) }
    }

    @Test func aJobWithTagsGoesOnlyToNodesCarryingEveryOne() {
        let queue = [
            QueuedJob(
                job: "j", priority: 0, chunk: 1, queuedFrames: [1, 2, 3, 4], openAssignments: 0,
                tags: ["gpu", "studio"])
        ]
        let slots: [Scheduler.Slot] = [
            .init(node: "plain", free: 2), .init(node: "gpu-only", free: 2, tags: ["gpu"]),
            .init(node: "both", free: 2, tags: ["gpu", "studio", "night"]),
        ]
        let d = Scheduler.assign(queue: queue, slots: slots)
        #expect(d.map(\.node) == ["both", "both"])
        #expect(Scheduler.assign(queue: queue, slots: Array(slots.prefix(2))).isEmpty)
        // A job without tags goes anywhere, tagged nodes included.
        let any = [QueuedJob(job: "k", priority: 0, chunk: 1, queuedFrames: [1, 2, 3], openAssignments: 0)]
        #expect(Set(Scheduler.assign(queue: any, slots: slots).map(\.node)) == ["plain", "gpu-only", "both"])
    }

    @Test func aTaggedJobDoesNotHoldBackAJobOtherNodesCanTake() {
        let queue = [
            QueuedJob(job: "tagged", priority: 9, chunk: 1, queuedFrames: [1], openAssignments: 0, tags: ["gpu"]),
            QueuedJob(job: "plain", priority: 0, chunk: 1, queuedFrames: [1], openAssignments: 0),
        ]
        let d = Scheduler.assign(queue: queue, slots: [.init(node: "cpu", free: 1)])
        #expect(d.map(\.job) == ["plain"])
    }

    @Test func aFrameThatFailedOnTheOnlyTaggedNodeGoesBackToIt() {
        // Untagged nodes cannot take the job, so they do not count as "another node" for its failed frame.
        let queue = [
            QueuedJob(
                job: "j", priority: 0, chunk: 1, queuedFrames: [1], openAssignments: 0, failedOn: [1: ["gpu"]],
                tags: ["gpu"])
        ]
        let d = Scheduler.assign(
            queue: queue, slots: [.init(node: "cpu", free: 1), .init(node: "gpu", free: 1, tags: ["gpu"])])
        #expect(d.map(\.node) == ["gpu"])
    }

    @Test func theBeaconStatusCarriesTagsDevicesAndRestWithinItsSize() throws {
        let tags = try NodeTags.parse("gpu,studio,night,render-a,render-b,hq")
        let status = NodeStatus(role: .follower, slots: 8, hasLog: true, task: "jabcdefgh123/100000", epoch: 12)
            .with(
                tags: tags, devices: (0..<8).map { "OPTIX:\($0)" }, restingUntilMs: 1_800_000_000_000)
        let bytes = status.encoded()
        #expect(bytes.count <= 200, "\(String(decoding: bytes, as: UTF8.self))")
        let back = try #require(NodeStatus(bytes: bytes))
        #expect(back.tags == tags)
        #expect(back.restingUntilMs == 1_800_000_000_000)
        #expect(back.devices?.first?.hasPrefix("OPTIX") == true)
        // CPU alone, no tags, not resting: nothing new in the beacon (old nodes read it as before).
        let plain = NodeStatus(role: .leader, slots: 1, hasLog: true, task: nil)
            .with(tags: [], devices: ["CPU"], restingUntilMs: nil)
        let keys = try #require(try JSONSerialization.jsonObject(with: Data(plain.encoded())) as? [String: Any]).keys
        #expect(Set(keys) == ["r", "s", "m"])
    }

    // MARK: Devices

    @Test func devicesParseAndSpreadOverSlots() throws {
        #expect(try DeviceChoice("optix:1") == DeviceChoice(kind: .optix, index: 1))
        #expect(try DeviceChoice("CPU") == DeviceChoice(kind: .cpu))
        for bad in ["GPU", "CPU:0", "CUDA:x", "CUDA:-1", "OPTIX:1:2", ""] {
            #expect(throws: FarmError.self) { try DeviceChoice(bad) }
        }
        #expect(DeviceChoice(kind: .optix).perSlot(slots: 2, count: 2) == ["OPTIX:0", "OPTIX:1"])
        #expect(DeviceChoice(kind: .cuda, index: 1).perSlot(slots: 2, count: 2) == ["CUDA:1", "CUDA:1"])
        #expect(DeviceChoice(kind: .cpu).perSlot(slots: 2, count: 0) == ["CPU", "CPU"])
    }

    @Test func aDeviceBlenderCannotSeeIsRefusedNamingWhatItSees() throws {
        let seen = CyclesDevices(devices: ["CUDA": ["RTX 4090"], "HIP": []])
        try DeviceChoice(kind: .cuda).check(against: seen, version: "4.5.3")
        try DeviceChoice(kind: .cpu).check(against: CyclesDevices(devices: [:]), version: "3.4.1")
        #expect {
            try DeviceChoice(kind: .optix).check(against: seen, version: "4.5.3")
        } throws: { error in
            (error as? FarmError)?.message
                == "--device OPTIX is not available: this node's Blender 4.5.3 sees only CPU, CUDA:0 (RTX 4090)."
        }
        #expect(throws: FarmError.self) {
            try DeviceChoice(kind: .cuda, index: 1).check(against: seen, version: "4.5.3")
        }
    }
}
