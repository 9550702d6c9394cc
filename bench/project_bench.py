#!/usr/bin/env python3
"""Shipping a project (issue 13), every figure measured side by side in one run, on loopback only.

  ship      a project of N textures x M MB (default 200 x 5 MB = 1 GB) + its .blend, submitted on one node of a
            5-node farm: time from the job's commit until all 4 other peers hold every file, vs copying the same
            bytes once to one peer over a raw TCP socket on loopback (goal <= 2x)
  resubmit  the same project after rewriting one texture: bytes each peer received for the second job, vs the
            edited texture plus the .blend (goal <= 1.1x)
  trace     Blender opening the 200-file project to trace it (rex_prepare.py) vs opening it to read the scene's
            facts only (rex_probe.py, what submit ran before projects were shipped): the tracing's cost (goal <= 1 s)

Usage: bench/project_bench.py BIN_DIR [--textures N] [--mb M] [--only ship|trace]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_bench import BLENDER, ROOT, Farm  # noqa: E402

RESOURCES = os.path.join(ROOT, "Sources", "Render", "Resources")

MAKE_PROJECT = r"""
import bpy, sys
argv = sys.argv[sys.argv.index("--") + 1:]
out, count = argv[0], int(argv[1])
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 1
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 32, 18
scene.frame_start, scene.frame_end = 1, 20
for i in range(count):
    image = bpy.data.images.new("t%03d" % i, 4, 4)
    image.source = "FILE"
    image.filepath = "//tex/t%03d.png" % i
    image.use_fake_user = True
bpy.ops.wm.save_as_mainfile(filepath=out, relative_remap=False)
"""


def make_project(work, textures, megabytes):
    project = os.path.join(work, "project")
    os.makedirs(os.path.join(project, "tex"), exist_ok=True)
    blend = os.path.join(project, "shot.blend")
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python-expr", MAKE_PROJECT, "--", blend, str(textures)],
                   capture_output=True, check=True)
    for i in range(textures):
        write_random(os.path.join(project, "tex", "t%03d.png" % i), megabytes)
    return project, blend


def write_random(path, megabytes):
    with open(path, "wb") as out:
        for _ in range(megabytes):
            out.write(os.urandom(1 << 20))


def project_bytes(project):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(project) for f in fs)


def blob_files(node_dir):
    """Blob name -> size in a node's store (temporary and partial files left out)."""
    found = {}
    for root, _, files in os.walk(os.path.join(node_dir, "blobs")):
        if os.path.basename(root) in ("tmp", "partial"):
            continue
        for name in files:
            found[name] = os.path.getsize(os.path.join(root, name))
    return found


