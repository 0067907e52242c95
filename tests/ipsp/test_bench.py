"""``ipsp bench``: its arithmetic, its equality check (which must be able to fail), its
baselines, and the command line on generated and file traces."""

import json
import os
import subprocess
import sys

import pytest

import fastpath
import ipsp
from ipsp import bench, gen
from ipsp.baselines import measure
from ipsp.engine import Engine
from ipsp.pcap import TraceWriter

BACKENDS = ["openssl"] + (["ipsecmb"] if "ipsecmb" in fastpath.backends() else [])
PATH = os.pathsep.join(dict.fromkeys(os.path.dirname(os.path.dirname(m.__file__)) for m in (ipsp, fastpath)))


def test_wire_arithmetic_gives_the_published_line_rates():
    # a 64-byte frame (IP 46) and the minimum-size padding below it; 1518-byte frames
    assert bench.wire_bits(46) == bench.wire_bits(20) == (64 + 20) * 8
    assert bench.wire_bits(1500) == (1518 + 20) * 8
    assert round(10e9 / bench.wire_bits(46) / 1e6, 2) == 14.88
    assert round(10e9 / bench.wire_bits(1500) / 1e6, 2) == 0.81
    mix = [40] * 7 + [576] * 4 + [1500]
    mean = sum(map(bench.wire_bits, mix)) / len(mix)
    assert round(10e9 / mean / 1e6, 2) == 3.27          # Simple IMIX at 10 GbE (traces.md)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_packet_comes_back_equal_and_the_figures_agree(backend):
    packets = gen.imix_packets(700, seed=3)
    results, scaling = bench.run_bench(bench.Source.from_packets("imix", packets), ["aes128gcm16", "aes128-sha1"],
                                       [backend], batch=64, repeats=1, chunk=256, baseline_kinds=())
    assert scaling == [] and len(results) == 4
    mean_bits = sum(map(bench.wire_bits, map(len, packets))) / len(packets)
    for r in results:
        assert r.verified and r.packets == 700 and r.backend == backend
        assert r.floor is not None and r.ratio == pytest.approx(r.ns_per_packet / r.floor_ns, rel=0.02)
        assert r.gbps_wire == pytest.approx(r.mpps * 1e6 * mean_bits / 1e9, rel=0.01)
        assert r.line_rate_pct["10G"] == pytest.approx(r.gbps_wire * 10, rel=0.01, abs=0.06)   # both rounded
    enc = [r for r in results if r.direction == "encap"]
    # GCM: 8 bytes ESP header + 8 IV + 2..5 trailer + 16 ICV + 20 outer IPv4 header
    assert 54 <= enc[0].esp_bytes_added <= 57


def test_the_equality_check_catches_a_wrong_result(monkeypatch):
    real = Engine.__init__

    def corrupting_init(self, *a, **kw):
        real(self, *a, **kw)
        inbound = self.inbound

        def inbound_then_flip(buf, offsets, lengths, status, **kw):
            ok = inbound(buf, offsets, lengths, status, **kw)
            mv = memoryview(buf)
            mv[offsets[0] + lengths[0] - 1] ^= 1        # the last byte of the first packet
            return ok

        self.inbound = inbound_then_flip

    monkeypatch.setattr(Engine, "__init__", corrupting_init)
    results, _ = bench.run_bench(bench.Source.from_packets("imix", gen.imix_packets(300)), ["aes128gcm16"],
                                 ["openssl"], repeats=1, chunk=128, baseline_kinds=())
    assert [r.verified for r in results] == [False, False]


@pytest.mark.parametrize("proposal", ["aes128gcm16", "chacha20poly1305", "aes128-sha1", "aes256-sha256", "des-sha1"])
@pytest.mark.parametrize("kind", ["cryptography", "scapy"])
def test_baselines_are_accepted_by_an_ipsp_sa(proposal, kind):
    cfg = bench._config(proposal, "openssl")
    m = measure(kind, cfg, gen.imix_packets(24 if kind == "scapy" else 200, seed=5))
    assert m["verified"] and m["packets"] > 0 and m["encap_ns"] > 0 and m["decap_ns"] > 0


def test_a_baseline_that_produces_garbage_is_reported_unverified(monkeypatch):
    from ipsp import baselines
    real = baselines.NaiveESP.encap
    monkeypatch.setattr(baselines.NaiveESP, "encap", lambda self, p, seq: real(self, p, seq)[:-1] + b"\0")
    m = measure("cryptography", bench._config("aes128gcm16", "openssl"), gen.imix_packets(20))
    assert m["verified"] is False


def test_thread_scaling_runs_and_verifies():
    results, scaling = bench.run_bench(bench.Source.from_packets("imix", gen.imix_packets(2000)), ["aes128gcm16"],
                                       ["openssl"], repeats=1, chunk=256, threads=2, baseline_kinds=())
    (s,) = scaling
    assert s.threads == 2 and s.verified and s.mpps_one > 0 and s.mpps_all > 0 and s.floor_speedup


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ipsp", "bench", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, "PYTHONPATH": PATH})


def test_cli_json_on_a_generated_trace():
    r = _cli("--packets", "600", "--proposal", "aes128gcm16", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["packets"] == 600 and doc["peak_rss_bytes"] > 0
    assert {x["direction"] for x in doc["results"]} == {"encap", "decap"}
    assert all(x["verified"] for x in doc["results"])
    assert all(x["baselines"]["cryptography"]["verified"] for x in doc["results"])


def test_cli_on_a_users_pcap_with_non_ip_frames_and_a_plot(tmp_path):
    path = tmp_path / "mine.pcap"
    with TraceWriter(path, linktype=1) as w:                      # Ethernet
        for i, p in enumerate(gen.imix_packets(500, seed=9)):
            w.write(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + p, i * 1000)
        w.write(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x06" + bytes(28), 10**9)   # ARP: no IP packet
    r = _cli("--trace", str(path), "--proposal", "aes128gcm16", "--repeats", "1", "--no-baselines",
             "--plot", str(tmp_path / "out.png"))
    assert r.returncode == 0, r.stderr
    assert "mine.pcap, 500 packets (1 non-IP frames skipped)" in r.stdout
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_on_a_damaged_file_names_the_problem(tmp_path):
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"\x00\x01\x02\x03" + bytes(40))
    r = _cli("--trace", str(path), "--proposal", "aes128gcm16")
    assert r.returncode == 1 and "unknown magic number" in r.stderr
