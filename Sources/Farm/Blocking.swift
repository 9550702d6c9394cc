import NIOPosix

/// Work that holds a thread (hashing, copying, fsync): it runs on NIO's blocking thread pool, never on Swift's
/// shared pool, which has one thread per core and carries every loop of the daemon.
public enum Blocking {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(body)
    }
}
