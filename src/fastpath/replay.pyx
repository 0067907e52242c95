"""The anti-replay window; the ReplayWindow class exists so tests can drive it directly."""

from libc.stdlib cimport calloc, free
from libc.stdint cimport uint32_t, uint64_t
from fastpath.status cimport Status
from fastpath.wire cimport REPLAY_MAX

from fastpath import status as _status


cdef int replay_init(replay_t *r, uint32_t size) except -1:
    cdef uint32_t words = 1, need
    if size > REPLAY_MAX:
        raise ValueError(f"replay window {size} is larger than the maximum {REPLAY_MAX}")
    r.top = 0
    r.size = size
    r.bits = NULL
    r.mask = 0
    if size == 0:
        return 0
    # hold size bits plus one spare word, so the word being cleared while sliding is never
    # one that still holds part of the window (RFC 6479 section 2)
    need = (size + 63) // 64 + 1
    while words < need:
        words <<= 1
    r.bits = <uint64_t *>calloc(words, sizeof(uint64_t))
    if r.bits == NULL:
        raise MemoryError()
    r.mask = words - 1
    return 0


cdef void replay_resume(replay_t *r, uint64_t top) noexcept nogil:
    """Continue a window whose highest received number was *top*, bitmap unknown: every
    number up to top counts as received, so a resumed SA never accepts a replay (it may
    refuse a late original, the safe side)."""
    cdef uint32_t i
    r.top = top
    if r.size and top:
        for i in range(r.mask + 1):
            r.bits[i] = ~(<uint64_t>0)
        # numbers above top in top's own word are not received yet; the words after it are
        # cleared by replay_update as the window advances into them
        r.bits[(top >> 6) & r.mask] = ~(<uint64_t>0) >> (63 - (top & 63))


cdef void replay_free(replay_t *r) noexcept nogil:
    free(r.bits)
    r.bits = NULL


cdef class ReplayWindow:
    """A standalone window: ``check``/``update`` return a :class:`fastpath.status.Status`."""
    cdef replay_t r

    def __cinit__(self, uint32_t size=1024):
        replay_init(&self.r, size)

    def __dealloc__(self):
        replay_free(&self.r)

    @property
    def size(self):
        return self.r.size

    @property
    def top(self):
        return self.r.top

    def check(self, uint64_t seq):
        return _status.Status(replay_check(&self.r, seq))

    def update(self, uint64_t seq):
        return _status.Status(replay_update(&self.r, seq))

    def esn_infer(self, uint32_t seql):
        """The full 64-bit sequence number inferred for a received low half, or None when
        no valid epoch exists for it."""
        cdef uint64_t seq
        if replay_esn_infer(&self.r, seql, &seq) != Status.OK:
            return None
        return seq
