#!/usr/bin/env python3
"""Install anywhere (issue 16): the rexnode binary, copied alone to an empty folder, renders a real Blender job
while its build folder is hidden, and people get one sentence when no daemon runs.

  a. copied binary: `rexnode` is copied to WORK/bin (nothing else); its node starts in its own mount namespace
     with an empty tmpfs over the repository's .build, so SwiftPM's resource bundle (an absolute path into
     .build) is gone. The node extracts its embedded scripts into DATA/resources/<hash>/, renders 2 frames with
     real Blender, and the frames equal plain `blender -b scene.blend -a` (Tests/Fixtures/compare_images.py).
  b. no daemon: `rexnode jobs --data EMPTY` fails with one line naming `rexnode join`, no errno dump.

Root only for (a) (mount namespace); skipped otherwise. Needs blender.
Run: python3 -m unittest -v tests/install/test_install.py   (about a minute; KEEP=1 keeps WORK)
The binary: $REXNODE_BIN (default .build/debug/rexnode).
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
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

    def __init__(self, binary, data, log_path, hide=None):
        self.binary, self.data, self.log_path = binary, data, log_path
        out = run([binary, "init", "--data", data], 60)
        if out.returncode != 0:
            raise RuntimeError(f"rexnode init failed: {out.stdout}{out.stderr}")
        args = [binary, "join", "--data", data, "--listen", "127.0.0.1:0", "--interface", "127.0.0.1",
                "--discovery", DISCOVERY, "--slots", "1", "--name", "solo"]
        if hide:
            args = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs none "$1" && shift && exec "$@"', "sh", hide, *args]
        self.log = open(log_path, "a")
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


if __name__ == "__main__":
    unittest.main()
