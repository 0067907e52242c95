"""X.509 credentials, path and CRL checking, IKE identities (ipsp.ike.certs).

Certificates come from tests/ike/pki.py, generated per test session (ECDSA, fast).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ipsp.errors import ConfigError
from ipsp.ike.certs import (
    CERT_ENCODING_X509_SIGNATURE,
    CertificateError,
    Credential,
    TrustStore,
    cert_matches_identity,
    certreq_data,
    id_payload,
    identity_from_payload,
    identity_matches,
    load_certificates,
    parse_dn,
)
from ipsp.ike.message import IdType
from ipsp.pad import Identity

if "ike_pki" not in sys.modules:  # --import-mode=importlib: load the sibling helper by path
    _spec = importlib.util.spec_from_file_location("ike_pki", Path(__file__).with_name("pki.py"))
    sys.modules["ike_pki"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["ike_pki"])
pki = sys.modules["ike_pki"]

NOW = dt.datetime.now(dt.timezone.utc)
DAY, HOUR = dt.timedelta(days=1), dt.timedelta(hours=1)


def crl(pem: bytes) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(pem)


@pytest.fixture(scope="module")
def root():
    return pki.make_ca("root")


@pytest.fixture(scope="module")
def inter(root):
    return pki.make_ca("intermediate", parent=root)


def reason(store, ee, chain=(), **kw) -> str:
    with pytest.raises(CertificateError) as info:
        store.verify(ee.cert, [c.cert for c in chain], **kw)
    assert "certificate 'CN=" in str(info.value)
    return info.value.reason


# --- path building ----------------------------------------------------------------------------

def test_direct_and_intermediate_paths(root, inter):
    store = TrustStore([root.cert])
    ee = pki.make_cert(root, "moon", san_dns=["moon.example"])
    assert store.verify(ee.cert) == (ee.cert, root.cert)
    ee2 = pki.make_cert(inter, "sun")
    assert store.verify(ee2.cert, [inter.cert]) == (ee2.cert, inter.cert, root.cert)
    # irrelevant certificates sent along are ignored; a missing intermediate is untrusted
    other = pki.make_ca("other")
    assert store.verify(ee2.cert, [other.cert, inter.cert]) == (ee2.cert, inter.cert, root.cert)
    assert reason(store, ee2) == "untrusted"
    # a configured intermediate is an anchor of its own
    assert TrustStore([inter.cert]).verify(ee2.cert) == (ee2.cert, inter.cert)


def test_wrong_anchor_is_untrusted(root):
    ee = pki.make_cert(root, "moon")
    assert reason(TrustStore([pki.make_ca("elsewhere").cert]), ee) == "untrusted"
    assert reason(TrustStore([]), ee) == "untrusted"


@pytest.mark.parametrize("where", ["end_entity", "intermediate", "anchor"])
@pytest.mark.parametrize("when", ["expired", "not_yet_valid"])
def test_validity_period(root, where, when):
    span = ({"not_before": NOW - 3 * DAY, "not_after": NOW - HOUR} if when == "expired"
            else {"not_before": NOW + DAY})
    ca = pki.make_ca("short root", **span) if where == "anchor" else root
    mid = pki.make_ca("mid", parent=ca, **(span if where == "intermediate" else {}))
    ee = pki.make_cert(mid, "moon", **(span if where == "end_entity" else {}))
    store = TrustStore([ca.cert])
    with pytest.raises(CertificateError) as info:
        store.verify(ee.cert, [mid.cert])
    assert info.value.reason == when
    bad = {"end_entity": ee, "intermediate": mid, "anchor": ca}[where]
    assert bad.cert.subject.rfc4514_string() in str(info.value)
    # the same path is fine at a time inside every validity period
    later = NOW - 2 * HOUR if when == "expired" else NOW + 2 * DAY
    assert len(store.verify(ee.cert, [mid.cert], now=later)) == 3


def test_revocation(root, inter):
    ee = pki.make_cert(root, "moon", serial=4711)
    sub = pki.make_cert(inter, "sun", serial=4711)
    store = TrustStore([root.cert], [crl(pki.make_crl(root, [4711]))])
    with pytest.raises(CertificateError, match="4711|0x1267") as info:
        store.verify(ee.cert)
    assert info.value.reason == "revoked"
    # the root's CRL speaks for the root's serials only; a revoked intermediate fails the path
    assert store.verify(sub.cert, [inter.cert])[0] == sub.cert
    store2 = TrustStore([root.cert], [crl(pki.make_crl(root, [inter.cert.serial_number]))])
    assert reason(store2, sub, [inter]) == "revoked"
    # other serials revoked: fine; a newer CRL replaces the old one, an older one is ignored
    store3 = TrustStore([root.cert], [crl(pki.make_crl(root, [1, 2, 3]))])
    assert store3.verify(ee.cert)
    store3.add_crl(crl(pki.make_crl(root, [4711], last_update=NOW - 2 * DAY)))
    assert store3.verify(ee.cert)
    store3.add_crl(crl(pki.make_crl(root, [4711], last_update=NOW)))
    assert reason(store3, ee) == "revoked"


def test_crl_signed_by_another_key_is_refused(root, tmp_path):
    impostor = pki.make_ca("root")  # same name, different key
    forged = crl(pki.make_crl(impostor, [1]))
    with pytest.raises(ConfigError, match="not signed"):
        TrustStore([root.cert], [forged])
    stranger = crl(pki.make_crl(pki.make_ca("stranger"), [1]))
    with pytest.raises(ConfigError, match="not a configured CA"):
        TrustStore([root.cert], [stranger])
    ca_path, _ = pki.write(tmp_path, "root", root)
    (tmp_path / "forged.crl").write_bytes(pki.make_crl(impostor, [1]))
    with pytest.raises(ConfigError) as info:
        TrustStore.load([ca_path], [tmp_path / "forged.crl"])
    assert info.value.path == str(tmp_path / "forged.crl")


def test_expired_crl(root):
    ee = pki.make_cert(root, "moon")
    old = crl(pki.make_crl(root, [], last_update=NOW - 3 * DAY, next_update=NOW - HOUR))
    store = TrustStore([root.cert], [old])
    assert reason(store, ee) == "crl_expired"
    assert store.verify(ee.cert, now=NOW - 2 * HOUR)


def test_issuer_must_be_a_ca(root):
    fake_ca = pki.make_cert(root, "not a ca")  # basicConstraints cA=FALSE
    ee = pki.make_cert(fake_ca, "moon")
    assert reason(TrustStore([root.cert]), ee, [fake_ca]) == "not_a_ca"
    # keyUsage keyCertSign but no basicConstraints (6.1.4 (k)); cA=TRUE without keyCertSign (n)
    cert_sign = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
    for bc, ku in ((None, cert_sign), (x509.BasicConstraints(ca=True, path_length=None), ee.cert.extensions
                                       .get_extension_for_class(x509.KeyUsage).value)):
        b = pki._builder(pki._name("signer"), root.cert.subject, None, None).add_extension(ku, critical=True)
        signer = pki._issue(b.add_extension(bc, critical=True) if bc else b, pki._key("ecdsa"), root)
        assert reason(TrustStore([root.cert]), pki.make_cert(signer, "moon"), [signer]) == "not_a_ca"


def test_forged_signature(root):
    impostor = pki.make_ca("root")  # same subject, different key
    forged = pki.make_cert(impostor, "moon")
    assert reason(TrustStore([root.cert]), forged) == "bad_signature"
    # a flipped bit in the signature: the DER still parses, the signature does not verify
    der = bytearray(pki.make_cert(root, "moon").cert.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    cert = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(CertificateError) as info:
        TrustStore([root.cert]).verify(cert)
    assert info.value.reason == "bad_signature"


def test_path_length_constraint(root):
    mid0 = pki.make_ca("mid0", parent=root, path_length=0)
    below = pki.make_ca("below", parent=mid0)
    ee = pki.make_cert(below, "moon")
    store = TrustStore([root.cert])
    assert reason(store, ee, [below, mid0]) == "path_length"
    assert len(store.verify(pki.make_cert(mid0, "ok").cert, [mid0.cert])) == 3
    strict_root = pki.make_ca("strict", path_length=0)
    mid = pki.make_ca("mid", parent=strict_root)
    assert reason(TrustStore([strict_root.cert]), pki.make_cert(mid, "x"), [mid]) == "path_length"


def test_max_depth(root):
    chain, ca = [], root
    for i in range(8):
        ca = pki.make_ca(f"level {i}", parent=ca)
        chain.append(ca)
    ee = pki.make_cert(ca, "deep")
    assert reason(TrustStore([root.cert]), ee, chain) == "untrusted"
    assert len(TrustStore([chain[1].cert]).verify(ee.cert, [c.cert for c in chain[2:]])) == 8


# --- identities -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, id_type, data", [
    ("ip:192.0.2.1", IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    ("ip:2001:db8::1", IdType.ID_IPV6_ADDR, bytes.fromhex("20010db8" + "00" * 11 + "01")),
    ("fqdn:gw1.example.net", IdType.ID_FQDN, b"gw1.example.net"),
    ("email:ike@example.net", IdType.ID_RFC822_ADDR, b"ike@example.net"),
    ("keyid:0a0b0c", IdType.ID_KEY_ID, b"\x0a\x0b\x0c"),
])
def test_id_payload_round_trip(text, id_type, data):
    ident = Identity.parse(text)
    assert id_payload(ident) == (id_type, data)
    assert identity_from_payload(id_type, data) == ident


def test_dn_and_keyid_payloads():
    t, der = id_payload(Identity("dn", "C=CH, O=strongSwan, CN=moon"))
    assert t == IdType.ID_DER_ASN1_DN
    name = x509.Name.from_rfc4514_string("C=CH,O=strongSwan,CN=moon")
    assert der == name.public_bytes()
    back = identity_from_payload(t, der)
    assert back == Identity("dn", name.rfc4514_string())
    assert id_payload(back) == (t, der)
    # a key ID that is not hex is sent as its UTF-8 bytes and comes back as hex
    t, data = id_payload(Identity("keyid", "moon"))
    assert (t, data) == (IdType.ID_KEY_ID, b"moon")
    assert identity_matches(identity_from_payload(t, data), Identity("keyid", "moon"))


@pytest.mark.parametrize("id_type, data", [
    (IdType.ID_IPV4_ADDR, b"\x01\x02\x03"),
    (IdType.ID_IPV6_ADDR, b"\x00" * 4),
    (IdType.ID_FQDN, "gw\u00e9.example".encode()),
    (IdType.ID_FQDN, b"a.example\x00.evil"),
    (IdType.ID_FQDN, b""),
    (IdType.ID_RFC822_ADDR, b"no-at-sign"),
    (IdType.ID_DER_ASN1_DN, b"\x30\x05\x31\x03"),
    (IdType.ID_DER_ASN1_DN, b"garbage"),
    (IdType.ID_DER_ASN1_DN, b"\x30\x00"),
    (IdType.ID_DER_ASN1_DN, x509.Name.from_rfc4514_string("CN=a").public_bytes() + b"\x00"),
    (IdType.ID_KEY_ID, b""),
    (IdType.ID_DER_ASN1_GN, b"\x82\x01a"),
    (99, b"x"),
])
def test_malformed_id_payloads(id_type, data):
    with pytest.raises(ValueError):
        identity_from_payload(id_type, data)


def test_identity_matching():
    dn = Identity("dn", "CN=moon,O=strongSwan,C=CH")
    assert identity_matches(dn, Identity("dn", "CN=moon, O=strongSwan,  C=CH"))
    assert not identity_matches(dn, Identity("dn", "CN=sun,O=strongSwan,C=CH"))
    assert not identity_matches(dn, Identity("dn", "C=CH,O=strongSwan,CN=moon"))  # RDN order counts
    assert identity_matches(Identity("dn", "CN=a+O=b"), Identity("dn", "O=b + CN=a"))  # RDN is a set
    assert identity_matches(Identity("fqdn", "GW.Example.net"), Identity("fqdn", "gw.example.net."))
    assert identity_matches(Identity("email", "Ike@EXAMPLE.net"), Identity("email", "ike@example.net"))
    assert identity_matches(Identity("ip", "2001:db8::1"), Identity("ip", "2001:DB8:0::1"))
    assert not identity_matches(Identity("fqdn", "a.example"), Identity("dn", "CN=a.example"))
    assert not identity_matches(Identity("dn", "nonsense"), Identity("dn", "nonsense"))


def test_cert_matches_identity(root):
    ee = pki.make_cert(root, "moon", san_dns=["Moon.Example"], san_ip=["192.0.2.7", "2001:db8::7"],
                       san_email=["moon@example.net"]).cert
    yes = ["fqdn:moon.example", "ip:192.0.2.7", "ip:2001:db8::7", "email:MOON@example.net"]
    no = ["fqdn:sun.example", "fqdn:moon", "ip:192.0.2.8", "email:sun@example.net", "keyid:00"]
    for text in yes:
        assert cert_matches_identity(ee, Identity.parse(text)), text
    for text in no:
        assert not cert_matches_identity(ee, Identity.parse(text)), text
    assert cert_matches_identity(ee, Identity("dn", "CN=moon, O=ipsp test"))
    assert not cert_matches_identity(ee, Identity("dn", "O=ipsp test, CN=moon"))
    assert not cert_matches_identity(ee, Identity("fqdn", "moon"))  # a CN is not an FQDN (RFC 4945)
    assert not cert_matches_identity(pki.make_cert(root, "bare").cert, Identity("fqdn", "bare"))


# --- loading ----------------------------------------------------------------------------------

def test_credential_load(root, inter, tmp_path):
    ee = pki.make_cert(inter, "moon", key_type="rsa", san_dns=["moon.example"], san_ip=["192.0.2.1"])
    cert_path, key_path = pki.write(tmp_path, "moon", ee)
    inter_path, _ = pki.write(tmp_path, "inter", inter)
    cred = Credential.load(cert_path, key_path, [inter_path])
    assert cred.cert == ee.cert and cred.chain == (inter.cert,)
    assert cred.identities() == (Identity("dn", "CN=moon,O=ipsp test"), Identity("fqdn", "moon.example"),
                                 Identity("ip", "192.0.2.1"))
    assert all(cert_matches_identity(cred.cert, i) for i in cred.identities())
    # DER files, chain in the certificate file
    der = tmp_path / "moon.der"
    der.write_bytes(ee.cert.public_bytes(serialization.Encoding.DER))
    key_der = tmp_path / "moon.key.der"
    key_der.write_bytes(ee.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    assert Credential.load(der, key_der).key.private_numbers() == ee.key.private_numbers()
    (tmp_path / "full.pem").write_bytes(ee.cert_pem + inter.cert_pem)
    assert Credential.load(tmp_path / "full.pem", key_path).chain == (inter.cert,)
    assert TrustStore([root.cert]).verify(cred.cert, cred.chain)[-1] == root.cert


def test_credential_load_errors(root, tmp_path):
    ee = pki.make_cert(root, "moon")
    cert_path, key_path = pki.write(tmp_path, "moon", ee)
    _, other_key = pki.write(tmp_path, "other", pki.make_cert(root, "other"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    cases = [((tmp_path / "missing.pem", key_path), tmp_path / "missing.pem", "cannot read"),
             ((garbage, key_path), garbage, "certificate"),
             ((cert_path, garbage), garbage, "private key"),
             ((cert_path, other_key), other_key, "does not match"),
             ((cert_path, key_path, [tmp_path / "nochain.pem"]), tmp_path / "nochain.pem", "cannot read"),
             # a device or a FIFO named by mistake is refused at once, not read for ever (or waited on)
             ((Path("/dev/zero"), key_path), Path("/dev/zero"), "not a regular file"),
             ((fifo, key_path), fifo, "not a regular file"),
             ((tmp_path, key_path), tmp_path, "cannot read: Is a directory")]
    for args, path, words in cases:
        with pytest.raises(ConfigError, match=words) as info:
            Credential.load(*args)
        assert info.value.path == str(path) and str(path) in str(info.value)


def test_trust_store_load(root, inter, tmp_path):
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(root.cert_pem + inter.cert_pem)
    (tmp_path / "root.der").write_bytes(root.cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "root.crl").write_bytes(crl(pki.make_crl(root, [5])).public_bytes(serialization.Encoding.DER))
    store = TrustStore.load([bundle], [tmp_path / "root.crl"])
    assert store.anchors == (root.cert, inter.cert)
    assert TrustStore.load(tmp_path / "root.der").anchors == (root.cert,)
    assert reason(store, pki.make_cert(root, "r", serial=5)) == "revoked"
    for bad in (tmp_path / "nope.pem", tmp_path / "root.crl"):
        with pytest.raises(ConfigError) as info:
            TrustStore.load([bad])
        assert info.value.path == str(bad)
    with pytest.raises(ConfigError) as info:
        TrustStore.load([bundle], [bundle])
    assert info.value.path == str(bundle)


def test_cert_payload_and_certreq(root, inter):
    der = root.cert.public_bytes(serialization.Encoding.DER)
    assert CERT_ENCODING_X509_SIGNATURE == 4
    assert load_certificates(der) == [root.cert]
    for bad in (b"", b"garbage", der[:-10], der + b"\x00"):
        with pytest.raises(ValueError):
            load_certificates(bad)
    other = pki.make_ca("other")
    store = TrustStore([root.cert, inter.cert])
    data = certreq_data(store)
    assert len(data) == 40
    assert store.anchor_for_certreq(data) == [root.cert, inter.cert]
    assert store.anchor_for_certreq(data[20:]) == [inter.cert]
    assert store.anchor_for_certreq(certreq_data(TrustStore([other.cert]))) == []
    with pytest.raises(ValueError):
        store.anchor_for_certreq(data[:-1])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2, 3, 5, 9, 10, 11, 0, 4, 255]), st.binary(max_size=40))
def test_arbitrary_id_payloads(id_type, data):
    """Any payload decodes to an identity that encodes back to the same bytes (DN: the same
    name), or raises ValueError; nothing else escapes."""
    try:
        ident = identity_from_payload(id_type, data)
    except ValueError:
        return
    t, back = id_payload(ident)
    assert t == id_type
    if id_type == IdType.ID_DER_ASN1_DN:
        assert identity_matches(identity_from_payload(t, back), ident)
    elif id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        assert back.lower() == data.lower().rstrip(b".") or back == data.rstrip(b".").lower()
    else:
        assert back == data



_ATTRS = [x509.oid.NameOID.COMMON_NAME, x509.oid.NameOID.ORGANIZATION_NAME,
          x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME, x509.ObjectIdentifier("1.2.3.4")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_ATTRS),
                          st.text("aZ09 .,+#\\=\"<>;\u00e9\u4e2d", min_size=1, max_size=10)),
                min_size=1, max_size=4))
def test_dn_string_round_trip(attrs):
    """DER -> RFC 4514 string (escapes, spaces, '#', '+', non-ASCII) -> DER names the same DN."""
    name = x509.Name([x509.NameAttribute(oid, v) for oid, v in attrs])
    ident = identity_from_payload(IdType.ID_DER_ASN1_DN, name.public_bytes())
    t, der = id_payload(ident)
    assert identity_from_payload(t, der) == ident
    assert parse_dn(ident.value) == name
