"""The engine against the bare kernel, and SPD lookup cost against the number of policies.

- engine path (policy lookup, grouping by SA, kernel, inner-selector check, status handling)
  versus the kernel's own batch call on the same arena, aes128gcm16, 64 B, batches of 256;
- the outbound SPD classifier alone at 10 and 1000 policies, for flows that fit the flow
  cache (64 and 4096 active flows) and for more flows than it holds (65536: every lookup a
  miss that scans the table).
"""

import ipaddress
import os
from array import array

import pytest

from fastpath import Status
from fastpath.classify import Classifier
from ipsp import SAConfig, gen, parse_proposal
from ipsp.engine import Engine, selector_rule
from ipsp.spd import Action, Direction, PolicySelector

from conftest import BACKENDS, Arena

N = ipaddress.ip_network
ROUNDS = 300


def _config(backend):
    t = parse_proposal("aes128gcm16")
    return SAConfig(spi=0x5005, src=ipaddress.ip_address("192.0.2.1"), dst=ipaddress.ip_address("192.0.2.2"),
                    transform=t, enc_key=os.urandom(t.enc_key_len), backend=backend)


def _filler(i):
    # policies the benchmark traffic (10.1/16 -> 10.2/16) never matches
    return PolicySelector(N(f"198.51.{i // 256 % 256}.{i % 256}/32"), N("203.0.113.0/24"))


def _engines(cfg, policies):
    """gw1 (outbound SA) and gw2 (inbound SA) with `policies` policies each, the one that
    matches the traffic last."""
    gw1, gw2 = Engine(), Engine()
    with gw1.changes(), gw2.changes():
        for i in range(policies - 1):
            gw1.km.add_policy(_filler(i), Action.DISCARD)
            gw2.km.add_policy(_filler(i), Action.DISCARD, Direction.IN)
        gw1.km.add_policy(PolicySelector(N("10.0.0.0/8"), N("10.0.0.0/8")), Action.PROTECT, reqid=1)
        gw2.km.add_policy(PolicySelector(N("10.0.0.0/8"), N("10.0.0.0/8")), Action.PROTECT, Direction.IN, reqid=1)
        gw1.km.add_sa(cfg, "out", reqid=1)
        gw2.km.add_sa(cfg, "in", reqid=1)
    return gw1, gw2


def _info(benchmark, arena, backend, direction, path, policies):
    benchmark.group = f"engine {direction} aes128gcm16 64B batch256 {backend}"
    benchmark.extra_info.update(packets=arena.n, bytes=arena.n * arena.size, proposal="aes128gcm16",
                                backend=backend, size=arena.size, direction=direction, path=path,
                                policies=policies)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path,policies", [("kernel", 0), ("engine", 1), ("engine", 10), ("engine", 1000)],
                         ids=["kernel", "engine-1policy", "engine-10policies", "engine-1000policies"])
def test_outbound(benchmark, backend, path, policies):
    cfg = _config(backend)
    if path == "kernel":
        sa = cfg.make_state()
        arena = Arena(64, 256, sa)
        call = lambda: sa.encap_batch(arena.buf, arena.off, arena.lens, arena.status, arena.stride)  # noqa: E731
    else:
        gw1, _ = _engines(cfg, policies)
        arena = Arena(64, 256, cfg.make_state())
        call = lambda: gw1.outbound(arena.buf, arena.off, arena.lens, arena.status, arena.stride)  # noqa: E731
    _info(benchmark, arena, backend, "outbound", path, policies)
    ok = benchmark.pedantic(call, setup=lambda: arena.reset(arena.plain, arena.off0, arena.len0),
                            rounds=ROUNDS, warmup_rounds=10)
    assert ok == 256


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path,policies", [("kernel", 0), ("engine", 1), ("engine", 10), ("engine", 1000)],
                         ids=["kernel", "engine-1policy", "engine-10policies", "engine-1000policies"])
def test_inbound(benchmark, backend, path, policies):
    cfg = _config(backend)
    tx = cfg.make_state()
    arena = Arena(64, 256, tx)
    if path == "kernel":
        rx = cfg.make_state()
        call = lambda: rx.decap_batch(arena.buf, arena.off, arena.lens, arena.status)  # noqa: E731
    else:
        _, gw2 = _engines(cfg, policies)
        call = lambda: gw2.inbound(arena.buf, arena.off, arena.lens, arena.status)  # noqa: E731
    _info(benchmark, arena, backend, "inbound", path, policies)

    def setup():
        # freshly sealed packets every round: never a replay rejection
        arena.reset(*arena.esp_image(tx))

    ok = benchmark.pedantic(call, setup=setup, rounds=ROUNDS, warmup_rounds=10)
    assert ok == 256 and set(arena.status) == {Status.OK}
    assert bytes(arena.buf[arena.off[0]:arena.off[0] + arena.lens[0]]) == arena.packet


@pytest.mark.parametrize("flows", [64, 4096, 65536])
@pytest.mark.parametrize("policies", [10, 1000])
def test_spd_lookup(benchmark, policies, flows):
    rules = [selector_rule(_filler(i)) for i in range(policies - 1)]
    rules.append(selector_rule(PolicySelector(N("10.0.0.0/8"), N("10.0.0.0/8"))))
    c = Classifier(rules)
    pool = gen.fixed_packets(64, max(flows, 256), flows=flows)
    stride = 64
    buf = bytearray(b"".join(p.ljust(stride, b"\0") for p in pool))
    lengths = array("I", [64] * 256)
    out = array("i", [0] * 256)
    starts = iter(range(0, 1 << 62, 256))
    offsets = array("q", [0] * 256)

    def setup():
        # the next 256 packets of the pool: with more flows than the cache, lookups miss
        base = next(starts) % len(pool)
        offsets[:] = array("q", [((base + i) % len(pool)) * stride for i in range(256)])

    benchmark.group = f"spd lookup {flows} flows"
    benchmark.extra_info.update(packets=256, bytes=256 * 64, policies=policies, flows=flows, stage="spd")
    benchmark.pedantic(c.classify_batch, args=(buf, offsets, lengths, out), setup=setup, rounds=ROUNDS,
                       warmup_rounds=20)
    assert set(out) == {policies - 1}
