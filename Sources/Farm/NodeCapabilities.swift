import Foundation
import Render

/// Tags a node carries (`join --tags gpu,studio`) or a job needs (`submit --tags gpu`): a job renders only on nodes
/// carrying every one of its tags.
public enum NodeTags {
    /// The most characters a node's tags may take together: they travel in every beacon, whose status is small.
    public static let maxTotalLength = 48

    /// Parses `T1,T2`: lowercase letters, digits, `-` and `_`; duplicates are dropped, order kept sorted.
    public static func parse(_ text: String, option: String = "--tags") throws(FarmError) -> [String] {
        let tags = text.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces).lowercased()
        }
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-_")
        for tag in tags where tag.isEmpty || tag.count > 24 || !tag.allSatisfy(allowed.contains) {
            throw FarmError(
                .badInput,
                "\(option) takes comma-separated tags of letters, digits, '-' and '_' (up to 24 each), for example "
                    + "gpu,studio; \"\(tag)\" is not one.")
        }
        let unique = Array(Set(tags)).sorted()
        if option == "--tags" && unique.joined(separator: ",").count > maxTotalLength {
            throw FarmError(.badInput, "--tags may take at most \(maxTotalLength) characters in all.")
        }
        return unique
    }
}

/// The Cycles device a node's slots render on (`join --device OPTIX:1`): a kind and, for a GPU, an optional index.
public struct DeviceChoice: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, CaseIterable {
        case cpu = "CPU"
        case cuda = "CUDA"
        case optix = "OPTIX"
        case hip = "HIP"
        case oneapi = "ONEAPI"
    }

    public var kind: Kind
    /// Which device of that kind (0-based, in the order Blender lists them); nil: one slot per device.
    public var index: Int?

    public init(kind: Kind, index: Int? = nil) {
        self.kind = kind
        self.index = index
    }

    public init(_ text: String) throws(FarmError) {
        let parts = text.uppercased().split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard (1...2).contains(parts.count), let kind = Kind(rawValue: parts[0]),
            parts.count == 1 || (kind != .cpu && Int(parts[1]).map { $0 >= 0 } == true)
        else {
            throw FarmError(
                .badInput, "--device takes CPU, CUDA, OPTIX, HIP or ONEAPI, with :INDEX for one GPU (e.g. OPTIX:1).")
        }
        self.kind = kind
        index = parts.count == 2 ? Int(parts[1]) : nil
    }

    public var description: String { index.map { "\(kind.rawValue):\($0)" } ?? kind.rawValue }

    /// What each slot renders on: `OPTIX:1` for all of them when an index was given, else slot `i` on GPU `i`
    /// (`count` GPUs of this kind); CPU for every slot.
    public func perSlot(slots: Int, count: Int) -> [String] {
        guard kind != .cpu else { return Array(repeating: "CPU", count: slots) }
        if let index { return Array(repeating: "\(kind.rawValue):\(index)", count: slots) }
        return (0..<slots).map { "\(kind.rawValue):\($0 % max(1, count))" }
    }

    /// Checks the choice against what Blender sees (`BlenderInstallation.probeDevices`); one sentence when it is
    /// not there, naming what is.
    public func check(against seen: CyclesDevices, version: String) throws(FarmError) {
        guard kind != .cpu else { return }
        let found = seen.devices[kind.rawValue] ?? []
        let visible = (["CPU"] + seen.summary).joined(separator: ", ")
        if found.isEmpty {
            throw FarmError(
                .badInput,
                "--device \(description) is not available: this node's Blender \(version) sees only \(visible).")
        }
        if let index, index >= found.count {
            throw FarmError(
                .badInput,
                "--device \(description) is not available: this node's Blender \(version) sees \(found.count) "
                    + "\(kind.rawValue) device\(found.count == 1 ? "" : "s") (\(visible)).")
        }
    }
}
