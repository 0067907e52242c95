# Per-packet outcome codes: the single source of truth shared with ipsp.
# A batch writes one of these per packet (index-stable) and counts it on the SA.

cpdef enum Status:
    OK = 0
    # input framing (before any crypto)
    TRUNCATED = 1          # shorter than the headers, IV, trailer and ICV it must hold
    BAD_IP_HEADER = 2      # outer IPv4/IPv6 header malformed (version, IHL, lengths)
    NOT_ESP = 3            # not ESP for this SA: protocol, UDP port, or IKE's non-ESP marker
    NAT_KEEPALIVE = 4      # RFC 3948 2.3 keepalive: consumed, not an error
    FRAGMENT = 5           # outer IP fragment: the IP layer reassembles before ESP (RFC 4303 3.4.1)
    BAD_SPI = 6            # SPI is not this SA's
    # anti-replay (RFC 4303 3.4.3), checked before crypto and again after the ICV
    REPLAY = 7             # already received
    TOO_OLD = 8            # left of the window
    # integrity and decryption (RFC 4303 3.4.4, 3.4.2)
    ICV_FAIL = 9           # integrity check failed
    BAD_LENGTH = 10        # ciphertext not a multiple of the block size
    BAD_PADDING = 11       # pad length too long or pad bytes not 1, 2, 3, ... (RFC 4303 2.4)
    BAD_NEXT_HEADER = 12   # next header not carried by this SA's mode, or inner header malformed
    DUMMY = 13             # next header 59, a traffic-flow-confidentiality dummy (RFC 4303 2.6)
    ECN_DROP = 14          # outer CE with a Not-ECT inner packet (RFC 6040 section 4.2)
    # output and SA limits
    NO_ROOM = 15           # the output would not fit the buffer or the batch slot
    OVERSIZE = 16          # the result would exceed the IP length limit
    BAD_INNER = 17         # the packet to protect is not a valid IP packet for this SA's mode
    SEQ_EXHAUSTED = 18     # outbound sequence numbers used up: rekey (RFC 4303 3.3.3)
    INTERNAL = 19          # the crypto library failed; the SA should be torn down
    NOT_PROCESSED = 20     # left untouched (a batch slot the call did not reach)
    SA_DEAD = 21           # the SA was closed (hard lifetime, deletion): nothing was processed
    # the engine's policy decisions (RFC 4301 sections 5.1 and 5.2)
    BYPASS = 22            # not a drop: a BYPASS policy passes the packet on unchanged
    POLICY_DISCARD = 23    # a DISCARD policy matched
    NO_POLICY = 24         # no policy matched: discarded (RFC 4301 4.4.1 default)
    NO_SA = 25             # PROTECT matched but no SA is installed yet: an acquire was raised
    UNKNOWN_SPI = 26       # inbound ESP for no installed SA (RFC 4303 3.4.2: auditable)
    POLICY_MISMATCH = 27   # the decapsulated packet is outside its SA's selectors (RFC 4301 5.2)
    UNPROTECTED = 28       # arrived in clear but a PROTECT policy covers it (RFC 4301 5.2 step 3a)
    # path MTU (RFC 4301 8.2, RFC 1191, RFC 8201): left untouched for the caller, which sends
    # an ICMP "fragmentation needed" / "packet too big" or fragments the inner packet first
    TOO_BIG = 29           # the result would exceed the SA's path MTU (SAState.set_path_mtu)

cdef enum:
    N_STATUS = 30
