import ArgumentParser
import Farm
import Foundation

// MARK: recover

extension RexNode {
    /// After a lost quorum (too many machines gone for the farm to elect or commit), the members this node can still
    /// reach become the whole farm. Refused while a leader is alive; see docs/architecture.md, "Lost quorum".
    struct Recover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "After a lost quorum: the live members become the farm (entries only the missing held may be lost).")
        @OptionGroup var json: JSONFlag
        @OptionGroup var data: DataOption

        func run() async throws {
            try await RexNode.guarded {
                let answer = try await ControlClient.send(.recover, data: data.directory)
                if json.json { return print(answer.jsonText()) }
                print(answer["message"]?.string ?? "Recovered.")
            }
        }
    }
}
