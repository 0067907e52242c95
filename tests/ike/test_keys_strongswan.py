"""Key derivation, byte for byte, against a real strongSwan charon.

Our sans-IO :class:`ipsp.ike.ikesa.Ike` runs in this process; its UDP sockets are bound
inside namespace ``kx-ours`` (198.51.100.1:500 and :4500) and a small synchronous pump moves
datagrams between them and the engine. charon runs in ``kx-swan`` (198.51.100.2) and logs its
key material at ike/chd level 4 (``Charon.keys()``). Nothing is computed here: every check
compares what our engine derived (``IkeSA.keys``, the SAs in the key manager) with what charon
logged, after IKE_AUTH, after Child SA rekeys from either side (with and without PFS) and after
IKE SA rekeys from either side.

    ours  10.3.0.1/32 on lo -- to-kx-swan 198.51.100.1/24 === 198.51.100.2/24 to-kx-ours -- 10.4.0.1/32 on lo  charon
"""

from __future__ import annotations

import re
import threading
import time

import pytest

import strongswan as ss
from ipsp.ike.config import IkeSettings, connection
from ipsp.ike.ikesa import Ike
from ipsp.keymgr import KeyManagerAPI
from ipsp.pad import Identity, Peer, PeerAuthorizationDatabase

pytestmark = pytest.mark.netns

OURS, SWAN = "198.51.100.1", "198.51.100.2"
OURS_IN, SWAN_IN = "10.3.0.1", "10.4.0.1"
PSK = "ipsp-key-check-psk-0123456789abcdef"
CONN = "kx"

IKE_PROPOSALS = ("aes128-sha256-x25519", "aes128gcm16-prfsha256-x25519", "aes256-sha256-modp2048")
ESP_PROPOSALS = ("aes128gcm16", "aes256-sha256", "chacha20poly1305")


# -- topology and pump ----------------------------------------------------------------------------

class Topo(ss.Pair):
    def __init__(self):
        super().__init__("kx-ours", OURS, "kx-swan", SWAN, a_inner=OURS_IN, b_inner=SWAN_IN, ike_sockets=True)
        self.ours, self.swan = self.a, self.b


@pytest.fixture(scope="module")
def topo():
    yield from ss.module_topology(Topo)


class Ours:
    """Our Ike with its key manager, driven by :meth:`pump` over the topology's sockets."""

    def __init__(self, topo: Topo, ike_proposal: str, esp_proposal: str):
        self.topo = topo
        pad = PeerAuthorizationDatabase([Peer("swan", (Identity("fqdn", "swan.ipsp.test"),), "psk",
                                              psk=PSK.encode())])
        table = {"name": CONN, "peer": "swan", "remote": SWAN, "local_ts": [f"{OURS_IN}/32"],
                 "remote_ts": [f"{SWAN_IN}/32"], "local_id": "fqdn:ours.ipsp.test", "reqid": 9,
                 "ike_proposals": [ike_proposal], "esp_proposals": [esp_proposal], "dpd": 0}
        conn = connection(table, "connection[0]", 0, {p.name: p for p in pad})
        self.km = KeyManagerAPI(clock=time.monotonic)
        self.ike = Ike(self.km, pad, IkeSettings(), [conn], local=OURS, send=topo.send_ike, clock=time.monotonic)
        self.errors: list[BaseException] = []

    def pump(self, until, timeout: float = 15.0, what: str = "", background=None) -> None:
        """Deliver datagrams (and tick every 0.1 s) until ``until()`` is true and *background*
        (a callable run in a thread, e.g. a blocking swanctl command) has finished."""
        thread = None
        if background is not None:
            def run():
                try:
                    background()
                except BaseException as exc:     # re-raised below
                    self.errors.append(exc)
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
        deadline = time.monotonic() + timeout
        next_tick = 0.0
        while True:
            if until() and (thread is None or not thread.is_alive()):
                break
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"timed out waiting for {what or until}; IKE SAs {self.ike.sas}, children "
                                     f"{[(c.spi_in, c.spi_out, c.state) for c in self.ike.children()]}, "
                                     f"installed {({d: sorted(v) for d, v in self.installed().items()})}, "
                                     f"stats {self.ike.stats}")
            if now >= next_tick:
                self.ike.tick()
                next_tick = now + 0.1
            self.topo.receive_ike(self.ike.receive, 0.05)
        if thread is not None:
            thread.join()
        if self.errors:
            raise self.errors.pop(0)

    # what we hold
    def established(self) -> list:
        return [sa for sa in self.ike.sas.values() if sa.state == "established"]

    def the_sa(self):
        sas = self.established()
        assert len(sas) == 1, f"expected one established IKE SA, have {self.ike.sas}"
        return sas[0]

    def installed(self) -> dict[str, dict[int, object]]:
        out: dict[str, dict[int, object]] = {"in": {}, "out": {}}
        for sa in self.km.sad:
            out[sa.direction][sa.spi] = sa
        return out

    def child(self):
        children = [c for c in self.the_sa().children if c.state == "installed"]
        assert len(children) == 1, f"expected one installed Child SA, have {self.the_sa().children}"
        return children[0]


