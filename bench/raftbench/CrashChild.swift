import ArgumentParser
import Election
import Ledger

#if canImport(Glibc)
    import Glibc
#endif

/// A real `RaftInstance` on a real `RaftLogStore`, driven line by line over stdin/stdout, so a test can
/// kill it with SIGKILL between persisting and replying and then inspect the database.
///
/// Input lines: `msg FROM HEX` (a `RaftMessage`), `status`. Output lines: `ready`, `send TO HEX`,
/// `status TERM VOTED LAST_INDEX LAST_TERM`. Hidden: only the storage tests use it.
struct StorageCrashChild: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage-crash-child", abstract: "Test helper: a Raft node on SQLite over stdin/stdout.",
        shouldDisplay: false)

    @Option(help: "SQLite database path.")
    var db: String

    @Option(help: "Node id.")
    var id: String = "child"

    @Option(help: "Kill this process with SIGKILL right after the Nth persist, before any reply.")
    var dieAfterPersist: Int?

    @Option(help: "Sleep this many milliseconds after each persist, before replying.")
    var pauseAfterPersistMs: Int = 0

    func run() throws {
        let store = try RaftLogStore.openStandalone(path: db)
        let stored = try store.loadNow()
        var instance = RaftInstance(
            id: id, hardState: stored.hardState, snapshot: stored.snapshot, log: stored.log,
            random: SplitMix64(seed: 7), now: .milliseconds(0))
        var persists = 0
        var clock: UInt64 = 0
        emit("ready")
        while let line = readLine() {
            clock += 1
            let now = RaftTime.milliseconds(clock)
            let parts = line.split(separator: " ").map(String.init)
            if parts.first == "status" {
                let vote = instance.votedFor ?? "-"
                emit("status \(instance.currentTerm) \(vote) \(instance.lastIndex) \(instance.lastTerm)")
                continue
            }
            guard parts.count == 3, parts[0] == "msg", let bytes = Hex.decode(parts[2]),
                let message = try? RaftMessage(bytes: bytes)
            else {
                emit("error bad line")
                continue
            }
            var queue = instance.onMessage(message, from: parts[1], now: now)
            while !queue.isEmpty {
                let directive = queue.removeFirst()
                switch directive {
                case .persist(let request):
                    try store.persist(request)
                    persists += 1
                    if let limit = dieAfterPersist, persists >= limit {
                        kill(getpid(), SIGKILL)
                    }
                    if pauseAfterPersistMs > 0 { usleep(UInt32(pauseAfterPersistMs) * 1000) }
                    queue.insert(contentsOf: instance.onPersisted(request, now: now), at: 0)
                case .send(let to, let reply):
                    emit("send \(to) \(Hex.encode(reply.encode()))")
                default:
                    break
                }
            }
        }
    }

    private func emit(_ line: String) {
        print(line)
        fflush(nil)
    }
}

/// Lower-case hex, for the line protocol.
enum Hex {
    static func encode(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef")
        var out = ""
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return out
    }

    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        case 65...70: return c - 55
        default: return nil
        }
    }
}
