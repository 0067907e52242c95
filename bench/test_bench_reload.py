"""Configuration reloads with many policies (issue 11 item 5).

- ``apply``: ``Engine.apply_config`` of a loaded configuration of N policies replacing another
  of N (every policy changes: the worst case), SAD/SPD swap and the packet path's table
  compile included;
- ``reload``: ``ControlServer.reload`` of the file: TOML parse, validation, apply (what SIGHUP
  and ``ipsp reload`` do);
- ``build`` (a floor): only constructing the N Policy objects such a file holds, which any
  reload must do;
- ``per-insert`` (the old path, at a smaller N): the pre-issue-11 SPD update, an id scan and a
  re-sort per insert, reproduced here as the baseline it was; quadratic, so it runs at 4,000.

``python bench/report.py`` does not know these; read them from pytest-benchmark's table, or
``--benchmark-json``. Rounds are few: one ``reload`` of 100,000 policies takes seconds.
"""

import ipaddress

import pytest

from ipsp.config import load_config
from ipsp.control import ControlServer
from ipsp.engine import Engine
from ipsp.errors import ConfigError
from ipsp.spd import Action, Direction, Policy, PolicySelector

N = 100_000
OLD_N = 4_000


def toml(n: int, dst: str) -> str:
    return "".join(f'[[policy]]\naction = "bypass"\nsrc = "10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"\n'
                   f'dst = "{dst}"\npriority = {100 + i % 3}\n\n' for i in range(n))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("reload")
    paths = [d / "a.toml", d / "b.toml"]
    paths[0].write_text(toml(N, "192.0.2.0/24"))
    paths[1].write_text(toml(N, "198.51.100.0/24"))
    return paths


def test_apply_100k_policies(benchmark, files):
    configs = [load_config(p) for p in files]
    engine = Engine()
    engine.apply_config(configs[0])
    turn = iter(range(10**9))

    def apply():
        engine.apply_config(configs[(next(turn) + 1) % 2])

    benchmark.extra_info.update(stage="reload", case="apply", policies=N)
    try:
        benchmark.pedantic(apply, rounds=4, iterations=1)
        assert len(engine.policy_list()) == N
    finally:
        engine.close()


def test_reload_100k_policies_from_the_file(benchmark, files, tmp_path):
    engine = Engine()
    server = ControlServer(engine, tmp_path / "s.sock", config_path=files[0])
    turn = iter(range(10**9))

    def reload():
        assert server.reload(str(files[next(turn) % 2]))["policies"] == N

    benchmark.extra_info.update(stage="reload", case="reload", policies=N)
    try:
        benchmark.pedantic(reload, rounds=2, iterations=1)
    finally:
        engine.close()


def test_build_100k_policy_objects_floor(benchmark):
    dst = ipaddress.ip_network("192.0.2.0/24")

    def build():
        return [Policy(PolicySelector(ipaddress.ip_network(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"), dst),
                       Action.BYPASS, priority=100 + i % 3) for i in range(N)]

    benchmark.extra_info.update(stage="reload", case="build", policies=N)
    assert len(benchmark.pedantic(build, rounds=3, iterations=1)) == N


class _PerInsertSPD:
    """The SPD update before issue 11: every insert scans all ids, then re-sorts its direction."""

    def __init__(self):
        self.by_dir = {Direction.OUT: (), Direction.IN: ()}

    def add(self, policy):
        if any(p.id == policy.id for d in Direction for p in self.by_dir[d]):
            raise ConfigError(f"policy id {policy.id} already exists")
        rows = [*self.by_dir[policy.direction], policy]
        rows.sort(key=lambda p: p.priority)
        self.by_dir[policy.direction] = tuple(rows)

    def delete(self, policy_id):
        for d in Direction:
            self.by_dir[d] = tuple(p for p in self.by_dir[d] if p.id != policy_id)


def test_per_insert_spd_4k_policies_old_path(benchmark):
    dst = ipaddress.ip_network("192.0.2.0/24")
    old = [Policy(PolicySelector(ipaddress.ip_network(f"10.0.{i >> 8 & 255}.{i & 255}/32"), dst), Action.BYPASS,
                  priority=100 + i % 3) for i in range(OLD_N)]
    new = [Policy(p.selector, p.action, priority=p.priority) for p in old]

    def per_insert():
        spd = _PerInsertSPD()
        for p in old:
            spd.add(p)
        for p in old:                 # a reload: the old file's policies out, the new one's in
            spd.delete(p.id)
        for p in new:
            spd.add(p)
        return spd

    benchmark.extra_info.update(stage="reload", case="per-insert", policies=OLD_N)
    assert len(benchmark.pedantic(per_insert, rounds=1, iterations=1).by_dir[Direction.OUT]) == OLD_N