def swanctl_conf(ike_proposal: str, esp_proposal: str) -> str:
    return ss.swanctl_conf(local_addrs=SWAN, remote_addrs=OURS, proposals=ike_proposal,
                           local="auth = psk\nid = @swan.ipsp.test", remote="auth = psk\nid = @ours.ipsp.test",
                           local_ts=f"{SWAN_IN}/32", remote_ts=f"{OURS_IN}/32", esp=esp_proposal,
                           conn_options="rekey_time = 0", child_options="rekey_time = 0",
                           secrets=ss.psk_secret(PSK, "@swan.ipsp.test", "@ours.ipsp.test", name="ike-kx"))


# -- comparisons (ours vs charon's log) ---------------------------------------------------------

def ike_records(charon) -> list[dict]:
    return [r for r in charon.keys() if r["kind"] == "ike"]


def child_records(charon) -> list[dict]:
    return [r for r in charon.keys() if r["kind"] == "child" and r["spi_in"] is not None]


def check_ike_keys(ours: Ours, charon) -> None:
    sa = ours.the_sa()
    recs = [r for r in ike_records(charon) if r["spi_i"] == sa.spi_i.hex() and r["spi_r"] == sa.spi_r.hex()]
    assert recs, (f"charon logged no IKE keys for SPIs {sa.spi_i.hex()}_i {sa.spi_r.hex()}_r; it has "
                  f"{[(r['spi_i'], r['spi_r']) for r in ike_records(charon)]}")
    rec = recs[-1]
    k = sa.keys
    ours_keys = {"Sk_d": k.sk_d, "Sk_ai": k.sk_ai, "Sk_ar": k.sk_ar, "Sk_ei": k.sk_ei, "Sk_er": k.sk_er,
                 "Sk_pi": k.sk_pi, "Sk_pr": k.sk_pr}
    for name, mine in ours_keys.items():
        theirs = rec.get(name, b"")
        assert mine == theirs, f"{name}: ours {mine.hex()} != charon's {theirs.hex()}"
    assert all(len(ours_keys[n]) for n in ("Sk_d", "Sk_ei", "Sk_er", "Sk_pi", "Sk_pr"))


