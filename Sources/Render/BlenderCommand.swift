// MARK: - BlenderCommand

/// The Blender command line as data, so its shape (argument order, priority, environment) is decided and
/// tested in one place without starting Blender. Argument order matters to Blender: options are applied as
/// they are read, so `-Y` and `-t` come before the .blend file and `--python` after it.
public struct BlenderCommand: Sendable, Equatable {
    /// Path of the Blender executable.
    public var executable: String
    /// The .blend to load.
    public var blendFile: String
    /// The Python script run after loading (the render driver or the probe).
    public var pythonScript: String?
    /// Arguments after `--`, seen only by the Python script.
    public var scriptArguments: [String]
    /// Render threads (`-t N`); nil means Blender's default (all cores).
    public var threads: Int?
    /// Nice level Blender runs at (0: same priority as rexnode). Positive values keep the daemon's
    /// heartbeats on time while Blender uses every core.
    public var niceLevel: Int
    /// The `nice` program used to start Blender at a lower priority (it `exec`s, so the pid is Blender's).
    public var niceExecutable: String
    /// Scripts embedded in a scene stay off (a farm renders files from other machines) unless the job trusts them:
    /// then `--enable-autoexec` (`-y`).
    public var disableAutoexec: Bool
    /// Variables added to (or, with nil, removed from) the inherited environment.
    public var environment: [String: String?]
    /// `executable` is a Python interpreter with Blender as a module (`bpy`): it runs the script, which opens the
    /// file itself (`python SCRIPT FILE -- ARGS`); threads and autoexec go to the script as `--rex-threads N` and
    /// `--rex-autoexec`, since there is no Blender command line to take them.
    public var pythonModule: Bool

    public init(
        executable: String,
        blendFile: String,
        pythonScript: String? = nil,
        scriptArguments: [String] = [],
        threads: Int? = nil,
        niceLevel: Int = 0,
        niceExecutable: String = "/usr/bin/nice",
        disableAutoexec: Bool = true,
        environment: [String: String?] = [:],
        pythonModule: Bool = false
    ) {
        self.pythonModule = pythonModule
        self.executable = executable
        self.blendFile = blendFile
        self.pythonScript = pythonScript
        self.scriptArguments = scriptArguments
        self.threads = threads
        self.niceLevel = niceLevel
        self.niceExecutable = niceExecutable
        self.disableAutoexec = disableAutoexec
        self.environment = environment
    }

    /// Blender's own arguments (without the executable).
    public var arguments: [String] {
        if pythonModule {
            // Unbuffered, so Blender's lines and the driver's answers arrive as they are written.
            var arguments = ["-u", pythonScript ?? "-", blendFile, "--"] + scriptArguments
            if let threads { arguments += ["--rex-threads", String(threads)] }
            if !disableAutoexec { arguments.append("--rex-autoexec") }
            return arguments
        }
        var arguments = ["--background"]
        // Explicit either way: Blender's own default comes from the user's preferences (off unless changed).
        arguments.append(disableAutoexec ? "--disable-autoexec" : "--enable-autoexec")
        arguments.append("-noaudio")
        if let threads {
            arguments += ["--threads", String(threads)]
        }
        arguments.append(blendFile)
        if let pythonScript {
            // A Python exception in the driver ends Blender with status 1 instead of leaving it running idle.
            arguments += ["--python-exit-code", "1", "--python", pythonScript]
        }
        if !scriptArguments.isEmpty {
            arguments.append("--")
            arguments += scriptArguments
        }
        return arguments
    }

    /// The program actually started and its arguments: Blender itself, or `nice -n N blender ...`.
    public var invocation: (executable: String, arguments: [String]) {
        if niceLevel == 0 {
            return (executable, arguments)
        }
        return (niceExecutable, ["-n", String(niceLevel), executable] + arguments)
    }

    /// The full command line, executable first, as shown in errors and logs.
    public var commandLine: [String] {
        let invocation = self.invocation
        return [invocation.executable] + invocation.arguments
    }
}
