"""Test hosts in network namespaces, wired to the software switch (chaos/switch.py).

Host i (1-based) is namespace PREFIX-hI with eth0 = 198.18.0.I/24 (RFC 2544 benchmarking space, as the
project's network rule asks); the switch is namespace PREFIX-sw with ports hI. Nothing is created in, or
routed through, the root namespace. Offloads are off on both veth ends: frames cross a userspace switch,
so checksums must be complete and frames no larger than the MTU.
"""
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SUBNET = "198.18.0"


def sh(*args, check=True):
    out = subprocess.run(list(args), capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {out.stderr.strip()}")
    return out


def existing_namespaces():
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


PREFIX = "rxc"


def stale_prefixes():
    """Labs left behind by runs that were killed (their pid no longer exists)."""
    stale = set()
    for ns in existing_namespaces():
        head = ns.split("-")[0]
        if head.startswith(PREFIX) and head[len(PREFIX):].isdigit():
            pid = int(head[len(PREFIX):])
            if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                stale.add(head)
    return stale


class Lab:
    def __init__(self, hosts, work, seed=1):
        self.hosts = hosts
        # Namespaces carry this process's pid: two runs side by side never touch each other's lab.
        self.prefix = f"{PREFIX}{os.getpid()}"
        self.work = work
        self.seed = seed
        self.switch = None
        self.control_path = os.path.join(work, "switch.sock")

    def ns(self, i):
        return f"{self.prefix}-h{i}"

    @property
    def sw(self):
        return f"{self.prefix}-sw"

    def address(self, i):
        return f"{SUBNET}.{i}"

    def up(self):
        for prefix in stale_prefixes():  # what killed earlier runs left behind
            Lab.remove(prefix)
        sh("ip", "netns", "add", self.sw)
        sh("ip", "-n", self.sw, "link", "set", "lo", "up")
        for i in range(1, self.hosts + 1):
            ns = self.ns(i)
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", "name", f"h{i}", "netns", self.sw, "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            for where, dev in ((ns, "eth0"), (self.sw, f"h{i}")):
                sh("ip", "netns", "exec", where, "ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off",
                   "gso", "off", "gro", "off")
                sh("ip", "-n", where, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        log = open(os.path.join(self.work, "switch.log"), "w")
        self.switch = subprocess.Popen(
            ["ip", "netns", "exec", self.sw, sys.executable, os.path.join(HERE, "switch.py"),
             "--ports", ",".join(f"h{i}" for i in range(1, self.hosts + 1)), "--control", self.control_path,
             "--seed", str(self.seed)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not os.path.exists(self.control_path):
            if time.time() > deadline or self.switch.poll() is not None:
                raise RuntimeError("the lab's switch did not start (see switch.log)")
            time.sleep(0.05)

    def down(self):
        if self.switch is not None and self.switch.poll() is None:
            self.switch.terminate()
            try:
                self.switch.wait(5)
            except subprocess.TimeoutExpired:
                self.switch.kill()
        Lab.remove(self.prefix)

    @staticmethod
    def remove(prefix):
        for ns in existing_namespaces():
            if ns.startswith(prefix + "-"):
                Lab.kill_namespace(ns)
                sh("ip", "netns", "del", ns, check=False)

    @staticmethod
    def kill_namespace(ns):
        """kill -9 of every process in a namespace, as when the machine loses power."""
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass

    def kill_all(self, i):
        Lab.kill_namespace(self.ns(i))

    def request(self, message):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.control_path)
            s.sendall((json.dumps(message) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return json.loads(data)

    def set_rules(self, rules):
        """rules: {"SRC>DST": {"drop": True} | {"loss": PCT} | {"delay": [MEAN_MS, JITTER_MS]}}."""
        self.request({"rules": rules})

    def heal(self):
        self.set_rules({})

    def stats(self):
        return self.request({"stats": True})

    def command(self, i, args):
        """The argv that runs ARGS inside host I."""
        return ["ip", "netns", "exec", self.ns(i)] + list(args)
