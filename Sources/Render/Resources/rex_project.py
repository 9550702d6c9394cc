# rexnode project handling inside Blender, shared by rex_prepare.py (at submit) and rex_driver.py (on workers):
#
# - trace(): every external file the open .blend needs, by the data that uses it (images with sequences and
#   UDIM tiles expanded, libraries, fonts, sounds, movie clips, Alembic/USD caches, volumes, and any other path
#   bpy.utils.blend_paths reports, e.g. IES files or disk caches), the files that are missing, Python that
#   autoexec would block, and simulations that are not baked.
# - remap(): after a worker opened the job's copy, points absolute paths at their place under the job root (the
#   table comes from the farm; relative paths already resolve because the job root mirrors the project).
# - bake(): bakes the unbaked point caches in memory and saves a copy of the file that carries them.
#
# Blender Asset Tracer (BAT) is the reference for the kinds of paths and their pitfalls; this asks Blender itself,
# so each version's own data model is used.
import math
import os
import re

import bpy

SEQUENCE_DIGITS = re.compile(r"^(.*?)(\d+)(\D*)$")
UDIM_TOKENS = ("<UDIM>", "<UVTILE>")


def resolve(path, library=None):
    """An absolute, normalised path for a path as stored in `library`'s data (None: the main file's)."""
    return os.path.normpath(bpy.path.abspath(path, library=library))


def library_path(library):
    """A library's own file. Once loaded, Blender stores every library's path relative to the main file (nested
    libraries included), so it resolves against the main file."""
    return os.path.normpath(bpy.path.abspath(library.filepath))


def sequence_files(path):
    """The files of an image or cache sequence whose first (or any) file is `path`: same prefix and suffix,
    any frame number. Empty when the folder holds none."""
    folder, name = os.path.split(path)
    match = SEQUENCE_DIGITS.match(name)
    if match is None:
        return [path] if os.path.isfile(path) else []
    prefix, _, suffix = match.groups()
    pattern = re.compile(re.escape(prefix) + r"\d+" + re.escape(suffix) + "$")
    try:
        names = sorted(n for n in os.listdir(folder) if pattern.match(n))
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names]


