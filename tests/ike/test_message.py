"""IKEv2 message codec (RFC 7296 section 3, RFC 7383 SKF).

- hand-built messages covering every payload class round-trip both ways;
- an IKE_SA_INIT request built independently with scapy's ``scapy.contrib.ikev2`` matches ours
  byte for byte, and each side decodes the other's bytes;
- hypothesis: generated messages round-trip;
- mutation fuzz: >= 100,000 mutated valid encodings either decode or raise MalformedMessage /
  UnsupportedCriticalPayload, nothing else.
"""

from __future__ import annotations

import random
import struct
import time
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsp.ike.message import (
    AUTH,
    CERT,
    CERTREQ,
    CP,
    EAP,
    KE,
    SA,
    SK,
    SKF,
    Attribute,
    AuthMethod,
    CfgType,
    ConfigAttribute,
    Delete,
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    Header,
    IDi,
    IDr,
    IdType,
    IntegId,
    InvalidMajorVersion,
    MalformedMessage,
    Message,
    Nonce,
    Notify,
    NotifyType,
    PayloadType,
    PrfId,
    Proposal,
    ProtocolId,
    TrafficSelector,
    Transform,
    TransformAttr,
    TransformType,
    TSi,
    TSr,
    TSType,
    Unknown,
    UnsupportedCriticalPayload,
    VendorID,
)

SPI_I = bytes.fromhex("0123456789abcdef")
SPI_R = bytes.fromhex("fedcba9876543210")

IKE_PROPOSAL = Proposal(
    1,
    ProtocolId.IKE,
    b"",
    (
        Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, (Attribute(TransformAttr.KEY_LENGTH, 256),)),
        Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
        Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
        Transform(TransformType.DH, DhGroup.MODP_2048),
    ),
)
ESP_PROPOSAL = Proposal(
    2,
    ProtocolId.ESP,
    b"\x11\x22\x33\x44",
    (
        Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, (Attribute(TransformAttr.KEY_LENGTH, 128),)),
        Transform(TransformType.ENCR, EncrId.ENCR_CHACHA20_POLY1305),
        Transform(TransformType.DH, DhGroup.CURVE25519, (Attribute(0x1234, b"tlv-value"), Attribute(5, b""))),
        Transform(TransformType.ESN, EsnId.ESN),
        Transform(TransformType.ESN, EsnId.NO_ESN),
    ),
)
TS4 = TrafficSelector(TSType.TS_IPV4_ADDR_RANGE, 0, 0, 65535, bytes([10, 0, 0, 0]), bytes([10, 0, 0, 255]))
TS6 = TrafficSelector(TSType.TS_IPV6_ADDR_RANGE, 17, 500, 4500, b"\x20\x01" + bytes(14), b"\x20\x01" + b"\xff" * 14)


def header(xchg: int = ExchangeType.IKE_SA_INIT, **kw: object) -> Header:
    return Header(SPI_I, kw.pop("spi_r", SPI_R), xchg, kw.pop("message_id", 0), **kw)  # type: ignore[arg-type]


