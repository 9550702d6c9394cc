# Scenes for the tiled-rendering tests (tests/tiles/test_tiles.py), made with Blender's own Python:
#
#   blender -b --factory-startup --python Tests/Fixtures/make_tiles_scene.py -- KIND OUT.blend
#
# KIND: still (PNG, one frame, transparent film and a see-through cube: soft alpha), anim (PNG, frames 1-4, a cube
# moving across tile edges), exr (multilayer OpenEXR, DWAA, with Normal and Depth passes), glare (a Glare node in
# the compositor: not tileable), stamp (metadata burnt into the image: not tileable).
# Cycles on the CPU, denoising off (Debian's Blender has no OpenImageDenoise), an odd resolution so tile edges
# fall on uneven pixels, objects across every tile edge.
import sys

import bpy

kind, out = sys.argv[sys.argv.index("--") + 1:][:2]
bpy.ops.wm.read_factory_settings(use_empty=False)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 24 if kind == "anim" else 16
scene.cycles.use_denoising = False
scene.render.resolution_x = 97
scene.render.resolution_y = 61
scene.render.resolution_percentage = 100
scene.frame_start = 1
scene.frame_end = 4 if kind == "anim" else 1

cube = bpy.data.objects["Cube"]
if kind == "anim":
    cube.location = (-2.0, 0.0, 0.0)
    cube.keyframe_insert("location", frame=1)
    cube.location = (2.0, 0.0, 0.5)
    cube.keyframe_insert("location", frame=4)
bpy.ops.mesh.primitive_plane_add(size=12, location=(0, 0, -1))
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.8, location=(1.4, -0.6, 0.3))
material = bpy.data.materials.new("checker")
material.use_nodes = True
nodes = material.node_tree.nodes
checker = nodes.new("ShaderNodeTexChecker")
checker.inputs["Scale"].default_value = 9.0
material.node_tree.links.new(checker.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
bpy.context.object.data.materials.append(material)

if kind == "still":
    glass = bpy.data.materials.new("see-through")
    glass.use_nodes = True
    glass.node_tree.nodes["Principled BSDF"].inputs["Alpha"].default_value = 0.2
    cube.data.materials.clear()
    cube.data.materials.append(glass)
if kind == "stamp":
    scene.render.use_stamp = True
if kind == "exr":
    scene.render.image_settings.file_format = "OPEN_EXR_MULTILAYER"
    # A lossy codec: the tiles are written losslessly and the frame is compressed once, as Blender would.
    scene.render.image_settings.exr_codec = "DWAA"
    scene.view_layers[0].use_pass_normal = True
    scene.view_layers[0].use_pass_z = True
else:
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.film_transparent = kind == "still"

if kind == "glare":
    scene.use_nodes = True
    tree = scene.node_tree
    glare = tree.nodes.new("CompositorNodeGlare")
    tree.links.new(tree.nodes["Render Layers"].outputs["Image"], glare.inputs["Image"])
    tree.links.new(glare.outputs["Image"], tree.nodes["Composite"].inputs["Image"])

bpy.ops.wm.save_as_mainfile(filepath=out)
