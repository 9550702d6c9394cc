import Foundation
import Testing

@testable import Farm

#if canImport(Glibc)
    import Glibc
#endif

/// The control request decoder on its own: every bad line is one sentence, never a crash.
@Suite("Control request decoder")
struct ControlRequestDecoderTests {
    func error(_ line: [UInt8]) -> FarmError? {
        if case .failure(let error) = ControlRequestDecoder.decode(line) { return error }
        return nil
    }

    func decoded(_ line: String) -> ControlRequest? { try? ControlRequestDecoder.decode(Array(line.utf8)).get() }

    @Test func junkTruncatedDeepAndUnknownLinesAreOneSentenceErrors() throws {
        let lines: [[UInt8]] = [
            Array(repeating: UInt8(ascii: "["), count: 100_000),
            Array(repeating: UInt8(ascii: "{"), count: 100_000),
            Array(#"{"op":"peers""#.utf8), Array(#"{"op":"frobnicate"}"#.utf8), Array(#"{"op":7}"#.utf8),
            Array(#"{"op":"status"}"#.utf8), [0xff, 0xfe, 0x00, 0x7b], [], Array("null".utf8),
            Array(#"{"op":"priority","job":"j","priority":99999999999999999999999}"#.utf8),
        ]
        for line in lines {
            let e = try #require(error(line), "\(String(decoding: line.prefix(40), as: UTF8.self))")
            #expect(e.message.hasSuffix(".") && !e.message.contains("\n"), "\(e.message)")
        }
        #expect(
            error(Array(repeating: UInt8(ascii: " "), count: ControlRequestDecoder.maxLineBytes + 1))?.message
                == ControlRequestDecoder.tooLong.message)
        // Brackets inside strings are not nesting.
        let deepString = #"{"op":"status","job":""# + String(repeating: "[", count: 1000) + #""}"#
        #expect(decoded(deepString) == .status(job: String(repeating: "[", count: 1000)))
        #expect(decoded("{\"op\":\"peers\"}\r") == .peers)
        // Closing brackets first do not buy deeper nesting afterwards.
        let unbalanced = Array((String(repeating: "]", count: 50) + String(repeating: "[", count: 40)).utf8)
        #expect(!ControlRequestDecoder.nestingFits(unbalanced[...]))
        #expect(error(unbalanced)?.message.contains("nests too deeply") == true)
    }

    @Test func theFuzzCorpusReplaysWithoutATrap() throws {
        let dir = TestPaths.root + "/fuzz/corpus/control"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir)
        #expect(!files.isEmpty)
        for file in files {
            ControlFuzzTarget.request(Array(try #require(FileManager.default.contents(atPath: dir + "/" + file))))
        }
    }
}

/// A raw client of a Unix socket: writes bytes (without SIGPIPE) and reads one answer line or EOF, with a timeout.
enum RawControlClient {
    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            close(fd)
            throw TestFailure("cannot connect to \(path)")
        }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// Sends `bytes` (stopping quietly if the server closes first), then reads until a newline or EOF.
    static func exchange(_ path: String, _ bytes: [UInt8], closeWrite: Bool = false) throws -> String {
        let fd = try connect(path)
        defer { close(fd) }
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes {
                send(fd, $0.baseAddress! + sent, min(1 << 16, bytes.count - sent), Int32(MSG_NOSIGNAL))
            }
            if n <= 0 { break }
            sent += n
        }
        if closeWrite { shutdown(fd, Int32(SHUT_WR)) }
        var answer = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !answer.contains(UInt8(ascii: "\n")) {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            answer += chunk[0..<n]
        }
        // The first answer line only (random bytes hold many lines, each answered).
        return String(decoding: answer.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }
}

extension ProcessTests {
    /// A real daemon's control socket under junk and under another user: it answers or closes, and keeps serving.
    @Suite struct ControlSocketTests {
        @Test func junkOnTheControlSocketLeavesTheDaemonServingAndAnotherUserIsRefused() throws {
            let node = try TestNode(name: "c1", args: ["--renderer", "simulated:20"])
            let socket = node.data + "/rexnode.sock"
            func serving() throws {
                let r = try node.cli(["peers", "--json"], timeout: 60)
                #expect(r.status == 0, "\(r)\n\(node.log)")
            }
            var random = SystemRandomNumberGenerator()
            let junk: [(String, [UInt8], Bool)] = [
                ("random bytes", (0..<65_536).map { _ in UInt8.random(in: 0...255, using: &random) } + [10], false),
                ("an 8 MB line", Array(repeating: UInt8(ascii: "a"), count: 8 << 20) + [10], false),
                ("[ x 100,000", Array(repeating: UInt8(ascii: "["), count: 100_000) + [10], false),
                ("an unknown op", Array(#"{"op":"frobnicate"}"#.utf8) + [10], false),
                ("truncated JSON, then EOF", Array(#"{"op":"sub"#.utf8), true),
                ("truncated JSON line", Array(#"{"op":"submit","path":"#.utf8) + [10], false),
            ]
            for (what, bytes, closeWrite) in junk {
                let answer = try RawControlClient.exchange(socket, bytes, closeWrite: closeWrite)
                if !answer.isEmpty {
                    let object = try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any]
                    let message = object?["error"] as? String ?? ""
                    #expect(message.hasSuffix("."), "\(what): \(answer)")
                }
                #expect(node.isRunning, "\(what)\n\(node.log)")
                try serving()
            }
            // Several requests on one connection, junk between them: each gets its line.
            let mixed = try RawControlClient.exchange(
                socket, Array("junk\n".utf8) + Array(#"{"op":"token"}"#.utf8) + [10])
            #expect(mixed.contains("not understood"), "\(mixed)")

            // Another user (nobody), with the socket opened up by mistake, is still refused by its uid.
            chmod(node.data, 0o755)
            chmod(socket, 0o666)
            let client = """
                import socket, sys
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(60)
                s.connect(sys.argv[1])
                try:
                    s.sendall(b'{"op":"token"}\\n')
                except OSError:
                    pass  # refused at once: the daemon may have closed before the request went out
                data = b''
                while not data.endswith(b'\\n'):
                    try:
                        chunk = s.recv(4096)
                    except OSError:
                        break
                    if not chunk:
                        break
                    data += chunk
                sys.stdout.write(data.decode())
                """
            if getuid() == 0 {
                let r = try runProgram(
                    "/usr/bin/setpriv",
                    [
                        "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-c", client,
                        socket,
                    ],
                    timeout: 60)
                #expect(r.status == 0, "\(r)")
                #expect(!r.stdout.contains("rexfarm1-"), "\(r)")
                #expect(r.stdout.contains("only its own user"), "\(r)")
                // Its own user (root here) still gets the answer.
                let mine = try runProgram("/usr/bin/python3", ["-c", client, socket], timeout: 60)
                #expect(mine.stdout.contains("rexfarm1-"), "\(mine)")
            }
            #expect(node.isRunning, "\(node.log)")
            try serving()
        }
    }
}
