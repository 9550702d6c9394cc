import Foundation
import Synchronization
import Testing

@testable import Ledger

/// Command sequence numbers never repeat across restarts, whatever the wall clock does.
@Suite struct CommandSequencerTests {
    /// A wall clock tests can set (nanoseconds since 1970).
    final class FakeClock: Sendable {
        private let value: Mutex<UInt64>
        init(_ value: UInt64) { self.value = Mutex(value) }
        func set(_ new: UInt64) { value.withLock { $0 = new } }
        var read: @Sendable () -> UInt64 { { self.value.withLock { $0 } } }
    }

    static let now: UInt64 = 1_750_000_000 * 1_000_000_000

    @Test func aRestartWithTheClockSteppedBackStillHandsOutLargerNumbers() throws {
        let l = try TestLedger()
        let clock = FakeClock(Self.now)
        var first = try CommandSequencer(ledger: l.store, wallClock: clock.read)
        let before = try (0..<1000).map { _ in try first.next() }
        #expect(before.first == Self.now + 1, "a fresh database starts above the wall clock")
        #expect(before == before.sorted() && Set(before).count == before.count)

        // "Restart": a new sequencer on the same file, the clock a day behind.
        clock.set(Self.now - 86_400 * 1_000_000_000)
        let reopened = try LedgerStore(path: l.dir + "/ledger.sqlite")
        var second = try CommandSequencer(ledger: reopened, wallClock: clock.read)
        let after = try (0..<1000).map { _ in try second.next() }
        #expect(after.min()! > before.max()!)
        #expect(after == after.sorted() && Set(after).count == after.count)

        // And once more, without taking any number in between: the unused block is skipped, never reused.
        var third = try CommandSequencer(ledger: LedgerStore(path: l.dir + "/ledger.sqlite"), wallClock: clock.read)
        var fourth = try CommandSequencer(ledger: LedgerStore(path: l.dir + "/ledger.sqlite"), wallClock: clock.read)
        let a = try third.next()
        let b = try fourth.next()
        #expect(a > after.max()!)
        #expect(b > a)
    }

    @Test func crossingBlockBoundariesReservesBeforeHandingOut() throws {
        let l = try TestLedger()
        let clock = FakeClock(Self.now)
        var sequencer = try CommandSequencer(ledger: l.store, blockSize: 4, wallClock: clock.read)
        #expect(try l.store.commandSequenceCeiling() == Self.now + 4)
        var taken: [UInt64] = []
        for _ in 0..<10 {
            let n = try sequencer.next()
            taken.append(n)
            // Every number handed out is at or below the durable ceiling.
            #expect(n <= (try l.store.commandSequenceCeiling()))
        }
        #expect(taken == Array((Self.now + 1)...(Self.now + 10)), "a steady clock gives consecutive numbers")
        #expect(try l.store.commandSequenceCeiling() == Self.now + 12)

        // The clock steps back mid-run, then the node restarts on the same file: still strictly above.
        clock.set(1)
        let more = try (0..<6).map { _ in try sequencer.next() }
        #expect(more == Array((Self.now + 11)...(Self.now + 16)))
        var restarted = try CommandSequencer(
            ledger: LedgerStore(path: l.dir + "/ledger.sqlite"), blockSize: 4, wallClock: clock.read)
        let resumed = try (0..<5).map { _ in try restarted.next() }
        #expect(resumed.min()! > more.max()!)
        #expect(Set(taken + more + resumed).count == taken.count + more.count + resumed.count)
    }

    @Test func aClockThatJumpsForwardIsFollowedAtTheNextBlock() throws {
        let l = try TestLedger()
        let clock = FakeClock(Self.now)
        var sequencer = try CommandSequencer(ledger: l.store, blockSize: 2, wallClock: clock.read)
        #expect(try sequencer.next() == Self.now + 1)
        #expect(try sequencer.next() == Self.now + 2)
        clock.set(Self.now + 1_000)
        #expect(try sequencer.next() == Self.now + 1_001)
    }

    @Test func reservationsAreDisjointAndIncreasing() throws {
        let l = try TestLedger()
        let a = try l.store.reserveCommandSequences(above: 100, count: 10)
        let b = try l.store.reserveCommandSequences(above: 50, count: 10)
        let c = try l.store.reserveCommandSequences(above: 500, count: 1)
        #expect(a == 101...110)
        #expect(b == 111...120)
        #expect(c == 501...501)
        #expect(try l.store.commandSequenceCeiling() == 501)
    }
}
