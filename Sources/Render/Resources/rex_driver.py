# rexnode render driver: runs inside one long-lived Blender process.
#
# Started as `blender -b FILE ... --python rex_driver.py [-- --persistent-data on|off] [--remap TABLE.json]
#     [--device CPU|OPTIX:1]` (Cycles device set before the job).
# With Blender as a Python module (PyPI's bpy) it is `python rex_driver.py FILE -- ARGS [--rex-threads N]
# [--rex-autoexec]` and this script loads FILE itself.
# Blender loads FILE (the job's copy, inside a folder that mirrors the project); with --remap, the absolute
# paths in TABLE (resolved path -> path under the job root) are pointed at their copies first. This script then
# reports the scene's facts and serves render requests read from stdin, one JSON object per line:
#     {"cmd": "render", "frame": 12, "output": "/abs/dir/rex_000012", "extras": "/abs/dir/extras"}
#     {"cmd": "quit"}
# Every answer is one line on stdout starting with the tag "@@REX " followed by JSON:
#     {"event": "scene", ...facts...}
#     {"event": "done", "frame": 12, "path": "/abs/dir/rex_000012.png", "seconds": 0.4,
#      "extras": [{"path": "passes/normal_0012.png", "file": "/abs/dir/extras/passes/normal_0012.png"}]}
#     {"event": "error", "frame": 12, "message": "Build without OpenImageDenoiser"}
# Blender's own chatter (progress lines "Fra:12 ... | Sample 8/16") goes to the same stdout; the Swift side
# parses it for progress. Each frame renders through Blender's animation path (frame_start = frame_end = N), as
# `blender -a` does, so simulations step as they do at home. The scene's own image format is kept and only the
# output path is overridden, except that a movie format (FFMPEG, AVI), which cannot be written one frame at a
# time, becomes PNG (the submitter encodes the movie). With "extras", the compositor's File Output nodes write
# under that folder (their layout kept) and what they wrote is listed.
import json
import os
import sys
import time
import traceback

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rex_project  # noqa: E402  (beside this script)

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
    """Options after `--`: `--persistent-data on|off` overrides the scene's own setting (default: keep it);
    `--remap TABLE.json` names the path table of the job's files."""
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    options = {}
    for index, name in enumerate(argv[:-1]):
        if name == "--persistent-data":
            options["persistent_data"] = argv[index + 1] == "on"
        elif name == "--remap":
            options["remap"] = argv[index + 1]
        elif name == "--device":
            options["device"] = argv[index + 1]
    return options


MOVIE_EXTENSIONS = {"MPEG4": ".mp4", "MKV": ".mkv", "QUICKTIME": ".mov", "AVI": ".avi", "OGG": ".ogv",
                    "WEBM": ".webm", "FLASH": ".flv", "MPEG1": ".mpg", "MPEG2": ".dvd", "DV": ".dv"}


def movie_facts(render):
    """What the submitter needs to encode the movie the scene asks for: container, codec, rate, quality."""
    ffmpeg = render.ffmpeg
    container = ffmpeg.format if render.image_settings.file_format == "FFMPEG" else "AVI"
    return {
        "container": container,
        "codec": ffmpeg.codec if render.image_settings.file_format == "FFMPEG" else render.image_settings.file_format,
        "fps": render.fps,
        "fpsBase": render.fps_base,
        "crf": getattr(ffmpeg, "constant_rate_factor", "MEDIUM"),
        "bitrate": getattr(ffmpeg, "video_bitrate", 0),
        "extension": MOVIE_EXTENSIONS.get(container, ".mp4"),
        "hasAudio": has_audio(render),
    }


def has_audio(render):
    """Whether Blender's movie of this scene would carry sound: an audio codec and a sound in the sequencer."""
    if getattr(render.ffmpeg, "audio_codec", "NONE") == "NONE":
        return False
    for scene in bpy.data.scenes:
        if scene.render == render and scene.sequence_editor is not None:
            strips = getattr(scene.sequence_editor, "sequences_all", None)
            if strips is None:
                strips = getattr(scene.sequence_editor, "strips_all", [])
            return any(strip.type == "SOUND" and not strip.mute for strip in strips)
    return False


def use_device(scene, choice):
    """Sets Cycles' device before the job (`join --device`): CPU, or a GPU kind with an optional index among the
    devices of that kind (the others are turned off, so each slot renders on its own GPU)."""
    kind, _, index = choice.partition(":")
    if kind == "CPU":
        if hasattr(scene, "cycles"):
            scene.cycles.device = "CPU"
        return
    prefs = bpy.context.preferences.addons["cycles"].preferences
    prefs.compute_device_type = kind
    prefs.refresh_devices()
    gpus = [d for d in prefs.devices if d.type == kind]
    for position, device in enumerate(gpus):
        device.use = index == "" or position == int(index)
    for device in prefs.devices:
        if device.type == "CPU":
            device.use = False
    scene.cycles.device = "GPU"


