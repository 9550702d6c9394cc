import CSodium
import Foundation

/// A node's long-lived Ed25519 key pair; its public key (hex, first 16 chars) is the node id everywhere.
public struct NodeIdentity: Sendable {
    public let publicKey: [UInt8]
    let secretKey: [UInt8]

    public static func generate() -> NodeIdentity {
        precondition(Sodium.ready)
        var pk = [UInt8](repeating: 0, count: Int(crypto_sign_PUBLICKEYBYTES))
        var sk = [UInt8](repeating: 0, count: Int(crypto_sign_SECRETKEYBYTES))
        crypto_sign_keypair(&pk, &sk)
        return NodeIdentity(publicKey: pk, secretKey: sk)
    }

    /// Short, stable, printable id derived from the public key.
    public var nodeID: String { String(publicKey.hexString.prefix(16)) }

    public func sign(_ message: [UInt8]) -> [UInt8] {
        var sig = [UInt8](repeating: 0, count: Int(crypto_sign_BYTES))
        crypto_sign_detached(&sig, nil, message, UInt64(message.count), secretKey)
        return sig
    }

    public static func verify(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard signature.count == Int(crypto_sign_BYTES), publicKey.count == Int(crypto_sign_PUBLICKEYBYTES) else {
            return false
        }
        return crypto_sign_verify_detached(signature, message, UInt64(message.count), publicKey) == 0
    }

    /// Loads the identity from `path`, creating it (mode 0600) on first use.
    public static func loadOrCreate(at path: String) throws(MeshError) -> NodeIdentity {
        if let data = FileManager.default.contents(atPath: path) {
            guard data.count == Int(crypto_sign_SECRETKEYBYTES) else {
                throw MeshError(.badKey, "The node identity file \(path) is damaged (wrong size).")
            }
            let sk = Array(data)
            var pk = [UInt8](repeating: 0, count: Int(crypto_sign_PUBLICKEYBYTES))
            crypto_sign_ed25519_sk_to_pk(&pk, sk)
            return NodeIdentity(publicKey: pk, secretKey: sk)
        }
        let identity = generate()
        try SecretFile.write(identity.secretKey, to: path)
        return identity
    }
}
