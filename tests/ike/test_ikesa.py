"""The IKEv2 protocol engine (ipsp.ike.ikesa) between two in-process daemons (tests/ike/loop.py):
every exchange, its failures and its timers, with a manual clock and a lossy in-memory wire.

What strongSwan thinks of the same code is in test_interop_strongswan.py and
test_keys_strongswan.py; the decoder and engine fuzz in test_ike_fuzz.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

import pytest

import ike_loop
import ike_pki
from ipsp.ike import certs
from ipsp.ike.config import IkeSettings
from ipsp.ike.ikesa import _networks
from ipsp.ike.message import ExchangeType, Message
from ipsp.pad import Identity
from ipsp.sad import SAStateName
from ipsp.spd import Action, Direction

Pair = ike_loop.Pair


def live(side, direction=None):
    return sorted((sa for sa in side.km.sad if sa.state is not SAStateName.DEAD
                   and (direction is None or sa.direction == direction)), key=lambda sa: sa.added_at)


def keys_agree(p: Pair) -> None:
    """Every SA one side sends on, the other receives on: same SPI and keys."""
    for tx, rx in ((p.a, p.b), (p.b, p.a)):
        outs = {sa.spi: sa for sa in tx.km.sad if sa.direction == "out"}
        ins = {sa.spi: sa for sa in rx.km.sad if sa.direction == "in"}
        for spi, out in outs.items():
            assert spi in ins, f"{tx.name} sends on {spi:#x}, {rx.name} has no such inbound SA"
            assert (out.config.enc_key, out.config.auth_key) == (ins[spi].config.enc_key, ins[spi].config.auth_key)


def established(p: Pair) -> tuple:
    (sa_a,) = [s for s in p.a.ike.ike_sas() if s.state == "established"]
    (sa_b,) = [s for s in p.b.ike.ike_sas() if s.state == "established"]
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    return sa_a, sa_b


# -- IKE_SA_INIT and IKE_AUTH -------------------------------------------------------------------

def test_psk_handshake_installs_mirrored_sas_and_policies():
    p = Pair()
    p.connect()
    sa_a, sa_b = established(p)
    assert sa_a.keys.sk_ei == sa_b.keys.sk_ei and sa_a.keys.sk_d == sa_b.keys.sk_d
    assert len(p.log) == 4                                   # IKE_SA_INIT and IKE_AUTH, one round trip each
    keys_agree(p)
    for side, mine, theirs in ((p.a, ike_loop.A_NET, ike_loop.B_NET), (p.b, ike_loop.B_NET, ike_loop.A_NET)):
        (out,), (inn,) = live(side, "out"), live(side, "in")
        assert out.config.udp and out.config.dport == 4500 and out.config.transform.name == "aes128gcm16"
        assert out.spi != inn.spi and out.reqid == inn.reqid == 7
        pols = {(pol.direction, str(pol.selector.src), str(pol.selector.dst)) for pol in side.km.spd.policies(Direction.OUT)
                + side.km.spd.policies(Direction.IN)}
        assert pols == {(Direction.OUT, mine, theirs), (Direction.IN, theirs, mine)}
        assert all(pol.action is Action.PROTECT for pol in side.km.spd.policies(Direction.OUT))
    assert [Message.decode(d).header.exchange_type for _, d in p.log] == \
        [ExchangeType.IKE_SA_INIT] * 2 + [ExchangeType.IKE_AUTH] * 2
    # IKE_AUTH and all that follows moved to 4500 (NAT-T forced by encap = true)
    for sa in established(p):
        assert sa.local_port == 4500 and sa.remote[1] == 4500


def test_no_nat_and_no_encap_keeps_plain_esp():
    p = Pair(a_conn={"encap": False}, b_conn={"encap": False})
    p.connect()
    established(p)
    for side in (p.a, p.b):
        assert not any(sa.config.udp for sa in side.km.sad)
    assert all(s.local_port == 500 for s in p.a.ike.ike_sas())


@pytest.mark.parametrize("ike,esp", [("aes128-sha256-x25519", "aes256-sha256"),
                                     ("aes256-sha256-modp2048", "chacha20poly1305"),
                                     ("aes128gcm16-prfsha256-ecp256", "aes128gcm16"),
                                     ("chacha20poly1305-prfsha256-x25519", "aes128-sha1")])
def test_proposals(ike, esp):
    p = Pair(a_conn={"ike_proposals": [ike], "esp_proposals": [esp]},
             b_conn={"ike_proposals": ["aes128gcm16-prfsha256-x25519", ike], "esp_proposals": ["aes128gcm16", esp]})
    p.connect()
    sa_a, _ = established(p)
    assert sa_a.proposal.name == ike
    assert {sa.config.transform.name for sa in p.a.km.sad} == {esp}
    keys_agree(p)


def test_invalid_ke_payload_makes_the_initiator_switch_group(caplog):
    p = Pair(a_conn={"ike_proposals": ["aes128-sha256-x25519-modp2048"]},
             b_conn={"ike_proposals": ["aes128-sha256-modp2048"]})
    p.connect()
    sa_a, _ = established(p)
    assert sa_a.dh.group.id == 14 and p.b.ike.stats["invalid_ke"] == 1
    assert not p.b.ike.half_open or all(s.state != "init" for s in p.b.ike.half_open.values())


def test_no_common_ike_proposal(caplog):
    p = Pair(a_conn={"ike_proposals": ["aes128-sha256-x25519"]}, b_conn={"ike_proposals": ["aes256-sha512-ecp384"]})
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.connect()
    assert not p.a.ike.sas and not p.b.ike.sas and not list(p.b.km.sad)
    assert p.b.ike.stats["no_proposal"] == 1
    assert "NO_PROPOSAL_CHOSEN" in caplog.text


def test_no_common_esp_proposal_keeps_the_ike_sa(caplog):
    p = Pair(a_conn={"esp_proposals": ["aes256-sha256"]}, b_conn={"esp_proposals": ["chacha20poly1305"]})
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.connect()
    established(p)
    assert not list(p.a.km.sad) and not list(p.b.km.sad)
    assert "NO_PROPOSAL_CHOSEN" in caplog.text


def test_wrong_psk_is_refused_with_a_notify_and_a_log_line(caplog):
    p = Pair(b_peer={"psk": b"another key that is long enough"})
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.connect()
    assert not p.a.ike.sas and not p.b.ike.sas
    assert p.b.ike.stats["auth_failed"] == 1 and p.a.ike.stats["auth_failed"] == 1
    assert "wrong pre-shared key" in caplog.text and "AUTHENTICATION_FAILED" in caplog.text


def test_unknown_identity_and_address_are_refused(caplog):
    p = Pair(b_peer={"addresses": (ipaddress.ip_network("203.0.113.0/24"),)})
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.connect()
    assert not p.b.ike.sas and "may not connect from 192.0.2.1" in caplog.text


# -- cookies (RFC 7296 2.6) -----------------------------------------------------------------------

def test_cookie_round_trip():
    p = Pair(b_settings=IkeSettings(cookie_threshold=0))
    p.connect()
    established(p)
    assert p.b.ike.stats["cookies_sent"] == 1
    assert len(p.log) == 6


def test_init_flood_gets_cookies_and_creates_no_state():
    p = Pair(b_settings=IkeSettings(cookie_threshold=5))
    p.a.ike.initiate("a-to-b")
    _, first, _, _ = p.wire.popleft()
    msg = Message.decode(first)
    for i in range(1, 5001):          # (a zero initiator SPI is malformed, RFC 7296 3.1)
        h = dataclasses.replace(msg.header, spi_i=i.to_bytes(8, "big"))
        p.b.ike.receive(Message(h, msg.payloads).encode(), ("198.51.100.%d" % (i % 250 + 1), 500), 500)
    assert len(p.b.ike.half_open) == 5 and len(p.b.ike.sas) == 5          # up to the threshold only
    assert p.b.ike.stats["cookies_sent"] == 4995
    p.wire.clear()
    # the real initiator still gets through, with the cookie
    p.a.ike.sas.clear()
    p.connect()
    established(p)


# -- retransmission and the response cache (RFC 7296 2.1) ----------------------------------------

def test_lost_response_is_retransmitted_and_answered_from_the_cache():
    p = Pair()
    dropped = []

    def drop(sender, data):
        h = Message.decode(data).header
        if sender == "b" and h.exchange_type == ExchangeType.IKE_AUTH and not dropped:
            dropped.append(data)
            return True
        return False

    p.drop = drop
    p.connect()
    assert not [s for s in p.a.ike.ike_sas() if s.state == "established"]
    p.advance(2.5)
    established(p)
    assert p.a.ike.stats["retransmits"] == 1 and p.b.ike.stats["responses_resent"] == 1
    assert len(live(p.b, "in")) == 1                      # the retransmitted request made no second child
    keys_agree(p)


def test_unreachable_peer_is_given_up_and_its_sas_removed(caplog):
    p = Pair(a_conn={"dpd": 10})
    p.connect()
    established(p)
    p.drop = lambda sender, data: True
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.advance(60)
    assert not p.a.ike.sas and not list(p.a.km.sad) and not p.a.km.spd.policies(Direction.OUT)
    assert p.a.ike.stats["dead_peers"] == 1 and "peer is gone" in caplog.text
    assert p.a.ike.stats["retransmits"] == 4


def test_liveness_check_only_when_quiet():
    p = Pair(a_conn={"dpd": 10})
    p.connect()
    n = len(p.log)
    p.advance(9)
    assert len(p.log) == n
    p.advance(3)
    infos = [Message.decode(d).header.exchange_type for _, d in p.log[n:]]
    assert infos == [ExchangeType.INFORMATIONAL] * 2
    established(p)


# -- traffic selectors (RFC 7296 2.9) ---------------------------------------------------------------

def test_responder_narrows_and_initiator_accepts():
    p = Pair(a_conn={"local_ts": ["10.1.0.0/16"], "remote_ts": ["10.0.0.0/8"]},
             b_conn={"local_ts": ["10.2.0.0/16"], "remote_ts": ["10.1.2.0/24"]})
    p.connect()
    established(p)
    out = {(str(x.selector.src), str(x.selector.dst)) for x in p.a.km.spd.policies(Direction.OUT)}
    assert out == {("10.1.2.0/24", "10.2.0.0/16")}
    (child,) = p.a.ike.children()
    assert [str(n) for s in child.ts_local for n in _networks(s)] == ["10.1.2.0/24"]


def test_disjoint_selectors_get_ts_unacceptable(caplog):
    p = Pair(b_conn={"remote_ts": ["172.16.0.0/12"]})
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.connect()
    established(p)
    assert not list(p.a.km.sad) and not list(p.b.km.sad)
    assert "TS_UNACCEPTABLE" in caplog.text and p.b.ike.stats["ts_unacceptable"] == 1


def test_pad_allowed_limits_what_the_peer_may_claim(caplog):
    p = Pair(b_peer={"allowed": (ipaddress.ip_network("10.1.5.0/24"),)})
    p.connect()
    out = {(str(x.selector.src), str(x.selector.dst)) for x in p.b.km.spd.policies(Direction.OUT)}
    assert out == {("10.2.0.0/16", "10.1.5.0/24")}


def test_second_connection_to_a_peer_is_a_child_of_the_same_ike_sa():
    more = [{"name": "voice", "local_ts": ["10.11.0.0/16"], "remote_ts": ["10.12.0.0/16"], "reqid": 8}]
    p = Pair(a_more=more, b_more=[{**more[0], "local_ts": ["10.12.0.0/16"], "remote_ts": ["10.11.0.0/16"]}])
    p.connect()
    p.a.ike.initiate("voice")
    p.run()
    sa_a, sa_b = established(p)
    assert sorted(c.conn.name for c in sa_a.children) == ["a-to-b", "voice"]
    assert sorted(c.conn.reqid for c in sa_b.children) == [7, 8]
    keys_agree(p)
    out = {(str(x.selector.src), str(x.selector.dst), x.reqid) for x in p.b.km.spd.policies(Direction.OUT)}
    assert out == {("10.2.0.0/16", "10.1.0.0/16", 7), ("10.12.0.0/16", "10.11.0.0/16", 8)}
    p.a.ike.terminate("voice")                             # its Child SA only: the IKE SA carries another
    p.run()
    sa_a, sa_b = established(p)
    assert [c.conn.name for c in sa_a.children] == ["a-to-b"] and len(sa_b.children) == 1


def test_children_of_one_responder_connection_get_their_own_reqids():
    """Two initiator connections with narrower selectors meet one responder connection: two
    Child SAs under it, which must not look like a rekey of each other in the key manager."""
    p = Pair(a_conn={"local_ts": ["10.1.1.0/24"]},
             a_more=[{"name": "second", "local_ts": ["10.1.2.0/24"], "reqid": 8}])
    p.connect()
    p.a.ike.initiate("second")
    p.run()
    p.advance(10)                                          # past any rekey grace
    assert len(p.b.ike.children()) == 2
    assert len({c.reqid for c in p.b.ike.children()}) == 2
    assert all(sa.state is SAStateName.MATURE for sa in p.b.km.sad) and len(list(p.b.km.sad)) == 4
    keys_agree(p)
    p.a.ike.terminate("a-to-b")                            # one Child SA: the other keeps the IKE SA
    p.run()
    assert len(p.b.ike.children()) == 1 and len(list(p.b.km.sad)) == 2
    p.a.ike.terminate("second")                            # the last one: the IKE SA goes too
    p.run()
    assert not p.b.ike.sas and not list(p.b.km.sad) and not p.b.km.spd.policies(Direction.OUT)


# -- certificates (RFC 7296 2.15, RFC 7427) ----------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = ike_pki.make_ca(key_type="ecdsa")
    (d / "ca.pem").write_bytes(ca.cert_pem)
    return d, ca


def cert_pair(pki, a_type="ecdsa", b_type="rsa", *, b_cert=None, crl=None):
    d, ca = pki
    a = ike_pki.make_cert(ca, "a", key_type=a_type, san_dns=["a.ipsp.test"])
    b = b_cert or ike_pki.make_cert(ca, "b", key_type=b_type, san_dns=["b.ipsp.test"])
    kw = {}
    for name, issued in (("a", a), ("b", b)):
        crls = [x509_crl(crl)] if crl is not None else []
        kw[name] = {"credential": certs.Credential(issued.cert, issued.key),
                    "trust": certs.TrustStore([ca.cert], crls)}
    return Pair(a_peer={"auth": "pubkey", "psk": None, "ca": str(d / "ca.pem")},
                b_peer={"auth": "pubkey", "psk": None, "ca": str(d / "ca.pem")}, a_kw=kw["a"], b_kw=kw["b"])


def x509_crl(pem):
    from cryptography import x509
    return x509.load_pem_x509_crl(pem)


@pytest.mark.parametrize("a_type,b_type", [("ecdsa", "rsa"), ("rsa", "ecdsa")])
def test_certificate_authentication(pki, a_type, b_type):
    p = cert_pair(pki, a_type, b_type)
    p.connect()
    sa_a, sa_b = established(p)
    assert str(sa_a.peer_id) == "fqdn:b.ipsp.test" and str(sa_b.peer_id) == "fqdn:a.ipsp.test"
    keys_agree(p)


def test_dn_identities_with_certificates(pki):
    """ID_DER_ASN1_DN: each side sends its certificate's subject as its identity."""
    d, ca = pki
    p = cert_pair(pki)
    for side, other in ((p.a, "b"), (p.b, "a")):
        conn = next(iter(side.ike.connections.values()))
        side.ike.connections[conn.name] = dataclasses.replace(conn, local_id=None)
        side.ike.settings = IkeSettings()
        peer = side.pad.get(other)
        side.pad.remove(other)
        side.pad.add(dataclasses.replace(peer, identities=(Identity.parse(f"dn:CN={other},O=ipsp test"),)))
    p.connect()
    sa_a, sa_b = established(p)
    assert str(sa_a.peer_id) == "dn:CN=b,O=ipsp test" and str(sa_b.peer_id) == "dn:CN=a,O=ipsp test"


