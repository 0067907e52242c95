"""The gateway tests' topology: five network namespaces, the impairment shim, and `ipsp gateway`
processes started and stopped per test. The diagram is at the top of test_gateway_netns.py and
in docs/gateway-tests.md.

Everything a test needs comes through two fixtures:

- ``topo`` (one per session): the namespaces, links, addresses and the shim. Skipped, with the
  reason, when the machine cannot run it (not root, no network namespaces, no /dev/net/tun).
  Namespaces are named ``ipspgw-<pid>-<role>``; namespaces of earlier runs whose process is gone
  are deleted first. Teardown always stops every process it started and deletes its namespaces.
- ``gateways`` (per test): a function ``gateways(outer, sa={...}, gateway={...})`` that writes
  gw1.toml and gw2.toml (extra keys for both [[sa]] entries or [gateway] tables), starts both
  gateways, waits for ``ipsp gateway: ready`` and returns the pair; the test's teardown stops
  them. A gateway that is not ready within READY_TIMEOUT seconds FAILS the
  test with its stderr (it does not skip).
"""

import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import fastpath
import ipsp
from nslib import delete_namespace, delete_stale, sh, unavailable, until

HERE = pathlib.Path(__file__).resolve().parent
SHIM = HERE / "shim.py"
TRAFFIC = HERE / "traffic.py"
# the subprocesses import ipsp and fastpath from wherever this process found them: src/ with
# an in-place build, site-packages when installed (as in .ci/run)
SRC = os.pathsep.join(dict.fromkeys(str(pathlib.Path(m.__file__).resolve().parents[1]) for m in (ipsp, fastpath)))
PREFIX = "ipspgw-"
ROLES = ("a", "gw1", "wan", "gw2", "b")
READY_TIMEOUT = float(os.environ.get("IPSP_GATEWAY_READY_TIMEOUT", "10"))

# addresses (the module docstring of test_gateway_netns.py draws them)
A, GW1_IN, GW1_OUT = "10.1.0.2", "10.1.0.1", "192.0.2.1"
B, GW2_IN, GW2_OUT = "10.2.0.2", "10.2.0.1", "192.0.2.2"
NET1, NET2 = "10.1.0.0/16", "10.2.0.0/16"
SPI_12, SPI_21 = 0x1001, 0x2001            # gw1 -> gw2, gw2 -> gw1
PROPOSAL = "aes128gcm16"
PATH_MTU = 1500
# the routed variant (Topology.wan_routed): wan routes between two outer subnets, the link
# toward gw2 with a smaller MTU
WAN1, WAN2, GW2_OUT_ROUTED, NARROW_MTU = "192.0.2.254", "198.51.100.254", "198.51.100.2", 1400




