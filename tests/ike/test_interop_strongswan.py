"""Interoperability of our IKEv2 daemon (``ipsp gateway`` with [[connection]] tables) with
strongSwan's charon, in two network namespaces built once for the module::

    ours  10.1.0.1/32 on lo, ipsp0 (our gateway)  --  to-swan 192.0.2.1/24 === 192.0.2.2/24 to-ours
                                                       --  10.2.0.1/32 on lo, ipsec0 (charon)  swan

Each test starts its own charon (tests/ike/strongswan.py) and its own gateway
(``python -m ipsp gateway --config X`` inside "ours"), and stops both in its teardown, which
also prints the tails of both logs. A gateway that does not print ``ipsp gateway: ready``
fails the test with its output; a gateway that does not exit 0 on SIGTERM fails it too.
Skipped, with the reason, only where charon cannot run (strongswan.available()).

charon's IKE_SA is always named "gw", its CHILD_SA "net"; our connection is "swan".
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

import fastpath
import ipsp
import ike_pki
import strongswan as ss
from nslib import until, wait_text

pytestmark = pytest.mark.netns

OURS_OUT, SWAN_OUT = "192.0.2.1", "192.0.2.2"
OURS_IN, SWAN_IN = "10.1.0.1", "10.2.0.1"
OURS_ID, SWAN_ID = "ours.ipsp.test", "swan.ipsp.test"
PSK = "ipsp-interop-test-psk-0123456789"
WRONG_PSK = "not-the-right-pre-shared-key-000"
CONN = "swan"
# the subprocesses import ipsp and fastpath from wherever this process found them (src/ with an
# in-place build, or site-packages when installed)
SRC = os.pathsep.join(dict.fromkeys(str(pathlib.Path(m.__file__).resolve().parents[1]) for m in (ipsp, fastpath)))
ENV = {**os.environ, "PYTHONPATH": SRC + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
READY_TIMEOUT = float(os.environ.get("IPSP_GATEWAY_READY_TIMEOUT", "10"))


# -- topology -----------------------------------------------------------------------------------

class Topo(ss.Pair):
    def __init__(self):
        super().__init__("ours", OURS_OUT, "swan", SWAN_OUT, a_inner=OURS_IN, b_inner=SWAN_IN)
        self.ours, self.swan, self.ours_if, self.swan_if = self.a, self.b, self.a_if, self.b_if


@pytest.fixture(scope="module")
def topo():
    yield from ss.module_topology(Topo)


# -- configuration ------------------------------------------------------------------------------

def swan_conf(*, ike="aes128-sha256-x25519", esp="aes128gcm16", auth="psk", secret=PSK, cert="swan.pem",
              remote_id=OURS_ID) -> str:
    if auth == "psk":
        local, remote = f"auth = psk\nid = {SWAN_ID}", f"auth = psk\nid = {remote_id}"
        secrets = ss.psk_secret(secret)
    else:
        local, remote = f"auth = pubkey\ncerts = {cert}\nid = {SWAN_ID}", f"auth = pubkey\nid = {remote_id}"
        secrets = ""
    return ss.swanctl_conf(local_addrs=SWAN_OUT, remote_addrs=OURS_OUT, proposals=ike, local=local, remote=remote,
                           local_ts=f"{SWAN_IN}/32", remote_ts=f"{OURS_IN}/32", esp=esp, secrets=secrets)


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v))


def _table(header: str, items: dict) -> str:
    return header + "\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in items.items() if v is not None) + "\n"


def gw_conf(socket: pathlib.Path, *, start="start", ike="aes128-sha256-x25519", esp="aes128gcm16", psk=PSK,
            peer_auth="psk", ca=None, ike_extra=None, conn_extra=None) -> str:
    ike_t = {"local_id": f"fqdn:{OURS_ID}", **(ike_extra or {})}
    peer = {"name": "swan", "id": f"fqdn:{SWAN_ID}", "auth": peer_auth}
    if peer_auth == "psk":
        peer["psk"] = "0x" + psk.encode().hex()
    else:
        peer["ca"] = str(ca)
    conn = {"name": CONN, "peer": "swan", "remote": SWAN_OUT, "local_ts": [f"{OURS_IN}/32"],
            "remote_ts": [f"{SWAN_IN}/32"], "ike_proposals": [ike] if isinstance(ike, str) else ike,
            "esp_proposals": [esp] if isinstance(esp, str) else esp, "start": start, **(conn_extra or {})}
    return (_table("[gateway]", {"tun": "ipsp0", "address": OURS_IN, "local": OURS_OUT, "routes": [f"{SWAN_IN}/32"]})
            + _table("[engine]", {"control_socket": str(socket)})
            + _table("[ike]", ike_t) + _table("[[peer]]", peer) + _table("[[connection]]", conn))


# -- processes ----------------------------------------------------------------------------------

class Gateway:
    """Our ``ipsp gateway`` in namespace "ours"; stderr (its log) goes to DIR/gw.log."""

    def __init__(self, topo: Topo, directory: pathlib.Path, conf: str):
        self.topo, self.dir = topo, directory
        self.config = directory / "gw.toml"
        self.config.write_text(conf)
        self.socket = directory / "ctl.sock"
        self.logfile = directory / "gw.log"
        self.proc: subprocess.Popen | None = None
        self.exit_codes: list[int] = []

    def start(self) -> "Gateway":
        self.socket.unlink(missing_ok=True)
        mark = len(self.log())
        out = open(self.logfile, "a")
        self.proc = self.topo.ours.popen(sys.executable, "-m", "ipsp", "gateway", "--config", self.config,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV)
        out.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while "ipsp gateway: ready" not in self.log()[mark:]:
            if self.proc.poll() is not None:
                pytest.fail(f"ipsp gateway exited {self.proc.returncode} before it was ready:\n{self.log()[mark:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"ipsp gateway not ready within {READY_TIMEOUT:g} s:\n{self.log()[mark:]}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, regex: str, timeout: float = 10, start: int = 0) -> re.Match:
        try:
            return wait_text(self.log, regex, timeout, start, "our gateway's log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.tail()}") from None

    def tail(self, n: int = 40) -> str:
        return f"--- {self.logfile} (last {n} lines):\n" + "\n".join(self.log().splitlines()[-n:])

    def stop(self) -> int | None:
        """SIGTERM; returns the exit status (SIGKILL after 10 s: then -9)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.exit_codes.append(proc.returncode)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL (no Delete sent), and remove what a dead gateway leaves behind."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(5)
        remove_tun(self.topo)

    def ctl(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "ipsp", *args, "--socket", str(self.socket)], env=ENV,
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"ipsp {' '.join(args)} exited {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def status(self) -> dict:
        return json.loads(self.ctl("ike", "status", "--json").stdout)

    def sas(self) -> list:
        return json.loads(self.ctl("sa", "list", "--json").stdout)

    def established(self) -> list[dict]:
        return [sa for sa in self.status()["ike_sas"] if sa["state"] == "established"]


