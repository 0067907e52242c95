"""Sans-IO IKEv2 message codec (RFC 7296 section 3; SKF from RFC 7383).

Pure Python (``struct``), no I/O, no cryptography: the Encrypted payload (SK) and the
Encrypted Fragment payload (SKF) are kept as their raw bodies (IV, ciphertext, padding and
ICV together) plus the "next payload" value from their generic header; decrypting them and
decoding the inner payloads is a later step.

``Message.decode`` is strict: every length, count and "last substructure" flag is checked and
any malformed input raises :class:`MalformedMessage` (a ``ValueError``) naming the byte offset
(counted from the start of the IKE header) and what is wrong. An unrecognised payload with the
critical bit set raises :class:`UnsupportedCriticalPayload` (RFC 7296 2.5: the message is
rejected with UNSUPPORTED_CRITICAL_PAYLOAD); a non-critical one is kept as :class:`Unknown`.

Constant names follow the IANA "Internet Key Exchange Version 2 (IKEv2) Parameters" registry.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Union

__all__ = [
    "AUTH",
    "CERT",
    "CERTREQ",
    "CP",
    "EAP",
    "KE",
    "SA",
    "SK",
    "SKF",
    "TSi",
    "TSr",
    "Attribute",
    "AuthMethod",
    "CfgType",
    "ConfigAttribute",
    "Delete",
    "DhGroup",
    "EncrId",
    "EsnId",
    "ExchangeType",
    "HEADER_LEN",
    "Header",
    "IDi",
    "IDr",
    "IdType",
    "IntegId",
    "InvalidMajorVersion",
    "MalformedMessage",
    "Message",
    "Nonce",
    "Notify",
    "NotifyType",
    "Payload",
    "PayloadType",
    "PrfId",
    "Proposal",
    "ProtocolId",
    "TSType",
    "TrafficSelector",
    "Transform",
    "TransformAttr",
    "TransformType",
    "Unknown",
    "UnsupportedCriticalPayload",
    "VendorID",
    "decode_payloads",
    "encode_payloads",
    "first_type",
]

# --------------------------------------------------------------------------------------------
# Errors


class MalformedMessage(ValueError):
    """The bytes are not a well-formed IKEv2 message (RFC 7296: INVALID_SYNTAX)."""

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(f"malformed IKEv2 message at offset {offset}: {what}")
        self.offset = offset
        self.what = what


class InvalidMajorVersion(MalformedMessage):
    """Major version other than 2 (RFC 7296 2.5: answer with INVALID_MAJOR_VERSION)."""

    def __init__(self, offset: int, major: int) -> None:
        super().__init__(offset, f"unsupported IKE major version {major} (only 2 is supported)")
        self.major = major


class UnsupportedCriticalPayload(ValueError):
    """An unrecognised payload had the critical bit set (RFC 7296 2.5)."""

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unsupported critical payload type {payload_type}")
        self.payload_type = payload_type


# --------------------------------------------------------------------------------------------
# Constants (RFC 7296 section 3 and the IANA IKEv2 Parameters registry)


class ExchangeType(IntEnum):
    """IANA "IKEv2 Exchange Types" (RFC 7296 3.1)."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38  # RFC 5723
    IKE_INTERMEDIATE = 43  # RFC 9242


class PayloadType(IntEnum):
    """IANA "IKEv2 Payload Types" (RFC 7296 3.2)."""

    NONE = 0  # "No Next Payload"
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40  # Ni, Nr
    NOTIFY = 41  # N
    DELETE = 42  # D
    VENDOR_ID = 43  # V
    TSi = 44
    TSr = 45
    SK = 46  # Encrypted and Authenticated
    CP = 47  # Configuration
    EAP = 48  # Extensible Authentication
    GSPM = 49  # RFC 6467
    SKF = 53  # Encrypted and Authenticated Fragment, RFC 7383


class NotifyType(IntEnum):
    """IANA "IKEv2 Notify Message Types" (RFC 7296 3.10.1), common error and status types."""

    # Error types (0..16383)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # Status types (16384..)
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427