def check_child_keys(ours: Ours, charon, *, we_initiated: bool) -> tuple[int, int]:
    """Our installed inbound/outbound SAs of the current Child SA vs charon's record with the
    mirrored SPIs; *we_initiated*: who ran the exchange that made this Child SA."""
    child = ours.child()
    inst = ours.installed()
    assert child.spi_in in inst["in"] and child.spi_out in inst["out"], (child, inst)
    sa_in, sa_out = inst["in"][child.spi_in], inst["out"][child.spi_out]
    recs = [r for r in child_records(charon) if r["spi_in"] == child.spi_out and r["spi_out"] == child.spi_in]
    assert recs, (f"charon logged no Child SA {child.spi_out:08x}_i {child.spi_in:08x}_o; it has "
                  f"{[(hex(r['spi_in']), hex(r['spi_out'])) for r in child_records(charon)]}")
    rec = recs[-1]
    # encr_i protects traffic from the exchange's initiator to its responder
    (enc_in, int_in), (enc_out, int_out) = (((rec["encr_r"], rec["integ_r"]), (rec["encr_i"], rec["integ_i"]))
                                            if we_initiated else
                                            ((rec["encr_i"], rec["integ_i"]), (rec["encr_r"], rec["integ_r"])))
    assert sa_in.config.enc_key == enc_in, f"inbound enc: ours {sa_in.config.enc_key.hex()} != {enc_in.hex()}"
    assert sa_out.config.enc_key == enc_out, f"outbound enc: ours {sa_out.config.enc_key.hex()} != {enc_out.hex()}"
    assert sa_in.config.auth_key == int_in, f"inbound integ: ours {sa_in.config.auth_key.hex()} != {int_in.hex()}"
    assert sa_out.config.auth_key == int_out, f"outbound integ: ours {sa_out.config.auth_key.hex()} != {int_out.hex()}"
    assert enc_in and enc_out and enc_in != enc_out
    return child.spi_in, child.spi_out


def charon_has_child(charon, spi_in: int, spi_out: int):
    return lambda: any(r["spi_in"] == spi_out and r["spi_out"] == spi_in for r in child_records(charon))


# -- the test -------------------------------------------------------------------------------------

CASES = [pytest.param(init, ike, esp, id=f"{init}-{ike}-{esp}")
         for init in ("ours", "charon") for ike in IKE_PROPOSALS for esp in ESP_PROPOSALS]
CASES += [pytest.param(init, "aes128-sha256-x25519", "aes128gcm16-modp2048", id=f"{init}-pfs-aes128gcm16-modp2048")
          for init in ("ours", "charon")]


@pytest.mark.parametrize("initiator, ike_proposal, esp_proposal", CASES)
def test_keys_match_charon(topo, initiator, ike_proposal, esp_proposal):
    topo.drain()
    charon = ss.Charon(topo.swan, topo.state("swan"), swanctl_conf=swanctl_conf(ike_proposal, esp_proposal))
    charon.start()
    ours = Ours(topo, ike_proposal, esp_proposal)
    try:
        _run(topo, ours, charon, initiator)
        # the Child SA rekeys (both directions) carried a KE payload exactly when PFS is configured
        rekeys = re.findall(r"(?:parsed|generating) CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\) ([^\]]*)\]",
                            charon.log_text())
        assert len(rekeys) >= 3, rekeys
        assert all(("KE" in r.split()) == ("modp" in esp_proposal) for r in rekeys), rekeys
    finally:
        charon.stop()
        ours.ike.close()