def remove_tun(topo: Topo) -> None:
    if topo.ours.ip("link", "show", "ipsp0", check=False).returncode == 0:
        topo.ours.ip("link", "del", "ipsp0", check=False)
    topo.ours.ip("route", "del", f"{SWAN_IN}/32", check=False)


class Run:
    """What one test started: gateway(conf) and charon(conf, files) start and register them."""

    def __init__(self, topo: Topo):
        self.topo = topo
        self.gateways: list[Gateway] = []
        self.charons: list[ss.Charon] = []

    def charon(self, conf: str, files=None, extra_conf: str = "") -> ss.Charon:
        c = ss.Charon(self.topo.swan, self.topo.state("swan"), swanctl_conf=conf, files=files, extra_conf=extra_conf)
        self.charons.append(c)
        c.start()
        return c

    def gateway(self, conf_text: str | None = None, **kw) -> Gateway:
        d = self.topo.state("ours")
        g = Gateway(self.topo, d, conf_text or gw_conf(d / "ctl.sock", **kw))
        self.gateways.append(g)
        return g.start()

    def teardown(self) -> list[str]:
        problems = []
        for g in self.gateways:
            if g.proc is not None:
                rc = g.stop()
                if rc != 0:
                    problems.append(f"ipsp gateway ({g.config}) exited {rc} on SIGTERM")
        for c in self.charons:
            try:
                c.stop()
            except Exception as exc:  # keep cleaning up
                problems.append(f"stopping {c}: {exc}")
        remove_tun(self.topo)
        for g in self.gateways:
            print(g.tail())
        for c in self.charons:
            print(c.tail(40))
        return problems


@pytest.fixture
def run(topo):
    r = Run(topo)
    try:
        yield r
    finally:
        problems = r.teardown()
    if problems:
        pytest.fail("; ".join(problems))


# -- helpers -------------------------------------------------------------------------------------

# charon keeps a rekeyed CHILD_SA (state DELETED, inbound only) for delete_rekeyed_delay
# seconds, 5 by default: 1 s here, so "exactly one CHILD_SA" holds soon after a rekey
FAST_CLEANUP = "charon {\n    delete_rekeyed_delay = 1\n}\n"