ALL_PLAIN = (
    SA((IKE_PROPOSAL, ESP_PROPOSAL)),
    KE(DhGroup.ECP_256, bytes(range(64))),
    IDi(IdType.ID_FQDN, b"alice.example"),
    IDr(IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    CERT(4, b"\x30\x82cert"),
    CERTREQ(4, bytes(20)),
    AUTH(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, b"\xaa" * 32),
    Nonce(b"\x01" * 16),
    Nonce(b"\x02" * 256),
    Notify(0, b"", NotifyType.NAT_DETECTION_SOURCE_IP, b"\x00" * 20),
    Notify(ProtocolId.ESP, b"\x01\x02\x03\x04", NotifyType.REKEY_SA),
    Delete(ProtocolId.IKE, 0, ()),
    Delete(ProtocolId.ESP, 4, (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")),
    VendorID(b"ipsp"),
    TSi((TS4, TS6)),
    TSr((TS6,)),
    TSr(()),
    CP(CfgType.CFG_REQUEST, (ConfigAttribute(1), ConfigAttribute(8, b"\x00" * 17))),
    EAP(b"\x01\x02\x00\x05\x01"),
    Unknown(200, False, b"future"),
    Unknown(1, False, b""),
)

MESSAGES = [
    Message(header(initiator=True, spi_r=bytes(8)), ALL_PLAIN),
    Message(header(ExchangeType.IKE_AUTH, message_id=1, initiator=True), (SK(PayloadType.IDi, b"\x00" * 48),)),
    Message(header(ExchangeType.IKE_AUTH, message_id=1, response=True), (VendorID(b"v"), SK(0, b""))),
    Message(header(ExchangeType.IKE_AUTH, message_id=2), (SKF(PayloadType.IDi, 1, 3, b"frag1" * 10),)),
    Message(header(ExchangeType.IKE_AUTH, message_id=2, minor_version=7), (SKF(0, 3, 3, b"x"),)),
    Message(header(ExchangeType.INFORMATIONAL, message_id=0xFFFFFFFF, response=True, version_flag=True), ()),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: f"x{m.header.exchange_type}-{len(m.payloads)}")
def test_round_trip(msg: Message) -> None:
    data = msg.encode()
    back = Message.decode(data)
    assert back == msg
    assert back.encode() == data
    assert back.header.length == len(data)
    first = msg.payloads[0] if msg.payloads else None
    assert back.header.next_payload == (0 if first is None else first.type if isinstance(first, Unknown) else first.TYPE)


def test_every_payload_class_covered() -> None:
    seen = {type(p) for m in MESSAGES for p in m.payloads}
    assert seen == {SA, KE, IDi, IDr, CERT, CERTREQ, AUTH, Nonce, Notify, Delete, VendorID, TSi, TSr, SK, SKF, CP, EAP, Unknown}


def test_header_fields() -> None:
    data = MESSAGES[0].encode()
    assert data[:16] == SPI_I + bytes(8)
    assert data[16] == PayloadType.SA
    assert data[17] == 0x20
    assert data[18] == 34 and data[19] == 0x08
    assert struct.unpack("!II", data[20:28]) == (0, len(data))


def test_major_version_rejected() -> None:
    data = bytearray(MESSAGES[5].encode())
    data[17] = 0x10
    with pytest.raises(InvalidMajorVersion, match="major version 1") as ei:
        Message.decode(bytes(data))
    assert isinstance(ei.value, MalformedMessage) and ei.value.offset == 17
    data[17] = 0x2F  # minor version ignored
    assert Message.decode(bytes(data)).header.minor_version == 15


def test_critical_unknown_payload() -> None:
    data = bytearray(Message(header(), (Unknown(99, True, b"abc"),)).encode())
    assert data[29] == 0x80
    with pytest.raises(UnsupportedCriticalPayload) as ei:
        Message.decode(bytes(data))
    assert ei.value.payload_type == 99
    # the critical bit on a known payload is not an error
    data = bytearray(Message(header(), (VendorID(b"v"),)).encode())
    data[29] = 0x80
    assert Message.decode(bytes(data)).payloads == (VendorID(b"v"),)


@pytest.mark.parametrize(
    "edit, offset, what",
    [
        (lambda b: b[:27], 27, "truncated IKE header"),
        (lambda b: b + b"\0", 24, "header length"),
        (lambda b: b[:28] + b"\x00\x00\x00\x03" + b[32:], 30, "payload length 3 < 4"),
        (lambda b: b[:-1] + bytes([0]), None, None),  # changes nothing structural
    ],
)
def test_specific_errors(edit, offset, what) -> None:  # type: ignore[no-untyped-def]
    base = Message(header(), (VendorID(b"abcdefgh"),)).encode()
    data = edit(base)
    if offset is None:
        Message.decode(data)
        return
    with pytest.raises(MalformedMessage, match=what) as ei:
        Message.decode(data)
    assert ei.value.offset == offset


def _sa_msg() -> bytes:
    return Message(header(), (SA((IKE_PROPOSAL,)),)).encode()


def _patch(data: bytes, off: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


@pytest.mark.parametrize(
    "off, fmt, value, what",
    [
        (32, "!B", 2, "disagrees with its position"),  # proposal last flag
        (32, "!B", 1, "neither 0 nor 2"),
        (39, "!B", 3, "says 3 transforms, has 4"),
        (40, "!B", 1, "neither 0 nor 3"),  # first transform last flag
        (40, "!B", 0, "disagrees with its position"),
        (42, "!H", 7, "transform length 7 < 8"),
        (34, "!H", 200, "exceeds the SA payload"),
        (48, "!H", 0x000E, "attribute length"),  # TV -> TLV with a huge length
    ],
)
def test_substructure_errors(off: int, fmt: str, value: int, what: str) -> None:
    with pytest.raises(MalformedMessage, match=what):
        Message.decode(_patch(_sa_msg(), off, fmt, value))


def test_nonce_length_checked() -> None:
    with pytest.raises(ValueError):
        Message(header(), (Nonce(b"\x00" * 15),)).encode()
    raw = bytearray(Message(header(), (Nonce(b"\x00" * 16),)).encode())
    raw = raw[:-1]
    struct.pack_into("!I", raw, 24, len(raw))
    struct.pack_into("!H", raw, 30, 4 + 15)
    with pytest.raises(MalformedMessage, match="nonce of 15 bytes"):
        Message.decode(bytes(raw))


def test_sk_must_be_last() -> None:
    with pytest.raises(ValueError):
        Message(header(), (SK(0, b""), VendorID(b""))).encode()
    raw = Message(header(), (SK(0, b"abc"),)).encode()
    raw = raw + b"\x00\x00\x00\x04"
    raw = raw[:24] + struct.pack("!I", len(raw)) + raw[28:]
    with pytest.raises(MalformedMessage, match="after the last payload"):
        Message.decode(raw)


def test_constants() -> None:
    assert NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD == 1 and NotifyType.SIGNATURE_HASH_ALGORITHMS == 16431
    assert NotifyType.IKEV2_FRAGMENTATION_SUPPORTED == 16430 and NotifyType.CHILD_SA_NOT_FOUND == 44
    assert (EncrId.ENCR_AES_CBC, EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305) == (12, 20, 28)
    assert (PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128) == (5, 12)
    assert (DhGroup.MODP_2048, DhGroup.ECP_256, DhGroup.CURVE25519, EsnId.NO_ESN, EsnId.ESN) == (14, 19, 31, 0, 1)
    assert (PayloadType.SK, PayloadType.SKF, ExchangeType.IKE_SA_INIT) == (46, 53, 34)


# --------------------------------------------------------------------------------------------
# scapy cross-check


def _scapy():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from scapy.all import load_contrib

        load_contrib("ikev2")
        from scapy.contrib import ikev2
    return ikev2


KE_DATA = bytes((i * 7) & 0xFF for i in range(256))
NONCE_DATA = bytes(range(100, 132))
NATD = bytes(range(20))


def _our_sa_init() -> Message:
    return Message(
        header(initiator=True, spi_r=bytes(8)),
        (
            SA((IKE_PROPOSAL,)),
            KE(DhGroup.MODP_2048, KE_DATA),
            Nonce(NONCE_DATA),
            Notify(0, b"", NotifyType.NAT_DETECTION_SOURCE_IP, NATD),
        ),
    )


def test_scapy_ike_sa_init() -> None:
    ik = _scapy()
    trans = (
        ik.IKEv2_Transform(transform_type=1, transform_id=12, key_length=0x800E0100, length=12)
        / ik.IKEv2_Transform(transform_type=2, transform_id=5)
        / ik.IKEv2_Transform(transform_type=3, transform_id=12)
        / ik.IKEv2_Transform(transform_type=4, transform_id=14)
    )
    pkt = (
        ik.IKEv2(init_SPI=SPI_I, resp_SPI=bytes(8), exch_type=34, flags="Initiator", id=0)
        / ik.IKEv2_SA(prop=ik.IKEv2_Proposal(proposal=1, proto=1, trans_nb=4, trans=trans))
        / ik.IKEv2_KE(group=14, ke=KE_DATA)
        / ik.IKEv2_Nonce(nonce=NONCE_DATA)
        / ik.IKEv2_Notify(proto=0, type=16388, notify=NATD)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = bytes(pkt)
    ours = _our_sa_init().encode()
    assert ours == theirs

    # our decoder on scapy's bytes
    m = Message.decode(theirs)
    assert m == _our_sa_init()
    assert m.header.spi_i == SPI_I and m.header.initiator and not m.header.response
    sa = m.payloads[0]
    assert isinstance(sa, SA)
    assert [(t.type, t.id) for t in sa.proposals[0].transforms] == [(1, 12), (2, 5), (3, 12), (4, 14)]
    assert sa.proposals[0].transforms[0].attributes == (Attribute(14, 256),)

    # scapy's decoder on our bytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = ik.IKEv2(ours)
    assert p.init_SPI == SPI_I and p.resp_SPI == bytes(8)
    assert p.exch_type == 34 and int(p.flags) == 0x08 and p.id == 0 and p.length == len(ours)
    assert p.next_payload == 33
    prop = p[ik.IKEv2_Proposal]
    assert prop.proto == 1 and prop.trans_nb == 4
    t = prop.trans
    got = []
    while t is not None and isinstance(t, ik.IKEv2_Transform):
        got.append((t.transform_type, t.transform_id))
        t = t.payload if t.payload else None
    assert got == [(1, 12), (2, 5), (3, 12), (4, 14)]
    assert prop.trans.length == 12 and prop.trans.key_length == 256  # scapy reads the TV Key Length attribute
    assert p[ik.IKEv2_KE].group == 14 and p[ik.IKEv2_KE].ke == KE_DATA
    assert p[ik.IKEv2_Nonce].nonce == NONCE_DATA
    assert p[ik.IKEv2_Notify].type == 16388 and p[ik.IKEv2_Notify].notify == NATD


# --------------------------------------------------------------------------------------------
# hypothesis round trip

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
blob = st.binary(max_size=40)

attr = st.builds(Attribute, st.integers(0, 0x7FFF), st.one_of(u16, blob))
transform = st.builds(Transform, u8, u16, st.lists(attr, max_size=3).map(tuple))
proposal = st.builds(
    Proposal, u8, u8, st.binary(max_size=8), st.lists(transform, max_size=6).map(tuple)
)


@st.composite
def selector(draw):  # type: ignore[no-untyped-def]
    t = draw(st.sampled_from([7, 8]))
    n = 4 if t == 7 else 16
    return TrafficSelector(t, draw(u8), draw(u16), draw(u16), draw(st.binary(min_size=n, max_size=n)), draw(st.binary(min_size=n, max_size=n)))


@st.composite
def delete(draw):  # type: ignore[no-untyped-def]
    size = draw(st.integers(0, 8))
    spis = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=4)) if size else []
    return Delete(draw(u8), size, tuple(spis))


known_types = {int(t) for t in PayloadType} | set(range(33, 54))
plain = st.one_of(
    st.builds(SA, st.lists(proposal, min_size=1, max_size=3).map(tuple)),
    st.builds(KE, u16, blob),
    st.builds(IDi, u8, blob),
    st.builds(IDr, u8, blob),
    st.builds(CERT, u8, blob),
    st.builds(CERTREQ, u8, blob),
    st.builds(AUTH, u8, blob),
    st.builds(Nonce, st.binary(min_size=16, max_size=256)),
    st.builds(Notify, u8, st.binary(max_size=8), u16, blob),
    delete(),
    st.builds(VendorID, blob),
    st.builds(TSi, st.lists(selector(), max_size=3).map(tuple)),
    st.builds(TSr, st.lists(selector(), max_size=3).map(tuple)),
    st.builds(CP, u8, st.lists(st.builds(ConfigAttribute, st.integers(0, 0x7FFF), blob), max_size=3).map(tuple)),
    st.builds(EAP, blob),
    st.builds(Unknown, u8.filter(lambda t: t not in known_types and t != 0), st.just(False), blob),
)
last = st.one_of(
    st.builds(SK, u8, blob),
    st.builds(SKF, st.just(0), st.integers(2, 5), st.just(5), blob),
    st.builds(SKF, u8, st.just(1), st.integers(1, 9), blob),
)
headers = st.builds(
    Header,
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=8, max_size=8),
    u8,
    st.integers(0, 0xFFFFFFFF),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 15),
)


@st.composite
def messages(draw):  # type: ignore[no-untyped-def]
    ps = draw(st.lists(plain, max_size=6))
    if draw(st.booleans()):
        ps.append(draw(last))
    return Message(draw(headers), tuple(ps))


@settings(max_examples=300, deadline=None)
@given(messages())
def test_hypothesis_round_trip(msg: Message) -> None:
    data = msg.encode()
    back = Message.decode(data)
    assert back == msg
    assert back.encode() == data


# --------------------------------------------------------------------------------------------
# mutation fuzz

FUZZ_COUNT = 100_000


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del b[rng.randrange(len(b)) :]
    elif kind == 2:  # length-ish 16-bit field edit (random position)
        i = rng.randrange(len(b) - 1)
        v = rng.choice([0, 1, 3, 4, 7, 8, 0xFFFF, struct.unpack_from("!H", b, i)[0] + rng.randint(-9, 9)])
        struct.pack_into("!H", b, i, v & 0xFFFF)
    elif kind == 3:  # insertion
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 12))
    elif kind == 4:  # deletion
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 12)]
    else:  # byte edits
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    if rng.random() < 0.5 and len(b) >= 28:  # keep the header length consistent to reach deeper
        struct.pack_into("!I", b, 24, len(b))
    return bytes(b)


def test_mutation_fuzz() -> None:
    rng = random.Random(7296)
    seeds = [m.encode() for m in MESSAGES] + [_our_sa_init().encode(), _sa_msg()]
    counts = {"ok": 0, "malformed": 0, "critical": 0}
    t0 = time.perf_counter()
    for _ in range(FUZZ_COUNT):
        data = _mutate(rng, rng.choice(seeds))
        try:
            m = Message.decode(data)
        except MalformedMessage:
            counts["malformed"] += 1
        except UnsupportedCriticalPayload:
            counts["critical"] += 1
        else:
            counts["ok"] += 1
            assert Message.decode(m.encode()) == m  # whatever decodes re-encodes to the same message
    elapsed = time.perf_counter() - t0
    assert sum(counts.values()) == FUZZ_COUNT
    assert counts["ok"] > 1000 and counts["malformed"] > 1000
    print(f"mutation fuzz: {FUZZ_COUNT} messages in {elapsed:.1f}s {counts}")
