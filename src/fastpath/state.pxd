# The kernel half of a security association: one C struct with everything a packet needs
# decided when the SA is made (DPDK's struct rte_ipsec_sa is the model). Python never sees
# it directly; fastpath.sa.SAState owns one.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.crypto cimport crypto_t
from fastpath.replay cimport replay_t
from fastpath.status cimport N_STATUS
from fastpath.wire cimport MAX_OUTER_HDR

cdef enum:
    # RFC 4301 section 4.1: tunnel mode protects a whole inner IP packet; transport mode the
    # payload of the packet's own IP header
    MODE_TUNNEL = 0
    MODE_TRANSPORT = 1
    # what the caller's buffers hold: whole IP packets, or ESP alone (a UDP socket's payload)
    FRAMING_IP = 0
    FRAMING_ESP = 1
    # RFC 4301 5.1.2.2: the outer DF bit
    DF_COPY = 0
    DF_SET = 1
    DF_CLEAR = 2
    # RFC 4301 5.1.2.1: DSCP copied from the inner header unless a value is configured
    DSCP_COPY = 0xff

ctypedef struct sa_t:
    uint32_t spi
    uint8_t mode
    uint8_t framing
    uint8_t outer_v6            # tunnel outer header family
    uint8_t udp                 # RFC 3948 ESP-in-UDP
    uint8_t esn
    uint8_t df_mode
    uint8_t dscp                # DSCP_COPY or a fixed DSCP value
    uint8_t rx_align            # ciphertext length granularity checked on receive
    uint16_t tfc_max            # RFC 4303 2.7: random TFC padding up to this many bytes (tunnel)
    uint16_t ip_id              # outer IPv4 identification, per SA
    uint16_t sport
    uint16_t dport
    uint16_t outer_len          # bytes of outer[]: IP + UDP (tunnel), UDP only (transport)
    uint16_t prefix             # bytes written before the protected payload (outer + ESP + IV)
    uint16_t path_mtu           # 0: none; else results above it come back TOO_BIG (esp_out)
    uint8_t frag_inner          # TOO_BIG also for IPv4 with DF clear: the caller fragments first
    uint32_t ip4_sum            # one's-complement sum of the outer IPv4 template's fixed words
    uint8_t outer[MAX_OUTER_HDR]
    # outbound; own cache lines away from the inbound window, as DPDK keeps them apart
    uint64_t seq_out            # last sequence number sent
    uint64_t seq_max            # 2^32 - 1, or 2^64 - 1 with ESN (RFC 4303 3.3.3)
    uint64_t out_count[N_STATUS]
    uint64_t out_bytes
    # inbound
    replay_t replay
    uint64_t in_count[N_STATUS]
    uint64_t in_bytes
    crypto_t crypto

# Where a packet ended up and what the stage after the crypto needs to know about it.
ctypedef struct pkt_meta_t:
    uint8_t *start              # first byte of the result
    uint32_t len                # length of the result
    uint8_t *ip                 # the packet's own IP header (transport), outer header (decap)
    uint16_t ip_len             # header bytes kept (transport: IP + extension headers)
    uint16_t nh_off             # offset of the next-header byte to patch within ip
    uint16_t rh_off             # IPv6 routing header within ip (0: none), for the UDP checksum
    uint8_t outer_ecn           # decap: the outer header's ECN field (RFC 6040)
    uint8_t has_outer
