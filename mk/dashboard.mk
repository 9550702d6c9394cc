# Dashboard (issue 16): tests/dashboard/test_dashboard.py drives the page of a 2-node loopback farm in Debian's
# headless chromium through python3-selenium (which imports only under /usr/bin/python3), and writes
# docs/dashboard.png. The packages are installed by `setup` (apt-get update only when one is missing); curl is for
# the FarmTests process test of the dashboard (DashboardProcessTests).
APT_PACKAGES += chromium chromium-driver python3-selenium ffmpeg curl

TEST_STEPS += test-dashboard

.PHONY: test-dashboard

## test-dashboard: the dashboard in a real browser, and its API against the CLI's --json (about a minute).
test-dashboard: setup
	$(SWIFT) build --product rexnode $(BUILD_FLAGS)
	REXNODE_BIN=$(BIN)/rexnode /usr/bin/python3 -m unittest -v tests/dashboard/test_dashboard.py
