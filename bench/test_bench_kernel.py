"""The kernel: full encapsulation and decapsulation per transform, backend, packet size and
batch size. Bytes per call are in extra_info so throughput can be derived."""

import pytest

from conftest import Arena, bench_decap, bench_encap, sa_pair


def test_encap(benchmark, proposal, backend, size, batch):
    bench_encap(benchmark, proposal, backend, size, batch, rounds=300 if batch > 1 else 3000)


def test_decap(benchmark, proposal, backend, size, batch):
    bench_decap(benchmark, proposal, backend, size, batch, rounds=300 if batch > 1 else 3000)


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
