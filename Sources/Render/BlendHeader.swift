import Foundation

// MARK: - BlendVersion

/// The Blender version that saved a .blend, as its header says it: major.minor only (the header has no patch).
public struct BlendVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var major: Int
    public var minor: Int

    public init(major: Int, minor: Int) {
        self.major = major
        self.minor = minor
    }

    /// The major.minor of a version string such as "3.4.1" or "5.0"; nil when it does not start with two numbers.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 2, let major = Int(parts[0]), let minor = Int(parts[1].prefix { $0.isNumber }),
            !parts[1].isEmpty, parts[1].first?.isNumber == true
        else { return nil }
        self.init(major: major, minor: minor)
    }

    public var description: String { "\(major).\(minor)" }

    public static func < (a: BlendVersion, b: BlendVersion) -> Bool {
        (a.major, a.minor) < (b.major, b.minor)
    }
}

// MARK: - BlendHeader

/// Reads which Blender saved a .blend from the first bytes of the file, before any Blender is started: a job must
/// go to a Blender at least as new as the file (an older one cannot read it, or silently drops what it does not
/// know).
///
/// Two header forms exist: `BLENDER-v304` (12 bytes: pointer size `_`/`-`, endianness `v`/`V`, 3 digits) and,
/// from Blender 5.0, `BLENDER17-01v0500` (17 bytes: header size, `-01` file format, endianness, 4 digits). The file
/// may be gzip-compressed (Blender ≤ 4.x with compression on) or zstd-compressed (3.0+, and 5.0 by default).
public enum BlendHeader {
    /// What the first bytes of a file are.
    public enum Container: Sendable, Equatable {
        case plain, gzip, zstd
    }

    /// The container of a file that starts with `head`, or nil when it is none of the three.
    public static func container(of head: [UInt8]) -> Container? {
        if head.starts(with: Array("BLENDER".utf8)) { return .plain }
        if head.starts(with: [0x1f, 0x8b]) { return .gzip }
        if head.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) { return .zstd }
        return nil
    }

    /// The version in an uncompressed header, or nil when `bytes` do not start with a header of either form.
    public static func parse(_ bytes: [UInt8]) -> BlendVersion? {
        let magic = Array("BLENDER".utf8)
        guard bytes.starts(with: magic) else { return nil }
        let rest = Array(bytes.dropFirst(magic.count))
        func digits(_ slice: ArraySlice<UInt8>) -> Int? {
            guard !slice.isEmpty, slice.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            return Int(String(decoding: slice, as: UTF8.self))
        }
        func endianness(_ byte: UInt8) -> Bool { byte == UInt8(ascii: "v") || byte == UInt8(ascii: "V") }
        // Old form: pointer size, endianness, three digits ("304" is 3.4, "279" is 2.79).
        if rest.count >= 5, rest[0] == UInt8(ascii: "_") || rest[0] == UInt8(ascii: "-"), endianness(rest[1]),
            let number = digits(rest[2..<5])
        {
            return BlendVersion(major: number / 100, minor: number % 100)
        }
        // New form: header size "17", "-", file format "01", endianness, four digits ("0500" is 5.0).
        if rest.count >= 10, digits(rest[0..<2]) == 17, rest[2] == UInt8(ascii: "-"), digits(rest[3..<5]) != nil,
            endianness(rest[5]), let number = digits(rest[6..<10])
        {
            return BlendVersion(major: number / 100, minor: number % 100)
        }
        return nil
    }

    /// The version of the .blend at `path`, decompressing only its first bytes when it is gzip or zstd (with the
    /// system's `gzip` or `zstd`). Throws a sentence naming `path` when the file has no readable header.
    public static func read(_ path: String) throws -> BlendVersion {
        let name = (path as NSString).lastPathComponent
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw RenderError(.badScene, "The file \(path) cannot be read.")
        }
        let head = Array((try? handle.read(upToCount: 32)) ?? Data())
        try? handle.close()
        let bytes: [UInt8]
        switch container(of: head) {
        case .plain: bytes = head
        case .gzip: bytes = try decompressedHead(path, tool: "gzip", name: name)
        case .zstd: bytes = try decompressedHead(path, tool: "zstd", name: name)
        case nil: throw RenderError(.badScene, "\(name) is not a Blender file (it does not start with BLENDER).")
        }
        guard let version = parse(bytes) else {
            throw RenderError(.badScene, "\(name) has no Blender header that rexnode can read (is it a .blend?).")
        }
        return version
    }

    /// The first 32 bytes `tool -dc` writes for the file; the rest of the file is never decompressed (the pipe is
    /// closed and the tool ends on SIGPIPE).
    static func decompressedHead(_ path: String, tool: String, name: String) throws -> [UInt8] {
        guard
            let executable = ["/usr/bin/\(tool)", "/bin/\(tool)", "/usr/local/bin/\(tool)"].first(where: {
                FileManager.default.isExecutableFile(atPath: $0)
            })
        else {
            throw RenderError(
                .badScene,
                "\(name) is \(tool)-compressed and this machine has no \(tool) to read its header "
                    + "(apt-get install \(tool)).")
        }
        // posix_spawn directly, not Foundation's Process: Process.run is not safe to call from several threads at
        // once on Linux (seen as a crash in its argument copying), and submits and tests start processes in
        // parallel.
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else {
            throw RenderError(.badScene, "\(tool) could not be started to read the header of \(name): no pipe.")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
        posix_spawn_file_actions_addclose(&actions, pipeFDs[1])
        let argv: [UnsafeMutablePointer<CChar>?] = [
            strdup(executable), strdup("-dcq"), strdup("--"), strdup(path), nil,
        ]
        defer { for arg in argv { free(arg) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        close(pipeFDs[1])
        guard spawned == 0 else {
            close(pipeFDs[0])
            throw RenderError(
                .badScene,
                "\(tool) could not be started to read the header of \(name): \(String(cString: strerror(spawned))).")
        }
        var head: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 32)
        while head.count < 32 {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(pipeFDs[0], $0.baseAddress, 32 - head.count) }
            if n > 0 {
                head += buffer.prefix(n)
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        close(pipeFDs[0])  // the tool ends on SIGPIPE, or is killed
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard !head.isEmpty else {
            throw RenderError(.badScene, "\(name) looks \(tool)-compressed but does not decompress (is it damaged?).")
        }
        return head
    }
}
