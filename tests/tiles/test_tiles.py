#!/usr/bin/env python3
"""Tiled rendering (`submit --tiles CxR`): a frame split into border tiles rendered across the farm, then
assembled, equals plain Blender's render of the whole frame.

One farm for the module, built like tests/projects' (three `rexnode join` on loopback, --slots 1; n2 and n3 in
their own mount namespace with a tmpfs over WORK/projects, so they only get the scene from the farm), with
`--dead-after 3`. Scenes come from Tests/Fixtures/make_tiles_scene.py (Cycles, 97x61 pixels so tile edges fall on
uneven pixels); references from plain `blender -b FILE -o REF/frame_#### -f 1` (or `-a`).
  a. a 3x2 tiled still (PNG, transparent film) equals the reference within 8-bit dither (2/255 on the stored
     values, oiiotool --diff); `status --json` lists 6 tiles, all done, rendered by at least two nodes.
  b. a 2x2 tiled multilayer OpenEXR still (DWAA, a lossy codec) has every channel of the reference, each equal
     (oiiotool --diff, tolerance 0), by channel name.
  c. a scene with a Glare node in its compositor, and one that burns a stamp into the image, are refused, with
     the reason, and no job is made.
  d. a 2x2 tiled 4-frame animation: n3 is killed (kill -9, its Blender with it) while it holds a tile; the job
     still finishes and every frame equals `blender -a`.
Root only; skipped otherwise. Needs blender, oiiotool (openimageio-tools) and unshare.
Run: python3 -m unittest -v tests/tiles/test_tiles.py    (KEEP=1 keeps WORK)
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects"))
import test_projects as tp  # noqa: E402  (the farm and the helpers of the project tests)

MAKE_SCENE = os.path.join(tp.ROOT, "Tests", "Fixtures", "make_tiles_scene.py")
KINDS = ("still", "anim", "exr", "glare", "stamp")
tp.DISCOVERY = "239.255.93.95:7795"
KILLED = 3
# 8-bit dither: a border tile differs from the whole frame by at most 2/255 per channel (2/255 = 0.00784).
DITHER = 0.0079


class State:
    work = None
    farm = None
    failed = False


def scene(kind):
    return os.path.join(State.work, "projects", kind, kind + ".blend")


def ref(kind):
    return os.path.join(State.work, "refs", kind)


def out(kind):
    return os.path.join(State.work, "out", kind)


def setUpModule():
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root: nodes n2 and n3 run in their own mount namespace")
    for tool in (tp.BLENDER, "oiiotool", "unshare"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (make setup installs blender, openimageio-tools, "
                               "util-linux)")
    State.work = tempfile.mkdtemp(prefix="rex-tiles-")
    tp.State.work = State.work  # tp.staged() writes under it
    projects = os.path.join(State.work, "projects")
    for kind in KINDS:
        os.makedirs(os.path.dirname(scene(kind)))
        os.makedirs(ref(kind))
    os.makedirs(os.path.join(State.work, "logs"))
    try:
        logs = os.path.join(State.work, "logs")
        tp.blender_batch([(f"make {kind}", [tp.BLENDER, "-b", "--factory-startup", "--python", MAKE_SCENE, "--",
                                            kind, scene(kind)], os.path.join(logs, f"make-{kind}.log"))
                          for kind in KINDS], parallel=2)
        tp.blender_batch([(f"reference {kind}", [tp.BLENDER, "-b", scene(kind), "-o",
                                                 os.path.join(ref(kind), "frame_####"),
                                                 *(["-a"] if kind == "anim" else ["-f", "1"])],
                           os.path.join(logs, f"ref-{kind}.log")) for kind in ("still", "anim", "exr")], parallel=2)
        tp.Farm.extra_args = ("--dead-after", "3")
        State.farm = tp.Farm(State.work, projects)
        for i in State.farm.dirs:
            State.farm.start(i)
        formed, views = State.farm.wait_whole(tp.FORM_TIMEOUT_S)
        if formed is None:
            raise AssertionError("the farm did not form:\n" + tp.Farm.describe(views) + "\n" + State.farm.tails())
        for i in tp.HIDDEN:
            seen = os.listdir(f"/proc/{State.farm.procs[i].pid}/root{projects}")
            if seen:
                raise AssertionError(f"n{i} can see the projects folder: {seen}")
    except BaseException:
        State.failed = True
        tearDownModule()
        raise


def tearDownModule():
    if State.farm is not None:
        State.farm.stop_all()
        State.farm = None
    if State.work is None:
        return
    if State.failed or os.environ.get("KEEP"):
        print(f"\ntest_tiles: kept {State.work} (node logs nodes/n*.log)", file=sys.stderr)
    else:
        shutil.rmtree(State.work, ignore_errors=True)


def channels(path):
    """The channel names of an image, as OpenImageIO reads them."""
    info = tp.run(["oiiotool", "--info", "-v", path], 60).stdout
    for line in info.splitlines():
        if "channel list:" in line:
            return [name.strip() for name in line.split("channel list:")[1].split(",")]
    return []


class TileTest(unittest.TestCase):
    def setUp(self):
        self.ok = False
        State.farm.check_running()

    def tearDown(self):
        if not self.ok:
            State.failed = True
            print(f"\n{self.id()} failed; node logs:\n{State.farm.tails()}", file=sys.stderr)

    def status(self, job):
        result = State.farm.cli(1, "status", job, "--json")
        self.assertEqual(result.returncode, 0, f"status {job}: {result.stdout}{result.stderr}")
        return json.loads(result.stdout)

    def submitted(self, result, what):
        self.assertEqual(result["rc"], 0, f"submit of {what} failed (exit {result['rc']}):\n"
                         + "\n".join(result["lines"]) + "\n" + result["stderr"])
        self.assertIsNotNone(result["job"], f"no `Job ... →` line: {result['lines']}")
        print(f"\n  {what}: job {result['job']} done in {result['seconds']:.1f} s", file=sys.stderr)
        return result["job"]

    def test_a_tiled_still_equals_the_whole_frame(self):
        job = self.submitted(State.farm.submit(scene("still"), "--tiles", "3x2", "--output", out("still")),
                             "3x2 still")
        self.assertEqual(sorted(os.listdir(out("still"))), ["still_0001.png"])
        # The stored values, channel by channel: straight alpha as the PNG holds it (read premultiplied, as
        # Blender's decoder and oiiotool's default do, a wrong colour under low alpha would hide).
        straight = ["--iconfig", "oiio:UnassociatedAlpha", "1"]
        diff = tp.run(["oiiotool", *straight, os.path.join(ref("still"), "frame_0001.png"), *straight,
                       os.path.join(out("still"), "still_0001.png"), "--fail", str(DITHER), "--diff"], 120)
        self.assertEqual(diff.returncode, 0, f"the assembled still differs from Blender's by more than 2/255:\n"
                         f"{diff.stdout}{diff.stderr}")
        status = self.status(job)
        self.assertEqual(status["tiles"], "3x2")
        self.assertEqual((status["tiles_done"], status["tiles_total"]), (6, 6))
        tiles = status["frames"][0]["tiles"]
        self.assertEqual([t["tile"] for t in tiles], list(range(6)))
        self.assertTrue(all(t["state"] == "done" for t in tiles), tiles)
        self.assertGreaterEqual(len({t["node"] for t in tiles}), 2, f"one node rendered every tile: {tiles}")
        self.ok = True

    def test_b_tiled_multilayer_exr_keeps_every_channel(self):
        self.submitted(State.farm.submit(scene("exr"), "--tiles", "2x2", "--output", out("exr")), "2x2 EXR")
        farm = os.path.join(out("exr"), "exr_0001.exr")
        home = os.path.join(ref("exr"), "frame_0001.exr")
        self.assertTrue(os.path.exists(farm), os.listdir(out("exr")))
        names = channels(home)
        self.assertIn("ViewLayer.Normal.X", names)
        self.assertIn("ViewLayer.Depth.Z", names)
        self.assertEqual(channels(farm), names)
        diff = tp.run(["oiiotool", home, farm, "--fail", "0", "--diff"], 120)
        self.assertEqual(diff.returncode, 0, f"the assembled EXR differs from Blender's:\n{diff.stdout}{diff.stderr}")
        self.ok = True

    def test_c_a_scene_with_glare_or_a_stamp_is_refused_with_its_reason(self):
        before = json.loads(State.farm.cli(1, "jobs", "--json").stdout)
        for kind, reason in (("glare", "Glare"), ("stamp", "stamp")):
            result = State.farm.submit(scene(kind), "--tiles", "2x2", "--output", out(kind))
            self.assertNotEqual(result["rc"], 0, result)
            self.assertIn("cannot be split into tiles", result["stderr"])
            self.assertIn(reason, result["stderr"])
            self.assertEqual(len(result["stderr"].strip().splitlines()), 1, result["stderr"])
        after = json.loads(State.farm.cli(1, "jobs", "--json").stdout)
        self.assertEqual(len(after), len(before), "a refused submit made a job")
        self.ok = True

    def test_d_a_node_killed_while_holding_a_tile(self):
        holder = {}

        def submit():
            holder["result"] = State.farm.submit(scene("anim"), "--tiles", "2x2", "--output", out("anim"))

        thread = threading.Thread(target=submit)
        thread.start()
        victim = None
        killed = False
        started = time.monotonic()
        while thread.is_alive() and time.monotonic() - started < tp.SUBMIT_TIMEOUT_S and not killed:
            jobs = json.loads(State.farm.cli(1, "jobs", "--json").stdout or "[]")
            job = next((j["job"] for j in jobs if j["name"] == "anim"), None)
            if victim is None:
                me = [p for p in State.farm.peers(KILLED) or [] if p.get("self")]
                victim = me[0]["id"] if me else None
            if job and victim:
                frames = self.status(job)["frames"]
                tiles = [t for f in frames for t in f.get("tiles", [])]
                if any(t["state"] == "assigned" and t["node"] == victim for t in tiles):
                    os.killpg(State.farm.procs[KILLED].pid, signal.SIGKILL)
                    State.farm.procs[KILLED].wait()
                    killed = True
                    print(f"\n  killed n{KILLED} holding a tile; {sum(t['state'] == 'done' for t in tiles)} of "
                          f"{len(tiles)} tiles were in", file=sys.stderr)
            time.sleep(0.1)
        thread.join(tp.SUBMIT_TIMEOUT_S)
        self.assertTrue(killed, "n3 never held a tile while the job ran")
        job = self.submitted(holder["result"], "2x2 animation, n3 killed")
        names = [f"anim_{n:04d}.png" for n in range(1, 5)]
        self.assertEqual(sorted(os.listdir(out("anim"))), names)
        result = tp.compare(tp.staged("anim", [(os.path.join(out("anim"), f), f"frame_{n:04d}.png")
                                               for n, f in enumerate(names, 1)]), ref("anim"))
        self.assertTrue(result["ok"], f"frames differ from blender -a: {json.dumps(result)}")
        self.assertEqual(result["compared"], 4)
        self.assertEqual(self.status(job)["tiles_done"], 16)
        self.ok = True


if __name__ == "__main__":
    unittest.main()
