// Entry points shared by the libFuzzer harnesses under `fuzz/` and the unit test that replays the committed
// corpus. NIO-free, so `make fuzz` compiles them with plain `swiftc -sanitize=fuzzer,address`.

/// Decoder entry points that must never crash, whatever the bytes.
public enum FuzzTargets {
    /// The fixed key the beacon corpus is sealed with, so the fuzzer reaches the authenticated path.
    public static let beaconKey = try! FarmKey(bytes: Array(0..<32))
    static let beaconCodec = BeaconCodec(farmKey: beaconKey)

    /// A datagram as the discovery socket receives it; also the body parser behind the AEAD, which the fuzzer
    /// could not reach through the MAC otherwise.
    public static func beacon(_ data: [UInt8]) {
        var replay = ReplayGuard(timeWindowMillis: 30_000, capacity: 8)
        if case .beacon(let b) = beaconCodec.open(data) {
            precondition(beaconCodec.open(beaconCodec.seal(b)) == .beacon(b), "beacon round trip")
            _ = replay.check(b, nowMillis: b.timeMillis)
        }
        if let body = BeaconCodec.parseBody(data) {
            precondition(body.publicKey.count == 32 && body.status.count <= Beacon.maxStatusBytes)
            _ = replay.check(body, nowMillis: 1_000)
            _ = beaconCodec.seal(body)
        }
    }

    /// A byte stream as a connection receives it after decryption: length-prefixed frames, each decoded as a
    /// message; every decoded message must survive encode → decode unchanged (text fields may have been
    /// normalised from invalid UTF-8, so bytes are not compared).
    public static func frames(_ data: [UInt8], maxFrame: Int = 64 << 10) {
        var offset = 0
        while offset < data.count {
            let rest = data[offset...]
            switch Framing.parse(prefix: rest.prefix(4), available: rest.count, maxFrame: maxFrame) {
            case .needMore, .tooLarge:
                return
            case .frame(let length):
                let frame = Array(data[(offset + 4)..<(offset + 4 + length)])
                if let message = try? MessageCodec.decode(frame, maxPayload: maxFrame) {
                    let again = try? MessageCodec.decode(MessageCodec.encode(message), maxPayload: maxFrame)
                    precondition(again == message, "message round trip")
                }
                offset += 4 + length
            }
        }
    }
}
