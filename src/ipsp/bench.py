"""``ipsp bench``: how fast each proposal protects and unprotects a trace, against baselines
measured in the same run.

Every packet of the trace (generated, or IP packets from a pcap/pcapng file) goes through
the engine, policy lookup included, in batches: encapsulated by one engine, decapsulated by
another holding the peer SA, and checked against its input. The trace is streamed in chunks
(``chunk`` packets: a receive ring's worth), so memory stays bounded whatever the trace's
size; each chunk is copied into the arena first, as a NIC would have written it, and only the
engine calls are timed. Each chunk is timed ``repeats`` times (fresh sequence numbers every
time, so decapsulation never meets a replay) and the fastest pass counts.

Baselines, same run, same packets:
- the floor: a minimal C loop over the same OpenSSL or intel-ipsec-mb calls, on the same
  cipher regions of the same arena;
- naive per-packet ``cryptography`` (:mod:`ipsp.baselines`), on a sample;
- scapy's ESP, on a smaller sample (it is slow).
Both Python baselines are verified: an ipsp SA must accept what they produce.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import resource
import struct
import threading
import time
import zlib
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import fastpath
from fastpath import Status

from ipsp import baselines
from ipsp.engine import Engine
from ipsp.sa import SAConfig
from ipsp.spd import Action, Direction, PolicySelector
from ipsp.transforms import parse_proposal

__all__ = ["BenchResult", "ThreadScaling", "Source", "NoPackets", "run_bench", "floor_for", "DEFAULT_PROPOSALS",
           "wire_bits", "as_dicts", "screen", "RULES"]

DEFAULT_PROPOSALS = ("aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha1", "aes256-sha256", "des-sha1")
LINE_RATES = (1, 10, 40, 100)
HEADROOM = 128
CHUNK = 1024
CRYPTOGRAPHY_SAMPLE = 2048
SCAPY_SAMPLE = 64
SCALING_PACKETS = 65536
_ANY = (PolicySelector(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("0.0.0.0/0")),
        PolicySelector(ipaddress.ip_network("::/0"), ipaddress.ip_network("::/0")))


def wire_bits(ip_len: int) -> int:
    """Bits a packet of this IP length occupies on Ethernet: header and FCS (18 bytes, at
    least a 64-byte frame), preamble, start delimiter and inter-frame gap (20 bytes)."""
    return (max(ip_len + 18, 64) + 20) * 8


# The largest IP packet a bench takes from a capture: a 9000-byte jumbo frame's. Longer ones
# are GRO/LRO or TSO super-packets the capturing host's NIC or stack built or was to split;
# they never crossed a wire in that form.
MAX_IP_PACKET = 9000

# What the bench does with each kind of frame a real capture holds (docs/cli.md); every frame
# of a file lands in exactly one rule, "ok" included.
RULES = {
    "ok": "benchmarked as captured",
    "padded": "cut short by the capture's snap length: padded with zeros back to the record's original "
              "length (as tcpreplay --fixlen=pad does), then benchmarked",
    "trimmed": "bytes after the IP packet (Ethernet padding, a trailer): cut to the IP length, then benchmarked",
    "non_ip": "no IPv4/IPv6 packet in the frame (ARP, LLDP, an unknown link type): left out",
    "fragment": "an IP fragment (the engine protects whole packets, RFC 4301 7): left out",
    "super_packet": f"longer than {MAX_IP_PACKET} bytes (a GRO/TSO super-packet) or an IPv6 jumbogram: left out",
    "bad_length": "an IP length that contradicts the capture (shorter than its header, or longer than the "
                  "original frame): left out",
    "refused": "refused by the engine as inner packet (BAD_INNER, e.g. a broken extension header chain): left out",
}
_SHORT = {"ok": "", "padded": "truncated packets padded to their original length",
          "trimmed": "packets trimmed to their IP length", "non_ip": "non-IP frames skipped",
          "fragment": "fragments left out", "super_packet": "super-packets left out",
          "bad_length": "packets with bogus IP lengths left out", "refused": "packets the engine refused left out"}


class NoPackets(ValueError):
    """The source holds no packet the bench can measure."""


def screen(ip: memoryview, missing: int) -> tuple[str, bytes | None]:
    """The rule (a key of RULES) for one captured IP packet and the bytes to benchmark, or None.

    ``ip`` is the frame from its IP header on as captured; ``missing`` how many bytes of the
    frame the capture did not keep (original length less captured length).
    """
    n = len(ip)
    version = ip[0] >> 4
    if version == 4:
        if n < 20:
            return "bad_length", None         # the header itself is cut: nothing to pad it from
        ihl = (ip[0] & 15) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ihl < 20 or total == 0 and missing + n > 20:
            # a TSO super-packet captured on its sender carries total length 0
            return ("super_packet" if ihl >= 20 else "bad_length"), None
        if total < ihl:
            return "bad_length", None
        if struct.unpack_from("!H", ip, 6)[0] & 0x3FFF:
            return "fragment", None
    elif version == 6:
        if n < 40:
            return "bad_length", None
        payload = struct.unpack_from("!H", ip, 4)[0]
        if payload == 0 and ip[6] == 0:
            return "super_packet", None        # a jumbogram (RFC 2675) or a BIG TCP packet
        total = 40 + payload
        if _ipv6_fragment(ip):
            return "fragment", None
    else:
        return "non_ip", None
    if total > MAX_IP_PACKET:
        return "super_packet", None
    if total > n:
        if total > n + missing:
            return "bad_length", None
        return "padded", bytes(ip) + bytes(total - n)
    if total < n:
        return "trimmed", bytes(ip[:total])
    return "ok", bytes(ip)


def _ipv6_fragment(ip: memoryview) -> bool:
    nh, off = ip[6], 40
    while nh in (0, 43, 60) and off + 2 <= len(ip):
        nh, off = ip[off], off + (ip[off + 1] + 1) * 8
    return nh == 44


@dataclass
class Source:
    """A trace to measure: ``chunks()`` yields lists of IP packets, ``chunk`` at most each,
    and may be called again for another pass. ``rules`` counts the frames of a file source
    per rule of RULES (filled while the first pass streams)."""

    name: str
    chunks: Callable[[int], Iterator[list]]
    rules: Counter = field(default_factory=Counter)

    @property
    def skipped(self) -> int:
        """Frames left out of the bench, whatever the rule."""
        return sum(n for rule, n in self.rules.items() if rule not in ("ok", "padded", "trimmed"))

    def describe_rules(self) -> str:
        return ", ".join(f"{self.rules[r]} {_SHORT[r]}" for r in RULES if r != "ok" and self.rules[r])

    @classmethod
    def from_packets(cls, name: str, packets: Sequence[bytes]) -> "Source":
        return cls(name, lambda chunk: (list(packets[i:i + chunk]) for i in range(0, len(packets), chunk)))

    @classmethod
    def from_file(cls, path: str) -> "Source":
        from ipsp import pcap
        src = cls(f"{os.path.basename(path)}", lambda chunk: iter(()))

        def chunks(chunk: int) -> Iterator[list]:
            rules: Counter = Counter()
            probe = _Probe()
            pending: list = []           # (rule, packet)
            for part in pcap.iter_chunks(path):
                view = memoryview(part.buffer)
                for off, n, cap, orig in zip(part.l3_offsets, part.l3_lengths, part.caplens, part.origlens):
                    if off < 0:
                        rules["non_ip"] += 1
                        continue
                    rule, packet = screen(view[off:off + n], max(orig - cap, 0))
                    rules[rule] += 1
                    if packet is None:
                        continue
                    pending.append((rule, packet))
                    if len(pending) == chunk:
                        ok = probe.accepted(pending, rules)
                        pending = []
                        if ok:
                            yield ok
            if pending:
                ok = probe.accepted(pending, rules)
                if ok:
                    yield ok
            src.rules = rules

        src.chunks = chunks
        return src


class _Probe:
    """An engine that encapsulates each chunk once, untimed, before the lanes see it, so that
    a packet the engine refuses as inner packet is counted under "refused" instead of
    aborting the bench. What screen() lets through should all pass; this catches the rest
    (an IPv6 extension header chain that runs past the packet, say)."""

    def __init__(self) -> None:
        self.tx = _engines(_config("aes128gcm16", "openssl"))[0]
        self.tailroom = next(iter(self.tx.km.sad)).kernel.tailroom

    def accepted(self, pending: list, rules: Counter) -> list:
        packets = [p for _, p in pending]
        a = _Arena(len(packets), self.tailroom)
        a.load(packets)
        for v in a.views:
            self.tx.outbound(v[0], v[1], v[2], v[3], a.stride)
        ok = []
        for (rule, packet), st in zip(pending, a.status):
            if st == Status.OK:
                ok.append(packet)
            else:
                rules[rule] -= 1
                rules["refused"] += 1
        return ok


@dataclass
class BenchResult:
    proposal: str
    backend: str
    direction: str
    packets: int
    ns_per_packet: float
    mpps: float
    gbps_wire: float           # the cleartext packets as Ethernet frames on the wire
    line_rate_pct: dict        # percent of 1/10/40/100 GbE line rate for this packet mix
    esp_bytes_added: float     # mean bytes ESP added per packet (encap)
    floor: str | None
    floor_ns: float | None
    ratio: float | None        # ours / floor
    baselines: dict = field(default_factory=dict)   # name -> {ns_per_packet, packets, times (theirs / ours), verified}
    verified: bool = True      # every decapsulated packet equalled its input


@dataclass
class ThreadScaling:
    proposal: str
    backend: str
    threads: int
    mpps_one: float
    mpps_all: float
    speedup: float
    floor_speedup: float | None   # the floor loop's own speedup over the same arenas: what the machine gives
    verified: bool


def _config(proposal: str, backend: str, spi: int = 0x1001) -> SAConfig:
    t = parse_proposal(proposal)
    return SAConfig(spi=spi, src=ipaddress.ip_address("192.0.2.1"), dst=ipaddress.ip_address("192.0.2.2"),
                    transform=t, enc_key=os.urandom(t.enc_key_len), auth_key=os.urandom(t.auth_key_len),
                    replay_window=4096, backend=backend, allow_insecure=True)


def _engines(cfg: SAConfig) -> tuple[Engine, Engine]:
    """A sender that protects everything with cfg and a receiver that expects it."""
    tx, rx = Engine(), Engine()
    for sel in _ANY:
        tx.km.add_policy(sel, Action.PROTECT, reqid=1)
        rx.km.add_policy(sel, Action.PROTECT, Direction.IN, reqid=1)
    tx.km.add_sa(cfg, "out", reqid=1)
    rx.km.add_sa(cfg, "in", reqid=1)
    return tx, rx


# proposal -> (AEAD cipher) or (CBC cipher, HMAC): what the floor loops take
_FLOOR_ALGOS = {"aes128gcm16": ("aes-128-gcm",), "aes256gcm16": ("aes-256-gcm",),
                "chacha20poly1305": ("chacha20-poly1305",), "aes128-sha1": ("aes-128-cbc", "sha1"),
                "aes256-sha256": ("aes-256-cbc", "sha256"), "des-sha1": ("des-cbc", "sha1")}


def floor_for(proposal: str, backend: str) -> tuple[str, Callable] | None:
    """The floor loop for a proposal on a backend, as (description, fn(buf, offsets, lengths,
    encrypt=True) -> ns), or None where none is defined."""
    algos = _FLOOR_ALGOS.get(proposal)
    if algos is None or (backend == "ipsecmb" and fastpath._mb is None):
        return None
    if backend == "ipsecmb":
        from fastpath import mb_floor as f
        aead, cbc, lib = f.ipsecmb_aead, f.ipsecmb_cbc_hmac, "ipsecmb"
    else:
        from fastpath import floor as f
        aead, cbc, lib = f.openssl_aead, f.openssl_cbc_hmac, "OpenSSL"
    if len(algos) == 1:
        return (f"{lib} {algos[0]}", lambda *a, encrypt=True: aead(*a, cipher=algos[0], encrypt=encrypt))
    return (f"{lib} {algos[0]} + HMAC-{algos[1]}",
            lambda *a, encrypt=True: cbc(*a, cipher=algos[0], hmac=algos[1], encrypt=encrypt))


class _Arena:
    """One chunk of packets in slots of one buffer, cut into batches that each have their own
    view (slot i of a batch at i * stride from the batch's start)."""

    def __init__(self, batch: int, tailroom: int):
        self.batch, self.tailroom = batch, tailroom
        self.buf = bytearray()

    def load(self, packets: Sequence[bytes]) -> None:
        self.n = n = len(packets)
        self.packets = packets
        self.stride = stride = (HEADROOM + max(map(len, packets)) + self.tailroom + 63) & ~63
        if len(self.buf) < n * stride:
            self.buf = bytearray(n * stride)
        self.off0 = array("q", [(i % self.batch) * stride + HEADROOM for i in range(n)])
        self.len0 = array("I", map(len, packets))
        for i, p in enumerate(packets):
            o = i * stride + HEADROOM
            self.buf[o:o + len(p)] = p
        self.pristine = bytes(memoryview(self.buf)[:n * stride])
        self.off, self.lens, self.status = array("q", self.off0), array("I", self.len0), bytearray(n)
        mb, mo, ml, ms = memoryview(self.buf), memoryview(self.off), memoryview(self.lens), memoryview(self.status)
        self.views = [(mb[k * stride:min(k + self.batch, n) * stride], mo[k:k + self.batch], ml[k:k + self.batch],
                       ms[k:k + self.batch]) for k in range(0, n, self.batch)]

    def restore(self, image: bytes, off: array, lens: array) -> None:
        self.buf[:len(image)] = image
        self.off[:] = off
        self.lens[:] = lens

    def absolute(self, i: int) -> int:
        return (i // self.batch) * self.batch * self.stride

    def matches_input(self) -> bool:
        mv = memoryview(self.buf)
        for i, p in enumerate(self.packets):
            o = self.absolute(i) + self.off[i]
            if mv[o:o + self.lens[i]] != p:
                return False
        return True


class _Lane:
    """One proposal on one backend: an engine pair, an arena and the running totals."""

    def __init__(self, proposal: str, backend: str, batch: int, repeats: int):
        self.proposal, self.repeats = proposal, repeats
        self.cfg = _config(proposal, backend)
        self.tx, self.rx = _engines(self.cfg)
        out_sa = next(iter(self.tx.km.sad))
        self.backend = out_sa.kernel.backend.name.removeprefix("BACKEND_").lower()
        self.headroom, self.icv_len = out_sa.kernel.headroom, out_sa.kernel.icv_len
        self.arena = _Arena(batch, out_sa.kernel.tailroom)
        self.floor = floor_for(proposal, backend)
        self.ns = {"encap": 0.0, "decap": 0.0, "fencap": 0.0, "fdecap": 0.0}
        self.packets = self.bytes_in = self.bytes_out = 0
        self.wire_bits = 0
        self.verified = True
        self.failures = ""

    def run_chunk(self, packets: Sequence[bytes]) -> None:
        a, tx, rx = self.arena, self.tx, self.rx
        a.load(packets)
        best = dict.fromkeys(self.ns, float("inf"))
        for r in range(self.repeats):
            a.restore(a.pristine, a.off0, a.len0)
            t0 = time.perf_counter_ns()
            for v in a.views:
                tx.outbound(v[0], v[1], v[2], v[3], a.stride)
            t1 = time.perf_counter_ns()
            best["encap"] = min(best["encap"], t1 - t0)
            if r == 0:
                self._check(a, "encapsulation")
                self.bytes_out += sum(a.lens)
            esp = (bytes(memoryview(a.buf)[:a.n * a.stride]), array("q", a.off), array("I", a.lens))
            t0 = time.perf_counter_ns()
            for v in a.views:
                rx.inbound(v[0], v[1], v[2], v[3])
            t1 = time.perf_counter_ns()
            best["decap"] = min(best["decap"], t1 - t0)
            if r == 0:
                self._check(a, "decapsulation")
                if not a.matches_input():
                    self.verified = False
            if self.floor is not None:
                # the floor works on the cipher regions the kernel used (absolute offsets)
                f_off = array("q", [a.absolute(i) + esp[1][i] + self.headroom for i in range(a.n)])
                f_len = array("I", [esp[2][i] - self.headroom - self.icv_len for i in range(a.n)])
                for name, image in (("fencap", a.pristine), ("fdecap", esp[0])):
                    a.buf[:len(image)] = image
                    ns = self.floor[1](a.buf, f_off, f_len, encrypt=name == "fencap")
                    best[name] = min(best[name], ns)
        for k in self.ns:
            self.ns[k] += best[k] if best[k] != float("inf") else 0
        self.packets += a.n
        self.bytes_in += sum(a.len0)
        self.wire_bits += sum(wire_bits(n) for n in a.len0)

    def cycle(self, a: _Arena) -> None:
        """Encapsulate and decapsulate an arena's packets where the last cycle left them."""
        for v in a.views:
            self.tx.outbound(v[0], v[1], v[2], v[3], a.stride)
        self._check(a, "encapsulation")
        for v in a.views:
            self.rx.inbound(v[0], v[1], v[2], v[3])
        self._check(a, "decapsulation")

    def _check(self, a: _Arena, what: str) -> None:
        bad = a.n - a.status.count(Status.OK)
        if bad:
            names = sorted({Status(s).name for s in a.status if s != Status.OK})
            raise RuntimeError(f"{self.proposal}/{self.backend}: {what} failed for {bad} packets ({', '.join(names)})")

    def results(self, extra: dict) -> list[BenchResult]:
        n = max(self.packets, 1)
        out = []
        for direction in ("encap", "decap"):
            ns = self.ns[direction] / n
            fns = self.ns["f" + direction] / n if self.floor else None
            pps = 1e9 / ns if ns else 0.0
            gbps = pps * self.wire_bits / n / 1e9
            base = {name: {"ns_per_packet": round(m[f"{direction}_ns"], 1), "packets": m["packets"],
                           "times": round(m[f"{direction}_ns"] / ns, 1) if ns else None, "verified": m["verified"]}
                    for name, m in extra.items() if "packets" in m}
            base.update({name: m for name, m in extra.items() if "packets" not in m})
            out.append(BenchResult(
                proposal=self.proposal, backend=self.backend, direction=direction, packets=self.packets,
                ns_per_packet=round(ns, 1), mpps=round(pps / 1e6, 3), gbps_wire=round(gbps, 3),
                line_rate_pct={f"{g}G": round(100 * gbps / g, 1) for g in LINE_RATES},
                esp_bytes_added=round((self.bytes_out - self.bytes_in) / n, 1),
                floor=self.floor[0] if self.floor else None, floor_ns=round(fns, 1) if fns else None,
                ratio=round(ns / fns, 2) if fns else None, baselines=base, verified=self.verified))
        return out


def _baselines(lane: _Lane, sample: Sequence[bytes], kinds: Iterable[str]) -> dict:
    out = {}
    for kind in kinds:
        size = CRYPTOGRAPHY_SAMPLE if kind == "cryptography" else SCAPY_SAMPLE
        try:
            out[kind] = baselines.measure(kind, lane.cfg, sample[:size])
        except ImportError:
            out[kind] = {"unavailable": f"{kind} is not installed (pip install 'ipsp[bench]')"}
        except ValueError as exc:
            out[kind] = {"unavailable": str(exc)}
    return out


def _flow_shard(packet: bytes, shards: int) -> int:
    # the way a forwarder spreads flows over cores: by a hash of addresses and ports
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        key = packet[12:20] + packet[ihl:ihl + 4]
    else:
        key = packet[8:44]
    return zlib.crc32(key) % shards


def _scaling(proposal: str, backend: str, packets: Sequence[bytes], threads: int, batch: int, chunk: int,
             rounds: int) -> ThreadScaling:
    """Throughput of one thread, then of `threads` threads each on its own SA pair and its
    share of the flows, wall clock, same packets, same run. Each thread's arenas are loaded
    before the clock starts and then cycled in place (a decapsulated packet lands where the
    next encapsulation takes it from), so the clock sees engine calls only, as a forwarder
    whose NIC fills its buffers."""
    def run(n: int) -> tuple[float, float | None, bool]:
        parts: list[list] = [[] for _ in range(n)]
        for p in packets:
            parts[_flow_shard(p, n)].append(p)
        lanes = [_Lane(proposal, backend, batch, 1) for _ in range(n)]
        work: list[list[_Arena]] = [[] for _ in range(n)]
        for k in range(n):
            for i in range(0, len(parts[k]), chunk):
                a = _Arena(batch, lanes[k].arena.tailroom)
                a.load(parts[k][i:i + chunk])
                lanes[k].cycle(a)                       # from here on the layout repeats
                work[k].append(a)

        def engine(k: int) -> None:
            # each chunk several times in a row while it is in cache, as a forwarder works
            # on what its NIC just wrote, rather than streaming from DRAM
            for a in work[k]:
                for _ in range(rounds):
                    lanes[k].cycle(a)

        def floor(k: int) -> None:
            for a in work[k]:
                offs = array("q", [a.absolute(i) + a.off[i] for i in range(a.n)])
                for _ in range(rounds):
                    lanes[k].floor[1](a.buf, offs, a.lens, encrypt=True)

        elapsed = _threads(engine, n)
        ok = all(a.matches_input() for arenas in work for a in arenas)
        f_elapsed = _threads(floor, n) if lanes[0].floor else None
        return elapsed, f_elapsed, ok

    one, f_one, ok1 = run(1)
    many, f_many, okn = run(threads)
    mpps = lambda elapsed: 2 * len(packets) * rounds / elapsed * 1e3  # noqa: E731  (encap + decap)
    return ThreadScaling(proposal, backend, threads, round(mpps(one), 3), round(mpps(many), 3), round(one / many, 2),
                         round(f_one / f_many, 2) if f_one and f_many else None, ok1 and okn)


def _threads(fn: Callable[[int], None], n: int) -> int:
    """Run fn(0..n-1) on n threads; wall-clock nanoseconds; the first error re-raised."""
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            fn(k)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=guarded, args=(k,)) for k in range(n)]
    t0 = time.perf_counter_ns()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return time.perf_counter_ns() - t0

