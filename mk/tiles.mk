# Tiled rendering (issue: tiles): a 3-node loopback farm (two nodes without the user's disk) renders tiled stills,
# a tiled multilayer EXR and a tiled animation with a node killed mid-job; the assembled frames equal plain
# Blender's. oiiotool (OpenImageIO) assembles the tiles. Root only (mount namespaces); the test skips otherwise.
APT_PACKAGES += openimageio-tools util-linux

TEST_STEPS += test-tiles

.PHONY: test-tiles

## test-tiles: tests/tiles/test_tiles.py against a 3-node loopback farm, real Blender (about a minute).
test-tiles: setup
	$(SWIFT) build --product rexnode $(BUILD_FLAGS)
	REXNODE_BIN=$(BIN)/rexnode python3 -m unittest -v tests/tiles/test_tiles.py
