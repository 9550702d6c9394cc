# Builds a small artist-style project folder for rexnode's asset/dependency tests, with Blender's own Python
# (no binary fixtures in git; every texture is generated here):
#
#   blender -b --factory-startup --python Tests/Fixtures/make_project.py -- PROJECT_DIR OUTSIDE_DIR \
#       [--kind full|missing|movie|passes|particles|driver|nested|rigid] [--frames N] [--width W] [--height H] [--samples S]
#       [--passes-path //passes/]
#
# The main file is always PROJECT_DIR/shot.blend. Files that live outside the project go to OUTSIDE_DIR.
#   full       planes facing an orthographic camera, each with an emission shader showing one texture:
#              //textures/checker.png (relative), OUTSIDE_DIR/abs_tex.png (absolute), //seq/frame_0001.png..N
#              (image sequence, one colour per frame), //udim/tile.<UDIM>.png (tiles 1001 and 1002), a text object
#              using //fonts/DejaVuSans.ttf and an instance of collection "Props" linked from //lib/props.blend,
#              whose material uses the library's own relative texture //tex/wood.png (= lib/tex/wood.png).
#   missing    one plane with //textures/gone.png; the PNG is deleted after saving.
#   movie      a moving square, rendered as FFMPEG / MPEG-4 / H.264 at 24 fps (default 6 frames).
#   passes     compositor with a File Output node writing the Normal pass to //passes/normal_####.png.
#   particles  an unbaked Newtonian particle system (emission over frames, gravity, wind) instancing small
#              spheres, so a frame rendered alone differs from the same frame of a full animation render.
#   driver     a square whose X location is a Python scripted-expression driver; it moves only with -y.
# Emission shaders and the Standard view transform make texture colours come out unchanged, so a missing
# texture shows as pure magenta (1, 0, 1). Denoising is off: Debian's Blender has no OpenImageDenoise.
import argparse
import math
import os
import shutil
import sys
import traceback

import bmesh
import bpy

KINDS = ("full", "missing", "movie", "passes", "particles", "driver", "nested", "rigid")
DEFAULT_FRAMES = {"movie": 6, "particles": 6}
FONT_SOURCE = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SEQUENCE_COLOURS = [
    (1.0, 0.0, 0.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0),
    (0.45, 0.0, 1.0), (0.0, 0.45, 0.0), (0.6, 0.3, 0.0), (0.0, 0.0, 0.5),
]


def parse_arguments():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="make_project.py")
    parser.add_argument("project_dir")
    parser.add_argument("outside_dir")
    parser.add_argument("--kind", choices=KINDS, default="full")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--passes-path", default="//passes/", help="the File Output node's folder (kind passes)")
    args = parser.parse_args(argv)
    args.project_dir = os.path.abspath(args.project_dir)
    args.outside_dir = os.path.abspath(args.outside_dir)
    if args.frames is None:
        args.frames = DEFAULT_FRAMES.get(args.kind, 3)
    args.frames = max(1, args.frames)
    return args


# ---------------------------------------------------------------------------------------------- files on disk

