#!/usr/bin/env python3
"""Install anywhere (issue 16): the rexnode binary, copied alone to an empty folder, renders a real Blender job
while its build folder is hidden, and people get one sentence when no daemon runs.

  a. copied binary: `rexnode` is copied to WORK/bin (nothing else); its node starts in its own mount namespace
     with an empty tmpfs over the repository's .build, so SwiftPM's resource bundle (an absolute path into
     .build) is gone. The node extracts its embedded scripts into DATA/resources/<hash>/, renders 2 frames with
     real Blender, and the frames equal plain `blender -b scene.blend -a` (Tests/Fixtures/compare_images.py).
  b. no daemon: `rexnode jobs --data EMPTY` fails with one line naming `rexnode join`, no errno dump.
  c. end of job, on one node with the simulated renderer and `join --notify` pointed at a python http.server on
     127.0.0.1: `submit --on-done 'cat >> RECORD' --video` runs exactly once per job with its JSON on stdin, for a
     done and a canceled job, also across a restart of the node; the webhook gets both; `--video` left NAME.mp4
     next to the output folder and `rexnode video` makes NAME-2.mp4, both H.264 with the job's frame count.
  e. make install-files DESTDIR=TMP PREFIX=/usr/local: the release binary, rexnode.service (ExecStart=PREFIX/bin/
     rexnode join ..., EnvironmentFile /etc/rexnode/rexnode.conf) and the conf; the installed binary runs and
     `ldd` lists no libswift (static Swift standard library). Skipped when no release binary was built.
  d. add-on: `rexnode addon --path`, imported in Debian's `blender -b` with REXNODE_HOME set, submits the open
     file through `bpy.ops.rexnode.submit(frames='1-2')` and the job finishes (`rexnode wait`).

Root only for (a) (mount namespace); skipped otherwise. Needs blender.
Run: python3 -m unittest -v tests/install/test_install.py   (about a minute; KEEP=1 keeps WORK)
The binary: $REXNODE_BIN (default .build/debug/rexnode).
"""
import glob
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REXNODE = os.path.abspath(os.path.join(ROOT, os.environ.get("REXNODE_BIN", os.path.join(".build", "debug",
                                                                                            "rexnode"))))
BLENDER = os.environ.get("BLENDER", "blender")
MAKE_SCENE = os.path.join(ROOT, "Tests", "Fixtures", "make_test_scene.py")
COMPARE = os.path.join(ROOT, "Tests", "Fixtures", "compare_images.py")
DISCOVERY = "239.255.93.116:7916"
TIMEOUT_S = 300


def run(args, timeout, **kwargs):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              **kwargs)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"timed out after {timeout} s")


def tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as error:
        return f"({error})"