def _run(topo: Topo, ours: Ours, charon, initiator: str) -> None:
    ike = ours.ike

    def one_child_each_way():
        inst = ours.installed()
        return (len(ours.established()) == 1 and len(inst["in"]) == 1 and len(inst["out"]) == 1
                and len(ours.established()[0].children) == 1)

    # 1. establishment
    if initiator == "ours":
        ike.initiate(CONN)
        ours.pump(one_child_each_way, what="IKE_SA_INIT + IKE_AUTH (ours initiating)")
    else:
        ours.pump(one_child_each_way, background=lambda: charon.initiate("net", "gw"),
                  what="IKE_SA_INIT + IKE_AUTH (charon initiating)")
    sa = ours.the_sa()
    assert sa.initiator == (initiator == "ours")
    spis = (sa.spi_i.hex(), sa.spi_r.hex())
    ours.pump(lambda: any((r["spi_i"], r["spi_r"]) == spis for r in ike_records(charon)), what="charon's IKE keys")
    check_ike_keys(ours, charon)
    spi_in, spi_out = ours.child().spi_in, ours.child().spi_out
    ours.pump(charon_has_child(charon, spi_in, spi_out), what="charon's child keys")
    seen = {spi_in}
    check_child_keys(ours, charon, we_initiated=initiator == "ours")

    def rekeyed_child():
        """A new installed Child SA (both its SAs in the km), the old one retired. (The old
        SAs stay in the key manager for its rekey grace: by design, see _remove_child.)"""
        sa = ours.established()
        if len(sa) != 1:
            return False
        kids = sa[0].children
        inst = ours.installed()
        return (len(kids) == 1 and kids[0].state == "installed" and kids[0].spi_in not in seen
                and kids[0].spi_in in inst["in"] and kids[0].spi_out in inst["out"])

    # 2. child rekey, ours initiating, then charon initiating
    for by in ("ours", "charon"):
        before = ike.stats["child_rekeyed"]
        if by == "ours":
            assert ike.rekey(CONN) == 1
            ours.pump(rekeyed_child, what="Child SA rekey (ours)")
        else:
            ours.pump(rekeyed_child, background=lambda: charon.rekey(child="net"), what="Child SA rekey (charon)")
        assert ike.stats["child_rekeyed"] > before
        spi_in, spi_out = ours.child().spi_in, ours.child().spi_out
        ours.pump(charon_has_child(charon, spi_in, spi_out), what=f"charon's child keys after rekey by {by}")
        seen.add(spi_in)
        check_child_keys(ours, charon, we_initiated=by == "ours")
        check_ike_keys(ours, charon)        # unchanged IKE SA

    # 3. IKE SA rekey, ours initiating, then charon initiating
    child_spis = (ours.child().spi_in, ours.child().spi_out)
    for by in ("ours", "charon"):
        old = ours.the_sa()
        old_spis = (old.spi_i, old.spi_r)

        def rekeyed_ike():
            est = ours.established()
            return (len(est) == 1 and (est[0].spi_i, est[0].spi_r) != old_spis and len(ike.sas) == 1
                    and len(est[0].children) == 1)

        if by == "ours":
            assert ike.rekey(CONN, ike=True) == 1
            ours.pump(rekeyed_ike, what="IKE SA rekey (ours)")
        else:
            ours.pump(rekeyed_ike, background=lambda: charon.rekey(ike="gw"), what="IKE SA rekey (charon)")
        new = ours.the_sa()
        assert new.initiator == (by == "ours")
        spis = (new.spi_i.hex(), new.spi_r.hex())
        # charon fills the SPIs of a rekeyed IKE SA from list_sas(): wait until it has moved on too
        ours.pump(lambda: any((r["spi_i"], r["spi_r"]) == spis for r in ike_records(charon)),
                  what=f"charon's IKE keys after rekey by {by}")
        check_ike_keys(ours, charon)
        assert (ours.child().spi_in, ours.child().spi_out) == child_spis   # children move unchanged
        check_child_keys(ours, charon, we_initiated=False)   # made by charon's rekey in step 2

    # 4. after the IKE rekeys, a child rekey derives from the new SK_d
    assert ike.rekey(CONN) == 1
    ours.pump(rekeyed_child, what="Child SA rekey under the rekeyed IKE SA")
    spi_in, spi_out = ours.child().spi_in, ours.child().spi_out
    ours.pump(charon_has_child(charon, spi_in, spi_out), what="charon's child keys")
    check_child_keys(ours, charon, we_initiated=True)
    # charon agrees it holds exactly this IKE SA and Child SA
    sas = charon.list_sas()
    assert sas["gw"]["established"] and (sas["gw"]["initiator-spi"], sas["gw"]["responder-spi"]) == \
        (ours.the_sa().spi_i.hex(), ours.the_sa().spi_r.hex())
    kids = [c for c in sas["gw"]["child-sas"].values() if c.get("state") == "INSTALLED"]
    assert [(int(c["spi-in"], 16), int(c["spi-out"], 16)) for c in kids] == [(spi_out, spi_in)], kids