def write_png(path, width, height, colour_at):
    """Writes a PNG whose pixel (x, y) is colour_at(x, y) -> (r, g, b), then forgets the datablock."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = bpy.data.images.new("tmp_" + os.path.basename(path), width, height, alpha=False)
    pixels = []
    for y in range(height):
        for x in range(width):
            r, g, b = colour_at(x, y)
            pixels.extend((r, g, b, 1.0))
    image.pixels[:] = pixels
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def solid(colour):
    return lambda x, y: colour


def checker(a, b, cell):
    return lambda x, y: a if ((x // cell) + (y // cell)) % 2 == 0 else b


def stripes(a, b, width):
    return lambda x, y: a if (x // width) % 2 == 0 else b


def load_image(absolute_path, stored_path, source="FILE"):
    """Loads an image and stores it under stored_path (relative '//...' or absolute)."""
    image = bpy.data.images.load(absolute_path, check_existing=False)
    image.source = source
    image.filepath = stored_path
    return image


# ---------------------------------------------------------------------------------------------- scene pieces

def reset_to_empty():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def configure_render(scene, args):
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x = args.width
    render.resolution_y = args.height
    render.resolution_percentage = 100
    render.use_persistent_data = False
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    render.fps = 24
    render.fps_base = 1.0
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = args.samples
    cycles.preview_samples = args.samples
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = False
    cycles.use_preview_denoising = False
    cycles.seed = 1
    cycles.use_animated_seed = False
    cycles.max_bounces = 2
    for view_layer in scene.view_layers:
        view_layer.cycles.use_denoising = False
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.02, 0.02, 0.02, 1.0)
    scene.world = world
    scene.frame_start = 1
    scene.frame_end = args.frames
    scene.frame_step = 1
    scene.frame_current = 1


def add_camera(scene, location=(0.0, 0.0, 10.0), rotation=(0.0, 0.0, 0.0), ortho_scale=10.0):
    data = bpy.data.cameras.new("Camera")
    data.type = "ORTHO"
    data.ortho_scale = ortho_scale
    data.clip_start = 0.1
    data.clip_end = 100.0
    camera = bpy.data.objects.new("Camera", data)
    camera.location = location
    camera.rotation_euler = rotation
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def emission_material(name, image=None, colour=(1.0, 1.0, 1.0), image_user=None):
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes = material.node_tree.nodes
    links = material.node_tree.links
    for node in list(nodes):
        if node.bl_idname != "ShaderNodeOutputMaterial":
            nodes.remove(node)
    output = nodes["Material Output"]
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 1.0
    emission.inputs["Color"].default_value = (colour[0], colour[1], colour[2], 1.0)
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    if image is not None:
        texture = nodes.new("ShaderNodeTexImage")
        texture.name = "Texture"
        texture.image = image
        texture.interpolation = "Closest"
        if image_user is not None:
            image_user(texture.image_user)
        links.new(texture.outputs["Color"], emission.inputs["Color"])
    return material


def make_plane(name, width, height, location, material, u_span=1.0, collection=None):
    """A plane in the XY plane facing +Z, UVs (0,0)..(u_span,1)."""
    w, h = width / 2.0, height / 2.0
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([(-w, -h, 0.0), (w, -h, 0.0), (w, h, 0.0), (-w, h, 0.0)], [], [(0, 1, 2, 3)])
    uv_layer = mesh.uv_layers.new(name="UVMap")
    for loop, uv in zip(mesh.loops, [(0.0, 0.0), (u_span, 0.0), (u_span, 1.0), (0.0, 1.0)]):
        uv_layer.data[loop.index].uv = uv
    mesh.update()
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj


def make_icosphere(name, radius, location, material, collection):
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_icosphere(bm, subdivisions=2, radius=radius)
    bm.to_mesh(mesh)
    bm.free()
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    collection.objects.link(obj)
    return obj


def save(path):
    # relative_remap=False: keep every path exactly as set (relative '//...' stays relative, absolute stays absolute).
    bpy.ops.wm.save_as_mainfile(filepath=path, compress=False, relative_remap=False)
    if os.path.exists(path + "1"):  # no shot.blend1 backups in the project
        os.remove(path + "1")


# ---------------------------------------------------------------------------------------------- kinds

def build_library(args):
    lib_dir = os.path.join(args.project_dir, "lib")
    lib_path = os.path.join(lib_dir, "props.blend")
    write_png(os.path.join(lib_dir, "tex", "wood.png"), 16, 16,
              stripes((0.45, 0.22, 0.05), (0.75, 0.5, 0.2), 2))
    scene = reset_to_empty()
    save(lib_path)  # so '//' means lib/ from now on
    wood = load_image(os.path.join(lib_dir, "tex", "wood.png"), "//tex/wood.png")
    wood.name = "wood.png"
    props = bpy.data.collections.new("Props")
    scene.collection.children.link(props)
    make_plane("WoodBoard", 2.0, 2.0, (0.0, 0.0, 0.0), emission_material("Wood", wood), collection=props)
    save(lib_path)
    return lib_path


def build_full(args, main_path):
    project, outside, frames = args.project_dir, args.outside_dir, args.frames
    write_png(os.path.join(project, "textures", "checker.png"), 16, 16,
              checker((1.0, 1.0, 1.0), (0.1, 0.1, 0.1), 4))
    write_png(os.path.join(outside, "abs_tex.png"), 16, 16, solid((0.0, 0.8, 0.0)))
    for frame in range(1, frames + 1):
        write_png(os.path.join(project, "seq", "frame_%04d.png" % frame), 8, 8,
                  solid(SEQUENCE_COLOURS[(frame - 1) % len(SEQUENCE_COLOURS)]))
    write_png(os.path.join(project, "udim", "tile.1001.png"), 16, 16, solid((0.0, 0.3, 1.0)))
    write_png(os.path.join(project, "udim", "tile.1002.png"), 16, 16, solid((1.0, 0.5, 0.0)))
    os.makedirs(os.path.join(project, "fonts"), exist_ok=True)
    shutil.copyfile(FONT_SOURCE, os.path.join(project, "fonts", "DejaVuSans.ttf"))
    lib_path = build_library(args)

    scene = reset_to_empty()
    save(main_path)  # so '//' means PROJECT_DIR from now on, also for libraries.load(relative=True)
    configure_render(scene, args)
    add_camera(scene)

    checker_image = load_image(os.path.join(project, "textures", "checker.png"), "//textures/checker.png")
    make_plane("Checker", 2.0, 2.0, (-3.75, 1.5, 0.0), emission_material("Checker", checker_image))

    absolute_image = load_image(os.path.join(outside, "abs_tex.png"), os.path.join(outside, "abs_tex.png"))
    make_plane("Absolute", 2.0, 2.0, (-1.25, 1.5, 0.0), emission_material("Absolute", absolute_image))

    sequence_image = load_image(os.path.join(project, "seq", "frame_0001.png"), "//seq/frame_0001.png", "SEQUENCE")

    def sequence_user(user):
        user.frame_duration = frames
        user.frame_start = 1
        user.frame_offset = 0
        user.use_cyclic = False
        user.use_auto_refresh = True

    make_plane("Sequence", 2.0, 2.0, (1.25, 1.5, 0.0),
               emission_material("Sequence", sequence_image, image_user=sequence_user))

    # Loading tile.1001.png and switching to TILED makes Blender 3.4 detect the tiles and store tile.<UDIM>.png.
    udim_image = bpy.data.images.load(os.path.join(project, "udim", "tile.1001.png"), check_existing=False)
    udim_image.source = "TILED"
    udim_image.filepath = "//udim/tile.<UDIM>.png"
    if len(udim_image.tiles) < 2:
        udim_image.tiles.new(tile_number=1002)
    make_plane("Udim", 4.0, 2.0, (-2.5, -1.5, 0.0), emission_material("Udim", udim_image), u_span=2.0)

    font = bpy.data.fonts.load(os.path.join(project, "fonts", "DejaVuSans.ttf"), check_existing=False)
    font.filepath = "//fonts/DejaVuSans.ttf"
    text = bpy.data.curves.new("Label", "FONT")
    text.body = "Rx"
    text.font = font
    text.size = 1.8
    text.align_x = "CENTER"
    text.align_y = "CENTER"
    text.materials.append(emission_material("Label", colour=(1.0, 0.9, 0.6)))
    text_object = bpy.data.objects.new("Label", text)
    text_object.location = (1.25, -1.5, 0.0)
    scene.collection.objects.link(text_object)

    with bpy.data.libraries.load(lib_path, link=True, relative=True) as (source, target):
        target.collections = ["Props"]
    props = target.collections[0]
    instance = bpy.data.objects.new("PropsInstance", None)
    instance.instance_type = "COLLECTION"
    instance.instance_collection = props
    instance.location = (3.75, 1.5, 0.0)
    scene.collection.objects.link(instance)

    # Camera drifts a little so frames also differ geometrically.
    camera = scene.camera
    for frame in range(1, frames + 1):
        camera.location.x = 0.1 * (frame - 1)
        camera.keyframe_insert("location", index=0, frame=frame)

    save(main_path)
    return {
        "images": ["//textures/checker.png", os.path.join(outside, "abs_tex.png"), "//seq/frame_0001.png",
                   "//udim/tile.<UDIM>.png", "//tex/wood.png"],  # the last one belongs to lib/props.blend
        "libraries": ["//lib/props.blend"],
        "fonts": ["//fonts/DejaVuSans.ttf"],
    }


def build_missing(args, main_path):
    gone = os.path.join(args.project_dir, "textures", "gone.png")
    write_png(gone, 8, 8, solid((0.0, 0.6, 1.0)))
    scene = reset_to_empty()
    save(main_path)
    configure_render(scene, args)
    add_camera(scene)
    image = load_image(gone, "//textures/gone.png")
    image.name = "gone.png"
    make_plane("Gone", 10.0, 6.0, (0.0, 0.0, 0.0), emission_material("Gone", image))
    save(main_path)
    os.remove(gone)
    return {"images": ["//textures/gone.png"], "libraries": [], "fonts": []}


def moving_square(scene, frames, x_from=-4.0, x_to=4.0):
    make_plane("Backdrop", 10.0, 6.0, (0.0, 0.0, -1.0), emission_material("Backdrop", colour=(0.2, 0.2, 0.25)))
    square = make_plane("Square", 1.5, 1.5, (x_from, 0.0, 0.0), emission_material("Square", colour=(1.0, 0.4, 0.0)))
    for frame in range(1, frames + 1):
        t = (frame - 1) / max(1, frames - 1)
        square.location.x = x_from + (x_to - x_from) * t
        square.keyframe_insert("location", index=0, frame=frame)
    return square


def build_movie(args, main_path):
    scene = reset_to_empty()
    save(main_path)
    configure_render(scene, args)
    add_camera(scene)
    moving_square(scene, args.frames)
    render = scene.render
    render.image_settings.file_format = "FFMPEG"
    render.ffmpeg.format = "MPEG4"
    render.ffmpeg.codec = "H264"
    render.ffmpeg.constant_rate_factor = "HIGH"
    render.ffmpeg.ffmpeg_preset = "GOOD"
    render.ffmpeg.audio_codec = "NONE"
    render.fps = 24
    render.fps_base = 1.0
    save(main_path)
    return {"images": [], "libraries": [], "fonts": []}


def build_passes(args, main_path):
    scene = reset_to_empty()
    save(main_path)
    configure_render(scene, args)
    add_camera(scene)
    moving_square(scene, args.frames)
    sphere_material = emission_material("Sphere", colour=(0.3, 0.8, 1.0))
    make_icosphere("Sphere", 1.6, (0.0, 0.0, 0.0), sphere_material, scene.collection)
    view_layer = scene.view_layers[0]
    view_layer.use_pass_normal = True
    scene.use_nodes = True
    tree = scene.node_tree
    layers = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers")
    composite = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeComposite")
    tree.links.new(layers.outputs["Image"], composite.inputs["Image"])
    file_output = tree.nodes.new("CompositorNodeOutputFile")
    file_output.name = "NormalOutput"
    file_output.base_path = args.passes_path
    file_output.format.file_format = "PNG"
    file_output.format.color_mode = "RGB"
    file_output.file_slots[0].path = "normal_"  # renaming the default "Image" slot; writes normal_0001.png ...
    tree.links.new(layers.outputs["Normal"], file_output.inputs[0])
    save(main_path)
    return {"images": [], "libraries": [], "fonts": []}


def build_particles(args, main_path):
    scene = reset_to_empty()
    save(main_path)
    configure_render(scene, args)
    # Side view: particles shoot up from the emitter, fall with gravity and drift in the wind.
    add_camera(scene, location=(0.0, -10.0, 0.0), rotation=(math.radians(90.0), 0.0, 0.0))
    scene.gravity = (0.0, 0.0, -9.81)
    emitter = make_plane("Emitter", 1.0, 1.0, (-2.5, 0.0, -1.5), emission_material("Emitter", colour=(0.3, 0.3, 0.3)))
    dot = make_icosphere("Dot", 1.0, (0.0, 0.0, 50.0), emission_material("Dot", colour=(1.0, 0.8, 0.1)),
                         scene.collection)
    modifier = emitter.modifiers.new("Particles", "PARTICLE_SYSTEM")
    system = modifier.particle_system
    system.seed = 7
    settings = system.settings
    settings.count = 200
    settings.frame_start = 1
    settings.frame_end = max(2, args.frames - 1)
    settings.lifetime = 250
    settings.emit_from = "FACE"
    settings.physics_type = "NEWTON"
    # Euler steps plus a position-dependent turbulence field: a frame simulated in one jump from the start
    # (a fresh process rendering only that frame) lands elsewhere than one stepped frame by frame (-a).
    # With the default midpoint integrator and only constant forces the two agree exactly.
    settings.integrator = "EULER"
    settings.timestep = 0.08
    settings.normal_factor = 6.0
    settings.factor_random = 2.0
    settings.damping = 0.0
    settings.mass = 1.0
    settings.effector_weights.gravity = 1.0
    settings.render_type = "OBJECT"
    settings.instance_object = dot
    settings.particle_size = 0.12
    settings.size_random = 0.0
    emitter.show_instancer_for_render = True
    settings.display_method = "DOT"
    # An empty only gets field settings through the operator; the wind blows along its local Z, here +X.
    bpy.ops.object.effector_add(type="WIND", location=(-5.0, 0.0, 0.0), rotation=(0.0, math.radians(90.0), 0.0))
    wind = bpy.context.active_object
    wind.name = "Wind"
    bpy.ops.object.effector_add(type="TURBULENCE", location=(0.0, 0.0, 0.0))
    turbulence = bpy.context.active_object
    turbulence.name = "Turbulence"
    turbulence.field.strength = 15.0
    turbulence.field.size = 0.8
    turbulence.field.seed = 3
    wind.field.strength = 4.0
    wind.field.flow = 0.0
    save(main_path)
    return {"images": [], "libraries": [], "fonts": []}


def build_driver(args, main_path):
    scene = reset_to_empty()
    save(main_path)
    configure_render(scene, args)
    add_camera(scene)
    make_plane("Backdrop", 10.0, 6.0, (0.0, 0.0, -1.0), emission_material("Backdrop", colour=(0.2, 0.2, 0.25)))
    square = make_plane("Driven", 1.5, 1.5, (0.0, 0.0, 0.0), emission_material("Driven", colour=(0.0, 1.0, 0.3)))
    fcurve = square.driver_add("location", 0)
    driver = fcurve.driver
    driver.type = "SCRIPTED"
    # float() is not in the simple-expression set, so this needs Python (and therefore autoexec / -y).
    # With autoexec off Blender 3.4 only runs expressions made of whitelisted names; 'context' is not one.
    # A driver that fails evaluates to 0.0, so without -y the square sits at x = 0 on every frame; with -y it is
    # at x = 1.8, 3.0, 4.2, ... (frame 3 still in view).
    driver.expression = "float(bpy.context.scene.frame_current) * 1.2 + 0.6"
    for modifier in list(fcurve.modifiers):
        fcurve.modifiers.remove(modifier)
    if driver.is_simple_expression:
        raise RuntimeError("driver expression unexpectedly simple")
    save(main_path)
    return {"images": [], "libraries": [], "fonts": []}


def build_nested(args, main_path):
    """shot.blend links collection CA from //lib/a.blend, which links CB from its own //sub/b.blend, whose
    material uses b.blend's own //tex/b.png (= lib/sub/tex/b.png): a library inside a library, in a subfolder."""
    root = os.path.dirname(main_path)
    os.makedirs(os.path.join(root, "lib", "sub", "tex"), exist_ok=True)
    texture = os.path.join(root, "lib", "sub", "tex", "b.png")
    reset_to_empty()
    image = bpy.data.images.new("b", 4, 4)
    image.filepath_raw = texture
    image.file_format = "PNG"
    image.save()
    material = bpy.data.materials.new("B")
    material.use_nodes = True
    node = material.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    image.filepath = "//tex/b.png"
    mesh = bpy.data.meshes.new("b")
    mesh.materials.append(material)
    collection = bpy.data.collections.new("CB")
    collection.objects.link(bpy.data.objects.new("B", mesh))
    bpy.context.scene.collection.children.link(collection)
    save(os.path.join(root, "lib", "sub", "b.blend"))
    for source, name, target in (("lib/sub/b.blend", "CB", "lib/a.blend"), ("lib/a.blend", "CA", "shot.blend")):
        reset_to_empty()
        save(os.path.join(root, target))  # saved first, so the library's path is stored relative to it
        with bpy.data.libraries.load(os.path.join(root, source), link=True, relative=True) as (_, into):
            into.collections = [name]
        if target == "lib/a.blend":
            outer = bpy.data.collections.new("CA")
            bpy.context.scene.collection.children.link(outer)
            for linked in into.collections:
                outer.children.link(linked)
        else:
            for linked in into.collections:
                bpy.context.scene.collection.children.link(linked)
        save(os.path.join(root, target))
    return {"images": ["//tex/b.png"], "libraries": ["//lib/a.blend", "//lib/sub/b.blend"], "fonts": []}


