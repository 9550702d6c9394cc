# Builds rexnode's demo animation with Blender's own Python, so no binary .blend lives in git:
#
#   blender -b --factory-startup --python examples/make_demo_scene.py -- OUT.blend [--frames 24]
#       [--width 192] [--height 108] [--samples 16]
#
# A turntable: Suzanne in red glossy paint on a pedestal, a brushed-metal torus spinning around her, three
# coloured spheres and a checkered floor, lit by a warm key light, a cool rim light and a soft sky, while the
# camera orbits half a turn. Cycles on the CPU with few samples and denoising OFF (Debian's Blender is built
# without OpenImageDenoise), 192x108, 24 frames, PNG: the whole animation renders in seconds on 2 cores.
import argparse
import math
import sys

import bpy


def parse_arguments():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="make_demo_scene.py")
    parser.add_argument("output")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--height", type=int, default=108)
    parser.add_argument("--samples", type=int, default=16)
    return parser.parse_args(argv)


def clear_scene():
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj, do_unlink=True)


def principled(name, color, metallic=0.0, roughness=0.5, coat=0.0, emission=None, strength=0.0):
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    bsdf = material.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Metallic"].default_value = metallic
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Clearcoat"].default_value = coat
    if emission is not None:
        bsdf.inputs["Emission"].default_value = (*emission, 1.0)
        bsdf.inputs["Emission Strength"].default_value = strength
    return material


