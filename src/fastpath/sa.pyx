"""SAState: the kernel half of an ESP security association.

An SAState is built once from fully validated parameters (ipsp builds them from
configuration or the key manager) and then only processes packets. Every per-SA decision is
made here, in ``__init__``: transform functions, key schedules, the outer header template,
lengths. Single-packet calls take any buffer-protocol object; batch calls take one buffer and
offset/length/status arrays, release the GIL once and write a status per packet.
"""

import os

from cpython.buffer cimport (
    PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBUF_FORMAT, PyBUF_C_CONTIGUOUS)
from cpython.pythread cimport (
    PyThread_allocate_lock, PyThread_free_lock, PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, uintptr_t, UINT32_MAX
from libc.string cimport memset, memcpy, strchr

from fastpath._include.compat cimport fp_store_be16, fp_csum_add
from fastpath.crypto cimport crypto_init, crypto_free, CIPHER_AES_CBC, CIPHER_3DES_CBC, CIPHER_DES_CBC
from fastpath.crypto import Cipher, Integ, Backend
from fastpath.esp_in cimport decap_burst, decap_one
from fastpath.esp_out cimport encap_burst, encap_one
from fastpath.replay cimport replay_init, replay_free, replay_resume
from fastpath.state cimport *
from fastpath.status cimport Status, N_STATUS
from fastpath.status import raise_for_status, status_name
from fastpath.wire cimport *

TUNNEL = MODE_TUNNEL
TRANSPORT = MODE_TRANSPORT
IP = FRAMING_IP
ESP = FRAMING_ESP
DF_COPY_INNER = DF_COPY
DF_ALWAYS = DF_SET
DF_NEVER = DF_CLEAR

# below this many packets a batch keeps the GIL: releasing it costs more than it frees
cdef uint32_t NOGIL_MIN_PACKETS = 8
# packet numbers are uint32 (indices, the C level's counts)
cdef Py_ssize_t MAX_BATCH = 0xffffffff


cdef inline uint32_t _packet_len(Py_ssize_t n) noexcept nogil:
    # a packet's length as the kernel takes it (uint32): a buffer past 4 GiB is cut to the
    # largest length, which every check refuses, not wrapped to its low 32 bits, which could
    # make it look like a short, valid packet
    return <uint32_t>n if n < <Py_ssize_t>UINT32_MAX else UINT32_MAX


cdef inline int _acquire(object obj, Py_buffer *view, bint writable, str what) except -1:
    try:
        PyObject_GetBuffer(obj, view, (PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) if writable
                           else PyBUF_SIMPLE)
    except BufferError as exc:
        kind = "a writable, contiguous buffer" if writable else "a contiguous buffer"
        raise BufferError(f"{what} must be {kind}: {exc}") from None
    except TypeError:
        raise TypeError(f"{what} must support the buffer protocol, not {type(obj).__name__}") from None
    return 0


cdef class SAState:
    """One ESP security association's kernel state (unidirectional in RFC 4301 terms; one
    object can both encapsulate and decapsulate, keeping independent state for each)."""

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()
        self._closed = True          # until __init__ has built everything

    def __init__(self, *, uint32_t spi, int cipher, int integ=0, int icv_len=0,
                 enc_key=b"", auth_key=b"", int mode=MODE_TUNNEL, int framing=FRAMING_IP,
                 src=None, dst=None, bint udp=False, int sport=UDP_ENCAP_PORT,
                 int dport=UDP_ENCAP_PORT, bint esn=False, uint32_t replay_window=REPLAY_DEFAULT,
                 int tfc_pad=0, bint implicit_iv=False, int backend=0, int df=DF_COPY,
                 dscp=None, int ttl=64, uint64_t seq_out=0, uint64_t replay_top=0):
        if not self._closed:
            raise RuntimeError("SAState is already initialised")
        if spi <= SPI_RESERVED_MAX:
            raise ValueError(f"SPI {spi:#x} is reserved (RFC 4303 2.1: 0-255 are not assigned to SAs)")
        if mode not in (MODE_TUNNEL, MODE_TRANSPORT):
            raise ValueError(f"mode must be TUNNEL or TRANSPORT, got {mode}")
        if framing not in (FRAMING_IP, FRAMING_ESP):
            raise ValueError(f"framing must be IP or ESP, got {framing}")
        if mode == MODE_TRANSPORT and framing != FRAMING_IP:
            raise ValueError("transport mode needs the packet's own IP header (framing IP)")
        if esn and replay_window == 0:
            raise ValueError("ESN needs a replay window to infer the high-order bits (RFC 4303 A2)")
        if replay_window and replay_window < REPLAY_MIN:
            raise ValueError(f"replay_window must be 0 (off) or {REPLAY_MIN}..{REPLAY_MAX}, got {replay_window}")
        if not 0 <= tfc_pad <= 65535:
            raise ValueError(f"tfc_pad must be 0..65535, got {tfc_pad}")
        if tfc_pad and mode != MODE_TUNNEL:
            raise ValueError("TFC padding needs tunnel mode: only an inner IP header delimits it (RFC 4303 2.7)")
        if df not in (DF_COPY, DF_SET, DF_CLEAR):
            raise ValueError(f"df must be DF_COPY_INNER, DF_ALWAYS or DF_NEVER, got {df}")
        if dscp is not None and not 0 <= dscp <= 63:
            raise ValueError(f"dscp must be 0..63 or None (copy), got {dscp}")
        if not 1 <= ttl <= 255:
            raise ValueError(f"ttl must be 1..255, got {ttl}")
        if udp and not (0 < sport <= 65535 and 0 < dport <= 65535):
            raise ValueError(f"UDP ports must be 1..65535, got {sport} and {dport}")
        cdef bytes bsrc = b"", bdst = b""
        if mode == MODE_TUNNEL and framing == FRAMING_IP:
            if src is None or dst is None:
                raise ValueError("tunnel mode needs the outer src and dst addresses")
            bsrc, bdst = bytes(src), bytes(dst)
            if len(bsrc) not in (4, 16) or len(bsrc) != len(bdst):
                raise ValueError("src and dst must both be IPv4 (4 bytes) or both IPv6 (16 bytes)")
        cdef uint64_t seq_max = 0xffffffffffffffff if esn else 0xffffffff
        if seq_out > seq_max:
            raise ValueError(f"seq_out {seq_out} is beyond the last sequence number {seq_max}")
        if replay_top > seq_max:
            raise ValueError(f"replay_top {replay_top} is beyond the last sequence number {seq_max}")

        memset(&self.c, 0, sizeof(sa_t))
        cdef const uint8_t[::1] ek = enc_key
        cdef const uint8_t[::1] ak = auth_key
        try:
            replay_init(&self.c.replay, replay_window)
            crypto_init(&self.c.crypto, cipher, integ, icv_len, ek, ak, backend, esn, implicit_iv)
        except BaseException:
            replay_free(&self.c.replay)
            raise

        c = &self.c
        c.spi = spi
        c.mode = mode
        c.framing = framing
        c.udp = udp
        c.esn = esn
        c.df_mode = df
        c.dscp = DSCP_COPY if dscp is None else dscp
        c.tfc_max = tfc_pad
        c.sport = sport
        c.dport = dport
        # seq_out and replay_top resume an SA's counters (failover, tests near 2^32)
        c.seq_out = seq_out
        replay_resume(&c.replay, replay_top)
        c.seq_max = seq_max
        c.rx_align = c.crypto.block if cipher in (CIPHER_AES_CBC, CIPHER_3DES_CBC, CIPHER_DES_CBC) else 1
        cdef uint8_t proto = IPPROTO_UDP if udp else IPPROTO_ESP
        cdef uint16_t iplen = 0
        if mode == MODE_TUNNEL and framing == FRAMING_IP:
            c.outer_v6 = len(bsrc) == 16
            if c.outer_v6:
                # RFC 8200 section 3; payload length and traffic class are set per packet
                c.outer[0] = 0x60
                c.outer[6] = proto
                c.outer[7] = ttl
                memcpy(c.outer + 8, <const char *>bsrc, 16)
                memcpy(c.outer + 24, <const char *>bdst, 16)
                iplen = IPV6_HDR_LEN
            else:
                # RFC 791; length, identification, DF, TOS and checksum are set per packet
                c.outer[0] = 0x45
                c.outer[8] = ttl
                c.outer[9] = proto
                memcpy(c.outer + 12, <const char *>bsrc, 4)
                memcpy(c.outer + 16, <const char *>bdst, 4)
                iplen = IPV4_HDR_MIN
                # the words that never change: version/IHL (TOS added per packet), TTL/protocol,
                # addresses; the checksum is then finished from values, never by re-reading
                c.ip4_sum = fp_csum_add(0x4500, c.outer + 8, 12)
            c.ip_id = int.from_bytes(os.urandom(2), "big")
        if udp and framing == FRAMING_IP:
            # RFC 3948 section 2.1; the IPv4 checksum stays zero, IPv6's is filled per packet
            fp_store_be16(c.outer + iplen, sport)
            fp_store_be16(c.outer + iplen + 2, dport)
            c.outer_len = iplen + UDP_HDR_LEN
        else:
            c.outer_len = iplen
        c.prefix = c.outer_len + ESP_HDR_LEN + c.crypto.iv_len
        self._closed = False

    def __dealloc__(self):
        self._wipe()
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    cdef void _wipe(self) noexcept:
        if not self._closed:
            crypto_free(&self.c.crypto)
            replay_free(&self.c.replay)
            self._closed = True

    def close(self):
        """Wipe the keys and free the SA's state; every later call raises SAClosedError (batch
        calls mark their packets SA_DEAD and count them). Waits for a batch running on another
        thread, so the counters read after close() include it."""
        with nogil:
            PyThread_acquire_lock(self._lock, WAIT_LOCK)
        try:
            self._wipe()
        finally:
            PyThread_release_lock(self._lock)

    # ------------------------------------------------------------------ properties

    @property
    def closed(self):
        return self._closed

    @property
    def spi(self):
        return self.c.spi

    @property
    def mode(self):
        return self.c.mode

    @property
    def cipher(self):
        return Cipher(self.c.crypto.cipher)

    @property
    def integ(self):
        return Integ(self.c.crypto.integ)

    @property
    def backend(self):
        """The backend chosen for this SA's batches."""
        return Backend(self.c.crypto.backend)

    @property
    def iv_len(self):
        return self.c.crypto.iv_len

    @property
    def icv_len(self):
        return self.c.crypto.icv_len

    @property
    def block_size(self):
        return self.c.crypto.block

    @property
    def esn(self):
        return bool(self.c.esn)

    @property
    def seq_out(self):
        """The last sequence number sent (0 before the first packet)."""
        return self.c.seq_out

    @property
    def seq_exhausted(self):
        """True once the last sequence number has been sent: the SA must be rekeyed."""
        return self.c.seq_out >= self.c.seq_max

    @property
    def replay_window(self):
        return self.c.replay.size

    @property
    def replay_top(self):
        """The highest authenticated inbound sequence number (0 before the first)."""
        return self.c.replay.top

    @property
    def headroom(self):
        """Bytes an outbound packet needs in front of it (outer headers, ESP header, IV).
        Transport mode moves the packet's own IP header into this room."""
        return self.c.prefix

    @property
    def tailroom(self):
        """Bytes an outbound packet may need after it: the longest padding, the trailer, the
        ICV and the largest TFC padding."""
        return self.c.crypto.block - 1 + ESP_TRAILER_LEN + self.c.crypto.icv_len + self.c.tfc_max

    def overhead(self, uint32_t length, uint32_t header_len=0):
        """Bytes ESP adds to a packet of this length (without TFC padding): what path MTU
        arithmetic needs (the seed: routers must account for the encapsulation). In transport
        mode pass header_len, the bytes of the packet's own IP header (with the IPv6
        extension headers that stay in front of ESP): only what follows it is padded."""
        if self.c.mode == MODE_TRANSPORT:
            if header_len > length:
                raise ValueError(f"header_len {header_len} is larger than the packet ({length})")
            length -= header_len
        cdef uint32_t pad = (0u - (length + ESP_TRAILER_LEN)) & (self.c.crypto.block - 1)
        return self.c.prefix + pad + ESP_TRAILER_LEN + self.c.crypto.icv_len

    def max_inner(self, uint32_t mtu, uint32_t header_len=0):
        """The longest packet whose encapsulation fits *mtu* bytes (0 if none does): the MTU
        to announce to inner senders in an ICMP "fragmentation needed" or "packet too big"
        (RFC 4301 8.2.1). header_len as for overhead() (transport mode)."""
        cdef uint32_t n
        if mtu <= self.c.prefix + header_len:
            return 0
        # overhead() grows by at most block - 1 as the length shrinks: start just below the
        # answer and step up while the next length still fits
        n = mtu - self.overhead(mtu, min(header_len, mtu))
        while n + 1 + self.overhead(n + 1, min(header_len, n + 1)) <= mtu:
            n += 1
        while n and n + self.overhead(n, min(header_len, n)) > mtu:
            n -= 1
        return n

    def set_path_mtu(self, uint32_t mtu, *, bint fragment_inner=False):
        """Encapsulate only what fits *mtu* bytes (0: no limit). An outbound packet whose
        result would be longer gets TOO_BIG and is left as it came, for the caller to send
        an ICMP error or fragment it, when it is IPv4 with DF set, IPv6 longer than 1280
        bytes, or (fragment_inner, tunnel mode) IPv4 with DF clear; any other packet is
        encapsulated whole and the outer IP layer fragments it. TFC padding is cut to fit."""
        if mtu and not IPV4_MIN_REASSEMBLY <= mtu <= IPV4_MAX_TOTAL:
            raise ValueError(f"path MTU must be 0 (none) or {IPV4_MIN_REASSEMBLY}..{IPV4_MAX_TOTAL}, got {mtu}")
        with nogil:
            PyThread_acquire_lock(self._lock, WAIT_LOCK)
        self.c.path_mtu = <uint16_t>mtu
        self.c.frag_inner = fragment_inner
        PyThread_release_lock(self._lock)

    @property
    def path_mtu(self):
        """The path MTU outbound packets are checked against (0: none)."""
        return self.c.path_mtu

    @property
    def fragment_inner(self):
        """Whether IPv4 packets with DF clear above the path MTU come back TOO_BIG."""
        return bool(self.c.frag_inner)

    def counters(self):
        """Packets, bytes and each status per direction, e.g.
        ``{"out": {"packets": 10, "bytes": 5000, "NO_ROOM": 1, ...}, "in": {...}}``. They
        survive close(): packets that meet a closed SA are counted as SA_DEAD."""
        cdef uint64_t oc[N_STATUS]
        cdef uint64_t ic[N_STATUS]
        cdef uint64_t ob, ib
        # one snapshot between batches: a batch adds its counts at its end, under the lock
        with nogil:
            PyThread_acquire_lock(self._lock, WAIT_LOCK)
        memcpy(oc, self.c.out_count, sizeof(oc))
        memcpy(ic, self.c.in_count, sizeof(ic))
        ob, ib = self.c.out_bytes, self.c.in_bytes
        PyThread_release_lock(self._lock)
        out = {"packets": oc[0], "bytes": ob}
        inb = {"packets": ic[0], "bytes": ib}
        for k in range(1, N_STATUS):
            name = status_name(k)
            out[name] = oc[k]
            inb[name] = ic[k]
        return {"out": out, "in": inb}

    # ------------------------------------------------------------------ single packets

    def encap_into(self, packet, out):
        """Encapsulate *packet* (an IP packet) into the writable buffer *out*; returns the
        length written at out[0:]. Raises a PacketError subclass when the packet cannot be
        processed (the status is on the exception)."""
        cdef Py_buffer pin, pout
        cdef uint32_t n = 0
        cdef int st
        _acquire(packet, &pin, False, "packet")
        try:
            _acquire(out, &pout, True, "out")
            try:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)
                if self._closed:
                    st = Status.SA_DEAD
                    self.c.out_count[<int>st] += 1
                else:
                    st = encap_one(&self.c, <const uint8_t *>pin.buf, _packet_len(pin.len),
                                   <uint8_t *>pout.buf, <size_t>pout.len, &n)
                PyThread_release_lock(self._lock)
            finally:
                PyBuffer_Release(&pout)
        finally:
            PyBuffer_Release(&pin)
        if st != Status.OK:
            raise_for_status(st)
        return n

    def encap(self, packet):
        """Encapsulate *packet* and return the ESP packet as new bytes."""
        cdef Py_buffer pin
        _acquire(packet, &pin, False, "packet")
        cdef Py_ssize_t cap = pin.len + self.c.prefix + self.c.crypto.block + ESP_TRAILER_LEN + MAX_ICV_LEN + self.c.tfc_max
        PyBuffer_Release(&pin)
        out = bytearray(cap)
        n = self.encap_into(packet, out)
        return bytes(out[:n])

    def decap_into(self, packet, out, *, bint verify=True):
        """Decapsulate *packet* into the writable buffer *out*; returns the length of the
        result at out[0:]. The input is never modified. With verify=False the ICV is stripped
        unchecked (for captures where only the cipher key is known)."""
        cdef Py_buffer pin, pout
        cdef uint32_t n = 0
        cdef int st
        _acquire(packet, &pin, False, "packet")
        try:
            _acquire(out, &pout, True, "out")
            try:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)
                if self._closed:
                    st = Status.SA_DEAD
                    self.c.in_count[<int>st] += 1
                else:
                    st = decap_one(&self.c, <const uint8_t *>pin.buf, _packet_len(pin.len),
                                   <uint8_t *>pout.buf, <size_t>pout.len, &n, verify)
                PyThread_release_lock(self._lock)
            finally:
                PyBuffer_Release(&pout)
        finally:
            PyBuffer_Release(&pin)
        if st != Status.OK:
            raise_for_status(st)
        return n

    def decap(self, packet, *, bint verify=True):
        """Decapsulate *packet* and return the result as new bytes."""
        cdef Py_buffer pin
        _acquire(packet, &pin, False, "packet")
        cdef Py_ssize_t cap = pin.len
        PyBuffer_Release(&pin)
        out = bytearray(cap)
        n = self.decap_into(packet, out, verify=verify)
        return bytes(out[:n])

    # ------------------------------------------------------------------ batches

    cdef uint32_t encap_burst_c(self, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                                uint8_t *status, uint32_t n, size_t stride,
                                const uint32_t *idx=NULL) noexcept nogil:
        cdef uint32_t ok = 0, i
        PyThread_acquire_lock(self._lock, WAIT_LOCK)
        if self._closed:
            for i in range(n):
                status[idx[i] if idx != NULL else i] = Status.SA_DEAD
            # counters outlive the keys: a batch that meets a closed SA is counted on it
            self.c.out_count[<int>Status.SA_DEAD] += n
        else:
            ok = encap_burst(&self.c, buf, buflen, off, lens, status, idx, n, stride)
        PyThread_release_lock(self._lock)
        return ok

    cdef uint32_t decap_burst_c(self, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                                uint8_t *status, uint32_t n, bint verify,
                                const uint32_t *idx=NULL) noexcept nogil:
        cdef uint32_t ok = 0, i
        PyThread_acquire_lock(self._lock, WAIT_LOCK)
        if self._closed:
            for i in range(n):
                status[idx[i] if idx != NULL else i] = Status.SA_DEAD
            # counters outlive the keys: a batch that meets a closed SA is counted on it
            self.c.in_count[<int>Status.SA_DEAD] += n
        else:
            ok = decap_burst(&self.c, buf, buflen, off, lens, status, idx, n, verify)
        PyThread_release_lock(self._lock)
        return ok

    def encap_batch(self, buf, offsets, lengths, status, stride, *, indices=None):
        """Encapsulate packets in place. Packet i is buf[offsets[i] : offsets[i] + lengths[i]]
        and must lie in slot i, buf[i * stride : (i + 1) * stride]: headers are written in
        front of it (``headroom`` bytes) and the trailer and ICV after it (up to ``tailroom``).
        offsets (int64) and lengths (uint32) are updated for packets that succeed; status[i]
        (uint8) gets each packet's Status. With indices (a uint32 array of distinct packet
        numbers) only those packets are processed and only their entries change. Returns the
        number of packets that succeeded. A packet outside its slot or the buffer, a bad
        stride or index, arrays of different lengths or sharing memory raise ValueError
        before anything is processed (docs/embedding.md, "Caller errors")."""
        return self._batch(buf, offsets, lengths, status, batch_stride(stride), True, indices)

    def decap_batch(self, buf, offsets, lengths, status, *, bint verify=True, indices=None):
        """Decapsulate packets in place: packet i is buf[offsets[i] : offsets[i] + lengths[i]];
        results never grow, so no slot rule applies. offsets and lengths are updated for
        packets that succeed; status[i] gets each packet's Status. Returns the number of
        packets that succeeded. indices and the caller errors (ValueError) as for encap_batch."""
        return self._batch(buf, offsets, lengths, status, 0, verify, indices)

    cdef uint32_t _batch(self, object buf, object offsets, object lengths, object status,
                         Py_ssize_t stride, bint verify, object indices) except? 0xffffffff:
        # the buffers are taken once per call, checked, held for the whole call and released
        cdef batch_bufs_t b
        cdef Py_buffer vi
        cdef uint32_t ok = 0, count, j
        cdef const uint32_t *idx = NULL
        cdef bytearray seen
        cdef bint have_idx = False
        batch_take(&b, buf, offsets, lengths, status)
        try:
            count = b.n
            if indices is not None:
                acquire_array(indices, &vi, 4, b"IL", "indices")
                have_idx = True
                # statuses are written at indices: they must not be able to rewrite them
                batch_apart(&b, &vi, "indices")
                idx = <const uint32_t *>vi.buf
                if vi.len // 4 > b.n:
                    raise ValueError(f"indices holds {vi.len // 4} packet numbers for {b.n} packets")
                count = <uint32_t>(vi.len // 4)
                seen = bytearray(b.n)
                for j in range(count):
                    if idx[j] >= b.n or seen[idx[j]]:
                        raise ValueError(f"indices[{j}] = {idx[j]} is " + (
                            f"not a packet number below {b.n}" if idx[j] >= b.n else "repeated"))
                    seen[idx[j]] = 1
            batch_check_places(&b, stride, idx, count)
            if count == 0:
                return 0
            if count >= NOGIL_MIN_PACKETS:
                with nogil:
                    ok = self._burst(b.data, b.size, b.off, b.lens, b.status, idx, count, stride, verify)
            else:
                ok = self._burst(b.data, b.size, b.off, b.lens, b.status, idx, count, stride, verify)
        finally:
            if have_idx:
                PyBuffer_Release(&vi)
            batch_release(&b)
        return ok

    cdef inline uint32_t _burst(self, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                                uint8_t *status, const uint32_t *idx, uint32_t n, size_t stride,
                                bint verify) noexcept nogil:
        # stride 0 marks decapsulation, which needs no slots
        if stride:
            return self.encap_burst_c(buf, buflen, off, lens, status, n, stride, idx)
        return self.decap_burst_c(buf, buflen, off, lens, status, n, verify, idx)


cdef Py_ssize_t as_ssize(object value, str what) except? -1:
    """A size argument as a C size; an integer past 64 bits is a ValueError like any other
    bad size (a conversion's OverflowError is not), a non-integer a TypeError."""
    try:
        return value
    except OverflowError:
        raise ValueError(f"{what} does not fit a 64-bit size") from None


cdef Py_ssize_t batch_stride(object stride) except -1:
    cdef Py_ssize_t s = as_ssize(stride, "stride")
    if s <= 0:
        raise ValueError(f"stride must be positive, got {s}")
    return s


cdef int batch_take(batch_bufs_t *b, object buf, object offsets, object lengths,
                    object status, bint status_optional=False) except -1:
    """Take the buffers of a batch call and check that they describe one batch; status may
    be None with status_optional (I/O calls that write no status). On an error nothing
    stays held."""
    cdef Py_ssize_t n
    b.held = 0
    b.status = NULL
    try:
        if status is None and not status_optional:
            raise TypeError("status must be a writable uint8 array, not None")
        acquire_array(buf, &b.views[0], 1, b"Bbc", "buf")
        b.held = 1
        acquire_array(offsets, &b.views[1], 8, b"qln", "offsets")
        b.held = 2
        acquire_array(lengths, &b.views[2], 4, b"IL", "lengths")
        b.held = 3
        n = b.views[1].len // 8
        if n > MAX_BATCH:
            raise ValueError(f"offsets holds {n} entries: a batch is at most {MAX_BATCH} packets")
        b.n = <uint32_t>n
        if status is not None:
            acquire_array(status, &b.views[3], 1, b"B", "status")
            b.held = 4
            b.status = <uint8_t *>b.views[3].buf
        if b.views[2].len // 4 != b.n or (status is not None and b.views[3].len < b.n):
            raise ValueError(f"offsets ({b.n}), lengths ({b.views[2].len // 4})"
                             + (f" and status ({b.views[3].len})" if status is not None else "")
                             + " must describe the same number of packets")
        # the kernel writes some of these while it reads the others: shared memory would let
        # a write change a checked offset or length under it
        if (_overlap(b.views[0].buf, b.views[0].len, b.views[1].buf, b.views[1].len)
                or _overlap(b.views[0].buf, b.views[0].len, b.views[2].buf, b.views[2].len)
                or _overlap(b.views[1].buf, b.views[1].len, b.views[2].buf, b.views[2].len)):
            check_apart(&b.views[1], "offsets", &b.views[0], "buf")
            check_apart(&b.views[2], "lengths", &b.views[0], "buf")
            check_apart(&b.views[2], "lengths", &b.views[1], "offsets")
        if status is not None:
            batch_apart(b, &b.views[3], "status")
    except BaseException:
        batch_release(b)
        raise
    b.data = <uint8_t *>b.views[0].buf
    b.size = b.views[0].len
    b.off = <int64_t *>b.views[1].buf
    b.lens = <uint32_t *>b.views[2].buf
    return 0


cdef void batch_release(batch_bufs_t *b) noexcept:
    while b.held:
        b.held -= 1
        PyBuffer_Release(&b.views[b.held])


cdef inline bint _overlap(const void *a, Py_ssize_t alen, const void *b, Py_ssize_t blen) noexcept nogil:
    cdef uintptr_t pa = <uintptr_t>a, pb = <uintptr_t>b
    return alen > 0 and blen > 0 and pa < pb + <uintptr_t>blen and pb < pa + <uintptr_t>alen


cdef int check_apart(const Py_buffer *a, str aname, const Py_buffer *b, str bname) except -1:
    if _overlap(a.buf, a.len, b.buf, b.len):
        _shared(aname, bname)
    return 0


cdef int check_disjoint(const void *a, Py_ssize_t alen, str aname, const void *b, Py_ssize_t blen,
                        str bname) except -1:
    if _overlap(a, alen, b, blen):
        _shared(aname, bname)
    return 0


cdef int _shared(str aname, str bname) except -1:
    raise ValueError(f"{aname} and {bname} share memory: each array of a batch call must be its own")


cdef int batch_apart(const batch_bufs_t *b, const Py_buffer *view, str what) except -1:
    cdef int k
    for k in range(b.held):
        if &b.views[k] != view and _overlap(view.buf, view.len, b.views[k].buf, b.views[k].len):
            break
    else:
        return 0
    check_apart(view, what, &b.views[0], "buf")
    check_apart(view, what, &b.views[1], "offsets")
    check_apart(view, what, &b.views[2], "lengths")
    if b.held == 4 and view != &b.views[3]:
        check_apart(view, what, &b.views[3], "status")
    return 0


cdef int batch_check_places(const batch_bufs_t *b, Py_ssize_t stride, const uint32_t *idx,
                            uint32_t count) except -1:
    return check_places(b.size, b.off, b.lens, stride, idx, count)


cdef int check_places(Py_ssize_t size, const int64_t *off, const uint32_t *lens, Py_ssize_t stride,
                      const uint32_t *idx, Py_ssize_t count, const uint8_t *status=NULL,
                      const uint8_t *table=NULL, Py_ssize_t front=0) except -1:
    # Every bound is formed from values already known to be in [0, size], so no sum or
    # product can overflow whatever was passed: slot i starts inside the buffer only if
    # i <= size // stride, and only then is i * stride computed.
    cdef Py_ssize_t j, i, o, lo = 0, hi = size, last = 0
    cdef uint32_t l
    if stride < 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if stride == 0 and table == NULL and front == 0:
        # the common case of decapsulation and the engine's inbound path, without branches
        for j in range(count):
            i = idx[j] if idx != NULL else j
            o, l = off[i], lens[i]
            if o < 0 or o > size or l > size - o:
                _bad_place(i, o, l, 0, size, 0)
        return 0
    if stride:
        last = size // stride
    for j in range(count):
        i = idx[j] if idx != NULL else j
        if table != NULL and not table[status[i]]:
            continue
        o, l = off[i], lens[i]
        if stride:
            if i > last:
                _bad_place(i, o, l, stride, size, front)
            lo = i * stride
            hi = lo + (stride if stride < size - lo else size - lo)
        if o < lo or o < front or o > hi or l > hi - o:
            _bad_place(i, o, l, stride, size, front)
    return 0


cdef int check_regions(const uint8_t *buf, Py_ssize_t size, const int64_t *off, Py_ssize_t noff,
                       const uint32_t *lens, Py_ssize_t nlens, Py_ssize_t front) except -1:
    """The place check for calls over typed memoryviews (the floors): as many lengths as
    offsets, every region inside buf with front bytes before it, the arrays apart from buf."""
    if noff != nlens:
        raise ValueError(f"offsets ({noff}) and lengths ({nlens}) must describe the same number of packets")
    if noff == 0:
        return 0
    check_disjoint(off, noff * 8, "offsets", buf, size, "buf")
    check_disjoint(lens, nlens * 4, "lengths", buf, size, "buf")
    return check_places(size, off, lens, 0, NULL, noff, NULL, NULL, front)


cdef int _bad_place(Py_ssize_t i, int64_t o, uint32_t l, Py_ssize_t stride, Py_ssize_t size,
                    Py_ssize_t front) except -1:
    # in Python integers: the slot of a huge stride is described as it is, not as it wraps
    cdef object pi = i, ps = stride
    if stride:
        where = f"its slot [{pi * ps}, {(pi + 1) * ps})"
    else:
        where = "the buffer"
    raise ValueError(f"packet {i} (offset {o}, length {l}) is not inside {where} of a {size}-byte buffer"
                     + (f" (with {front} bytes in front of it)" if front else ""))


cdef int acquire_array(object obj, Py_buffer *view, Py_ssize_t itemsize, const char *codes,
                       str what) except -1:
    """A writable, C-contiguous buffer whose items are *itemsize* bytes of one of the struct
    type *codes* (native order), e.g. array('q'), numpy int64, bytearray, memoryviews of them.
    Checked in C: batch calls pay for it on every call."""
    cdef const char *f = b"B"
    _acquire(obj, view, True, what)
    if view.format != NULL:
        f = view.format
    while f[0] == b'@' or f[0] == b'=' or f[0] == b'<':
        f += 1
    if view.itemsize != itemsize or f[0] == 0 or f[1] != 0 or strchr(codes, f[0]) == NULL:
        fmt = (<bytes>view.format).decode() if view.format != NULL else "B"
        PyBuffer_Release(view)
        raise ValueError(f"{what} must hold {itemsize}-byte items of type {'/'.join(codes.decode())}, "
                        f"got format {fmt!r} with {view.itemsize}-byte items")
    return 0
