#!/usr/bin/env python3
"""Real artist projects render on a farm whose workers cannot see the user's disk, and come out as Blender
renders them on the user's machine.

One farm for the module: three `rexnode join` on loopback (--slots 1 each, multicast on 127.0.0.1 only).
Node n1 is the submitter and sees the disk normally. Nodes n2 and n3 run "on machines that cannot see the
user's disk": each starts in its own mount namespace with an empty tmpfs over WORK/projects, the folder that
holds every generated project and every outside folder, so the only way they get a file is from the farm.

Before the farm renders anything, Tests/Fixtures/make_project.py builds the projects (full, missing, movie,
passes, particles) and plain `blender -b shot.blend -o REF/frame_#### -a` renders the references. Then:
  a. full: as soon as `submit` prints its `Job ... -> ...` line, the project and its outside folder are renamed
     away; the job still completes and every frame equals the reference (no magenta: nothing went missing).
  b. missing: submit refuses, naming gone.png, and makes no job; with --allow-missing the frames equal the
     reference, which is magenta too.
  c. resubmit after one texture changed: only what changed is new, and the frames follow the new texture.
  d. movie: OUT/NAME.mp4 is H.264 with 6 frames, next to the 6 PNG frames.
  e. passes: the File Output node's OUT/passes/normal_000N.png equal the reference's PROJECT/passes.
  f. particles (an unbaked simulation), one frame per chunk: baked at submit, frames equal the -a reference
     although at least two nodes rendered them.
Waits are for events, with generous bounds; nothing assumes who leads. Pixels are compared with
Tests/Fixtures/compare_images.py (Blender's own decoders).

Root only (mount namespaces); skipped otherwise. Needs blender, ffmpeg and unshare (util-linux).
The binary: $REXNODE_BIN (default .build/debug/rexnode, relative to the repo root); Blender: $BLENDER.
Run: python3 -m unittest -v tests/projects/test_projects.py    (about a minute; WORK, with the node logs, is
kept when a test fails, or always with KEEP=1; the tails of the node logs are printed on failure)
"""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REXNODE = os.path.abspath(os.path.join(ROOT, os.environ.get("REXNODE_BIN", os.path.join(".build", "debug",
                                                                                            "rexnode"))))
BLENDER = os.environ.get("BLENDER", "blender")
MAKE_PROJECT = os.path.join(ROOT, "Tests", "Fixtures", "make_project.py")
COMPARE = os.path.join(ROOT, "Tests", "Fixtures", "compare_images.py")
KINDS = ("full", "missing", "movie", "passes", "particles", "driver")
FRAMES = {"full": 3, "missing": 3, "movie": 6, "passes": 3, "particles": 6, "driver": 3}
NODES = 3
HIDDEN = (2, 3)  # the nodes that cannot see the user's disk
DISCOVERY = "239.255.93.93:7793"
# Generous: a busy 2-core CI machine is normal. On an idle one the farm forms in a few seconds and each job
# takes a few seconds.
FORM_TIMEOUT_S = 120
SUBMIT_TIMEOUT_S = 300
BLENDER_TIMEOUT_S = 300
LOG_TAIL = 25

JOB_LINE = re.compile(r"^Job (\S+) \((\d+) frames?\) → (.+)$")
SUMMARY_LINE = re.compile(r"^(\d+) files?, [^,]+, (\d+) new")


def now():
    return time.monotonic()


class State:
    work = None
    projects = None  # WORK/projects: hidden from n2 and n3
    refs = None
    outs = None
    farm = None
    failed = False
    full_submitted = False  # the full project's files are already on the farm (test a ran)


# ---------------------------------------------------------------------------------------------- helpers

def run(args, timeout, **kwargs):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              **kwargs)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"timed out after {timeout} s")


