"""The impairment shim: an Ethernet bridge between two interfaces, in userspace, that can drop,
duplicate and reorder frames (the kernel here has no sch_netem).

    python shim.py --if1 w1 --if2 w2 --config shim.json --stats stats.json [--log shim.log]

It reads every frame arriving on one interface through an AF_PACKET socket and writes it to
the other. Only IPv4 frames are impaired (ARP always passes, so the link itself stays up).
Each direction ("12": if1 -> if2, "21": if2 -> if1) has its own random generator seeded from
the seed and the direction's name, so a run is deterministic for a given frame sequence. For
each IPv4 frame of an impaired direction one draw r decides:

    r < drop                       the frame is dropped
    r < drop + dup                 it is sent twice, back to back
    r < drop + dup + reorder       it is held back until `gap` more frames of that direction
                                   have been sent (or `hold_ms` have passed), then sent
    otherwise                      it is sent

The configuration is a JSON object (keys: seed, drop, dup, reorder, gap, hold_ms,
directions): read at start and again on SIGHUP, which also resets the counters and the
generators. SIGUSR1 writes the counters to the stats file (atomically, with "dump"
incremented); it is also written once the sockets are up (dump 0, "ready") and at exit
(SIGTERM). Counters are per direction and per frame class: esp (IPv4 protocol 50), esp_udp
(ESP in UDP on port 4500), keepalive (the one-byte NAT keepalive), ike (UDP 4500 with the
non-ESP marker), icmp, ipfrag (any outer IPv4 fragment: MF set or a non-zero offset),
clear_inner (an IPv4 header with a 10.0.0.0/8 source or destination: cleartext inner
traffic on the outer link), other_ip, arp, other.

The sockets use PACKET_VNET_HDR, so a frame's checksum-offload and GSO state travels with it
(veth leaves UDP and TCP checksums to be completed later: copying the bare bytes would
deliver broken checksums), and PACKET_IGNORE_OUTGOING, so the shim never reads back what it
sent."""

import argparse
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
VNET = 10                                   # sizeof(struct virtio_net_hdr)
DEFAULTS = {"seed": 1, "drop": 0.0, "dup": 0.0, "reorder": 0.0, "gap": 3, "hold_ms": 200, "directions": ["12", "21"]}
KINDS = ("frames", "dropped", "duplicated", "reordered")


def classify(f: bytes | memoryview, n: int) -> tuple[str, bool]:
    """(class, is IPv4) of the frame f[VNET:n]."""
    e = VNET
    if n < e + 14:
        return "other", False
    ethertype = (f[e + 12] << 8) | f[e + 13]
    if ethertype == 0x0806:
        return "arp", False
    if ethertype != 0x0800 or n < e + 34:
        return "other", False
    ip = e + 14
    if f[ip + 12] == 10 or f[ip + 16] == 10:
        return "clear_inner", True
    frag = ((f[ip + 6] << 8) | f[ip + 7]) & 0x3FFF         # MF and the offset
    proto = f[ip + 9]
    if frag:
        return "ipfrag", True
    if proto == 50:
        return "esp", True
    if proto == 1:
        return "icmp", True
    l4 = ip + (f[ip] & 0x0F) * 4
    if proto == 17 and n >= l4 + 8:
        sport, dport = (f[l4] << 8) | f[l4 + 1], (f[l4 + 2] << 8) | f[l4 + 3]
        if 4500 in (sport, dport):
            payload = n - l4 - 8
            if payload == 1 and f[l4 + 8] == 0xFF:
                return "keepalive", True
            if payload >= 4 and not any(f[l4 + 8:l4 + 12]):
                return "ike", True
            return "esp_udp", True
    return "other_ip", True


