"""Batches: index-stable statuses, chunk boundaries, argument checking, PacketBatch, threads.

The reference for every batch is the same packets processed one by one on a twin SA: a
batch must give the same status, the same bytes and the same counters, packet for packet.
"""

from __future__ import annotations

import random
import threading
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath as fp
import fp_support as S
from fastpath import Status

T_B = [pytest.param(t, b, id=f"{t.name}-{S.BACKEND_NAMES[b]}") for t in S.CORE for b in S.backends_for(t)]


def singles(sa, pkts, direction="decap"):
    out = []
    for p in pkts:
        try:
            out.append(sa.decap(p) if direction == "decap" else sa.encap(p))
        except fp.PacketError as e:
            out.append(e.status)
    return out


def mixed_stream(tx, n, rng, inner=S.inner4):
    """n inbound packets: mostly good, some replayed, forged, cut, mislabelled, reordered."""
    good = [tx.encap(inner(rng.randrange(0, 300), seed=i)) for i in range(n)]
    GENUINE.update(good)
    out = []
    for i in range(n):
        r = rng.random()
        g = good[i]
        if r < 0.55:
            out.append(g)
        elif r < 0.65 and out:
            out.append(rng.choice(out))                                  # a duplicate
        elif r < 0.75:
            b = bytearray(g)
            b[rng.randrange(20, len(b))] ^= 1 << rng.randrange(8)
            out.append(bytes(b))                                         # forged somewhere
        elif r < 0.8:
            out.append(g[:rng.randrange(0, len(g))])                     # cut
        elif r < 0.85:
            out.append(g[:20] + b"\0\0\xab\xcd" + g[24:])                 # another SA's
        elif r < 0.9:
            out.append(good[max(0, i - rng.randrange(0, 3000))])         # late
        else:
            out.append(b"\xff" * rng.randrange(1, 40))                   # noise
    return out


GENUINE: set[bytes] = set()


def assert_batch_matches_singles(b, pkts, want, rx_b):
    """Batch results equal the one-by-one results, with one allowed kind of difference: a
    batch checks the window for a whole chunk before the chunk's crypto (DPDK's
    prepare/process split), so a packet that a one-by-one run finds behind the window
    (moved by an earlier packet of the same chunk) is refused with the label of the
    earlier check: REPLAY where one-by-one says TOO_OLD, or, if it is forged, ICV_FAIL.
    Accepted packets and their bytes never differ. Counters must count exactly what the
    batch reported."""
    got = S.batch_results(b)
    assert len(got) == len(want)
    window = (Status.TOO_OLD, Status.REPLAY)
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            assert w in window and g in window + (Status.ICV_FAIL,), (i, g, w)
            if g == Status.ICV_FAIL:
                assert pkts[i] not in GENUINE, (i, g, w)
    c = rx_b.counters()["in"]
    for stt in Status:
        if stt != Status.OK:
            assert c[stt.name] == sum(1 for g in got if g == stt), stt
    assert c["packets"] == sum(1 for g in got if isinstance(g, bytes))
    assert c["bytes"] == sum(len(g) for g in got if isinstance(g, bytes))
    return got


@pytest.mark.parametrize("t, backend", T_B)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 128, 129, 1000])
def test_mixed_batch_equals_one_by_one(t, backend, n):
    rng = random.Random(n * 7919 + backend)
    tx = S.make_sa(t, "tunnel4", backend=backend)
    rx_b = S.make_sa(t, "tunnel4", backend=backend, replay_window=64)
    rx_s = S.make_sa(t, "tunnel4", backend=1, replay_window=64)      # reference: OpenSSL singles
    pkts = mixed_stream(tx, n, rng)
    want = singles(rx_s, pkts)
    b = S.batch_of(pkts)
    ok = b.decap(rx_b)
    assert_batch_matches_singles(b, pkts, want, rx_b)
    assert ok == sum(1 for w in want if not isinstance(w, Status))
    assert rx_b.replay_top == rx_s.replay_top
    # refused packets keep their offsets and lengths
    for i, w in enumerate(want):
        if isinstance(w, Status):
            assert b.lengths[i] == len(pkts[i])
            assert b.offsets[i] == i * b.stride + b.headroom


