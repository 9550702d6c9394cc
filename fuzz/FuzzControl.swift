// libFuzzer harness for the control socket's request decoder (built by `make fuzz-control` with the Farm sources
// that hold the request and its decoder; they import Foundation only).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControl(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ControlFuzzTarget.request(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
