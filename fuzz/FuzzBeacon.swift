// libFuzzer harness for the beacon decoder (built by `make fuzz` together with the Mesh codec sources).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBeacon(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    FuzzTargets.beacon(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
