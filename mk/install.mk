# Install anywhere, video, notifications (issue 16): the copied binary renders with its build folder hidden (root:
# mount namespace), one-sentence errors.
APT_PACKAGES += ffmpeg util-linux

TEST_STEPS += test-install

.PHONY: test-install

## test-install: tests/install/test_install.py, real Blender, one loopback node (under a minute).
test-install: setup
	$(SWIFT) build --product rexnode $(BUILD_FLAGS)
	REXNODE_BIN=$(BIN)/rexnode python3 -m unittest -v tests/install/test_install.py
