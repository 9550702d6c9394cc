# rexnode scene probe: `blender -b FILE --python rex_probe.py` prints the scene's facts as one tagged JSON
# line ("@@REX {...}") and lets Blender quit. It shares rex_driver.py's code, so the facts a probe reports
# are exactly those a render session reports (including the PNG fallback for movie formats).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rex_driver  # noqa: E402  (after the path change on purpose)

rex_driver.probe()
