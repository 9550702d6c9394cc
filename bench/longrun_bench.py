#!/usr/bin/env python3
"""A farm that ran for a month (issue 17): 1,000,000 committed entries, measured side by side in one run.

A one-node farm runs once, stops, and gets a long history appended to its data folder exactly as it would have
written it (`raftbench history`: every entry in Raft's log and applied to the ledger). Then, on loopback:

  whole-log   `--snapshot-every 0` (the log kept whole, as before snapshots): restart to ready, daemon RSS
  snapshots   `--snapshot-every 10000`: the first start compacts; restart to ready again, daemon RSS
  newcomer    a second machine joins that farm from an empty folder: time until it knows every job (from the
              leader's snapshot) and until it has rendered a frame of a new job

"Ready" is: the control socket answers `peers --json` with this node leading and `jobs --json` lists every job.
Usage: bench/longrun_bench.py BIN_DIR [--entries N] [--keep-jobs K]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


class Node:
    port = 24000 + os.getpid() % 1000

    def __init__(self, bin_dir, data, discovery, token=None, name="a"):
        self.rexnode = os.path.join(bin_dir, "rexnode")
        self.data, self.discovery, self.token, self.name = data, discovery, token, name
        self.proc = None

    def start(self, *extra):
        log = open(self.data + ".log", "a")
        args = [self.rexnode, "join", "--data", self.data, "--name", self.name, "--listen", "127.0.0.1:0",
                "--interface", "127.0.0.1", "--discovery", self.discovery, "--beacon-ms", "250", "--http", "off",
                "--renderer", "simulated:20"] + list(extra)
        if self.token:
            args += ["--token", self.token]
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return time.monotonic()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def json(self, *args, timeout=60):
        out = subprocess.run([self.rexnode, *args, "--json", "--data", self.data], capture_output=True, text=True,
                             timeout=timeout)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def leads(self):
        peers = self.json("peers", timeout=10) or []
        return any(p.get("self") and p.get("role") == "leader" for p in peers)

    def jobs(self):
        return self.json("jobs", timeout=60) or []


def wait(what, condition, timeout=600, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return time.monotonic()
        except (ValueError, subprocess.TimeoutExpired, OSError):
            pass
        time.sleep(step)
    raise SystemExit(f"longrun: timed out waiting for {what}")


def compacted(node):
    """Whether the node's retained log starts past index 1 (the daemon compacted it; right after a compaction of the
    whole log nothing is retained)."""
    log = node.json("ledger", "--from", "1", timeout=300)
    return log is not None and (not log or log[0].get("index", 1) > 1)


def ready(node, jobs):
    return node.leads() and len(node.jobs()) == jobs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--keep-jobs", type=int, default=0, help="remove jobs older than the last K (0: keep all)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="rex-longrun-")
    discovery = f"239.255.79.{os.getpid() % 200 + 20}:{Node.port}"
    results = {"entries": args.entries, "keep_jobs": args.keep_jobs}
    a = Node(args.bin, os.path.join(work, "a"), discovery)
    newcomer = None
    try:
        subprocess.run([a.rexnode, "init", "--data", a.data], check=True, capture_output=True)
        a.start("--snapshot-every", "0")
        wait("the new farm", a.leads, timeout=120)
        a.stop()
        started = time.monotonic()
        out = subprocess.run([os.path.join(args.bin, "raftbench"), "history", "--data", a.data, "--entries",
                              str(args.entries), "--keep-jobs", str(args.keep_jobs)],
                             check=True, capture_output=True, text=True)
        print(out.stdout.strip(), flush=True)
        results["history_seconds"] = round(time.monotonic() - started, 1)
        results["database_mb"] = round(sum(os.path.getsize(os.path.join(a.data, f)) for f in os.listdir(a.data)
                                           if f.startswith("ledger.sqlite")) / 1e6, 1)
        jobs = int(re.search(r"kept=(\d+)", out.stdout).group(1))
        results["jobs"] = jobs

        # Whole log, as before snapshots.
        t0 = a.start("--snapshot-every", "0")
        t1 = wait("ready with the whole log", lambda: ready(a, jobs))
        time.sleep(2)
        results["whole_log_ready_s"] = round(t1 - t0, 2)
        results["whole_log_rss_mb"] = round(rss_mb(a.proc.pid), 1)
        print(json.dumps(results), flush=True)
        a.stop()

        # Snapshots: the first start compacts, then a restart starts from the snapshot.
        def compactions():
            with open(a.data + ".log", errors="replace") as f:
                return f.read().count("compacted the log")
        before = compactions()
        t0 = a.start("--snapshot-every", "10000")
        t1 = wait("ready, compacting", lambda: ready(a, jobs))
        results["first_start_ready_s"] = round(t1 - t0, 2)
        t2 = wait("the log compacted", lambda: compactions() > before, timeout=900, step=0.1)
        results["first_compaction_s"] = round(t2 - t0, 2)
        results["first_start_rss_mb"] = round(rss_mb(a.proc.pid), 1)
        wait("the ledger's retained log to start after the snapshot", lambda: compacted(a), timeout=300, step=1)
        print(json.dumps(results), flush=True)
        a.stop()
        t0 = a.start("--snapshot-every", "10000")
        t1 = wait("ready from the snapshot", lambda: ready(a, jobs))
        time.sleep(2)
        results["snapshot_ready_s"] = round(t1 - t0, 2)
        results["snapshot_rss_mb"] = round(rss_mb(a.proc.pid), 1)
        results["ledger_starts_at"] = ((a.json("ledger", "--from", "1", timeout=300) or [{}]) + [{}])[0].get("index")
        print(json.dumps(results), flush=True)

        # A new machine from an empty folder.
        token = subprocess.run([a.rexnode, "token", "--data", a.data], capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]
        newcomer = Node(args.bin, os.path.join(work, "b"), discovery, token=token, name="b")
        t0 = newcomer.start("--snapshot-every", "10000")
        t1 = wait("the newcomer knows every job", lambda: len(newcomer.jobs()) == jobs, step=0.2)
        results["newcomer_knows_jobs_s"] = round(t1 - t0, 2)
        me = next(p["id"] for p in newcomer.json("peers") if p.get("self"))
        scene = os.path.join(work, "scene.blend")
        subprocess.run([os.environ.get("BLENDER", "blender"), "-b", "--factory-startup", "--python",
                        os.path.join(ROOT, "examples/make_demo_scene.py"), "--", scene, "--frames", "2",
                        "--samples", "1", "--width", "32", "--height", "24"], capture_output=True, check=True)
        subprocess.run([a.rexnode, "submit", scene, "--frames", "1-40", "--chunk", "1", "--no-wait", "--data",
                        a.data, "--output", os.path.join(work, "out")], check=True, capture_output=True)

        def rendered():
            for job in newcomer.jobs():
                if job["name"] == "scene":
                    status = newcomer.json("status", job["job"]) or {}
                    return any(f.get("node") == me and f.get("state") == "done" for f in status.get("frames", []))
            return False
        t2 = wait("the newcomer renders", rendered, step=0.2)
        results["newcomer_rendering_s"] = round(t2 - t0, 2)
        results["newcomer_rss_mb"] = round(rss_mb(newcomer.proc.pid), 1)
        results["leader_rss_mb_after"] = round(rss_mb(a.proc.pid), 1)
    finally:
        a.stop()
        if newcomer:
            newcomer.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    print(f"longrun: {args.entries} entries: restart to ready {results.get('whole_log_ready_s')} s with the whole "
          f"log vs {results.get('snapshot_ready_s')} s from a snapshot (goal <= 2 s); RSS "
          f"{results.get('whole_log_rss_mb')} MB vs {results.get('snapshot_rss_mb')} MB (goal <= 64 MB); a new "
          f"node knows every job after {results.get('newcomer_knows_jobs_s')} s and renders after "
          f"{results.get('newcomer_rendering_s')} s (goal <= 10 s)")


if __name__ == "__main__":
    main()
