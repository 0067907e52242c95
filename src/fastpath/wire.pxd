# Wire constants and limits: the one place where the kernel's numbers come from.
# Every group names the RFC section that defines it.

cdef enum:
    # RFC 4303 section 2: ESP header (SPI, sequence number) and trailer (pad length, next header)
    ESP_HDR_LEN = 8
    ESP_TRAILER_LEN = 2
    ESP_MAX_PAD = 255
    # RFC 4303 section 2.4: the trailer must end on a 4-byte boundary even for stream ciphers
    ESP_MIN_ALIGN = 4

cdef enum:
    # RFC 791 / RFC 8200 fixed header sizes
    IPV4_HDR_MIN = 20
    IPV4_HDR_MAX = 60
    IPV6_HDR_LEN = 40
    UDP_HDR_LEN = 8
    IPV4_MAX_TOTAL = 65535
    IPV6_MAX_PAYLOAD = 65535
    # RFC 8200 section 5: every IPv6 link carries 1280 bytes; RFC 1122 3.3.3: every IPv4
    # host reassembles 576
    IPV6_MIN_MTU = 1280
    IPV4_MIN_REASSEMBLY = 576

cdef enum:
    # IANA protocol numbers ("next header")
    IPPROTO_HOPOPTS = 0
    IPPROTO_ICMP = 1
    IPPROTO_IPIP = 4
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_IPV6 = 41
    IPPROTO_ROUTING = 43
    IPPROTO_FRAGMENT = 44
    IPPROTO_ESP = 50
    IPPROTO_NONE = 59         # RFC 4303 section 2.6: dummy packets carry next header 59
    IPPROTO_DSTOPTS = 60
    IPPROTO_ICMPV6 = 58
    IPPROTO_SCTP = 132

cdef enum:
    # RFC 3948 section 2: ESP-in-UDP. Port 4500; a zero "SPI" is the non-ESP marker of IKE;
    # a single 0xFF byte is a NAT keepalive (section 2.3).
    UDP_ENCAP_PORT = 4500
    NAT_KEEPALIVE_BYTE = 0xff

cdef enum:
    # RFC 4303 section 2.1: SPI values 1-255 are reserved by IANA, 0 is local use only
    SPI_RESERVED_MAX = 255

cdef enum:
    # IP header bits used by the tunnel encapsulation rules (RFC 4301 5.1.2, RFC 6040)
    IPV4_DF = 0x4000
    IPV4_MF = 0x2000
    IPV4_FRAG_OFFSET_MASK = 0x1fff
    ECN_MASK = 0x03
    ECN_NOT_ECT = 0
    ECN_ECT1 = 1
    ECN_ECT0 = 2
    ECN_CE = 3

cdef enum:
    # Replay window bounds (RFC 4303 section 3.4.3: the default is 32; RFC 6479 ring of words)
    REPLAY_MIN = 32
    REPLAY_MAX = 1048576
    REPLAY_DEFAULT = 1024

cdef enum:
    # Largest IV, ICV and block this kernel handles (AES: 16-byte IV; HMAC-SHA-512-256: 32-byte ICV)
    MAX_IV_LEN = 16
    MAX_ICV_LEN = 32
    MAX_BLOCK = 16
    MAX_OUTER_HDR = IPV6_HDR_LEN + UDP_HDR_LEN
