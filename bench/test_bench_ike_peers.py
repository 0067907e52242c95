"""IKEv2 responder throughput: full IKE_SA_INIT + IKE_AUTH handshakes per second (PSK,
aes128gcm16-prfsha256-x25519 for IKE, aes128gcm16 for the Child SA) answered by strongSwan's
charon (kernel-libipsec) and by ``ipsp gateway``, each in turn in the same namespace, driven by
the same initiator: our sans-IO :class:`ipsp.ike.ikesa.Ike` in this process, its sockets
inside namespace ``bp-init`` (the pump of tests/ike/test_keys_strongswan.py).

    bench process (Ike)  192.0.2.1 to-bp-resp === 192.0.2.2 to-bp-init  charon | ipsp gateway

The initiator has N connections (``peer0..``), each its own IKE SA and Child SA with its own
reqid and /32 selector pair 10.50.x.y/32 === 10.60.x.y/32, each in an Ike of its own (see
Initiator); at most WINDOW are in flight at once. A round is timed from the first
IKE_SA_INIT to the N-th Child SA installed on our side (the IKE_AUTH response processed: the
responder has done all of its work). The responder is started afresh before every round
(untimed) and holds one connection 10.60.0.0/16 === 10.50.0.0/16, narrowed to each /32, and
keeps every IKE SA (charon: ``unique = never``; our initiator sends no INITIAL_CONTACT).

Both responders: cookies and charon's per-peer limits are out of the way (cookie_threshold,
cookie_threshold_ip, block_threshold far above WINDOW); charon logs at level 0 in every group
(the harness's default is ike/chd 4, which writes keys); the gateway logs at its fixed INFO
level (a line per IKE SA and per Child SA) on stderr to a file. charon's kernel-libipsec
routes every Child SA's outbound policy into its TUN with a source address from the local
selector, so the responder namespace holds all N 10.60.x.y addresses; the gateway routes
10.50.0.0/16 into its TUN once at start. Recorded per round besides the rate: the initiator's
and the responder's CPU seconds per handshake (the responder's from /proc, 10 ms ticks), and
after the last round what the responder holds.

    PYTHONPATH=src:bench python -m pytest -q -p no:cacheprovider bench/test_bench_ike_peers.py \
        --benchmark-only --benchmark-json /tmp/peers.json && python bench/report.py /tmp/peers.json

IKE_PEERS_N (200), IKE_PEERS_WINDOW (16) and IKE_PEERS_ROUNDS (3) override the defaults.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if "strongswan" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("strongswan", ROOT / "tests" / "ike" / "strongswan.py")
    sys.modules["strongswan"] = _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
ss = sys.modules["strongswan"]

from ipsp.ike.config import IkeSettings, connection  # noqa: E402
from ipsp.ike.ikesa import Ike  # noqa: E402
from ipsp.keymgr import KeyManagerAPI  # noqa: E402
from ipsp.pad import Identity, Peer, PeerAuthorizationDatabase  # noqa: E402

N = int(os.environ.get("IKE_PEERS_N", "200"))
WINDOW = int(os.environ.get("IKE_PEERS_WINDOW", "16"))
ROUNDS = int(os.environ.get("IKE_PEERS_ROUNDS", "3"))
INIT, RESP = "192.0.2.1", "192.0.2.2"
PSK = "ipsp-bench-peers-psk-0123456789abcdef"
IKE_PROPOSAL, ESP_PROPOSAL = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
HZ = os.sysconf("SC_CLK_TCK")

CHARON_EXTRA = """\
charon {
    cookie_threshold = 100000
    cookie_threshold_ip = 100000
    block_threshold = 100000
    filelog {
        main {
            default = 0
            ike = 0
            chd = 0
            knl = 0
            cfg = 0
            net = 0
            enc = 0
        }
    }
}
"""

SWANCTL = ss.swanctl_conf(local_addrs=RESP, remote_addrs=INIT, proposals=IKE_PROPOSAL,
                          local="auth = psk\nid = @resp.ipsp.test", remote="auth = psk\nid = @init.ipsp.test",
                          local_ts="10.60.0.0/16", remote_ts="10.50.0.0/16", esp=ESP_PROPOSAL, connection="peers",
                          conn_options="unique = never\nrekey_time = 0", child_options="rekey_time = 0",
                          secrets=ss.psk_secret(PSK, "@resp.ipsp.test", "@init.ipsp.test", name="ike-peers"))


def gateway_toml(ctl: Path) -> str:
    """One [[connection]] for 10.60.0.0/16 === 10.50.0.0/16, as charon's."""
    return f"""\
[gateway]
tun = "ipsp0"
address = "10.60.0.1"
local = "{RESP}"
routes = ["10.50.0.0/16"]

[engine]
control_socket = "{ctl}"

[ike]
local_id = "fqdn:resp.ipsp.test"
cookie_threshold = 100000

[[peer]]
name = "init"
id = "fqdn:init.ipsp.test"
auth = "psk"
psk = "0x{PSK.encode().hex()}"

[[connection]]
name = "peers"
peer = "init"
local_ts = ["10.60.0.0/16"]
remote_ts = ["10.50.0.0/16"]
ike_proposals = ["{IKE_PROPOSAL}"]
esp_proposals = ["{ESP_PROPOSAL}"]
start = "none"
dpd = 0
"""


