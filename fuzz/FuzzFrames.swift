// libFuzzer harness for frame splitting and the message codec (built by `make fuzz`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    FuzzTargets.frames(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