def prepare_scene(scene, options=None):
    """Makes the scene writable one frame at a time and returns its facts (the probe reports the same).

    A movie format (FFMPEG, AVI) cannot be written per frame, so such scenes render PNG frames instead;
    the file extension is always appended so the caller knows the written file's name.
    """
    render = scene.render
    original_format = render.image_settings.file_format
    movie = movie_facts(render) if render.is_movie_format else None
    if render.is_movie_format:
        if hasattr(render.image_settings, "media_type"):
            # Blender 5 splits images from movies: the format list offers PNG only once the type is IMAGE.
            render.image_settings.media_type = "IMAGE"
        render.image_settings.file_format = "PNG"
        # Lossless frames for the encoder: 8 bits per channel, as the movie would carry.
        render.image_settings.color_depth = "8"
    render.use_file_extension = True
    if options and "device" in options:
        use_device(scene, options["device"])
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
    if movie is not None:
        facts["movie"] = movie
    return facts


def clean_message(text):
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    cleaned = []
    for line in lines:
        if line.startswith("Error: "):
            line = line[len("Error: "):]
        cleaned.append(line)
    return "; ".join(cleaned) or "Blender reported an unknown error"


def render_frame(scene, frame, output, extras=None):
    """Renders one frame through the animation path and returns (image path, seconds, extra files)."""
    render = scene.render
    scene.frame_start = frame
    scene.frame_end = frame
    render.filepath = output
    render.use_overwrite = True
    render.use_placeholder = False
    path = render.frame_path(frame=frame)
    for stale in (path, output + render.file_extension):
        if os.path.exists(stale):
            os.remove(stale)
    if extras is not None:
        rex_project.redirect_file_outputs(scene, extras)
    started = time.monotonic()
    result = bpy.ops.render.render(animation=True, scene=scene.name)
    seconds = time.monotonic() - started
    if "FINISHED" not in result:
        raise RuntimeError("Blender cancelled the render of frame %d" % frame)
    if not os.path.exists(path):
        raise RuntimeError("Blender finished frame %d but wrote no image at %s" % (frame, path))
    # The animation path appends the frame number; the caller asked for `output` plus the format's extension.
    wanted = output + render.file_extension
    if path != wanted:
        os.replace(path, wanted)
        path = wanted
    written = []
    if extras is not None and os.path.isdir(extras):
        for name in rex_project.tree_files(extras):
            written.append({"path": os.path.relpath(name, extras), "file": name})
    return path, seconds, written


def module_mode():
    """Run as `python SCRIPT FILE -- ARGS` with Blender as a Python module (PyPI's bpy), not inside Blender."""
    return len(sys.argv) > 1 and sys.argv[0].endswith(".py") and not bpy.data.filepath


def script_arguments():
    return sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []


def open_as_module():
    """What Blender's command line does before the script: load FILE (scripts in it off unless --rex-autoexec),
    then apply --rex-threads N. Returns Blender's reason when the file does not load, else None."""
    argv = script_arguments()
    bpy.context.preferences.filepaths.use_scripts_auto_execute = "--rex-autoexec" in argv
    try:
        bpy.ops.wm.open_mainfile(filepath=sys.argv[1], load_ui=False)
    except Exception as error:
        # The Swift side names the file (the user's, not the farm's copy); only the cause is said here.
        return clean_message(error)
    if "--rex-threads" in argv[:-1]:
        threads = int(argv[argv.index("--rex-threads") + 1])
        for scene in bpy.data.scenes:
            scene.render.threads_mode = "FIXED"
            scene.render.threads = threads
    return None


def loaded_scene():
    """The scene Blender loaded from the file, or None when Blender started without one."""
    if module_mode():
        failure = open_as_module()
        if failure is not None:
            emit("fatal", message=failure)
            return None
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
    options = driver_options()
    if "remap" in options:
        with open(options["remap"]) as table:
            rex_project.remap(json.load(table))
    facts = prepare_scene(scene, options)
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
            path, seconds, extras = render_frame(scene, frame, request["output"], request.get("extras"))
        except Exception as error:  # Blender's RuntimeError carries its own text, e.g. the OIDN error
            if not isinstance(error, RuntimeError):
                traceback.print_exc()
            emit("error", frame=frame, message=clean_message(error))
            continue
        emit("done", frame=frame, path=path, seconds=seconds, extras=extras)


if __name__ == "__main__":
    serve()
