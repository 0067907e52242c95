"""Inbound ESP (RFC 4303 section 3.4): decapsulate packets.

Stage order, fixed (RFC 4303 3.4.3-3.4.4; DPDK's prepare / process; WireGuard's counter):
  1. parse     - outer IPv4/IPv6 header (fragments refused: the IP layer reassembles,
                 3.4.1), UDP encapsulation (RFC 3948: keepalives and IKE's non-ESP marker
                 are told apart from ESP), SPI, lengths
  2. replay    - the sequence number (its ESN high half inferred, Appendix A2) checked
                 against the window, read-only, before any crypto is spent on the packet
  3. open      - one burst call: the ICV is verified first, then the payload decrypted
                 (for AEAD both in one pass; a forged packet is restored as it came)
  4. commit    - the window updated: only authenticated packets move it, and a second
                 copy of a packet inside the same batch is caught here
  5. strip     - padding and next header checked; tunnel mode yields the inner packet
                 (ECN combined per RFC 6040), transport mode rebuilds the IP header
Decapsulation never grows a packet: the result lies inside the input's bytes (batch) or at
the start of the output buffer (single packet).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memmove, memset

from fastpath._include.compat cimport fp_load_be16, fp_load_be32, fp_store_be16, fp_ipv4_csum, fp_prefetch_packet
from fastpath.crypto cimport crypto_op_t
from fastpath.esp_out cimport CHUNK, PREFETCH_AHEAD
from fastpath.replay cimport replay_check, replay_update, replay_esn_infer
from fastpath.state cimport *
from fastpath.status cimport Status, N_STATUS
from fastpath.wire cimport *


cdef inline Status outer_parse(sa_t *sa, const uint8_t *pkt, uint32_t len, uint32_t *esp_off,
                               uint32_t *esp_end, pkt_meta_t *m) noexcept nogil:
    """Find the ESP header inside an IP packet (and its UDP header, for ESP-in-UDP)."""
    cdef uint32_t ihl, tot, off
    cdef uint8_t proto
    m.ip = <uint8_t *>pkt
    m.has_outer = 1
    if len < 1:
        return Status.TRUNCATED
    if pkt[0] >> 4 == 4:
        if len < IPV4_HDR_MIN:
            return Status.TRUNCATED
        ihl = (pkt[0] & 0x0f) * 4
        tot = fp_load_be16(pkt + 2)
        if ihl < IPV4_HDR_MIN or tot < ihl:
            return Status.BAD_IP_HEADER
        if tot > len:
            return Status.TRUNCATED
        if fp_load_be16(pkt + 6) & (IPV4_MF | IPV4_FRAG_OFFSET_MASK):
            return Status.FRAGMENT
        proto = pkt[9]
        m.nh_off = 9
        m.outer_ecn = pkt[1] & ECN_MASK
        off = ihl
    elif pkt[0] >> 4 == 6:
        if len < IPV6_HDR_LEN:
            return Status.TRUNCATED
        tot = IPV6_HDR_LEN + fp_load_be16(pkt + 4)
        if tot > len:
            return Status.TRUNCATED
        off = IPV6_HDR_LEN
        m.nh_off = 6
        proto = pkt[6]
        while proto == IPPROTO_HOPOPTS or proto == IPPROTO_ROUTING or proto == IPPROTO_DSTOPTS:
            if off + 2 > tot or off + (pkt[off + 1] + 1) * 8 > tot:
                return Status.BAD_IP_HEADER
            m.nh_off = <uint16_t>off
            proto = pkt[off]
            off += (pkt[off + 1] + 1) * 8
        if proto == IPPROTO_FRAGMENT:
            return Status.FRAGMENT
        m.outer_ecn = <uint8_t>((fp_load_be16(pkt) >> 4) & ECN_MASK)
    else:
        return Status.BAD_IP_HEADER
    m.ip_len = <uint16_t>off
    if sa.udp:
        if proto != IPPROTO_UDP:
            return Status.NOT_ESP
        if off + UDP_HDR_LEN > tot:
            return Status.TRUNCATED
        if fp_load_be16(pkt + off + 2) != sa.dport:
            return Status.NOT_ESP
        if fp_load_be16(pkt + off + 4) < UDP_HDR_LEN or off + fp_load_be16(pkt + off + 4) > tot:
            return Status.BAD_IP_HEADER
        tot = off + fp_load_be16(pkt + off + 4)
        off += UDP_HDR_LEN
    elif proto != IPPROTO_ESP:
        return Status.NOT_ESP
    esp_off[0] = off
    esp_end[0] = tot
    return Status.OK


cdef Status decap_prepare(sa_t *sa, const uint8_t *pkt, uint32_t len, uint8_t *out,
                          size_t cap, crypto_op_t *op, pkt_meta_t *m, bint verify) noexcept nogil:
    """Parse one packet and check its sequence number. With out == NULL the packet is
    opened in place; otherwise into out (cap bytes), leaving the input untouched."""
    cdef uint32_t off = 0, end = len, body, seql
    cdef uint64_t seq
    cdef const uint8_t *esp
    cdef Status st
    cdef crypto_t *c = &sa.crypto
    m.has_outer = 0
    m.ip_len = 0
    if sa.framing == FRAMING_IP:
        st = outer_parse(sa, pkt, len, &off, &end, m)
        if st != Status.OK:
            return st
    esp = pkt + off
    if sa.udp:
        # RFC 3948 2.2-2.3: a one-byte 0xFF payload is a NAT keepalive; a zero where the SPI
        # would be is the non-ESP marker in front of an IKE message
        if end - off == 1 and esp[0] == NAT_KEEPALIVE_BYTE:
            return Status.NAT_KEEPALIVE
        if end - off >= 4 and fp_load_be32(esp) == 0:
            return Status.NOT_ESP
    if end - off < ESP_HDR_LEN + c.iv_len + c.icv_len + ESP_TRAILER_LEN:
        return Status.TRUNCATED
    if end - off > IPV4_MAX_TOTAL:
        # no IP packet (without jumbograms) carries more ESP than this
        return Status.OVERSIZE
    body = end - off - ESP_HDR_LEN - c.iv_len - c.icv_len
    if fp_load_be32(esp) != sa.spi:
        return Status.BAD_SPI
    if body & (sa.rx_align - 1):          # rx_align is 1, 8 or 16
        return Status.BAD_LENGTH
    seql = fp_load_be32(esp + 4)
    if sa.esn:
        st = replay_esn_infer(&sa.replay, seql, &seq)
        if st != Status.OK:
            return st
    else:
        seq = seql
    if verify:
        # unauthenticated packets (verify=False) neither consult nor move the window
        st = replay_check(&sa.replay, seq)
        if st != Status.OK:
            return st
    op.esp = <uint8_t *>esp
    op.iv = <uint8_t *>esp + ESP_HDR_LEN if c.iv_len else NULL
    op.src = <uint8_t *>esp + ESP_HDR_LEN + c.iv_len
    op.len = body
    op.icv = op.src + body
    op.seq = seq
    if out == NULL:
        op.dst = op.src
    else:
        # transport mode rebuilds the kept IP header in front of the payload
        if sa.mode == MODE_TRANSPORT:
            if m.ip_len + <size_t>body > cap:
                return Status.NO_ROOM
            op.dst = out + m.ip_len
        else:
            if body > cap:
                return Status.NO_ROOM
            op.dst = out
    return Status.OK


cdef inline Status ecn_decap(sa_t *sa, uint8_t *inner, uint8_t outer_ecn) noexcept nogil:
    # RFC 6040 section 4.2, Figure 4: combine the outer ECN field into the inner one
    cdef uint8_t tos, ecn, new
    cdef uint16_t w
    if inner[0] >> 4 == 4:
        tos = inner[1]
    else:
        tos = <uint8_t>(fp_load_be16(inner) >> 4)
    ecn = tos & ECN_MASK
    if outer_ecn == ECN_CE:
        if ecn == ECN_NOT_ECT:
            return Status.ECN_DROP
        new = ECN_CE
    elif outer_ecn == ECN_ECT1 and ecn == ECN_ECT0:
        new = ECN_ECT1
    else:
        return Status.OK
    if new == ecn:
        return Status.OK
    tos = (tos & ~ECN_MASK) | new
    if inner[0] >> 4 == 4:
        inner[1] = tos
        fp_store_be16(inner + 10, fp_ipv4_csum(inner, (inner[0] & 0x0f) * 4))
    else:
        w = fp_load_be16(inner)
        fp_store_be16(inner, <uint16_t>((w & 0xf00f) | (<uint16_t>tos << 4)))
    return Status.OK


cdef Status decap_finish(sa_t *sa, crypto_op_t *op, pkt_meta_t *m, bint verify) noexcept nogil:
    cdef uint8_t *d = op.dst
    cdef uint32_t pl, nh, plen, k, tot, ihl
    cdef Status st
    if verify:
        st = replay_update(&sa.replay, op.seq)
        if st != Status.OK:
            return st
    # RFC 4303 2.4: the receiver checks the padding it can predict (1, 2, 3, ...)
    pl = d[op.len - 2]
    nh = d[op.len - 1]
    if pl + ESP_TRAILER_LEN > op.len:
        return Status.BAD_PADDING
    plen = op.len - ESP_TRAILER_LEN - pl
    k = 0
    while k < pl:
        if d[plen + k] != <uint8_t>(k + 1):
            return Status.BAD_PADDING
        k += 1
    if nh == IPPROTO_NONE:
        return Status.DUMMY
    if sa.mode == MODE_TUNNEL:
        if nh == IPPROTO_IPIP:
            if plen < IPV4_HDR_MIN or d[0] >> 4 != 4:
                return Status.BAD_NEXT_HEADER
            ihl = (d[0] & 0x0f) * 4
            tot = fp_load_be16(d + 2)
            if ihl < IPV4_HDR_MIN or tot < ihl or tot > plen:
                return Status.BAD_NEXT_HEADER
        elif nh == IPPROTO_IPV6:
            if plen < IPV6_HDR_LEN or d[0] >> 4 != 6:
                return Status.BAD_NEXT_HEADER
            tot = IPV6_HDR_LEN + fp_load_be16(d + 4)
            if tot > plen:
                return Status.BAD_NEXT_HEADER
        else:
            return Status.BAD_NEXT_HEADER
        if m.has_outer:
            st = ecn_decap(sa, d, m.outer_ecn)
            if st != Status.OK:
                return st
        # TFC padding (RFC 4303 2.7) lies between the inner packet and the padding
        m.start = d
        m.len = tot
        return Status.OK
    # transport: the kept header moves up against the payload and names the payload's protocol
    m.start = d - m.ip_len
    if m.ip_len:
        memmove(m.start, m.ip, m.ip_len)
        m.start[m.nh_off] = <uint8_t>nh
        if m.start[0] >> 4 == 4:
            fp_store_be16(m.start + 2, <uint16_t>(m.ip_len + plen))
            fp_store_be16(m.start + 10, fp_ipv4_csum(m.start, m.ip_len))
        else:
            fp_store_be16(m.start + 4, <uint16_t>(m.ip_len - IPV6_HDR_LEN + plen))
    m.len = m.ip_len + plen
    return Status.OK


cdef uint32_t decap_burst(sa_t *sa, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                          uint8_t *status, const uint32_t *idx, uint32_t n, bint verify) noexcept nogil:
    """Decapsulate n packets in place: packets 0..n-1, or idx[0..n-1] when idx is given;
    packet i is buf[off[i] : off[i] + lens[i]]. On success off[i] and lens[i] describe the
    result; every packet processed gets status[i]; others are not touched."""
    cdef crypto_op_t ops[CHUNK]
    cdef pkt_meta_t meta[CHUNK]
    cdef uint32_t base = 0, i, k, cnt, ahead, ok = 0
    cdef uint64_t counts[N_STATUS]
    cdef uint64_t nbytes = 0
    cdef Status st
    memset(counts, 0, sizeof(counts))
    while base < n:
        cnt = n - base if n - base < CHUNK else CHUNK
        for k in range(cnt):
            i = idx[base + k] if idx != NULL else base + k
            if base + k + PREFETCH_AHEAD < n:
                ahead = idx[base + k + PREFETCH_AHEAD] if idx != NULL else base + k + PREFETCH_AHEAD
                fp_prefetch_packet(buf + off[ahead], lens[ahead])
            ops[k].status = decap_prepare(sa, buf + off[i], lens[i], NULL, 0, &ops[k], &meta[k], verify)
        if verify:
            sa.crypto.open_burst(&sa.crypto, ops, cnt)
        else:
            sa.crypto.open_noverify(&sa.crypto, ops, cnt)
        for k in range(cnt):
            i = idx[base + k] if idx != NULL else base + k
            st = <Status>ops[k].status
            if st == Status.OK:
                st = decap_finish(sa, &ops[k], &meta[k], verify)
            if st == Status.OK:
                off[i] = meta[k].start - buf
                lens[i] = meta[k].len
                nbytes += meta[k].len
                ok += 1
            status[i] = st
            counts[<int>st] += 1
        base += cnt
    for k in range(N_STATUS):
        sa.in_count[k] += counts[k]
    sa.in_bytes += nbytes
    return ok


cdef int decap_one(sa_t *sa, const uint8_t *pkt, uint32_t len, uint8_t *out, size_t cap,
                   uint32_t *out_len, bint verify) noexcept nogil:
    """Decapsulate one packet from pkt into out, leaving pkt untouched. Returns a Status; on
    OK the result is out[0 : out_len]."""
    cdef crypto_op_t op
    cdef pkt_meta_t m
    cdef Status st = decap_prepare(sa, pkt, len, out, cap, &op, &m, verify)
    if st == Status.OK:
        op.status = Status.OK
        if verify:
            sa.crypto.open_one(&sa.crypto, &op, 1)
        else:
            sa.crypto.open_noverify(&sa.crypto, &op, 1)
        st = <Status>op.status
    if st == Status.OK:
        st = decap_finish(sa, &op, &m, verify)
    if st == Status.OK:
        out_len[0] = m.len
        sa.in_bytes += m.len
    sa.in_count[<int>st] += 1
    return st