def up(run: Run, *, initiator: bool, swan: dict | None = None, ours: dict | None = None, files=None,
       extra_conf: str = ""):
    """charon and our gateway with the tunnel up: we initiate (start = "start") or charon does."""
    ch = run.charon(swan_conf(**(swan or {})), files=files, extra_conf=extra_conf)
    gw = run.gateway(start="start" if initiator else "none", **(ours or {}))
    if initiator:
        until(lambda: established_child(ch, quiet=True), 10, "charon's CHILD_SA from our initiation")
    else:
        ch.initiate("net", "gw")
    established_child(ch)
    until(lambda: [sa for sa in gw.established() if sa["children"]], 5, "our IKE SA with a Child SA")
    return ch, gw


def established_child(ch: ss.Charon, quiet: bool = False):
    """charon's one ESTABLISHED IKE_SA "gw" and its one INSTALLED CHILD_SA, or None if quiet."""
    sas = ch.list_sas()
    ike = sas.get("gw")
    kids = [k for k in (ike or {}).get("child-sas", {}).values() if k["state"] == "INSTALLED"]
    if ike is None or not ike["established"] or len(kids) != 1:
        if quiet:
            return None
        raise AssertionError(f"charon: expected one established gw with one INSTALLED child: {sas}")
    return ike, kids[0]


def exactly_one(ch: ss.Charon):
    """True once charon holds exactly one IKE_SA (ESTABLISHED) and exactly one CHILD_SA (INSTALLED)."""
    sas = ch.list_sas()
    if len(sas) != 1 or "gw" not in sas or not sas["gw"]["established"]:
        return False
    kids = list(sas["gw"]["child-sas"].values())
    return len(kids) == 1 and kids[0]["state"] == "INSTALLED" and (sas["gw"], kids[0])


def ping_both(topo: Topo, count: int = 3) -> None:
    topo.ours.ping(SWAN_IN, "-I", OURS_IN, count=count)
    topo.swan.ping(OURS_IN, "-I", SWAN_IN, count=count)


_SERVER = ("import hashlib,socket,sys\n"
           "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(20)\n"
           "print('listening', flush=True)\n"
           "c,_=s.accept(); c.settimeout(20); h=hashlib.sha256(); n=0\n"
           "while True:\n"
           "    b=c.recv(65536)\n"
           "    if not b: break\n"
           "    h.update(b); n+=len(b)\n"
           "print(n, h.hexdigest(), flush=True)\n")
_CLIENT = ("import socket,sys\n"
           "data=open(sys.argv[4],'rb').read()\n"
           "c=socket.socket(); c.settimeout(20); c.bind((sys.argv[1],0)); c.connect((sys.argv[2], int(sys.argv[3])))\n"
           "c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()\n")