def inner(i: int, net: int) -> str:
    """Connection *i*'s inner address in 10.<net>.0.0/16 (10.<net>.0.1, ...)."""
    x, y = divmod(i + 1, 250)
    return f"10.{net}.{x}.{y}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


# -- topology and responders ----------------------------------------------------------------------

class Topo(ss.Pair):
    def __init__(self):
        super().__init__("bp-init", INIT, "bp-resp", RESP, ike_sockets=True, rcvbuf=4 << 20)
        self.init, self.resp = self.a, self.b
        # charon's kernel-libipsec routes each outbound policy into its TUN with a source
        # address from the local selector: it refuses a Child SA (TS_UNACCEPTABLE) unless one
        # exists, so the responder namespace holds every 10.60.x.y (the gateway ignores them)
        batch = "".join(f"address add {inner(i, 60)}/32 dev lo\n" for i in range(N))
        ss.sh("ip", "-n", self.resp.name, "-batch", "-", input=batch)
        self.responder = None

    def stop_responder(self) -> None:
        if self.responder is not None:
            self.responder.stop()
            self.responder = None

    def teardown(self) -> None:
        self.stop_responder()
        super().teardown()


class SwanResponder:
    name = "strongswan"

    def __init__(self, topo: Topo):
        self.charon = ss.Charon(topo.resp, topo.state("swan"), swanctl_conf=SWANCTL, extra_conf=CHARON_EXTRA)
        self.charon.start()

    @property
    def pid(self) -> int:
        return self.charon.proc.pid

    def established(self) -> tuple[int, int]:
        """(IKE SAs established, Child SAs installed) as charon lists them."""
        out = self.charon.swanctl("--list-sas", "--raw", timeout=60).stdout
        return out.count("state=ESTABLISHED"), out.count("state=INSTALLED")

    def log_tail(self) -> str:
        return self.charon.tail(40)

    def stop(self) -> None:
        self.charon.stop()


