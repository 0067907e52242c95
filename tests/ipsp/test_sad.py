"""The SA database: lifecycle, lifetimes on an injected clock, SPI allocation, lookup."""

import ipaddress

import pytest

from ipsp import ConfigError, SAConfig, parse_proposal
from ipsp.gen import fixed_packets
from ipsp.sad import Lifetime, Lifetimes, SADatabase, SAStateName, SecurityAssociation

A, B = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _cfg(spi=0x1001, dst=B, **kw):
    t = parse_proposal("aes128gcm16")
    return SAConfig(spi=spi, src=A, dst=dst, transform=t, enc_key=bytes(range(20)), **kw)


def test_soft_then_hard_by_packets_counting_only_authenticated_traffic():
    clock = Clock()
    out = SecurityAssociation(_cfg(), "out", clock=clock)
    inb = SecurityAssociation(_cfg(), "in", clock=clock,
                              lifetimes=Lifetimes(soft=Lifetime(packets=3), hard=Lifetime(packets=5)))
    pkts = [out.kernel.encap(p) for p in fixed_packets(100, 6)]
    inb.kernel.decap(pkts[0])
    inb.kernel.decap(pkts[1])
    for bad in (pkts[0], pkts[1]):                   # replays: refused, and never counted
        with pytest.raises(Exception):
            inb.kernel.decap(bad)
    forged = bytearray(pkts[2])
    forged[-1] ^= 1
    with pytest.raises(Exception):
        inb.kernel.decap(bytes(forged))
    assert inb.check_lifetimes() is None and inb.usage()[1] == 2
    inb.kernel.decap(pkts[2])
    ev = inb.check_lifetimes()
    assert ev is not None and not ev.hard and ev.limit == "packets" and inb.state is SAStateName.DYING
    assert inb.check_lifetimes() is None             # soft is reported once
    inb.kernel.decap(pkts[3])
    inb.kernel.decap(pkts[4])
    ev = inb.check_lifetimes()
    assert ev.hard and inb.state is SAStateName.DEAD and inb.kernel.closed


def test_time_limits_since_add_and_since_first_use():
    clock = Clock()
    sa = SecurityAssociation(_cfg(), "out", clock=clock,
                             lifetimes=Lifetimes(soft=Lifetime(use_seconds=10), hard=Lifetime(add_seconds=100)))
    clock.t += 50
    assert sa.check_lifetimes() is None              # never used: the use clock has not started
    sa.kernel.encap(fixed_packets(64, 1)[0])
    assert sa.check_lifetimes() is None              # first use seen now
    clock.t += 10
    assert sa.check_lifetimes().limit == "use_seconds"
    clock.t += 40
    ev = sa.check_lifetimes()
    assert ev.hard and ev.limit == "add_seconds"


def test_sequence_exhaustion_is_a_hard_expiry():
    import fastpath
    sa = SecurityAssociation(_cfg(), "out")
    sa.kernel.close()
    # the kernel state of an SA resumed one short of the last 32-bit sequence number
    sa.kernel = fastpath.SAState(spi=0x1001, cipher=fastpath.Cipher.CIPHER_AES_GCM, icv_len=16,
                                 enc_key=bytes(20), src=A.packed, dst=B.packed, seq_out=2**32 - 2)
    sa.kernel.encap(fixed_packets(64, 1)[0])
    ev = sa.check_lifetimes()
    assert ev is not None and ev.hard and ev.limit == "sequence" and sa.kernel.closed


def test_get_spi_is_unique_in_range_and_released_when_unused():
    clock = Clock()
    db = SADatabase(clock=clock)
    spis = {db.get_spi(B, 0x1000, 0x10FF) for _ in range(200)}
    assert len(spis) == 200 and all(0x1000 <= s <= 0x10FF for s in spis)
    with pytest.raises(ConfigError):
        db.get_spi(B, 0x10, 0x20)
    clock.t += SADatabase.LARVAL_SECONDS + 1
    assert len({db.get_spi(B, 0x2000, 0x2003) for _ in range(4)}) == 4


def test_longest_match_lookup_and_duplicates():
    db = SADatabase()
    unicast = db.add(SecurityAssociation(_cfg(0x2001), "in"))
    group = ipaddress.ip_address("233.252.0.1")
    s1 = db.add(SecurityAssociation(_cfg(0x3001, dst=group), "in", group_source=ipaddress.ip_address("198.51.100.7")))
    any_src = db.add(SecurityAssociation(_cfg(0x3001, dst=group), "in"))
    assert db.lookup_inbound(0x2001, B) is unicast
    assert db.lookup_inbound(0x3001, group, "198.51.100.7") is s1
    assert db.lookup_inbound(0x3001, group, "198.51.100.8") is any_src
    assert db.lookup_inbound(0x9999, B) is None
    dup = SecurityAssociation(_cfg(0x2001), "in")
    with pytest.raises(ConfigError):
        db.add(dup)
    assert dup.kernel.closed and len(db) == 3


def test_delete_and_flush_wipe_keys():
    db = SADatabase()
    a = db.add(SecurityAssociation(_cfg(0x2001), "in"))
    b = db.add(SecurityAssociation(_cfg(0x2002), "out"))
    assert db.delete(0x2001, B) is a and a.kernel.closed and a.state is SAStateName.DEAD
    with pytest.raises(KeyError):
        db.get(0x2001, B)
    db.flush()
    assert len(db) == 0 and b.kernel.closed
