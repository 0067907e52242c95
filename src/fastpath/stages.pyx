"""The stages of the kernel's batch calls, one at a time.

These entry points exist for measurement (bench/test_bench_stages.py) and for the tests that
pin them to the full path (tests/fastpath/test_stages.py); they are not for users. They do
not count on the SA's counters, keep the GIL, and hand out prepared operations that point
into the caller's buffer. Each runs the kernel's own cdef functions for its stage (cimported
from esp_out, esp_in, replay, and the SA's crypto_t burst pointers) over a batch, taking the
batch's buffers once with batch_take; nothing here re-implements a stage, only the loops
around it, which follow encap_burst / decap_burst (CHUNK packets at a time, the same
prefetch).

Inbound (decap_burst: prepare = parse + replay pre-check, open, commit + strip):
  parse_batch(sa, buf, offsets, lengths, status, seqs=None)
        decap_prepare without the window (verify=False): outer IPv4/IPv6 and UDP headers,
        SPI, lengths, sequence number (its ESN high half inferred); seqs (uint64) gets each
        parsed packet's full sequence number
  replay_check_batch(sa, seqs, status)    replay_check, the read-only pre-check
  replay_update_batch(sa, seqs, status)   replay_update, the authoritative update
  prepare_open(sa, buf, offsets, lengths, status) -> Ops    decap_prepare(verify=False)
  open_batch(sa, ops)                     crypto.open_burst (verifying) over the Ops
  finish_open(sa, ops)                    decap_finish(verify=True): window, padding, strip
Outbound (encap_burst: prepare, seal, finish):
  prepare_seal(sa, buf, offsets, lengths, status, stride) -> Ops    encap_prepare
  seal_batch(sa, ops)                     crypto.seal_burst over the Ops
  finish_seal(sa, ops)                    encap_finish; offsets/lengths then give the ESP packets

seal_batch and open_batch restore every operation's status to what prepare gave it before
the burst, as the kernel's prepare does, so they can be repeated over the same Ops (open
needs the packets' bytes restored between calls: it decrypts in place). Results go to the
status array the Ops was prepared with; each call returns the number of OK packets.
"""

from cpython.buffer cimport PyBuffer_Release
from cpython.pythread cimport PyThread_type_lock, PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, free

from fastpath._include.compat cimport fp_prefetch_packet
from fastpath.crypto cimport crypto_op_t
from fastpath.esp_in cimport decap_prepare, decap_finish
from fastpath.esp_out cimport encap_prepare, encap_finish, slot_end, CHUNK, PREFETCH_AHEAD
from fastpath.replay cimport replay_check, replay_update
from fastpath.sa cimport (SAState, batch_bufs_t, batch_take, batch_release, batch_check_places, batch_apart,
                          batch_stride, check_apart, acquire_array)
from fastpath.state cimport sa_t, pkt_meta_t
from fastpath.status cimport Status

from fastpath.status import raise_for_status

cdef enum:
    KIND_SEAL = 1
    KIND_OPEN = 2


cdef int _lock(SAState sa) except -1:
    """Own the SA as a batch call does; raises SAClosedError (lock released) if it is closed."""
    cdef PyThread_type_lock lk = sa._lock
    if not PyThread_acquire_lock(lk, NOWAIT_LOCK):
        with nogil:
            PyThread_acquire_lock(lk, WAIT_LOCK)
    if sa._closed:
        PyThread_release_lock(lk)
        raise_for_status(Status.SA_DEAD)
    return 0


cdef inline void _unlock(SAState sa) noexcept:
    PyThread_release_lock(sa._lock)


