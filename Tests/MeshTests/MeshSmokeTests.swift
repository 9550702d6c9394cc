import Testing
@testable import Mesh
