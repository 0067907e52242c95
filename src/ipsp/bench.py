"""``ipsp bench``: how fast each transform encapsulates and decapsulates, against its floor.

Every packet of the trace goes through a real SA pair in batches (encapsulate all, then
decapsulate all), and every decapsulated packet is checked against its input. In the same
run, the floors (minimal C loops over the same OpenSSL and intel-ipsec-mb calls, over the
same cipher regions) are timed the same way, so each figure comes with its ratio.
Buffers are restored from a pristine copy before every timed pass, outside the timing, for
the kernel and the floors alike.
"""

from __future__ import annotations

import ipaddress
import os
import time
from array import array
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import fastpath
from fastpath import Status

from ipsp.sa import SAConfig
from ipsp.transforms import parse_proposal

__all__ = ["BenchResult", "run_bench", "floor_for", "DEFAULT_PROPOSALS", "wire_bits"]

DEFAULT_PROPOSALS = ("aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha1", "aes256-sha256", "des-sha1")
HEADROOM = 128
ETH_OVERHEAD = 14 + 4 + 20        # Ethernet header, FCS, preamble + inter-frame gap


def wire_bits(ip_len: int) -> int:
    """Bits a packet of this IP length occupies on Ethernet (minimum frame 64 bytes)."""
    return (max(ip_len + 18, 64) + 20) * 8


@dataclass
class BenchResult:
    proposal: str
    backend: str
    direction: str
    packets: int
    ns_per_packet: float
    mpps: float
    gbps_wire: float           # inner (cleartext) packets, as on the wire in Ethernet frames
    line_rate_pct: dict        # percent of 1/10/40/100 GbE line rate for this packet mix
    esp_bytes_added: float     # mean bytes ESP added per packet (encap)
    floor: str | None
    floor_ns: float | None
    ratio: float | None
    verified: bool


def _sa(proposal: str, backend: str, key_seed: int) -> SAConfig:
    t = parse_proposal(proposal)
    rnd = os.urandom
    return SAConfig(spi=0x1000 + key_seed, src=ipaddress.ip_address("192.0.2.1"),
                    dst=ipaddress.ip_address("192.0.2.2"), transform=t, enc_key=rnd(t.enc_key_len),
                    auth_key=rnd(t.auth_key_len), replay_window=1024, backend=backend, allow_insecure=True)


def floor_for(proposal: str, backend: str) -> tuple[str, Callable] | None:
    """The floor loop for a proposal on a backend, as (description, fn(buf, offsets, lengths,
    encrypt=True) -> ns), or None where none is defined."""
    if backend == "ipsecmb" and fastpath._mb is None:
        return None
    if backend == "ipsecmb":
        from fastpath import mb_floor as f
        table = {"aes128gcm16": ("ipsecmb AES-128-GCM direct", f.ipsecmb_gcm),
                 "aes128-sha1": ("ipsecmb AES-128-CBC+HMAC-SHA1-96 jobs",
                                 lambda *a, encrypt=True: f.ipsecmb_cbc_sha1(*a, des=False, encrypt=encrypt)),
                 "des-sha1": ("ipsecmb DES-CBC+HMAC-SHA1-96 jobs",
                              lambda *a, encrypt=True: f.ipsecmb_cbc_sha1(*a, des=True, encrypt=encrypt))}
    else:
        from fastpath import floor as f
        table = {"aes128gcm16": ("OpenSSL EVP AES-128-GCM", f.openssl_gcm),
                 "aes256gcm16": ("OpenSSL EVP AES-256-GCM", lambda *a, encrypt=True: f.openssl_gcm(*a, key_len=32, encrypt=encrypt)),
                 "aes128-sha1": ("OpenSSL AES-128-CBC+HMAC-SHA1-96",
                                 lambda *a, encrypt=True: f.openssl_cbc_sha1(*a, des=False, encrypt=encrypt)),
                 "des-sha1": ("OpenSSL DES-CBC+HMAC-SHA1-96",
                              lambda *a, encrypt=True: f.openssl_cbc_sha1(*a, des=True, encrypt=encrypt))}
    return table.get(proposal)


