# rexnode scene probe: `blender -b FILE --python rex_probe.py` prints the scene's facts as one tagged JSON
# line ("@@REX {...}") and lets Blender quit. Used before a job is accepted; rendering uses rex_driver.py.
import json
import os
import sys

import bpy


def main():
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass
    if not bpy.data.filepath:
        facts = {"event": "fatal", "message": "Blender did not load a .blend file"}
    else:
        scene = bpy.context.scene
        render = scene.render
        facts = {
            "event": "scene",
            "file": bpy.data.filepath,
            "pid": os.getpid(),
            "version": bpy.app.version_string,
            "frameStart": scene.frame_start,
            "frameEnd": scene.frame_end,
            "frameStep": scene.frame_step,
            "resolutionX": render.resolution_x,
            "resolutionY": render.resolution_y,
            "resolutionPercentage": render.resolution_percentage,
            "engine": render.engine,
            "fileFormat": render.image_settings.file_format,
            "fileExtension": render.file_extension,
        }
    sys.stdout.write("\n@@REX " + json.dumps(facts) + "\n")
    sys.stdout.flush()


main()
