# Scale (issue 17): sixteen daemons on loopback with five voters. Too heavy for `make test` on two cores; run by hand.
.PHONY: test-scale

## test-scale: 16 nodes (simulated renderer) form one farm with exactly 5 voters, finish a job through a failover and
## compact their logs; a 17th node starts from a snapshot and renders.
test-scale: setup
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	REXNODE_SCALE_TESTS=1 $(SWIFT) test --skip-build --filter VoterClusterTests $(BUILD_FLAGS)

BENCH_STEPS += bench-longrun
.PHONY: bench-longrun

## bench-longrun: a farm with a long history (LONGRUN_ENTRIES, default 200,000): restart to ready and RSS with the
## whole log vs from a snapshot, a new node from empty to rendering (bench/longrun_bench.py; docs/benchmarks.md).
LONGRUN_ENTRIES ?= 200000
bench-longrun: setup
	$(SWIFT) build -c release --product raftbench $(BUILD_FLAGS)
	python3 bench/longrun_bench.py $$($(SWIFT) build -c release --show-bin-path $(BUILD_FLAGS)) --entries $(LONGRUN_ENTRIES)