def tcp_transfer(src_ns: ss.Netns, src: str, dst_ns: ss.Netns, dst: str, path: pathlib.Path, port: int = 5001) -> None:
    """~2 MB over TCP from src to dst through the tunnel; the receiver's SHA-256 must match."""
    import hashlib
    data = os.urandom(2 << 20)
    path.write_bytes(data)
    server = dst_ns.popen(sys.executable, "-c", _SERVER, dst, port, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        assert server.stdout.readline().strip() == "listening", server.stderr.read()
        client = src_ns.run(sys.executable, "-c", _CLIENT, src, dst, port, path, check=False, timeout=40)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert client.returncode == 0, f"TCP client {src} -> {dst}:{port} failed:\n{client.stdout}{client.stderr}"
    assert out.split() == [str(len(data)), hashlib.sha256(data).hexdigest()], (out, err)


def continuous_ping(topo: Topo, count: int) -> subprocess.Popen:
    return topo.ours.popen("ping", "-n", "-i", "0.02", "-W", "1", "-c", count, "-I", OURS_IN, SWAN_IN,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ping_result(pinger: subprocess.Popen, count: int) -> None:
    out, _ = pinger.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    assert (int(m[1]), int(m[2])) == (count, count), f"packets lost during the rekey:\n{out[-600:]}"


# -- 1: PSK, both roles, ping and TCP both ways --------------------------------------------------

@pytest.mark.parametrize("initiator", [True, False], ids=["we-initiate", "charon-initiates"])
def test_psk_tunnel_traffic(run, topo, initiator, tmp_path):
    ch, gw = up(run, initiator=initiator)
    ike, kid = established_child(ch)
    assert (ike.get("initiator") == "yes") is not initiator, ike
    assert (ike["local-id"], ike["remote-id"]) == (SWAN_ID, OURS_ID)
    assert (kid["local-ts"], kid["remote-ts"]) == ([f"{SWAN_IN}/32"], [f"{OURS_IN}/32"])
    ours = gw.established()
    assert len(ours) == 1 and ours[0]["initiator"] is initiator and ours[0]["peer"] == f"fqdn:{SWAN_ID}"
    # both sides agree on the SPIs
    assert (ours[0]["spi_i"], ours[0]["spi_r"]) == (ike["initiator-spi"], ike["responder-spi"])
    child = ours[0]["children"][0]
    assert (child["spi_in"], child["spi_out"]) == (kid["spi-out"], kid["spi-in"])
    ping_both(topo)
    tcp_transfer(topo.ours, OURS_IN, topo.swan, SWAN_IN, tmp_path / "up.bin")
    tcp_transfer(topo.swan, SWAN_IN, topo.ours, OURS_IN, tmp_path / "down.bin", port=5002)
    kid = established_child(ch)[1]
    assert int(kid["bytes-in"]) > 2 << 20 and int(kid["bytes-out"]) > 2 << 20, kid


def test_trap_negotiates_on_the_first_packet(run, topo):
    """start = "trap": the policy is in place with no SA; the first packet toward the peer
    raises the engine's acquire event and the daemon negotiates (the packet itself is dropped)."""
    ch = run.charon(swan_conf())
    gw = run.gateway(start="trap")
    time.sleep(0.5)
    assert ch.list_sas() == {} and gw.established() == []
    topo.ours.ping(SWAN_IN, "-I", OURS_IN, "-W", "1", count=1, check=False)
    until(lambda: [sa for sa in gw.established() if sa["children"]], 5, "the acquired IKE SA and Child SA")
    assert gw.established()[0]["initiator"] is True
    ping_both(topo)


# -- 2: certificates ------------------------------------------------------------------------------

def make_pki(tmp: pathlib.Path, key_type: str, **swan_kw):
    """A CA, our certificate and charon's (SAN dNSName), of *key_type*; returns (files for
    charon, our [ike] and [[peer]] settings, the CA and charon's Issued)."""
    ca = ike_pki.make_ca(f"ipsp interop CA {key_type}", key_type=key_type)
    ours = ike_pki.make_cert(ca, OURS_ID, key_type=key_type, san_dns=[OURS_ID])
    swan = ike_pki.make_cert(ca, SWAN_ID, key_type=key_type, san_dns=[SWAN_ID], **swan_kw)
    ca_path = tmp / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    cert, key = ike_pki.write(tmp, "ours", ours)
    files = {"x509ca/ca.pem": ca.cert_pem, "x509/swan.pem": swan.cert_pem, "private/swan.key": swan.key_pem}
    return files, {"cert": str(cert), "key": str(key)}, ca_path, ca, swan


CERT_CASES = [("ecdsa", True), ("rsa", False), ("ecdsa", False), ("rsa", True)]


@pytest.mark.parametrize("key_type,initiator", CERT_CASES,
                         ids=[f"{k}-{'we-initiate' if i else 'charon-initiates'}" for k, i in CERT_CASES])
def test_certificates(run, topo, tmp_path, key_type, initiator):
    files, ike_extra, ca_path, _, _ = make_pki(tmp_path, key_type)
    ch, gw = up(run, initiator=initiator, files=files, swan={"auth": "pubkey"},
                ours={"peer_auth": "pubkey", "ca": ca_path, "ike_extra": ike_extra})
    algo = "ECDSA_WITH_SHA256_DER" if key_type == "ecdsa" else r"RSA\w*"
    ch.wait_log(rf"authentication of '{re.escape(OURS_ID)}' with {algo} successful")
    ike, _ = established_child(ch)
    assert (ike["local-id"], ike["remote-id"]) == (SWAN_ID, OURS_ID)
    assert gw.established()[0]["peer"] == f"fqdn:{SWAN_ID}"
    ping_both(topo)


@pytest.mark.parametrize("initiator", [True, False], ids=["we-initiate", "charon-initiates"])
def test_ike_fragmentation(run, topo, tmp_path, initiator):
    """RFC 7383 both ways: RSA certificates with a 576-byte fragment size on both sides make
    IKE_AUTH travel in Encrypted Fragment payloads; each side reassembles the other's."""
    files, ike_extra, ca_path, _, _ = make_pki(tmp_path, "rsa")
    ch, gw = up(run, initiator=initiator, files=files, swan={"auth": "pubkey"},
                extra_conf="charon {\n    fragment_size = 576\n}\n",
                ours={"peer_auth": "pubkey", "ca": ca_path, "ike_extra": {**ike_extra, "fragment_size": 576}})
    log = ch.log_text()
    assert re.search(r"received fragment #\d+ of \d+", log), "charon received no IKE fragments"
    assert re.search(r"splitting IKE message .* into \d+ fragments", log), "charon sent no IKE fragments"
    assert gw.status()["counters"]["fragments_received"] >= 2
    ping_both(topo)


# -- 3: proposals -----------------------------------------------------------------------------------

PROPOSALS = [
    # (IKE proposal, ESP proposal, we initiate, charon's expected IKE algorithms, ESP algorithms)
    ("aes128-sha256-x25519", "aes128gcm16", True,
     ("AES_CBC", "128", "HMAC_SHA2_256_128", "PRF_HMAC_SHA2_256", "CURVE_25519"), ("AES_GCM_16", "128", None)),
    ("aes128gcm16-prfsha256-x25519", "aes256-sha256", False,
     ("AES_GCM_16", "128", None, "PRF_HMAC_SHA2_256", "CURVE_25519"), ("AES_CBC", "256", "HMAC_SHA2_256_128")),
    ("aes256-sha256-modp2048", "chacha20poly1305", True,
     ("AES_CBC", "256", "HMAC_SHA2_256_128", "PRF_HMAC_SHA2_256", "MODP_2048"), ("CHACHA20_POLY1305", None, None)),
    ("aes128gcm16-prfsha256-x25519", "chacha20poly1305", False,
     ("AES_GCM_16", "128", None, "PRF_HMAC_SHA2_256", "CURVE_25519"), ("CHACHA20_POLY1305", None, None)),
    ("aes256-sha256-modp2048", "aes256-sha256", False,
     ("AES_CBC", "256", "HMAC_SHA2_256_128", "PRF_HMAC_SHA2_256", "MODP_2048"), ("AES_CBC", "256", "HMAC_SHA2_256_128")),
]


@pytest.mark.parametrize("ike,esp,initiator,want_ike,want_esp", PROPOSALS,
                         ids=[f"{p[0]}/{p[1]}/{'we-initiate' if p[2] else 'charon-initiates'}" for p in PROPOSALS])
def test_proposals(run, topo, ike, esp, initiator, want_ike, want_esp):
    ch, gw = up(run, initiator=initiator, swan={"ike": ike, "esp": esp}, ours={"ike": ike, "esp": esp})
    sa, kid = established_child(ch)
    got = (sa["encr-alg"], sa.get("encr-keysize"), sa.get("integ-alg"), sa["prf-alg"], sa["dh-group"])
    assert got == want_ike, sa
    assert (kid["encr-alg"], kid.get("encr-keysize"), kid.get("integ-alg")) == want_esp, kid
    ours = gw.established()[0]
    assert ours["proposal"] == ike and ours["children"][0]["proposal"] == esp, ours
    ping_both(topo, count=2)
    kid = established_child(ch)[1]
    assert int(kid["packets-in"]) >= 2 and int(kid["packets-out"]) >= 2, kid


# -- 4: rekeys without loss --------------------------------------------------------------------------

REKEYS = [("swan-child", True), ("ours-child", False), ("swan-ike", True), ("ours-ike", False),
          ("swan-child", False), ("ours-child", True), ("swan-ike", False), ("ours-ike", True)]


def _rekey(ch, gw, what: str) -> None:
    if what == "swan-child":
        ch.rekey(child="net")
    elif what == "swan-ike":
        ch.rekey(ike="gw")
    elif what == "ours-child":
        out = gw.ctl("ike", "rekey", CONN).stdout
        assert out.strip() == f"rekey {CONN}: 1", out         # one Child SA rekey started
    else:
        out = gw.ctl("ike", "rekey", "--ike", CONN).stdout
        assert out.strip() == f"rekey {CONN}: 1", out


@pytest.mark.parametrize("what,initiator", REKEYS,
                         ids=[f"{w}-{'we-initiated' if i else 'charon-initiated'}" for w, i in REKEYS])
def test_rekey_no_loss(run, topo, what, initiator):
    ch, gw = up(run, initiator=initiator, extra_conf=FAST_CLEANUP)
    ike0, kid0 = established_child(ch)
    ours0 = gw.established()[0]
    count = 125                                         # 2.5 s at 50 packets/s
    mark, gmark = len(ch.log_text()), len(gw.log())
    pinger = continuous_ping(topo, count)
    time.sleep(0.6)
    _rekey(ch, gw, what)
    if what.endswith("child"):
        ch.wait_log(r"CHILD_SA net\{\d+\} state change: \w+ => DELETED", start=mark)
    else:
        ch.wait_log(r"IKE_SA gw\[\d+\] state change: \w+ => DESTROYING", start=mark)
    assert pinger.poll() is None, "the rekey ended after the ping: no traffic crossed it"
    ping_result(pinger, count)
    # who rekeyed: the initiator of the CREATE_CHILD_SA exchange
    sent = {"swan": "generating", "ours": "parsed"}[what.split("-")[0]]
    ch.wait_log(rf"{sent} CREATE_CHILD_SA request \d+ \[", start=mark)
    gw.wait_log({"swan-child": r"Child SA \w+_i \w+_o installed, .*\(outbound waits\)",
                 "ours-child": r"Child SA rekeyed: ",
                 "swan-ike": r"IKE SA rekeyed by the peer, new ",
                 "ours-ike": r"IKE SA rekeyed, new "}[what], start=gmark)
    ike1, kid1 = until(lambda: exactly_one(ch), 5, "charon to end with one IKE_SA and one CHILD_SA")
    ours1 = until(lambda: [sa for sa in gw.status()["ike_sas"]], 5, "our IKE SA")
    assert len(ours1) == 1 and ours1[0]["state"] == "established", ours1
    ours1 = ours1[0]
    live = [c for c in ours1["children"]]
    assert len(live) == 1, ours1
    if what.endswith("child"):
        assert (kid1["spi-in"], kid1["spi-out"]) != (kid0["spi-in"], kid0["spi-out"])
        assert kid1["spi-in"] != kid0["spi-in"] and kid1["spi-out"] != kid0["spi-out"]
        assert ike1["initiator-spi"] == ike0["initiator-spi"]
        assert live[0]["spi_in"] != ours0["children"][0]["spi_in"]
    else:
        assert (ike1["initiator-spi"], ike1["responder-spi"]) != (ike0["initiator-spi"], ike0["responder-spi"])
        assert (ours1["spi_i"], ours1["spi_r"]) == (ike1["initiator-spi"], ike1["responder-spi"])
        assert (ours1["spi_i"], ours1["spi_r"]) != (ours0["spi_i"], ours0["spi_r"])
        assert kid1["spi-in"] == kid0["spi-in"]        # the CHILD_SA moves to the new IKE_SA unchanged
    # both agree on the current CHILD_SA
    assert (live[0]["spi_in"], live[0]["spi_out"]) == (kid1["spi-out"], kid1["spi-in"])
    ping_both(topo, count=2)


@pytest.mark.parametrize("what", ["child", "ike"])
def test_simultaneous_rekeys(run, topo, what):
    """Both ends have a rekey of the same SA outstanding at once: the link is down while both
    requests leave, so both are lost and retransmitted. Whichever lands first wins (charon
    answers ours although its own is pending, RFC 7296 2.8.1; we answer a rekey of an SA we
    are rekeying with TEMPORARY_FAILURE, or CHILD_SA_NOT_FOUND once ours replaced it). The
    tunnel ends with one IKE SA and one Child SA both sides agree on. (Requests crossing on
    the wire within the round-trip time are covered in memory: test_ikesa.py.)"""
    ch, gw = up(run, initiator=True, extra_conf=FAST_CLEANUP)
    ike0, kid0 = established_child(ch)
    mark = len(ch.log_text())
    topo.ours.ip("link", "set", topo.ours_if, "down")
    try:
        _rekey(ch, gw, f"ours-{what}")
        _rekey(ch, gw, f"swan-{what}")
        ch.wait_log(r"sending packet: .* to 192\.0\.2\.1\[4500\]", start=mark)
    finally:
        topo.ours.ip("link", "set", topo.ours_if, "up")
    ch.wait_log(r"parsed CREATE_CHILD_SA request", timeout=15, start=mark)        # ours, retransmitted
    ike1, kid1 = until(lambda: exactly_one(ch), 20, "charon to end with one IKE_SA and one CHILD_SA")
    ours = until(lambda: [sa for sa in gw.status()["ike_sas"] if sa["state"] == "established"
                          and len(sa["children"]) == 1], 20, "our one IKE SA with one Child SA")
    assert len(gw.status()["ike_sas"]) == 1, gw.status()
    (sa,) = ours
    assert (sa["spi_i"], sa["spi_r"]) == (ike1["initiator-spi"], ike1["responder-spi"])
    assert (sa["children"][0]["spi_in"], sa["children"][0]["spi_out"]) == (kid1["spi-out"], kid1["spi-in"])
    if what == "child":
        assert kid1["spi-in"] != kid0["spi-in"]
    else:
        assert ike1["initiator-spi"] != ike0["initiator-spi"]
    ping_both(topo, count=2)


def test_rekey_pfs(run, topo):
    """ESP with a DH group: both child rekeys use a KE (modp2048), no packet lost."""
    esp = "aes128gcm16-modp2048"
    ch, gw = up(run, initiator=True, swan={"esp": esp}, ours={"esp": esp}, extra_conf=FAST_CLEANUP)
    for what in ("swan-child", "ours-child"):
        _, kid0 = established_child(ch)
        mark = len(ch.log_text())
        count = 125
        pinger = continuous_ping(topo, count)
        time.sleep(0.6)
        _rekey(ch, gw, what)
        ch.wait_log(r"CHILD_SA net\{\d+\} state change: \w+ => DELETED", start=mark)
        assert pinger.poll() is None, "the rekey ended after the ping: no traffic crossed it"
        ping_result(pinger, count)
        _, kid1 = until(lambda: exactly_one(ch), 5, "charon to end with one IKE_SA and one CHILD_SA")
        assert kid1["spi-in"] != kid0["spi-in"]
        log = ch.log_text()[mark:]
        # the CREATE_CHILD_SA carried a KE payload, and the chosen proposal names MODP_2048
        req, resp = ("generating", "parsed") if what == "swan-child" else ("parsed", "generating")
        for verb, kind in ((req, "request"), (resp, "response")):
            assert re.search(rf"{verb} CREATE_CHILD_SA {kind} \d+ \[[^\]]*\bKE\b", log), (verb, kind, log[-3000:])
        assert re.search(r"selected proposal: ESP:AES_GCM_16_128/MODP_2048", log), log[-3000:]
        if "dh-group" in kid1:
            assert kid1["dh-group"] == "MODP_2048", kid1
        assert gw.established()[0]["children"][0]["spi_in"] == kid1["spi-out"]


# -- 5: deletes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("initiator", [True, False], ids=["we-initiated", "charon-initiated"])
def test_we_terminate(run, topo, initiator):
    ch, gw = up(run, initiator=initiator)
    gw.ctl("ike", "terminate", CONN)
    until(lambda: "gw" not in ch.list_sas(), 5, "charon to drop the IKE_SA after our Delete")
    ch.wait_log(r"received DELETE for IKE_SA gw\[\d+\]")
    until(lambda: not gw.status()["ike_sas"], 5, "our IKE SA to go")
    assert not gw.sas(), gw.sas()
    assert topo.ours.ping(SWAN_IN, "-I", OURS_IN, "-W", "1", count=1, check=False).returncode != 0


@pytest.mark.parametrize("initiator", [True, False], ids=["we-initiated", "charon-initiated"])
def test_charon_terminates(run, topo, initiator):
    ch, gw = up(run, initiator=initiator)
    assert gw.sas()
    ch.terminate(ike="gw")
    assert "gw" not in ch.list_sas()
    until(lambda: not gw.status()["ike_sas"], 5, "our IKE SA to go after charon's Delete")
    gw.wait_log(r"gone: deleted by the peer")
    assert not gw.sas(), gw.sas()
    assert topo.ours.ping(SWAN_IN, "-I", OURS_IN, "-W", "1", count=1, check=False).returncode != 0
    assert topo.swan.ping(OURS_IN, "-I", SWAN_IN, "-W", "1", count=1, check=False).returncode != 0


# -- 6: restart and INITIAL_CONTACT ---------------------------------------------------------------

def test_restart_initial_contact(run, topo):
    ch, gw = up(run, initiator=True)
    old_ike, _ = established_child(ch)
    ping_both(topo, count=2)
    gw.kill()                                           # SIGKILL: no Delete reaches charon
    assert "gw" in ch.list_sas()                        # charon still holds the old IKE_SA
    mark = len(ch.log_text())
    gw.start()
    ch.wait_log(r"received INITIAL_CONTACT", start=mark)
    new_ike, _ = until(lambda: exactly_one(ch), 10, "charon to end with exactly one IKE_SA and CHILD_SA")
    assert new_ike["initiator-spi"] != old_ike["initiator-spi"]
    ours = gw.established()
    assert len(ours) == 1 and (ours[0]["spi_i"], ours[0]["spi_r"]) == (new_ike["initiator-spi"],
                                                                       new_ike["responder-spi"])
    ping_both(topo, count=2)


# -- 7: refusals ------------------------------------------------------------------------------------

def test_wrong_psk_we_initiate(run, topo):
    ch = run.charon(swan_conf())
    gw = run.gateway(start="start", psk=WRONG_PSK)
    gw.wait_log(r"swan: peer 'swan' refused our authentication \(AUTHENTICATION_FAILED\)")
    ch.wait_log(r"generating IKE_AUTH response 1 \[ N\(AUTH_FAILED\) \]")
    ch.wait_log(r"MAC mismatched|authentication of '" + re.escape(OURS_ID) + "' with pre-shared key failed")
    until(lambda: not gw.status()["ike_sas"], 5, "our failed IKE SA to go")
    assert "gw" not in ch.list_sas()
    assert not gw.sas()


def test_wrong_psk_charon_initiates(run, topo):
    ch = run.charon(swan_conf(secret=WRONG_PSK))
    gw = run.gateway(start="none")
    r = ch.swanctl("--initiate", "--child", "net", "--ike", "gw", "--timeout", 5, check=False, timeout=15)
    assert r.returncode != 0, r.stdout
    line = gw.wait_log(r"^.*wrong pre-shared key.*$")[0]
    assert "'swan'" in line and SWAN_ID in line, line
    ch.wait_log(r"received AUTHENTICATION_FAILED notify error")
    assert not gw.status()["ike_sas"] and not gw.sas()


def test_revoked_certificate(run, topo, tmp_path):
    files, ike_extra, ca_path, ca, swan = make_pki(tmp_path, "ecdsa")
    crl = tmp_path / "ca.crl"
    crl.write_bytes(ike_pki.make_crl(ca, [swan.cert.serial_number]))
    ch = run.charon(swan_conf(auth="pubkey"), files=files)
    gw = run.gateway(start="none", peer_auth="pubkey", ca=ca_path, ike_extra={**ike_extra, "crls": [str(crl)]})
    r = ch.swanctl("--initiate", "--child", "net", "--ike", "gw", "--timeout", 5, check=False, timeout=15)
    assert r.returncode != 0, r.stdout
    line = gw.wait_log(r"^.*revoked.*$")[0]
    assert f"{swan.cert.serial_number:#x}" in line, line
    ch.wait_log(r"received AUTHENTICATION_FAILED notify error")
    assert not gw.status()["ike_sas"] and not gw.sas()


def test_expired_certificate(run, topo, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    files, ike_extra, ca_path, ca, swan = make_pki(
        tmp_path, "ecdsa", not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1))
    ch = run.charon(swan_conf(auth="pubkey"), files=files)
    gw = run.gateway(start="start", peer_auth="pubkey", ca=ca_path, ike_extra=ike_extra)
    line = gw.wait_log(r"^.*expired.*$")[0]
    assert SWAN_ID in line and "certificate refused" in line, line
    # we refused charon's IKE_AUTH response: RFC 7296 2.21.2, an INFORMATIONAL with the notify
    ch.wait_log(r"parsed INFORMATIONAL request \d+ \[ N\(AUTH_FAILED\) \]")
    until(lambda: not gw.status()["ike_sas"], 5, "our IKE SA to go")
    assert "gw" not in ch.list_sas() and not gw.sas()


@pytest.mark.parametrize("initiator", [True, False], ids=["we-initiate", "charon-initiates"])
def test_no_common_ike_proposal(run, topo, initiator):
    ch = run.charon(swan_conf(ike="aes256-sha256-modp2048"))
    gw = run.gateway(start="start" if initiator else "none", ike="aes128gcm16-prfsha256-x25519")
    if initiator:
        gw.wait_log(r"IKE_SA_INIT refused: NO_PROPOSAL_CHOSEN")
        ch.wait_log(r"received proposals unacceptable")
        ch.wait_log(r"generating IKE_SA_INIT response 0 \[ N\(NO_PROP\) \]")
    else:
        r = ch.swanctl("--initiate", "--child", "net", "--ike", "gw", "--timeout", 5, check=False, timeout=15)
        assert r.returncode != 0, r.stdout
        gw.wait_log(r"IKE_SA_INIT from 192\.0\.2\.2:500: .*NO_PROPOSAL_CHOSEN")
        ch.wait_log(r"received NO_PROPOSAL_CHOSEN notify error")
    assert "gw" not in ch.list_sas()
    assert not gw.status()["ike_sas"] and not gw.sas()


@pytest.mark.parametrize("initiator", [True, False], ids=["we-initiate", "charon-initiates"])
def test_no_common_esp_proposal(run, topo, initiator):
    ch = run.charon(swan_conf(esp="aes256-sha256"))
    gw = run.gateway(start="start" if initiator else "none", esp="aes128gcm16")
    if initiator:
        gw.wait_log(r"Child SA refused by the peer: NO_PROPOSAL_CHOSEN")
        ch.wait_log(r"failed to establish CHILD_SA, keeping IKE_SA")
    else:
        r = ch.swanctl("--initiate", "--child", "net", "--ike", "gw", "--timeout", 5, check=False, timeout=15)
        assert r.returncode != 0, r.stdout
        gw.wait_log(r"Child SA: .*NO_PROPOSAL_CHOSEN")
        ch.wait_log(r"received NO_PROPOSAL_CHOSEN notify, no CHILD_SA built")
    ch.wait_log(r"no acceptable proposal found|NO_PROPOSAL_CHOSEN")
    sas = ch.list_sas()
    assert sas["gw"]["established"] and not sas["gw"]["child-sas"], sas
    ours = gw.status()["ike_sas"]
    assert len(ours) == 1 and ours[0]["state"] == "established" and not ours[0]["children"], ours
    assert not gw.sas()