class Shim:
    def __init__(self, if1: str, if2: str, config: str | None, stats: str, log, initial: dict):
        self.config_path, self.stats_path, self.log, self.initial = config, stats, log, initial
        self.socks = {"12": self._open(if1), "21": self._open(if2)}   # keyed by the direction they read
        self.out = {"12": self.socks["21"], "21": self.socks["12"]}
        self.dump = 0
        self.generation = 0
        self.flags = set()
        self.load()

    @staticmethod
    def _open(ifname: str) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind((ifname, ETH_P_ALL))
        s.setblocking(False)
        return s

    def load(self) -> None:
        cfg = {**DEFAULTS, **self.initial}
        if self.config_path and os.path.exists(self.config_path):
            with open(self.config_path) as fh:
                cfg.update(json.load(fh))
        self.cfg = cfg
        self.generation += 1
        self.rng = {d: random.Random(f"{cfg['seed']}/{d}") for d in ("12", "21")}
        self.count = {d: {k: {} for k in KINDS} for d in ("12", "21")}
        self.held = {d: [] for d in ("12", "21")}       # [frames left to wait, deadline, frame]
        self.sent_ip = {d: 0 for d in ("12", "21")}
        self.errors = {}
        self.base_drops = self.kernel_drops()
        print(f"shim: configuration {self.generation}: {json.dumps(cfg, sort_keys=True)}", file=self.log, flush=True)

    def kernel_drops(self) -> int:
        # reading PACKET_STATISTICS resets it: keep a running total
        total = getattr(self, "_kdrops", 0)
        for s in self.socks.values():
            total += struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        self._kdrops = total
        return total

    def write_stats(self, final: bool = False) -> None:
        doc = {"dump": self.dump, "generation": self.generation, "ready": True, "final": final,
               "pid": os.getpid(), "config": self.cfg, "counts": self.count,
               "held": {d: len(h) for d, h in self.held.items()}, "send_errors": self.errors,
               "kernel_drops": self.kernel_drops() - self.base_drops}
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(doc, fh, sort_keys=True)
        os.replace(tmp, self.stats_path)
        self.dump += 1

    def bump(self, d: str, kind: str, cls: str) -> None:
        c = self.count[d][kind]
        c[cls] = c.get(cls, 0) + 1

    def send(self, d: str, frame) -> None:
        try:
            self.out[d].send(frame)
        except OSError as exc:             # a full queue or a frame the interface refuses
            self.errors[exc.strerror] = self.errors.get(exc.strerror, 0) + 1

    def release(self, d: str, now: float, one_sent: bool) -> None:
        """Send the held frames of direction d whose turn has come."""
        keep = []
        for item in self.held[d]:
            if one_sent:
                item[0] -= 1
            if item[0] <= 0 or now >= item[1]:
                self.send(d, item[2])
            else:
                keep.append(item)
        self.held[d] = keep

    def forward(self, d: str, buf: bytearray, n: int) -> None:
        cls, is_ip = classify(buf, n)
        self.bump(d, "frames", cls)
        frame = memoryview(buf)[:n]
        cfg = self.cfg
        if not is_ip or d not in cfg["directions"]:
            self.send(d, frame)
            return
        r = self.rng[d].random()
        now = time.monotonic()
        if r < cfg["drop"]:
            self.bump(d, "dropped", cls)
            return
        if r < cfg["drop"] + cfg["dup"]:
            self.bump(d, "duplicated", cls)
            self.send(d, frame)
            self.send(d, frame)
        elif r < cfg["drop"] + cfg["dup"] + cfg["reorder"]:
            self.bump(d, "reordered", cls)
            self.held[d].append([int(cfg["gap"]) + 1, now + cfg["hold_ms"] / 1000, bytes(frame)])
        else:
            self.send(d, frame)
        if self.held[d]:
            self.release(d, now, True)

    def run(self) -> None:
        for sig, flag in ((signal.SIGHUP, "load"), (signal.SIGUSR1, "dump"), (signal.SIGTERM, "stop"),
                          (signal.SIGINT, "stop")):
            signal.signal(sig, lambda *_a, f=flag: self.flags.add(f))
        buf = bytearray(VNET + 65536 + 64)
        poller = select.poll()
        by_fd = {}
        for d, s in self.socks.items():
            poller.register(s, select.POLLIN)
            by_fd[s.fileno()] = d
        self.write_stats()
        while "stop" not in self.flags:
            if "load" in self.flags:
                self.flags.discard("load")
                for d in self.held:              # what was held goes out before the new rules
                    self.release(d, float("inf"), False)
                self.load()
                self.write_stats()
            if "dump" in self.flags:
                self.flags.discard("dump")
                self.write_stats()
            held = any(self.held.values())
            for fd, _ev in poller.poll(10 if held else 50):
                d, s = by_fd[fd], self.socks[by_fd[fd]]
                for _ in range(256):              # drain a burst, then look at the other side
                    try:
                        n = s.recv_into(buf)
                    except BlockingIOError:
                        break
                    self.forward(d, buf, n)
            if held:
                now = time.monotonic()
                for d in self.held:
                    if self.held[d]:
                        self.release(d, now, False)
        for d in self.held:
            self.release(d, float("inf"), False)
        self.write_stats(final=True)
        print(f"shim: final counts {json.dumps(self.count, sort_keys=True)}", file=self.log, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--if1", required=True)
    p.add_argument("--if2", required=True)
    p.add_argument("--config", help="JSON configuration file, re-read on SIGHUP")
    p.add_argument("--stats", required=True, help="where the counters are written (SIGUSR1)")
    for key in ("seed", "gap", "hold_ms"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int)
    for key in ("drop", "dup", "reorder"):
        p.add_argument(f"--{key}", type=float)
    args = p.parse_args()
    initial = {k: getattr(args, k) for k in ("seed", "gap", "hold_ms", "drop", "dup", "reorder")
               if getattr(args, k) is not None}                # the file, when present, wins
    Shim(args.if1, args.if2, args.config, args.stats, sys.stderr, initial).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
