# Anti-replay window: RFC 4303 section 3.4.3 semantics, stored as the RFC 6479 ring of
# 64-bit words so that sliding the window clears whole words instead of shifting bits.
#
# check() is the cheap read-only pre-check done before any crypto; update() is the
# authoritative step done only after the ICV verified, and repeats the check so that two
# copies of one packet inside the same batch cannot both pass (DPDK's prepare/process split).

from libc.stdint cimport uint32_t, uint64_t
from fastpath.status cimport Status

ctypedef struct replay_t:
    uint64_t top        # highest authenticated sequence number (64-bit with ESN); 0 = none yet
    uint64_t *bits      # ring of nwords words; bit (s & 63) of word (s >> 6) & mask is packet s
    uint32_t size       # window size in packets; 0 = anti-replay off
    uint32_t mask       # nwords - 1 (nwords is a power of two holding size + 64 bits)

cdef int replay_init(replay_t *r, uint32_t size) except -1
cdef void replay_resume(replay_t *r, uint64_t top) noexcept nogil
cdef void replay_free(replay_t *r) noexcept nogil


cdef inline Status replay_check(const replay_t *r, uint64_t seq) noexcept nogil:
    if seq == 0:
        # the first packet an SA sends is 1; a full value of 0 is never valid (3.3.3)
        return Status.TOO_OLD
    if r.size == 0 or seq > r.top:
        return Status.OK
    if r.top - seq >= r.size:
        return Status.TOO_OLD
    if (r.bits[(seq >> 6) & r.mask] >> (seq & 63)) & 1:
        return Status.REPLAY
    return Status.OK


cdef inline Status replay_update(replay_t *r, uint64_t seq) noexcept nogil:
    cdef Status st = replay_check(r, seq)
    cdef uint64_t word, last, n, i
    if st != Status.OK:
        return st
    if seq > r.top:
        if r.size:
            word = r.top >> 6
            last = seq >> 6
            n = last - word
            if n > <uint64_t>r.mask + 1:
                n = <uint64_t>r.mask + 1
            i = 1
            while i <= n:
                r.bits[(word + i) & r.mask] = 0
                i += 1
        r.top = seq
    if r.size:
        r.bits[(seq >> 6) & r.mask] |= (<uint64_t>1) << (seq & 63)
    return Status.OK


cdef inline Status replay_esn_infer(const replay_t *r, uint32_t seql, uint64_t *seq) noexcept nogil:
    """RFC 4303 Appendix A2.1: guess the high 32 bits of a received sequence number from
    the window's top (Tl, Th) and size W. Case A: the window does not span a 2^32 boundary;
    case B: it does (Tl < W - 1)."""
    cdef uint32_t tl = <uint32_t>r.top
    cdef uint32_t th = <uint32_t>(r.top >> 32)
    cdef uint32_t w = r.size if r.size else REPLAY_WINDOW_ESN_DEFAULT
    cdef uint32_t bottom = tl - w + 1          # wraps modulo 2^32 in case B, as the RFC intends
    cdef uint32_t seqh
    if tl >= w - 1:                            # case A
        seqh = th if seql >= bottom else th + 1
    else:                                      # case B
        if seql >= bottom:
            if th == 0:
                # before the first 2^32 packets: no earlier epoch exists
                return Status.TOO_OLD
            seqh = th - 1
        else:
            seqh = th
    seq[0] = (<uint64_t>seqh << 32) | seql
    return Status.OK


cdef enum:
    # ESN inference needs a window; with anti-replay off the RFC's default size is used
    REPLAY_WINDOW_ESN_DEFAULT = 32
