# Scale (issue 17): sixteen daemons on loopback with five voters. Too heavy for `make test` on two cores; run by hand.
.PHONY: test-scale

## test-scale: 16 nodes (simulated renderer) form one farm with exactly 5 voters and finish a job through a failover.
test-scale: setup
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	REXNODE_SCALE_TESTS=1 $(SWIFT) test --skip-build --filter VoterClusterTests $(BUILD_FLAGS)
