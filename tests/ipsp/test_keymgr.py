"""The key-manager API over SAD, SPD and PAD, with events and an injected clock."""

import ipaddress
import logging

import pytest

from ipsp import ConfigError, SAConfig, parse_proposal
from ipsp.gen import fixed_packets
from ipsp.keymgr import KeyManagerAPI
from ipsp.sad import Lifetime, Lifetimes, SAStateName
from ipsp.spd import Action, PolicySelector

A, B = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
N = ipaddress.ip_network


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def _cfg(spi, key=0):
    t = parse_proposal("aes128gcm16")
    return SAConfig(spi=spi, src=A, dst=B, transform=t, enc_key=bytes([key]) * 20)


def test_manual_keying_through_the_api_and_queries():
    api = KeyManagerAPI()
    spi = api.get_spi(B, 0x8000, 0x8FFF)
    sa = api.add_sa(_cfg(spi), "in", reqid=7, label="secret")
    q = api.query_sa(spi, B)
    assert q["state"] == "mature" and q["reqid"] == 7 and q["label"] == "secret" and q["packets"] == 0
    assert q["proposal"] == "aes128gcm16" and q["replay_top"] == 0
    pol = api.add_policy(PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16")), Action.PROTECT, reqid=7)
    assert api.query_policy(pol.id).reqid == 7
    with pytest.raises(ConfigError, match="needs the reqid"):
        api.add_policy(PolicySelector(), Action.PROTECT)
    api.del_sa(spi, B)
    assert sa.kernel.closed and sa.state is SAStateName.DEAD
    api.del_policy(pol.id)
    assert len(api.spd) == 0


def test_expire_events_soft_then_hard_on_the_injected_clock():
    clock = Clock()
    api = KeyManagerAPI(clock=clock)
    seen = []
    api.on("expire", seen.append)
    api.add_sa(_cfg(0x2001), "out", reqid=1,
               lifetimes=Lifetimes(soft=Lifetime(add_seconds=50), hard=Lifetime(add_seconds=60)))
    assert api.tick() == []
    clock.t += 50
    api.tick()
    clock.t += 10
    api.tick()
    assert [(e.hard, e.limit) for e in seen] == [(False, "add_seconds"), (True, "add_seconds")]
    assert len(api.sad) == 0                      # dead SAs leave the database


def test_make_before_break_outbound_selection():
    clock = Clock()
    api = KeyManagerAPI(clock=clock)
    pol = api.add_policy(PolicySelector(), Action.PROTECT, reqid=3)
    old = api.add_sa(_cfg(0x3001, 1), "out", reqid=3, lifetimes=Lifetimes(soft=Lifetime(packets=1)))
    assert api.outbound_sa(pol) is old
    old.kernel.encap(fixed_packets(64, 1)[0])
    api.tick()                                    # soft: old is dying, still usable
    assert old.state is SAStateName.DYING and api.outbound_sa(pol) is old
    clock.t += 1
    new = api.add_sa(_cfg(0x3002, 2), "out", reqid=3)
    assert api.outbound_sa(pol) is new            # the switch is one lookup, the old SA lives on
    api.del_sa(0x3001, B, "out")
    assert api.outbound_sa(pol) is new


def test_events_from_a_failing_callback_do_not_escape(caplog):
    api = KeyManagerAPI()
    got = []
    api.on("acquire", lambda ev: 1 / 0)
    api.on("acquire", got.append)
    pol = api.add_policy(PolicySelector(), Action.PROTECT, reqid=9)
    with caplog.at_level(logging.ERROR, logger="ipsp.keymgr"):
        api.acquire(pol, "10.0.0.1", "10.0.0.2", 17, 1000, 53)
    assert got and got[0].policy is pol and "acquire callback" in caplog.text
    with pytest.raises(ConfigError, match="unknown event"):
        api.on("rekey", print)


def test_mapping_event_only_when_the_peer_moved():
    api = KeyManagerAPI()
    moves = []
    api.on("mapping", moves.append)
    sa = api.add_sa(_cfg(0x4001), "in", reqid=1)
    api.mapping(sa, ("192.0.2.1", 4500))
    api.mapping(sa, ("203.0.113.9", 61000))
    assert [(m.old, m.new) for m in moves] == [(("192.0.2.1", 4500), ("203.0.113.9", 61000))]
