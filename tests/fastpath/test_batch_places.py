"""The place check of the batch contract, over any stride, offset, length and index.

A batch call takes caller-supplied offsets, lengths, strides and indices and then writes
without the GIL wherever they point: every value must be checked, once per batch, with
arithmetic that cannot overflow (issue 11 item 2: ``i * stride`` wrapped in Py_ssize_t, the
slot's start went negative and encapsulation wrote before the buffer). The rule, in Python
integers: packet i lies in the buffer, and for encapsulation inside slot i,
``[i * stride, min((i + 1) * stride, size)]``. Anything else is a ValueError and nothing at
all is touched; the buffer sits between guard bytes that no call may ever change.
"""

from __future__ import annotations

import subprocess
import sys
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fp_support as S
from fastpath import Cipher, SAState, Status, stages

GUARD = 2048
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
# strides that wrap i * stride for small i, and the ordinary ones
STRIDES = st.one_of(st.integers(1, 4096), st.integers(1, 2**63 - 1),
                    st.sampled_from([2**31, 2**32, 2**40, 2**61, 2**62, 2**62 + 1024, 2**63 - 1]))


def gcm_sa(spi=0x2001):
    return SAState(spi=spi, cipher=Cipher.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(range(20)),
                   src=bytes([192, 0, 2, 1]), dst=bytes([192, 0, 2, 2]))


def wrapped(x):
    """x as a 64-bit signed product wraps to: where the old check put a slot."""
    x &= 2**64 - 1
    return x - 2**64 if x >= 2**63 else x


def inside(size, stride, i, off, length):
    """The contract in Python integers (no overflow here)."""
    if off < 0 or off > size or length > size - off:
        return False
    if stride:
        lo = i * stride
        if lo > size:
            return False
        return lo <= off and off + length <= min(lo + stride, size)
    return True


class Arena:
    """A buffer of *size* bytes between guard bytes, filled with copies of an IPv4 packet so
    that whatever an offset points at has a chance to be processed (and written)."""

    def __init__(self, size, n):
        pkt = S.inner4(60, seed=1)
        self.whole = bytearray(GUARD) + (pkt * (size // len(pkt) + 1))[:size] + bytearray(GUARD)
        self.whole[:GUARD] = self.whole[-GUARD:] = b"\xa5" * GUARD
        self.buf = memoryview(self.whole)[GUARD:GUARD + size]
        self.status = bytearray([0xEE]) * n

    def guards(self):
        return bytes(self.whole[:GUARD]), bytes(self.whole[-GUARD:])

    def guards_intact(self):
        return self.guards() == (b"\xa5" * GUARD, b"\xa5" * GUARD)

    def snapshot(self, off, lens):
        return bytes(self.whole), bytes(off), bytes(lens), bytes(self.status)


def _check(arena, call, expect_ok, off, lens):
    before, guards = arena.snapshot(off, lens), arena.guards()
    if expect_ok:
        call()
    else:
        with pytest.raises(ValueError, match="is not inside"):
            call()
        assert arena.snapshot(off, lens) == before, "a refused batch changed something"
    assert arena.guards() == guards, "a batch wrote outside its buffer"


batches = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.integers(0, 8192), st.lists(INT64, min_size=n, max_size=n), st.lists(UINT32, min_size=n, max_size=n)))


