#!/usr/bin/env python3
"""rexnode's fault suite: five hosts in network namespaces, jobs running, faults injected, history checked.

Every host is a network namespace wired to a software switch (chaos/netlab.py, chaos/switch.py) that drops,
loses or delays frames per direction. One `rexnode join` runs in each host. While a stream of jobs renders
(simulated renderer), the run injects faults one after another, each followed by a heal and a wait until the
farm has one leader and five live members again. Then every node restarts with real Blender and one Blender
job renders through a leader kill -9 and a partition. At the end the history checker (chaos/history.py)
reads every node's `rexnode ledger --json`, the submitters' outputs and the run's observations.

Usage: chaos/run.py BIN_DIR [--faults N] [--seed S] [--report docs/reliability.md] [--keep]
Root only (network namespaces). Exits non-zero if any check fails.
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import history  # noqa: E402
from netlab import Lab  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLENDER = os.environ.get("BLENDER", "blender")
HOSTS = 5
# RaftSettings: election timeout uniformly random in [500, 1000) ms.
ELECTION_TIMEOUT_MAX = 1.0
KINDS = [
    "kill-leader", "kill-random", "isolate-leader", "split-2-3", "partial-partition", "one-way-loss",
    "loss-50", "delay-75", "stop-leader", "clock-jump", "link-flap", "address-change",
]


def now():
    return time.monotonic()


class Cluster:
    """One `rexnode join` per lab host, with the run's observations of roles and terms."""

    def __init__(self, lab, rexnode, work, renderer, snapshot_every=100):
        self.lab, self.rexnode, self.work = lab, rexnode, work
        self.renderer = renderer
        # Small, so every run compacts its logs many times and new or lagging nodes install snapshots.
        self.snapshot_every = snapshot_every
        self.threads = None
        self.dirs = {i: os.path.join(work, f"h{i}") for i in range(1, HOSTS + 1)}
        self.procs = {}
        self.stopped = set()
        self.ids = {}
        self.t0 = now()
        self.lock = threading.Lock()
        self.rounds = []  # (t, {index: (role, term, leader)})
        self.terms = {}  # node id -> [term, ...] as polled
        self.logs = {}
        self.claims = []  # {"t", "node", "term"}
        self.observing = False
        self.kills = []  # (t, index) of every kill -9
        out = subprocess.run([rexnode, "init", "--data", self.dirs[1]], capture_output=True, text=True, check=True)
        self.token = out.stdout.strip().splitlines()[-1]
        for i in self.dirs:
            self.set_clock(i, 0)

    # Processes

    def start(self, i):
        if i in self.logs:
            self.logs[i].close()
        log = self.logs[i] = open(self.dirs[i] + ".log", "a")
        log.write(f"=== start at t={now() - self.t0:.2f} s, renderer {self.renderer}\n")
        log.flush()
        args = [self.rexnode, "join", "--data", self.dirs[i], "--token", self.token, "--name", f"h{i}",
                "--listen", f"{self.lab.address(i)}:7100", "--interface", self.lab.address(i),
                "--discovery", "239.255.77.77:7777", "--beacon-ms", "250", "--dead-after", "2",
                "--renderer", self.renderer, "--slots", "2" if self.renderer != "blender" else "1",
                "--snapshot-every", str(self.snapshot_every)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        env = dict(os.environ, REXNODE_CLOCK_OFFSET_FILE=self.dirs[i] + ".clock")
        self.procs[i] = subprocess.Popen(self.lab.command(i, args), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env)
        self.stopped.discard(i)

    def running(self, i):
        return i in self.procs and self.procs[i].poll() is None

    def kill(self, i):
        """kill -9 of the node and of everything else running in its host (its Blender processes too), as
        when the machine dies."""
        self.kills.append((now() - self.t0, i))
        if self.running(i):
            self.procs[i].send_signal(signal.SIGKILL)
            self.procs[i].wait()
        self.lab.kill_all(i)
        self.stopped.discard(i)

    def terminate(self, i):
        if self.running(i):
            if i in self.stopped:
                self.procs[i].send_signal(signal.SIGCONT)
            self.procs[i].terminate()
            try:
                self.procs[i].wait(20)
            except subprocess.TimeoutExpired:
                self.kill(i)
        self.stopped.discard(i)

    def stop(self, i):
        self.procs[i].send_signal(signal.SIGSTOP)
        self.stopped.add(i)

    def cont(self, i):
        self.procs[i].send_signal(signal.SIGCONT)
        self.stopped.discard(i)

    def set_clock(self, i, offset_ms):
        with open(self.dirs[i] + ".clock", "w") as f:
            f.write(f"{offset_ms}\n")

    def usable(self, i):
        return self.running(i) and i not in self.stopped

    # Talking to a node (its control socket: one JSON line each way, see docs/protocol.md)

    def control(self, i, request, timeout=1.0):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(os.path.join(self.dirs[i], "rexnode.sock"))
                s.sendall((json.dumps(request) + "\n").encode())
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    data += chunk
            answer = json.loads(data)
            return answer.get("result")
        except (OSError, ValueError):
            return None

    def cli(self, i, *args, timeout=60):
        try:
            return subprocess.run([self.rexnode, *args, "--data", self.dirs[i]], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "", f"timed out after {timeout} s")

    # Observing roles and terms

    def observe(self, period=0.1):
        self.observing = True
        while self.observing:
            started = now()
            view = {}
            for i in self.dirs:
                if not self.usable(i):
                    continue
                peers = self.control(i, {"op": "peers"}, timeout=0.3)
                me = next((p for p in peers or [] if p.get("self")), None)
                if me is None or not me.get("term"):
                    # Term 0: a restarted node answers before Raft has loaded its state; nothing to record.
                    continue
                t = now() - self.t0
                self.ids[i] = me["id"]
                view[i] = (me["role"], me.get("term", 0), me.get("leader"))
                with self.lock:
                    self.terms.setdefault(me["id"], []).append(view[i][1])
                    if me["role"] == "leader":
                        self.claims.append({"t": t, "node": me["id"], "term": view[i][1]})
            with self.lock:
                self.rounds.append((now() - self.t0, view))
            time.sleep(max(0.0, period - (now() - started)))

    def latest(self):
        with self.lock:
            return self.rounds[-1] if self.rounds else (0, {})

    def leader(self):
        """The node that reports itself leader with the highest term in the latest round, or None."""
        _, view = self.latest()
        top = max((term for _, term, _ in view.values()), default=0)
        leaders = [i for i, (role, term, _) in view.items() if role == "leader" and term == top]
        return leaders[0] if leaders else None

    def wait_leader(self, timeout=20):
        deadline = now() + timeout
        while now() < deadline:
            i = self.leader()
            if i is not None and self.usable(i):
                return i
            time.sleep(0.05)
        return None

    def healthy(self):
        """Every node runs, agrees on one leader and term, and the leader sees all five members alive."""
        if not all(self.usable(i) for i in self.dirs):
            return False
        _, view = self.latest()
        if len(view) < HOSTS:
            return False
        terms = {term for _, term, _ in view.values()}
        leaders = {leader for _, _, leader in view.values()}
        if len(terms) != 1 or len(leaders) != 1 or None in leaders:
            return False
        i = self.leader()
        peers = self.control(i, {"op": "peers"}) if i else None
        return bool(peers) and sum(1 for p in peers if p["member"] and p["state"] == "alive") == HOSTS

    def wait_healthy(self, timeout=45):
        """Seconds until three polling rounds in a row, all started after this call, find the farm healthy."""
        deadline = now() + timeout
        started = now()
        streak, last_round = 0, None
        while now() < deadline:
            t, _ = self.latest()
            if t + self.t0 > started and t != last_round:
                last_round = t
                streak = streak + 1 if self.healthy() else 0
                if streak >= 3:
                    return now() - started
            time.sleep(0.05)
        return None

    def failover(self, old_term, timeout=20):
        """Seconds until a node leads at a term above OLD_TERM (polled every 100 ms), or None."""
        started = now()
        while now() - started < timeout:
            _, view = self.latest()
            if any(role == "leader" and term > old_term for role, term, _ in view.values()):
                return now() - started
            time.sleep(0.02)
        return None

    def term_of(self, i):
        _, view = self.latest()
        return view.get(i, (None, 0, None))[1]

    def longest_without_leader(self):
        """The longest stretch of polling rounds in which no node led at the highest term anyone reported, and
        when it started."""
        longest, at, gap_start = 0.0, None, None
        with self.lock:
            rounds = list(self.rounds)
        for t, view in rounds:
            top = max((term for _, term, _ in view.values()), default=0)
            led = any(role == "leader" and term == top for role, term, _ in view.values())
            if led:
                if gap_start is not None and t - gap_start > longest:
                    longest, at = t - gap_start, gap_start
                gap_start = None
            elif gap_start is None:
                gap_start = t
        return longest, at

    def read_logs(self):
        """Every node's log (all its runs): leader claims and the terms it went through, in order."""
        claims, terms = [], {}
        for i, d in self.dirs.items():
            if not os.path.exists(d + ".log"):
                continue
            with open(d + ".log", errors="replace") as f:
                node, seen, led = history.read_node_log(f)
            node = node or self.ids.get(i, f"h{i}")
            terms[node + " (log)"] = seen
            claims += [{"node": node, "term": term} for term in led]
        return claims, terms


class Submitter:
    """Keeps jobs flowing through `rexnode submit` on random nodes; records what each submit saw."""

    def __init__(self, cluster, scene, work, rng, frames=(20, 60), in_flight=2):
        self.cluster, self.scene, self.work, self.rng = cluster, scene, work, rng
        self.frames, self.in_flight = frames, in_flight
        self.records = []
        self.threads = []
        self.running = False
        self.count = 0
        self.lock = threading.Lock()
        self.procs = []

    def submit_one(self, name, frames, chunk, i):
        out = os.path.join(self.work, "out", name)
        record = {"name": name, "node_index": i, "output": out, "job": None, "acknowledged": False, "exit": None,
                  "frames": frames, "started": now() - self.cluster.t0}
        with self.lock:
            self.records.append(record)
        proc = subprocess.Popen(
            [self.cluster.rexnode, "submit", self.scene, "--frames", f"1-{frames}", "--chunk", str(chunk),
             "--name", name, "--output", out, "--data", self.cluster.dirs[i]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with self.lock:
            self.procs.append(proc)
        # Printed (and flushed) once the farm has committed the job: "Job ID (N frames) → DIR".
        accepted = re.match(r"Job (\S+) \((\d+) frames\)", proc.stdout.readline())
        if accepted:
            record["job"] = accepted.group(1)
            record["acknowledged"] = True
        try:
            rest, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, err = proc.communicate()
        record["exit"] = proc.returncode
        record["stderr"] = err.strip()[-300:]
        record["ended"] = now() - self.cluster.t0

    def loop(self):
        while self.running:
            self.threads = [t for t in self.threads if t.is_alive()]
            nodes = [i for i in self.cluster.dirs if self.cluster.usable(i)]
            if len(self.threads) < self.in_flight and nodes:
                self.count += 1
                t = threading.Thread(
                    target=self.submit_one,
                    args=(f"job{self.count:03d}", self.rng.randint(*self.frames), self.rng.choice([1, 2, 5]),
                          self.rng.choice(nodes)), daemon=True)
                t.start()
                self.threads.append(t)
            time.sleep(0.5)

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.running = False
        self.thread.join()

    def wait(self, timeout):
        deadline = now() + timeout
        for t in list(self.threads):
            t.join(max(0.0, deadline - now()))
        return all(not t.is_alive() for t in self.threads)

    def kill_all(self):
        with self.lock:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()


class Faults:
    """Each method injects one fault, holds it, heals it, and returns what happened (for the fault log)."""

    def __init__(self, cluster, lab, rng):
        self.cluster, self.lab, self.rng = cluster, lab, rng

    def others(self, i):
        return [j for j in self.cluster.dirs if j != i]

    @staticmethod
    def cut(group_a, group_b):
        rules = {}
        for a in group_a:
            for b in group_b:
                rules[f"{a}>{b}"] = {"drop": True}
                rules[f"{b}>{a}"] = {"drop": True}
        return rules

    def hold(self, low, high):
        time.sleep(self.rng.uniform(low, high))

    def leader_fault(self, inject, heal, hold):
        leader = self.cluster.wait_leader()
        if leader is None:
            return {"error": "no leader before the fault"}
        term = self.cluster.term_of(leader)
        inject(leader)
        failover = self.cluster.failover(term, timeout=hold + 20)
        heal(leader)
        return {"target": f"h{leader}", "old_term": term, "failover_s": failover}

    def kill_leader(self):
        def heal(i):
            self.hold(0.5, 2)
            self.cluster.start(i)
        return self.leader_fault(self.cluster.kill, heal, 0)

    def kill_random(self):
        victim = self.rng.choice(list(self.cluster.dirs))
        leader = self.cluster.leader()
        term = self.cluster.term_of(leader) if leader else 0
        self.cluster.kill(victim)
        result = {"target": f"h{victim}", "was_leader": victim == leader}
        if victim == leader:
            result["failover_s"] = self.cluster.failover(term)
        self.hold(0.5, 3)
        self.cluster.start(victim)
        return result

    def isolate_leader(self):
        def inject(i):
            self.lab.set_rules(self.cut([i], self.others(i)))
        def heal(i):
            self.hold(1, 3)
            self.lab.heal()
        return self.leader_fault(inject, heal, 3)

    def split(self):
        nodes = list(self.cluster.dirs)
        self.rng.shuffle(nodes)
        minority, majority = nodes[:2], nodes[2:]
        leader = self.cluster.leader()
        term = self.cluster.term_of(leader) if leader else 0
        self.lab.set_rules(self.cut(minority, majority))
        result = {"minority": [f"h{i}" for i in minority], "leader_in_minority": leader in minority}
        if leader in minority:
            result["failover_s"] = self.cluster.failover(term)
        self.hold(3, 5)
        self.lab.heal()
        return result

    def partial(self):
        # X reaches only Y; everyone else reaches everyone. X is the leader half of the time.
        leader = self.cluster.leader()
        x = leader if leader and self.rng.random() < 0.5 else self.rng.choice(list(self.cluster.dirs))
        y = self.rng.choice(self.others(x))
        self.lab.set_rules(self.cut([x], [j for j in self.others(x) if j != y]))
        self.hold(3, 5)
        self.lab.heal()
        return {"target": f"h{x}", "reaches_only": f"h{y}", "was_leader": x == leader}

    def one_way(self):
        # Everything X sends is lost; X still hears everyone.
        leader = self.cluster.leader()
        x = leader if leader and self.rng.random() < 0.5 else self.rng.choice(list(self.cluster.dirs))
        self.lab.set_rules({f"{x}>*": {"drop": True}})
        self.hold(3, 5)
        self.lab.heal()
        return {"target": f"h{x}", "was_leader": x == leader}

    def loss(self):
        self.lab.set_rules({"*>*": {"loss": 50}})
        self.hold(4, 6)
        self.lab.heal()
        return {"loss_percent": 50}

    def delay(self):
        self.lab.set_rules({"*>*": {"delay": [75, 50]}})
        self.hold(4, 6)
        self.lab.heal()
        return {"delay_ms": "75 ± 50"}

    def stop_leader(self):
        # SIGSTOP for twice the longest election timeout, then SIGCONT. The others should elect a new leader
        # meanwhile; the old one, resumed, finds a higher term and steps down.
        leader = self.cluster.wait_leader()
        if leader is None:
            return {"error": "no leader before the fault"}
        term = self.cluster.term_of(leader)
        self.cluster.stop(leader)
        stopped = now()
        failover = self.cluster.failover(term, timeout=2 * ELECTION_TIMEOUT_MAX)
        time.sleep(max(0.0, 2 * ELECTION_TIMEOUT_MAX - (now() - stopped)))
        self.cluster.cont(leader)
        if failover is None:
            later = self.cluster.failover(term, timeout=20)
            failover = None if later is None else now() - stopped
        return {"target": f"h{leader}", "old_term": term, "failover_s": failover}

    def clock_jump(self):
        # The node's wall clock jumps by minutes, it restarts with the jumped clock, then the clock comes back.
        victim = self.rng.choice(list(self.cluster.dirs))
        offset = self.rng.choice([-1, 1]) * self.rng.randint(5, 60) * 60_000
        self.cluster.set_clock(victim, offset)
        self.hold(2, 3)
        self.cluster.kill(victim)
        self.cluster.start(victim)
        self.hold(2, 3)
        self.cluster.set_clock(victim, 0)
        return {"target": f"h{victim}", "offset_min": offset // 60_000}

    def host_fault(self, inject):
        # Something happens to one host's own network for 2-4 s (its link, its address), then it is put back.
        # The leader half the time; then the others must elect meanwhile (the outage lasts until they have).
        leader = self.cluster.leader()
        x = leader if leader and self.rng.random() < 0.5 else self.rng.choice(list(self.cluster.dirs))
        term = self.cluster.term_of(leader) if leader else 0
        hold = self.rng.uniform(2, 4)
        result = {"target": f"h{x}", "was_leader": x == leader, "held_s": round(hold, 1)}
        started = now()
        inject(x)
        try:
            if x == leader:
                result["failover_s"] = self.cluster.failover(term)
            time.sleep(max(0.0, hold - (now() - started)))
        finally:
            self.lab.restore_host(x)
        return result

    def link_flap(self):
        return self.host_fault(lambda i: self.lab.set_link(i, up=False))

    def address_change(self):
        return self.host_fault(self.lab.change_address)

    def run(self, kind):
        return {
            "kill-leader": self.kill_leader, "kill-random": self.kill_random, "isolate-leader": self.isolate_leader,
            "split-2-3": self.split, "partial-partition": self.partial, "one-way-loss": self.one_way,
            "loss-50": self.loss, "delay-75": self.delay, "stop-leader": self.stop_leader,
            "clock-jump": self.clock_jump, "link-flap": self.link_flap, "address-change": self.address_change,
        }[kind]()


def make_scene(path):
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python",
                    os.path.join(ROOT, "Tests/Fixtures/make_test_scene.py"), "--", path, "--frames", "12",
                    "--width", "64", "--height", "48", "--samples", "2"], capture_output=True, check=True)


def wait_settled(cluster, work, timeout):
    """Until every job the farm committed has ended and, if done, has all its frames in its output folder
    (jobs whose submit was interrupted too: the submitter's daemon delivers them after its restart)."""
    deadline = now() + timeout
    while now() < deadline:
        node = next((i for i in cluster.dirs if cluster.usable(i)), None)
        jobs = cluster.control(node, {"op": "jobs"}, timeout=5) if node else None
        if jobs is not None and all(settled(job, work) for job in jobs):
            return True
        time.sleep(1)
    return False


def settled(job, work):
    if job["state"] in ("failed", "canceled"):
        return True
    if job["state"] != "done":
        return False
    out = os.path.join(work, "out", job["name"])
    files = [f for f in os.listdir(out) if f.startswith(job["name"] + "_")] if os.path.isdir(out) else []
    return len(files) >= job["frames_total"]


def collect_states(cluster):
    """Each node's view of every job (`status`), for the checker to compare with the log."""
    states = {}
    for i in cluster.dirs:
        jobs = cluster.control(i, {"op": "jobs"}, timeout=10) or []
        view = {}
        for job in jobs:
            status = cluster.control(i, {"op": "status", "job": job["job"]}, timeout=10)
            if status is not None:
                view[job["job"]] = {"state": status["state"], "name": status.get("name"),
                                    "frames": {f["frame"]: f for f in status.get("frames", [])}}
        states[cluster.ids.get(i, f"h{i}")] = view
    return states


def converged_ledgers(cluster, timeout=180):
    """Every node's `rexnode ledger --json`, read again until all five end at the same index (or time is up)."""
    deadline = now() + timeout
    while True:
        started = now()
        ledgers = collect_ledgers(cluster)
        # The last index each holds (logs compacted at different points start at different indexes).
        lengths = {log[-1].get("index", 0) if log else 0 for log in ledgers.values()}
        print(f"chaos: read {len(ledgers)} ledgers in {now() - started:.1f} s, last indexes {sorted(lengths)}",
              flush=True)
        if (len(ledgers) == HOSTS and len(lengths) == 1) or now() > deadline:
            return ledgers, len(ledgers) == HOSTS and len(lengths) == 1
        time.sleep(2)


def collect_ledgers(cluster):
    """`rexnode ledger --json` of every node, as a user would read it."""
    ledgers = {}
    for i in cluster.dirs:
        out = cluster.cli(i, "ledger", "--json")
        try:
            if out.returncode == 0:
                ledgers[cluster.ids.get(i, f"h{i}")] = json.loads(out.stdout)
        except ValueError:
            pass
    return ledgers


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--sim-ms", type=int, default=40)
    parser.add_argument("--snapshot-every", type=int, default=100, help="each node's --snapshot-every")
    parser.add_argument("--report", help="write the markdown table here (docs/reliability.md)")
    parser.add_argument("--json", help="write the full results here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder even if every check passes")
    parser.add_argument("--no-blender", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("chaos: needs root (network namespaces).", file=sys.stderr)
        return 2
    rexnode = os.path.abspath(os.path.join(args.bin, "rexnode"))
    # One stream per consumer: the fault sequence and its parameters follow the seed whatever the jobs do.
    fault_rng, job_rng = random.Random(args.seed), random.Random(args.seed + 1_000_003)
    work = tempfile.mkdtemp(prefix="rex-chaos-")
    lab = Lab(HOSTS, work, seed=args.seed)
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"chaos: seed {args.seed}, {args.faults} faults, work folder {work}", flush=True)
    fault_log, problems, stats = [], [], {}
    cluster = submitter = None
    failed = True
    try:
        lab.up()
        scene = os.path.join(work, "scene.blend")
        make_scene(scene)
        cluster = Cluster(lab, rexnode, work, f"simulated:{args.sim_ms}", args.snapshot_every)
        for i in cluster.dirs:
            cluster.start(i)
        observer = threading.Thread(target=cluster.observe, daemon=True)
        observer.start()
        if cluster.wait_healthy(90) is None:
            raise RuntimeError("the farm did not form in 90 s (see the h*.log files)")
        print(f"chaos: farm of {HOSTS} formed at t={now() - cluster.t0:.1f} s", flush=True)
        submitter = Submitter(cluster, scene, work, job_rng)
        submitter.start()
        faults = Faults(cluster, lab, fault_rng)

        def inject(kind, label, blender=False):
            t = now() - cluster.t0
            result = faults.run(kind)
            recovered = cluster.wait_healthy()
            entry = {"n": len(fault_log) + 1, "kind": kind, "t": round(t, 2), "blender": blender, **result,
                     "recovered_s": None if recovered is None else round(recovered, 2)}
            fault_log.append(entry)
            print(f"chaos: {label} {kind} {json.dumps(result)} recovered in {entry['recovered_s']} s", flush=True)
            if recovered is None:
                problems.append(f"the farm did not recover within 45 s after fault {entry['n']} ({kind}).")
                for i in cluster.dirs:
                    if not cluster.running(i):
                        cluster.start(i)
                    elif i in cluster.stopped:
                        cluster.cont(i)
                lab.heal()
                for i in cluster.dirs:
                    lab.restore_host(i)
                cluster.wait_healthy(60)

        kinds = []
        for n in range(args.faults):
            if not kinds:
                kinds = list(KINDS)
                fault_rng.shuffle(kinds)
            inject(kinds.pop(), f"fault {n + 1}/{args.faults}")
            time.sleep(fault_rng.uniform(0.3, 1.0))
        submitter.stop()
        print("chaos: faults done; waiting for every committed job to end and be delivered", flush=True)
        if not wait_settled(cluster, work, 300):
            problems.append("some committed jobs had not ended, or not reached their output folder, 300 s after "
                            "the last fault.")
        submitter.wait(60)
        blender_records = []
        if not args.no_blender:
            print("chaos: rolling restart onto real Blender, then a Blender job through a leader kill", flush=True)
            cluster.renderer, cluster.threads = "blender", 1
            for i in cluster.dirs:
                cluster.terminate(i)
                cluster.start(i)
                if cluster.wait_healthy(60) is None:
                    problems.append(f"the farm was not healthy 60 s after h{i} restarted onto Blender.")
            blend = Submitter(cluster, scene, work, job_rng, frames=(12, 12), in_flight=1)
            thread = threading.Thread(target=blend.submit_one, args=("blender", 12, 2, job_rng.randint(1, HOSTS)))
            thread.start()
            time.sleep(3)
            for kind in ("kill-leader", "split-2-3"):
                inject(kind, "blender-phase fault", blender=True)
            thread.join(600)
            blender_records = blend.records
            if not wait_settled(cluster, work, 120):
                problems.append("the Blender job had not ended, or not reached its output folder, 120 s after its "
                                "faults.")
        cluster.observing = False
        ledgers, converged = converged_ledgers(cluster)
        if not converged:
            problems.append("the nodes' ledgers did not reach the same last index within 180 s after the run.")
        if len(ledgers) != HOSTS:
            problems.append(f"only {len(ledgers)} of {HOSTS} nodes answered `rexnode ledger --json`.")
        states = collect_states(cluster)
        submits = submitter.records + blender_records
        log_claims, log_terms = cluster.read_logs()
        found, stats = history.check(ledgers, submits, cluster.claims + log_claims,
                                     {**cluster.terms, **log_terms}, states)
        problems += found
        stats["leader_claims"] = {"polls": len(cluster.claims), "logs": len(log_claims)}
        stats.update(submits_interrupted=0, submits_refused=0)
        for record in submits:
            if record["exit"] == 0:
                continue
            killed = any(i == record["node_index"] and record["started"] <= t <= record.get("ended", t)
                         for t, i in cluster.kills)
            if killed:
                # A submit whose own node was killed loses its connection; the job itself must still finish
                # (the checker verifies its frames reached the output folder through the restarted node).
                stats["submits_interrupted"] += 1
            elif not record["acknowledged"] and record["exit"] is not None:
                # Refused before it was committed (no leader reachable in time, say): allowed, in one sentence.
                stats["submits_refused"] += 1
                if not record.get("stderr") or "\n" in record["stderr"].strip():
                    problems.append(f"submit {record['name']} failed without a one-sentence reason: "
                                    f"{record.get('stderr')!r}")
            else:
                problems.append(f"submit {record['name']} (job {record['job']}) on h{record['node_index']} "
                                f"exited {record['exit']} although its node was not killed: {record.get('stderr')}")
        failovers = [f["failover_s"] for f in fault_log if f.get("failover_s") is not None]
        for f in fault_log:
            if "failover_s" in f and f["failover_s"] is None:
                problems.append(f"fault {f['n']} ({f['kind']}): no new leader within the wait.")
        gap, gap_at = cluster.longest_without_leader()
        recoveries = [f["recovered_s"] for f in fault_log if f["recovered_s"] is not None]
        blender_jobs = {r["job"] for r in blender_records if r["acknowledged"]}
        stats.update({
            "faults": len(fault_log), "seed": args.seed, "started": started_at,
            "duration_min": round((now() - cluster.t0) / 60, 1),
            "failover_p50_ms": None if not failovers else round(percentile(failovers, 50) * 1000),
            "failover_p99_ms": None if not failovers else round(percentile(failovers, 99) * 1000),
            "failover_count": len(failovers),
            "longest_without_leader_ms": round(gap * 1000),
            "longest_without_leader_during": next((f"fault {f['n']} ({f['kind']})" for f in reversed(fault_log)
                                                   if gap_at is not None and f["t"] <= gap_at), "the start"),
            "recovery_p50_s": percentile(recoveries, 50), "recovery_max_s": max(recoveries, default=None),
            "jobs_submitted": len(submits), "switch": lab.stats(),
            "blender_frames": sum(1 for e in history.agreed_history(ledgers) if e.get("type") == "CompleteFrame"
                                  and e.get("outcome") == "applied" and e.get("job") in blender_jobs),
        })
        by_kind = {}
        for f in fault_log:
            by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
        stats["by_kind"] = by_kind
        summary = {"problems": problems, "stats": stats, "faults": fault_log, "submits": submits}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=1)
        if args.report:
            write_report(args.report, summary, args)
        print(json.dumps(stats, indent=1))
        for p in problems:
            print("chaos: PROBLEM:", p)
        print(f"chaos: {len(problems)} problems; frames committed {stats.get('frames_committed')}, "
              f"lost {stats.get('frames_lost')}, committed twice {stats.get('frames_double')}", flush=True)
        failed = bool(problems)
        return 1 if problems else 0
    finally:
        if submitter is not None:
            submitter.running = False
            submitter.kill_all()
        if cluster is not None:
            cluster.observing = False
            for i in cluster.dirs:
                if cluster.running(i):
                    cluster.kill(i)
        lab.down()
        if args.keep or failed:
            print(f"chaos: kept {work} (node logs h*.log, switch.log)")
        else:
            shutil.rmtree(work, ignore_errors=True)


METHOD = """
## How the run works

`chaos/run.py` creates five hosts, each a network namespace with one veth port (198.18.0.1-5/24), wired to a
software switch in a sixth namespace (`chaos/switch.py`: MAC learning, flooding of multicast, and per-direction
rules that drop, lose a percentage or delay frames). The root namespace has no interface in the lab; multicast
discovery runs on the hosts' eth0 with TTL 1. One `rexnode join` runs in each host (`--beacon-ms 250
--dead-after 2`, simulated renderer at `--sim-ms` per frame, 2 slots). A submitter keeps two jobs in flight
(20-60 frames, chunk 1, 2 or 5) through `rexnode submit` on random nodes. Faults come one after
another, kinds in shuffled rounds so every kind gets its share; after each, the run heals the network and
waits until three polls in a row find all five nodes running, agreeing on one leader and term, and the
leader seeing five live members. At the end it waits until every committed job has ended and its frames are
in its output folder.
Then every node restarts, one at a time, onto real Blender (1 slot, 1 thread), and one 12-frame Blender job
renders through a leader kill -9 and a 2|3 split.

| kind | what is done |
|---|---|
| kill-leader | `kill -9` of every process in the leader's host; restarted 0.5-2 s after a new leader is seen |
| kill-random | `kill -9` of every process in a random node's host (the leader's, sometimes); restarted 0.5-3 s later |
| isolate-leader | every frame to and from the leader dropped until a new leader is seen, then 1-3 s more |
| split-2-3 | a random 2 / 3 split for 3-5 s |
| partial-partition | one node (the leader half the time) reaches only one peer, for 3-5 s; the others reach everyone |
| one-way-loss | everything one node sends is lost (it still hears everyone), 3-5 s |
| loss-50 | 50 % of frames lost on every link, 4-6 s |
| delay-75 | every frame held 75 ms ± 50 ms (uniform) on every link, 4-6 s |
| stop-leader | `SIGSTOP` of the leader for twice the longest election timeout (2 s), then `SIGCONT` |
| clock-jump | a node's wall clock jumps 5-60 min forward or back; it is killed and restarted with that clock; 2-3 s later the clock comes back |
| link-flap | one node's link goes down (`ip link set eth0 down`) for 2-4 s (the leader half the time; then until a new leader is seen), then up |
| address-change | one node's address is removed and a stranger's (198.18.0.10x) put in its place for 2-4 s (the leader half the time), then its own comes back |

**Why a software switch, not `tc netem`.** This machine's kernel has no netem, tc filters or NFQUEUE
(`tc qdisc add ... netem` answers "Specified qdisc kind is unknown"). The switch does what netem and `nft`
drop rules would, in one process. The seed fixes the order of the fault kinds, the random draws for
targets and durations, and the jobs' sizes; which node leads at a given moment, and the timing of processes
and packets, are not reproducible, so a run is not replayed exactly.

**How the clock jumps.** Time namespaces shift only CLOCK_MONOTONIC and CLOCK_BOOTTIME, and every namespace
shares the machine's CLOCK_REALTIME; libfaketime (Jepsen's tool) empties Swift's `CommandLine.arguments` here,
so `rexnode join` cannot start under it; stepping the machine's clock would jump all five nodes (and the
machine) at once. So a node reads its wall clock through one function (`WallClock` in Mesh) that adds the
offset found in the file named by `REXNODE_CLOCK_OFFSET_FILE`; the suite sets that variable for its nodes
only. Everything that reads calendar time (beacon freshness, lease deadlines, submit times, command ids)
goes through it; timeouts use the monotonic clock and are not affected.

## What the history checker verifies (`chaos/history.py`, tested by `chaos/test_history.py`)

- **One history**: every node's `rexnode ledger --json` is a prefix of the longest one, index by index
  (index, term, command id, type and the outcome of applying it), with no gap.
- **Terms never go backwards**: by index in every log, and in every node's term as polled over time (across
  its restarts).
- **At most one leader per term**: from every "raft role changed ... raft/role=leader" line in the nodes'
  logs and every poll in which a node said it was leader.
- **Exactly once**: every frame has at most one `CompleteFrame` whose outcome was `applied`; later
  completions of a done frame must have been ignored by the ledger (first valid completion wins).
- **Nothing acknowledged is lost**: every submit that printed its job id is in the agreed history with the
  frames it asked for; every committed job (acknowledged or not) has every frame committed, and each frame
  file in its output folder has the BLAKE2b-256 hash the ledger committed; no job was canceled (the run
  cancels none); every node's own tables (`status` of each job) agree with the log: job done, each frame
  done with the committed hash.
- **Every submit ends well**: a submit exits 0, unless its own node was killed while it waited (it loses its
  connection; its job must still finish), or it was refused before being committed, with a one-sentence
  reason.

## What the suite found (fixed, each with its regression test)

- `rexnode ledger` and `status` built their JSON on the daemon's actor, which also carries Raft's messages:
  reading a 49,000-entry ledger on the leader stalled it for seconds and the farm elected a new leader on
  every read. Both now run in a detached task (`readingABigJobsStatusOrTheLedgerDoesNotCostTheLeaderItsTerm`).
- A stopped leader was once not replaced within its 2 s of SIGSTOP, 6 s after a burst of 50 % loss: the mesh
  redialled lost connections with backoff up to 5 s, probably leaving followers unconnected to each other.
  A live peer is now redialled at least every second (no lower-tier test; this suite reproduces it).
- A piped `rexnode submit` printed its "Job ID" line only at the end (block-buffered stdout)
  (`aPipedSubmitReportsItsJobIdWhileTheJobIsStillRunning`).
- Command ids started at the wall clock: a restart with the clock stepped back could reuse them and the
  ledger would drop the new commands as retries. They now come from blocks reserved in the database
  (`CommandSequencerTests`).

**Failover** is measured from the moment a fault hits the leader (kill, isolation, 2|3 split with the
leader in the minority, SIGSTOP) to the first 100 ms poll in which another node says it leads at a higher
term. **Time with no leader** is the longest run of polls in which no node said it led at the highest term
any node reported; the table names the last fault that had started when it began.
"""


def write_report(path, summary, args):
    s = summary["stats"]
    rows = "\n".join(f"| {kind} | {count} |" for kind, count in sorted(s["by_kind"].items()))
    text = f"""# Reliability

Figures from one run of the fault suite (`make chaos`), {s['started']}, on this project's CI-like machine
({os.cpu_count()} cores). Reproduce with:

    make chaos CHAOS_FAULTS={args.faults} CHAOS_SEED={args.seed}

## Result

| | |
|---|---|
| runs | 1 run of {s['faults']} faults, seed {s['seed']}, {s['duration_min']} min (`make test` runs a 12-fault version, one of each kind) |
| faults injected | {s['faults']} |
| jobs submitted / acknowledged | {s['jobs_submitted']} / {s['jobs_acknowledged']} |
| frames committed | {s['frames_committed']} (of which rendered by real Blender: {s['blender_frames']}) |
| **frames lost** (goal 0) | **{s['frames_lost']}** |
| **frames committed twice** (goal 0) | **{s['frames_double']}** |
| problems found (history checks, submits, recovery) | {len(summary['problems'])} |
| failover p50 / p99 (leader faults, {s['failover_count']} measured) | {s['failover_p50_ms']} ms / {s['failover_p99_ms']} ms |
| longest time with no leader | {s['longest_without_leader_ms']} ms, during {s['longest_without_leader_during']} |
| recovery to 5 live members after the heal, p50 / max | {s['recovery_p50_s']} s / {s['recovery_max_s']} s |
| agreed log length | {s['log_length']} entries |
| Ethernet frames through the switch | {s['switch']['forwarded']} forwarded, {s['switch']['delayed']} delayed, {s['switch']['lost']} lost at random, {s['switch']['dropped']} dropped by partitions, {s['switch']['send_errors']} send errors |

## Faults by kind

| kind | count |
|---|---|
{rows}

""" + METHOD
    if summary["problems"]:
        text += "\n## Problems found\n\n" + "\n".join(f"- {p}" for p in summary["problems"]) + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
