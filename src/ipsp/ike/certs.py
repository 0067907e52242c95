"""X.509 credentials, certificate path and CRL checking, IKE identities.

- :func:`id_payload` / :func:`identity_from_payload` convert a PAD :class:`Identity` to and
  from the Identification payload (RFC 7296 3.5);
- :class:`Credential` is our own certificate, key and chain (sent in CERT payloads, RFC 7296
  3.6); :class:`TrustStore` holds the trust anchors and CRLs a peer's certificate is checked
  against (a subset of RFC 5280 6.1, see :meth:`TrustStore.verify`);
- :func:`cert_matches_identity` ties the peer's ID payload to its certificate (RFC 4945 3.1);
- :func:`certreq_data` / :meth:`TrustStore.anchor_for_certreq` encode and decode the CERTREQ
  certification authority field (RFC 7296 3.7).

All cryptography (signatures, hashes, ASN.1 parsing) is ``cryptography``'s.

Distinguished names as strings are RFC 4514 strings, most specific RDN first, as
``x509.Name.rfc4514_string()`` prints them ("CN=moon,O=strongSwan,C=CH"); a space after a
separator is allowed. strongSwan and ``openssl -nameopt oneline`` print the RDNs in the
opposite (DER) order ("C=CH, O=strongSwan, CN=moon"): that string names a different DN here.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ipsp.errors import ConfigError
from ipsp.files import FileError, read_input
from ipsp.ike.message import IdType
from ipsp.pad import Identity

__all__ = [
    "CERT_ENCODING_X509_SIGNATURE",
    "CertificateError",
    "Credential",
    "TrustStore",
    "cert_matches_identity",
    "certreq_data",
    "id_payload",
    "identity_from_payload",
    "identity_matches",
    "load_certificates",
    "parse_dn",
]

# RFC 7296 3.6 Certificate Encoding "X.509 Certificate - Signature": one DER certificate
CERT_ENCODING_X509_SIGNATURE = 4

MAX_PATH = 8  # certificates in a path, end entity and anchor included
# a certificate, key, chain or CRL file read at most: a large CA's CRL runs to a few MiB; a
# path named by mistake (/dev/zero, a disk image) is refused instead of read into memory
PKI_FILE_MAX = 64 << 20

REASONS = frozenset({
    "untrusted",          # no path to a trust anchor
    "expired",            # a certificate in the path is past notAfter
    "not_yet_valid",      # ... or before notBefore
    "revoked",            # listed in its issuer's CRL
    "bad_signature",      # an issuer with the right name did not sign it (or its CRL)
    "not_a_ca",           # an issuer lacks basicConstraints cA / keyUsage keyCertSign
    "path_length",        # an issuer's pathLenConstraint is exceeded
    "crl_expired",        # the issuer's CRL is past nextUpdate
    "identity_mismatch",  # the certificate does not hold the peer's ID (for callers)
    "bad_certificate",    # undecodable certificate or extension
})

# strongSwan and OpenSSL spell these; cryptography's RFC 4514 parser does not know them
_DN_ATTRS = {"E": NameOID.EMAIL_ADDRESS, "emailAddress": NameOID.EMAIL_ADDRESS,
             "serialNumber": NameOID.SERIAL_NUMBER}


class CertificateError(ValueError):
    """A certificate was refused; ``reason`` is one of :data:`REASONS`, ``str()`` a log line
    naming the certificate's subject and why."""

    def __init__(self, reason: str, message: str, certificate: x509.Certificate | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown certificate error reason {reason!r}")
        self.reason = reason
        self.certificate = certificate
        who = f"certificate {_subject(certificate)!r}: " if certificate is not None else ""
        super().__init__(f"{who}{message} ({reason})")


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "<empty subject>"
    except ValueError:
        return "<undecodable subject>"


# ---------------------------------------------------------------------------------------------
# identities

def parse_dn(text: str) -> x509.Name:
    """An RFC 4514 string to an ``x509.Name``; whitespace around unescaped ',' and '+' is
    dropped (RFC 4514 has none, but people and strongSwan write "O=x, CN=y")."""
    parts, cur, i = [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if ch in ",+":
            parts.append((_strip(cur), ch))
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append((_strip(cur), ""))
    canonical = "".join(p + sep for p, sep in parts)
    try:
        name = x509.Name.from_rfc4514_string(canonical, _DN_ATTRS)
    except ValueError as e:
        raise ValueError(f"{text!r} is not an RFC 4514 distinguished name ({e or 'syntax'})") from None
    if not name.rdns:
        raise ValueError("empty distinguished name")
    return name


def _strip(s: str) -> str:
    s = s.lstrip()
    t = s.rstrip()
    if len(t) < len(s) and (len(t) - len(t.rstrip("\\"))) % 2:
        t += " "  # the last space was escaped ("\ "), so it belongs to the value
    return t


def _keyid_bytes(value: str) -> bytes:
    if len(value) % 2 == 0:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    return value.encode("utf-8")


def id_payload(identity: Identity) -> tuple[int, bytes]:
    """The (ID Type, Identification Data) of the ID payload for *identity* (RFC 7296 3.5)."""
    kind, value = identity.kind, identity.value
    if kind == "ip":
        addr = ipaddress.ip_address(value)
        return (IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR), addr.packed
    if kind == "fqdn":
        try:
            return IdType.ID_FQDN, value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"FQDN {value!r} is not ASCII (use its IDNA A-label form)") from None
    if kind == "email":
        return IdType.ID_RFC822_ADDR, value.encode("utf-8")
    if kind == "dn":
        return IdType.ID_DER_ASN1_DN, parse_dn(value).public_bytes()
    if kind == "keyid":
        return IdType.ID_KEY_ID, _keyid_bytes(value)
    raise ValueError(f"identity kind {kind!r} has no ID payload type")


def identity_from_payload(id_type: int, data: bytes) -> Identity:
    """The inverse of :func:`id_payload`, normalised like ``Identity.parse``; ValueError for
    malformed data or an ID type we do not accept."""
    if id_type == IdType.ID_IPV4_ADDR or id_type == IdType.ID_IPV6_ADDR:
        size = 4 if id_type == IdType.ID_IPV4_ADDR else 16
        if len(data) != size:
            raise ValueError(f"{IdType(id_type).name} must be {size} bytes, got {len(data)}")
        return Identity("ip", str(ipaddress.ip_address(bytes(data))))
    if id_type == IdType.ID_FQDN:
        try:
            text = bytes(data).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("ID_FQDN is not ASCII") from None
        # RFC 7296 3.5: no terminators; a NUL or blank would let "a.com\0.evil" compare oddly
        if not text.rstrip(".") or not text.isprintable() or any(c.isspace() for c in text):
            raise ValueError(f"ID_FQDN {text!r} is not a domain name")
        return Identity("fqdn", text.rstrip(".").lower())
    if id_type == IdType.ID_RFC822_ADDR:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("ID_RFC822_ADDR is not UTF-8") from None
        local, at, domain = text.rpartition("@")
        if not at or not local or not domain or not text.isprintable() or " " in text:
            raise ValueError(f"ID_RFC822_ADDR {text!r} is not an e-mail address")
        return Identity("email", f"{local}@{domain.lower()}")
    if id_type == IdType.ID_DER_ASN1_DN:
        return Identity("dn", _load_der_name(bytes(data)).rfc4514_string())
    if id_type == IdType.ID_KEY_ID:
        if not data:
            raise ValueError("empty ID_KEY_ID")
        return Identity("keyid", bytes(data).hex())  # hex, so that id_payload gives data back
    name = IdType(id_type).name if id_type in IdType._value2member_map_ else str(id_type)
    raise ValueError(f"ID type {name} is not supported")


def identity_matches(a: Identity, b: Identity) -> bool:
    """Whether two identities name the same peer: DNs as parsed names (RFC 5280 7.1 compares
    RDNs, not strings), FQDNs and e-mail addresses case-insensitively, key IDs as bytes."""
    if a.kind != b.kind:
        return False
    try:
        if a.kind == "dn":
            return parse_dn(a.value) == parse_dn(b.value)
        if a.kind == "ip":
            return ipaddress.ip_address(a.value) == ipaddress.ip_address(b.value)
        if a.kind == "fqdn":
            return a.value.rstrip(".").lower() == b.value.rstrip(".").lower()
        if a.kind == "email":
            return a.value.lower() == b.value.lower()
        if a.kind == "keyid":
            return _keyid_bytes(a.value) == _keyid_bytes(b.value)
    except ValueError:
        return False
    return a == b


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der_split(data: bytes) -> list[bytes]:
    """The TLVs of a DER SEQUENCE's contents (definite lengths only)."""
    out, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("truncated")
        n, j = data[i + 1], i + 2
        if n & 0x80:
            k = n & 0x7F
            if not 0 < k <= 4 or j + k > len(data):
                raise ValueError("bad length")
            n, j = int.from_bytes(data[j:j + k], "big"), j + k
        if j + n > len(data):
            raise ValueError("truncated")
        out.append(data[i:j + n])
        i = j + n
    return out


_CSR_TEMPLATE: list[bytes] = []


def _load_der_name(data: bytes) -> x509.Name:
    # cryptography has no loader for a bare Name, so the DER is put in place of the subject of
    # a throw-away CSR and parsed there (its signature is never looked at). cryptography's
    # parser then checks the Name strictly.
    if not _CSR_TEMPLATE:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        outer = _der_split(csr.public_bytes(serialization.Encoding.DER))[0]
        cri, alg, sig = _der_split(outer[2 + (outer[1] & 0x7F if outer[1] & 0x80 else 0):])
        version, _subject_, spki, attrs = _der_split(cri[2 + (cri[1] & 0x7F if cri[1] & 0x80 else 0):])
        _CSR_TEMPLATE[:] = [version, spki + attrs, alg + sig]
    try:
        if not data or data[0] != 0x30 or len(_der_split(data)) != 1:
            raise ValueError("not one DER SEQUENCE")
        version, rest, tail = _CSR_TEMPLATE
        body = version + data + rest
        cri = b"\x30" + _der_len(len(body)) + body
        body = cri + tail
        name = x509.load_der_x509_csr(b"\x30" + _der_len(len(body)) + body).subject
        name.rfc4514_string()  # decodes every attribute value
    except ValueError as e:
        raise ValueError(f"ID_DER_ASN1_DN is not a DER distinguished name ({e})") from None
    if not name.rdns:
        raise ValueError("ID_DER_ASN1_DN is an empty distinguished name")
    return name


def cert_matches_identity(cert: x509.Certificate, identity: Identity) -> bool:
    """Whether *cert* holds *identity* (RFC 4945 3.1: an ID_DER_ASN1_DN equals the subject; an
    FQDN, address or e-mail ID is one of the subjectAltName entries, not a subject CN)."""
    try:
        if identity.kind == "dn":
            return cert.subject == parse_dn(identity.value)
        if identity.kind not in ("fqdn", "ip", "email"):
            return False  # RFC 4945 3.1.7: ID_KEY_ID is not matched against certificate fields
        return any(identity_matches(identity, i) for i in _san_identities(cert))
    except ValueError:
        return False


def _san_identities(cert: x509.Certificate) -> list[Identity]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = [Identity("fqdn", d.rstrip(".").lower()) for d in san.get_values_for_type(x509.DNSName)]
    out += [Identity("ip", str(a)) for a in san.get_values_for_type(x509.IPAddress)
            if not isinstance(a, (ipaddress.IPv4Network, ipaddress.IPv6Network))]
    for e in san.get_values_for_type(x509.RFC822Name):
        local, _, domain = e.rpartition("@")
        out.append(Identity("email", f"{local}@{domain.lower()}"))
    return out


# ---------------------------------------------------------------------------------------------
# loading

def _read(path) -> bytes:
    try:
        return read_input(path, PKI_FILE_MAX)[0]
    except FileError as e:
        raise ConfigError(f"cannot read: {e.problem}" if e.unreadable else e.problem, path=str(path)) from None


def _paths(paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _load_cert_file(path) -> list[x509.Certificate]:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
        for c in certs:
            _force_parse(c)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"not a PEM or DER X.509 certificate ({e})", path=str(path)) from None
    return certs


def _force_parse(cert: x509.Certificate) -> None:
    # cryptography decodes extensions and keys lazily; a broken one should fail at load time,
    # not halfway through an IKE_AUTH exchange
    _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key())


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """The certificate in a CERT payload of encoding 4 (RFC 7296 3.6: one DER certificate)."""
    try:
        cert = x509.load_der_x509_certificate(bytes(data))
        _force_parse(cert)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"CERT payload is not a DER X.509 certificate ({e})") from None
    return [cert]


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Credential:
    """Our certificate, its private key, and the intermediates sent after it."""

    cert: x509.Certificate
    key: object
    chain: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise ConfigError(f"private key type {type(self.key).__name__} is not RSA or ECDSA")
        if _spki(self.key.public_key()) != _spki(self.cert.public_key()):
            raise ConfigError(f"the private key does not match certificate {_subject(self.cert)!r}")
        object.__setattr__(self, "chain", tuple(self.chain))

    @classmethod
    def load(cls, cert_path, key_path, chain_paths=()) -> "Credential":
        """PEM or DER files; further certificates in the certificate's PEM file join the chain."""
        certs = _load_cert_file(cert_path)
        chain = certs[1:] + [c for p in _paths(chain_paths) for c in _load_cert_file(p)]
        data = _read(key_path)
        try:
            if b"-----BEGIN" in data:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_der_private_key(data, password=None)
        except TypeError:
            raise ConfigError("encrypted private keys are not supported", path=str(key_path)) from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ConfigError(f"not a PEM or DER private key ({e})", path=str(key_path)) from None
        try:
            return cls(certs[0], key, tuple(chain))
        except ConfigError as e:
            raise ConfigError(e.message, path=str(key_path)) from None

    def identities(self) -> tuple[Identity, ...]:
        """dn:<subject> and the subjectAltName dNSName, iPAddress and rfc822Name entries."""
        ids = []
        if self.cert.subject.rdns:
            ids.append(Identity("dn", self.cert.subject.rfc4514_string()))
        for i in _san_identities(self.cert):
            if i not in ids:
                ids.append(i)
        return tuple(ids)


