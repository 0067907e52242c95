"""The Peer Authorization Database: identities, authentication data, what a peer may claim."""

import ipaddress

import pytest

from ipsp import ConfigError
from ipsp.pad import Identity, Peer, PeerAuthorizationDatabase

N = ipaddress.ip_network


def _gw1():
    return Peer("gw1", (Identity.parse("fqdn:GW1.Example.NET."), Identity.parse("ip:192.0.2.1")), "psk",
                psk=b"k" * 32, addresses=(N("192.0.2.0/24"),), allowed=(N("10.1.0.0/16"), N("2001:db8:1::/48")))


def test_identities_are_normalised():
    assert str(Identity.parse("fqdn:GW1.Example.NET.")) == "fqdn:gw1.example.net"
    assert str(Identity.parse("email:Alice@EXAMPLE.org")) == "email:Alice@example.org"
    assert str(Identity.parse("ip:2001:DB8::0001")) == "ip:2001:db8::1"
    for bad in ("gw1.example", "fqdn:", "ip:300.1.1.1", "email:nobody", "x500:CN=a"):
        with pytest.raises(ConfigError):
            Identity.parse(bad)


def test_authorize_checks_identity_source_address_and_claims():
    pad = PeerAuthorizationDatabase([_gw1()])
    assert pad.authorize("fqdn:gw1.example.net", "192.0.2.1", [N("10.1.2.0/24")]).name == "gw1"
    assert pad.authorize("ip:192.0.2.1", "192.0.2.77", [N("2001:db8:1:5::/64")]).name == "gw1"
    with pytest.raises(ConfigError, match="may not claim 10.2.0.0/16"):
        pad.authorize("fqdn:gw1.example.net", "192.0.2.1", [N("10.1.0.0/24"), N("10.2.0.0/16")])
    with pytest.raises(ConfigError, match="may not claim 10.0.0.0/8"):      # wider than allowed
        pad.authorize("fqdn:gw1.example.net", "192.0.2.1", [N("10.0.0.0/8")])
    with pytest.raises(ConfigError, match="may not connect from 198.51.100.1"):
        pad.authorize("fqdn:gw1.example.net", "198.51.100.1", [])
    with pytest.raises(ConfigError, match="no peer has the identity fqdn:gw2.example.net"):
        pad.authorize("fqdn:gw2.example.net", "192.0.2.1", [])


def test_entries_are_checked_and_identities_unique():
    pad = PeerAuthorizationDatabase([_gw1()])
    with pytest.raises(ConfigError, match="already belongs to peer 'gw1'"):
        pad.add(Peer("other", (Identity.parse("ip:192.0.2.1"),), "psk", psk=b"p" * 16))
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        Peer("weak", (Identity.parse("fqdn:w.example"),), "psk", psk=b"short")
    with pytest.raises(ConfigError, match="names no CA"):
        Peer("cert", (Identity.parse("dn:CN=gw3"),), "pubkey")
    assert "k" * 32 not in repr(_gw1())
    pad.remove("gw1")
    assert pad.find("ip:192.0.2.1") is None and len(pad) == 0
