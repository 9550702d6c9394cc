import Foundation

/// Makes files durable in groups: one `sync` covers every write made before it started, so many workers
/// storing images at once pay for one disk flush instead of one each.
actor GroupSync {
    private var started = 0
    private var finished = 0
    private var running = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init() {}

    /// Returns once everything written before the call is on disk.
    func flush() async {
        // A flush already under way may have started before our write: we need the next one.
        let target = started + 1
        while finished < target {
            if running {
                await withCheckedContinuation { waiters.append($0) }
                continue
            }
            running = true
            started += 1
            // syncfs blocks its thread for milliseconds: keep it off Swift's cooperative pool.
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().async {
                    // syncfs(2) would be narrower, but Glibc does not export it to Swift; sync(2) covers it.
                    sync()
                    done.resume()
                }
            }
            finished = started
            running = false
            let woken = waiters
            waiters = []
            for waiter in woken { waiter.resume() }
        }
    }
}
