import Testing
@testable import Election