def build_rigid(args, main_path):
    """An unbaked rigid-body world: four cubes falling on a passive plane (Blender 3.4 crashes if a script writes
    the world cache's disk setting, which the farm's bake must not do)."""
    scene = reset_to_empty()
    save(main_path)
    configure_render(scene, args)
    add_camera(scene)
    bpy.ops.rigidbody.world_add()
    scene.rigidbody_world.point_cache.frame_end = args.frames
    bpy.ops.mesh.primitive_plane_add(size=8.0, location=(0.0, 0.0, -2.0))
    bpy.ops.rigidbody.object_add(type="PASSIVE")
    for i in range(4):
        bpy.ops.mesh.primitive_cube_add(size=0.6, location=(-1.2 + 0.8 * i, 0.2 * i, 1.0 + 0.7 * i))
        bpy.context.active_object.rotation_euler = (0.3 * i, 0.2, 0.1 * i)
        bpy.ops.rigidbody.object_add(type="ACTIVE")
        bpy.context.active_object.data.materials.append(emission_material("Box%d" % i, colour=(0.9, 0.3 + 0.15 * i, 0.1)))
    save(main_path)
    return {"images": [], "libraries": [], "fonts": []}


BUILDERS = {
    "full": build_full, "missing": build_missing, "movie": build_movie,
    "passes": build_passes, "particles": build_particles, "driver": build_driver, "nested": build_nested,
    "rigid": build_rigid,
}


