import Foundation

/// The GPU devices a Blender's Cycles can render on, by kind (`CUDA`, `OPTIX`, `HIP`, `ONEAPI`): device names in the
/// order Blender lists them. CPU is always there and not listed.
public struct CyclesDevices: Sendable, Equatable {
    public var devices: [String: [String]]

    public init(devices: [String: [String]]) {
        self.devices = devices.filter { !$0.value.isEmpty }
    }

    /// `CUDA:0 (name)`, … for messages.
    public var summary: [String] {
        devices.keys.sorted().flatMap { kind in
            devices[kind, default: []].enumerated().map { "\(kind):\($0.offset) (\($0.element))" }
        }
    }

    /// Reads the probe's `REXDEVICES {json}` line.
    static func parse(_ lines: [String]) -> CyclesDevices? {
        guard let line = lines.first(where: { $0.hasPrefix("REXDEVICES ") }),
            let object = try? JSONSerialization.jsonObject(with: Data(line.dropFirst("REXDEVICES ".count).utf8))
                as? [String: [String]]
        else { return nil }
        return CyclesDevices(devices: object)
    }
}

extension BlenderInstallation {
    /// The Python run by `probeDevices`: for each GPU kind this Blender's Cycles knows, the devices it sees.
    static let deviceProbeScript = """
        import bpy, json
        found = {}
        prefs = bpy.context.preferences.addons["cycles"].preferences
        for kind in ("CUDA", "OPTIX", "HIP", "ONEAPI"):
            try:
                prefs.compute_device_type = kind
            except Exception:
                continue
            try:
                prefs.refresh_devices()
                found[kind] = [d.name for d in prefs.devices if d.type == kind]
            except Exception:
                found[kind] = []
        print("REXDEVICES " + json.dumps(found), flush=True)
        """

    /// Starts Blender once (`-b --factory-startup --python-expr`) and lists the GPU devices Cycles sees.
    public func probeDevices() async throws -> CyclesDevices {
        let arguments = ["-b", "--factory-startup", "--python-expr", Self.deviceProbeScript]
        let outcome = await runToEnd(executable: path, arguments: arguments, timeout: .seconds(120))
        guard let devices = CyclesDevices.parse(outcome.lines) else {
            throw RenderError(
                .blenderMissing,
                "Blender at '\(path)' could not list its Cycles devices (\(outcome.statusDescription)).",
                commandLine: [path] + arguments, outputTail: Array(outcome.lines.suffix(20)))
        }
        return devices
    }
}