class Node:
    """One `rexnode join` (a farm of one), optionally with the build folder hidden."""

    def __init__(self, binary, data, log_path, hide=None, extra=(), discovery=DISCOVERY):
        self.binary, self.data, self.log_path = binary, data, log_path
        self.hide, self.extra, self.discovery = hide, tuple(extra), discovery
        out = run([binary, "init", "--data", data], 60)
        if out.returncode != 0:
            raise RuntimeError(f"rexnode init failed: {out.stdout}{out.stderr}")
        self.start()

    def start(self):
        binary, data, hide = self.binary, self.data, self.hide
        args = [binary, "join", "--data", data, "--listen", "127.0.0.1:0", "--interface", "127.0.0.1",
                "--discovery", self.discovery, "--slots", "1", "--name", "solo", *self.extra]
        if hide:
            args = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs none "$1" && shift && exec "$@"', "sh", hide, *args]
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def cli(self, *args, timeout=30):
        return run([self.binary, *args, "--data", self.data], timeout)

    def wait_ready(self, timeout=240):
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"rexnode join exited ({self.proc.returncode}):\n{tail(self.log_path)}")
            out = self.cli("peers", "--json", timeout=10)
            if out.returncode == 0:
                try:
                    me = next((p for p in json.loads(out.stdout) if p.get("self")), None)
                except ValueError:
                    me = None
                if me and me.get("role") == "leader":
                    return
            time.sleep(0.3)
        raise AssertionError(f"the node did not become leader within {timeout} s:\n{tail(self.log_path)}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()


class InstallTest(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="rexnode-install-")
        self.nodes = []

    def tearDown(self):
        for node in self.nodes:
            node.stop()
        failed = any(e for _, e in getattr(self._outcome, "errors", []) if e) if hasattr(self, "_outcome") else False
        if os.environ.get("KEEP") or failed:
            print(f"(work kept in {self.work})")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    @unittest.skipUnless(os.geteuid() == 0, "needs root (mount namespace)")
    def test_a_copied_binary_renders_with_build_folder_hidden(self):
        build = os.path.join(ROOT, ".build")
        bin_dir = os.path.join(self.work, "bin")
        os.makedirs(bin_dir)
        binary = os.path.join(bin_dir, "rexnode")
        shutil.copy2(REXNODE, binary)
        self.assertEqual(os.listdir(bin_dir), ["rexnode"])
        scene = os.path.join(self.work, "scene.blend")
        out = run([BLENDER, "-b", "--factory-startup", "--python", MAKE_SCENE, "--", scene, "--frames", "2"],
                  TIMEOUT_S)
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])
        ref = os.path.join(self.work, "ref")
        out = run([BLENDER, "-b", scene, "-o", os.path.join(ref, "frame_####"), "-a"], TIMEOUT_S)
        self.assertEqual(out.returncode, 0, out.stdout[-2000:])

        data = os.path.join(self.work, "node")
        node = Node(binary, data, os.path.join(self.work, "node.log"), hide=build)
        self.nodes.append(node)
        node.wait_ready()
        output = os.path.join(self.work, "out")
        result = node.cli("submit", scene, "--name", "frame", "--output", output, "--json", timeout=TIMEOUT_S)
        self.assertEqual(result.returncode, 0, f"{result.stdout}{result.stderr}\n{tail(node.log_path)}")
        self.assertEqual(json.loads(result.stdout)["state"], "done")
        self.assertEqual(sorted(os.listdir(output)), ["frame_0001.png", "frame_0002.png"])
        # The scene's frame rate is recorded at submit (for `rexnode video`).
        job = json.loads(result.stdout)["job"]
        self.assertEqual(json.loads(node.cli("status", job, "--json").stdout).get("fps"), 24)
        # The scripts came out of the binary, into the node's data folder.
        self.assertTrue(glob.glob(os.path.join(data, "resources", "*", "rex_driver.py")))
        cmp = run([BLENDER, "-b", "--factory-startup", "--python", COMPARE, "--", ref, output, "--tolerance", "2"],
                  TIMEOUT_S)
        line = next((x for x in reversed(cmp.stdout.splitlines()) if x.startswith("@@CMP ")), None)
        self.assertIsNotNone(line, cmp.stdout[-2000:])
        verdict = json.loads(line[len("@@CMP "):])
        self.assertTrue(verdict["ok"], verdict)
        self.assertEqual(verdict["compared"], 2, verdict)

    def test_b_no_daemon_is_one_sentence(self):
        empty = os.path.join(self.work, "nobody")
        os.makedirs(empty)
        out = run([REXNODE, "jobs", "--data", empty], 30)
        self.assertNotEqual(out.returncode, 0)
        lines = [x for x in out.stderr.splitlines() if x.strip()]
        self.assertEqual(len(lines), 1, out.stderr)
        self.assertIn("rexnode join", lines[0])
        self.assertNotIn("errno", lines[0])
        self.assertNotIn("descriptor", lines[0])


class MakeInstallTest(unittest.TestCase):
    release = os.path.join(ROOT, ".build", "release", "rexnode")

    @unittest.skipUnless(os.path.exists(os.path.join(ROOT, ".build", "release", "rexnode")), "no release build")
    def test_e_make_install_into_destdir(self):
        dest = tempfile.mkdtemp(prefix="rexnode-destdir-")
        try:
            out = run(["make", "-C", ROOT, "--no-print-directory", "install-files", f"DESTDIR={dest}",
                       "PREFIX=/usr/local"], 120)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            binary = os.path.join(dest, "usr", "local", "bin", "rexnode")
            self.assertTrue(os.access(binary, os.X_OK))
            with open(os.path.join(dest, "lib", "systemd", "system", "rexnode.service")) as f:
                unit = f.read()
            self.assertIn("ExecStart=/usr/local/bin/rexnode join $REXNODE_ARGS", unit)
            self.assertIn("EnvironmentFile=-/etc/rexnode/rexnode.conf", unit)
            self.assertTrue(os.path.exists(os.path.join(dest, "etc", "rexnode", "rexnode.conf")))
            version = run([binary, "--help"], 30)
            self.assertEqual(version.returncode, 0, version.stderr)
            ldd = run(["ldd", binary], 30)
            self.assertNotIn("libswift", ldd.stdout, ldd.stdout)
        finally:
            shutil.rmtree(dest, ignore_errors=True)


class Hook(http.server.BaseHTTPRequestHandler):
    bodies = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        Hook.bodies.append(self.rfile.read(length).decode())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def ffprobe(movie):
    out = run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
               "stream=codec_name,nb_read_frames,pix_fmt", "-of", "json", movie], 60)
    streams = json.loads(out.stdout or "{}").get("streams") or [{}]
    return streams[0]