class _Arena:
    """All packets in slots of one buffer, in batches that share one relative layout."""

    def __init__(self, packets: Sequence[bytes], batch: int, tailroom: int):
        self.n = len(packets)
        self.batch = batch
        self.stride = (HEADROOM + max(map(len, packets)) + tailroom + 63) & ~63
        self.buf = bytearray(self.n * self.stride)
        self.off0 = array("q", [(i % batch) * self.stride + HEADROOM for i in range(self.n)])
        self.len0 = array("I", map(len, packets))
        for i, p in enumerate(packets):
            o = i * self.stride + HEADROOM
            self.buf[o:o + len(p)] = p
        self.pristine = bytes(self.buf)
        self.off = array("q", self.off0)
        self.lens = array("I", self.len0)
        self.status = bytearray(self.n)
        mb, mo, ml, ms = memoryview(self.buf), memoryview(self.off), memoryview(self.lens), memoryview(self.status)
        self.views = [(mb[k * self.stride:min(k + batch, self.n) * self.stride], mo[k:k + batch], ml[k:k + batch],
                       ms[k:k + batch]) for k in range(0, self.n, batch)]

    def restore(self, image: bytes, off: array, lens: array) -> None:
        self.buf[:] = image
        self.off[:] = off
        self.lens[:] = lens

    def packet(self, i: int) -> memoryview:
        base = (i // self.batch) * self.batch * self.stride
        return memoryview(self.buf)[base + self.off[i]:base + self.off[i] + self.lens[i]]


def _measure(proposal: str, backend: str, packets: Sequence[bytes], batch: int, repeats: int,
             progress: Callable[[], None] | None) -> list[BenchResult]:
    cfg = _sa(proposal, backend, 1)
    out_sa, in_sa = cfg.make_state(), cfg.make_state()
    arena = _Arena(packets, batch, out_sa.tailroom)
    floor = floor_for(proposal, backend)
    n = arena.n
    best = {"encap": float("inf"), "decap": float("inf"), "fencap": float("inf"), "fdecap": float("inf")}
    verified = True
    added = 0.0
    esp_image = b""
    esp_off = esp_len = array("q")
    f_off = f_len = None
    for _ in range(repeats):
        arena.restore(arena.pristine, arena.off0, arena.len0)
        t0 = time.perf_counter_ns()
        for v in arena.views:
            out_sa.encap_batch(v[0], v[1], v[2], v[3], arena.stride)
        t1 = time.perf_counter_ns()
        if arena.status.count(Status.OK) != n:
            raise RuntimeError(f"{proposal}/{backend}: encapsulation failed for "
                               f"{n - arena.status.count(Status.OK)} packets")
        best["encap"] = min(best["encap"], (t1 - t0) / n)
        added = (sum(arena.lens) - sum(arena.len0)) / n
        esp_image, esp_off, esp_len = bytes(arena.buf), array("q", arena.off), array("I", arena.lens)
        t0 = time.perf_counter_ns()
        for v in arena.views:
            in_sa.decap_batch(v[0], v[1], v[2], v[3])
        t1 = time.perf_counter_ns()
        best["decap"] = min(best["decap"], (t1 - t0) / n)
        ok = arena.status.count(Status.OK) == n and all(
            arena.packet(i) == packets[i] for i in range(n))
        verified = verified and ok
        if floor is not None:
            if f_off is None:
                # the floor works on the same cipher regions the kernel did (absolute offsets)
                skip = out_sa.headroom
                f_off = array("q", [(i // batch) * batch * arena.stride + esp_off[i] + skip for i in range(n)])
                f_len = array("I", [esp_len[i] - skip - out_sa.icv_len for i in range(n)])
            for direction, image in (("fencap", arena.pristine), ("fdecap", esp_image)):
                arena.buf[:] = image
                ns = floor[1](arena.buf, f_off, f_len, encrypt=direction == "fencap")
                best[direction] = min(best[direction], ns / n)
        if progress:
            progress()
    backend_used = out_sa.backend.name.removeprefix("BACKEND_").lower()
    out_sa.close()
    in_sa.close()
    mean_bits = sum(wire_bits(len(p)) for p in packets) / n
    results = []
    for direction in ("encap", "decap"):
        ns = best[direction]
        fns = best["f" + direction] if floor else None
        pps = 1e9 / ns
        results.append(BenchResult(
            proposal=proposal, backend=backend_used,
            direction=direction, packets=n, ns_per_packet=round(ns, 1), mpps=round(pps / 1e6, 3),
            gbps_wire=round(pps * mean_bits / 1e9, 3),
            line_rate_pct={f"{g}G": round(100 * pps * mean_bits / (g * 1e9), 1) for g in (1, 10, 40, 100)},
            esp_bytes_added=round(added, 1), floor=floor[0] if floor else None,
            floor_ns=round(fns, 1) if fns else None, ratio=round(ns / fns, 2) if fns else None,
            verified=verified))
    return results


def run_bench(packets: Sequence[bytes], proposals: Sequence[str] = DEFAULT_PROPOSALS,
              backends: Sequence[str] | None = None, *, batch: int = 256, repeats: int = 5,
              progress: Callable[[], None] | None = None) -> list[BenchResult]:
    """Measure every proposal on every backend available here."""
    if backends is None:
        backends = ["openssl"] + (["ipsecmb"] if "ipsecmb" in fastpath.backends() else [])
    results: list[BenchResult] = []
    for proposal in proposals:
        for backend in backends:
            results += _measure(proposal, backend, packets, batch, repeats, progress)
    return results


def as_dicts(results: Sequence[BenchResult]) -> list[dict]:
    return [asdict(r) for r in results]
