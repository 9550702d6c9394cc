# rexnode submit-time preparation:
#     blender -b FILE --python rex_prepare.py -- --trace-to TRACE.json [--bake-to OUT.blend --last-frame N]
# opens the user's own file where it lies, so every relative path resolves as on the artist's machine, writes
# the trace {"references": [...], "scripts": [...], "simulations": [...], "unbakeable": [...]} to TRACE.json (a
# large project's list would not fit a line) and prints tagged JSON lines ("@@REX {...}"):
#     {"event": "trace", "path": TRACE.json}
#     {"event": "baked", "path": OUT.blend, "simulations": [...]}   only with --bake-to and something to bake
#     {"event": "scene", ...facts...}                      the same facts a render session reports
# then lets Blender quit.
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy  # noqa: E402

import rex_driver  # noqa: E402  (after the path change on purpose)
import rex_project  # noqa: E402


def options():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    found = {}
    for index, name in enumerate(argv[:-1]):
        if name in ("--bake-to", "--last-frame", "--trace-to"):
            found[name[2:]] = argv[index + 1]
    return found


def main():
    scene = rex_driver.loaded_scene()
    if scene is None:
        return
    wanted = options()
    # Trace and bake before the facts: reading the facts switches a movie format to PNG in memory, which the
    # baked copy must not carry.
    traced = rex_project.trace(scene)
    with open(wanted["trace-to"], "w") as out:
        json.dump(traced, out)
    rex_driver.emit("trace", path=wanted["trace-to"])
    if "bake-to" in wanted and traced["simulations"]:
        last = int(wanted["last-frame"]) if "last-frame" in wanted else None
        try:
            rex_project.bake(scene, wanted["bake-to"], last)
        except Exception as error:
            traceback.print_exc()
            rex_driver.emit("fatal", message="baking the simulations failed: %s" % rex_driver.clean_message(error))
            return
        rex_driver.emit("baked", path=wanted["bake-to"], simulations=traced["simulations"])
    facts = rex_driver.prepare_scene(scene)
    rex_driver.emit("scene", file=bpy.data.filepath, pid=os.getpid(), version=bpy.app.version_string, **facts)


main()