def test_ip_identities_with_psk():
    p = Pair(a_conn={"local_id": "ip:192.0.2.1"}, b_conn={"local_id": "ip:192.0.2.2"},
             a_peer={}, b_peer={})
    for side, other, addr in ((p.a, "b", "192.0.2.2"), (p.b, "a", "192.0.2.1")):
        peer = side.pad.get(other)
        side.pad.remove(other)
        side.pad.add(dataclasses.replace(peer, identities=(Identity.parse(f"ip:{addr}"),)))
    p.connect()
    sa_a, _ = established(p)
    assert str(sa_a.peer_id) == "ip:192.0.2.2"


def test_certificate_chain_through_an_intermediate(pki):
    """a's certificate comes from an intermediate CA that b does not know: a sends it after its
    own (RFC 7296 3.6), b builds the path to the root it trusts."""
    d, ca = pki
    sub = ike_pki.make_ca("ipsp test intermediate", parent=ca)
    a = ike_pki.make_cert(sub, "a", san_dns=["a.ipsp.test"])
    p = cert_pair(pki)
    p.a.ike.credential = certs.Credential(a.cert, a.key, (sub.cert,))
    p.connect()
    established(p)
    p2 = cert_pair(pki)
    p2.a.ike.credential = certs.Credential(a.cert, a.key)             # without the intermediate
    p2.connect()
    assert not p2.b.ike.sas and p2.b.ike.stats["auth_failed"] == 1


