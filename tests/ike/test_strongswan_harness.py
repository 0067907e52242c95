"""The strongSwan harness (tests/ike/strongswan.py) works: charon against charon.

Topology (two namespaces, ``ipspike-<pid>-left`` / ``-right``, built once for the module)::

    left  10.1.0.1/32 on lo  --  to-right 192.0.2.1/24 === 192.0.2.2/24 to-left  --  10.2.0.1/32 on lo  right

Each test starts a charon on each side (kernel-libipsec: ESP through the ``ipsec0`` TUNs,
UDP-encapsulated on 4500) and stops them in its teardown; the module's teardown deletes the
namespaces. Skipped, with the reason, where charon cannot run (strongswan.available()).
"""

import datetime
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipsp.ike.message import ExchangeType, Message

# --import-mode=importlib: load the sibling harness by path, once, as "strongswan"
if "strongswan" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("strongswan", Path(__file__).with_name("strongswan.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["strongswan"] = _mod
    _spec.loader.exec_module(_mod)
ss = sys.modules["strongswan"]

pytestmark = pytest.mark.netns

LEFT_OUT, RIGHT_OUT = "192.0.2.1", "192.0.2.2"
LEFT_IN, RIGHT_IN = "10.1.0.1", "10.2.0.1"
PSK = "ipsp-harness-test-psk-0123456789"


# -- fixtures ---------------------------------------------------------------------------------

class Topo(ss.Pair):
    def __init__(self):
        super().__init__("left", LEFT_OUT, "right", RIGHT_OUT, a_inner=LEFT_IN, b_inner=RIGHT_IN)
        self.left, self.right, self.left_if, self.right_if = self.a, self.b, self.a_if, self.b_if


@pytest.fixture(scope="module")
def topo():
    yield from ss.module_topology(Topo)


@pytest.fixture
def charons(topo):
    """charons(left_conf, right_conf, left_files=None, right_files=None) -> (left, right),
    both started; stopped (and their log tails printed) at teardown."""
    started = []

    def start(left_conf, right_conf, left_files=None, right_files=None):
        pair = (ss.Charon(topo.left, topo.state("left"), swanctl_conf=left_conf, files=left_files),
                ss.Charon(topo.right, topo.state("right"), swanctl_conf=right_conf, files=right_files))
        started.extend(pair)
        for c in pair:
            c.start()
        return pair

    try:
        yield start
    finally:
        ss.stop_all()
        for c in started:
            print(c.tail(30))


def swanctl_conf(me: str, peer: str, mine: str, theirs: str, *, local: str, remote: str, secrets: str = "",
                 esp: str = "aes128gcm16") -> str:
    return ss.swanctl_conf(local_addrs=me, remote_addrs=peer, proposals="aes128-sha256-x25519", local=local,
                           remote=remote, local_ts=f"{mine}/32", remote_ts=f"{theirs}/32", esp=esp, secrets=secrets)


def psk_confs() -> tuple[str, str]:
    secrets = ss.psk_secret(PSK)
    left = swanctl_conf(LEFT_OUT, RIGHT_OUT, LEFT_IN, RIGHT_IN, local=f"auth = psk\n id = {LEFT_OUT}",
                        remote=f"auth = psk\n id = {RIGHT_OUT}", secrets=secrets)
    right = swanctl_conf(RIGHT_OUT, LEFT_OUT, RIGHT_IN, LEFT_IN, local=f"auth = psk\n id = {RIGHT_OUT}",
                         remote=f"auth = psk\n id = {LEFT_OUT}", secrets=secrets)
    return left, right


def established(c) -> dict:
    sas = c.list_sas()
    assert "gw" in sas, f"no IKE_SA gw in {c}: {sas}"
    ike = sas["gw"]
    assert ike["state"] == "ESTABLISHED" and ike["established"] is True, ike
    return ike


def installed_child(c) -> dict:
    kids = [k for k in c.child_sas("gw", "net") if k["state"] == "INSTALLED"]
    assert len(kids) == 1, f"{c}: {c.list_sas()}"
    return kids[0]


def check_keys_agree(left, right, encr_len: int = 20, integ_len: int = 0) -> None:
    """The IKE keys of both sides are the same; for each CHILD_SA the encryption/integrity keys
    are the same and the SPIs mirror (left's inbound is right's outbound)."""
    lk, rk = left.keys(), right.keys()
    l_ike = [k for k in lk if k["kind"] == "ike"]
    r_ike = [k for k in rk if k["kind"] == "ike"]
    assert l_ike and len(l_ike) == len(r_ike), (len(l_ike), len(r_ike))
    names = ("SKEYSEED", "Sk_d", "Sk_ai", "Sk_ar", "Sk_ei", "Sk_er", "Sk_pi", "Sk_pr")
    for a, b in zip(l_ike, r_ike):
        for n in names:
            assert a[n] == b[n] and len(a[n]) > 0, n
        assert a["ike"] == b["ike"] == "gw" and a["ike_id"] and b["ike_id"]
        assert a["spi_i"] and (a["spi_i"], a["spi_r"]) == (b["spi_i"], b["spi_r"])
    l_ch = {k["spi_in"]: k for k in lk if k["kind"] == "child"}
    r_ch = {k["spi_out"]: k for k in rk if k["kind"] == "child"}
    assert l_ch and set(l_ch) == set(r_ch), (sorted(l_ch), sorted(r_ch))
    for spi, a in l_ch.items():
        b = r_ch[spi]
        assert a["spi_out"] == b["spi_in"]
        for n in ("encr_i", "encr_r", "integ_i", "integ_r"):
            assert a[n] == b[n], n
        # aes128gcm16: 16-byte key + 4-byte salt, no integrity key; aes128-sha256: 16 and 32
        assert (len(a["encr_i"]), len(a["encr_r"])) == (encr_len, encr_len) and a["encr_i"] != a["encr_r"]
        assert (len(a["integ_i"]), len(a["integ_r"])) == (integ_len, integ_len)
        assert a["ike"] == b["ike"] == "gw" and a["child"] == b["child"] == "net"
    # the IKE SPIs and the current CHILD_SA agree with what vici reports
    ike = left.list_sas()["gw"]
    assert (l_ike[-1]["spi_i"], l_ike[-1]["spi_r"]) == (ike["initiator-spi"], ike["responder-spi"])
    kid = installed_child(left)
    assert int(kid["spi-in"], 16) in l_ch and l_ch[int(kid["spi-in"], 16)]["spi_out"] == int(kid["spi-out"], 16)


# -- the tests --------------------------------------------------------------------------------

def test_psk_tunnel_rekey_keys(topo, charons):
    left, right = charons(*psk_confs())
    left.initiate("net", "gw")

    for c, me, peer, mine, theirs in ((left, LEFT_OUT, RIGHT_OUT, LEFT_IN, RIGHT_IN),
                                      (right, RIGHT_OUT, LEFT_OUT, RIGHT_IN, LEFT_IN)):
        ike = established(c)
        assert (ike["local-host"], ike["remote-host"]) == (me, peer)
        assert (ike["encr-alg"], ike["encr-keysize"], ike["integ-alg"], ike["prf-alg"], ike["dh-group"]) == \
            ("AES_CBC", "128", "HMAC_SHA2_256_128", "PRF_HMAC_SHA2_256", "CURVE_25519")
        assert ike["local-spi"] == ike["initiator-spi" if c is left else "responder-spi"]
        kid = installed_child(c)
        assert (kid["encr-alg"], kid["encr-keysize"], kid["mode"], kid["encap"]) == ("AES_GCM_16", "128", "TUNNEL", "yes")
        assert (kid["local-ts"], kid["remote-ts"]) == ([f"{mine}/32"], [f"{theirs}/32"])
    l_kid, r_kid = installed_child(left), installed_child(right)
    assert (l_kid["spi-in"], l_kid["spi-out"]) == (r_kid["spi-out"], r_kid["spi-in"])

    topo.left.ping(RIGHT_IN, "-I", LEFT_IN, count=3)
    l_kid, r_kid = installed_child(left), installed_child(right)
    assert int(l_kid["packets-out"]) >= 3 and int(l_kid["packets-in"]) >= 3, l_kid
    assert int(r_kid["packets-in"]) >= 3 and int(r_kid["packets-out"]) >= 3, r_kid
    check_keys_agree(left, right)

    # CHILD_SA rekey from the responder side, traffic on the new SA
    mark_l, mark_r = len(left.log_text()), len(right.log_text())
    old = l_kid["spi-in"]
    right.rekey(child="net")
    right.wait_log(r"CHILD_SA net\{\d+\} state change: \w+ => DELETED", start=mark_r)
    left.wait_log(r"CHILD_SA net\{\d+\} state change: \w+ => DELETED", start=mark_l)
    new = ss.until(lambda: [k for k in left.child_sas("gw", "net") if k["state"] == "INSTALLED"
                            and k["spi-in"] != old], 5, "the rekeyed CHILD_SA on the left")[0]
    topo.left.ping(RIGHT_IN, "-I", LEFT_IN, count=2)
    new = next(k for k in left.child_sas("gw", "net") if k["spi-in"] == new["spi-in"])
    assert int(new["packets-in"]) >= 2 and int(new["packets-out"]) >= 2, new
    check_keys_agree(left, right)
    child_keys = [k for k in left.keys() if k["kind"] == "child"]
    assert len(child_keys) == 2 and child_keys[1]["spi_in"] == int(new["spi-in"], 16)
    assert child_keys[0]["encr_i"] != child_keys[1]["encr_i"]

    left.terminate(ike="gw")
    assert "gw" not in left.list_sas()
    ss.until(lambda: "gw" not in right.list_sas(), 5, "the right side to drop the IKE_SA")
    assert topo.left.ping(RIGHT_IN, "-I", LEFT_IN, count=1, check=False).returncode != 0


# -- certificates -----------------------------------------------------------------------------

def make_pki() -> dict[str, bytes]:
    """A CA and two end-entity certificates (ECDSA P-256, SAN dNSName left/right.ipsp.test)
    as PEM: {"ca.pem", "left.pem", "left.key", "right.pem", "right.key"}. Made with
    tests/ike/pki.py (make_ca/make_cert) when it is there, else with the helpers below."""
    path = Path(__file__).with_name("pki.py")
    if not path.exists():
        return _own_pki()
    if "ike_pki" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ike_pki", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["ike_pki"] = mod
        spec.loader.exec_module(mod)
    pki = sys.modules["ike_pki"]
    ca = pki.make_ca("ipsp test CA")
    out = {"ca.pem": ca.cert_pem}
    for role in ("left", "right"):
        ee = pki.make_cert(ca, f"{role}.ipsp.test", san_dns=[f"{role}.ipsp.test"])
        out[f"{role}.pem"], out[f"{role}.key"] = ee.cert_pem, ee.key_pem
    return out


def _own_pki() -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsp test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, *, ca, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("ipsp test CA")
    out = {"ca.pem": cert(ca_name, ca_key, ca_name, ca_key, ca=True).public_bytes(serialization.Encoding.PEM)}
    for role in ("left", "right"):
        k = ec.generate_private_key(ec.SECP256R1())
        c = cert(name(f"{role}.ipsp.test"), k, ca_name, ca_key, ca=False, san=f"{role}.ipsp.test")
        out[f"{role}.pem"] = c.public_bytes(serialization.Encoding.PEM)
        out[f"{role}.key"] = pem_key(k)
    return out


def test_certificates(topo, charons):
    pki = make_pki()

    def files(role):
        return {"x509ca/ca.pem": pki["ca.pem"], f"x509/{role}.pem": pki[f"{role}.pem"],
                f"private/{role}.key": pki[f"{role}.key"]}

    def auth(me):
        return f"auth = pubkey\n certs = {me}.pem\n id = {me}.ipsp.test"

    # (and a non-AEAD ESP transform, so integrity keys are logged and compared too)
    left_conf = swanctl_conf(LEFT_OUT, RIGHT_OUT, LEFT_IN, RIGHT_IN, local=auth("left"),
                             remote="auth = pubkey\n id = right.ipsp.test", esp="aes128-sha256")
    right_conf = swanctl_conf(RIGHT_OUT, LEFT_OUT, RIGHT_IN, LEFT_IN, local=auth("right"),
                              remote="auth = pubkey\n id = left.ipsp.test", esp="aes128-sha256")
    left, right = charons(left_conf, right_conf, files("left"), files("right"))
    # the credentials came from the state dir's swanctl/ tree, next to swanctl.conf
    for c, role in ((left, "left"), (right, "right")):
        assert f"{c.swanctl_dir}/x509ca/ca.pem" in c.loaded, c.loaded
        assert f"{c.swanctl_dir}/x509/{role}.pem" in c.loaded, c.loaded
        assert f"{c.swanctl_dir}/private/{role}.key" in c.loaded, c.loaded
    left.initiate("net", "gw")
    for c, me, peer in ((left, "left", "right"), (right, "right", "left")):
        ike = established(c)
        assert (ike["local-id"], ike["remote-id"]) == (f"{me}.ipsp.test", f"{peer}.ipsp.test")
        installed_child(c)
    left.wait_log(r"authentication of 'right\.ipsp\.test' with ECDSA_WITH_SHA256_DER successful")
    right.wait_log(r"authentication of 'left\.ipsp\.test' with ECDSA_WITH_SHA256_DER successful")
    topo.left.ping(RIGHT_IN, "-I", LEFT_IN, count=2)
    assert installed_child(left)["integ-alg"] == "HMAC_SHA2_256_128"
    check_keys_agree(left, right, encr_len=16, integ_len=32)


# -- capture ----------------------------------------------------------------------------------

def test_capture_decodes(topo, charons, tmp_path):
    left, right = charons(*psk_confs())
    pcap = tmp_path / "ike.pcap"
    with ss.capture_ike(topo.left, topo.left_if, pcap=pcap) as msgs:
        left.initiate("net", "gw")
        topo.left.ping(RIGHT_IN, "-I", LEFT_IN, count=2)     # ESP-in-UDP on 4500: not IKE
        left.rekey(child="net")
        left.wait_log(r"CHILD_SA net\{\d+\} state change: \w+ => DELETED")
        left.terminate(ike="gw")
    decoded = [Message.decode(m) for m in msgs]
    kinds = [(ExchangeType(d.header.exchange_type).name, d.header.response) for d in decoded]
    # request/response pairs: IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA (rekey), INFORMATIONAL
    # (the rekeyed SA's DELETE), INFORMATIONAL (the IKE_SA's DELETE)
    assert kinds == [("IKE_SA_INIT", False), ("IKE_SA_INIT", True), ("IKE_AUTH", False), ("IKE_AUTH", True),
                     ("CREATE_CHILD_SA", False), ("CREATE_CHILD_SA", True),
                     ("INFORMATIONAL", False), ("INFORMATIONAL", True),
                     ("INFORMATIONAL", False), ("INFORMATIONAL", True)], kinds
    recs = msgs.records
    assert [(r["sport"], r["dport"]) for r in recs[:2]] == [(500, 500), (500, 500)]
    assert all((r["sport"], r["dport"]) == (4500, 4500) for r in recs[2:])
    assert [r["outgoing"] for r in recs[:2]] == [True, False]
    spis = {(d.header.spi_i, d.header.spi_r) for d in decoded[1:]}
    assert len(spis) == 1                                    # one IKE_SA throughout
    for d, raw in zip(decoded, msgs):
        assert d.encode() == raw                             # and the codec round-trips it
    # the pcap is readable by an independent decoder
    if shutil.which("tshark"):
        r = subprocess.run(["tshark", "-r", str(pcap), "-Y", "isakmp", "-T", "fields", "-e", "isakmp.exchangetype"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert [int(x) for x in r.stdout.split()] == [d.header.exchange_type for d in decoded], r.stdout
