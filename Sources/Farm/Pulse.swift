import Synchronization

/// Wakes every subscriber when the ledger changes; a slow subscriber sees one wake-up, not a backlog.
final class Pulse: Sendable {
    private let subscribers = Mutex<[Int: AsyncStream<Void>.Continuation]>([:])
    private let nextID = Atomic<Int>(0)

    func subscribe() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let id = nextID.add(1, ordering: .relaxed).newValue
        subscribers.withLock { $0[id] = continuation }
        continuation.onTermination = { [weak self] _ in
            _ = self?.subscribers.withLock { $0.removeValue(forKey: id) }
        }
        continuation.yield()
        return stream
    }

    func fire() {
        subscribers.withLock { subs in for c in subs.values { c.yield() } }
    }

    func finish() {
        subscribers.withLock { subs in
            for c in subs.values { c.finish() }
            subs.removeAll()
        }
    }
}
