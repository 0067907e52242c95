"""The policy database and its compiled classifier: the C lookup (with its flow cache) must
give exactly the reference first-match answer of PolicyDatabase.lookup."""

import functools
import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from fastpath.classify import CLASS_NONE, CLASS_UNPARSEABLE, Classifier, cache_stats
from ipsp import ConfigError
from ipsp.gen import ipv4_udp
from ipsp.spd import Action, Direction, Policy, PolicyDatabase, PolicySelector


def _rules(policies):
    return [(p.selector.version, p.selector.src.network_address.packed, p.selector.src.prefixlen,
             p.selector.dst.network_address.packed, p.selector.dst.prefixlen, p.selector.proto,
             *p.selector.sport, *p.selector.dport) for p in policies]


octet = st.integers(0, 3)
prefix = st.builds(lambda a, b, n: ipaddress.ip_network(f"10.{a}.{b}.0/{n}", strict=False), octet, octet,
                   st.sampled_from([0, 8, 16, 22, 24, 32]))
selector = st.builds(PolicySelector, prefix, prefix, st.sampled_from([-1, 6, 17]),
                     st.sampled_from([(0, 65535), (1024, 65535)]),
                     st.sampled_from([(0, 65535), (443, 443), (1000, 2000)]))
packet = st.tuples(octet, octet, st.integers(0, 255), octet, octet, st.integers(0, 255),
                   st.sampled_from([53, 443, 1500, 8080]), st.sampled_from([80, 1234, 40000]))


@settings(max_examples=60, deadline=None)
@given(st.lists(selector, min_size=0, max_size=40), st.lists(packet, min_size=1, max_size=60))
def test_classifier_matches_reference_first_match(selectors, packets):
    policies = [Policy(s, Action.PROTECT) for s in selectors]
    db = PolicyDatabase(policies)
    c = Classifier(_rules(db.policies(Direction.OUT)))
    ordered = db.policies(Direction.OUT)
    for _ in range(2):                       # the second pass answers from the flow cache
        for a, b, x, d, e, y, dport, sport in packets:
            src, dst = bytes([10, a, b, x]), bytes([10, d, e, y])
            ref = db.lookup(Direction.OUT, ipaddress.ip_address(src), ipaddress.ip_address(dst), 17, sport, dport)
            pkt = ipv4_udp(60, src, dst, sport, dport, 0, 0)
            want = ordered.index(ref) if ref else CLASS_NONE
            assert c.classify(pkt) == want