def blender_batch(jobs, parallel=2):
    """Runs Blender command lines (label, args, log path), PARALLEL at once; raises naming the ones that fail."""
    pending, running, failures = list(jobs), [], []
    while pending or running:
        while pending and len(running) < parallel:
            label, args, log_path = pending.pop(0)
            log = open(log_path, "w")
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            running.append((label, proc, log, log_path, now()))
        for item in list(running):
            label, proc, log, log_path, started = item
            if proc.poll() is None and now() - started > BLENDER_TIMEOUT_S:
                proc.kill()
                proc.wait()
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode != 0:
                    failures.append(f"{label} (exit {proc.returncode}): {tail(log_path, 10)}")
        time.sleep(0.1)
    if failures:
        raise RuntimeError("Blender failed:\n" + "\n".join(failures))


def reference_render(blend, ref_dir, log_path, extra=()):
    return (f"reference {ref_dir}", [BLENDER, "-b", blend, "-o", os.path.join(ref_dir, "frame_####"), *extra, "-a"],
            log_path)


def tail(path, lines=LOG_TAIL):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as error:
        return f"({error})"


def compare(a, b, tolerance=2):
    """compare_images.py on two files or folders; returns its @@CMP object (ok False with "error" on trouble)."""
    out = run([BLENDER, "-b", "--factory-startup", "--python", COMPARE, "--", a, b, "--tolerance", str(tolerance)],
              BLENDER_TIMEOUT_S)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("@@CMP "):
            return json.loads(line[len("@@CMP "):])
    return {"ok": False, "error": f"no @@CMP line (exit {out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}"}


