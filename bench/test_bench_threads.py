"""Scaling: two threads, each with its own SA pair, against one thread doing the same total
work. The batch calls release the GIL, so the two should overlap; extra_info records the
speedup measured in this run (wall time of one thread doing both shares / two threads).

The workload is a steady state with no buffer restore: in tunnel mode encapsulation leaves
the inner packet where it was and decapsulation gives it back there, so encap + decap
returns every slot to its starting offset and length."""

import threading
import time

import pytest

from conftest import Arena, sa_pair

N = 256
PASSES = 200


def _work(pair, arena):
    out, inb = pair
    for _ in range(PASSES):
        assert arena.encap(out) == N
        assert arena.decap(inb) == N


@pytest.mark.parametrize("proposal", ["aes128gcm16", "aes128-sha1"])
@pytest.mark.parametrize("size", [1500], ids=["1500B"])
def test_two_threads_two_sas(benchmark, proposal, backend, size):
    pairs = [sa_pair(proposal, backend) for _ in range(2)]
    arenas = [Arena(size, N, p[0]) for p in pairs]

    def one_thread():
        t = time.perf_counter()
        _work(pairs[0], arenas[0])
        _work(pairs[0], arenas[0])
        return time.perf_counter() - t

    def two_threads():
        ths = [threading.Thread(target=_work, args=(pairs[i], arenas[i])) for i in range(2)]
        t = time.perf_counter()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        return time.perf_counter() - t

    single = min(one_thread() for _ in range(5))
    benchmark.group = f"threads {proposal} {size}B"
    benchmark.pedantic(two_threads, rounds=5)
    dual = benchmark.stats.stats.min
    benchmark.extra_info.update(one_thread_s=single, two_threads_s=dual, speedup=round(single / dual, 2),
                                proposal=proposal, backend=backend, size=size)
