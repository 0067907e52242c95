# cython: language_level=3
# fastpath's headers call libcrypto (and use its low-level digests, deprecated in OpenSSL 3):
# distutils: libraries = crypto
# distutils: define_macros = OPENSSL_SUPPRESS_DEPRECATED=1
"""The Cython level of a forwarder: the kernel's burst calls without Python in between.

A forwarder written in Cython cimports the SA type and calls its batch kernel with the GIL
released, over the same arena layout as the Python API (the README's batch contract). This
one carries a burst through a tunnel: one SA encapsulates every packet in place, the peer SA
decapsulates the ones that came out OK. Build it against the fastpath that `import fastpath`
finds (its .pxd files on sys.path, its C headers in fastpath.get_include(); the library and
the macro come from the distutils comments above):

    CFLAGS="-I$(python -c 'import fastpath; print(fastpath.get_include())')" cythonize -i examples/cforward.pyx

(or an Extension with include_dirs=[fastpath.get_include()]; see docs/embedding.md);
tests/fastpath/test_cimport.py builds and runs it.
"""

from libc.stdint cimport uint8_t, uint32_t, int64_t
from libc.stdlib cimport malloc, free

from fastpath.sa cimport SAState


cdef uint32_t tunnel(SAState tx, SAState rx, uint8_t *buf, size_t size, int64_t *off, uint32_t *lens,
                     uint8_t *status, uint32_t n, size_t stride, uint32_t *ok_idx) noexcept nogil:
    """Packet i is buf[off[i] : off[i] + lens[i]] in slot i (stride bytes, headroom in front).
    Returns how many came out of the tunnel; status[i] says what happened to each."""
    cdef uint32_t i, m = 0
    tx.encap_burst_c(buf, size, off, lens, status, n, stride)
    for i in range(n):
        if status[i] == 0:                  # Status.OK
            ok_idx[m] = i
            m += 1
    # idx: only the packets that were encapsulated; the others keep their status
    return rx.decap_burst_c(buf, size, off, lens, status, m, True, ok_idx)


def run(SAState tx, SAState rx, uint8_t[::1] buf, int64_t[::1] off, uint32_t[::1] lens, uint8_t[::1] status,
        size_t stride):
    """The Python face for a test: the arrays as numpy or array.array / bytearray."""
    cdef uint32_t n = <uint32_t>off.shape[0], got
    if lens.shape[0] != n or status.shape[0] < n or n == 0:
        raise ValueError("offsets, lengths and status must describe the same packets")
    if <size_t>buf.shape[0] < n * stride:
        raise ValueError("the buffer holds fewer slots than packets")
    cdef uint32_t *ok_idx = <uint32_t *>malloc(n * sizeof(uint32_t))
    if ok_idx == NULL:
        raise MemoryError()
    try:
        with nogil:
            got = tunnel(tx, rx, &buf[0], buf.shape[0], &off[0], &lens[0], &status[0], n, stride, ok_idx)
    finally:
        free(ok_idx)
    return got
