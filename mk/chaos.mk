# Fault suite (issue 6): five hosts in network namespaces, faults injected, history checked.
# Root only (network namespaces); CI runs as root.
CHAOS_FAULTS ?= 200
CHAOS_SEED ?= 1
CHAOS_SHORT_FAULTS ?= 12
APT_PACKAGES += ethtool

TEST_STEPS += test-chaos

.PHONY: test-chaos chaos

## test-chaos: the history checker's own tests, then (root) a link taken down and an address removed under a
## 3-node farm (chaos/test_linkflap.py, under a minute), then a short fault run (one fault of each kind, plus a
## real Blender job through a leader kill), under 5 minutes.
test-chaos: setup
	python3 -m unittest chaos/test_history.py
	@if [ "$$(id -u)" != 0 ]; then echo "test-chaos: the fault run needs root (network namespaces); skipped."; \
	else $(SWIFT) build --product rexnode $(BUILD_FLAGS) && \
	  REXNODE_BIN=$(BIN)/rexnode python3 -m unittest chaos/test_linkflap.py && \
	  python3 chaos/run.py $(BIN) --faults $(CHAOS_SHORT_FAULTS) --seed $(CHAOS_SEED) --json .build/chaos-short.json; fi

## chaos: the long run (>= 200 faults); writes docs/reliability.md from what it measured.
chaos: release
	python3 chaos/run.py $(REL) --faults $(CHAOS_FAULTS) --seed $(CHAOS_SEED) --report docs/reliability.md \
	  --json .build/chaos.json
