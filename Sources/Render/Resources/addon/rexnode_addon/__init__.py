# rexnode's Blender add-on: a "Render on farm" panel (Render properties) and `bpy.ops.rexnode.submit`.
#
# Shipped inside the rexnode binary: `rexnode addon --path` prints the folder holding this package,
# `rexnode addon --install` copies it into Blender's add-ons folder. The operator saves the file when it has
# unsaved changes, runs `rexnode submit FILE --no-wait --json [...]` (the binary and data folder from the add-on's
# preferences, else `rexnode` on PATH and $REXNODE_HOME), then polls `rexnode status JOB --json` on a timer. In
# `blender -b` it works the same (the timer only runs while Blender does).
import json
import os
import shutil
import subprocess

import bpy

bl_info = {
    "name": "rexnode render farm",
    "author": "rexnode",
    "version": (0, 1, 0),
    "blender": (3, 0, 0),
    "location": "Properties > Render > Render on farm",
    "description": "Submit the open file to a rexnode farm and follow its progress",
    "category": "Render",
}

_state = {"job": None, "state": "", "done": 0, "total": 0, "message": "", "dashboard": None}


def _prefs():
    addon = bpy.context.preferences.addons.get(__package__ or __name__) if bpy.context else None
    return addon.preferences if addon else None


def rexnode_command():
    """The rexnode binary: the preference, else `rexnode` on PATH."""
    prefs = _prefs()
    if prefs and prefs.binary:
        return bpy.path.abspath(prefs.binary)
    return shutil.which("rexnode") or "rexnode"


def data_arguments():
    prefs = _prefs()
    data = (prefs.data if prefs and prefs.data else None) or os.environ.get("REXNODE_HOME")
    return ["--data", data] if data else []


def run_rexnode(*args, timeout=600):
    """Runs rexnode; returns (exit status, stdout, stderr)."""
    try:
        out = subprocess.run([rexnode_command(), *args, *data_arguments()], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, "", "rexnode was not found; set its path in the add-on's preferences or put it on PATH."
    except subprocess.TimeoutExpired:
        return 124, "", f"rexnode {args[0]} did not answer within {timeout} s."
    return out.returncode, out.stdout, out.stderr


def submit_arguments(path, frames="", chunk=0, tiles="", priority=0):
    """The `rexnode submit` command line (without the binary and --data) for these operator settings."""
    args = ["submit", path, "--no-wait", "--json"]
    if frames:
        args += ["--frames", frames]
    if chunk > 0:
        args += ["--chunk", str(chunk)]
    if tiles:
        args += ["--tiles", tiles]
    if priority:
        args += ["--priority", str(priority)]
    return args


def poll_status():
    """The timer: refreshes the panel's progress until the job ends."""
    job = _state["job"]
    if not job:
        return None
    rc, out, err = run_rexnode("status", job, "--json", timeout=30)
    if rc == 0:
        try:
            status = json.loads(out)
            _state.update(state=status.get("state", ""), done=status.get("frames_done", 0),
                          total=status.get("frames_total", 0), message="")
        except ValueError:
            pass
    else:
        _state["message"] = err.strip().splitlines()[-1] if err.strip() else f"rexnode status exited {rc}"
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            area.tag_redraw()
    if _state["state"] in ("done", "failed", "canceled"):
        return None
    return 2.0


class REXNODE_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__ or __name__
    binary: bpy.props.StringProperty(name="rexnode binary", subtype="FILE_PATH", default="")
    data: bpy.props.StringProperty(name="Data folder (REXNODE_HOME)", subtype="DIR_PATH", default="")

    def draw(self, context):
        self.layout.prop(self, "binary")
        self.layout.prop(self, "data")


class REXNODE_OT_submit(bpy.types.Operator):
    """Render this file on the rexnode farm"""
    bl_idname = "rexnode.submit"
    bl_label = "Render on farm"
    frames: bpy.props.StringProperty(name="Frames", default="", description="1-250, 1-100x5, 1,5,10-20")
    chunk: bpy.props.IntProperty(name="Chunk", default=0, min=0)
    tiles: bpy.props.StringProperty(name="Tiles", default="", description="CxR, e.g. 3x2")
    priority: bpy.props.IntProperty(name="Priority", default=0)

    def execute(self, context):
        path = bpy.data.filepath
        if not path:
            self.report({"ERROR"}, "Save the file first: the farm renders a saved .blend.")
            return {"CANCELLED"}
        if bpy.data.is_dirty:
            bpy.ops.wm.save_mainfile()
        rc, out, err = run_rexnode(*submit_arguments(path, self.frames, self.chunk, self.tiles, self.priority))
        if rc != 0:
            message = err.strip() or out.strip() or f"rexnode submit exited with status {rc}"
            self.report({"ERROR"}, message)
            print("rexnode: " + message)
            return {"CANCELLED"}
        try:
            answer = json.loads(out)
        except ValueError:
            self.report({"ERROR"}, "rexnode submit printed no JSON: " + out.strip()[-200:])
            return {"CANCELLED"}
        _state.update(job=answer.get("job"), state=answer.get("state", "queued"), done=answer.get("frames_done", 0),
                      total=answer.get("frames_total", 0), message="", dashboard=None)
        print(f"rexnode: submitted job {_state['job']}")
        self.report({"INFO"}, f"Submitted job {_state['job']} to the farm")
        if bpy.app.timers.is_registered(poll_status):
            bpy.app.timers.unregister(poll_status)
        bpy.app.timers.register(poll_status, first_interval=1.0)
        return {"FINISHED"}


class REXNODE_OT_dashboard(bpy.types.Operator):
    """Open this node's dashboard in a web browser"""
    bl_idname = "rexnode.dashboard"
    bl_label = "Open dashboard"

    def execute(self, context):
        rc, out, err = run_rexnode("dashboard", timeout=30)
        lines = out.strip().splitlines()
        if rc != 0 or not lines:
            self.report({"ERROR"}, (err.strip() or "This rexnode has no dashboard.").splitlines()[-1])
            return {"CANCELLED"}
        bpy.ops.wm.url_open(url=lines[-1])
        return {"FINISHED"}


class REXNODE_PT_farm(bpy.types.Panel):
    bl_label = "Render on farm"
    bl_idname = "REXNODE_PT_farm"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"

    def draw(self, context):
        layout = self.layout
        layout.operator(REXNODE_OT_submit.bl_idname, icon="RENDER_ANIMATION")
        if _state["job"]:
            layout.label(text=f"Job {_state['job']}: {_state['state']} {_state['done']}/{_state['total']} frames")
            if _state["message"]:
                layout.label(text=_state["message"], icon="ERROR")
        layout.operator(REXNODE_OT_dashboard.bl_idname, icon="URL")


CLASSES = (REXNODE_AddonPreferences, REXNODE_OT_submit, REXNODE_OT_dashboard, REXNODE_PT_farm)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    if bpy.app.timers.is_registered(poll_status):
        bpy.app.timers.unregister(poll_status)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
