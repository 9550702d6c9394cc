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
#     {"cmd": "render", "frame": 12, "output": "...", "region": {"x": 0, "y": 0, "width": 22, "height": 22,
#      "fullWidth": 67, "fullHeight": 45}}      (one tile: x, y from the top-left corner)
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
import struct
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
    facts["fps"] = render.fps / (render.fps_base or 1.0)
    facts["untileable"] = untileable_reason(scene)
    once = compressed_once(render.image_settings)
    if once is not None:
        facts["tileCompression"] = once
    if original_format != facts["fileFormat"]:
        facts["originalFileFormat"] = original_format
    if movie is not None:
        facts["movie"] = movie
    return facts


TILE_ENGINES = {"CYCLES"}


# Lossy OpenEXR codecs: tiles are written ZIP (lossless) and the assembled frame is compressed once with the codec.
LOSSY_EXR = {"DWAA": "dwaa", "DWAB": "dwab", "B44": "b44", "B44A": "b44a", "PXR24": "pxr24"}


def compressed_once(image_settings):
    """For a lossy format, the compression (oiiotool's name) the assembled frame gets while its tiles are written
    losslessly, so the frame is compressed once as Blender would: "jpeg:90", "dwaa", … None: tiles keep the
    scene's format as they are."""
    if image_settings.file_format == "JPEG":
        return "jpeg:%d" % image_settings.quality
    if image_settings.file_format in ("OPEN_EXR", "OPEN_EXR_MULTILAYER") and image_settings.exr_codec in LOSSY_EXR:
        return LOSSY_EXR[image_settings.exr_codec]
    return None


def lossless_tiles(image_settings):
    """Switches a lossy format to its lossless tile format (see compressed_once); returns what to restore."""
    saved = {name: getattr(image_settings, name) for name in ("file_format", "color_mode", "color_depth",
                                                              "exr_codec")}
    if image_settings.file_format == "JPEG":
        image_settings.file_format = "PNG"
        image_settings.color_depth = "8"
        if saved["color_mode"] != "BW":
            image_settings.color_mode = "RGB"
    elif compressed_once(image_settings) is not None:
        image_settings.exr_codec = "ZIP"
    return saved


def untileable_reason(scene):
    """Why the frames of this scene cannot be split into tiles whose pixels are those of the whole frame, or None.

    A tile is the frame's render border: Cycles renders each pixel with the same samples and seed either way, but
    anything that reads neighbouring pixels across the whole image would leave seams (the compositor: glare, blur,
    denoise nodes; the denoiser; EEVEE's screen-space effects; the sequencer; Freestyle lines)."""
    render = scene.render
    if render.engine not in TILE_ENGINES:
        return ("it renders with %s, whose screen-space effects read neighbouring pixels; tiles need Cycles"
                % render.engine.replace("BLENDER_", "").replace("_NEXT", ""))
    if render.use_border:
        return "it already renders a region of the frame (Render Region is on)"
    cycles = getattr(scene, "cycles", None)
    if cycles is not None and getattr(cycles, "use_denoising", False):
        return "Cycles' denoiser runs over the whole image (turn Denoise off in the render settings)"
    for layer in scene.view_layers:
        if getattr(getattr(layer, "cycles", None), "denoising_store_passes", False):
            return "view layer %s stores denoising data for the whole image" % layer.name
    if render.use_freestyle:
        return "Freestyle draws its lines over the whole image"
    if render.use_stamp:
        return "it burns its metadata stamp into the image (each tile would carry one)"
    if render.use_multiview:
        return "it renders stereo or multiple views"
    if cycles is not None and getattr(cycles, "time_limit", 0) > 0:
        return "its render time limit would apply to each tile, so tiles would stop at other sample counts"
    if cycles is not None and getattr(cycles, "use_guiding", False):
        return "path guiding learns from the whole image's paths, so tiles would not match it"
    image_format = render.image_settings.file_format
    if image_format in ("WEBP", "JPEG2000") and render.image_settings.quality < 100:
        return "its %s compression is lossy, and is not applied once to the assembled frame" % image_format
    if render.use_compositing and compositor_in_use(scene):
        return "its compositor (%s) works on the whole image" % compositor_in_use(scene)
    if render.use_sequencer and scene.sequence_editor is not None:
        strips = getattr(scene.sequence_editor, "sequences_all", None)
        if strips is None:
            strips = getattr(scene.sequence_editor, "strips_all", [])
        if any(not strip.mute for strip in strips):
            return "its video sequencer edits the whole image"
    return None