class ProtocolId(IntEnum):
    """IANA "IKEv2 Security Protocol Identifiers" (RFC 7296 3.3.1)."""

    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    """IANA "Transform Type Values" (RFC 7296 3.3.2)."""

    ENCR = 1  # Encryption Algorithm
    PRF = 2  # Pseudorandom Function
    INTEG = 3  # Integrity Algorithm
    DH = 4  # Diffie-Hellman Group (renamed "Key Exchange Method" by RFC 9370)
    ESN = 5  # Extended Sequence Numbers


class EncrId(IntEnum):
    """IANA "Transform Type 1 - Encryption Algorithm Transform IDs"."""

    ENCR_AES_CBC = 12
    ENCR_AES_CTR = 13
    ENCR_AES_GCM_8 = 18
    ENCR_AES_GCM_12 = 19
    ENCR_AES_GCM_16 = 20
    ENCR_CHACHA20_POLY1305 = 28  # RFC 7634


class PrfId(IntEnum):
    """IANA "Transform Type 2 - Pseudorandom Function Transform IDs"."""

    PRF_HMAC_SHA1 = 2
    PRF_HMAC_SHA2_256 = 5
    PRF_HMAC_SHA2_384 = 6
    PRF_HMAC_SHA2_512 = 7


class IntegId(IntEnum):
    """IANA "Transform Type 3 - Integrity Algorithm Transform IDs"."""

    NONE = 0
    AUTH_HMAC_SHA1_96 = 2
    AUTH_HMAC_SHA2_256_128 = 12
    AUTH_HMAC_SHA2_384_192 = 13
    AUTH_HMAC_SHA2_512_256 = 14


class DhGroup(IntEnum):
    """IANA "Transform Type 4 - Diffie-Hellman Group Transform IDs"."""

    NONE = 0
    MODP_2048 = 14  # 2048-bit MODP Group (RFC 3526)
    ECP_256 = 19  # 256-bit random ECP group (RFC 5903)
    ECP_384 = 20
    CURVE25519 = 31  # RFC 8031


class EsnId(IntEnum):
    """IANA "Transform Type 5 - Extended Sequence Numbers Transform IDs"."""

    NO_ESN = 0
    ESN = 1


class TransformAttr(IntEnum):
    """IANA "IKEv2 Transform Attribute Types" (RFC 7296 3.3.5)."""

    KEY_LENGTH = 14  # TV format, value in bits


