# Builds a tiny .blend for rexnode's Render tests, with Blender's own Python (no binary fixtures in git):
#
#   blender -b --factory-startup --python Tests/Fixtures/make_test_scene.py -- OUT.blend \
#       [--frames N] [--width W] [--height H] [--percentage P] [--samples S] [--format PNG|JPEG|OPEN_EXR|FFMPEG]
#       [--engine CYCLES|BLENDER_WORKBENCH] [--denoise] [--no-camera] [--compress]
#
# or with Blender as a Python module (PyPI's bpy): `python make_test_scene.py -- OUT.blend [options]`.
# --compress saves the file compressed (zstd in Blender 3.0+; Blender 5.0's own default).
#
# The cube moves and turns every frame so consecutive frames differ. Denoising is off unless --denoise is
# given: Debian's Blender has no OpenImageDenoise, so --denoise reproduces "Build without OpenImageDenoiser".
import argparse
import math
import sys

import bpy


def parse_arguments():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="make_test_scene.py")
    parser.add_argument("output")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--percentage", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--format", default="PNG")
    parser.add_argument("--engine", default="CYCLES")
    parser.add_argument("--denoise", action="store_true")
    parser.add_argument("--no-camera", action="store_true")
    parser.add_argument("--compress", action="store_true")
    return parser.parse_args(argv)


def main():
    args = parse_arguments()
    scene = bpy.context.scene
    # Start from the factory scene: it already has a cube, a camera and a light.
    cube = bpy.data.objects.get("Cube")
    if cube is None:
        bpy.ops.mesh.primitive_cube_add()
        cube = bpy.context.active_object
    material = bpy.data.materials.new("TestOrange")
    material.use_nodes = True
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.9, 0.35, 0.05, 1.0)
    cube.data.materials.clear()
    cube.data.materials.append(material)

    scene.frame_start = 1
    scene.frame_end = max(1, args.frames)
    scene.frame_step = 1
    for frame in range(scene.frame_start, scene.frame_end + 1):
        t = (frame - scene.frame_start) / max(1, scene.frame_end - scene.frame_start)
        cube.location = (-1.5 + 3.0 * t, 0.0, 0.0)
        cube.rotation_euler = (0.0, 0.0, math.radians(90.0 * t))
        cube.keyframe_insert("location", frame=frame)
        cube.keyframe_insert("rotation_euler", frame=frame)

    render = scene.render
    render.engine = args.engine
    render.resolution_x = args.width
    render.resolution_y = args.height
    render.resolution_percentage = args.percentage
    render.image_settings.file_format = args.format
    if args.engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = args.samples
        scene.cycles.use_adaptive_sampling = False
        scene.cycles.use_denoising = args.denoise
        scene.cycles.use_preview_denoising = False

    if args.no_camera:
        for obj in [obj for obj in bpy.data.objects if obj.type == "CAMERA"]:
            bpy.data.objects.remove(obj, do_unlink=True)
        scene.camera = None

    bpy.ops.wm.save_as_mainfile(filepath=args.output, compress=args.compress)
    print("made test scene", args.output)


main()
