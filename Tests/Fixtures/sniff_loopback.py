#!/usr/bin/env python3
"""Captures TCP payloads on the loopback interface to or from the given ports (needs CAP_NET_RAW).

    sniff_loopback.py OUT_FILE PORT[,PORT...] MAX_SECONDS

Writes every matching payload to OUT_FILE as it arrives, and stops after MAX_SECONDS, on SIGTERM, or when
OUT_FILE.stop exists. Used by the
test that checks no plaintext .blend or image bytes cross the wire. It only listens; it sends nothing.
"""
import os
import signal
import socket
import struct
import sys
import time

out_path, ports_text, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
ports = {int(p) for p in ports_text.split(",") if p}
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
# Loopback bursts (1 MiB blob chunks) overflow a default-sized buffer: make it large so nothing is dropped.
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
sock.bind(("lo", 0))
sock.settimeout(0.1)
deadline = time.time() + seconds
with open(out_path, "wb") as out:
    print("ready", flush=True)
    while not stop and time.time() < deadline and not os.path.exists(out_path + ".stop"):
        try:
            packet = sock.recv(65535)
        except socket.timeout:
            continue
        if len(packet) < 34 or struct.unpack("!H", packet[12:14])[0] != 0x0800:
            continue
        ip = packet[14:]
        header = (ip[0] & 0x0F) * 4
        if ip[9] != 6:
            continue
        tcp = ip[header:]
        source, destination = struct.unpack("!HH", tcp[:4])
        if source in ports or destination in ports:
            out.write(tcp[(tcp[12] >> 4) * 4:])
            out.flush()