cdef class Ops:
    """Crypto operations prepared over one batch by prepare_seal / prepare_open. Holds the
    batch's buffers (so the pointers stay valid) until release() or garbage collection."""
    cdef SAState sa
    cdef batch_bufs_t b
    cdef crypto_op_t *ops
    cdef pkt_meta_t *meta
    cdef uint8_t *prep          # each op's status after prepare
    cdef uint32_t n
    cdef int _kind

    def __cinit__(self):
        self.b.held = 0
        self.ops = NULL
        self.meta = NULL
        self.prep = NULL
        self.n = 0
        self._kind = 0

    def __init__(self):
        raise TypeError("Ops are made by fastpath.stages.prepare_seal / prepare_open")

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        batch_release(&self.b)
        free(self.ops)
        free(self.meta)
        free(self.prep)
        self.ops = NULL
        self.meta = NULL
        self.prep = NULL
        self._kind = 0

    def release(self):
        """Drop the operations and release the batch's buffers."""
        self._free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._free()

    def __len__(self):
        return self.n

    @property
    def kind(self):
        return {KIND_SEAL: "seal", KIND_OPEN: "open"}.get(self._kind, "released")

    def regions(self):
        """Per packet: None if its prepare failed, else a dict of the op's places as offsets
        into buf (esp, iv or None, src, dst, icv), its cipher region length and its sequence
        number."""
        cdef uint32_t i
        cdef crypto_op_t *op
        cdef uint8_t *base = self.b.data
        self._check(KIND_SEAL | KIND_OPEN)
        out = []
        for i in range(self.n):
            op = &self.ops[i]
            if self.prep[i] != Status.OK:
                out.append(None)
                continue
            out.append(dict(esp=op.esp - base, iv=None if op.iv == NULL else op.iv - base,
                            src=op.src - base, dst=op.dst - base, len=op.len,
                            icv=op.icv - base, seq=op.seq))
        return out

    cdef int _check(self, int kinds) except -1:
        if self._kind == 0:
            raise ValueError("these Ops were released")
        if not (self._kind & kinds):
            raise ValueError(f"these Ops were prepared for {self.kind_name()}")
        return 0

    cdef str kind_name(self):
        return "seal" if self._kind == KIND_SEAL else "open"


cdef Ops _new_ops(SAState sa, int kind, buf, offsets, lengths, status, Py_ssize_t stride):
    cdef Ops o = Ops.__new__(Ops)
    o.sa = sa
    batch_take(&o.b, buf, offsets, lengths, status)
    o._kind = kind                  # from here on _free releases the buffers
    batch_check_places(&o.b, stride, NULL, o.b.n)
    o.n = o.b.n
    o.ops = <crypto_op_t *>calloc(o.n + 1, sizeof(crypto_op_t))
    o.meta = <pkt_meta_t *>calloc(o.n + 1, sizeof(pkt_meta_t))
    o.prep = <uint8_t *>calloc(o.n + 1, 1)
    if o.ops == NULL or o.meta == NULL or o.prep == NULL:
        o._free()
        raise MemoryError()
    return o


cdef int _own(SAState sa, Ops ops, int kind) except -1:
    if ops.sa is not sa:
        raise ValueError("these Ops were prepared on another SA")
    ops._check(kind)
    return 0


# ---------------------------------------------------------------------------- inbound

cdef uint32_t _parse(sa_t *sa, uint8_t *buf, int64_t *off, uint32_t *lens, uint8_t *status,
                     uint32_t n, uint64_t *seqs) noexcept nogil:
    # decap_burst's prepare loop with verify=False: the parse, not the window
    cdef crypto_op_t ops[CHUNK]
    cdef pkt_meta_t meta[CHUNK]
    cdef uint32_t base = 0, i, k, cnt, ok = 0
    cdef Status st
    while base < n:
        cnt = n - base if n - base < CHUNK else CHUNK
        for k in range(cnt):
            i = base + k
            if i + PREFETCH_AHEAD < n:
                fp_prefetch_packet(buf + off[i + PREFETCH_AHEAD], lens[i + PREFETCH_AHEAD])
            st = decap_prepare(sa, buf + off[i], lens[i], NULL, 0, &ops[k], &meta[k], False)
            status[i] = st
            if st == Status.OK:
                ok += 1
                if seqs != NULL:
                    seqs[i] = ops[k].seq
        base += cnt
    return ok


