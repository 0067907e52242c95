"""A throw-away PKI for tests: CAs, end-entity certificates, CRLs (no tests in here).

Certificates follow what strongSwan's x509 plugin accepts: v3, SHA-256 signatures, critical
basicConstraints, keyUsage, SKI/AKI, FQDN / address / e-mail identities as subjectAltName
entries (RFC 4945 3.1), subjects "O=ipsp test, CN=<name>". ECDSA keys are P-256 and fresh;
RSA keys are 2048 bits from a small per-process pool (generation is slow), handed out
round-robin so consecutive certificates get different keys.

The suite imports test modules with --import-mode=importlib, so load this file by path and
register it in sys.modules before executing it (its dataclass needs that), as test_certs.py
does; reuse ``sys.modules["ike_pki"]`` if it is already there::

    spec = importlib.util.spec_from_file_location("ike_pki", Path(__file__).with_name("pki.py"))
    sys.modules["ike_pki"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = ["Issued", "make_ca", "make_cert", "make_crl", "write"]

RSA_POOL_SIZE = 6
_rsa_pool: list = []
_rsa_next = itertools.count()


@dataclass
class Issued:
    cert: x509.Certificate
    key: object
    cert_pem: bytes
    key_pem: bytes  # PKCS#8, unencrypted


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _key(key_type: str):
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        i = next(_rsa_next) % RSA_POOL_SIZE
        if i == len(_rsa_pool):
            _rsa_pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _rsa_pool[i]
    raise ValueError(f"key_type must be 'ecdsa' or 'rsa', not {key_type!r}")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsp test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(builder: x509.CertificateBuilder, key, issuer: Issued | None) -> Issued:
    signer = issuer.key if issuer else key
    pub = key.public_key()
    builder = builder.public_key(pub).add_extension(
        x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    aki_key = issuer.cert.public_key() if issuer else pub
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_key), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Issued(cert, key, cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _builder(subject, issuer_name, not_before, not_after, serial=None) -> x509.CertificateBuilder:
    now = _now()
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer_name)
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(not_before or now - _dt.timedelta(days=1))
            .not_valid_after(not_after or now + _dt.timedelta(days=30)))


def make_ca(name: str = "ipsp test CA", key_type: str = "ecdsa", *, parent: Issued | None = None,
            not_before=None, not_after=None, path_length: int | None = None) -> Issued:
    """A root CA (self-signed) or, with *parent*, an intermediate CA."""
    key = _key(key_type)
    subject = _name(name)
    b = _builder(subject, parent.cert.subject if parent else subject, not_before, not_after)
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    b = b.add_extension(x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False), critical=True)
    return _issue(b, key, parent)


def make_cert(ca: Issued, cn: str, *, key_type: str = "ecdsa", san_dns=(), san_ip=(), san_email=(),
              not_before=None, not_after=None, serial=None) -> Issued:
    """An end-entity certificate (basicConstraints cA=FALSE, keyUsage digitalSignature)."""
    key = _key(key_type)
    b = _builder(_name(cn), ca.cert.subject, not_before, not_after, serial)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False), critical=True)
    names = ([x509.DNSName(d) for d in san_dns]
             + [x509.IPAddress(ipaddress.ip_address(a)) for a in san_ip]
             + [x509.RFC822Name(e) for e in san_email])
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _issue(b, key, ca)


_crl_number = itertools.count(1)


def make_crl(ca: Issued, revoked_serials=(), *, next_update=None, last_update=None) -> bytes:
    """A PEM CRL signed by *ca* (default: issued an hour ago, next update in 7 days)."""
    now = _now()
    last = last_update or now - _dt.timedelta(hours=1)
    b = (x509.CertificateRevocationListBuilder()
         .issuer_name(ca.cert.subject)
         .last_update(last)
         .next_update(next_update or now + _dt.timedelta(days=7))
         .add_extension(x509.CRLNumber(next(_crl_number)), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),
                        critical=False))
    for serial in revoked_serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last).build())
    return b.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write(directory, name: str, issued: Issued) -> tuple[Path, Path]:
    """Write <name>.pem and <name>.key (mode 0600) into *directory*; return both paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / f"{name}.pem", d / f"{name}.key"
    cert_path.write_bytes(issued.cert_pem)
    key_path.write_bytes(issued.key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path