def test_revoked_certificate_is_refused(pki, caplog):
    d, ca = pki
    b = ike_pki.make_cert(ca, "b", san_dns=["b.ipsp.test"])
    p = cert_pair(pki, b_cert=b, crl=ike_pki.make_crl(ca, [b.cert.serial_number]))
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.connect()
    assert not p.a.ike.sas and not p.b.ike.sas
    assert "revoked" in caplog.text


def test_expired_certificate_is_refused(pki, caplog):
    import datetime
    d, ca = pki
    now = datetime.datetime.now(datetime.timezone.utc)
    old = ike_pki.make_cert(ca, "b", san_dns=["b.ipsp.test"], not_before=now - datetime.timedelta(days=10),
                            not_after=now - datetime.timedelta(days=1))
    p = cert_pair(pki, b_cert=old)
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.connect()
    assert not p.a.ike.sas and "expired" in caplog.text


def test_certificate_without_the_identity_is_refused(pki, caplog):
    d, ca = pki
    other = ike_pki.make_cert(ca, "b", san_dns=["mallory.ipsp.test"])
    p = cert_pair(pki, b_cert=other)
    with caplog.at_level(logging.WARNING, "ipsp.ike"):
        p.connect()
    assert not p.a.ike.sas and "does not hold the identity" in caplog.text


