import Testing
@testable import Farm
