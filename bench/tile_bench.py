#!/usr/bin/env python3
"""Tiled stills (issue 15), every figure measured side by side in one run, on loopback only.

The demo scene (examples/make_demo_scene.py) as a still: 320x180, 128 samples, Cycles on the CPU. Every node
renders with `--threads 1` and one slot, so one node is one core. Each time is the job's wall time as a user
sees it from the commit (`Job … →` line of `rexnode submit`) until the assembled frame is in the output folder.

  overhead  one node: the still whole vs as 2 and 4 tiles (the scene loads once per session, so a tile costs
            the render of its region plus its share of the per-render set-up: BVH build, image write, assembly)
  speedup   a 2-tile still on 2 nodes vs the whole still on 1 node (goal >= 1.7x), with --speedup-samples
            (default 512: a still that takes long, which is what tiles are for; at 128 samples the fixed costs of
            a job, Blender's start and the assembly, weigh more, and that figure is printed too)
  count     2 nodes: 1, 2, 4, 8, 16, 32 tiles: where one more split costs more than it saves
  ceiling   plain Blender, no farm: the long still rendered by one `blender -t 1` alone vs by two at once (each the
            whole frame): what two 1-thread renders side by side get from this machine, the most any split can
            reach here (a VM's two vCPUs need not give twice the throughput of one)

Usage: bench/tile_bench.py BIN_DIR [--samples N] [--speedup-samples N]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_bench import BLENDER, ROOT, Farm  # noqa: E402

GRIDS = {1: None, 2: "2x1", 4: "2x2", 8: "4x2", 16: "4x4", 32: "8x4"}


def render_seconds(farm, scene, tiles, out):
    """Commit-to-delivered wall time of one still, `tiles` tiles (1: whole)."""
    args = [farm.rexnode, "submit", scene, "--frames", "1", "--output", out, "--data", farm.dirs[0]]
    if GRIDS[tiles]:
        args += ["--tiles", GRIDS[tiles]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed = None
    for line in proc.stdout:
        if committed is None and line.startswith("Job "):
            committed = time.perf_counter()
    if proc.wait() != 0 or committed is None:
        raise RuntimeError(f"submit with {tiles} tiles failed: {proc.stderr.read()}")
    return time.perf_counter() - committed


def best(farm, scene, tiles, work, runs=2):
    times = []
    for run in range(runs):
        out = os.path.join(work, f"out-{len(farm.dirs)}-{tiles}-{run}-{time.time_ns()}")
        times.append(render_seconds(farm, scene, tiles, out))
    return min(times)


def plain_blender(scene, work, copies):
    """Seconds until `copies` plain `blender -b -t 1` renders of the frame, started together, have all ended."""
    started = time.perf_counter()
    procs = [subprocess.Popen([BLENDER, "-b", scene, "-t", "1", "-o", os.path.join(work, f"plain{i}_"), "-f", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(copies)]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("plain Blender failed")
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--speedup-samples", type=int, default=512)
    options = parser.parse_args()
    rexnode = os.path.abspath(os.path.join(options.bin, "rexnode"))
    work = tempfile.mkdtemp(prefix="rex-tilebench-")
    scene = os.path.join(work, "still.blend")
    heavy = os.path.join(work, "heavy.blend")
    for path, samples in ((scene, options.samples), (heavy, options.speedup_samples)):
        subprocess.run([BLENDER, "-b", "--factory-startup", "--python",
                        os.path.join(ROOT, "examples/make_demo_scene.py"), "--", path, "--frames", "1", "--samples",
                        str(samples), "--width", "320", "--height", "180"], capture_output=True, check=True)
    node_args = ["--threads", "1", "--slots", "1"]
    try:
        one = Farm(rexnode, os.path.join(work, "one"), 1, node_args)
        try:
            best(one, scene, 1, work, runs=1)  # warm-up: the scene's files reach the store once
            whole = best(one, scene, 1, work)
            split = {n: best(one, scene, n, work) for n in (2, 4)}
            best(one, heavy, 1, work, runs=1)
            heavy_whole = best(one, heavy, 1, work, runs=1)
        finally:
            one.stop()
        print(f"overhead  1 node, whole still: {whole:.2f} s; 2 tiles: {split[2]:.2f} s "
              f"({(split[2] - whole) / 2:+.2f} s per tile); 4 tiles: {split[4]:.2f} s "
              f"({(split[4] - whole) / 4:+.2f} s per tile)")
        two = Farm(rexnode, os.path.join(work, "two"), 2, node_args)
        try:
            best(two, scene, 2, work, runs=1)
            counts = {n: best(two, scene, n, work) for n in GRIDS}
            heavy_two = best(two, heavy, 2, work, runs=1)
        finally:
            two.stop()
        print(f"speedup   {options.speedup_samples} samples: 2-tile still on 2 nodes: {heavy_two:.2f} s vs whole on 1 "
              f"node: {heavy_whole:.2f} s -> {heavy_whole / heavy_two:.2f}x (goal >= 1.7x); {options.samples} "
              f"samples: {counts[2]:.2f} s vs {whole:.2f} s -> {whole / counts[2]:.2f}x")
        alone = plain_blender(heavy, work, 1)
        together = plain_blender(heavy, work, 2)
        ceiling = 2 * alone / together
        print(f"ceiling   plain Blender, 1 thread: one render alone {alone:.2f} s, two at once {together:.2f} s -> this "
              f"machine gives 2 renders {ceiling:.2f}x the throughput of 1; the farm's 2-tile speedup is "
              f"{heavy_whole / heavy_two / ceiling * 100:.0f}% of that")
        line = ", ".join(f"{n}: {t:.2f} s" for n, t in counts.items())
        beyond = next((n for n, m in zip(list(counts)[1:], list(counts)[2:]) if counts[m] > counts[n]), None)
        print(f"count     2 nodes, tiles -> seconds: {line}; "
              + (f"beyond {beyond} tiles a split costs more than it saves" if beyond else
                 "every split up to 32 tiles still saved time"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