# -- IKE fragmentation (RFC 7383) -----------------------------------------------------------------------

def small_fragments(pki, **settings):
    p = cert_pair(pki, "rsa", "rsa")
    for side in (p.a, p.b):
        side.ike.settings = IkeSettings(fragment_size=576, **settings)
    return p


def skf_count(p, sender):
    from ipsp.ike.message import SKF
    return sum(isinstance(Message.decode(d).payloads[-1], SKF) for s, d in p.log if s == sender)


def test_large_ike_auth_goes_in_fragments(pki):
    p = small_fragments(pki)
    p.connect()
    established(p)
    keys_agree(p)
    assert skf_count(p, "a") >= 3 and skf_count(p, "b") >= 3          # RSA certificates do not fit 576
    assert all(len(d) <= 576 - 28 - 4 for _, d in p.log)
    assert p.b.ike.stats["fragments_received"] == skf_count(p, "a") - 1


def test_no_fragments_unless_both_announce(pki):
    p = small_fragments(pki)
    p.b.ike.settings = IkeSettings(fragment_size=576, fragmentation=False)
    p.connect()
    established(p)
    assert skf_count(p, "a") == skf_count(p, "b") == 0


def test_lost_fragments_are_recovered_by_retransmission(pki):
    from ipsp.ike.message import SKF
    p = small_fragments(pki)
    lost = set()

    def drop(sender, data):
        last = Message.decode(data).payloads[-1]
        # the second fragment of the request once, and of the response once
        if isinstance(last, SKF) and last.fragment_number == 2 and sender not in lost:
            lost.add(sender)
            return True
        return False

    p.drop = drop
    p.connect()
    p.advance(8)
    established(p)
    keys_agree(p)
    assert lost == {"a", "b"} and p.b.ike.stats["responses_resent"] == 1
    assert len(live(p.b, "in")) == 1