class IdType(IntEnum):
    """IANA "IKEv2 Identification Payload ID Types" (RFC 7296 3.5)."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11


class AuthMethod(IntEnum):
    """IANA "IKEv2 Authentication Method" (RFC 7296 3.8)."""

    RSA_DIGITAL_SIGNATURE = 1
    SHARED_KEY_MESSAGE_INTEGRITY_CODE = 2
    DSS_DIGITAL_SIGNATURE = 3
    DIGITAL_SIGNATURE = 14  # RFC 7427


class TSType(IntEnum):
    """IANA "IKEv2 Traffic Selector Types" (RFC 7296 3.13.1)."""

    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


class CfgType(IntEnum):
    """IANA "IKEv2 Configuration Payload CFG Types" (RFC 7296 3.15)."""

    CFG_REQUEST = 1
    CFG_REPLY = 2
    CFG_SET = 3
    CFG_ACK = 4


HEADER_LEN = 28
IKE_MAJOR_VERSION = 2
FLAG_INITIATOR = 0x08
FLAG_VERSION = 0x10
FLAG_RESPONSE = 0x20
CRITICAL = 0x80
NONCE_MIN, NONCE_MAX = 16, 256  # RFC 7296 2.10

_HDR = struct.Struct("!8s8sBBBBII")
_GEN = struct.Struct("!BBH")


# --------------------------------------------------------------------------------------------
# Substructures


@dataclass(frozen=True)
class Attribute:
    """Transform attribute (RFC 7296 3.3.5): an ``int`` value is TV (AF=1), ``bytes`` is TLV."""

    type: int
    value: Union[int, bytes]


@dataclass(frozen=True)
class Transform:
    """Transform substructure (RFC 7296 3.3.2)."""

    type: int
    id: int
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", tuple(self.attributes))


@dataclass(frozen=True)
class Proposal:
    """Proposal substructure (RFC 7296 3.3.1)."""

    number: int
    protocol_id: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "transforms", tuple(self.transforms))


@dataclass(frozen=True)
class TrafficSelector:
    """Traffic selector (RFC 7296 3.13.1): type 7 (IPv4, 4-byte addresses) or 8 (IPv6, 16)."""

    ts_type: int
    ip_protocol: int
    start_port: int
    end_port: int
    start_address: bytes
    end_address: bytes


@dataclass(frozen=True)
class ConfigAttribute:
    """Configuration attribute (RFC 7296 3.15.1)."""

    type: int
    value: bytes = b""


# --------------------------------------------------------------------------------------------
# Payloads


class Payload:
    """Base of all payload classes; ``TYPE`` is the IANA payload type."""

    TYPE: ClassVar[int]


@dataclass(frozen=True)
class SA(Payload):
    """Security Association payload (RFC 7296 3.3)."""

    TYPE: ClassVar[int] = PayloadType.SA
    proposals: tuple[Proposal, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "proposals", tuple(self.proposals))


@dataclass(frozen=True)
class KE(Payload):
    """Key Exchange payload (RFC 7296 3.4)."""

    TYPE: ClassVar[int] = PayloadType.KE
    group: int
    data: bytes


@dataclass(frozen=True)
class _ID(Payload):
    id_type: int
    data: bytes


@dataclass(frozen=True)
class IDi(_ID):
    """Identification - Initiator payload (RFC 7296 3.5)."""

    TYPE: ClassVar[int] = PayloadType.IDi


@dataclass(frozen=True)
class IDr(_ID):
    """Identification - Responder payload (RFC 7296 3.5)."""

    TYPE: ClassVar[int] = PayloadType.IDr


@dataclass(frozen=True)
class _Cert(Payload):
    encoding: int
    data: bytes


@dataclass(frozen=True)
class CERT(_Cert):
    """Certificate payload (RFC 7296 3.6)."""

    TYPE: ClassVar[int] = PayloadType.CERT


@dataclass(frozen=True)
class CERTREQ(_Cert):
    """Certificate Request payload (RFC 7296 3.7)."""

    TYPE: ClassVar[int] = PayloadType.CERTREQ


@dataclass(frozen=True)
class AUTH(Payload):
    """Authentication payload (RFC 7296 3.8)."""

    TYPE: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes


@dataclass(frozen=True)
class Nonce(Payload):
    """Nonce payload Ni/Nr (RFC 7296 3.9); 16..256 bytes (2.10)."""

    TYPE: ClassVar[int] = PayloadType.NONCE
    data: bytes


@dataclass(frozen=True)
class Notify(Payload):
    """Notify payload (RFC 7296 3.10)."""

    TYPE: ClassVar[int] = PayloadType.NOTIFY
    protocol_id: int
    spi: bytes
    notify_type: int
    data: bytes = b""


@dataclass(frozen=True)
class Delete(Payload):
    """Delete payload (RFC 7296 3.11); every SPI is ``spi_size`` bytes."""

    TYPE: ClassVar[int] = PayloadType.DELETE
    protocol_id: int
    spi_size: int
    spis: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "spis", tuple(self.spis))


@dataclass(frozen=True)
class VendorID(Payload):
    """Vendor ID payload (RFC 7296 3.12)."""

    TYPE: ClassVar[int] = PayloadType.VENDOR_ID
    data: bytes


@dataclass(frozen=True)
class _TS(Payload):
    selectors: tuple[TrafficSelector, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "selectors", tuple(self.selectors))


@dataclass(frozen=True)
class TSi(_TS):
    """Traffic Selector - Initiator payload (RFC 7296 3.13)."""

    TYPE: ClassVar[int] = PayloadType.TSi


@dataclass(frozen=True)
class TSr(_TS):
    """Traffic Selector - Responder payload (RFC 7296 3.13)."""

    TYPE: ClassVar[int] = PayloadType.TSr


@dataclass(frozen=True)
class SK(Payload):
    """Encrypted and Authenticated payload (RFC 7296 3.14), undecrypted.

    ``next_payload`` is the type of the first inner payload, ``body`` is IV, ciphertext and
    ICV as received. It is always the last payload of a message.
    """

    TYPE: ClassVar[int] = PayloadType.SK
    next_payload: int
    body: bytes


@dataclass(frozen=True)
class SKF(Payload):
    """Encrypted and Authenticated Fragment payload (RFC 7383 2.5), undecrypted.

    ``next_payload`` is the first inner payload type in fragment 1 and 0 in the others.
    """

    TYPE: ClassVar[int] = PayloadType.SKF
    next_payload: int
    fragment_number: int
    total_fragments: int
    body: bytes


@dataclass(frozen=True)
class CP(Payload):
    """Configuration payload (RFC 7296 3.15)."""

    TYPE: ClassVar[int] = PayloadType.CP
    cfg_type: int
    attributes: tuple[ConfigAttribute, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", tuple(self.attributes))


@dataclass(frozen=True)
class EAP(Payload):
    """Extensible Authentication payload (RFC 7296 3.16): the raw EAP message."""

    TYPE: ClassVar[int] = PayloadType.EAP
    data: bytes


@dataclass(frozen=True)
class Unknown(Payload):
    """A payload of a type this codec does not know (kept when not critical)."""

    type: int
    critical: bool
    body: bytes


# --------------------------------------------------------------------------------------------
# Header and message


@dataclass(frozen=True)
class Header:
    """IKE header (RFC 7296 3.1).

    ``next_payload`` and ``length`` are filled in by :meth:`Message.decode` and recomputed by
    :meth:`Message.encode`; they take no part in equality.
    """

    spi_i: bytes
    spi_r: bytes
    exchange_type: int
    message_id: int
    initiator: bool = False
    response: bool = False
    version_flag: bool = False  # "V": the sender can speak a higher major version
    minor_version: int = 0  # ignored on receipt (RFC 7296 2.5), kept for re-encoding
    next_payload: int = field(default=0, compare=False)
    length: int = field(default=0, compare=False)

    @property
    def flags(self) -> int:
        return (
            (FLAG_INITIATOR if self.initiator else 0)
            | (FLAG_VERSION if self.version_flag else 0)
            | (FLAG_RESPONSE if self.response else 0)
        )


# chaining order is given by the message; SK / SKF end the chain
_ENCRYPTED = (SK, SKF)


@dataclass(frozen=True)
class Message:
    header: Header
    payloads: tuple[Payload, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "payloads", tuple(self.payloads))

    # ---- encoding ----------------------------------------------------------------------

    def encode(self) -> bytes:
        """Serialise; header length and every "next payload" field are computed."""
        try:
            return self._encode()
        except struct.error as e:
            raise ValueError(f"cannot encode IKEv2 message: {e}") from e

    def _encode(self) -> bytes:
        h = self.header
        if len(h.spi_i) != 8 or len(h.spi_r) != 8:
            raise ValueError("IKE SPIs must be 8 bytes")
        payload_bytes = _encode_chain(self.payloads)
        total = HEADER_LEN + len(payload_bytes)
        version = (IKE_MAJOR_VERSION << 4) | (h.minor_version & 0x0F)
        return (
            _HDR.pack(h.spi_i, h.spi_r, first_type(self.payloads), version, h.exchange_type, h.flags,
                      h.message_id, total)
            + payload_bytes
        )

    # ---- decoding ----------------------------------------------------------------------

    @classmethod
    def decode(cls, data: bytes) -> Message:
        """Parse one IKEv2 message; see the module docstring for the errors raised."""
        data = bytes(data)
        if len(data) < HEADER_LEN:
            raise MalformedMessage(len(data), f"truncated IKE header ({len(data)} < {HEADER_LEN} bytes)")
        spi_i, spi_r, nxt, version, xchg, flags, mid, length = _HDR.unpack_from(data, 0)
        if version >> 4 != IKE_MAJOR_VERSION:
            raise InvalidMajorVersion(17, version >> 4)
        if length != len(data):
            raise MalformedMessage(24, f"header length {length} != message length {len(data)}")
        header = Header(
            spi_i=spi_i,
            spi_r=spi_r,
            exchange_type=xchg,
            message_id=mid,
            initiator=bool(flags & FLAG_INITIATOR),
            response=bool(flags & FLAG_RESPONSE),
            version_flag=bool(flags & FLAG_VERSION),
            minor_version=version & 0x0F,
            next_payload=nxt,
            length=length,
        )
        return cls(header, _decode_chain(data, HEADER_LEN, nxt))




def first_type(payloads) -> int:
    """The "next payload" value that announces the first of *payloads* (0 for none)."""
    return _ptype(payloads[0]) if payloads else 0


def encode_payloads(payloads) -> bytes:
    """The chained payloads alone, as inside an Encrypted payload (RFC 7296 3.14): announce
    them with ``first_type(payloads)``."""
    try:
        return _encode_chain(tuple(payloads))
    except struct.error as e:
        raise ValueError(f"cannot encode IKEv2 payloads: {e}") from e


def decode_payloads(data: bytes, first: int) -> tuple[Payload, ...]:
    """The payload chain of a decrypted Encrypted payload, with the checks and errors of
    :meth:`Message.decode` (offsets count from the start of *data*)."""
    return _decode_chain(bytes(data), 0, first)


def _encode_chain(payloads: tuple[Payload, ...]) -> bytes:
    parts = []
    n = len(payloads)
    for i, p in enumerate(payloads):
        if isinstance(p, _ENCRYPTED):
            if i != n - 1:
                raise ValueError("SK / SKF must be the last payload")
            nxt = p.next_payload
        else:
            nxt = _ptype(payloads[i + 1]) if i + 1 < n else 0
        body = _encode_body(p)
        crit = CRITICAL if isinstance(p, Unknown) and p.critical else 0
        if 4 + len(body) > 0xFFFF:
            raise ValueError(f"payload {i} too long")
        parts.append(_GEN.pack(nxt, crit, 4 + len(body)) + body)
    return b"".join(parts)


def _decode_chain(data: bytes, off: int, nxt: int) -> tuple[Payload, ...]:
    payloads = []
    end = len(data)
    while nxt != 0:
        if end - off < 4:
            raise MalformedMessage(off, f"truncated generic payload header (type {nxt})")
        following, cbyte, plen = _GEN.unpack_from(data, off)
        if plen < 4:
            raise MalformedMessage(off + 2, f"payload length {plen} < 4")
        if plen > end - off:
            raise MalformedMessage(off + 2, f"payload length {plen} exceeds the message ({end - off} left)")
        decoder = _DECODERS.get(nxt)
        if decoder is None:
            if cbyte & CRITICAL:
                raise UnsupportedCriticalPayload(nxt)
            p: Payload = Unknown(nxt, False, data[off + 4 : off + plen])
        else:
            p = decoder(data, off + 4, off + plen, following)
        payloads.append(p)
        off += plen
        if isinstance(p, _ENCRYPTED):
            break
        nxt = following
    if off != end:
        raise MalformedMessage(off, f"{end - off} bytes after the last payload")
    return tuple(payloads)

def _ptype(p: Payload) -> int:
    return p.type if isinstance(p, Unknown) else p.TYPE


# --------------------------------------------------------------------------------------------
# Payload bodies: encoding


def _encode_attr(a: Attribute) -> bytes:
    if not 0 <= a.type < 0x8000:
        raise ValueError(f"attribute type {a.type} out of range")
    if isinstance(a.value, int):
        return struct.pack("!HH", 0x8000 | a.type, a.value)
    return struct.pack("!HH", a.type, len(a.value)) + bytes(a.value)


def _encode_proposals(proposals: tuple[Proposal, ...]) -> bytes:
    out = []
    for pi, prop in enumerate(proposals):
        tparts = []
        for ti, t in enumerate(prop.transforms):
            attrs = b"".join(_encode_attr(a) for a in t.attributes)
            last = 0 if ti == len(prop.transforms) - 1 else 3
            tparts.append(struct.pack("!BBHBBH", last, 0, 8 + len(attrs), t.type, 0, t.id) + attrs)
        tbytes = b"".join(tparts)
        last = 0 if pi == len(proposals) - 1 else 2
        plen = 8 + len(prop.spi) + len(tbytes)
        out.append(
            struct.pack("!BBHBBBB", last, 0, plen, prop.number, prop.protocol_id, len(prop.spi), len(prop.transforms))
            + prop.spi
            + tbytes
        )
    return b"".join(out)


def _encode_ts(sel: TrafficSelector) -> bytes:
    alen = {TSType.TS_IPV4_ADDR_RANGE: 4, TSType.TS_IPV6_ADDR_RANGE: 16}.get(sel.ts_type)
    if alen is None:
        raise ValueError(f"unsupported traffic selector type {sel.ts_type}")
    if len(sel.start_address) != alen or len(sel.end_address) != alen:
        raise ValueError(f"traffic selector type {sel.ts_type} needs {alen}-byte addresses")
    return (
        struct.pack("!BBHHH", sel.ts_type, sel.ip_protocol, 8 + 2 * alen, sel.start_port, sel.end_port)
        + sel.start_address
        + sel.end_address
    )


def _encode_body(p: Payload) -> bytes:
    if isinstance(p, SA):
        return _encode_proposals(p.proposals)
    if isinstance(p, KE):
        return struct.pack("!HH", p.group, 0) + p.data
    if isinstance(p, _ID):
        return struct.pack("!B3x", p.id_type) + p.data
    if isinstance(p, _Cert):
        return struct.pack("!B", p.encoding) + p.data
    if isinstance(p, AUTH):
        return struct.pack("!B3x", p.method) + p.data
    if isinstance(p, Nonce):
        if not NONCE_MIN <= len(p.data) <= NONCE_MAX:
            raise ValueError(f"nonce must be {NONCE_MIN}..{NONCE_MAX} bytes, not {len(p.data)}")
        return p.data
    if isinstance(p, Notify):
        return struct.pack("!BBH", p.protocol_id, len(p.spi), p.notify_type) + p.spi + p.data
    if isinstance(p, Delete):
        if any(len(s) != p.spi_size for s in p.spis):
            raise ValueError(f"every SPI of a Delete payload must be {p.spi_size} bytes")
        return struct.pack("!BBH", p.protocol_id, p.spi_size, len(p.spis)) + b"".join(p.spis)
    if isinstance(p, (VendorID, EAP)):
        return p.data
    if isinstance(p, _TS):
        return struct.pack("!B3x", len(p.selectors)) + b"".join(_encode_ts(s) for s in p.selectors)
    if isinstance(p, SK):
        return p.body
    if isinstance(p, SKF):
        return struct.pack("!HH", p.fragment_number, p.total_fragments) + p.body
    if isinstance(p, CP):
        attrs = b""
        for a in p.attributes:
            if not 0 <= a.type < 0x8000:
                raise ValueError(f"configuration attribute type {a.type} out of range")
            attrs += struct.pack("!HH", a.type, len(a.value)) + a.value
        return struct.pack("!B3x", p.cfg_type) + attrs
    if isinstance(p, Unknown):
        return p.body
    raise TypeError(f"not an IKEv2 payload: {p!r}")


# --------------------------------------------------------------------------------------------
# Payload bodies: decoding. Each decoder gets the whole message and the absolute [start, end)
# of the payload body (after the generic header), plus the generic "next payload" value.


def _need(start: int, end: int, n: int, what: str) -> None:
    if end - start < n:
        raise MalformedMessage(start, f"{what}: need {n} bytes, {end - start} left")


def _dec_sa(d: bytes, start: int, end: int, _nxt: int) -> SA:
    proposals = []
    off = start
    if off == end:
        raise MalformedMessage(off, "SA payload without proposals")
    while off < end:
        _need(off, end, 8, "proposal header")
        last, _r, plen, num, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", d, off)
        if last not in (0, 2):
            raise MalformedMessage(off, f"proposal 'last substruc' {last} is neither 0 nor 2")
        if plen < 8 + spi_size:
            raise MalformedMessage(off + 2, f"proposal length {plen} < 8 + SPI size {spi_size}")
        if plen > end - off:
            raise MalformedMessage(off + 2, f"proposal length {plen} exceeds the SA payload ({end - off} left)")
        pend = off + plen
        if (last == 0) != (pend == end):
            raise MalformedMessage(off, f"proposal 'last substruc' {last} disagrees with its position")
        spi = d[off + 8 : off + 8 + spi_size]
        toff = off + 8 + spi_size
        transforms = []
        while toff < pend:
            _need(toff, pend, 8, "transform header")
            tlast, _r1, tlen, ttype, _r2, tid = struct.unpack_from("!BBHBBH", d, toff)
            if tlast not in (0, 3):
                raise MalformedMessage(toff, f"transform 'last substruc' {tlast} is neither 0 nor 3")
            if tlen < 8:
                raise MalformedMessage(toff + 2, f"transform length {tlen} < 8")
            if tlen > pend - toff:
                raise MalformedMessage(toff + 2, f"transform length {tlen} exceeds the proposal ({pend - toff} left)")
            tend = toff + tlen
            if (tlast == 0) != (tend == pend):
                raise MalformedMessage(toff, f"transform 'last substruc' {tlast} disagrees with its position")
            attrs = []
            aoff = toff + 8
            while aoff < tend:
                _need(aoff, tend, 4, "transform attribute")
                atype, aval = struct.unpack_from("!HH", d, aoff)
                if atype & 0x8000:
                    attrs.append(Attribute(atype & 0x7FFF, aval))
                    aoff += 4
                else:
                    if aval > tend - aoff - 4:
                        raise MalformedMessage(aoff + 2, f"attribute length {aval} exceeds the transform")
                    attrs.append(Attribute(atype, d[aoff + 4 : aoff + 4 + aval]))
                    aoff += 4 + aval
            transforms.append(Transform(ttype, tid, tuple(attrs)))
            toff = tend
        if len(transforms) != ntrans:
            raise MalformedMessage(off + 7, f"proposal says {ntrans} transforms, has {len(transforms)}")
        proposals.append(Proposal(num, proto, spi, tuple(transforms)))
        off = pend
    return SA(tuple(proposals))


def _dec_ke(d: bytes, start: int, end: int, _nxt: int) -> KE:
    _need(start, end, 4, "KE payload")
    (group,) = struct.unpack_from("!H", d, start)
    return KE(group, d[start + 4 : end])


def _dec_id(cls: type[_ID]):  # type: ignore[no-untyped-def]
    def dec(d: bytes, start: int, end: int, _nxt: int) -> _ID:
        _need(start, end, 4, f"{cls.__name__} payload")
        return cls(d[start], d[start + 4 : end])

    return dec


def _dec_cert(cls):  # type: ignore[no-untyped-def]
    def dec(d: bytes, start: int, end: int, _nxt: int):  # type: ignore[no-untyped-def]
        _need(start, end, 1, f"{cls.__name__} payload")
        return cls(d[start], d[start + 1 : end])

    return dec


def _dec_auth(d: bytes, start: int, end: int, _nxt: int) -> AUTH:
    _need(start, end, 4, "AUTH payload")
    return AUTH(d[start], d[start + 4 : end])


def _dec_nonce(d: bytes, start: int, end: int, _nxt: int) -> Nonce:
    n = end - start
    if not NONCE_MIN <= n <= NONCE_MAX:
        raise MalformedMessage(start, f"nonce of {n} bytes (must be {NONCE_MIN}..{NONCE_MAX})")
    return Nonce(d[start:end])


def _dec_notify(d: bytes, start: int, end: int, _nxt: int) -> Notify:
    _need(start, end, 4, "Notify payload")
    proto, spi_size, ntype = struct.unpack_from("!BBH", d, start)
    if spi_size > end - start - 4:
        raise MalformedMessage(start + 1, f"Notify SPI size {spi_size} exceeds the payload")
    spi_end = start + 4 + spi_size
    return Notify(proto, d[start + 4 : spi_end], ntype, d[spi_end:end])


def _dec_delete(d: bytes, start: int, end: int, _nxt: int) -> Delete:
    _need(start, end, 4, "Delete payload")
    proto, spi_size, count = struct.unpack_from("!BBH", d, start)
    if spi_size * count != end - start - 4:
        raise MalformedMessage(
            start + 2, f"Delete payload: {count} SPIs of {spi_size} bytes != {end - start - 4} bytes of SPIs"
        )
    if spi_size == 0 and count:
        raise MalformedMessage(start + 1, "Delete payload: zero-size SPIs with a non-zero count")
    base = start + 4
    spis = tuple(d[base + i * spi_size : base + (i + 1) * spi_size] for i in range(count))
    return Delete(proto, spi_size, spis)


def _dec_raw(cls):  # type: ignore[no-untyped-def]
    def dec(d: bytes, start: int, end: int, _nxt: int):  # type: ignore[no-untyped-def]
        return cls(d[start:end])

    return dec


_TS_ADDR_LEN = {TSType.TS_IPV4_ADDR_RANGE: 4, TSType.TS_IPV6_ADDR_RANGE: 16}


def _dec_ts(cls: type[_TS]):  # type: ignore[no-untyped-def]
    def dec(d: bytes, start: int, end: int, _nxt: int) -> _TS:
        _need(start, end, 4, f"{cls.__name__} payload")
        count = d[start]
        off = start + 4
        sels = []
        while off < end:
            _need(off, end, 4, "traffic selector header")
            ts_type, proto, tlen = struct.unpack_from("!BBH", d, off)
            alen = _TS_ADDR_LEN.get(ts_type)
            if alen is None:
                raise MalformedMessage(off, f"unsupported traffic selector type {ts_type}")
            if tlen != 8 + 2 * alen:
                raise MalformedMessage(off + 2, f"traffic selector type {ts_type} length {tlen} != {8 + 2 * alen}")
            _need(off, end, tlen, "traffic selector")
            sport, eport = struct.unpack_from("!HH", d, off + 4)
            a = off + 8
            sels.append(TrafficSelector(ts_type, proto, sport, eport, d[a : a + alen], d[a + alen : a + 2 * alen]))
            off += tlen
        if len(sels) != count:
            raise MalformedMessage(start, f"{cls.__name__} says {count} selectors, has {len(sels)}")
        return cls(tuple(sels))

    return dec


def _dec_sk(d: bytes, start: int, end: int, nxt: int) -> SK:
    return SK(nxt, d[start:end])


def _dec_skf(d: bytes, start: int, end: int, nxt: int) -> SKF:
    _need(start, end, 4, "SKF payload")
    num, total = struct.unpack_from("!HH", d, start)
    if num == 0 or total == 0 or num > total:
        raise MalformedMessage(start, f"SKF fragment {num} of {total}")
    if num != 1 and nxt != 0:
        raise MalformedMessage(start - 4, f"SKF fragment {num} has next payload {nxt} (must be 0)")
    return SKF(nxt, num, total, d[start + 4 : end])


def _dec_cp(d: bytes, start: int, end: int, _nxt: int) -> CP:
    _need(start, end, 4, "CP payload")
    cfg_type = d[start]
    off = start + 4
    attrs = []
    while off < end:
        _need(off, end, 4, "configuration attribute")
        atype, alen = struct.unpack_from("!HH", d, off)
        if alen > end - off - 4:
            raise MalformedMessage(off + 2, f"configuration attribute length {alen} exceeds the CP payload")
        attrs.append(ConfigAttribute(atype & 0x7FFF, d[off + 4 : off + 4 + alen]))
        off += 4 + alen
    return CP(cfg_type, tuple(attrs))


_DECODERS = {
    PayloadType.SA: _dec_sa,
    PayloadType.KE: _dec_ke,
    PayloadType.IDi: _dec_id(IDi),
    PayloadType.IDr: _dec_id(IDr),
    PayloadType.CERT: _dec_cert(CERT),
    PayloadType.CERTREQ: _dec_cert(CERTREQ),
    PayloadType.AUTH: _dec_auth,
    PayloadType.NONCE: _dec_nonce,
    PayloadType.NOTIFY: _dec_notify,
    PayloadType.DELETE: _dec_delete,
    PayloadType.VENDOR_ID: _dec_raw(VendorID),
    PayloadType.TSi: _dec_ts(TSi),
    PayloadType.TSr: _dec_ts(TSr),
    PayloadType.SK: _dec_sk,
    PayloadType.SKF: _dec_skf,
    PayloadType.CP: _dec_cp,
    PayloadType.EAP: _dec_raw(EAP),
}