def udim_files(path, image):
    """The tiles of a UDIM image: the `<UDIM>` token (or the 1001-style number Blender shows) per tile."""
    numbers = [tile.number for tile in image.tiles] or [1001]
    folder, name = os.path.split(path)
    for token in UDIM_TOKENS:
        if token in name:
            if token == "<UDIM>":
                return [os.path.join(folder, name.replace(token, str(n))) for n in numbers]
            return [os.path.join(folder, name.replace(token, "u%d_v%d" % ((n - 1001) % 10 + 1, (n - 1001) // 10 + 1)))
                    for n in numbers]
    match = re.search(r"(?<!\d)1\d{3}(?!\d)", name)
    if match is None:
        return [path]
    return [os.path.join(folder, name[:match.start()] + str(n) + name[match.end():]) for n in numbers]


def tree_files(path):
    """Every file under a folder (a disk cache), or the file itself."""
    if os.path.isfile(path):
        return [path]
    found = []
    for folder, _, names in os.walk(path):
        found.extend(os.path.join(folder, n) for n in sorted(names))
    return sorted(found)


def _reference(kind, data, stored, key, files, optional=False):
    """One reference; an `optional` one (found only by blend_paths) reports what is not there as `absent`, which
    the farm warns about instead of refusing the job."""
    present = [f for f in files if os.path.isfile(f)]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files:
        missing = [key]
    reference = {"kind": kind, "data": data, "stored": stored, "key": key, "files": present, "missing": missing}
    if optional:
        reference["missing"], reference["absent"] = [], missing
    return reference


def _file_datablocks():
    """(kind, collection) of the datablocks whose `filepath` names a file Blender reads."""
    kinds = [("image", "images"), ("library", "libraries"), ("font", "fonts"), ("sound", "sounds"),
             ("clip", "movieclips"), ("cache", "cache_files"), ("volume", "volumes")]
    for kind, name in kinds:
        collection = getattr(bpy.data, name, None)
        if collection is not None:
            yield kind, collection


def references():
    """Every external file reference of the open file (libraries' data included), as dictionaries."""
    refs = []
    for kind, collection in _file_datablocks():
        for data in collection:
            stored = getattr(data, "filepath", "") or ""
            if not stored or stored == "<builtin>" or getattr(data, "packed_file", None) is not None:
                continue
            if kind == "library":
                key = library_path(data)
                refs.append(_reference(kind, data.name, stored, key, [key]))
                continue
            key = resolve(stored, data.library)
            source = getattr(data, "source", "FILE")
            if kind == "image":
                if source not in ("FILE", "SEQUENCE", "TILED", "MOVIE"):
                    continue
                if getattr(data, "packed_files", None) and len(data.packed_files) > 0:
                    continue
                if source == "SEQUENCE":
                    files = sequence_files(key)
                elif source == "TILED":
                    files = udim_files(key, data)
                else:
                    files = [key]
            elif kind == "clip" and source == "SEQUENCE":
                files = sequence_files(key)
            elif kind in ("cache", "volume") and getattr(data, "is_sequence", False):
                files = sequence_files(key)
            else:
                files = [key]
            name = data.name if data.library is None else "%s (from %s)" % (data.name, data.library.name)
            refs.append(_reference(kind, name, stored, key, files))
    covered = set(r["key"] for r in refs)
    for ref in list(refs):
        covered.update(ref["files"])
        covered.update(ref["missing"])
    # A text datablock's file is where a script was once opened from; its text lives in the .blend.
    for text in bpy.data.texts:
        if text.filepath:
            covered.add(resolve(text.filepath, text.library))
    # Anything else Blender knows as a path: IES files, sequencer strips, disk caches, fluid caches, mesh caches,
    # ocean bakes. Found this way, what is not there is only warned about: the path may be an unused setting.
    for path in bpy.utils.blend_paths(absolute=True, packed=False, local=False):
        key = os.path.normpath(path)
        if key in covered or not path:
            continue
        covered.add(key)
        if os.path.isdir(key):
            refs.append(_reference("other", "", path, key, tree_files(key), optional=True))
        elif os.path.isfile(key) or os.path.splitext(key)[1]:
            refs.append(_reference("other", "", path, key, [key], optional=True))
    # blend_paths gives absolute paths; say how the file stores each (a relative one needs no remap).
    stored_as = {}
    for path in bpy.utils.blend_paths(absolute=False, packed=False, local=False):
        stored_as.setdefault(os.path.normpath(bpy.path.abspath(path)), path)
    for ref in refs:
        if ref["kind"] == "other":
            ref["stored"] = stored_as.get(ref["key"], ref["stored"])
    return refs


def _ids_with_drivers():
    for name in ("objects", "meshes", "materials", "scenes", "worlds", "cameras", "lights", "shape_keys",
                 "node_groups", "curves", "armatures", "textures", "particles", "grease_pencils"):
        for data in getattr(bpy.data, name, []):
            yield data
            tree = getattr(data, "node_tree", None)
            if tree is not None:
                yield tree


# What Blender's restricted driver namespace offers with auto-run off (bpy_driver.c): math's functions, a few
# builtins, `frame` and the driver's own variables. An expression using only these runs anyway.
SAFE_DRIVER_NAMES = set(n for n in dir(math) if not n.startswith("_")) | {
    "abs", "all", "any", "bool", "complex", "divmod", "float", "int", "len", "max", "min", "pow", "round", "sum",
    "frame", "True", "False", "None", "clamp", "lerp", "smoothstep",
}


def runs_without_autoexec(driver):
    """Whether Blender evaluates this expression with auto-run off: only safe names, no nested code."""
    try:
        code = compile(driver.expression, "<driver>", "eval")
    except SyntaxError:
        return True  # Blender cannot run it either way: nothing to trust
    if any(isinstance(const, type(code)) for const in code.co_consts):
        return False
    allowed = SAFE_DRIVER_NAMES | set(variable.name for variable in driver.variables)
    return set(code.co_names) <= allowed


def blocked_scripts():
    """Python that Blender runs only with autoexec on: registered text blocks and driver expressions its simple
    expression evaluator cannot handle."""
    found = []
    for text in bpy.data.texts:
        if text.use_module:
            found.append("script %s" % text.name)
    for data in _ids_with_drivers():
        animation = getattr(data, "animation_data", None)
        if animation is None:
            continue
        for curve in animation.drivers:
            driver = curve.driver
            if driver.type == "SCRIPTED" and not getattr(driver, "is_simple_expression", False) \
                    and not runs_without_autoexec(driver):
                found.append("driver on %s (%s)" % (data.name, driver.expression))
    return found


def point_caches(scene):
    """(description, point cache) of every point-cache simulation in the scene: particles, hair dynamics,
    cloth, soft body, dynamic paint and rigid body."""
    caches = []
    for ob in scene.objects:
        for psys in getattr(ob, "particle_systems", []):
            settings = psys.settings
            if settings.type == "EMITTER" and settings.physics_type != "NO":
                caches.append(("particles %s on %s" % (psys.name, ob.name), psys.point_cache))
            elif settings.type == "HAIR" and psys.use_hair_dynamics:
                caches.append(("hair dynamics %s on %s" % (psys.name, ob.name), psys.point_cache))
        for mod in ob.modifiers:
            if mod.type in ("CLOTH", "SOFT_BODY"):
                caches.append(("%s on %s" % (mod.type.lower().replace("_", " "), ob.name), mod.point_cache))
            elif mod.type == "DYNAMIC_PAINT" and mod.canvas_settings is not None:
                for surface in mod.canvas_settings.canvas_surfaces:
                    if surface.surface_format != "IMAGE":
                        caches.append(("dynamic paint %s on %s" % (surface.name, ob.name), surface.point_cache))
    world = scene.rigidbody_world
    if world is not None and world.enabled and world.collection is not None:
        caches.append(("rigid body world", world.point_cache))
    return caches


def other_simulations(scene):
    """Simulations that are not point caches (fluid domains, geometry-node simulation zones): not baked here."""
    found = []
    for ob in scene.objects:
        for mod in ob.modifiers:
            if mod.type == "FLUID" and mod.fluid_type == "DOMAIN":
                found.append("fluid domain %s" % ob.name)
            elif mod.type == "NODES" and mod.node_group is not None:
                if any(n.bl_idname == "GeometryNodeSimulationOutput" for n in mod.node_group.nodes):
                    found.append("geometry-node simulation on %s" % ob.name)
    return found


def unbaked_simulations(scene):
    unbaked = [name for name, cache in point_caches(scene) if not cache.is_baked]
    return unbaked, other_simulations(scene)


def trace(scene):
    unbaked, others = unbaked_simulations(scene)
    return {"references": references(), "scripts": blocked_scripts(), "simulations": unbaked,
            "unbakeable": others}


def bake(scene, output, last_frame):
    """Bakes every unbaked point cache in memory (in frame order, from each cache's start) up to `last_frame`
    and saves a copy of the file at `output` that carries the caches; paths stay as stored."""
    world = scene.rigidbody_world
    rigid = world.point_cache if world is not None else None
    for _, cache in point_caches(scene):
        if cache.is_baked:
            continue
        if rigid is not None and cache == rigid:
            # Blender 3.4 crashes when a rigid body cache's disk setting is written (it is always in memory) and
            # ties its range to the world's: leave it as it is.
            continue
        if cache.use_disk_cache:
            cache.use_disk_cache = False
        if last_frame is not None and cache.frame_end > last_frame:
            cache.frame_end = max(cache.frame_start, last_frame)
    bpy.ops.ptcache.bake_all(bake=True)
    bpy.ops.wm.save_as_mainfile(filepath=output, copy=True, relative_remap=False, compress=False)


def remap(table):
    """Points each datablock whose resolved path is in `table` (absolute path -> absolute path under the job
    root) at its new place; libraries are reloaded from theirs. Returns how many paths changed."""
    changed = 0
    for library in list(bpy.data.libraries):
        target = table.get(library_path(library))
        if target:
            library.filepath = target
            library.reload()
            changed += 1
    for kind, collection in _file_datablocks():
        if kind == "library":
            continue
        for data in collection:
            stored = getattr(data, "filepath", "") or ""
            if not stored or stored == "<builtin>":
                continue
            # Linked data too: a library's image named by an absolute path points at its copy like a local one.
            target = table.get(resolve(stored, data.library))
            if target:
                data.filepath = target
                changed += 1
    return changed


def file_output_nodes(scene):
    """The compositor's File Output nodes of the scene (Blender 3.x/4.x and 5.x node trees)."""
    tree = getattr(scene, "node_tree", None) or getattr(scene, "compositing_node_group", None)
    if tree is None or not getattr(scene, "use_nodes", True):
        return []
    return [node for node in tree.nodes if node.bl_idname == "CompositorNodeOutputFile"]


def output_folder_attribute(node):
    return "base_path" if hasattr(node, "base_path") else "directory"


_ORIGINAL_OUTPUT_FOLDERS = {}


def redirect_file_outputs(scene, extras):
    """Points every File Output node at `extras`, keeping the layout it would have under the .blend's folder:
    `//passes/` becomes `extras/passes/`, an absolute `/x/y/` becomes `extras/y/`. The node's own folder is read
    once per session (later frames see the previous frame's redirection). Returns the originals."""
    originals = {}
    for node in file_output_nodes(scene):
        attribute = output_folder_attribute(node)
        original = _ORIGINAL_OUTPUT_FOLDERS.setdefault((scene.name, node.name), getattr(node, attribute))
        originals[node.name] = original
        if original.startswith("//"):
            relative = original[2:]
        else:
            relative = os.path.basename(os.path.normpath(original)) if original else ""
        relative = os.path.normpath(relative) if relative else ""
        # Folders above the .blend's (`//../a/`) keep the part below them (`a/`), so two such nodes stay apart.
        parts = [part for part in relative.split(os.sep) if part not in ("", ".")]
        while parts and parts[0] == "..":
            parts.pop(0)
        relative = os.path.join(*parts) if parts else ""
        target = os.path.join(extras, relative)
        if original.endswith("/") or not relative:
            target = target.rstrip("/") + "/"
        setattr(node, attribute, target)
    return originals