class IpspResponder:
    name = "ipsp"

    def __init__(self, topo: Topo):
        d = topo.state("ipsp")
        self.ctl = d / "ctl.sock"
        self.conf = d / "gw.toml"
        self.conf.write_text(gateway_toml(self.ctl))
        self.log = d / "gw.log"
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        self._out = open(self.log, "w")
        self.proc = topo.resp.popen(sys.executable, "-m", "ipsp", "gateway", "--config", self.conf,
                                    stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env)
        deadline = time.monotonic() + 20
        while "ipsp gateway: ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"ipsp gateway did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def established(self) -> tuple[int, int]:
        r = subprocess.run([sys.executable, "-m", "ipsp", "ike", "status", "--json", "--socket", str(self.ctl)],
                           env=self.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads(r.stdout)
        sas = [sa for sa in st["ike_sas"] if sa["state"] == "established"]
        return len(sas), sum(1 for sa in sas for c in sa["children"] if c["state"] == "installed")

    def engine_sas(self) -> dict[str, int]:
        """The engine's SAs by state (``ipsp sa list``): 2 N mature ones if every Child SA
        is really installed."""
        r = subprocess.run([sys.executable, "-m", "ipsp", "sa", "list", "--json", "--socket", str(self.ctl)],
                           env=self.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        states: dict[str, int] = {}
        for sa in json.loads(r.stdout):
            states[sa["state"]] = states.get(sa["state"], 0) + 1
        return states

    def log_tail(self) -> str:
        return self.log.read_text()[-4000:]

    def errors(self) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if re.search(r"Traceback|ERROR|Exception", ln)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


RESPONDERS = {"strongswan": SwanResponder, "ipsp": IpspResponder}


# -- the initiator --------------------------------------------------------------------------------

class Initiator:
    """N connections toward RESP, each in an :class:`Ike` of its own (one key manager, one
    PAD, the two sockets shared), started WINDOW at a time by :meth:`run`.

    One Ike per connection, not one Ike holding N connections: an Ike puts every further
    connection to a peer it already has an IKE SA with into that SA as a CREATE_CHILD_SA
    (RFC 7296 1.3.1), which would measure Child SA creation, not handshakes. N Ikes behave
    as N initiators sharing an address; datagrams go to the one whose SPIi they carry."""

    def __init__(self, topo: Topo, n: int):
        self.topo = topo
        pad = PeerAuthorizationDatabase([Peer("resp", (Identity("fqdn", "resp.ipsp.test"),), "psk",
                                              psk=PSK.encode())])
        peers = {p.name: p for p in pad}
        self.km = KeyManagerAPI(clock=time.monotonic)
        settings = IkeSettings(initial_contact=False)
        self.ikes: list[tuple[str, Ike]] = []
        for i in range(n):
            table = {"name": f"peer{i}", "peer": "resp", "remote": RESP,
                     "local_ts": [f"{inner(i, 50)}/32"], "remote_ts": [f"{inner(i, 60)}/32"],
                     "local_id": "fqdn:init.ipsp.test", "reqid": 1000 + i,
                     "ike_proposals": [IKE_PROPOSAL], "esp_proposals": [ESP_PROPOSAL], "dpd": 0}
            conn = connection(table, f"connection[{i}]", i, peers)
            self.ikes.append((conn.name, Ike(self.km, pad, settings, [conn], local=INIT, send=topo.send_ike,
                                             clock=time.monotonic)))
        self.unrouted = 0

    @property
    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for _, ike in self.ikes:
            for k, v in ike.stats.items():
                total[k] = total.get(k, 0) + v
        total["unrouted"] = self.unrouted
        return total

    def run(self, window: int, timeout: float = 300.0) -> tuple[float, float]:
        """Start every connection, at most *window* unfinished at a time; return (wall, CPU)
        seconds from the first IKE_SA_INIT to the last Child SA installed."""
        n = len(self.ikes)
        pending = list(reversed(self.ikes))
        active: dict[int, Ike] = {}            # id(ike) -> ike, started and no Child SA yet
        by_spi: dict[bytes, Ike] = {}
        done = 0

        def deliver(data: bytes, addr, port: int) -> None:
            nonlocal done
            ike = by_spi.get(data[:8])
            if ike is None:
                self.unrouted += 1
                return
            ike.receive(data, addr, port)
            if id(ike) in active and ike.stats["child_installed"]:
                del active[id(ike)]
                done += 1

        c0, t0 = time.process_time(), time.perf_counter()
        deadline = time.monotonic() + timeout
        next_tick = time.monotonic() + 0.1
        while done < n:
            while pending and len(active) < window:
                name, ike = pending.pop()
                sa = ike.initiate(name)
                by_spi[sa.spi_i] = ike
                active[id(ike)] = ike
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"timed out: {done}/{n} Child SAs installed; stats {self.stats}")
            if now >= next_tick:
                for ike in list(active.values()):
                    ike.tick()
                next_tick = now + 0.1
            self.topo.receive_ike(deliver, 0.05)
        return time.perf_counter() - t0, time.process_time() - c0

    def close(self) -> None:
        for _, ike in self.ikes:
            ike.close()


# -- the benchmark --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def topo():
    yield from ss.module_topology(Topo)


@pytest.mark.parametrize("responder", list(RESPONDERS))
def test_ike_responder_handshakes(benchmark, topo, responder):
    rounds = []
    state = {}

    def setup():
        if "init" in state:
            state.pop("init").close()
        topo.stop_responder()
        topo.drain()
        topo.responder = RESPONDERS[responder](topo)
        state["init"] = Initiator(topo, N)
        state["cpu0"] = cpu_seconds(topo.responder.pid)
        return (state["init"],), {}

    def handshakes(init):
        wall, cpu = init.run(WINDOW)
        rcpu = cpu_seconds(topo.responder.pid) - state["cpu0"]
        rounds.append({"wall": wall, "initiator_cpu": cpu, "responder_cpu": rcpu, "stats": init.stats})

    try:
        benchmark.pedantic(handshakes, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=0)
        resp = topo.responder
        ike_sas, children = resp.established()
        errors = resp.errors() if hasattr(resp, "errors") else []
        # charon: 2 N SAs in libipsec, one pair per Child SA it lists as INSTALLED
        engine = resp.engine_sas() if hasattr(resp, "engine_sas") else {"mature": 2 * children}
        init_stats = rounds[-1]["stats"]
    finally:
        if "init" in state:
            state.pop("init").close()
    assert not errors, f"{responder} logged errors:\n" + "\n".join(errors[:20]) + "\n" + resp.log_tail()
    assert (ike_sas, children) == (N, N), (f"{responder} holds {ike_sas} IKE SAs / {children} Child SAs after "
                                          f"{N} handshakes\n{resp.log_tail()}")
    best = min(rounds, key=lambda r: r["wall"])
    benchmark.extra_info.update(
        stage="ike_peers", responder=responder, handshakes=N, window=WINDOW,
        rate=N / best["wall"],
        initiator_cpu_us=best["initiator_cpu"] / N * 1e6,
        responder_cpu_us=best["responder_cpu"] / N * 1e6,
        initiator_busy=best["initiator_cpu"] / best["wall"],
        retransmits=sum(r["stats"]["retransmits"] for r in rounds),
        rounds=[{k: v for k, v in r.items() if k != "stats"} for r in rounds],
        initiator_stats={k: v for k, v in init_stats.items() if v},
        responder_ike_sas=ike_sas, responder_child_sas=children, responder_engine_sas=engine)
