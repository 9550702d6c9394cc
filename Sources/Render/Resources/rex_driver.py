# rexnode render driver: runs inside one long-lived Blender process.
#
# Started as `blender -b FILE ... --python rex_driver.py [-- --persistent-data on|off]`. Blender loads FILE;
# this script then reports the scene's facts and serves render requests read from stdin, one JSON object
# per line:
#     {"cmd": "render", "frame": 12, "output": "/abs/dir/rex_000012"}
#     {"cmd": "quit"}
# Every answer is one line on stdout starting with the tag "@@REX " followed by JSON:
#     {"event": "scene", ...facts...}
#     {"event": "done", "frame": 12, "path": "/abs/dir/rex_000012.png", "seconds": 0.4}
#     {"event": "error", "frame": 12, "message": "Build without OpenImageDenoiser"}
# Blender's own chatter (progress lines "Fra:12 ... | Sample 8/16") goes to the same stdout; the Swift side
# parses it for progress. The scene's own image format is kept and only the output path is overridden,
# except that a movie format (FFMPEG, AVI), which cannot be written one frame at a time, becomes PNG.
import json
import os
import sys
import time
import traceback

import bpy

TAG = "@@REX "


def _flush_c_stdio():
    """Blender's C code writes through stdio buffers; flush them so our tag never lands inside their line."""
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass


def emit(event, **fields):
    _flush_c_stdio()
    fields["event"] = event
    sys.stdout.write("\n" + TAG + json.dumps(fields) + "\n")
    sys.stdout.flush()


def driver_options():
    """Options after `--`: `--persistent-data on|off` overrides the scene's own setting (default: keep it)."""
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    options = {}
    for index, name in enumerate(argv[:-1]):
        if name == "--persistent-data":
            options["persistent_data"] = argv[index + 1] == "on"
    return options


def prepare_scene(scene, options=None):
    """Makes the scene writable one frame at a time and returns its facts (the probe reports the same).

    A movie format (FFMPEG, AVI) cannot be written per frame, so such scenes render PNG frames instead;
    the file extension is always appended so the caller knows the written file's name.
    """
    render = scene.render
    original_format = render.image_settings.file_format
    if render.is_movie_format:
        render.image_settings.file_format = "PNG"
    render.use_file_extension = True
    if options and "persistent_data" in options:
        # Keeps Cycles' scene data between frames of this process: the same pixels, about 25 % faster here.
        render.use_persistent_data = options["persistent_data"]
    facts = {
        "frameStart": scene.frame_start,
        "frameEnd": scene.frame_end,
        "frameStep": scene.frame_step,
        "resolutionX": render.resolution_x,
        "resolutionY": render.resolution_y,
        "resolutionPercentage": render.resolution_percentage,
        "engine": render.engine,
        "fileFormat": render.image_settings.file_format,
        "fileExtension": render.file_extension,
        "scene": scene.name,
        "camera": scene.camera.name if scene.camera else None,
        "persistentData": render.use_persistent_data,
    }
    if original_format != facts["fileFormat"]:
        facts["originalFileFormat"] = original_format
    return facts


def clean_message(text):
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    cleaned = []
    for line in lines:
        if line.startswith("Error: "):
            line = line[len("Error: "):]
        cleaned.append(line)
    return "; ".join(cleaned) or "Blender reported an unknown error"


def render_frame(scene, frame, output):
    scene.frame_set(frame)
    render = scene.render
    render.filepath = output
    path = output + render.file_extension
    if os.path.exists(path):
        os.remove(path)
    started = time.monotonic()
    result = bpy.ops.render.render(write_still=True, scene=scene.name)
    seconds = time.monotonic() - started
    if "FINISHED" not in result:
        raise RuntimeError("Blender cancelled the render of frame %d" % frame)
    if not os.path.exists(path):
        raise RuntimeError("Blender finished frame %d but wrote no image at %s" % (frame, path))
    return path, seconds


def loaded_scene():
    """The scene Blender loaded from the file, or None when Blender started without one."""
    if not bpy.data.filepath:
        emit("fatal", message="Blender did not load a .blend file")
        return None
    return bpy.context.scene


def probe():
    """Used by rex_probe.py: report the facts and return (Blender then quits)."""
    scene = loaded_scene()
    if scene is not None:
        facts = prepare_scene(scene)
        emit("scene", file=bpy.data.filepath, pid=os.getpid(), version=bpy.app.version_string, **facts)


def serve():
    scene = loaded_scene()
    if scene is None:
        return
    facts = prepare_scene(scene, driver_options())
    emit("scene", file=bpy.data.filepath, pid=os.getpid(), version=bpy.app.version_string, **facts)
    for raw in sys.stdin:
        raw = raw.strip()
        if not raw:
            continue
        try:
            request = json.loads(raw)
        except ValueError:
            emit("error", frame=None, message="driver received a line that is not JSON: %r" % raw[:200])
            continue
        command = request.get("cmd")
        if command == "quit":
            break
        if command != "render":
            emit("error", frame=None, message="driver received an unknown command %r" % command)
            continue
        frame = int(request["frame"])
        try:
            path, seconds = render_frame(scene, frame, request["output"])
        except Exception as error:  # Blender's RuntimeError carries its own text, e.g. the OIDN error
            if not isinstance(error, RuntimeError):
                traceback.print_exc()
            emit("error", frame=frame, message=clean_message(error))
            continue
        emit("done", frame=frame, path=path, seconds=seconds)


if __name__ == "__main__":
    serve()