@pytest.mark.parametrize("t, backend", T_B)
@pytest.mark.parametrize("n", [1, 7, 8, 64, 65, 1000])
def test_chunk_boundaries(t, backend, n):
    tx, rx = S.make_pair(t, "tunnel6", udp=True, backend=backend, rx_extra={"backend": backend})
    pkts = [S.inner6(i % 200, seed=i) if i % 3 else S.inner4(i % 150, seed=i) for i in range(n)]
    b = S.batch_of(pkts)
    assert b.encap(tx) == n
    assert b.ok() == list(range(n))
    assert tx.seq_out == n
    seqs = [S.esp_seq(bytes(p), udp_encap=True) for p in b]
    assert seqs == list(range(1, n + 1))
    assert b.decap(rx) == n
    assert [bytes(p) for p in b] == pkts
    assert rx.replay_top == n
    c = rx.counters()["in"]
    assert c["packets"] == n and c["bytes"] == sum(map(len, pkts))


@pytest.mark.parametrize("n", [1, 8, 64, 65, 200])
def test_encap_batch_statuses_index_stable(n):
    t = S.TRANSFORM_BY_NAME["aes128cbc-sha1"]
    tx_b = S.make_sa(t, "tunnel4")
    tx_s = S.make_sa(t, "tunnel4")
    rng = random.Random(n)
    pkts = [S.inner4(rng.randrange(0, 200), seed=i) if rng.random() < 0.8 else b"junk" * rng.randrange(0, 5)
            for i in range(n)]
    want = singles(tx_s, pkts, "encap")
    b = S.batch_of(pkts)
    b.encap(tx_b)
    got = [Status(s) for s in b.status]
    assert got == [Status.OK if isinstance(w, bytes) else w for w in want]
    rx = S.make_sa(t, "tunnel4")
    for i, w in enumerate(want):
        if isinstance(w, bytes):
            # same sequence numbers as the one-by-one run (refusals take none)
            assert S.esp_seq(bytes(b.packet(i))) == S.esp_seq(w)
            assert rx.decap(bytes(b.packet(i))) == pkts[i]
        else:
            assert bytes(b.packet(i)) == pkts[i]
    assert tx_b.counters()["out"]["BAD_INNER"] == tx_s.counters()["out"]["BAD_INNER"]
    assert tx_b.counters()["out"]["packets"] == tx_s.counters()["out"]["packets"]
    assert tx_b.seq_out == tx_s.seq_out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(S.CORE), st.integers(0, 2**32), st.integers(1, 150))
def test_random_mixes_equal_one_by_one(t, seed, n):
    rng = random.Random(seed)
    tx = S.make_sa(t, "tunnel6")
    rx_b, rx_s = S.make_sa(t, "tunnel6", replay_window=32), S.make_sa(t, "tunnel6", replay_window=32)
    pkts = mixed_stream(tx, n, rng, inner=S.inner6)
    want = singles(rx_s, pkts)
    b = S.batch_of(pkts)
    b.decap(rx_b)
    assert_batch_matches_singles(b, pkts, want, rx_b)
    assert rx_b.replay_top == rx_s.replay_top


def test_verify_false_batch():
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "tunnel4")
    pkts = [tx.encap(S.inner4(i)) for i in range(20)]
    forged = [p[:-1] + bytes([p[-1] ^ 1]) for p in pkts]
    b = S.batch_of(forged)
    assert b.decap(rx, verify=False) == 20
    assert [bytes(p) for p in b] == [S.inner4(i) for i in range(20)]


# =======================================================================================
# argument checking happens before anything is processed


def _state(sa, b):
    return (sa.seq_out, sa.replay_top, sa.counters(), bytes(b.buffer), list(b.offsets), list(b.lengths),
            list(b.status))


def test_offsets_outside_slots_are_refused_before_processing():
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx = S.make_sa(t, "tunnel4")
    p = S.inner4(50)
    for bad_i, mutate in [
        (3, lambda b, i: b.offsets.__setitem__(i, i * b.stride - 1)),                 # before its slot
        (3, lambda b, i: b.offsets.__setitem__(i, (i + 1) * b.stride - 10)),          # runs past it
        (0, lambda b, i: b.offsets.__setitem__(i, -5)),
        (4, lambda b, i: b.lengths.__setitem__(i, b.stride)),
        (4, lambda b, i: b.offsets.__setitem__(i, 10**9)),
        (2, lambda b, i: b.offsets.__setitem__(i, b.offsets[1])),                     # in slot 1
    ]:
        b = S.batch_of([p] * 5, stride=512)
        mutate(b, bad_i)
        before = _state(tx, b)
        with pytest.raises(ValueError, match=f"packet {bad_i}"):
            b.encap(tx)
        assert _state(tx, b) == before
    # decap has no slots, but packets must lie inside the buffer
    tx2, rx = S.make_pair(t, "tunnel4")
    e = tx2.encap(p)
    for mutate in (lambda b: b.offsets.__setitem__(1, -1),
                   lambda b: b.lengths.__setitem__(2, len(b.buffer)),
                   lambda b: b.offsets.__setitem__(2, len(b.buffer) - 3)):
        b = S.batch_of([e] * 3, stride=512)
        mutate(b)
        before = _state(rx, b)
        with pytest.raises(ValueError):
            b.decap(rx)
        assert _state(rx, b) == before
    b = S.batch_of([e] * 3, stride=512)
    assert b.decap(rx) == 1          # and the SA is fine afterwards (two replays)


