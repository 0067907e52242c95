"""The batch API over the hostile corpus (issue 11 item 2).

Every entry point that takes a buffer and caller-supplied places (SAState's single-packet
and batch calls with and without indices, Engine.outbound / inbound, the stages, netio's
bursts, PacketBatch) gets the corpus's absurd sizes as strides, offsets, lengths, indices,
headrooms and burst sizes, and its wrong types and values in every argument. Each must end
in a TypeError, ValueError (a fastpath.PacketError is one) or BufferError, or a named
status, never a crash or an OverflowError; the buffer lies between guard bytes that must never change, and
a refused call changes nothing at all.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from array import array

import pytest

import fastpath
import hostile
from fastpath import Cipher, PacketBatch, SAState, netio, stages
from ipsp.engine import Engine

GUARD = 256
N, STRIDE, HEAD = 4, 512, 64
SIZES = hostile.sizes()
VALUES = hostile.values()
# BufferError: a read-only or non-contiguous buffer where a writable one goes
REFUSED = (TypeError, ValueError, BufferError)


def _sa():
    return SAState(spi=0x3001, cipher=Cipher.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(range(20)),
                   src=bytes([192, 0, 2, 1]), dst=bytes([192, 0, 2, 2]))


def _packet(n=60):
    body = bytes(range(n - 20))
    hdr = bytearray(b"\x45\x00" + n.to_bytes(2, "big") + bytes(4) + b"\x40\x11\x00\x00" + bytes([10, 0, 0, 1, 10, 0, 0, 2]))
    s = sum(int.from_bytes(hdr[k:k + 2], "big") for k in range(0, 20, 2))
    s = (s & 0xFFFF) + (s >> 16)
    hdr[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(hdr) + body


class Arena:
    def __init__(self):
        self.whole = bytearray(b"\xa5" * GUARD) + bytearray(N * STRIDE) + bytearray(b"\xa5" * GUARD)
        self.buf = memoryview(self.whole)[GUARD:GUARD + N * STRIDE]
        pkt = _packet()
        self.off = array("q", [i * STRIDE + HEAD for i in range(N)])
        self.lens = array("I", [len(pkt)] * N)
        for i in range(N):
            self.buf[self.off[i]:self.off[i] + len(pkt)] = pkt
        self.status = bytearray([0xEE]) * N

    def state(self):
        return bytes(self.whole), bytes(self.off), bytes(self.lens), bytes(self.status)

    def guards_intact(self):
        return self.whole[:GUARD] == b"\xa5" * GUARD and self.whole[-GUARD:] == b"\xa5" * GUARD


def refused(call, arena):
    """call must raise TypeError or ValueError and change nothing."""
    before = arena.state()
    with pytest.raises(REFUSED):
        call()
    assert arena.state() == before
    assert arena.guards_intact()


def _batch_calls(sa, engine, a, stride=STRIDE, off=None, lens=None, indices=None, status=None):
    off = a.off if off is None else off
    lens = a.lens if lens is None else lens
    status = a.status if status is None else status
    kw = {} if indices is None else {"indices": indices}
    return {
        "encap_batch": lambda: sa.encap_batch(a.buf, off, lens, status, stride, **kw),
        "decap_batch": lambda: sa.decap_batch(a.buf, off, lens, status, **kw),
        "outbound": lambda: engine.outbound(a.buf, off, lens, status, stride),
        "inbound": lambda: engine.inbound(a.buf, off, lens, status),
        "prepare_seal": lambda: stages.prepare_seal(sa, a.buf, off, lens, status, stride),
        "prepare_open": lambda: stages.prepare_open(sa, a.buf, off, lens, status),
        "parse_batch": lambda: stages.parse_batch(sa, a.buf, off, lens, status),
    }


SLOTTED = ("encap_batch", "outbound", "prepare_seal")


@pytest.mark.parametrize("name,size", SIZES, ids=[n for n, _ in SIZES])
def test_absurd_strides(name, size):
    # none of these is a stride the arena's packets lie in (2**31: slot 1 starts past the end)
    sa, engine, a = _sa(), Engine(), Arena()
    for entry in SLOTTED:
        refused(_batch_calls(sa, engine, a, stride=size)[entry], a)
    assert sa.seq_out == 0


def _inside(a, entry, i, off, length):
    if off < 0 or off > len(a.buf) or length > len(a.buf) - off:
        return False
    return entry not in SLOTTED or i * STRIDE <= off and off + length <= (i + 1) * STRIDE


@pytest.mark.parametrize("name,size", SIZES, ids=[n for n, _ in SIZES])
@pytest.mark.parametrize("field", ["offset", "length"])
@pytest.mark.parametrize("with_indices", [False, True])
def test_absurd_offsets_and_lengths(name, size, field, with_indices):
    sa, engine = _sa(), Engine()
    if field == "length" and not 0 <= size < 2**32:
        with pytest.raises(OverflowError):       # the caller cannot even build that array
            array("I", [size])
        return
    indices = array("I", [2, 0]) if with_indices else None
    for entry in _batch_calls(sa, engine, Arena()):
        if indices is not None and entry not in ("encap_batch", "decap_batch"):
            continue
        a = Arena()
        off, lens = array("q", a.off), array("I", a.lens)
        (off if field == "offset" else lens)[2] = size
        call = _batch_calls(sa, engine, a, off=off, lens=lens, indices=indices)[entry]
        before = (bytes(a.whole), bytes(off), bytes(lens), bytes(a.status))
        if _inside(a, entry, 2, off[2], lens[2]):
            call()
        else:
            with pytest.raises(ValueError, match="packet 2"):
                call()
            assert (bytes(a.whole), bytes(off), bytes(lens), bytes(a.status)) == before
        assert a.guards_intact()


@pytest.mark.parametrize("name,value", VALUES, ids=[n for n, _ in VALUES])
@pytest.mark.parametrize("arg", ["buf", "offsets", "lengths", "status", "stride", "indices"])
def test_wrong_values_in_every_argument(name, value, arg):
    if arg == "indices" and value is None:
        return                                # None means every packet
    sa, engine, a = _sa(), Engine(), Arena()
    args = {"buf": a.buf, "offsets": a.off, "lengths": a.lens, "status": a.status, "stride": STRIDE}
    kw = {}
    if arg == "indices":
        kw["indices"] = value
    else:
        args[arg] = value
    b, o, n, s, stride = args["buf"], args["offsets"], args["lengths"], args["status"], args["stride"]
    calls = [lambda: sa.encap_batch(b, o, n, s, stride, **kw)]
    if arg != "stride":
        calls.append(lambda: sa.decap_batch(b, o, n, s, **kw))
    if arg != "indices":
        calls += [lambda: engine.outbound(b, o, n, s, stride), lambda: stages.prepare_seal(sa, b, o, n, s, stride)]
        if arg != "stride":
            calls += [lambda: engine.inbound(b, o, n, s), lambda: stages.parse_batch(sa, b, o, n, s)]
    for call in calls:
        refused(call, a)
    assert sa.seq_out == 0


@pytest.mark.parametrize("name,value", VALUES, ids=[n for n, _ in VALUES])
def test_single_packet_calls_refuse_wrong_values(name, value):
    sa = _sa()
    out = bytearray(4096)
    for call in (lambda: sa.encap(value), lambda: sa.decap(value), lambda: sa.encap_into(value, out),
                 lambda: sa.decap_into(value, out), lambda: sa.encap_into(_packet(), value),
                 lambda: sa.decap_into(_packet(), value)):
        with pytest.raises(REFUSED):
            call()
    assert sa.seq_out == 0


def test_single_packet_out_buffers_too_small_are_refused_within_them():
    sa = _sa()
    need = len(sa.encap(_packet()))
    for cap in (0, 1, 20, sa.headroom, need - 1):
        out = bytearray(b"\xa5" * (cap + GUARD))
        with pytest.raises(fastpath.PacketError):
            sa.encap_into(_packet(), memoryview(out)[:cap])
        assert out[cap:] == b"\xa5" * GUARD
    out = bytearray(b"\xa5" * (need + GUARD))
    assert sa.encap_into(_packet(), memoryview(out)[:need]) == need and out[need:] == b"\xa5" * GUARD


@pytest.mark.parametrize("name,size", SIZES + [("indices-past-n", N), ("max-uint32", 2**32 - 1)],
                         ids=[n for n, _ in SIZES] + ["indices-past-n", "max-uint32"])
def test_absurd_indices(name, size):
    sa, engine, a = _sa(), Engine(), Arena()
    if not 0 <= size < 2**32:
        with pytest.raises(OverflowError):
            array("I", [size])
        return
    if size < N:
        return                                # a real packet number
    for entry in ("encap_batch", "decap_batch"):
        refused(_batch_calls(sa, engine, a, indices=array("I", [0, size]))[entry], a)


@pytest.mark.parametrize("name,size", SIZES, ids=[n for n, _ in SIZES])
@pytest.mark.parametrize("arg", ["stride", "headroom", "max_n"])
def test_netio_bursts_over_absurd_sizes(name, size, arg):
    a = Arena()
    params = {"stride": STRIDE, "headroom": HEAD, "max_n": N}
    params[arg] = size
    legal = (arg == "max_n" and size == 0) or (arg == "headroom" and size == 0)
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    try:
        for call in (lambda: netio.tun_read_burst(rfd, a.buf, a.off, a.lens, params["stride"], params["headroom"],
                                                  params["max_n"]),
                     lambda: netio.tun_read_burst(rfd, a.buf, a.off, a.lens, params["stride"], params["headroom"],
                                                  params["max_n"], vnet=True),
                     lambda: netio.udp_recv_burst(udp.fileno(), a.buf, a.off, a.lens, params["stride"],
                                                  params["headroom"], params["max_n"], bytes([127, 0, 0, 1]), 4500)):
            if legal:
                assert call() == 0
                assert a.guards_intact()
            else:
                refused(call, a)
    finally:
        os.close(rfd)
        os.close(wfd)
        udp.close()


@pytest.mark.parametrize("name,size", SIZES, ids=[n for n, _ in SIZES])
def test_netio_sends_over_absurd_offsets(name, size):
    a = Arena()
    off = array("q", a.off)
    off[1] = size
    ok = 0 <= size and size + a.lens[1] <= len(a.buf)
    devnull = os.open(os.devnull, os.O_WRONLY)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for call in (lambda: netio.tun_write_burst(devnull, a.buf, off, a.lens, bytes(N), b"\x00"),
                     lambda: netio.udp_send_burst(udp.fileno(), a.buf, off, a.lens, bytes(N))):
            if ok:
                call()
            else:
                with pytest.raises(ValueError, match="packet 1"):
                    call()
            assert a.guards_intact()
        # a place nobody sends from is never looked at
        assert netio.tun_write_burst(devnull, a.buf, off, a.lens, bytes([0, 1, 0, 0]), b"\x00") == 3
    finally:
        os.close(devnull)
        udp.close()


@pytest.mark.parametrize("name,value", VALUES + SIZES, ids=[f"v-{n}" for n, _ in VALUES] + [f"s-{n}" for n, _ in SIZES])
def test_netio_local_and_port(name, value):
    a = Arena()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    try:
        for call in (lambda: netio.udp_recv_burst(udp.fileno(), a.buf, a.off, a.lens, STRIDE, HEAD, N, value, 4500),
                     lambda: netio.udp_recv_burst(udp.fileno(), a.buf, a.off, a.lens, STRIDE, HEAD, N,
                                                  bytes([127, 0, 0, 1]), value)):
            try:
                assert call() == 0
            except REFUSED:
                pass
            assert a.guards_intact()
    finally:
        udp.close()


@pytest.mark.parametrize("name,value", VALUES + SIZES, ids=[f"v-{n}" for n, _ in VALUES] + [f"s-{n}" for n, _ in SIZES])
@pytest.mark.parametrize("arg", ["capacity", "stride", "headroom"])
def test_packet_batch_refuses_absurd_shapes(name, value, arg):
    kw = {"capacity": 4, "stride": 2048, "headroom": 128}
    kw[arg] = value
    try:
        b = PacketBatch(**kw)
    except REFUSED:
        return
    except MemoryError:
        return                                # a shape that is legal but too large to allocate
    # what was accepted is a usable batch
    assert b.capacity >= 1 and 0 <= b.headroom < b.stride
    b.append(_packet())
    assert len(b) == 1 and bytes(b.packet(0)) == _packet()


@pytest.mark.parametrize("name,value", VALUES, ids=[n for n, _ in VALUES])
def test_iostats_add_refuses_bad_counts_and_changes_nothing(name, value):
    stats = netio.IOStats()
    stats.add("tun_read", packets=1)
    before = stats.as_dict()
    for kw in ({"packets": 2, "errors": value}, {"syscalls": value}):
        if isinstance(value, int) and 0 <= value < 2**64:
            continue                          # a real count
        with pytest.raises(REFUSED):
            stats.add("tun_read", **kw)
    if isinstance(value, str) or value is None or isinstance(value, (bytes, list, dict)):
        with pytest.raises(REFUSED):
            stats.add(value, packets=1)
    assert stats.as_dict() == before


@pytest.mark.parametrize("name,value", VALUES, ids=[n for n, _ in VALUES])
def test_packet_batch_packet_index(name, value):
    b = PacketBatch(2)
    b.append(_packet())
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        assert bytes(b.packet(value)) == _packet()
        return
    with pytest.raises((IndexError, TypeError)):
        b.packet(value)


def test_an_engine_batch_of_2_31_packets_is_refused_not_a_hang():
    # scratch_alloc doubled a uint32 hash size while it was below 2 * n: for n = 2**31 - 1
    # it wrapped to 0 and spun forever without the GIL. The arrays are private anonymous
    # mappings, read as zero pages (no memory behind them); in a subprocess, with a timeout.
    code = (
        "import mmap\n"
        "from fastpath.engine import EngineCore\n"
        "n = 2**31 - 1\n"
        "off = mmap.mmap(-1, 8 * n, flags=mmap.MAP_PRIVATE)\n"
        "lens = mmap.mmap(-1, 4 * n, flags=mmap.MAP_PRIVATE)\n"
        "st = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)\n"
        "try:\n"
        "    EngineCore().inbound(bytearray(64), memoryview(off).cast('q'), memoryview(lens).cast('I'), st)\n"
        "except MemoryError:\n"
        "    print('refused')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and r.stdout.strip() == "refused", r.stderr[-2000:]


@pytest.mark.parametrize("name,value", VALUES, ids=[n for n, _ in VALUES])
@pytest.mark.parametrize("arg", ["buf", "offsets", "lengths", "status"])
def test_netio_bursts_refuse_wrong_arrays(name, value, arg):
    a = Arena()
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    devnull = os.open(os.devnull, os.O_WRONLY)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    args = {"buf": a.buf, "offsets": a.off, "lengths": a.lens, "status": bytes(N)}
    args[arg] = value
    b, o, n, s = args["buf"], args["offsets"], args["lengths"], args["status"]
    calls = [lambda: netio.tun_write_burst(devnull, b, o, n, s, b"\x00"),
             lambda: netio.udp_send_burst(udp.fileno(), b, o, n, s)]
    if arg != "status":
        calls += [lambda: netio.tun_read_burst(rfd, b, o, n, STRIDE, HEAD, N),
                  lambda: netio.udp_recv_burst(udp.fileno(), b, o, n, STRIDE, HEAD, N, bytes([127, 0, 0, 1]), 4500)]
    try:
        for call in calls:
            if arg == "status" and isinstance(value, bytes) and len(value) >= N:
                call()                        # read-only statuses are fine for a send
            else:
                refused(call, a)
    finally:
        os.close(rfd)
        os.close(wfd)
        os.close(devnull)
        udp.close()


@pytest.mark.parametrize("name,size", SIZES, ids=[n for n, _ in SIZES])
def test_capture_walker_positions(name, size):
    # a negative position walked records from before the buffer (it read out of bounds)
    from fastpath.capture import Damaged, Walker
    record = (0).to_bytes(4, "little") * 2 + (20).to_bytes(4, "little") * 2 + _packet(20)
    for walk in ("pcap", "pcapng"):
        w = Walker(1 << 20)
        w.set_pcap(False, False, 101, 65535, 65535)
        if size < 0:
            with pytest.raises(ValueError, match="pos"):
                getattr(w, walk)(record, size)
            assert w.count == 0
        else:
            try:
                getattr(w, walk)(record, size)
            except Damaged:
                pass                          # a pcap record is no pcapng block
            assert w.count <= 1


def test_a_single_packet_past_4_gib_is_not_read_as_its_low_32_bits():
    # decap_into passed the buffer's length to the kernel as uint32: 2**32 + L bytes became
    # L, and the first L bytes were decrypted as if they were the whole packet
    import mmap
    kw = dict(cipher=Cipher.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(range(20)), framing=fastpath.ESP)
    tx, rx = SAState(spi=0x3002, **kw), SAState(spi=0x3002, **kw)
    esp = tx.encap(_packet())
    big = mmap.mmap(-1, 2**32 + len(esp), flags=mmap.MAP_PRIVATE)
    big[:len(esp)] = esp
    out = bytearray(4096)
    with pytest.raises(fastpath.PacketError) as exc:
        rx.decap_into(big, out)
    assert exc.value.status.name == "OVERSIZE" and rx.replay_top == 0
    big.close()
