# Election (Raft-lite): deterministic simulation in `make test`, a long soak, and benchmarks.
ELECTION_BIN = $$($(SWIFT) build -c release --show-bin-path $(BUILD_FLAGS))
ELECTION_BUGS = skip-vote-persist commit-old-term no-log-check count-learner-vote

TEST_STEPS += test-sim
BENCH_STEPS += bench-election

.PHONY: test-sim sim-long bench-election

## test-sim: 2,000 seeds of 5 nodes (and 500 each of 3 and 7, 300 of 9 with 3 voters; seeds of 4+ nodes run
## learners half the time) with no violation; every injected bug caught within 200 seeds.
test-sim:
	$(SWIFT) build -c release --product rexsim $(BUILD_FLAGS)
	$(ELECTION_BIN)/rexsim --nodes 5 --seed-start 1 --seeds 2000 --json
	$(ELECTION_BIN)/rexsim --nodes 3 --seed-start 1 --seeds 500 --json
	$(ELECTION_BIN)/rexsim --nodes 7 --seed-start 1 --seeds 500 --json
	$(ELECTION_BIN)/rexsim --nodes 9 --voters 3 --seed-start 1 --seeds 300 --json
	@for bug in $(ELECTION_BUGS); do \
	  $(ELECTION_BIN)/rexsim --nodes 5 --seed-start 1 --seeds 200 --inject-bug $$bug --json >/dev/null 2>&1; \
	  rc=$$?; \
	  if [ $$rc -eq 1 ]; then echo "rexsim caught injected bug $$bug"; \
	  else echo "rexsim did not catch injected bug $$bug within 200 seeds (exit $$rc)"; exit 1; fi; \
	done

## sim-long: 100,000 seeds of 5 nodes (about an hour on 2 cores).
sim-long:
	$(SWIFT) build -c release --product rexsim $(BUILD_FLAGS)
	$(ELECTION_BIN)/rexsim --nodes 5 --seed-start 1 --seeds 100000 --json

## bench-election: commit throughput on SQLite, simulated failover, simulator speed.
bench-election:
	$(SWIFT) build -c release --product raftbench $(BUILD_FLAGS)
	$(SWIFT) build -c release --product rexsim $(BUILD_FLAGS)
	$(ELECTION_BIN)/raftbench throughput
	$(ELECTION_BIN)/raftbench failover
	@out=$$($(ELECTION_BIN)/rexsim --nodes 5 --seed-start 1 --seeds 1000 --json); echo "$$out"; \
	  secs=$$(echo "$$out" | sed -n 's/.*"seconds":\([0-9.]*\).*/\1/p'); \
	  echo "rexsim: 1000 seeds x 5000 steps, 5 nodes in $$secs s"