# -- CREATE_CHILD_SA: rekeys, make-before-break ----------------------------------------------------------

@pytest.mark.parametrize("by", ["a", "b"])
def test_child_rekey_from_either_side(by):
    p = Pair()
    p.connect()
    old = {sa.spi for sa in p.a.km.sad}
    getattr(p, by).ike.rekey(f"{by}-to-{'b' if by == 'a' else 'a'}")
    p.run()
    for side in (p.a, p.b):
        (child,) = side.ike.children()
        assert {child.spi_in, child.spi_out}.isdisjoint(old)
        outs = [sa for sa in live(side, "out") if sa.state is SAStateName.MATURE]
        assert [sa.spi for sa in outs] == [child.spi_out]         # the new SA carries the traffic
    keys_agree(p)
    # the old SAs live out the grace period for packets in flight, then go
    p.advance(6)
    for side in (p.a, p.b):
        assert {sa.spi for sa in side.km.sad}.isdisjoint(old)
        assert len(live(side)) == 2


def test_rekey_responder_keeps_sending_on_the_old_sa_until_the_delete():
    p = Pair()
    p.connect()
    (old_b,) = p.b.ike.children()
    p.a.ike.rekey("a-to-b")
    # deliver the request and the response only: the Delete is held back
    for _ in range(2):
        sender, data, to, port = p.wire.popleft()
        (p.b if sender == "a" else p.a).ike.receive(data, ((p.a if sender == "a" else p.b).addr, port), to[1])
    new_b = [c for c in p.b.ike.children() if c is not old_b][0]
    assert new_b.out_pending is not None
    assert p.b.km.outbound_sa(p.b.km.spd.policies(Direction.OUT)[0]).spi == old_b.spi_out
    p.run()
    assert new_b.out_pending is None
    assert p.b.km.outbound_sa(p.b.km.spd.policies(Direction.OUT)[0]).spi == new_b.spi_out