def test_empty_batches():
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "tunnel4")
    b = fp.PacketBatch(4)
    assert len(b) == 0 and b.encap(tx) == 0 and b.decap(rx) == 0 and b.ok() == []
    empty_q, empty_i, empty_b = array("q"), array("I"), array("B")
    assert tx.encap_batch(bytearray(16), empty_q, empty_i, empty_b, 16) == 0
    assert rx.decap_batch(bytearray(16), empty_q, empty_i, empty_b) == 0
    assert tx.seq_out == 0 and tx.counters() == S.make_sa(t, "tunnel4").counters()


def test_raw_arrays_with_own_layout():
    """encap_batch/decap_batch on caller-owned memory: packets anywhere inside their slots,
    a status array longer than the batch, results written back into the arrays."""
    t = S.TRANSFORM_BY_NAME["chacha20poly1305"]
    tx, rx = S.make_pair(t, "tunnel4")
    stride = 1000
    pkts = [S.inner4(30 + 50 * i, seed=i) for i in range(5)]
    buf = bytearray(stride * 5)
    offs, lens = array("q"), array("I")
    for i, p in enumerate(pkts):
        o = i * stride + tx.headroom + 7 * i
        buf[o:o + len(p)] = p
        offs.append(o)
        lens.append(len(p))
    st_arr = array("B", [Status.NOT_PROCESSED] * 8)
    assert tx.encap_batch(buf, offs, lens, st_arr, stride) == 5
    assert list(st_arr[:5]) == [0] * 5 and list(st_arr[5:]) == [Status.NOT_PROCESSED] * 3
    for i in range(5):
        assert i * stride <= offs[i] and offs[i] + lens[i] <= (i + 1) * stride
    outs = [bytes(buf[offs[i]:offs[i] + lens[i]]) for i in range(5)]
    assert [rx.decap(o) for o in outs] == pkts
    # decap in place on a numpy-free memoryview of a slice
    rx2 = S.make_sa(t, "tunnel4")
    assert rx2.decap_batch(memoryview(buf), offs, lens, st_arr) == 5
    assert [bytes(buf[offs[i]:offs[i] + lens[i]]) for i in range(5)] == pkts


def test_packet_batch_api():
    b = fp.PacketBatch(3, stride=256, headroom=64)
    assert b.capacity == 3 and b.stride == 256 and b.headroom == 64
    assert b.append(b"\x45" + bytes(19)) == 0
    b.extend([b"ab", b"cd"])
    assert len(b) == 3
    with pytest.raises(IndexError):
        b.append(b"x")
    with pytest.raises(IndexError):
        b.packet(3)
    with pytest.raises(IndexError):
        b.packet(-1)
    assert [bytes(p) for p in b] == [b"\x45" + bytes(19), b"ab", b"cd"]
    assert list(b.status) == [Status.NOT_PROCESSED] * 3
    b.clear()
    assert len(b) == 0
    with pytest.raises(ValueError):
        b.append(bytes(256 - 64 + 1))
    b.append(bytes(256 - 64))
    for kw in (dict(capacity=0), dict(capacity=1, stride=64, headroom=64), dict(capacity=1, headroom=-1)):
        with pytest.raises(ValueError):
            fp.PacketBatch(**kw)


# =======================================================================================
# threads


def _run_threads(fns):
    errors = []
    barrier = threading.Barrier(len(fns))

    def wrap(fn):
        try:
            barrier.wait()
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(f,)) for f in fns]
    for th in ts:
        th.start()
    for th in ts:
        th.join(120)
    assert not any(th.is_alive() for th in ts)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("backend", S.BACKENDS, ids=[S.BACKEND_NAMES[b] for b in S.BACKENDS])