class EndOfJobTest(unittest.TestCase):
    """One simulated node for the end-of-job actions and the add-on (no pixels here)."""

    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="rexnode-hooks-")
        cls.server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{cls.server.server_address[1]}/hook"
        cls.node = Node(REXNODE, os.path.join(cls.work, "node"), os.path.join(cls.work, "node.log"),
                        extra=("--renderer", "simulated:300", "--notify", url), discovery="239.255.93.117:7917")
        cls.node.wait_ready()
        cls.scene = os.path.join(cls.work, "scene.blend")
        out = run([BLENDER, "-b", "--factory-startup", "--python", MAKE_SCENE, "--", cls.scene], TIMEOUT_S)
        assert out.returncode == 0, out.stdout[-2000:]

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        cls.server.shutdown()
        if not os.environ.get("KEEP"):
            shutil.rmtree(cls.work, ignore_errors=True)
        else:
            print(f"(work kept in {cls.work})")

    def wait_for(self, predicate, what, timeout=120):
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if predicate():
                return
            time.sleep(0.3)
        self.fail(f"{what} within {timeout} s:\n{tail(self.node.log_path)}")

    def records(self, path):
        try:
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def test_c_on_done_once_per_job_notify_and_video(self):
        record = os.path.join(self.work, "on-done.jsonl")
        hook = f"cat >> '{record}'"
        out_a = os.path.join(self.work, "out", "alpha")
        a = self.node.cli("submit", self.scene, "--frames", "1-3", "--name", "alpha", "--output", out_a,
                          "--on-done", hook, "--video", "--json", timeout=TIMEOUT_S)
        self.assertEqual(a.returncode, 0, a.stdout + a.stderr)
        job_a = json.loads(a.stdout)["job"]
        b = self.node.cli("submit", self.scene, "--frames", "1-200", "--name", "beta", "--output",
                          os.path.join(self.work, "out", "beta"), "--on-done", hook, "--no-wait", "--json")
        self.assertEqual(b.returncode, 0, b.stdout + b.stderr)
        job_b = json.loads(b.stdout)["job"]
        cancel = self.node.cli("cancel", job_b)
        self.assertEqual(cancel.returncode, 0, cancel.stderr)
        self.wait_for(lambda: len(self.records(record)) >= 2, "both on-done commands ran")
        self.wait_for(lambda: len(Hook.bodies) >= 2, "the webhook got both jobs")
        time.sleep(3)
        # A restart runs nothing again.
        self.node.stop()
        self.node.start()
        self.node.wait_ready()
        time.sleep(4)
        got = self.records(record)
        self.assertEqual(sorted((r["job"], r["state"]) for r in got),
                         sorted([(job_a, "done"), (job_b, "canceled")]), got)
        done = next(r for r in got if r["job"] == job_a)
        self.assertEqual(len(done["frames"]), 3)
        posted = sorted((json.loads(x)["job"], json.loads(x)["state"]) for x in Hook.bodies)
        self.assertEqual(posted, sorted([(job_a, "done"), (job_b, "canceled")]))
        # submit --video, then rexnode video: two movies, never one over the other.
        movie = os.path.join(self.work, "out", "alpha.mp4")
        self.wait_for(lambda: os.path.exists(movie), "submit --video made alpha.mp4")
        info = ffprobe(movie)
        self.assertEqual((info.get("codec_name"), info.get("nb_read_frames"), info.get("pix_fmt")),
                         ("h264", "3", "yuv420p"), info)
        made = self.node.cli("video", job_a, timeout=120)
        self.assertEqual(made.returncode, 0, made.stderr)
        info = ffprobe(os.path.join(self.work, "out", "alpha-2.mp4"))
        self.assertEqual((info.get("codec_name"), info.get("nb_read_frames")), ("h264", "3"), info)

    def test_d_addon_submits_from_blender(self):
        out = self.node.cli("addon", "--path")
        self.assertEqual(out.returncode, 0, out.stderr)
        parent = out.stdout.strip().splitlines()[-1]
        self.assertTrue(os.path.isfile(os.path.join(parent, "rexnode_addon", "__init__.py")), parent)
        addons = os.path.join(self.work, "addons")
        installed = self.node.cli("addon", "--install", "--addons", addons)
        self.assertEqual(installed.returncode, 0, installed.stderr)
        self.assertTrue(os.path.isfile(os.path.join(addons, "rexnode_addon", "__init__.py")))
        env = dict(os.environ, REXNODE_HOME=self.node.data,
                   PATH=os.path.dirname(REXNODE) + os.pathsep + os.environ.get("PATH", ""))
        expr = ("import sys, bpy; sys.path.insert(0, %r); import rexnode_addon; rexnode_addon.register(); "
                "r = bpy.ops.rexnode.submit(frames='1-2'); print('@@RESULT', r)") % parent
        blend = run([BLENDER, "-b", self.scene, "--python-expr", expr], TIMEOUT_S, env=env)
        self.assertIn("@@RESULT {'FINISHED'}", blend.stdout, blend.stdout[-3000:] + blend.stderr[-2000:])
        # An unsaved file is refused with a sentence, and nothing is submitted.
        unsaved = run([BLENDER, "-b", "--factory-startup", "--python-expr",
                       expr.replace("frames='1-2'", "frames='1'")], TIMEOUT_S, env=env)
        self.assertIn("Save the file first", unsaved.stdout + unsaved.stderr)
        job = next(line.split()[-1] for line in blend.stdout.splitlines()
                   if line.startswith("rexnode: submitted job "))
        waited = self.node.cli("wait", job, timeout=TIMEOUT_S)
        self.assertEqual(waited.returncode, 0, waited.stdout + waited.stderr)
        status = json.loads(self.node.cli("status", job, "--json").stdout)
        self.assertEqual((status["state"], status["frames_total"]), ("done", 2))


if __name__ == "__main__":
    unittest.main()
