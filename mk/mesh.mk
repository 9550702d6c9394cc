# Mesh module: libFuzzer harnesses for the beacon and frame/message decoders, and the mesh benchmark.
FUZZ_SECONDS ?= 60
MESH_FUZZ_SOURCES = Sources/Mesh/Wire.swift Sources/Mesh/Beacon.swift Sources/Mesh/MeshMessage.swift \
	Sources/Mesh/MeshError.swift Sources/Mesh/Sodium.swift Sources/Mesh/FarmKey.swift Sources/Mesh/NodeIdentity.swift \
	Sources/Mesh/FuzzTargets.swift
MESH_FUZZ_TARGETS = beacon frames

.PHONY: fuzz fuzz-mesh bench-mesh

## fuzz: run each decoder under libFuzzer + ASan for FUZZ_SECONDS (default 60 s); the committed corpus seeds it.
fuzz: fuzz-mesh

fuzz-mesh:
	@mkdir -p .build/fuzz
	$(SWIFTC) -sanitize=fuzzer,address -parse-as-library -O -module-name MeshFuzz -I Sources/CSodium -lsodium \
		$(MESH_FUZZ_SOURCES) fuzz/FuzzBeacon.swift -o .build/fuzz/beacon
	$(SWIFTC) -sanitize=fuzzer,address -parse-as-library -O -module-name MeshFuzz -I Sources/CSodium -lsodium \
		$(MESH_FUZZ_SOURCES) fuzz/FuzzFrames.swift -o .build/fuzz/frames
	@for t in $(MESH_FUZZ_TARGETS); do \
	  mkdir -p .build/fuzz/corpus-$$t; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  SWIFT_BACKTRACE=enable=no .build/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 \
	    -artifact_prefix=.build/fuzz/$$t- \
	    .build/fuzz/corpus-$$t fuzz/corpus/$$t 2>&1 | grep -E "^(#|stat::number_of_executed_units|==|SUMMARY|Done)" | tail -3; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

## bench-mesh: encrypted transfer vs raw TCP, discovery latency, idle cost (figures in docs/benchmarks.md).
bench-mesh:
	$(SWIFT) build -c release --product meshbench $(BUILD_FLAGS)
	.build/release/meshbench

BENCH_STEPS += bench-mesh
SWIFTC ?= $(dir $(shell command -v $(SWIFT)))swiftc