def raw_tcp_copy(project):
    """Seconds to copy every file of the project once to a receiver on loopback that writes and syncs it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    sink = tempfile.NamedTemporaryFile(delete=False)
    done = threading.Event()

    def receive():
        conn, _ = server.accept()
        with conn, open(sink.name, "wb") as out:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        done.set()

    thread = threading.Thread(target=receive)
    thread.start()
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for d, _, files in os.walk(project):
            for name in sorted(files):
                with open(os.path.join(d, name), "rb") as f:
                    conn.sendfile(f)
    done.wait()
    seconds = time.perf_counter() - t0
    thread.join()
    server.close()
    os.unlink(sink.name)
    return seconds


def job_state(farm, job):
    out = farm.cli(0, "status", job, "--json", check=False)
    return json.loads(out.stdout).get("state") if out.returncode == 0 else None


def wait_until(condition, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    raise RuntimeError("timed out")


def ship(rexnode, work, textures, megabytes):
    print(f"== ship: a project of {textures} textures x {megabytes} MB to 4 peers, vs one raw TCP copy "
          "(goal <= 2x); resubmit after editing one texture (goal: bytes moved <= 1.1x texture + .blend)")
    project, blend = make_project(work, textures, megabytes)
    size = project_bytes(project)
    tcp = raw_tcp_copy(project)
    print(f"raw TCP copy of {size / 1e6:.0f} MB to 1 peer: {tcp:6.2f} s ({size / tcp / 1e6:.0f} MB/s)")
    farm = Farm(rexnode, os.path.join(work, "farm"), 5, ["--renderer", "blender", "--slots", "1"])
    try:
        before = [blob_files(d) for d in farm.dirs]
        t0 = time.perf_counter()
        job = farm.cli(0, "submit", blend, "--frames", "1-20", "--chunk", "1", "--no-wait", "--output",
                       os.path.join(work, "out1")).stdout.strip().splitlines()[-1]
        stored = time.perf_counter() - t0
        wanted = set(blob_files(farm.dirs[0])) - set(before[0])
        t1 = time.perf_counter()
        wait_until(lambda: all(wanted <= set(blob_files(d)) for d in farm.dirs[1:]))
        shipped = time.perf_counter() - t1
        print(f"submit (trace, hash, store {len(wanted)} files): {stored:6.2f} s")
        print(f"4 peers hold all {size / 1e6:.0f} MB after {shipped:6.2f} s "
              f"({4 * size / shipped / 1e6:.0f} MB/s delivered in all)")
        print(f"ratio 4 peers / one raw TCP copy: {shipped / tcp:.2f} (goal <= 2; 4x the bytes)")
        wait_until(lambda: job_state(farm, job) in ("done", "failed"), timeout=600)

        # Resubmit after editing one texture.
        edited = os.path.join(project, "tex", "t007.png")
        write_random(edited, megabytes)
        held = [blob_files(d) for d in farm.dirs]
        t2 = time.perf_counter()
        out = farm.cli(0, "submit", blend, "--frames", "1-20", "--chunk", "1", "--no-wait", "--output",
                       os.path.join(work, "out2"), "--name", "again")
        resubmit = time.perf_counter() - t2
        new_here = set(blob_files(farm.dirs[0])) - set(held[0])
        wait_until(lambda: all(new_here <= set(blob_files(d)) for d in farm.dirs[1:]))
        expected = os.path.getsize(edited) + os.path.getsize(blend)
        moved = [sum(size for name, size in blob_files(d).items() if name not in held[i] and name in new_here)
                 for i, d in enumerate(farm.dirs) if i > 0]
        print(f"resubmit ({textures + 1} files checked, {len(new_here)} stored): {resubmit:6.2f} s; "
              f"{out.stdout.strip().splitlines()[0] if out.stdout.strip() else ''}")
        worst = max(moved)
        print(f"bytes each peer received for the resubmit: max {worst / 1e6:.2f} MB vs texture + .blend "
              f"{expected / 1e6:.2f} MB: ratio {worst / expected:.3f} (goal <= 1.1)")
        return {"tcp": tcp, "shipped": shipped, "ratio": shipped / tcp, "moved_ratio": worst / expected}
    finally:
        farm.stop()


def trace(work, textures):
    print(f"== trace: Blender tracing a {textures}-file project vs only reading its facts (goal: <= 1 s more)")
    project, blend = make_project(os.path.join(work, "trace"), textures, 0)
    for i in range(textures):
        open(os.path.join(project, "tex", "t%03d.png" % i), "wb").write(b"x")

    def run(script, extra):
        t0 = time.perf_counter()
        subprocess.run([BLENDER, "-b", "--disable-autoexec", blend, "--python", os.path.join(RESOURCES, script),
                        "--"] + extra, capture_output=True, check=True)
        return time.perf_counter() - t0

    probes, prepares = [], []
    for _ in range(5):
        probes.append(run("rex_probe.py", []))
        prepares.append(run("rex_prepare.py", ["--trace-to", os.path.join(work, "trace.json")]))
    probe, prepare = statistics.median(probes), statistics.median(prepares)
    print(f"read facts only: {probe:5.2f} s; trace {textures} files: {prepare:5.2f} s (median of 5); "
          f"tracing costs {prepare - probe:+.2f} s (goal <= 1 s)")
    return prepare - probe


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--textures", type=int, default=200)
    parser.add_argument("--mb", type=int, default=5)
    parser.add_argument("--only")
    args = parser.parse_args()
    rexnode = os.path.abspath(os.path.join(args.bin, "rexnode"))
    work = tempfile.mkdtemp(prefix="rex-project-bench-")
    try:
        print(f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
        if args.only in (None, "trace"):
            trace(work, args.textures)
        if args.only in (None, "ship"):
            ship(rexnode, work, args.textures, args.mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