def test_child_rekey_with_pfs():
    p = Pair(a_conn={"esp_proposals": ["aes128gcm16-modp2048"]}, b_conn={"esp_proposals": ["aes128gcm16-modp2048"]})
    p.connect()
    p.a.ike.rekey("a-to-b")
    p.run()
    requests = [Message.decode(d) for _, d in p.log if Message.decode(d).header.exchange_type == ExchangeType.CREATE_CHILD_SA]
    assert len(requests) == 2
    sa_a, sa_b = established(p)
    assert len(p.a.ike.children()) == 1
    keys_agree(p)


def test_simultaneous_child_rekeys_settle_on_one_child():
    p = Pair()
    p.connect()
    p.a.ike.rekey("a-to-b")
    p.b.ike.rekey("b-to-a")
    p.run()
    assert p.a.ike.stats["temporary_failures"] + p.b.ike.stats["temporary_failures"] == 2
    p.advance(5)
    (ca,), (cb,) = p.a.ike.children(), p.b.ike.children()
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    p.advance(6)
    assert len(live(p.a)) == 2 and len(live(p.b)) == 2
    keys_agree(p)


@pytest.mark.parametrize("by", ["a", "b"])
def test_ike_rekey_moves_the_children(by):
    p = Pair()
    p.connect()
    old_a, old_b = established(p)
    child_spis = {c.spi_in for c in p.a.ike.children()}
    getattr(p, by).ike.rekey(f"{by}-to-{'b' if by == 'a' else 'a'}", ike=True)
    p.run()
    new_a, new_b = established(p)
    assert new_a is not old_a and new_a.keys.sk_d == new_b.keys.sk_d != old_a.keys
    assert new_a.initiator == (by == "a")
    assert {c.spi_in for c in p.a.ike.children()} == child_spis
    # the new IKE SA works: a child rekey over it
    p.a.ike.rekey("a-to-b")
    p.run()
    keys_agree(p)
    assert len(p.a.ike.children()) == 1