def test_a_new_table_never_uses_answers_cached_for_an_old_one():
    def table(last):
        # more rules than a table the classifier scans without its cache
        other = PolicySelector(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("192.0.2.0/24"))
        return Classifier(_rules([Policy(other, Action.DISCARD)] * 7 + [Policy(last, Action.PROTECT)]))
    pkt = ipv4_udp(60, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1, 2, 0, 0)
    old = table(PolicySelector(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8")))
    hits, misses = cache_stats()
    assert old.classify(pkt) == 7 and old.classify(pkt) == 7
    assert cache_stats() == (hits + 1, misses + 1)
    new = table(PolicySelector(ipaddress.ip_network("10.9.0.0/16"), ipaddress.ip_network("10.0.0.0/8")))
    assert new.classify(pkt) == CLASS_NONE
    assert new.classify(b"\x45" + bytes(5)) == CLASS_UNPARSEABLE
    assert Classifier([]).classify(pkt) == CLASS_NONE


def test_batch_agrees_with_single_calls_and_checks_bounds():
    import numpy as np
    sel = PolicySelector(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("10.1.0.0/16"), proto=17)
    c = Classifier(_rules([Policy(sel, Action.PROTECT)]))
    pkts = [ipv4_udp(60, bytes([10, 0, 0, i]), bytes([10, 1 + i % 2, 0, 2]), 1, 2, 0, 0) for i in range(40)]
    pkts[7] = b"\x60" + bytes(10)
    buf = np.frombuffer(b"".join(p.ljust(64, b"\0") for p in pkts), dtype=np.uint8).copy()
    offs = np.arange(40, dtype=np.int64) * 64
    lens = np.array([len(p) for p in pkts], dtype=np.uint32)
    out = np.zeros(40, dtype=np.int32)
    c.classify_batch(buf, offs, lens, out)
    assert list(out) == [c.classify(p) for p in pkts]
    assert out[7] == CLASS_UNPARSEABLE and out[1] == CLASS_NONE and out[0] == 0
    offs[3] = len(buf) - 10
    with pytest.raises(ValueError, match="packet 3"):
        c.classify_batch(buf, offs, lens, out)


def test_database_order_priority_and_errors():
    any4 = ipaddress.ip_network("0.0.0.0/0")
    a = Policy(PolicySelector(any4, any4), Action.BYPASS, priority=10)
    b = Policy(PolicySelector(any4, any4), Action.DISCARD, priority=5)
    db = PolicyDatabase([a, b])
    assert db.policies(Direction.OUT) == (b, a)
    assert db.lookup(Direction.OUT, ipaddress.ip_address("1.2.3.4"), ipaddress.ip_address("5.6.7.8"), 6, 1, 2) is b
    gen = db.generation
    db.delete(b.id)
    assert db.policies(Direction.OUT) == (a,) and db.generation > gen
    with pytest.raises(KeyError):
        db.delete(b.id)
    with pytest.raises(ConfigError):
        PolicySelector(any4, ipaddress.ip_network("::/0"))
    with pytest.raises(ConfigError):
        PolicySelector(any4, any4, dport=(10, 5))


v4_prefix = st.builds(lambda a, n: ipaddress.ip_network(f"10.{a}.0.0/{n}", strict=False), octet,
                      st.sampled_from([0, 8, 16, 32]))
v6_prefix = st.builds(lambda a, n: ipaddress.ip_network(f"2001:db8:{a}::/{n}", strict=False), octet,
                      st.sampled_from([0, 32, 48, 128]))
ports = st.sampled_from([(0, 65535), (53, 53), (8, 8), (0, 0), (1000, 2000)])
mixed_selector = st.one_of(
    st.builds(PolicySelector, v4_prefix, v4_prefix, st.sampled_from([-1, 1, 6, 17]), ports, ports),
    st.builds(PolicySelector, v6_prefix, v6_prefix, st.sampled_from([-1, 58, 6, 17]), ports, ports))
mixed_packet = st.tuples(st.sampled_from([4, 6]), octet, octet, st.sampled_from(["tcp", "udp", "icmp"]),
                         st.sampled_from([0, 8, 53, 1500]), st.sampled_from([0, 8, 53, 1500]))


@functools.lru_cache(maxsize=None)
def _scapy_packet(version, a, b, kind, p1, p2):
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6Unknown, IPv6
    src, dst = (f"10.{a}.0.1", f"10.{b}.0.2") if version == 4 else (f"2001:db8:{a}::1", f"2001:db8:{b}::2")
    ip = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
    if kind == "icmp":
        p1, p2 = p1 % 256, p2 % 256
        l4 = ICMP(type=p1, code=p2) if version == 4 else ICMPv6Unknown(type=p1, code=p2)
        fields = (1 if version == 4 else 58, p1, p2)
    else:
        l4 = (TCP if kind == "tcp" else UDP)(sport=p1, dport=p2)
        fields = (6 if kind == "tcp" else 17, p1, p2)
    return bytes(ip / l4 / b"payload"), ipaddress.ip_address(src), ipaddress.ip_address(dst), fields


@settings(max_examples=100, deadline=None)
@given(st.lists(mixed_selector, min_size=5, max_size=60), st.lists(mixed_packet, min_size=1, max_size=30))
def test_compiled_lookup_matches_reference_for_both_families_ports_and_icmp(selectors, packets):
    """More rules than the classifier scans directly: every answer comes from the flow cache
    or the tuple-space lookup behind it, and must be the reference first match."""
    policies = [Policy(s, Action.PROTECT) for s in selectors]
    db = PolicyDatabase(policies)
    ordered = db.policies(Direction.OUT)
    c = Classifier(_rules(ordered))
    for _ in range(2):
        for spec in packets:
            pkt, src, dst, (proto, sport, dport) = _scapy_packet(*spec)
            ref = db.lookup(Direction.OUT, src, dst, proto, sport, dport)
            assert c.classify(pkt) == (ordered.index(ref) if ref else CLASS_NONE)


# -- the database's order and its bulk replace ------------------------------------------------

class _Reference:
    """The SPD's specified order, the slow way (the pre-issue-11 code): per direction a list,
    a stable sort by priority after every insert (equal priorities keep insertion order)."""

    def __init__(self):
        self.rows = {d: [] for d in Direction}

    def ids(self):
        return {p.id for d in Direction for p in self.rows[d]}

    def add(self, p):
        if p.id in self.ids():
            raise ConfigError("taken")
        self.rows[p.direction] = sorted([*self.rows[p.direction], p], key=lambda q: q.priority)

    def delete(self, i):
        for d in Direction:
            self.rows[d] = [q for q in self.rows[d] if q.id != i]


_ID = st.integers(1, 12)
_POLICY = st.builds(lambda i, prio, d: Policy(PolicySelector(), Action.BYPASS, d, prio, id=i),
                    _ID, st.sampled_from([0, 5, 1000]), st.sampled_from(list(Direction)))
_OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), _POLICY),
    st.tuples(st.just("delete"), _ID),
    st.tuples(st.just("replace"), st.lists(_ID, max_size=6), st.lists(_POLICY, max_size=6)),
    st.tuples(st.just("flush"))), max_size=30)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_database_order_equals_the_reference_one_insert_at_a_time(ops):
    db, ref = PolicyDatabase(), _Reference()
    for op in ops:
        before = {d: db.policies(d) for d in Direction}
        if op[0] == "add":
            if op[1].id in ref.ids():
                with pytest.raises(ConfigError, match=f"policy id {op[1].id} already exists"):
                    db.add(op[1])
            else:
                ref.add(op[1])
                db.add(op[1])
        elif op[0] == "delete":
            if op[1] in ref.ids():
                ref.delete(op[1])
                assert db.delete(op[1]).id == op[1]
            else:
                with pytest.raises(KeyError):
                    db.delete(op[1])
        elif op[0] == "replace":
            _, remove, add = op
            left = ref.ids() - set(remove)
            added = [p.id for p in add]
            if len(set(added)) != len(added) or left & set(added):
                with pytest.raises(ConfigError, match="already exists"):
                    db.replace(remove, add)
                assert {d: db.policies(d) for d in Direction} == before     # nothing changed
            else:
                gone = {p.id for p in db.replace(remove, add)}
                assert gone == ref.ids() & set(remove)
                for i in remove:                         # what replace() means: deletes, then adds
                    ref.delete(i)
                for p in add:
                    ref.add(p)
        else:
            db.flush()
            ref = _Reference()
        for d in Direction:
            assert db.policies(d) == tuple(ref.rows[d])
        assert list(db) == [p for d in Direction for p in ref.rows[d]] and len(db) == len(ref.ids())
        for i in range(1, 13):
            if i in ref.ids():
                assert db.get(i).id == i
            else:
                with pytest.raises(KeyError, match=f"no policy with id {i}"):
                    db.get(i)


def test_bulk_replace_is_one_publication_and_scales():
    # 50,000 policies in one replace: the old per-insert path (an id scan and a sort per
    # policy) needed minutes for this; one step publishes all of it at once
    db = PolicyDatabase([Policy(PolicySelector(), Action.DISCARD, priority=1, id=10**9)])
    gen = db.generation
    new = [Policy(PolicySelector(), Action.BYPASS, Direction(i % 2), priority=i % 3, id=10**9 + 1 + i)
           for i in range(50_000)]
    assert [p.id for p in db.replace([10**9], new)] == [10**9]
    assert db.generation == gen + 1 and len(db) == 50_000
    out = db.policies(Direction.OUT)
    assert [p.priority for p in out] == sorted(p.priority for p in out)
    with pytest.raises(KeyError):         # a hostile id (unhashable) is just not there
        db.get(["not", "hashable"])