def test_two_threads_two_sas(backend):
    """Big batches on two SAs in two threads at once (GIL released for batches of 8 or more;
    the mb backend keeps a job manager per thread): every result is right."""
    names = ["aes128gcm16", "aes256cbc-sha512", "chacha20poly1305", "aes128ctr-sha1"]
    results = {}

    def worker(k):
        t = S.TRANSFORM_BY_NAME[names[k]]
        tx, rx = S.make_pair(t, "tunnel4" if k % 2 else "tunnel6", backend=backend,
                             rx_extra={"backend": backend}, seed=k)
        ok = True
        for rnd in range(6):
            pkts = [S.inner4((i * 37 + rnd) % 1400, seed=i + 1000 * rnd) for i in range(300)]
            b = S.batch_of(pkts)
            ok &= b.encap(tx) == 300
            ok &= b.decap(rx) == 300
            ok &= [bytes(p) for p in b] == pkts
        results[k] = (ok, tx.seq_out, rx.replay_top)

    _run_threads([lambda k=k: worker(k) for k in range(4)])
    assert results == {k: (True, 1800, 1800) for k in range(4)}


@pytest.mark.parametrize("backend", S.BACKENDS, ids=[S.BACKEND_NAMES[b] for b in S.BACKENDS])
def test_threads_sharing_one_sa(backend):
    """Threads sharing one SA are serialised by its lock: no sequence number is used twice,
    and one receiver accepts every packet exactly once."""
    t = S.TRANSFORM_BY_NAME["aes128cbc-sha1"]
    tx, rx = S.make_pair(t, "tunnel4", backend=backend, rx_extra={"backend": backend, "replay_window": 4096})
    outs = {}

    def worker(k):
        got = []
        for rnd in range(4):
            b = S.batch_of([S.inner4(64, seed=k)] * 200)
            assert b.encap(tx) == 200
            got += [bytes(p) for p in b]
            got.append(tx.encap(S.inner4(64, seed=k)))
        outs[k] = got

    _run_threads([lambda k=k: worker(k) for k in range(3)])
    allp = [p for k in outs for p in outs[k]]
    seqs = sorted(S.esp_seq(p) for p in allp)
    assert seqs == list(range(1, len(allp) + 1))
    res = {}

    def opener(k):
        b = S.batch_of(outs[k])
        b.decap(rx)
        res[k] = [bytes(p) for p in b]

    _run_threads([lambda k=k: opener(k) for k in range(3)])
    for k in range(3):
        assert res[k] == [S.inner4(64, seed=k)] * len(outs[k])
    assert rx.counters()["in"]["packets"] == len(allp)


def test_close_while_other_threads_run_batches():
    """close() waits for a running batch and later batches see SA_DEAD, never freed keys."""
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "tunnel4")
    statuses = []

    def runner():
        for _ in range(30):
            b = S.batch_of([S.inner4(100)] * 64)
            b.encap(tx)
            statuses.append(set(b.status))

    def closer():
        tx.close()

    _run_threads([runner, closer])
    assert tx.closed
    # whole batches only, and once closed never open again: OK* then SA_DEAD*
    assert all(s in ({Status.OK}, {Status.SA_DEAD}) for s in statuses)
    flags = [s == {Status.SA_DEAD} for s in statuses]
    assert flags == sorted(flags)
    b = S.batch_of([S.inner4(100)] * 64)
    assert b.encap(tx) == 0 and set(b.status) == {Status.SA_DEAD}


def test_tfc_padding_shrinks_to_the_slot():
    """TFC padding is best effort: in a slot with no room for it, the packet still goes out
    (without it) instead of NO_ROOM, and opens to the same inner packet."""
    t = S.TRANSFORM_BY_NAME["aes128gcm16"]
    tx, rx = S.make_pair(t, "tunnel4", tfc_pad=1000)
    pkts = [S.inner4(i * 13, seed=i) for i in range(40)]
    stride = max(len(p) for p in pkts) + tx.overhead(max(len(p) for p in pkts))
    b = S.batch_of(pkts, stride=stride, headroom=tx.headroom)
    assert b.encap(tx) == 40
    for i in range(40):
        assert b.offsets[i] >= i * stride and b.offsets[i] + b.lengths[i] <= (i + 1) * stride
    assert b.decap(rx) == 40
    assert [bytes(p) for p in b] == pkts