def compositor_in_use(scene):
    """The names of the compositor's nodes that change pixels (anything beyond render layers into the output)."""
    # Blender 5 names the compositor's tree `compositing_node_group` (no `node_tree`); before, `use_nodes` says
    # whether `node_tree` is used.
    tree = getattr(scene, "compositing_node_group", None)
    if tree is None and getattr(scene, "use_nodes", False):
        tree = getattr(scene, "node_tree", None)
    if tree is None:
        return None
    passthrough = {"R_LAYERS", "COMPOSITE", "VIEWER", "REROUTE", "GROUP_OUTPUT", "FRAME"}
    names = sorted(node.name for node in tree.nodes if node.type not in passthrough and not node.mute)
    return ", ".join(names) if names else None


def clean_message(text):
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    cleaned = []
    for line in lines:
        if line.startswith("Error: "):
            line = line[len("Error: "):]
        cleaned.append(line)
    return "; ".join(cleaned) or "Blender reported an unknown error"


BORDER_SETTINGS = ("use_border", "use_crop_to_border", "border_min_x", "border_max_x", "border_min_y",
                   "border_max_y")


def set_region(render, region):
    """Sets Blender's render border to one tile (pixels from the top-left corner), cropped to it. Blender takes a
    border edge as the truncated product fraction × size, so each edge is aimed a tenth of a pixel past its line:
    the tile starts and ends exactly on the pixels asked for, whatever the float rounding."""
    width = render.resolution_x * render.resolution_percentage // 100
    height = render.resolution_y * render.resolution_percentage // 100
    if (width, height) != (region["fullWidth"], region["fullHeight"]):
        raise RuntimeError("the scene renders %dx%d here and the job's tiles split a %dx%d image"
                           % (width, height, region["fullWidth"], region["fullHeight"]))
    x0, x1 = region["x"], region["x"] + region["width"]
    top, bottom = region["y"], region["y"] + region["height"]
    render.use_border = True
    render.use_crop_to_border = True
    render.border_min_x = min(1.0, (x0 + 0.1) / width)
    render.border_max_x = min(1.0, (x1 + 0.1) / width)
    # Blender counts rows from the bottom.
    render.border_min_y = min(1.0, (height - bottom + 0.1) / height)
    render.border_max_y = min(1.0, (height - top + 0.1) / height)


def image_size(path):
    """Width and height of a written image: from the header for PNG and OpenEXR (Blender's Python reports 0x0 for a
    multilayer EXR), else as Blender loads it."""
    with open(path, "rb") as stream:
        head = stream.read(8)
        if head == b"\x89PNG\r\n\x1a\n":
            stream.read(8)
            return struct.unpack(">II", stream.read(8))
        if head[:4] == b"\x76\x2f\x31\x01":
            # Attributes: name\0 type\0 size(int32) value, until an empty name; dataWindow is box2i.
            while True:
                name = read_cstring(stream)
                if not name:
                    break
                kind = read_cstring(stream)
                size = struct.unpack("<i", stream.read(4))[0]
                value = stream.read(size)
                if name == b"dataWindow" and kind == b"box2i":
                    x0, y0, x1, y1 = struct.unpack("<iiii", value)
                    return (x1 - x0 + 1, y1 - y0 + 1)
    image = bpy.data.images.load(path, check_existing=False)
    try:
        return tuple(image.size)
    finally:
        bpy.data.images.remove(image)


def read_cstring(stream):
    text = b""
    while len(text) < 256:
        byte = stream.read(1)
        if byte in (b"", b"\0"):
            break
        text += byte
    return text


def render_frame(scene, frame, output, extras=None, region=None):
    """Renders one frame (or one tile of it) through the animation path; returns (image path, seconds, extras)."""
    render = scene.render
    if region is None:
        return render_whole(scene, frame, output, extras)
    saved = {name: getattr(render, name) for name in BORDER_SETTINGS}
    image_settings = render.image_settings
    saved_format = {}
    try:
        # A lossy format's tiles are lossless: the assembled frame is compressed once, as Blender would.
        saved_format = lossless_tiles(image_settings)
        set_region(render, region)
        path, seconds, written = render_whole(scene, frame, output, None)
    finally:
        for name, value in saved.items():
            setattr(render, name, value)
        for name, value in saved_format.items():
            if getattr(image_settings, name) != value:
                setattr(image_settings, name, value)
    size = image_size(path)
    if size != (region["width"], region["height"]):
        raise RuntimeError("Blender wrote a %dx%d tile where %dx%d was asked for"
                           % (size[0], size[1], region["width"], region["height"]))
    return path, seconds, written


def render_whole(scene, frame, output, extras=None):
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
            path, seconds, extras = render_frame(scene, frame, request["output"], request.get("extras"),
                                                 request.get("region"))
        except Exception as error:  # Blender's RuntimeError carries its own text, e.g. the OIDN error
            if not isinstance(error, RuntimeError):
                traceback.print_exc()
            emit("error", frame=frame, message=clean_message(error))
            continue
        emit("done", frame=frame, path=path, seconds=seconds, extras=extras)


if __name__ == "__main__":
    serve()