def _stop(proc: subprocess.Popen, timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time: one process, by its pid."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait()
    finally:
        for pipe in (proc.stdout, proc.stderr, getattr(proc, "log_file", None)):
            if pipe is not None:
                pipe.close()


def flatten(doc, prefix: str = "") -> dict:
    """{"a": {"b": 1}, "c": [2]} -> {"a.b": 1, "c.0": 2}"""
    out = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = doc
    return out


# -- the shim ---------------------------------------------------------------------------------

class Shim:
    """Control of shim.py running in the wan namespace (see its docstring)."""

    def __init__(self, topo: "Topology"):
        self.topo = topo
        self.config = topo.dir / "shim.json"
        self.stats_file = topo.dir / "shim-stats.json"
        self.log = topo.dir / "shim.log"
        self.proc = None
        self.generation = 0

    def start(self) -> None:
        self.config.write_text("{}")
        self.stats_file.unlink(missing_ok=True)
        self.proc = self.topo.popen("wan", sys.executable, SHIM, "--if1", "w1", "--if2", "w2", "--config",
                                    self.config, "--stats", self.stats_file, log=self.log)
        self.generation = 1
        until(lambda: self._read() is not None or self._dead(), 10, "the shim to start")
        self._dead()

    def _dead(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the shim exited ({self.proc.returncode}):\n{self.log.read_text()}")
        return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.stats_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def configure(self, **cfg) -> None:
        """Apply a configuration (keys of shim.DEFAULTS; the rest default) and zero the counters."""
        if self.proc is None:               # the wan is a kernel bridge for now (Topology.wan_bridge)
            assert not cfg, f"the shim is not running: cannot apply {cfg}"
            return
        self.config.write_text(json.dumps(cfg))
        self.generation += 1
        self.proc.send_signal(signal.SIGHUP)
        until(lambda: (self._read() or {}).get("generation") == self.generation or self._dead(), 10,
              f"the shim to apply {cfg}")

    def stats(self) -> dict:
        """The counters since the last configure() (in-flight frames given 0.3 s to arrive)."""
        time.sleep(0.3)
        before = (self._read() or {}).get("dump", -1)
        self.proc.send_signal(signal.SIGUSR1)
        return until(lambda: (d := self._read()) and d["dump"] > before and d or self._dead(), 10,
                     "the shim's counters")

    @staticmethod
    def count(stats: dict, kind: str, cls: str, direction: str | None = None) -> int:
        """kind: frames, dropped, duplicated, reordered; direction: "12", "21" or both."""
        dirs = [direction] if direction else ["12", "21"]
        return sum(stats["counts"][d][kind].get(cls, 0) for d in dirs)


# -- gateways ---------------------------------------------------------------------------------

def gateway_document(side: int, outer: str, keys: dict, socket_path: str, sa: dict, gateway: dict,
                     gw2_out: str = GW2_OUT, ike: dict | None = None) -> dict:
    """The configuration of gw1 (side 1) or gw2 (side 2) as a TOML-shaped dict: manually
    keyed SAs, or with *ike* (extra [[connection]] keys) IKEv2 with a PSK, gw1 initiating."""
    local, peer = (GW1_OUT, gw2_out) if side == 1 else (gw2_out, GW1_OUT)
    mine, theirs = (NET1, NET2) if side == 1 else (NET2, NET1)
    spi_out, spi_in = (SPI_12, SPI_21) if side == 1 else (SPI_21, SPI_12)

    def one_sa(direction, spi, src, dst):
        entry = {"direction": direction, "reqid": 1, "spi": spi, "src": src, "dst": dst, "proposal": PROPOSAL,
                 "enc_key": "0x" + keys[spi].hex()}
        if outer == "udp":
            entry["encap"] = "udp"
        return {**entry, **sa}

    doc = {
        "gateway": {"tun": "ipsp0", "address": GW1_IN if side == 1 else GW2_IN, "routes": [theirs],
                    "tun_mtu": 1500, "outer": outer, "local": local, "udp_port": 4500, "path_mtu": PATH_MTU,
                    "batch": 256, "keepalive": 20 if outer == "udp" else 0, **gateway},
        "engine": {"control_socket": socket_path},
    }
    if ike is not None:
        other = 2 if side == 1 else 1
        return {**doc, "ike": {"local_id": f"fqdn:gw{side}.ipsp.test"},
                "peer": [{"name": f"gw{other}", "id": f"fqdn:gw{other}.ipsp.test", "auth": "psk",
                          "psk": "0x" + keys[SPI_12].hex()}],
                "connection": [{"name": "tunnel", "peer": f"gw{other}", "remote": peer, "local_ts": [mine],
                                "remote_ts": [theirs], "start": "start" if side == 1 else "none",
                                "encap": outer == "udp", "esp_proposals": [PROPOSAL], **ike}]}
    return {
        **doc,
        "policy": [{"direction": "out", "action": "protect", "src": mine, "dst": theirs, "reqid": 1},
                   {"direction": "in", "action": "protect", "src": theirs, "dst": mine, "reqid": 1}],
        "sa": [one_sa("out", spi_out, local, peer), one_sa("in", spi_in, peer, local)],
    }


def redact(toml_text: str) -> str:
    return re.sub(r'(enc_key = )"0x[0-9a-f]+"', r'\1"0x(redacted)"', toml_text)


def to_toml(doc: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    out = []
    for key, table in doc.items():
        for entry in table if isinstance(table, list) else [table]:
            out.append(f"[[{key}]]" if isinstance(table, list) else f"[{key}]")
            out += [f"{k} = {value(v)}" for k, v in entry.items()]
            out.append("")
    return "\n".join(out)


class Gateway:
    """One `ipsp gateway` process in its namespace."""

    def __init__(self, topo: "Topology", name: str, doc: dict):
        self.topo, self.name, self.doc = topo, name, doc
        self.config = topo.dir / f"{name}.toml"
        self.log = topo.dir / f"{name}.log"
        self.socket = pathlib.Path(doc["engine"]["control_socket"])
        self.config.write_text(to_toml(doc))
        self.proc = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.proc = self.topo.popen(self.name, sys.executable, "-m", "ipsp", "gateway", "--config", self.config,
                                    log=self.log)

    def ready(self) -> bool:
        return "ipsp gateway: ready" in self.log.read_text(errors="replace")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        rc = _stop(self.proc, timeout)
        self.topo.forget(self.proc)
        return rc

    # -- counters, through `ipsp stats --socket PATH --json`
    def stats(self) -> dict:
        r = sh(sys.executable, "-m", "ipsp", "stats", "--socket", self.socket, "--json", check=False,
               env={**os.environ, "PYTHONPATH": SRC})
        assert r.returncode == 0, f"ipsp stats on {self.name}: {r.stderr}\n{self.name}'s stderr:\n{self.stderr()}"
        return json.loads(r.stdout)

    def ipsp(self, *args) -> subprocess.CompletedProcess:
        """`ipsp ARGS --socket` against this gateway (the control commands)."""
        r = sh(sys.executable, "-m", "ipsp", *args, "--socket", self.socket, check=False,
               env={**os.environ, "PYTHONPATH": SRC})
        assert r.returncode == 0, f"ipsp {' '.join(args)} on {self.name}: {r.stderr}\n{self.stderr()[-3000:]}"
        return r

    def ike_status(self) -> dict:
        return json.loads(self.ipsp("ike", "status", "--json").stdout)

    def total(self, direction: str, name: str, stats: dict | None = None) -> int:
        """An engine total: direction "in"/"out", name "packets", "REPLAY", "TOO_OLD", ..."""
        stats = stats or self.stats()
        return stats["totals"].get(direction, {}).get(name, 0)

    def gateway_section(self, stats: dict | None = None) -> dict:
        stats = stats or self.stats()
        assert "gateway" in stats, f"no 'gateway' section in {self.name}'s stats: {json.dumps(stats)[:2000]}"
        return stats["gateway"]

    def gateway_matching(self, pattern: str, stats: dict | None = None) -> dict:
        """The numeric entries of the gateway section whose flattened key ("a.b.c") matches the
        regular expression (case-insensitive). The tests name no exact key: "icmp" finds the
        ICMP errors sent, "frag" the fragments made, "syscall" the system call counts."""
        section = self.gateway_section(stats)
        return {k: v for k, v in flatten(section).items()
                if re.search(pattern, k, re.I) and isinstance(v, (int, float)) and not isinstance(v, bool)}

    def gateway_sum(self, pattern: str, stats: dict | None = None) -> int:
        stats = stats or self.stats()
        found = self.gateway_matching(pattern, stats)
        assert found, f"no counter matching /{pattern}/ in {self.name}'s gateway stats: {json.dumps(stats['gateway'])}"
        return sum(found.values())

    def sa_state(self, direction: str = "out"):
        """fastpath.SAState of one of its SAs (the engine part of its configuration, loaded by
        ipsp.config: [gateway] and the gateway-only SA keys left out)."""
        from ipsp.config import config_from_document
        doc = {k: v for k, v in self.doc.items() if k != "gateway"}
        doc["sa"] = [{k: v for k, v in sa.items() if k != "fragment"} for sa in doc["sa"]]
        cfg = config_from_document(doc, path=str(self.config))
        return next(m.config for m in cfg.sas if m.direction == direction).make_state()


class GatewayPair:
    def __init__(self, topo: "Topology", outer: str, sa: dict, gateway: dict, ike: dict | None = None):
        self.topo, self.outer = topo, outer
        keys = {spi: secrets.token_bytes(20) for spi in (SPI_12, SPI_21)}     # AES-128 key + 4-byte salt
        self.gw1 = Gateway(topo, "gw1", gateway_document(1, outer, keys, str(topo.dir / "gw1.sock"), sa, gateway,
                                                         topo.gw2_out, ike))
        self.gw2 = Gateway(topo, "gw2", gateway_document(2, outer, keys, str(topo.dir / "gw2.sock"), sa, gateway,
                                                         topo.gw2_out, ike))
        self.esp_class = "esp_udp" if outer == "udp" else "esp"    # the shim's name for their packets

    def start(self) -> "GatewayPair":
        for gw in (self.gw1, self.gw2):
            gw.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not (self.gw1.ready() and self.gw2.ready()):
            dead = [gw for gw in (self.gw1, self.gw2) if not gw.alive() and not gw.ready()]
            if dead or time.monotonic() > deadline:
                report = "\n".join(
                    f"--- {gw.name} ({'exited ' + str(gw.proc.returncode) if not gw.alive() else 'running'}, "
                    f"{'ready' if gw.ready() else 'not ready'}): {' '.join(gw.proc.args)}\n{gw.stderr()}"
                    for gw in (self.gw1, self.gw2))
                self.stop()
                what = "exited before it was ready" if dead else f"was not ready within {READY_TIMEOUT:g} s"
                pytest.fail(f"`ipsp gateway` (outer {self.outer}) {what} (it must print 'ipsp gateway: ready' "
                            f"on stderr):\n{report}\n--- gw1.toml:\n"
                            f"{redact(self.gw1.config.read_text())}", pytrace=False)
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        for gw in (self.gw1, self.gw2):
            gw.stop()

    def wait_ike(self, children: int = 1, timeout: float = 10) -> tuple[dict, dict]:
        """Until both gateways' IKE daemons have *children* installed Child SAs; their
        `ipsp ike status --json`."""
        deadline = time.monotonic() + timeout
        while True:
            status = tuple(gw.ike_status() for gw in (self.gw1, self.gw2))
            counts = [sum(c["state"] == "installed" for sa in st["ike_sas"] if sa["state"] == "established"
                          for c in sa["children"]) for st in status]
            if counts == [children, children]:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"IKE did not settle on {children} Child SAs per side: {json.dumps(status)}\n"
                                     f"gw1:\n{self.gw1.stderr()[-3000:]}\ngw2:\n{self.gw2.stderr()[-3000:]}")
            time.sleep(0.05)

    def mtu_range(self, path_mtu: int = PATH_MTU) -> tuple[int, int]:
        """What a DF-set packet's "frag needed" may announce: the largest inner packet that
        fits the path MTU once encapsulated (exact), down to the path MTU less the worst-case
        overhead (the most padding)."""
        state = self.gw1.sa_state("out")
        exact = max(n for n in range(path_mtu - 200, path_mtu + 1) if n + state.overhead(n) <= path_mtu)
        worst = path_mtu - max(state.overhead(n) for n in range(path_mtu - 64, path_mtu + 1))
        return worst, exact


# -- the topology -----------------------------------------------------------------------------

class Topology:
    def __init__(self, d: pathlib.Path):
        self.dir = d
        self.pid = os.getpid()
        self.ns = {role: f"{PREFIX}{self.pid}-{role}" for role in ROLES}
        self.procs: list[subprocess.Popen] = []
        self.shim = Shim(self)
        self.gw2_out = GW2_OUT          # GW2_OUT_ROUTED while wan_routed(True)

    # running things inside
    def run(self, role: str, *cmd, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns[role], *cmd, check=check, timeout=timeout,
                  env={**os.environ, "PYTHONPATH": SRC})

    def ip(self, role: str, *args, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.ns[role], *args, check=check)

    def popen(self, role: str, *cmd, log: pathlib.Path | None = None, **kw) -> subprocess.Popen:
        """A long-running process in a namespace (`ip netns exec` execs it: its pid is the
        process's own, so signals reach it). Output to *log*, or pipes."""
        if log is not None:
            kw.update(stdout=open(log, "w"), stderr=subprocess.STDOUT)
        else:
            kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[role], *map(str, cmd)],
                                env={**os.environ, "PYTHONPATH": SRC}, **kw)
        proc.log_file = kw["stdout"] if log is not None else None
        self.procs.append(proc)
        return proc

    def forget(self, proc: subprocess.Popen) -> None:
        if proc in self.procs:
            self.procs.remove(proc)

    def build(self) -> None:
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
        links = [("a", "a0", "gw1", "g1i"), ("gw1", "g1o", "wan", "w1"),
                 ("wan", "w2", "gw2", "g2o"), ("gw2", "g2i", "b", "b0")]
        for r1, if1, r2, if2 in links:
            sh("ip", "link", "add", if1, "netns", self.ns[r1], "type", "veth", "peer", "name", if2,
               "netns", self.ns[r2])
        addrs = {("a", "a0"): f"{A}/24", ("gw1", "g1i"): f"{GW1_IN}/24", ("gw1", "g1o"): f"{GW1_OUT}/24",
                 ("gw2", "g2o"): f"{GW2_OUT}/24", ("gw2", "g2i"): f"{GW2_IN}/24", ("b", "b0"): f"{B}/24"}
        for role in ROLES:
            # IPv6 off everywhere: no router solicitations or MLD reports on the outer link
            knobs = ["ipv6/conf/all/disable_ipv6", "ipv6/conf/default/disable_ipv6"]
            knobs += ["ipv4/ip_forward"] if role.startswith("gw") else []
            self.run(role, "sh", "-c", "; ".join(f"echo 1 > /proc/sys/net/{k}" for k in knobs))
            self.ip(role, "link", "set", "lo", "up")
        for (role, dev), addr in addrs.items():
            self.ip(role, "addr", "add", addr, "dev", dev)
        for role, dev in [("a", "a0"), ("gw1", "g1i"), ("gw1", "g1o"), ("wan", "w1"), ("wan", "w2"),
                          ("gw2", "g2o"), ("gw2", "g2i"), ("b", "b0")]:
            self.ip(role, "link", "set", dev, "up", *(["promisc", "on"] if role == "wan" else []))
        # the outer link is a wire of MTU-sized frames: what the gateways (or the kernel, when
        # forwarding) hand to g1o/g2o is segmented there, never passed on as one GSO super-frame,
        # so the shim's per-frame decisions are per packet
        for role, dev in (("gw1", "g1o"), ("gw2", "g2o")):
            self.ip(role, "link", "set", dev, "gso_max_segs", 1)
        self.ip("a", "route", "add", "default", "via", GW1_IN)
        self.ip("b", "route", "add", "default", "via", GW2_IN)
        self.shim.start()

    def teardown(self) -> None:
        for proc in reversed(self.procs):
            try:
                _stop(proc, 5)
            except Exception:  # pragma: no cover - keep cleaning up
                pass
        self.procs.clear()
        for name in self.ns.values():
            delete_namespace(name)

    # helpers for tests
    def flush_route_caches(self) -> None:
        """Forget learnt path MTUs (a "frag needed" seen by an earlier test)."""
        for role in ("a", "gw1", "gw2", "b"):
            self.ip(role, "route", "flush", "cache")

    def plain_routes(self, on: bool) -> None:
        """Plain kernel forwarding between the inner networks, no ipsp (the gateways stopped)."""
        verb = "replace" if on else "del"
        self.ip("gw1", "route", verb, NET2, "via", GW2_OUT, check=on)
        self.ip("gw2", "route", verb, NET1, "via", GW1_OUT, check=on)

    def wan_bridge(self, on: bool) -> None:
        """Replace the shim by a kernel bridge in the wan namespace (for throughput figures
        the shim, a Python loop, should not be the bottleneck), or put the shim back."""
        if on:
            self.shim.stop()
            self.ip("wan", "link", "add", "br0", "type", "bridge")
            for dev in ("w1", "w2"):
                self.ip("wan", "link", "set", dev, "master", "br0")
            self.ip("wan", "link", "set", "br0", "up")
        else:
            self.ip("wan", "link", "del", "br0", check=False)
            self.shim.start()

    def wan_routed(self, on: bool) -> None:
        """The routed variant: the shim stops and the wan namespace routes between
        192.0.2.0/24 (w1, toward gw1) and 198.51.100.0/24 (w2, toward gw2, MTU 1400); gw2's
        outer address becomes 198.51.100.2. A DF-set packet above 1400 bytes toward gw2 gets
        an ICMP "fragmentation needed" (mtu 1400) from 192.0.2.254. Off: back to the bridge."""
        if on:
            self.shim.stop()
            self.ip("wan", "addr", "add", f"{WAN1}/24", "dev", "w1")
            self.ip("wan", "addr", "add", f"{WAN2}/24", "dev", "w2")
            self.ip("wan", "link", "set", "w2", "mtu", NARROW_MTU)
            self.run("wan", "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
            self.ip("gw2", "addr", "del", f"{GW2_OUT}/24", "dev", "g2o")
            self.ip("gw2", "link", "set", "g2o", "mtu", NARROW_MTU)
            self.ip("gw2", "addr", "add", f"{GW2_OUT_ROUTED}/24", "dev", "g2o")
            self.ip("gw2", "route", "add", "192.0.2.0/24", "via", WAN2)
            self.ip("gw1", "route", "add", "198.51.100.0/24", "via", WAN1)
            self.gw2_out = GW2_OUT_ROUTED
        else:
            self.ip("gw1", "route", "del", "198.51.100.0/24", check=False)
            self.ip("gw2", "route", "del", "192.0.2.0/24", check=False)
            self.ip("gw2", "addr", "del", f"{GW2_OUT_ROUTED}/24", "dev", "g2o", check=False)
            self.ip("gw2", "link", "set", "g2o", "mtu", 1500)
            self.ip("gw2", "addr", "add", f"{GW2_OUT}/24", "dev", "g2o", check=False)
            self.run("wan", "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
            self.ip("wan", "link", "set", "w2", "mtu", 1500)
            self.ip("wan", "addr", "flush", "dev", "w1")
            self.ip("wan", "addr", "flush", "dev", "w2")
            self.gw2_out = GW2_OUT
            self.shim.start()
        self.flush_route_caches()

    def ping(self, role: str, dst: str, *opts, count: int = 3, check: bool = True) -> subprocess.CompletedProcess:
        interval = [] if "-i" in map(str, opts) else ["-i", 0.2]
        r = self.run(role, "ping", "-n", "-c", count, "-W", 2, *interval, *opts, dst, check=False, timeout=60)
        if check:
            assert r.returncode == 0, f"ping from {role} to {dst} failed:\n{r.stdout}{r.stderr}"
        return r

    def server(self, role: str, *cmd) -> subprocess.Popen:
        """A traffic.py server; returns once it printed "ready"."""
        proc = self.popen(role, sys.executable, TRAFFIC, *cmd)
        line = proc.stdout.readline()         # "" if it died first
        if line.strip() != "ready":
            try:
                err = proc.communicate(timeout=5)[1]
            except subprocess.TimeoutExpired:
                err = ""
            _stop(proc, 5)
            self.forget(proc)
            raise AssertionError(f"traffic.py {' '.join(map(str, cmd))} in {role} did not start: {line}{err}")
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 60) -> dict:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            out, err = proc.communicate()
            raise AssertionError(f"{proc.args} did not finish within {timeout} s: {err}")
        finally:
            self.forget(proc)
        assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}: {err}"
        return json.loads(out.strip().splitlines()[-1])

    def tcp_transfer(self, src: str, dst: str, dst_addr: str, nbytes: int, seed: int, timeout: float = 60) -> dict:
        """nbytes from namespace src to dst over TCP; asserts they arrived intact."""
        server = self.server(dst, "tcp-serve", 5001)
        sent = self.run(src, sys.executable, TRAFFIC, "tcp-send", dst_addr, 5001, nbytes, seed, timeout=timeout)
        received = self.finish(server, timeout)
        sent = json.loads(sent.stdout)
        assert received == sent, f"TCP {src} -> {dst}: sent {sent}, received {received}"
        return received

    def udp_stream(self, src: str, dst: str, dst_addr: str, count: int, pps: int, port: int = 6001) -> dict:
        """count numbered datagrams from src to dst: what the receiver counted."""
        server = self.server(dst, "udp-recv", port, 1.5)
        self.run(src, sys.executable, TRAFFIC, "udp-send", dst_addr, port, count, pps, timeout=60)
        return self.finish(server)

    def iperf3(self, src: str, dst: str, dst_addr: str, *args, port: int = 5201) -> dict:
        """One iperf3 run (server in dst, client in src) with --json; the client's result."""
        if shutil.which("iperf3") is None:
            pytest.fail("iperf3 is not installed (apt-get install iperf3; .ci/run installs it)", pytrace=False)
        server = self.popen(dst, "iperf3", "-s", "-1", "-p", port, log=self.dir / "iperf3-server.log")
        try:
            deadline = time.monotonic() + 10
            while True:          # until the server listens
                r = self.run(src, "iperf3", "-c", dst_addr, "-p", port, "--json", *args, check=False, timeout=60)
                if "unable to connect" not in r.stdout or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            what = f"iperf3 -c {dst_addr} {' '.join(map(str, args))}"
            assert r.returncode == 0, f"{what}: {r.stdout[-2000:]}{r.stderr}"
            res = json.loads(r.stdout)
            assert "error" not in res, f"{what}: {res['error']}"
            return res
        finally:
            _stop(server, 5)
            self.forget(server)


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def topo():
    reason = unavailable(PREFIX)
    if reason:
        pytest.skip(reason)
    delete_stale(PREFIX)
    # short (Unix socket paths must fit in 108 bytes), and named after this process
    d = pathlib.Path(tempfile.mkdtemp(dir="/tmp", prefix=f"{PREFIX}{os.getpid()}-"))
    t = Topology(d)
    try:
        t.build()
        yield t
    finally:
        t.teardown()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def gateways(topo):
    """gateways(outer, sa={...}, gateway={...}, ike=None) -> a started GatewayPair. Extra keys go
    into both gateways' [[sa]] entries (replay_window, fragment, ...) or [gateway] tables; with
    ike={...} (extra [[connection]] keys) the pair keys its tunnel with IKEv2 instead. The shim
    is set to pass everything (counters zeroed) and learnt path MTUs are forgotten."""
    started = []

    def start(outer: str, sa: dict | None = None, gateway: dict | None = None, ike: dict | None = None
              ) -> GatewayPair:
        topo.shim.configure()
        topo.flush_route_caches()
        pair = GatewayPair(topo, outer, sa or {}, gateway or {}, ike)
        started.append(pair)
        return pair.start()

    try:
        yield start
    finally:
        for pair in started:
            pair.stop()
        if started:
            for gw in (started[-1].gw1, started[-1].gw2):
                print(f"--- {gw.name} stderr:\n{gw.stderr()[-3000:]}")


@pytest.fixture
def routed_wan(topo):
    """The routed variant of the topology for one test (Topology.wan_routed); request it
    before ``gateways``, so the gateways stop before the topology goes back."""
    topo.wan_routed(True)
    try:
        yield topo
    finally:
        topo.wan_routed(False)


@pytest.fixture(params=["udp", "esp"])
def outer(request) -> str:
    """The outer encapsulation: ESP-in-UDP on port 4500, or raw IP protocol 50."""
    return request.param
