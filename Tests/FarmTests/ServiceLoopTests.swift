import Logging
import ServiceLifecycle
import Testing

@testable import Farm

/// The daemon's background loops (`FarmNode.loop`) inside its `ServiceGroup`.
@Suite struct ServiceLoopTests {
    /// Until the group shuts down.
    static func busy() async {
        while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(10)) }
    }

    /// `watchEpochs` once it has heard a newer recovery epoch: it asks the node to stop (100 ms later, as
    /// `Membership.onStale` does) and is done. The daemon must stop cleanly so that `join` can start over; before,
    /// the loop's return ended the group with `serviceFinishedUnexpectedly` and the process exited with it.
    @Test func aLoopThatIsDoneBeforeTheShutdownDoesNotEndTheDaemonWithAnError() async throws {
        let handle = GroupHandle()
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    FarmNode.loop("busy") { await Self.busy() },
                    FarmNode.loop("epochs") {
                        Task {
                            try? await Task.sleep(for: .milliseconds(100))
                            await handle.shutDown()
                        }
                    },
                    FarmNode.loop("other") { await Self.busy() },
                ],
                logger: Logger(label: "test")))
        handle.set(group)
        // Before the fix, `run` threw `serviceFinishedUnexpectedly` here.
        await #expect(throws: Never.self) { try await group.run() }
    }

    /// A loop that is done while the group is already shutting down (before its own turn) does not fail it.
    @Test func aLoopThatIsDoneDuringTheShutdownDoesNotFailIt() async throws {
        let stopping = Flag()
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    FarmNode.loop("ends when the shutdown starts") {
                        while !stopping.isSet { try? await Task.sleep(for: .milliseconds(5)) }
                    },
                    FarmNode.loop("stopped first") {
                        await Self.busy()
                        stopping.set()
                        // Not cancelled with this loop: the other one is done before its own turn comes.
                        await Task.detached { try? await Task.sleep(for: .milliseconds(50)) }.value
                    },
                ],
                logger: Logger(label: "test")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await #expect(throws: Never.self) { try await group.run() } }
            try await Task.sleep(for: .milliseconds(100))
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }
}
