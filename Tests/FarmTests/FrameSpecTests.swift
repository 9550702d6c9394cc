import Testing

@testable import Farm

@Suite struct FrameSpecTests {
    @Test(arguments: [
        ("1-5", [1, 2, 3, 4, 5]),
        ("1-10x3", [1, 4, 7, 10]),
        ("1,5,10-12", [1, 5, 10, 11, 12]),
        ("7", [7]),
        ("0-2", [0, 1, 2]),
        ("3,1,2,2", [1, 2, 3]),
        (" 1 - 3 ", [1, 2, 3]),
        ("1-100X50", [1, 51]),
    ])
    func parsesWhatUsersWrite(spec: String, frames: [Int]) throws {
        #expect(try FrameSpec(spec).frames == frames)
    }

    @Test(arguments: [
        ("9-3", "backwards"),
        ("abc", "not a frame"),
        ("", "empty"),
        ("1,,2", "empty item"),
        ("-5", "negative"),
        ("1-0x0", "step"),
        ("5x2", "needs a range"),
        ("1-2-3", "not a frame"),
        ("0-99999999", "beyond Blender"),
        ("1-200000", "more than"),
    ])
    func rejectsNonsenseWithAReadableSentence(spec: String, fragment: String) {
        #expect {
            try FrameSpec(spec)
        } throws: { error in
            guard let error = error as? FarmError else { return false }
            return error.code == .badInput && error.message.contains(fragment) && error.message.hasSuffix(".")
        }
    }

    @Test func sceneRangeWithStep() throws {
        #expect(try FrameSpec(start: 1, end: 6, step: 2).frames == [1, 3, 5])
        #expect(try FrameSpec(start: 1, end: 3).frames == [1, 2, 3])
    }
}
