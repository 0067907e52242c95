"""The kernel: full encapsulation and decapsulation per transform, backend, packet size and
batch size. Bytes per call are in extra_info so throughput can be derived."""

import pytest

from fastpath import Status

from conftest import Arena, sa_pair


def _info(benchmark, arena, proposal, backend, direction):
    benchmark.group = f"{direction} {proposal} {arena.size}B"
    benchmark.extra_info.update(packets=arena.n, bytes=arena.n * arena.size, proposal=proposal,
                                backend=backend, size=arena.size, direction=direction)


def test_encap(benchmark, proposal, backend, size, batch):
    out, _ = sa_pair(proposal, backend)
    arena = Arena(size, batch, out)
    _info(benchmark, arena, proposal, backend, "encap")
    ok = benchmark.pedantic(arena.encap, args=(out,), setup=lambda: arena.reset(arena.plain, arena.off0, arena.len0),
                            rounds=300 if batch > 1 else 3000, warmup_rounds=10)
    assert ok == batch


def test_decap(benchmark, proposal, backend, size, batch):
    out, inb = sa_pair(proposal, backend)
    arena = Arena(size, batch, out)
    _info(benchmark, arena, proposal, backend, "decap")
    images = []

    def setup():
        # every round decapsulates freshly sealed packets: never a replay rejection
        images.append(arena.esp_image(out))
        arena.reset(*images[-1])

    ok = benchmark.pedantic(arena.decap, args=(inb,), setup=setup, rounds=300 if batch > 1 else 3000,
                            warmup_rounds=10)
    assert ok == batch and set(arena.status) == {Status.OK}
    assert bytes(arena.buf[arena.off[0]:arena.off[0] + arena.lens[0]]) == arena.packet


@pytest.mark.parametrize("size", [64], ids=["64B"])
def test_single_encap_into(benchmark, proposal, backend, size):
    out, _ = sa_pair(proposal, backend)
    pkt = Arena(size, 1, out).packet
    buf = bytearray(2048)
    benchmark.group = f"single encap {proposal} {size}B"
    benchmark.extra_info.update(packets=1, bytes=size, proposal=proposal, backend=backend, size=size,
                                direction="single-encap")
    n = benchmark(out.encap_into, pkt, buf)
    assert n > size
