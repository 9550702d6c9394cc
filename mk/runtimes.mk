# Runtimes and versions (issue 14): a second, modern Blender for the tests. PyPI's bpy (Blender as a Python
# module) goes into a project-local venv, created only when missing, so `make test` runs both Blenders; the
# demo needs only the system Blender. zstd reads the header of a Blender 5 (zstd-compressed) file at submit.
APT_PACKAGES += zstd python3-venv
BPY_VERSION = 5.0.1
BPY_VENV = .venv-bpy
BPY_PYTHON ?= /usr/bin/python3

.PHONY: bpy-venv

## bpy-venv: $(BPY_VENV) with bpy $(BPY_VERSION) (about 1 GB; only when missing).
bpy-venv: setup
	@if ! $(BPY_VENV)/bin/python -c "import bpy, sys; sys.exit(bpy.app.version_string != '$(BPY_VERSION)')" \
	  >/dev/null 2>&1; then \
	  echo "installing bpy $(BPY_VERSION) into $(BPY_VENV)"; rm -rf $(BPY_VENV); \
	  $(BPY_PYTHON) -m venv $(BPY_VENV) && $(BPY_VENV)/bin/pip install --quiet bpy==$(BPY_VERSION); \
	fi

test-unit: bpy-venv
