# rexnode — one binary, no server. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
SWIFT ?= swift
BUILD_FLAGS ?=
BIN = .build/debug
REL = .build/release
APT_PACKAGES = blender libsodium-dev libsqlite3-dev pkg-config python3 iproute2

# Extra steps that modules add in mk/*.mk (each fragment appends to TEST_STEPS / BENCH_STEPS and may add
# its own targets such as sim-long or fuzz).
TEST_STEPS :=
BENCH_STEPS :=
-include mk/*.mk

.PHONY: setup build release test test-unit demo bench clean

## setup: install the system packages rexnode needs, running `apt-get update` only when one is missing.
setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing >/dev/null 2>&1 || \
	  { $$SUDO apt-get update >/dev/null && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; \
	fi

build: setup
	$(SWIFT) build $(BUILD_FLAGS)

release: setup
	$(SWIFT) build -c release $(BUILD_FLAGS)

## test: every unit, simulation and multi-process test (real Blender included).
test: setup test-unit $(TEST_STEPS)

# The Raft-under-load test keeps Swift's shared pool busy on purpose for a minute: it runs in a process of its
# own, so it starves no other test of that process's threads.
test-unit: setup
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(SWIFT) test --skip-build --parallel --num-workers 2 --skip RaftUnderLoadTests $(BUILD_FLAGS)
	$(SWIFT) test --skip-build --filter RaftUnderLoadTests $(BUILD_FLAGS)

## demo: a local farm renders the bundled demo scene.
demo: release
	./scripts/demo.sh $(REL)/rexnode

## bench: benchmarks print ratios measured side by side; figures go to docs/benchmarks.md.
bench: release $(BENCH_STEPS)
	./scripts/bench.sh $(REL)

clean:
	rm -rf .build