@st.composite
def wrapping(draw):
    """A stride for which slot i starts, in wrapped 64-bit arithmetic, near 0: i * stride =
    m * 2**64 + delta (m < i / 2 keeps the stride below 2**63)."""
    i = draw(st.integers(3, 5))
    m = draw(st.integers(1, (i - 1) // 2))
    return (m * 2**64 + draw(st.integers(-3000, 3000))) // i


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches, stride=st.one_of(STRIDES, wrapping()), data=st.data())
def test_encap_with_indices_over_any_stride_offset_and_length(batch, stride, data):
    size, offs, lengths = batch
    n = len(offs)
    # values near the slot the index names, where wrapped arithmetic used to pass
    for k in range(n):
        if data.draw(st.booleans()):
            offs[k] = max(-(2**63), min(2**63 - 1, wrapped(k * stride) + data.draw(st.integers(-2048, 2048))))
    picked = data.draw(st.lists(st.integers(0, n - 1), unique=True, min_size=1, max_size=n))
    arena = Arena(size, n)
    off, lens = array("q", offs), array("I", lengths)
    sa = gcm_sa()
    ok = all(inside(size, stride, i, off[i], lens[i]) for i in picked)
    _check(arena, lambda: sa.encap_batch(arena.buf, off, lens, arena.status, stride, indices=array("I", picked)),
           ok, off, lens)
    if not ok:
        assert sa.seq_out == 0 and sa.counters()["out"]["packets"] == 0


@settings(max_examples=300, deadline=None)
@given(batch=batches, stride=STRIDES)
def test_encap_decap_engine_and_stages_without_indices(batch, stride):
    from ipsp.engine import Engine
    size, offs, lengths = batch
    n = len(offs)
    arena = Arena(size, n)
    off, lens = array("q", offs), array("I", lengths)
    slotted = all(inside(size, stride, i, off[i], lens[i]) for i in range(n))
    anywhere = all(inside(size, 0, i, off[i], lens[i]) for i in range(n))
    sa = gcm_sa()
    engine = Engine()
    _check(arena, lambda: sa.encap_batch(arena.buf, off, lens, arena.status, stride), slotted, off, lens)
    _check(arena, lambda: engine.outbound(arena.buf, off, lens, arena.status, stride), slotted, off, lens)
    _check(arena, lambda: stages.prepare_seal(sa, arena.buf, off, lens, arena.status, stride).release(),
           slotted, off, lens)
    # decapsulation and the inbound path have no slots: the buffer alone bounds them
    _check(arena, lambda: sa.decap_batch(arena.buf, off, lens, arena.status), anywhere, off, lens)
    _check(arena, lambda: engine.inbound(arena.buf, off, lens, arena.status), anywhere, off, lens)
    _check(arena, lambda: stages.parse_batch(sa, arena.buf, off, lens, arena.status), anywhere, off, lens)
    _check(arena, lambda: stages.prepare_open(sa, arena.buf, off, lens, arena.status).release(),
           anywhere, off, lens)


def test_a_stride_that_wraps_the_slot_start_is_refused_and_writes_nothing():
    # issue 11 item 2, concretely: with stride 2**62 + 1024, 3 * stride wraps to
    # 3072 - 2**62 and 4 * stride to 4096, so the old check took slot 3 to be
    # [3072 - 2**62, 4096] and encapsulated a packet 1 KiB before the buffer, in place
    arena = Arena(4096, 4)
    pkt = S.inner4(40, seed=2)
    arena.whole[GUARD - 1024:GUARD - 1024 + len(pkt)] = pkt
    off, lens = array("q", [0, 0, 0, -1024]), array("I", [0, 0, 0, len(pkt)])
    sa = gcm_sa()
    _check(arena, lambda: sa.encap_batch(arena.buf, off, lens, arena.status, 2**62 + 1024,
                                         indices=array("I", [3])), False, off, lens)
    assert sa.seq_out == 0


@pytest.mark.parametrize("stride", [2**40, 2**62, 2**63 - 1])
def test_a_huge_stride_with_indices_names_the_slot_as_it_is(stride):
    arena = Arena(4096, 3)
    off, lens = array("q", [0, 0, -64]), array("I", [0, 0, 20])
    with pytest.raises(ValueError, match=rf"packet 2 .* slot \[{2 * stride}, {3 * stride}\)"):
        gcm_sa().encap_batch(arena.buf, off, lens, arena.status, stride, indices=array("I", [2]))


@pytest.mark.parametrize("stride", [2**63, 2**64, 2**200, -(2**63) - 1])
def test_a_stride_past_64_bits_is_a_value_error(stride):
    arena = Arena(4096, 1)
    off, lens = array("q", [0]), array("I", [20])
    for call in (lambda: gcm_sa().encap_batch(arena.buf, off, lens, arena.status, stride),
                 lambda: stages.prepare_seal(gcm_sa(), arena.buf, off, lens, arena.status, stride)):
        with pytest.raises(ValueError, match="stride"):
            call()
    assert arena.guards_intact() and set(arena.status) == {0xEE}


def test_arrays_that_share_memory_are_refused():
    # the kernel writes offsets, lengths, status (and reads indices) while it reads the
    # others: overlapping arrays would let one write change a checked value under it
    n, stride = 4, 2048
    raw = bytearray(n * stride + 64)
    buf = memoryview(raw)[:n * stride]
    inside_buf = memoryview(raw)[n * stride - 32:n * stride].cast("q")
    sa = gcm_sa()
    off, lens, status = array("q", [i * stride + 128 for i in range(n)]), array("I", [40] * n), bytearray(n)
    with pytest.raises(ValueError, match="offsets and buf share memory"):
        sa.encap_batch(buf, memoryview(raw)[:32].cast("q"), lens, status, stride)
    with pytest.raises(ValueError, match="status and lengths share memory"):
        sa.encap_batch(buf, off, lens, memoryview(lens).cast("B")[:n], stride)
    idx = array("I", [0, 1, 2, 3])
    with pytest.raises(ValueError, match="indices and status share memory"):
        sa.encap_batch(buf, off, lens, memoryview(idx).cast("B"), stride, indices=idx)
    with pytest.raises(ValueError, match="share memory"):
        sa.decap_batch(buf, inside_buf, lens, status)
    assert sa.seq_out == 0


def test_status_none_is_a_type_error_not_a_null_write():
    # a subprocess: on the old code this wrote through a NULL pointer (SIGSEGV)
    code = (
        "from array import array\n"
        "import fastpath as fp\n"
        "from fastpath import stages\n"
        "from ipsp.engine import Engine\n"
        "sa = fp.SAState(spi=0x2001, cipher=fp.Cipher.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(20),"
        " src=bytes(4), dst=bytes(4))\n"
        "buf, off, lens = bytearray(2048), array('q', [128]), array('I', [20])\n"
        "calls = [lambda: sa.encap_batch(buf, off, lens, None, 2048), lambda: sa.decap_batch(buf, off, lens, None),\n"
        "         lambda: Engine().outbound(buf, off, lens, None, 2048), lambda: Engine().inbound(buf, off, lens, None),\n"
        "         lambda: stages.prepare_seal(sa, buf, off, lens, None, 2048),\n"
        "         lambda: stages.parse_batch(sa, buf, off, lens, None)]\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except TypeError as e:\n"
        "        assert 'status' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('accepted status None')\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_indices_longer_than_the_batch_are_refused():
    arena = Arena(4096, 2)
    off, lens = array("q", [128, 2176]), array("I", [40, 40])
    with pytest.raises(ValueError, match="indices holds 3 packet numbers for 2 packets"):
        gcm_sa().encap_batch(arena.buf, off, lens, arena.status, 2048, indices=array("I", [0, 1, 0]))
    assert set(arena.status) == {0xEE}


def test_a_packet_at_the_very_end_of_the_last_slot_gets_no_room_not_a_write_past_it():
    # the slot is cut to the buffer: the kernel's own end of slot i must be too, for any stride
    for stride in (4096, 2**40, 2**63 - 1):
        arena = Arena(4096, 1)
        pkt = S.inner4(100, seed=3)
        arena.buf[4096 - len(pkt):] = pkt
        off, lens = array("q", [4096 - len(pkt)]), array("I", [len(pkt)])
        assert gcm_sa().encap_batch(arena.buf, off, lens, arena.status, stride) == 0
        assert arena.status[0] == Status.NO_ROOM and arena.guards_intact()
