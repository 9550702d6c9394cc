#!/usr/bin/env python3
"""A software Ethernet switch for the fault suite: every frame between the test hosts passes through here.

It runs inside the lab's switch namespace, holds one AF_PACKET socket per host port, learns MAC addresses,
floods broadcast and multicast, and applies per-direction rules before forwarding: drop everything (a
partition, one-way when only one direction is set), drop a percentage at random (loss), or hold each frame
for a random delay (mean ± jitter, uniform). This is what `tc netem` and `nft` drop rules would do; the
kernel here has neither netem nor tc filters, and one program doing all of it keeps the faults reproducible
from a seed. Nothing leaves the namespace: the ports are veth ends whose other ends live in the host
namespaces, and the root namespace has no interface in the lab.

Control: a UNIX stream socket; each line is a JSON request, answered by one JSON line.
  {"rules": {"1>2": {"drop": true}, "3>*": {"loss": 50}, "*>*": {"delay": [75, 50]}}}  replace all rules
  {"stats": true}                                                                     counters
A rule key is "SRC>DST" with host numbers or "*"; the most specific matching rule applies.

Usage (inside the switch namespace): switch.py --ports h1,h2,h3 --control PATH [--seed N]
"""
import argparse
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Switch:
    def __init__(self, ports, control_path, seed):
        self.rng = random.Random(seed)
        self.ports = {}  # fd -> (host number, socket)
        self.by_host = {}
        for name in ports:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((name, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setblocking(False)
            host = int(name.lstrip("h"))
            self.ports[s.fileno()] = (host, s)
            self.by_host[host] = s
        self.macs = {}  # MAC -> host number
        self.rules = {}
        self.pending = []  # (due, seq, host, frame)
        self.seq = 0
        self.stats = {"forwarded": 0, "dropped": 0, "lost": 0, "delayed": 0, "send_errors": 0}
        if os.path.exists(control_path):
            os.unlink(control_path)
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(control_path)
        self.control.listen(8)
        self.clients = {}

    def rule(self, src, dst):
        for key in (f"{src}>{dst}", f"{src}>*", f"*>{dst}", "*>*"):
            if key in self.rules:
                return self.rules[key]
        return None

    def forward(self, src, dst, frame, now):
        rule = self.rule(src, dst)
        if rule:
            if rule.get("drop"):
                self.stats["dropped"] += 1
                return
            if self.rng.random() * 100 < rule.get("loss", 0):
                self.stats["lost"] += 1
                return
            delay = rule.get("delay")
            if delay:
                mean, jitter = delay
                ms = max(0.0, mean + self.rng.uniform(-jitter, jitter))
                self.seq += 1
                heapq.heappush(self.pending, (now + ms / 1000, self.seq, dst, frame))
                self.stats["delayed"] += 1
                return
        self.send(dst, frame)

    def send(self, dst, frame):
        sock = self.by_host[dst]
        for _ in range(50):  # a full send buffer is waited out (up to ~50 ms), not turned into loss
            try:
                sock.send(frame)
                self.stats["forwarded"] += 1
                return
            except BlockingIOError:
                select.select([], [sock], [], 0.001)
            except OSError:
                break
        self.stats["send_errors"] += 1

    def receive(self, fd, now):
        src, sock = self.ports[fd]
        for _ in range(64):
            try:
                frame, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING or len(frame) < 14:
                continue
            self.macs[frame[6:12]] = src
            dst_mac = frame[0:6]
            if dst_mac[0] & 1:  # broadcast or multicast: flood
                targets = [h for h in self.by_host if h != src]
            else:
                known = self.macs.get(dst_mac)
                targets = [known] if known is not None and known != src else [h for h in self.by_host if h != src]
            for dst in targets:
                self.forward(src, dst, frame, now)

    def answer(self, client):
        buf = self.clients[client]
        try:
            data = client.recv(65536)
        except OSError:
            data = b""
        if not data:
            del self.clients[client]
            client.close()
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                request = json.loads(line)
                if "rules" in request:
                    self.rules = {str(k): dict(v) for k, v in request["rules"].items()}
                    reply = {"ok": True}
                else:
                    reply = dict(self.stats, rules=self.rules, pending=len(self.pending))
            except (ValueError, AttributeError, TypeError) as error:
                reply = {"error": f"bad request: {error}"}
            client.sendall((json.dumps(reply) + "\n").encode())
        self.clients[client] = buf

    def run(self):
        running = True

        def stop(*_):
            nonlocal running
            running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while running:
            now = time.monotonic()
            while self.pending and self.pending[0][0] <= now:
                _, _, dst, frame = heapq.heappop(self.pending)
                self.send(dst, frame)
            timeout = max(0.0, self.pending[0][0] - now) if self.pending else 0.5
            watched = list(self.ports) + [self.control] + list(self.clients)
            try:
                ready, _, _ = select.select(watched, [], [], timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for r in ready:
                if r is self.control:
                    client, _ = self.control.accept()
                    self.clients[client] = b""
                elif r in self.clients:
                    self.answer(r)
                else:
                    self.receive(r, now)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    switch = Switch(args.ports.split(","), args.control, args.seed)
    print("switch ready", flush=True)
    switch.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