def checker_material():
    material = bpy.data.materials.new("Floor")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    links = material.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = 0.35
    checker = nodes.new("ShaderNodeTexChecker")
    checker.inputs["Scale"].default_value = 6.0
    checker.inputs["Color1"].default_value = (0.82, 0.80, 0.76, 1.0)
    checker.inputs["Color2"].default_value = (0.18, 0.19, 0.22, 1.0)
    links.new(checker.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def assign(obj, material):
    obj.data.materials.clear()
    obj.data.materials.append(material)


def smooth(obj, subdivisions=0):
    for polygon in obj.data.polygons:
        polygon.use_smooth = True
    if subdivisions:
        modifier = obj.modifiers.new("Subdivision", "SUBSURF")
        modifier.levels = subdivisions
        modifier.render_levels = subdivisions


def build(args):
    scene = bpy.context.scene
    clear_scene()

    # Floor and pedestal.
    bpy.ops.mesh.primitive_plane_add(size=14, location=(0, 0, 0))
    assign(bpy.context.active_object, checker_material())
    bpy.ops.mesh.primitive_cylinder_add(vertices=48, radius=1.1, depth=0.5, location=(0, 0, 0.25))
    pedestal = bpy.context.active_object
    smooth(pedestal)
    assign(pedestal, principled("Pedestal", (0.06, 0.065, 0.08), roughness=0.35))

    # Suzanne, turning slowly.
    bpy.ops.mesh.primitive_monkey_add(size=1.7, location=(0, 0, 1.35))
    monkey = bpy.context.active_object
    monkey.rotation_euler = (math.radians(-10), 0, 0)
    smooth(monkey, subdivisions=2)
    assign(monkey, principled("Paint", (0.75, 0.06, 0.04), roughness=0.2, coat=0.8))

    # A metal torus spinning around her.
    bpy.ops.mesh.primitive_torus_add(major_radius=1.8, minor_radius=0.08, location=(0, 0, 1.35))
    torus = bpy.context.active_object
    smooth(torus)
    assign(torus, principled("Brushed", (0.95, 0.78, 0.45), metallic=1.0, roughness=0.3))

    # Three spheres: blue ceramic, green rubber, a glowing one.
    spheres = [
        ((2.6, -1.2, 0.45), 0.45, principled("Ceramic", (0.05, 0.25, 0.8), roughness=0.1, coat=1.0)),
        ((-2.3, -1.8, 0.35), 0.35, principled("Rubber", (0.15, 0.6, 0.2), roughness=0.7)),
        ((-1.6, 2.2, 0.3), 0.3, principled("Glow", (1.0, 0.6, 0.2), emission=(1.0, 0.55, 0.15), strength=6.0)),
    ]
    for location, radius, material in spheres:
        bpy.ops.mesh.primitive_uv_sphere_add(segments=32, ring_count=16, radius=radius, location=location)
        sphere = bpy.context.active_object
        smooth(sphere)
        assign(sphere, material)

    # Lights: warm key (area), cool rim (area), soft sky.
    bpy.ops.object.light_add(type="AREA", location=(4.0, -3.5, 5.0))
    key = bpy.context.active_object
    key.data.energy = 900
    key.data.size = 3.0
    key.data.color = (1.0, 0.9, 0.78)
    key.rotation_euler = (math.radians(40), 0, math.radians(50))
    bpy.ops.object.light_add(type="AREA", location=(-4.5, 4.0, 3.5))
    rim = bpy.context.active_object
    rim.data.energy = 500
    rim.data.size = 2.0
    rim.data.color = (0.6, 0.75, 1.0)
    rim.rotation_euler = (math.radians(-50), 0, math.radians(-135))
    world = bpy.data.worlds.get("World") or bpy.data.worlds.new("World")
    scene.world = world
    world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (0.22, 0.27, 0.36, 1.0)
    background.inputs["Strength"].default_value = 0.6

    # Camera on an orbiting rig, always looking at Suzanne.
    bpy.ops.object.empty_add(location=(0, 0, 1.2))
    target = bpy.context.active_object
    target.name = "CameraTarget"
    bpy.ops.object.empty_add(location=(0, 0, 0))
    rig = bpy.context.active_object
    rig.name = "CameraRig"
    bpy.ops.object.camera_add(location=(0, -7.5, 3.2))
    camera = bpy.context.active_object
    camera.data.lens = 40
    camera.parent = rig
    track = camera.constraints.new("TRACK_TO")
    track.target = target
    track.track_axis = "TRACK_NEGATIVE_Z"
    track.up_axis = "UP_Y"
    scene.camera = camera

    # Animation: linear motion so the loop reads as a steady turntable.
    scene.frame_start = 1
    scene.frame_end = max(1, args.frames)
    first, last = scene.frame_start, scene.frame_end
    for obj, values in (
        (rig, ((0, 0, math.radians(-30)), (0, 0, math.radians(150)))),
        (monkey, ((math.radians(-10), 0, math.radians(-20)), (math.radians(-10), 0, math.radians(40)))),
        (torus, ((math.radians(70), 0, 0), (math.radians(70), math.radians(360), math.radians(180)))),
    ):
        obj.rotation_euler = values[0]
        obj.keyframe_insert("rotation_euler", frame=first)
        obj.rotation_euler = values[1]
        obj.keyframe_insert("rotation_euler", frame=last)
        for curve in obj.animation_data.action.fcurves:
            for point in curve.keyframe_points:
                point.interpolation = "LINEAR"

    # Render settings: small, fast, no denoiser.
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x = args.width
    render.resolution_y = args.height
    render.resolution_percentage = 100
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    render.filepath = "//render/demo_"
    # Keep Cycles' scene data between frames: same pixels, noticeably faster animation renders.
    render.use_persistent_data = True
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = args.samples
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = False
    cycles.use_preview_denoising = False
    cycles.max_bounces = 4
    cycles.diffuse_bounces = 2
    cycles.glossy_bounces = 2
    cycles.transmission_bounces = 2
    cycles.transparent_max_bounces = 2
    cycles.sample_clamp_indirect = 4.0
    cycles.blur_glossy = 1.0
    cycles.caustics_reflective = False
    cycles.caustics_refractive = False

    bpy.ops.wm.save_as_mainfile(filepath=args.output, compress=False)
    print("made demo scene", args.output)


build(parse_arguments())