def verify(main_path, expected):
    """Reopens the saved file and checks the stored (not resolved) paths."""
    bpy.ops.wm.open_mainfile(filepath=main_path)
    problems = []
    stored_images = sorted(i.filepath for i in bpy.data.images if i.source in {"FILE", "SEQUENCE", "TILED"})
    stored_libraries = sorted(l.filepath for l in bpy.data.libraries)
    stored_fonts = sorted(f.filepath for f in bpy.data.fonts if f.filepath != "<builtin>")
    for label, stored, wanted in (("image", stored_images, expected["images"]),
                                  ("library", stored_libraries, expected["libraries"]),
                                  ("font", stored_fonts, expected["fonts"])):
        if stored != sorted(wanted):
            problems.append("%s paths %r, expected %r" % (label, stored, wanted))
    for line in problems:
        print("make_project: " + line)
    return not problems


def main():
    args = parse_arguments()
    os.makedirs(args.project_dir, exist_ok=True)
    os.makedirs(args.outside_dir, exist_ok=True)
    main_path = os.path.join(args.project_dir, "shot.blend")
    expected = BUILDERS[args.kind](args, main_path)
    if not verify(main_path, expected):
        sys.exit(1)
    print("made project", args.kind, main_path)


try:
    main()
except SystemExit:
    raise
except Exception:
    traceback.print_exc()
    sys.stdout.flush()
    sys.exit(1)
