"""Per-packet status codes written by the batch calls, with their names and meanings."""

_DESCRIPTIONS = {
    Status.OK: "processed",
    Status.TRUNCATED: "packet shorter than its headers, IV, trailer and ICV",
    Status.BAD_IP_HEADER: "malformed outer IP header",
    Status.NOT_ESP: "not an ESP packet for this SA (protocol, UDP port or non-ESP marker)",
    Status.NAT_KEEPALIVE: "NAT keepalive (RFC 3948 2.3)",
    Status.FRAGMENT: "outer IP fragment; reassemble before ESP",
    Status.BAD_SPI: "SPI does not belong to this SA",
    Status.REPLAY: "replayed sequence number",
    Status.TOO_OLD: "sequence number left of the replay window",
    Status.ICV_FAIL: "integrity check failed",
    Status.BAD_LENGTH: "ciphertext length not a multiple of the block size",
    Status.BAD_PADDING: "bad ESP padding",
    Status.BAD_NEXT_HEADER: "next header not valid for this SA, or malformed inner header",
    Status.DUMMY: "dummy packet (next header 59)",
    Status.ECN_DROP: "outer CE on a Not-ECT inner packet (RFC 6040)",
    Status.NO_ROOM: "output does not fit the buffer or slot",
    Status.OVERSIZE: "result exceeds the IP length limit",
    Status.BAD_INNER: "packet to protect is not valid IP for this SA",
    Status.SEQ_EXHAUSTED: "outbound sequence numbers exhausted",
    Status.INTERNAL: "crypto library failure",
    Status.NOT_PROCESSED: "not processed",
    Status.SA_DEAD: "the SA is closed",
    Status.BYPASS: "passed on unchanged by a BYPASS policy",
    Status.POLICY_DISCARD: "discarded by a DISCARD policy",
    Status.NO_POLICY: "no policy matched",
    Status.NO_SA: "PROTECT policy without an SA yet (acquire raised)",
    Status.UNKNOWN_SPI: "no SA for this SPI and destination",
    Status.POLICY_MISMATCH: "inner packet outside the SA's selectors",
    Status.UNPROTECTED: "arrived in clear but policy requires protection",
    Status.TOO_BIG: "result would exceed the SA's path MTU (send ICMP or fragment the inner packet)",
}

STATUS_COUNT = N_STATUS


def status_name(int code) -> str:
    """The enum name of a status code, e.g. ``'ICV_FAIL'``."""
    return Status(code).name


def status_description(int code) -> str:
    """A one-line human description of a status code."""
    return _DESCRIPTIONS[Status(code)]
class PacketError(ValueError):
    """A single-packet call could not process its packet; ``status`` says why."""

    def __init__(self, status, message=None):
        self.status = Status(status)
        super().__init__(message or f"{self.status.name}: {_DESCRIPTIONS[self.status]}")


class MalformedPacket(PacketError):
    """The packet is not well-formed ESP (or IP) for this SA."""


class ReplayError(PacketError):
    """The sequence number was seen before or is left of the window."""


class IntegrityError(PacketError):
    """The ICV did not verify."""


class NoDataPacket(PacketError):
    """A dummy packet or NAT keepalive: authentic or harmless, but carrying no data."""


class BufferTooSmall(PacketError):
    """The output buffer cannot hold the result."""


class SequenceExhausted(PacketError):
    """The SA has sent its last sequence number and must be rekeyed."""


class SAClosedError(PacketError):
    """The SA has been closed and its keys wiped."""


class CryptoFailure(PacketError):
    """The crypto library failed unexpectedly."""


class PacketTooBig(PacketError):
    """Encapsulated, the packet would exceed the SA's path MTU; it was left as it came."""


# One table: every status maps to the exception a single-packet call raises for it.
STATUS_EXCEPTIONS = {
    Status.TRUNCATED: MalformedPacket,
    Status.BAD_IP_HEADER: MalformedPacket,
    Status.NOT_ESP: MalformedPacket,
    Status.NAT_KEEPALIVE: NoDataPacket,
    Status.FRAGMENT: MalformedPacket,
    Status.BAD_SPI: MalformedPacket,
    Status.REPLAY: ReplayError,
    Status.TOO_OLD: ReplayError,
    Status.ICV_FAIL: IntegrityError,
    Status.BAD_LENGTH: MalformedPacket,
    Status.BAD_PADDING: MalformedPacket,
    Status.BAD_NEXT_HEADER: MalformedPacket,
    Status.DUMMY: NoDataPacket,
    Status.ECN_DROP: PacketError,
    Status.NO_ROOM: BufferTooSmall,
    Status.OVERSIZE: MalformedPacket,
    Status.BAD_INNER: MalformedPacket,
    Status.SEQ_EXHAUSTED: SequenceExhausted,
    Status.INTERNAL: CryptoFailure,
    Status.NOT_PROCESSED: PacketError,
    Status.SA_DEAD: SAClosedError,
    Status.BYPASS: PacketError,
    Status.POLICY_DISCARD: PacketError,
    Status.NO_POLICY: PacketError,
    Status.NO_SA: PacketError,
    Status.UNKNOWN_SPI: MalformedPacket,
    Status.POLICY_MISMATCH: PacketError,
    Status.UNPROTECTED: PacketError,
    Status.TOO_BIG: PacketTooBig,
}


def raise_for_status(int code):
    """Raise the exception for a failed status (does nothing for OK)."""
    if code != Status.OK:
        raise STATUS_EXCEPTIONS[Status(code)](code)