def test_lifetimes_rekey_with_jitter():
    p = Pair(a_conn={"child_rekey": 100, "ike_rekey": 1000, "jitter": 0.1}, b_conn={"child_rekey": 1000})
    p.connect()
    (child,) = p.a.ike.children()
    assert 1000 + 90 <= child.rekey_at <= 1000 + 100
    first = child.spi_in
    p.advance(101)
    (child,) = p.a.ike.children()
    assert child.spi_in != first and p.a.ike.stats["child_rekeyed"] == 1
    established(p)
    p.advance(1000)
    assert p.a.ike.stats["ike_rekeyed"] >= 1


def test_key_manager_expiry_rekeys_or_deletes():
    p = Pair()
    p.connect()
    (child,) = p.a.ike.children()
    p.a.ike.expired(child.spi_in, "in", hard=False)          # a soft byte or packet limit
    p.run()
    (new,) = p.a.ike.children()
    assert new.spi_in != child.spi_in
    p.a.ike.expired(new.spi_out, "out", hard=True)
    p.run()
    assert not p.a.ike.children() and not p.b.ike.children()
    established(p)


# -- INFORMATIONAL: delete, INITIAL_CONTACT --------------------------------------------------------------

@pytest.mark.parametrize("by", ["a", "b"])
def test_delete_from_either_side_removes_everything(by):
    p = Pair()
    p.connect()
    getattr(p, by).ike.terminate(f"{by}-to-{'b' if by == 'a' else 'a'}")
    p.run()
    for side in (p.a, p.b):
        assert not side.ike.sas and not list(side.km.sad)
        assert not side.km.spd.policies(Direction.OUT) and not side.km.spd.policies(Direction.IN)


def test_child_delete():
    p = Pair()
    p.connect()
    (child,) = p.a.ike.children()
    p.a.ike.delete_child(child)
    p.run()
    established(p)
    assert not list(p.a.km.sad) and not list(p.b.km.sad)


def test_initial_contact_after_a_restart_replaces_the_old_sas():
    p = Pair()
    p.connect()
    old = established(p)[1]
    # a "restarts": a fresh daemon with the same configuration, no state, no Delete sent
    fresh = Pair()
    p.a = dataclasses.replace(p.a, ike=fresh.a.ike, km=fresh.a.km)
    fresh.a.ike.send = lambda data, to, port: p.wire.append(("a", data, to, port))
    fresh.a.ike.clock = p.clock
    p.connect()
    (sa_b,) = p.b.ike.ike_sas()
    assert sa_b is not old and old.state == "dead"
    assert len(live(p.b, "in")) == 1 and len(live(p.b, "out")) == 1
    keys_agree(p)


def test_acquire_starts_a_trapped_connection():
    p = Pair(a_conn={"start": "trap"})
    p.a.ike.start()
    assert len(p.a.km.spd.policies(Direction.OUT)) == 1 and not list(p.a.km.sad)
    p.a.ike.acquire(7)
    p.run()
    established(p)
    p.a.ike.terminate("a-to-b")
    p.run()
    assert len(p.a.km.spd.policies(Direction.OUT)) == 1     # the trap stays for the next packet


def test_close_sends_delete_and_wipes():
    p = Pair()
    p.connect()
    p.a.ike.close()
    p.run()
    assert not p.a.ike.sas and not p.b.ike.sas and not list(p.b.km.sad) and not list(p.a.km.sad)
