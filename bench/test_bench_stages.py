"""The kernel per stage: each stage of encap_batch / decap_batch alone (fastpath.stages runs the
kernel's own cdef functions for it over a batch), next to the full batch calls, per transform,
backend, packet size and batch size. Bytes per call are in extra_info (inner packet bytes,
as for the kernel suite) so throughput can be derived; bench/report.py prints the figures at
batch 256 and each stage's share of encap / decap.

  parse          decap's prepare before the replay pre-check: outer IP header, SPI, lengths,
                 sequence number (no crypto; no backend, so measured once per transform)
  replay_check   the read-only pre-check of a burst of sequence numbers against a window,
                 "ahead" (above the window's top, what in-order decap sees) and "inwindow"
                 (inside it, not yet received: reordered traffic, the bitmap lookup)
  replay_update  the authoritative update, in order, every round above the top left by the
                 last one (the window slides as decap's does)
  seal           the SA's seal_burst alone over operations prepared once (encap_prepare)
  open           the SA's open_burst alone, verifying, over operations prepared once; the
                 packets' bytes are restored before every round (open decrypts in place)
  encap, decap   the full batch calls, exactly as test_bench_kernel.py (conftest helpers)

The replay stages do not depend on the transform or the packet size, only on the batch.
Rounds are sized from a probe of each call (conftest.budget_rounds, probe_time) so that the whole
suite takes about a minute.
"""

from array import array

import pytest

from fastpath import Status, stages

from conftest import Arena, bench_decap, bench_encap, budget_rounds, probe_time, sa_pair

# a timed round lasts at least this long (no-setup stages repeat the call within a round)
MIN_ROUND = 20e-6


def _rounds(batch):
    # at most, as many as test_bench_kernel.py takes for batch 1; budget_rounds may take fewer
    return 3000 if batch == 1 else 1000


def _info(benchmark, stage, proposal, backend, size, batch, **extra):
    benchmark.group = f"{stage} {proposal} {size}B" if size else f"{stage}"
    benchmark.extra_info.update(stage=stage, packets=batch, bytes=batch * size, proposal=proposal,
                                backend=backend, size=size, batch=batch, **extra)


def _repeat(benchmark, fn, args, batch):
    """pedantic without setup: enough iterations per round for the timer to resolve it."""
    per = probe_time(fn, args)
    iterations = max(1, int(MIN_ROUND / per))
    rounds = max(10, min(_rounds(batch), int(0.4 / (per * iterations))))
    return benchmark.pedantic(fn, args=args, rounds=rounds, iterations=iterations, warmup_rounds=3)


def test_parse(benchmark, proposal, size, batch):
    out, inb = sa_pair(proposal, "openssl")
    arena = Arena(size, batch, out)
    arena.reset(*arena.esp_image(out))
    _info(benchmark, "parse", proposal, None, size, batch)
    args = (inb, arena.buf, arena.off, arena.lens, arena.status)
    assert _repeat(benchmark, stages.parse_batch, args, batch) == batch
    assert inb.replay_top == 0


def _replay_sa():
    # the window does not depend on the transform
    return sa_pair("aes128gcm16", "openssl")[1]


@pytest.mark.parametrize("case", ["ahead", "inwindow"])
def test_replay_check(benchmark, batch, case):
    inb = _replay_sa()
    window = inb.replay_window
    assert window >= 2 * batch
    status = bytearray(batch)
    # a window that has seen every other number up to top = 2 * window
    top = 2 * window
    assert stages.replay_update_batch(inb, array("Q", range(2, top + 1, 2)), bytearray(window)) == window
    if case == "ahead":
        seqs = array("Q", range(top + 1, top + 1 + batch))
    else:
        seqs = array("Q", range(top - 2 * batch + 1, top, 2))      # odd numbers: not received
    _info(benchmark, "replay_check", None, None, 0, batch, case=case)
    assert _repeat(benchmark, stages.replay_check_batch, (inb, seqs, status), batch) == batch
    assert inb.replay_top == top


def test_replay_update(benchmark, batch):
    inb = _replay_sa()
    status = bytearray(batch)
    seqs = array("Q", range(1, batch + 1))

    def setup():
        # numbers above the top the last round left: every update is accepted
        top = inb.replay_top
        seqs[:] = array("Q", range(top + 1, top + 1 + batch))

    _info(benchmark, "replay_update", None, None, 0, batch)
    rounds = _rounds(batch)
    ok = benchmark.pedantic(stages.replay_update_batch, args=(inb, seqs, status), setup=setup,
                            rounds=rounds, warmup_rounds=10)
    assert ok == batch and set(status) == {Status.OK}


def test_seal(benchmark, proposal, backend, size, batch):
    out, inb = sa_pair(proposal, backend)
    arena = Arena(size, batch, out)
    _info(benchmark, "seal", proposal, backend, size, batch)
    with stages.prepare_seal(out, arena.buf, arena.off, arena.lens, arena.status, arena.stride) as ops:
        # sealing the same regions again is the same work: no state to reset between rounds
        assert _repeat(benchmark, stages.seal_batch, (out, ops), batch) == batch
        assert stages.finish_seal(out, ops) == batch
    # what was sealed (more than once) is still well-formed ESP for the receiver's parse
    assert stages.parse_batch(inb, arena.buf, arena.off, arena.lens, arena.status) == batch


def test_open(benchmark, proposal, backend, size, batch):
    out, inb = sa_pair(proposal, backend)
    arena = Arena(size, batch, out)
    image = arena.esp_image(out)
    arena.reset(*image)
    pristine = image[0]
    view = memoryview(arena.buf)
    _info(benchmark, "open", proposal, backend, size, batch)

    def setup():
        # open decrypts in place: every round opens the sealed bytes
        view[:] = pristine

    with stages.prepare_open(inb, arena.buf, arena.off, arena.lens, arena.status) as ops:
        rounds = budget_rounds(stages.open_batch, (inb, ops), setup, budget=0.4, hi=_rounds(batch))
        ok = benchmark.pedantic(stages.open_batch, args=(inb, ops), setup=setup, rounds=rounds,
                                warmup_rounds=10)
        assert ok == batch and set(arena.status) == {Status.OK}
        assert stages.finish_open(inb, ops) == batch
    view.release()
    assert bytes(arena.buf[arena.off[0]:arena.off[0] + arena.lens[0]]) == arena.packet


def test_encap(benchmark, proposal, backend, size, batch):
    bench_encap(benchmark, proposal, backend, size, batch, max_rounds=_rounds(batch), stage="encap")


def test_decap(benchmark, proposal, backend, size, batch):
    bench_decap(benchmark, proposal, backend, size, batch, max_rounds=_rounds(batch), stage="decap")
