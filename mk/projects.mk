# Artist projects on a farm (issue: projects): three loopback nodes, two of which cannot see the user's disk
# (their own mount namespace, a tmpfs over the projects folder), render real Blender projects - textures
# inside and outside the project, image sequences, UDIMs, fonts, linked libraries, a missing texture, a movie,
# File Output passes, an unbaked particle system - and the frames equal plain `blender -a` references.
# Root only (mount namespaces); the test skips itself otherwise.
APT_PACKAGES += ffmpeg util-linux

TEST_STEPS += test-projects

.PHONY: test-projects

## test-projects: tests/projects/test_projects.py against a 3-node loopback farm, real Blender (about a minute).
test-projects: setup
	$(SWIFT) build --product rexnode $(BUILD_FLAGS)
	REXNODE_BIN=$(BIN)/rexnode python3 -m unittest -v tests/projects/test_projects.py
