import Foundation

/// Makes files durable in groups: files handed in while a flush runs are flushed together by the next one, so
/// many workers storing images at once share the disk's journal commits instead of queueing one each.
actor GroupSync {
    private var pending: [String] = []
    private var started = 0
    private var finished = 0
    private var running = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    /// From this many files in one round, one `syncfs` replaces the fsyncs (every file here is on one filesystem:
    /// the node's data folder).
    static let syncfsThreshold = 4

    init() {}

    /// Returns once `path` (a file written and closed by the caller) is on disk.
    func flush(_ path: String) async { await flush([path]) }

    /// Returns once every one of `paths` (files, or folders whose entries changed) is on disk.
    func flush(_ paths: [String]) async {
        pending.append(contentsOf: paths)
        // A flush already under way did not take this path: we need the next one.
        let target = started + 1
        while finished < target {
            if running {
                await withCheckedContinuation { waiters.append($0) }
                continue
            }
            running = true
            started += 1
            let batch = pending
            pending = []
            // fsync blocks its thread for milliseconds: keep it off Swift's cooperative pool.
            _ = try? await Blocking.run { Self.sync(batch) }
            finished = started
            running = false
            let woken = waiters
            waiters = []
            for waiter in woken { waiter.resume() }
        }
    }
}

extension GroupSync {
    /// Many files: one syncfs(2) of their filesystem covers them all (one journal commit), where an fsync each
    /// would commit once per file. One or a few: fsync each.
    fileprivate static func sync(_ batch: [String]) {
        let wholeFilesystem = batch.count >= syncfsThreshold
        for file in wholeFilesystem ? Array(batch.prefix(1)) : batch {
            let fd = open(file, O_RDONLY)
            guard fd >= 0 else { continue }
            _ = wholeFilesystem ? linuxSyncfs(fd) : fsync(fd)
            close(fd)
        }
    }
}

/// glibc's `syncfs(2)` (declared only under _GNU_SOURCE, so not visible to Swift's Glibc module).
@_silgen_name("syncfs")
private func linuxSyncfs(_ fd: Int32) -> Int32
