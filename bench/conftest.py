"""Shared workloads for the benchmarks: SA pairs and packet arenas whose buffers are
restored before every round, so decapsulation never measures replay rejections and
encapsulation always starts from cleartext."""

import ipaddress
import os
import time
from array import array

import pytest

import fastpath
from fastpath import Status
from ipsp import SAConfig, gen, parse_proposal

HEADROOM = 128
SIZES = (64, 576, 1500)
BATCHES = (1, 32, 256)
PROPOSALS = ("aes128gcm16", "aes128-sha1", "des-sha1", "chacha20poly1305", "aes256-sha256")
BACKENDS = ("openssl", "ipsecmb") if "ipsecmb" in fastpath.backends() else ("openssl",)


def sa_pair(proposal, backend, esn=False):
    t = parse_proposal(proposal)
    cfg = SAConfig(spi=0x5005, src=ipaddress.ip_address("192.0.2.1"), dst=ipaddress.ip_address("192.0.2.2"),
                   transform=t, enc_key=os.urandom(t.enc_key_len), auth_key=os.urandom(t.auth_key_len),
                   backend=backend, esn=esn, allow_insecure=True)
    return cfg.make_state(), cfg.make_state()


class Arena:
    """n copies of one packet in slots; pristine images of the cleartext and ESP forms."""

    def __init__(self, size, n, sa):
        pkt = gen.fixed_packets(size, 1)[0]
        self.n, self.size = n, size
        self.stride = (HEADROOM + size + sa.tailroom + 63) & ~63
        self.buf = bytearray(n * self.stride)
        self.off0 = array("q", [i * self.stride + HEADROOM for i in range(n)])
        self.len0 = array("I", [size] * n)
        for o in self.off0:
            self.buf[o:o + size] = pkt
        self.plain = bytes(self.buf)
        self.off = array("q", self.off0)
        self.lens = array("I", self.len0)
        self.status = bytearray(n)
        self.packet = pkt

    def reset(self, image, off, lens):
        self.buf[:] = image
        self.off[:] = off
        self.lens[:] = lens

    def encap(self, sa):
        return sa.encap_batch(self.buf, self.off, self.lens, self.status, self.stride)

    def decap(self, sa):
        return sa.decap_batch(self.buf, self.off, self.lens, self.status)

    def esp_image(self, sa):
        """Encapsulate once and keep the ESP image and layout (and the floor's regions)."""
        self.reset(self.plain, self.off0, self.len0)
        assert self.encap(sa) == self.n
        esp = (bytes(self.buf), array("q", self.off), array("I", self.lens))
        skip = sa.headroom
        self.floor_off = array("q", [o + skip for o in esp[1]])
        self.floor_len = array("I", [ln - skip - sa.icv_len for ln in esp[2]])
        return esp


def probe_time(fn, args=(), setup=None, calls=3):
    """Seconds one call (with its setup) takes, roughly, after one warm-up call."""
    if setup is not None:
        setup()
    fn(*args)
    t0 = time.perf_counter()
    for _ in range(calls):
        if setup is not None:
            setup()
        fn(*args)
    return (time.perf_counter() - t0) / calls


def budget_rounds(fn, args=(), setup=None, budget=0.25, lo=10, hi=300):
    """Rounds for benchmark.pedantic so that one benchmark takes about *budget* seconds
    (setup included), between lo and hi."""
    return max(lo, min(hi, int(budget / probe_time(fn, args, setup))))


def bench_info(benchmark, arena, proposal, backend, direction, **extra):
    benchmark.group = f"{direction} {proposal} {arena.size}B"
    benchmark.extra_info.update(packets=arena.n, bytes=arena.n * arena.size, proposal=proposal,
                                backend=backend, size=arena.size, direction=direction, **extra)


def bench_encap(benchmark, proposal, backend, size, batch, rounds=None, max_rounds=300, **extra):
    """Full encapsulation (SAState.encap_batch) of a batch restored to cleartext before every
    round. rounds=None: budget_rounds up to max_rounds. extra goes to extra_info."""
    out, _ = sa_pair(proposal, backend)
    arena = Arena(size, batch, out)
    bench_info(benchmark, arena, proposal, backend, "encap", **extra)

    def setup():
        arena.reset(arena.plain, arena.off0, arena.len0)

    if rounds is None:
        rounds = budget_rounds(arena.encap, (out,), setup, hi=max_rounds)
    ok = benchmark.pedantic(arena.encap, args=(out,), setup=setup, rounds=rounds, warmup_rounds=10)
    assert ok == batch


def bench_decap(benchmark, proposal, backend, size, batch, rounds=None, max_rounds=300, **extra):
    """Full decapsulation (SAState.decap_batch) of freshly sealed packets every round: never
    a replay rejection. rounds=None: budget_rounds up to max_rounds. extra goes to
    extra_info."""
    out, inb = sa_pair(proposal, backend)
    arena = Arena(size, batch, out)
    bench_info(benchmark, arena, proposal, backend, "decap", **extra)
    images = []

    def setup():
        # every round decapsulates freshly sealed packets: never a replay rejection
        images.append(arena.esp_image(out))
        arena.reset(*images[-1])

    if rounds is None:
        rounds = budget_rounds(arena.decap, (inb,), setup, hi=max_rounds)
    ok = benchmark.pedantic(arena.decap, args=(inb,), setup=setup, rounds=rounds, warmup_rounds=10)
    assert ok == batch and set(arena.status) == {Status.OK}
    assert bytes(arena.buf[arena.off[0]:arena.off[0] + arena.lens[0]]) == arena.packet


@pytest.fixture(params=PROPOSALS)
def proposal(request):
    return request.param


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=SIZES, ids=lambda s: f"{s}B")
def size(request):
    return request.param


@pytest.fixture(params=BATCHES, ids=lambda b: f"batch{b}")
def batch(request):
    return request.param
