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
        self.switch_log = None
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
        log = self.switch_log = open(os.path.join(self.work, "switch.log"), "w")
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
        if self.switch_log is not None:
            self.switch_log.close()
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

    def set_link(self, i, up):
        """Host I's link up or down (`ip link set eth0 up|down`), as when a cable is pulled or Wi-Fi drops."""
        sh("ip", "-n", self.ns(i), "link", "set", "eth0", "up" if up else "down")

    def stranger(self, i):
        """An address host I never has normally (198.18.0.100+I)."""
        return f"{SUBNET}.{100 + i}"

    def change_address(self, i):
        """Host I loses its address, and a stranger's takes its place (a DHCP change, a roaming laptop)."""
        sh("ip", "-n", self.ns(i), "addr", "del", f"{self.address(i)}/24", "dev", "eth0")
        sh("ip", "-n", self.ns(i), "addr", "add", f"{self.stranger(i)}/24", "dev", "eth0")

    def restore_host(self, i):
        """Host I as `up` made it, whatever was done to it: link up, its own address, no stranger's."""
        ns = self.ns(i)
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "addr", "del", f"{self.stranger(i)}/24", "dev", "eth0", check=False)
        sh("ip", "-n", ns, "addr", "replace", f"{self.address(i)}/24", "dev", "eth0")

    def command(self, i, args):
        """The argv that runs ARGS inside host I."""
        return ["ip", "netns", "exec", self.ns(i)] + list(args)
