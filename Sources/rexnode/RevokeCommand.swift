import ArgumentParser
import Farm
import Foundation

// MARK: revoke, rotate-key

extension RexNode {
    /// Takes trust back from a machine: it leaves the membership through the log, the farm moves to a new key, and
    /// its identity is denied for good. See README, "When a machine is lost".
    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a machine from the farm, deny its identity and rotate the farm key.")
        @Argument(help: "The machine: its id (or a unique id prefix) or its name, as `rexnode peers` shows it.")
        var node: String
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let answer = try await ControlClient.send(.revoke(node: node), data: data.directory)
                if json.json { return print(answer.jsonText()) }
                let id = answer["node"]?.string ?? node
                let epoch = answer["epoch"]?.int ?? 0
                print("Revoked \(id): it is out of the farm and denied; the farm key is now at epoch \(epoch).")
                print("New join token (the old one opens nothing now):")
                print(answer["token"]?.string ?? "")
            }
        }
    }

    /// A new farm key for every member, without removing anyone (a token was shared too widely).
    struct RotateKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-key", abstract: "Give the farm a new key; the old join token stops working.")
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let answer = try await ControlClient.send(.rotateKey, data: data.directory)
                if json.json { return print(answer.jsonText()) }
                print("The farm key is now at epoch \(answer["epoch"]?.int ?? 0); new join token:")
                print(answer["token"]?.string ?? "")
            }
        }
    }
}