def certreq_data(store: "TrustStore") -> bytes:
    """The CERTREQ Certification Authority field: RFC 7296 3.7, the SHA-1 hashes of the
    anchors' SubjectPublicKeyInfo, concatenated."""
    return b"".join(_spki_sha1(a) for a in store.anchors)


def _spki_sha1(cert: x509.Certificate) -> bytes:
    h = hashes.Hash(hashes.SHA1())  # RFC 7296 3.7 fixes SHA-1 here; an identifier, not a MAC
    h.update(_spki(cert.public_key()))
    return h.finalize()


# ---------------------------------------------------------------------------------------------
# trust

class TrustStore:
    """Trust anchors and the CRLs of the CAs among them.

    Every configured CA certificate is an anchor, self-signed or not (as in strongSwan's
    cacerts): a configured intermediate ends a path and may carry a CRL. A CA without a CRL
    is not revocation-checked (CRLs are optional).
    """

    def __init__(self, anchors: Iterable[x509.Certificate],
                 crls: Iterable[x509.CertificateRevocationList] = ()):
        self.anchors: tuple[x509.Certificate, ...] = tuple(dict.fromkeys(anchors))
        self._crls: dict[x509.Name, x509.CertificateRevocationList] = {}
        for crl in crls:
            self.add_crl(crl)

    @classmethod
    def load(cls, ca_paths, crl_paths=()) -> "TrustStore":
        anchors = [c for p in _paths(ca_paths) for c in _load_cert_file(p)]
        if not anchors:
            raise ConfigError("no CA certificates given")
        store = cls(anchors)
        for p in _paths(crl_paths):
            data = _read(p)
            try:
                crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
                       else x509.load_der_x509_crl(data))
            except ValueError as e:
                raise ConfigError(f"not a PEM or DER CRL ({e})", path=str(p)) from None
            try:
                store.add_crl(crl)
            except ConfigError as e:
                raise ConfigError(e.message, path=str(p)) from None
        return store

    def crl_for(self, issuer: x509.Name) -> x509.CertificateRevocationList | None:
        return self._crls.get(issuer)

    def add_crl(self, crl: x509.CertificateRevocationList) -> None:
        """Install *crl* for its issuer, replacing an older one (an older CRL is ignored).
        ConfigError if no anchor of that name signed it."""
        signers = [a for a in self.anchors if a.subject == crl.issuer]
        if not signers:
            raise ConfigError(f"CRL issuer {crl.issuer.rfc4514_string()!r} is not a configured CA")
        try:
            ok = any(crl.is_signature_valid(a.public_key()) for a in signers)
        except (TypeError, UnsupportedAlgorithm):
            ok = False
        if not ok:
            raise ConfigError(f"CRL of {crl.issuer.rfc4514_string()!r} is not signed by that CA")
        old = self._crls.get(crl.issuer)
        if old is None or crl.last_update_utc >= old.last_update_utc:
            self._crls[crl.issuer] = crl

    def anchor_for_certreq(self, data: bytes) -> list[x509.Certificate]:
        """The anchors a peer's CERTREQ names (RFC 7296 3.7); unknown hashes are skipped."""
        if len(data) % 20:
            raise ValueError(f"CERTREQ authority field of {len(data)} bytes is not 20-byte SHA-1 hashes")
        wanted = {bytes(data[i:i + 20]) for i in range(0, len(data), 20)}
        return [a for a in self.anchors if _spki_sha1(a) in wanted]

    def verify(self, end_entity: x509.Certificate, intermediates: Sequence[x509.Certificate] = (),
               *, now: datetime | None = None) -> tuple[x509.Certificate, ...]:
        """The path end_entity -> intermediates* -> anchor, checked; CertificateError if none.

        The RFC 5280 6.1 subset: at each step the issuer is found by name among the anchors,
        then among the peer's intermediates, and must have signed the certificate
        (``verify_directly_issued_by``); every certificate, the anchor included (as strongSwan
        and OpenSSL do), must be within its validity period; issuers must be CAs (6.1.4 (k),
        (n)) and keep their pathLenConstraint (6.1.4 (l), (m)). Not implemented: name
        constraints, policies, critical-extension processing beyond cryptography's parsing.
        Then each certificate whose issuer has a CRL is checked against it (6.3).
        """
        now = now or datetime.now(timezone.utc)
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        try:
            path = self._build(end_entity, list(intermediates), now)
            for i in range(len(path) - 1):
                self._check_crl(path[i], path[i + 1], now)
        except CertificateError:
            raise
        except (ValueError, UnsupportedAlgorithm) as e:  # cryptography decodes extensions lazily
            raise CertificateError("bad_certificate", f"undecodable certificate in the path ({e})",
                                   end_entity) from None
        return tuple(path)

    def _build(self, cert, pool, now) -> list[x509.Certificate]:
        path = [cert]
        while True:
            _check_time(cert, now)
            anchor = self._issued_by(cert, self.anchors)
            issuer = anchor or self._issued_by(cert, [c for c in pool if c not in path])
            if issuer is None:
                named = [c for c in (*self.anchors, *pool) if c.subject == cert.issuer and c not in path]
                if named:  # the right name, the wrong key: a forgery or a re-keyed CA
                    raise CertificateError("bad_signature", f"signature does not verify with the key "
                                           f"of issuer {cert.issuer.rfc4514_string()!r}", cert)
                raise CertificateError("untrusted", f"issuer {cert.issuer.rfc4514_string()!r} is "
                                       "not a trusted CA nor among the certificates sent", cert)
            _check_ca(issuer, below=len(path) - 1, anchor=anchor is not None)
            path.append(issuer)
            if len(path) > MAX_PATH:
                raise CertificateError("untrusted", f"no trust anchor within {MAX_PATH} certificates",
                                       path[0])
            if anchor is not None:
                _check_time(anchor, now)
                return path
            cert = issuer

    @staticmethod
    def _issued_by(cert, candidates):
        for c in candidates:
            if c.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(c)
                return c
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
        return None

    def _check_crl(self, cert, issuer, now) -> None:
        crl = self._crls.get(cert.issuer)
        if crl is None:
            return
        try:  # the CRL was checked against an anchor of that name at load; this is the issuer
            ok = crl.is_signature_valid(issuer.public_key())
        except (TypeError, UnsupportedAlgorithm):
            ok = False
        if not ok:
            raise CertificateError("bad_signature", "the CRL of its issuer is not signed by the "
                                   "issuer in this path", cert)
        # RFC 5280 6.3.3 (a)(2): a CRL past nextUpdate cannot say the certificate is not revoked
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise CertificateError("crl_expired", f"the CRL of {cert.issuer.rfc4514_string()!r} "
                                   f"expired {crl.next_update_utc:%Y-%m-%d %H:%M}Z", cert)
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise CertificateError("revoked", f"serial {cert.serial_number:#x} revoked "
                                   f"{entry.revocation_date_utc:%Y-%m-%d %H:%M}Z", cert)


def _check_time(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError("not_yet_valid",
                               f"valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z", cert)
    if now > cert.not_valid_after_utc:
        raise CertificateError("expired", f"expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z", cert)


def _check_ca(issuer: x509.Certificate, *, below: int, anchor: bool) -> None:
    """*issuer* signs a certificate with *below* intermediate CAs between it and the end entity."""
    ext = issuer.extensions
    try:
        bc = ext.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    # RFC 5280 6.1.4 (k); an anchor's own data is trusted as configured (6.1.1 (d)), so a v1
    # root without extensions is accepted, but one that says cA=FALSE is not
    if (bc is None and not anchor) or (bc is not None and not bc.ca):
        raise CertificateError("not_a_ca", "issues certificates but is not a CA (basicConstraints)", issuer)
    try:
        ku = ext.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:  # 6.1.4 (n)
            raise CertificateError("not_a_ca", "issues certificates without keyUsage keyCertSign", issuer)
    except x509.ExtensionNotFound:
        pass
    if bc is not None and bc.path_length is not None and below > bc.path_length:
        raise CertificateError("path_length", f"pathLenConstraint {bc.path_length} allows fewer than the "
                               f"{below} CA certificates below it", issuer)
