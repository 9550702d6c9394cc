// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "rexnode",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "rexnode", targets: ["rexnode"]),
        .executable(name: "rexsim", targets: ["rexsim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-extras", exact: "1.35.2"),
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", exact: "1.0.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", exact: "2.28.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        // Embedded resources: a target lists `plugins: ["EmbedResources"]`, depends on "Embedded" and excludes its
        // `Resources/` folder; every file there is compiled into `EmbeddedResources.folder` (docs/architecture.md).
        .executableTarget(name: "rex-embed"),
        .plugin(name: "EmbedResources", capability: .buildTool(), dependencies: ["rex-embed"]),
        .target(name: "Embedded"),
        .target(
            name: "Mesh",
            dependencies: [
                "CSodium",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Election",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(
            name: "Ledger",
            dependencies: [
                "Election",
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .target(
            name: "Render",
            dependencies: [
                "Embedded",
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Resources"],
            plugins: ["EmbedResources"]
        ),
        .target(
            name: "Farm",
            dependencies: [
                "Mesh", "Election", "Ledger", "Render", "Embedded",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "Dashboard",
            dependencies: [
                "Farm", "Embedded",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["Resources"],
            plugins: ["EmbedResources"]
        ),
        .executableTarget(
            name: "rexnode",
            dependencies: [
                "Farm", "Render", "Embedded", "Dashboard",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "rexsim",
            dependencies: [
                "Election",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "MeshTests", dependencies: ["Mesh", .product(name: "NIOEmbedded", package: "swift-nio")]),
        .testTarget(name: "ElectionTests", dependencies: ["Election", "Ledger"]),
        .testTarget(
            name: "LedgerTests", dependencies: ["Ledger", .product(name: "GRDB", package: "GRDB.swift")]),
        .testTarget(name: "RenderTests", dependencies: ["Render"]),
        .testTarget(
            name: "FarmTests",
            dependencies: [
                "Farm", "Ledger", "Render", "Mesh", "Embedded",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        .testTarget(
            name: "DashboardTests",
            dependencies: [
                "Dashboard", "Farm",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]),
        .executableTarget(
            name: "raftbench",
            dependencies: [
                "Election", "Ledger",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "bench/raftbench"
        ),
        .executableTarget(
            name: "meshbench",
            dependencies: [
                "Mesh",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "bench/meshbench"
        ),
    ],
    swiftLanguageModes: [.v6]
)