def staged(name, pairs):
    """Copies (source, new name) pairs into a fresh folder WORK/cmp/NAME so two folders compare by name."""
    folder = os.path.join(State.work, "cmp", name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for source, new_name in pairs:
        shutil.copyfile(source, os.path.join(folder, new_name))
    return folder


def pngs(folder, prefix):
    try:
        return sorted(f for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(".png"))
    except FileNotFoundError:
        return []


def frame_count(movie):
    """Frames in a movie, by decoding it (ffmpeg's last `frame=  N` progress figure; no ffprobe here)."""
    out = run(["ffmpeg", "-nostdin", "-i", movie, "-map", "0:v:0", "-f", "null", "-"], 120)
    counts = re.findall(r"frame=\s*(\d+)", out.stderr)
    return (int(counts[-1]) if counts else None), out.stderr


def movie_info(movie):
    out = run(["ffmpeg", "-nostdin", "-i", movie], 60)  # exits 1 (no output file); the header is on stderr
    return out.stderr


# ---------------------------------------------------------------------------------------------- the farm

class Farm:
    # Options every `join` of this farm gets besides the usual ones (another test module may add some).
    extra_args = ()

    def __init__(self, work, projects):
        self.work, self.projects = work, projects
        self.dirs = {i: os.path.join(work, "nodes", f"n{i}") for i in range(1, NODES + 1)}
        self.log_paths = {i: d + ".log" for i, d in self.dirs.items()}
        self.procs, self.logs = {}, {}
        os.makedirs(os.path.join(work, "nodes"), exist_ok=True)
        out = run([REXNODE, "init", "--data", self.dirs[1]], 60)
        if out.returncode != 0:
            raise RuntimeError(f"rexnode init failed: {out.stdout}{out.stderr}")
        self.token = out.stdout.strip().splitlines()[-1]

    def start(self, i):
        args = [REXNODE, "join", "--data", self.dirs[i], "--token", self.token, "--name", f"n{i}",
                "--listen", "127.0.0.1:0", "--interface", "127.0.0.1", "--discovery", DISCOVERY, "--slots", "1", *self.extra_args]
        if i in HIDDEN:
            # unshare execs sh, which execs rexnode: one pid, in a mount namespace where the projects are gone.
            args = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs none "$1" && shift && exec "$@"', "sh", self.projects, *args]
        self.logs[i] = open(self.log_paths[i], "a")
        self.procs[i] = subprocess.Popen(args, stdout=self.logs[i], stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            try:  # stray children (Blender) left in the group
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for log in self.logs.values():
            log.close()

    def check_running(self):
        for i, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"rexnode join n{i} exited with status {proc.returncode}:\n"
                                     + tail(self.log_paths[i], 10))

    def cli(self, i, *args, timeout=30):
        return run([REXNODE, *args, "--data", self.dirs[i]], timeout)

    def peers(self, i):
        out = self.cli(i, "peers", "--json", timeout=10)
        try:
            return json.loads(out.stdout) if out.returncode == 0 else None
        except ValueError:
            return None

    def whole(self, views):
        """Every node answers and sees all three (itself included) as alive members, and runs as leader or
        follower."""
        ids = {}
        for i, view in views.items():
            me = next((p for p in view or [] if p.get("self")), None)
            if me is None or me.get("role") not in ("leader", "follower"):
                return False
            ids[i] = me["id"]
        if len(set(ids.values())) != NODES:
            return False
        for view in views.values():
            by_id = {p["id"]: p for p in view}
            if any(by_id.get(x, {}).get("state") != "alive" or not by_id.get(x, {}).get("member")
                   for x in ids.values()):
                return False
        return True

    def wait_whole(self, timeout, streak=3):
        started, run_, views = now(), 0, {}
        while now() - started < timeout:
            self.check_running()
            views = {i: self.peers(i) for i in self.dirs}
            run_ = run_ + 1 if self.whole(views) else 0
            if run_ >= streak:
                return now() - started, views
            time.sleep(0.3)
        return None, views

    @staticmethod
    def describe(views):
        lines = []
        for i, view in sorted(views.items()):
            if view is None:
                lines.append(f"  n{i}: no answer")
            else:
                lines.append(f"  n{i} sees: " + ", ".join(
                    f"{p['name']}={p['role']}/{p['state']}{'' if p['member'] else '/not-member'}" for p in view))
        return "\n".join(lines)

    def tails(self):
        return "\n".join(f"--- n{i} ({self.log_paths[i]}), last {LOG_TAIL} lines:\n{tail(self.log_paths[i])}"
                         for i in sorted(self.log_paths))

    def submit(self, blend, *args, on_job=None, timeout=SUBMIT_TIMEOUT_S):
        """`rexnode submit` on n1, stdout read line by line (ON_JOB(id) runs the moment the Job line appears).
        Returns dict(rc, lines, stderr, job, summary, seconds)."""
        stderr_path = os.path.join(self.work, "submit-%d.stderr" % int(time.time() * 1000))
        started = now()
        with open(stderr_path, "w+") as err:
            proc = subprocess.Popen([REXNODE, "submit", blend, *args, "--data", self.dirs[1]],
                                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                    start_new_session=True)
            lines_q = queue.Queue()

            def reader():
                for line in proc.stdout:
                    lines_q.put(line.rstrip("\n"))
                lines_q.put(None)

            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            lines, job, summary, timed_out = [], None, None, False
            while True:
                left = timeout - (now() - started)
                if left <= 0:
                    timed_out = True
                    break
                try:
                    line = lines_q.get(timeout=min(left, 1.0))
                except queue.Empty:
                    continue
                if line is None:
                    break
                lines.append(line)
                if summary is None and SUMMARY_LINE.match(line):
                    summary = line
                match = JOB_LINE.match(line)
                if match and job is None:
                    job = match.group(1)
                    if on_job is not None:
                        on_job(job)
            if timed_out:
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            thread.join(10)
            proc.stdout.close()
            err.seek(0)
            stderr = err.read()
        if timed_out:
            rc = 124
            stderr += f"\n(submit timed out after {timeout} s)"
        return {"rc": rc, "lines": lines, "stderr": stderr, "job": job, "summary": summary,
                "seconds": now() - started}


# ---------------------------------------------------------------------------------------------- module set-up

def setUpModule():
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root: nodes n2 and n3 run in their own mount namespace, with a tmpfs over "
                                "the projects folder (run as root, or `make test-projects` as root)")
    if not os.access(REXNODE, os.X_OK):
        raise RuntimeError(f"{REXNODE} is missing: build it first (swift build --product rexnode) or set "
                           "REXNODE_BIN")
    for tool in (BLENDER, "ffmpeg", "unshare"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (make setup installs blender, ffmpeg and util-linux)")
    State.work = tempfile.mkdtemp(prefix="rex-projects-")
    State.projects = os.path.join(State.work, "projects")
    State.refs = os.path.join(State.work, "refs")
    State.outs = os.path.join(State.work, "out")
    for folder in (State.projects, State.refs, State.outs, os.path.join(State.work, "logs")):
        os.makedirs(folder)
    try:
        started = now()
        logs = os.path.join(State.work, "logs")
        blender_batch([(f"make_project {kind}",
                        [BLENDER, "-b", "--factory-startup", "--python", MAKE_PROJECT, "--", project(kind),
                         outside(kind), "--kind", kind, "--frames", str(FRAMES[kind])],
                        os.path.join(logs, f"make-{kind}.log")) for kind in KINDS], parallel=3)
        made = now()
        jobs = [reference_render(blend(kind), ref(kind), os.path.join(logs, f"ref-{kind}.log")) for kind in KINDS]
        # The movie's reference is an .mp4; its frames as PNG too, to compare the farm's PNG frames one by one.
        jobs.append(reference_render(blend("movie"), ref("movie-png"), os.path.join(logs, "ref-movie-png.log"),
                                     extra=("-F", "PNG")))
        # The driver scene at home with auto-run scripts on (blender -y): what --trust-scripts must give.
        jobs.append((f"reference {ref('driver-y')}", [BLENDER, "-b", "-y", blend("driver"), "-o",
                                                     os.path.join(ref("driver-y"), "frame_####"), "-a"],
                     os.path.join(logs, "ref-driver-y.log")))
        blender_batch(jobs, parallel=2)
        referenced = now()
        # Keep a copy of the File Output reference outside the project (the farm must not write into it either).
        shutil.copytree(os.path.join(project("passes"), "passes"), ref("passes-normal"))
        State.farm = Farm(State.work, State.projects)
        for i in State.farm.dirs:
            State.farm.start(i)
        formed, views = State.farm.wait_whole(FORM_TIMEOUT_S)
        if formed is None:
            raise AssertionError(f"the farm of {NODES} did not form in {FORM_TIMEOUT_S} s:\n"
                                 + Farm.describe(views) + "\n" + State.farm.tails())
        for i in HIDDEN:  # what n2 and n3 see at WORK/projects: an empty tmpfs
            seen = os.listdir(f"/proc/{State.farm.procs[i].pid}/root{State.projects}")
            if seen:
                raise AssertionError(f"n{i} can see the projects folder: {seen}")
        print(f"\n  projects made in {made - started:.1f} s, references in {referenced - made:.1f} s, farm of "
              f"{NODES} whole in {formed:.1f} s; WORK={State.work}", file=sys.stderr)
    except BaseException:
        State.failed = True
        if State.farm is not None:
            print(State.farm.tails(), file=sys.stderr)
        tearDownModule()
        raise


def tearDownModule():
    if State.farm is not None:
        State.farm.stop_all()
        State.farm = None
    if State.work is None:
        return
    if State.failed or os.environ.get("KEEP"):
        print(f"\ntest_projects: kept {State.work} (node logs nodes/n*.log, Blender logs logs/)", file=sys.stderr)
    else:
        shutil.rmtree(State.work, ignore_errors=True)


def project(kind):
    return os.path.join(State.projects, kind)


def outside(kind):
    return os.path.join(State.projects, kind + "-outside")


def blend(kind):
    return os.path.join(project(kind), "shot.blend")


def ref(name):
    return os.path.join(State.refs, name)


def out(name):
    return os.path.join(State.outs, name)


# ---------------------------------------------------------------------------------------------- tests

class ProjectTest(unittest.TestCase):
    def setUp(self):
        self.ok = False
        State.farm.check_running()

    def tearDown(self):
        if not self.ok:
            State.failed = True
            print(f"\n{self.id()} failed; node logs:\n{State.farm.tails()}", file=sys.stderr)

    def assert_submitted(self, result, what, frames):
        self.assertEqual(result["rc"], 0, f"submit of {what} failed (exit {result['rc']}):\n"
                         + "\n".join(result["lines"]) + "\n" + result["stderr"])
        self.assertIsNotNone(result["job"], f"no `Job ... →` line: {result['lines']}")
        self.assertIn(f"All {frames} frames are in", "\n".join(result["lines"]))
        print(f"\n  {what}: {result['summary']!r}, job {result['job']} done in {result['seconds']:.1f} s",
              file=sys.stderr)

    def assert_frames_match(self, name, output, frames, reference, no_magenta=True, label=None):
        """OUTPUT/NAME_000N.png for N in 1..FRAMES equal REFERENCE/frame_000N.png."""
        names = [f"{name}_{n:04d}.png" for n in range(1, frames + 1)]
        self.assertEqual(pngs(output, name + "_"), names, f"frames in {output}")
        result = compare(staged(label or name, [(os.path.join(output, f), f"frame_{n:04d}.png")
                                                for n, f in enumerate(names, 1)]), reference)
        self.assertTrue(result["ok"], f"{name}: frames differ from {reference}: {json.dumps(result)}")
        self.assertEqual(result["compared"], frames)
        if no_magenta:
            for entry in result["files"]:
                self.assertEqual(entry["magenta_fraction_a"], 0.0, f"missing texture in {entry}")
        return result

    def status(self, job):
        out_ = State.farm.cli(1, "status", job, "--json")
        self.assertEqual(out_.returncode, 0, f"status {job}: {out_.stdout}{out_.stderr}")
        return json.loads(out_.stdout)

    def test_a_full_project_renders_without_the_users_disk(self):
        moved = []

        def move_away(job):
            for folder in (project("full"), outside("full")):
                os.rename(folder, folder + ".moved")
                moved.append(folder)

        try:
            result = State.farm.submit(blend("full"), "--name", "full", "--output", out("full"), on_job=move_away)
        finally:
            for folder in moved:
                os.rename(folder + ".moved", folder)
        self.assertEqual(len(moved), 2, f"the Job line never came: {result}")
        self.assert_submitted(result, "full (project and outside folder moved away at the Job line)", 3)
        State.full_submitted = True
        self.assertRegex(result["summary"] or "", r"^11 files, ")
        self.assert_frames_match("full", out("full"), 3, ref("full"))
        self.ok = True

    def test_b_missing_texture_refused_then_allowed(self):
        result = State.farm.submit(blend("missing"), "--name", "missing", "--output", out("missing"))
        self.assertNotEqual(result["rc"], 0, f"submit with a missing texture succeeded: {result}")
        self.assertIn("gone.png", result["stderr"])
        self.assertIsNone(result["job"], f"a job was made: {result['lines']}")
        self.assertEqual(pngs(out("missing"), ""), [], "frames arrived for a refused submit")
        jobs = State.farm.cli(1, "jobs", "--json")
        self.assertEqual(jobs.returncode, 0, jobs.stderr)
        self.assertNotIn('"missing"', jobs.stdout, f"the refused submit left a job: {jobs.stdout}")
        print(f"\n  refused: {result['stderr'].strip()}", file=sys.stderr)

        result = State.farm.submit(blend("missing"), "--name", "missing", "--output", out("missing"),
                                   "--allow-missing")
        self.assert_submitted(result, "missing --allow-missing", 3)
        self.assertIn("warning:", result["stderr"])
        self.assertIn("gone.png", result["stderr"])
        compared = self.assert_frames_match("missing", out("missing"), 3, ref("missing"), no_magenta=False)
        for entry in compared["files"]:  # the reference is magenta too: the texture is gone on both sides
            self.assertGreater(entry["magenta_fraction_a"], 0.5, entry)
            self.assertGreater(entry["magenta_fraction_b"], 0.5, entry)
        self.ok = True

    def test_c_resubmit_after_editing_one_texture(self):
        if not State.full_submitted:  # run alone: put the unedited project on the farm first
            first = State.farm.submit(blend("full"), "--name", "full", "--output", out("full"))
            self.assert_submitted(first, "full (first submit)", 3)
            State.full_submitted = True
        checker = os.path.join(project("full"), "textures", "checker.png")
        script = os.path.join(State.work, "green.py")
        with open(script, "w") as f:
            f.write("import bpy, sys\n"
                    "path = sys.argv[sys.argv.index('--') + 1]\n"
                    "image = bpy.data.images.new('green', 64, 64, alpha=False)\n"
                    "image.pixels[:] = [0.0, 1.0, 0.0, 1.0] * (64 * 64)\n"
                    "image.filepath_raw = path\n"
                    "image.file_format = 'PNG'\n"
                    "image.save()\n")
        logs = os.path.join(State.work, "logs")
        blender_batch([("green checker", [BLENDER, "-b", "--factory-startup", "--python", script, "--", checker],
                        os.path.join(logs, "green.log"))])
        blender_batch([reference_render(blend("full"), ref("full-green"), os.path.join(logs, "ref-full-green.log"))])

        result = State.farm.submit(blend("full"), "--name", "full2", "--output", out("full2"))
        self.assert_submitted(result, "full after checker.png changed", 3)
        match = SUMMARY_LINE.match(result["summary"] or "")
        self.assertIsNotNone(match, f"no summary line: {result['lines']}")
        self.assertEqual(int(match.group(1)), 11, result["summary"])
        self.assertIn(int(match.group(2)), (1, 2), f"only the edited texture (and maybe the .blend) should be "
                                                   f"new: {result['summary']}")
        self.assert_frames_match("full2", out("full2"), 3, ref("full-green"))
        old = compare(staged("full2-vs-old", [(os.path.join(out("full2"), f"full2_{n:04d}.png"),
                                               f"frame_{n:04d}.png") for n in range(1, 4)]), ref("full"))
        self.assertFalse(old["ok"], "the frames still show the old checker texture")
        for entry in old["files"]:
            self.assertGreater(entry["max_diff"], 2, f"frame unchanged by the new texture: {entry}")
        self.ok = True

    def test_d_movie(self):
        result = State.farm.submit(blend("movie"), "--name", "movie", "--output", out("movie"))
        self.assert_submitted(result, "movie", 6)
        movie = os.path.join(out("movie"), "movie.mp4")
        self.assertIn(f"The movie is {movie}", result["lines"])
        self.assertTrue(os.path.isfile(movie), f"no {movie}: {os.listdir(out('movie'))}")
        count, log = frame_count(movie)
        self.assertEqual(count, 6, f"frames in {movie} by ffmpeg: {log[-1500:]}")
        info = movie_info(movie)
        self.assertIn("Video: h264", info, info[-1500:])
        self.assertRegex(info, r"\b24 fps\b")
        # The PNG frames equal the scene rendered to PNG; the movie's first frame equals the reference movie's
        # (both lossy H.264 of the same pixels: a looser tolerance).
        self.assert_frames_match("movie", out("movie"), 6, ref("movie-png"))
        reference_movie = os.path.join(ref("movie"), "frame_0001-0006.mp4")
        self.assertEqual(frame_count(reference_movie)[0], 6)
        first = compare(movie, reference_movie, tolerance=12)
        self.assertTrue(first["ok"], f"first frame of {movie} vs the reference movie: {json.dumps(first)}")
        # `fetch` from a node that cannot see the user's disk gives the frames and the movie again.
        again = out("movie-fetched")
        fetched = State.farm.cli(HIDDEN[-1], "fetch", result["job"], "--output", again, timeout=120)
        self.assertEqual(fetched.returncode, 0, f"fetch: {fetched.stdout}{fetched.stderr}")
        self.assertIn("The movie is", fetched.stdout)
        self.assertEqual(frame_count(os.path.join(again, "movie.mp4"))[0], 6)
        self.assert_frames_match("movie", again, 6, ref("movie-png"), label="movie-fetched")
        self.ok = True

    def test_e_passes(self):
        result = State.farm.submit(blend("passes"), "--name", "passes", "--output", out("passes"))
        self.assert_submitted(result, "passes", 3)
        passes = os.path.join(out("passes"), "passes")
        names = [f"normal_{n:04d}.png" for n in range(1, 4)]
        self.assertEqual(pngs(passes, "normal_"), names, f"File Output passes in {passes}")
        reference = os.path.join(project("passes"), "passes")
        compared = compare(passes, reference)
        self.assertTrue(compared["ok"], f"passes differ from {reference}: {json.dumps(compared)}")
        self.assertEqual(compared["compared"], 3)
        self.assertEqual(pngs(reference, ""), names, "the farm wrote into the user's project passes folder")
        self.assertTrue(compare(reference, ref("passes-normal"))["ok"], "the user's project passes changed")
        self.assert_frames_match("passes", out("passes"), 3, ref("passes"))
        self.ok = True

    def test_f_particles_baked_at_submit(self):
        result = State.farm.submit(blend("particles"), "--name", "particles", "--output", out("particles"),
                                   "--chunk", "1")
        self.assert_submitted(result, "particles --chunk 1", 6)
        self.assertIn("baked", result["summary"] or "", f"the summary line mentions no bake: {result['lines']}")
        self.assert_frames_match("particles", out("particles"), 6, ref("particles"))
        status = self.status(result["job"])
        frames = status["frames"]
        self.assertEqual(sorted(f["frame"] for f in frames), list(range(1, 7)))
        self.assertTrue(all(f["state"] == "done" for f in frames), frames)
        nodes = {f["frame"]: f["node"] for f in frames}
        self.assertGreaterEqual(len(set(nodes.values())), 2, f"one node rendered every frame: {nodes}")
        names = {p["id"]: p["name"] for p in State.farm.peers(1) or []}
        print("  particles frames by node: " + ", ".join(f"{k}:{names.get(v, v)}" for k, v in sorted(nodes.items())),
              file=sys.stderr)
        self.ok = True

    def test_g_python_runs_only_when_trusted(self):
        result = State.farm.submit(blend("driver"), "--name", "driver", "--output", out("driver"))
        self.assert_submitted(result, "driver (scripts off)", 3)
        self.assertIn("--trust-scripts", result["stderr"], "no warning about the blocked driver")
        self.assert_frames_match("driver", out("driver"), 3, ref("driver"))
        trusted = State.farm.submit(blend("driver"), "--name", "driver-y", "--output", out("driver-y"),
                                    "--trust-scripts")
        self.assert_submitted(trusted, "driver --trust-scripts", 3)
        self.assertNotIn("--trust-scripts", trusted["stderr"])
        self.assert_frames_match("driver-y", out("driver-y"), 3, ref("driver-y"))
        differs = compare(staged("driver-vs", [(os.path.join(out("driver-y"), "driver-y_0002.png"), "f.png")]),
                          staged("driver-ref-off", [(os.path.join(ref("driver"), "frame_0002.png"), "f.png")]))
        self.assertFalse(differs["ok"], "the driver made no difference: the test would pass without -y")
        self.ok = True


if __name__ == "__main__":
    unittest.main()