def parse_batch(SAState sa not None, buf, offsets, lengths, status, seqs=None):
    """decap's parse (its prepare step before the replay pre-check) over a batch. Returns the
    number of packets that parse; status[i] gets each packet's Status, seqs[i] (a uint64
    array, optional) the full sequence number of each packet that parsed."""
    cdef batch_bufs_t b
    cdef Py_buffer vs
    cdef bint have_seqs = False
    cdef uint64_t *sq = NULL
    cdef uint32_t ok = 0
    batch_take(&b, buf, offsets, lengths, status)
    try:
        if seqs is not None:
            acquire_array(seqs, &vs, 8, b"QL", "seqs")
            have_seqs = True
            batch_apart(&b, &vs, "seqs")
            if vs.len // 8 < b.n:
                raise ValueError(f"seqs holds {vs.len // 8} numbers for {b.n} packets")
            sq = <uint64_t *>vs.buf
        batch_check_places(&b, 0, NULL, b.n)
        _lock(sa)
        ok = _parse(&sa.c, b.data, b.off, b.lens, b.status, b.n, sq)
        _unlock(sa)
    finally:
        if have_seqs:
            PyBuffer_Release(&vs)
        batch_release(&b)
    return ok


cdef int _take_seqs(Py_buffer *vs, Py_buffer *vst, seqs, status, uint32_t *n) except -1:
    acquire_array(seqs, vs, 8, b"QL", "seqs")
    try:
        acquire_array(status, vst, 1, b"B", "status")
    except BaseException:
        PyBuffer_Release(vs)
        raise
    try:
        check_apart(vst, "status", vs, "seqs")
        if vs.len // 8 > 0xffffffff:
            raise ValueError(f"seqs holds {vs.len // 8} numbers: a batch is at most {0xffffffff} packets")
        if vst.len < vs.len // 8:
            raise ValueError(f"status holds {vst.len} entries for {vs.len // 8} sequence numbers")
    except BaseException:
        PyBuffer_Release(vst)
        PyBuffer_Release(vs)
        raise
    n[0] = <uint32_t>(vs.len // 8)
    return 0


def replay_check_batch(SAState sa not None, seqs, status):
    """The read-only replay pre-check (replay_check) of each sequence number in seqs (uint64)
    against the SA's inbound window; status[i] gets OK, REPLAY or TOO_OLD. Returns the
    number that pass."""
    return _replay_batch(sa, seqs, status, False)


def replay_update_batch(SAState sa not None, seqs, status):
    """The authoritative window update (replay_update) for each sequence number in seqs, in
    order: a number already received, or a second copy within seqs, gets REPLAY. Moves the
    SA's window. Returns the number accepted."""
    return _replay_batch(sa, seqs, status, True)


cdef uint32_t _replay_batch(SAState sa, object seqs, object status, bint update) except? 0xffffffff:
    cdef Py_buffer vs, vst
    cdef uint32_t n, i, ok = 0
    cdef const uint64_t *sq
    cdef uint8_t *st
    cdef Status s
    _take_seqs(&vs, &vst, seqs, status, &n)
    sq = <const uint64_t *>vs.buf
    st = <uint8_t *>vst.buf
    try:
        _lock(sa)
        for i in range(n):
            s = replay_update(&sa.c.replay, sq[i]) if update else replay_check(&sa.c.replay, sq[i])
            st[i] = s
            ok += s == Status.OK
        _unlock(sa)
    finally:
        PyBuffer_Release(&vst)
        PyBuffer_Release(&vs)
    return ok


def prepare_open(SAState sa not None, buf, offsets, lengths, status):
    """decap's parse over a batch, keeping the crypto operations for open_batch (in place, as
    decap_batch opens). status[i] gets the parse's Status."""
    cdef Ops o = _new_ops(sa, KIND_OPEN, buf, offsets, lengths, status, 0)
    cdef uint32_t i
    cdef sa_t *c = &sa.c
    _lock(sa)
    for i in range(o.n):
        if i + PREFETCH_AHEAD < o.n:
            fp_prefetch_packet(o.b.data + o.b.off[i + PREFETCH_AHEAD], o.b.lens[i + PREFETCH_AHEAD])
        o.prep[i] = decap_prepare(c, o.b.data + o.b.off[i], o.b.lens[i], NULL, 0, &o.ops[i], &o.meta[i], False)
        o.ops[i].status = o.prep[i]
        o.b.status[i] = o.prep[i]
    _unlock(sa)
    return o


cdef uint32_t _burst(sa_t *sa, Ops o, bint seal) noexcept:
    cdef uint32_t base = 0, k, cnt, ok = 0
    while base < o.n:
        cnt = o.n - base if o.n - base < CHUNK else CHUNK
        for k in range(base, base + cnt):
            o.ops[k].status = o.prep[k]
        if seal:
            sa.crypto.seal_burst(&sa.crypto, o.ops + base, cnt)
        else:
            sa.crypto.open_burst(&sa.crypto, o.ops + base, cnt)
        for k in range(base, base + cnt):
            o.b.status[k] = o.ops[k].status
            ok += o.ops[k].status == Status.OK
        base += cnt
    return ok


def open_batch(SAState sa not None, Ops ops not None):
    """The SA's open_burst alone (verify the ICV, decrypt in place) over prepared Ops, CHUNK
    at a time as decap_batch calls it. Returns the number that verified."""
    cdef uint32_t ok
    _own(sa, ops, KIND_OPEN)
    _lock(sa)
    ok = _burst(&sa.c, ops, False)
    _unlock(sa)
    return ok


def finish_open(SAState sa not None, Ops ops not None):
    """decap_finish after open_batch: the window update, the padding check and the strip;
    offsets and lengths then describe the results, as after decap_batch."""
    cdef uint32_t i, ok = 0
    cdef Status st
    _own(sa, ops, KIND_OPEN)
    _lock(sa)
    for i in range(ops.n):
        st = <Status>ops.ops[i].status
        if st == Status.OK:
            st = decap_finish(&sa.c, &ops.ops[i], &ops.meta[i], True)
        if st == Status.OK:
            ops.b.off[i] = ops.meta[i].start - ops.b.data
            ops.b.lens[i] = ops.meta[i].len
            ok += 1
        ops.b.status[i] = st
    _unlock(sa)
    return ok


# ---------------------------------------------------------------------------- outbound

def prepare_seal(SAState sa not None, buf, offsets, lengths, status, stride):
    """encap's prepare over a batch (slots of stride bytes, as encap_batch): takes the
    sequence numbers and lays each packet out in place, keeping the crypto operations for
    seal_batch. status[i] gets the prepare's Status."""
    cdef Py_ssize_t width = batch_stride(stride)
    cdef Ops o = _new_ops(sa, KIND_SEAL, buf, offsets, lengths, status, width)
    cdef uint32_t i
    cdef uint8_t *lo
    cdef uint8_t *hi
    cdef sa_t *c = &sa.c
    _lock(sa)
    for i in range(o.n):
        lo = o.b.data + <size_t>i * width
        hi = slot_end(o.b.data, <size_t>o.b.size, <size_t>i * width, width)
        if i + PREFETCH_AHEAD < o.n:
            fp_prefetch_packet(o.b.data + o.b.off[i + PREFETCH_AHEAD], o.b.lens[i + PREFETCH_AHEAD])
        o.prep[i] = encap_prepare(c, lo, o.b.data + o.b.off[i], o.b.lens[i], hi, &o.ops[i], &o.meta[i])
        o.ops[i].status = o.prep[i]
        o.b.status[i] = o.prep[i]
    _unlock(sa)
    return o


def seal_batch(SAState sa not None, Ops ops not None):
    """The SA's seal_burst alone (encrypt and compute the ICV in place) over prepared Ops,
    CHUNK at a time as encap_batch calls it. Returns the number sealed."""
    cdef uint32_t ok
    _own(sa, ops, KIND_SEAL)
    _lock(sa)
    ok = _burst(&sa.c, ops, True)
    _unlock(sa)
    return ok


def finish_seal(SAState sa not None, Ops ops not None):
    """encap_finish after seal_batch (the UDP checksum IPv6 needs); offsets and lengths then
    describe the ESP packets, as after encap_batch."""
    cdef uint32_t i, ok = 0
    _own(sa, ops, KIND_SEAL)
    _lock(sa)
    for i in range(ops.n):
        if ops.ops[i].status == Status.OK:
            encap_finish(&sa.c, &ops.meta[i])
            ops.b.off[i] = ops.meta[i].start - ops.b.data
            ops.b.lens[i] = ops.meta[i].len
            ok += 1
        ops.b.status[i] = ops.ops[i].status
    _unlock(sa)
    return ok