def run_bench(source: Source, proposals: Sequence[str] = DEFAULT_PROPOSALS, backends: Sequence[str] | None = None,
              *, batch: int = 256, repeats: int = 3, chunk: int = CHUNK, threads: int = 1,
              baseline_kinds: Sequence[str] = ("cryptography", "scapy"),
              progress: Callable[[float], None] | None = None) -> tuple[list[BenchResult], list[ThreadScaling]]:
    """Measure every proposal on every backend available here over the source, streaming it
    once; *progress* gets the fraction done."""
    if backends is None:
        backends = ["openssl"] + (["ipsecmb"] if "ipsecmb" in fastpath.backends() else [])
    lanes = [_Lane(p, b, batch, repeats) for p in proposals for b in backends]
    sample: list = []
    seen = 0
    for packets in source.chunks(chunk):
        for lane in lanes:
            lane.run_chunk(packets)
        if len(sample) < CRYPTOGRAPHY_SAMPLE:
            sample.extend(packets[:CRYPTOGRAPHY_SAMPLE - len(sample)])
        seen += len(packets)
        if progress:
            progress(seen)
    if not seen:
        rules = source.describe_rules()
        raise NoPackets("no IP packets to measure" + (f" ({rules})" if rules else " (the capture is empty)"))
    results: list[BenchResult] = []
    for lane in lanes:
        results += lane.results(_baselines(lane, sample, baseline_kinds))
    scaling = []
    if threads > 1:
        # on the first SCALING_PACKETS packets: each thread holds its whole share in memory
        first = [p for packets in itertools.islice(source.chunks(chunk), -(-SCALING_PACKETS // chunk))
                 for p in packets][:SCALING_PACKETS]
        scaling = [_scaling(p, b, first, threads, batch, chunk, repeats) for p in proposals for b in backends]
    return results, scaling


def table_rows(results: Sequence[BenchResult]) -> list[list[str]]:
    """The results as text rows, header first."""
    rows = [["proposal", "backend", "dir", "ns/pkt", "Mpps", "Gbit/s", "1G%", "10G%", "40G%", "100G%", "+bytes",
             "floor ns", "x floor", "cryptography", "scapy", "ok"]]

    def times(r: BenchResult, name: str) -> str:
        b = r.baselines.get(name, {})
        if "times" not in b:
            return "-"
        return f"{b['times']:.0f}x" + ("" if b["verified"] else "?")

    for r in results:
        pct = r.line_rate_pct
        rows.append([r.proposal, r.backend, r.direction, f"{r.ns_per_packet:.0f}", f"{r.mpps:.2f}",
                     f"{r.gbps_wire:.1f}", f"{pct['1G']:.0f}", f"{pct['10G']:.0f}", f"{pct['40G']:.0f}",
                     f"{pct['100G']:.0f}", f"{r.esp_bytes_added:.0f}" if r.direction == "encap" else "",
                     f"{r.floor_ns:.0f}" if r.floor_ns else "-", f"{r.ratio:.2f}" if r.ratio else "-",
                     times(r, "cryptography"), times(r, "scapy"), "yes" if r.verified else "NO"])
    return rows


def plot_backend():
    """matplotlib's pyplot on the file-only Agg backend; ImportError when matplotlib is absent
    (ipsp bench checks this before measuring anything)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(results: Sequence[BenchResult], path: str, *, title: str) -> None:
    """Mpps per proposal and backend, both directions, each bar labelled with its ratio to the
    floor, against 10/40/100 GbE line rate for this packet mix (needs matplotlib)."""
    plt = plot_backend()
    labels = list(dict.fromkeys((r.proposal, r.backend) for r in results))
    # room for the longest proposal name under each pair of bars (chacha20poly1305 is 16 letters)
    per_label = max(1.2, 0.09 * max(len(p) for p, _ in labels))
    fig, ax = plt.subplots(figsize=(max(6.0, per_label * len(labels) + 1.5), 5))
    width = 0.4
    top = 0.0
    for k, direction in enumerate(("encap", "decap")):
        rows = [next((r for r in results if (r.proposal, r.backend) == lab and r.direction == direction), None)
                for lab in labels]
        xs = [i + (k - 0.5) * width for i in range(len(labels))]
        mpps = [r.mpps if r else 0 for r in rows]
        top = max(top, *mpps)
        ax.bar(xs, mpps, width, label=direction)
        for x, r in zip(xs, rows):
            if r is not None and r.ratio:
                # ours / the floor loop's time: 1.00x is as fast as the bare library calls
                ax.text(x, r.mpps, f"{r.ratio:.2f}x", ha="center", va="bottom", fontsize=7, rotation=90)
    # packets per second at line rate for this mix: rate / mean bits per packet
    r0 = next(iter(results))
    mean_bits = r0.gbps_wire * 1e9 / (r0.mpps * 1e6) if r0.mpps else 0
    ceiling = top * 1.25 if top else 1.0
    ax.set_ylim(0, ceiling)
    for g in (10, 40, 100):
        if mean_bits and g * 1e9 / mean_bits / 1e6 <= ceiling:     # a line above the bars says nothing
            y = g * 1e9 / mean_bits / 1e6
            ax.axhline(y, linestyle="--", linewidth=0.8, color="grey")
            ax.text(len(labels) - 0.5, y, f" {g} GbE", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(labels)), [f"{p}\n{b}" for p, b in labels], fontsize=8)
    ax.set_ylabel("million packets per second, one core")
    ax.set_title(title + "\nabove each bar: time per packet as a multiple of the floor (bare library calls)",
                 fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    # the caller names the file (ipsp.files gives a temporary one without a suffix)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def peak_rss_bytes() -> int:
    """The process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def as_dicts(items: Sequence) -> list[dict]:
    return [asdict(r) for r in items]
