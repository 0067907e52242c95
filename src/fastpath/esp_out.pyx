"""Outbound ESP (RFC 4303 section 3.3): encapsulate IP packets in place.

Stages, per chunk of up to CHUNK packets (DPDK's prepare / process split):
  1. prepare  - check the packet to protect; take the next sequence number; write the
                trailer (TFC padding, padding 1, 2, 3, ..., pad length, next header), the ESP
                header, the IV and the outer headers into the packet's head- and tailroom
  2. seal     - one burst call into the SA's backend: encrypt and compute the ICV
  3. finish   - the UDP checksum over the sealed packet where IPv6 requires one
Sequence numbers are taken in prepare and never reused: a packet that fails later leaves a
gap, which receivers accept (RFC 4303 3.3.3).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memmove, memset

from fastpath._include.compat cimport (
    fp_load_be16, fp_store_be16, fp_store_be32, fp_store_be64, fp_ipv4_csum, fp_csum_add, fp_csum_fold,
    fp_copy_small, fp_prefetch_packet)
from fastpath.crypto cimport crypto_op_t, crypto_random, CIPHER_AES_CBC, CIPHER_3DES_CBC, CIPHER_DES_CBC
from fastpath.state cimport *
from fastpath.status cimport Status, N_STATUS
from fastpath.wire cimport *


cdef inline const uint8_t *final_destination(const uint8_t *ip6, uint16_t rh_off) noexcept nogil:
    # RFC 8200 section 8.1: with a routing header the pseudo-header carries the final
    # destination: the last address of a type 0 or 2 header, Segment List[0] of an SRH
    # (RFC 8754 section 2), once segments remain to be visited
    cdef const uint8_t *rh = ip6 + rh_off
    if rh_off == 0 or rh[3] == 0:
        return ip6 + 24
    if (rh[2] == 0 or rh[2] == 2) and rh[1] >= 2:
        return rh + 8 + (rh[1] // 2 - 1) * 16
    if rh[2] == 4 and rh[1] >= 2:
        return rh + 8
    return ip6 + 24


cdef inline uint16_t udp6_checksum(const uint8_t *ip6, uint16_t rh_off, uint8_t *udp, uint32_t n) noexcept nogil:
    # RFC 8200 section 8.1: UDP over IPv6 must carry a checksum (RFC 3948 section 2.1 only
    # lets IPv4 send zero)
    cdef uint32_t s = fp_csum_add(0, ip6 + 8, 16)
    s = fp_csum_add(s, final_destination(ip6, rh_off), 16)
    s += n + IPPROTO_UDP
    fp_store_be16(udp + 6, 0)
    s = fp_csum_add(s, udp, n)
    cdef uint16_t c = <uint16_t>~fp_csum_fold(s)
    return c if c else 0xffff


cdef inline Status inner_check(const uint8_t *pkt, uint32_t *len, uint8_t *nh, uint8_t *tos,
                               uint16_t *df) noexcept nogil:
    """The inner packet of tunnel mode: its own header gives its length (trailing bytes such
    as Ethernet padding are not protected) and the fields the outer header copies."""
    cdef uint32_t n = len[0], tot, ihl
    if n >= IPV4_HDR_MIN and pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0x0f) * 4
        tot = fp_load_be16(pkt + 2)
        if ihl < IPV4_HDR_MIN or tot < ihl or tot > n:
            return Status.BAD_INNER
        len[0] = tot
        nh[0] = IPPROTO_IPIP
        tos[0] = pkt[1]
        df[0] = fp_load_be16(pkt + 6) & IPV4_DF
        return Status.OK
    if n >= IPV6_HDR_LEN and pkt[0] >> 4 == 6:
        tot = IPV6_HDR_LEN + fp_load_be16(pkt + 4)
        if tot > n:
            return Status.BAD_INNER
        len[0] = tot
        nh[0] = IPPROTO_IPV6
        tos[0] = <uint8_t>(fp_load_be16(pkt) >> 4)
        df[0] = 0
        return Status.OK
    return Status.BAD_INNER


cdef inline Status transport_header(const uint8_t *pkt, uint32_t n, uint16_t *hlen,
                                    uint16_t *nh_off, uint8_t *proto, uint32_t *tot,
                                    uint16_t *rh_off) noexcept nogil:
    """Transport mode keeps the packet's own header (RFC 4303 3.1.1): for IPv6 that includes
    hop-by-hop and routing headers, which ESP must follow; a fragment is never protected
    in transport mode (RFC 4301 section 7)."""
    cdef uint32_t ihl, off, t
    cdef uint8_t nh
    if n >= IPV4_HDR_MIN and pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0x0f) * 4
        t = fp_load_be16(pkt + 2)
        if ihl < IPV4_HDR_MIN or t < ihl or t > n:
            return Status.BAD_INNER
        if fp_load_be16(pkt + 6) & (IPV4_MF | IPV4_FRAG_OFFSET_MASK):
            return Status.BAD_INNER
        hlen[0] = <uint16_t>ihl
        nh_off[0] = 9
        proto[0] = pkt[9]
        tot[0] = t
        return Status.OK
    if n >= IPV6_HDR_LEN and pkt[0] >> 4 == 6:
        t = IPV6_HDR_LEN + fp_load_be16(pkt + 4)
        if t > n:
            return Status.BAD_INNER
        off = IPV6_HDR_LEN
        nh_off[0] = 6
        nh = pkt[6]
        while nh == IPPROTO_HOPOPTS or nh == IPPROTO_ROUTING or (
                nh == IPPROTO_DSTOPTS and off + 2 <= t and pkt[off] == IPPROTO_ROUTING):
            if off + 2 > t or off + (pkt[off + 1] + 1) * 8 > t:
                return Status.BAD_INNER
            if nh == IPPROTO_ROUTING:
                rh_off[0] = <uint16_t>off
            nh_off[0] = <uint16_t>off
            nh = pkt[off]
            off += (pkt[off + 1] + 1) * 8
        if nh == IPPROTO_FRAGMENT:
            return Status.BAD_INNER
        hlen[0] = <uint16_t>off
        proto[0] = nh
        tot[0] = t
        return Status.OK
    return Status.BAD_INNER


cdef inline bint too_big(const sa_t *sa, const uint8_t *pkt, uint32_t tot, uint16_t df) noexcept nogil:
    """Whether a packet whose result exceeds the path MTU goes back to the caller (RFC 4301
    8.2.1) rather than out, to be fragmented by the outer IP layer. IPv4 with DF set: the
    sender is told (RFC 1191); with DF clear the outer layer fragments, unless the SA wants
    its inner packets fragmented first (the caller does it). IPv6: only the source may
    fragment (RFC 8200 4.5), so the sender is told, except for packets of at most the
    minimum MTU, 1280 bytes, which a tunnel must carry by fragmenting its outer packet
    (RFC 8200 section 5, RFC 2473 7.1)."""
    if pkt[0] >> 4 == 4:
        if sa.mode == MODE_TRANSPORT:
            # the packet's own header; a transport SA never carries fragments (RFC 4301 7)
            return (fp_load_be16(pkt + 6) & IPV4_DF) != 0
        return df != 0 or sa.frag_inner
    return tot > IPV6_MIN_MTU


cdef Status encap_prepare(sa_t *sa, uint8_t *lo, uint8_t *pkt, uint32_t len, uint8_t *hi,
                          crypto_op_t *op, pkt_meta_t *m) noexcept nogil:
    """Lay out one packet in place. pkt[0:len] is the packet to protect; the result may grow
    down to lo and up to hi (exclusive)."""
    cdef uint8_t nh = 0, tos = 0
    cdef uint16_t df = 0, hlen = 0, nh_off = 0, old_csum = 0, rh_off = 0
    cdef uint32_t tot = len, plen, tfc = 0, pad, body, total, k
    cdef uint8_t *payload
    cdef uint8_t *start
    cdef uint8_t *esp
    cdef uint8_t *ip
    cdef uint8_t *udp
    cdef uint8_t rnd[2]
    cdef Status st
    if sa.mode == MODE_TUNNEL:
        st = inner_check(pkt, &tot, &nh, &tos, &df)
        if st != Status.OK:
            return st
        payload = pkt
        plen = tot
    else:
        st = transport_header(pkt, len, &hlen, &nh_off, &nh, &tot, &rh_off)
        if st != Status.OK:
            return st
        payload = pkt + hlen
        plen = tot - hlen
    # the payload stays where it is; headers go in front of it, the trailer after it
    start = pkt - sa.prefix
    if start < lo or pkt + tot > hi:
        return Status.NO_ROOM
    if sa.tfc_max and sa.mode == MODE_TUNNEL:
        # RFC 4303 2.7: tunnel mode may hide the inner length; its own header delimits it
        if crypto_random(rnd, 2) != 0:
            return Status.INTERNAL
        tfc = ((<uint32_t>rnd[0] << 8) | rnd[1]) % (<uint32_t>sa.tfc_max + 1)
    pad = (0u - (plen + tfc + ESP_TRAILER_LEN)) & (sa.crypto.block - 1)
    body = plen + tfc + pad + ESP_TRAILER_LEN
    if payload + body + sa.crypto.icv_len > hi:
        if tfc == 0:
            return Status.NO_ROOM
        # TFC padding is best effort: shrink it to the room there is
        tfc = 0
        pad = (0u - (plen + ESP_TRAILER_LEN)) & (sa.crypto.block - 1)
        body = plen + pad + ESP_TRAILER_LEN
        if payload + body + sa.crypto.icv_len > hi:
            return Status.NO_ROOM
    total = <uint32_t>(payload - start) + body + sa.crypto.icv_len
    if sa.path_mtu and total > sa.path_mtu:
        if tfc:
            # RFC 4303 2.7: TFC padding must not take a packet past the path MTU; the padding
            # that follows it adds at most block - 1 bytes
            k = sa.path_mtu - (total - tfc - pad)
            tfc = min(tfc, k - (sa.crypto.block - 1)) if k >= sa.crypto.block - 1 and k <= sa.path_mtu else 0
            pad = (0u - (plen + tfc + ESP_TRAILER_LEN)) & (sa.crypto.block - 1)
            body = plen + tfc + pad + ESP_TRAILER_LEN
            total = <uint32_t>(payload - start) + body + sa.crypto.icv_len
        if total > sa.path_mtu and too_big(sa, pkt, tot, df):
            return Status.TOO_BIG
    if total > IPV4_MAX_TOTAL + (IPV6_HDR_LEN if sa.outer_v6 or (sa.mode == MODE_TRANSPORT and pkt[0] >> 4 == 6) else 0):
        return Status.OVERSIZE
    if sa.seq_out >= sa.seq_max:
        return Status.SEQ_EXHAUSTED

    # transport: the packet's own header moves in front of the ESP header
    if sa.mode == MODE_TRANSPORT:
        if pkt[0] >> 4 == 4:
            # the checksum the input's header should carry, recomputed (a bad one is not
            # passed on); the changes below are then applied to it incrementally (RFC 1624)
            old_csum = fp_ipv4_csum(pkt, hlen)
        memmove(start, pkt, hlen)

    # trailer (RFC 4303 2.4-2.7)
    if tfc:
        memset(payload + plen, 0, tfc)
    k = 0
    while k < pad:
        payload[plen + tfc + k] = <uint8_t>(k + 1)
        k += 1
    payload[body - 2] = <uint8_t>pad
    payload[body - 1] = nh

    sa.seq_out += 1
    esp = payload - sa.crypto.iv_len - ESP_HDR_LEN
    fp_store_be32(esp, sa.spi)
    fp_store_be32(esp + 4, <uint32_t>sa.seq_out)
    op.esp = esp
    op.seq = sa.seq_out
    op.src = payload
    op.dst = payload
    op.len = body
    op.icv = payload + body
    op.status = Status.OK
    if sa.crypto.iv_len == 0:
        op.iv = NULL
    else:
        op.iv = esp + ESP_HDR_LEN
        if sa.crypto.cipher == CIPHER_AES_CBC or sa.crypto.cipher == CIPHER_3DES_CBC or sa.crypto.cipher == CIPHER_DES_CBC:
            if crypto_random(op.iv, sa.crypto.iv_len) != 0:
                return Status.INTERNAL
        else:
            # counter modes need a unique IV, and the sequence number is one (RFC 4106 3.1)
            fp_store_be64(op.iv, sa.seq_out)

    m.start = start
    m.len = total
    m.ip = start
    m.ip_len = 0
    m.rh_off = rh_off
    if sa.mode == MODE_TUNNEL and sa.framing == FRAMING_IP:
        fp_copy_small(start, sa.outer, sa.outer_len)
        ip = start
        if not sa.outer_v6:
            # RFC 4301 5.1.2.1: DSCP copied or set; RFC 6040 section 4.1 (normal mode): ECN copied
            tos = (tos & ECN_MASK) | ((tos & ~ECN_MASK) if sa.dscp == DSCP_COPY else <uint8_t>(sa.dscp << 2))
            df = IPV4_DF if sa.df_mode == DF_SET or (sa.df_mode == DF_COPY and df) else 0
            ip[1] = tos
            fp_store_be16(ip + 2, <uint16_t>total)
            fp_store_be16(ip + 4, sa.ip_id)
            fp_store_be16(ip + 6, df)
            fp_store_be16(ip + 10, <uint16_t>~fp_csum_fold(sa.ip4_sum + tos + total + sa.ip_id + df))
            sa.ip_id += 1
            m.ip_len = IPV4_HDR_MIN
        else:
            tos = (tos & ECN_MASK) | ((tos & ~ECN_MASK) if sa.dscp == DSCP_COPY else <uint8_t>(sa.dscp << 2))
            ip[0] = 0x60 | (tos >> 4)
            ip[1] = (ip[1] & 0x0f) | <uint8_t>(tos << 4)
            fp_store_be16(ip + 4, <uint16_t>(total - IPV6_HDR_LEN))
            m.ip_len = IPV6_HDR_LEN
        if sa.udp:
            fp_store_be16(start + m.ip_len + 4, <uint16_t>(total - m.ip_len))
    elif sa.mode == MODE_TUNNEL:
        pass      # FRAMING_ESP: the caller's socket adds the outer headers
    else:
        ip = start
        ip[nh_off] = IPPROTO_UDP if sa.udp else IPPROTO_ESP
        if ip[0] >> 4 == 4:
            # RFC 1624 incremental update: total length and protocol change, nothing else
            fp_store_be16(ip + 2, <uint16_t>total)
            fp_store_be16(ip + 10, <uint16_t>~fp_csum_fold(
                (~old_csum & 0xffff) + (~tot & 0xffff) + total + (~(<uint32_t>nh) & 0xffff) + ip[9]))
        else:
            fp_store_be16(ip + 4, <uint16_t>(total - IPV6_HDR_LEN))
        m.ip_len = hlen
        if sa.udp:
            udp = start + hlen
            fp_copy_small(udp, sa.outer, UDP_HDR_LEN)
            fp_store_be16(udp + 4, <uint16_t>(total - hlen))
    return Status.OK


cdef inline void encap_finish(sa_t *sa, pkt_meta_t *m) noexcept nogil:
    cdef uint8_t *udp
    if sa.udp and m.ip_len and (m.ip[0] >> 4) == 6:
        udp = m.ip + m.ip_len
        fp_store_be16(udp + 6, udp6_checksum(m.ip, m.rh_off, udp, m.len - m.ip_len))



cdef uint32_t encap_burst(sa_t *sa, uint8_t *buf, size_t buflen, int64_t *off, uint32_t *lens,
                          uint8_t *status, const uint32_t *idx, uint32_t n, size_t stride) noexcept nogil:
    """Encapsulate n packets in place: packets 0..n-1, or, when idx is given, packets
    idx[0..n-1] (the engine's packets of this SA within a shared arena). Packet i is
    buf[off[i] : off[i] + lens[i]] and lives in slot i, buf[i * stride : (i + 1) * stride];
    its result must fit the slot. On success off[i] and lens[i] describe the result; every
    packet processed gets status[i]; others are not touched."""
    cdef crypto_op_t ops[CHUNK]
    cdef pkt_meta_t meta[CHUNK]
    cdef uint32_t base = 0, i, k, cnt, ahead, ok = 0
    cdef uint8_t *lo
    cdef uint8_t *hi
    cdef uint64_t counts[N_STATUS]
    cdef uint64_t nbytes = 0
    memset(counts, 0, sizeof(counts))
    while base < n:
        cnt = n - base if n - base < CHUNK else CHUNK
        for k in range(cnt):
            i = idx[base + k] if idx != NULL else base + k
            lo = buf + <size_t>i * stride
            hi = slot_end(buf, buflen, <size_t>i * stride, stride)
            if base + k + PREFETCH_AHEAD < n:
                ahead = idx[base + k + PREFETCH_AHEAD] if idx != NULL else base + k + PREFETCH_AHEAD
                fp_prefetch_packet(buf + off[ahead], lens[ahead])
            ops[k].status = encap_prepare(sa, lo, buf + off[i], lens[i], hi, &ops[k], &meta[k])
        sa.crypto.seal_burst(&sa.crypto, ops, cnt)
        for k in range(cnt):
            i = idx[base + k] if idx != NULL else base + k
            if ops[k].status == Status.OK:
                encap_finish(sa, &meta[k])
                nbytes += lens[i]
                off[i] = meta[k].start - buf
                lens[i] = meta[k].len
                ok += 1
            status[i] = ops[k].status
            counts[ops[k].status] += 1
        base += cnt
    for k in range(N_STATUS):
        sa.out_count[k] += counts[k]
    sa.out_bytes += nbytes
    return ok


cdef int encap_one(sa_t *sa, const uint8_t *pkt, uint32_t len, uint8_t *out, size_t cap,
                   uint32_t *out_len) noexcept nogil:
    """Encapsulate one packet from pkt into out (the packet is copied to its place in out and
    sealed there). Returns a Status; on OK the result is out[0 : out_len]."""
    cdef crypto_op_t op
    cdef pkt_meta_t m
    cdef Status st
    if sa.prefix + <size_t>len > cap:
        st = Status.NO_ROOM
    else:
        memcpy(out + sa.prefix, pkt, len)
        st = encap_prepare(sa, out, out + sa.prefix, len, out + cap, &op, &m)
    if st == Status.OK:
        sa.crypto.seal_one(&sa.crypto, &op, 1)
        st = <Status>op.status
    if st == Status.OK:
        encap_finish(sa, &m)
        out_len[0] = m.len
        sa.out_bytes += len
    sa.out_count[<int>st] += 1
    return st
