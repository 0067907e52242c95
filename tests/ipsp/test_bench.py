"""``ipsp bench``: its arithmetic, its equality check (which must be able to fail), its
baselines, and the command line on generated and file traces."""

import collections
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


# -- real captures: every frame under a documented rule, never an abort (issue 11 item 12) ----

ETH = b"\x02" * 6 + b"\x04" * 6


def _udp(size, i=0):
    return gen.ipv4_udp(size, bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1]), 1000 + i, 53, i & 0xFF, i)


def _set_len(ip, total):
    return ip[:2] + total.to_bytes(2, "big") + ip[4:]


def _real_capture(path):
    """(frame, original length) records with every defect real captures have, and the rule each
    must land in."""
    records = []
    good = [_udp(60 + i * 7, i) for i in range(40)]
    records += [(ETH + b"\x08\x00" + p, None, "ok") for p in good]
    for i in range(19):                                    # snaplen 96 cut these short
        p = _udp(400 + i, 100 + i)
        records.append(((ETH + b"\x08\x00" + p)[:96], 14 + len(p), "padded"))
    small = _udp(28, 7)
    records.append((ETH + b"\x08\x00" + small + bytes(60 - 14 - 28), None, "trimmed"))   # Ethernet padding
    records.append((ETH + b"\x08\x06" + bytes(28), None, "non_ip"))                      # ARP
    tso = _set_len(_udp(3000, 8), 0)                      # TSO on the sender: total length 0
    records.append((ETH + b"\x08\x00" + tso, None, "super_packet"))
    records.append((ETH + b"\x08\x00" + _udp(20000, 9), None, "super_packet"))           # GRO: 20 kB
    frag = bytearray(_udp(200, 10))
    frag[6] |= 0x20                                                                      # MF
    records.append((ETH + b"\x08\x00" + bytes(frag), None, "fragment"))
    records.append((ETH + b"\x08\x00" + _set_len(_udp(100, 11), 1000), None, "bad_length"))  # longer than the wire
    records.append((ETH + b"\x08\x00" + _udp(100, 12)[:12], None, "bad_length"))          # header cut
    jumbo = bytes([0x60, 0, 0, 0, 0, 0, 0, 64]) + bytes(32) + bytes([17, 0, 0xC2, 4, 0, 1, 0, 0]) + bytes(100)
    records.append((ETH + b"\x86\xdd" + jumbo, None, "super_packet"))                    # jumbogram
    cut_fragment = bytes([0x60, 0, 0, 0, 0, 4, 44, 64]) + bytes(32) + bytes(4)      # IPv6, fragment header cut
    records.append((ETH + b"\x86\xdd" + cut_fragment, None, "fragment"))
    with TraceWriter(path, linktype=1) as w:
        for i, (frame, orig, _) in enumerate(records):
            w.write(frame, i * 1000, orig)
    expected = collections.Counter(rule for _, _, rule in records)
    # a padded packet: what the capture kept, then zeros up to its IP length
    kept = good + [_udp(400 + i, 100 + i)[:82] + bytes(400 + i - 82) for i in range(19)] + [small]
    return expected, kept


def test_a_real_capture_is_benchmarked_by_documented_rules(tmp_path):
    expected, kept = _real_capture(tmp_path / "real.pcap")
    source = bench.Source.from_file(str(tmp_path / "real.pcap"))
    results, _ = bench.run_bench(source, ["aes128gcm16", "aes128-sha1"], ["openssl"], repeats=1, chunk=16,
                                 baseline_kinds=())
    assert source.rules == expected and set(source.rules) <= set(bench.RULES)
    assert all(r.verified and r.packets == len(kept) for r in results)
    assert source.skipped == sum(expected.values()) - len(kept)
    # what was benchmarked is what the rules say: padded back to the IP length, trimmed to it
    assert [p for c in source.chunks(1000) for p in c] == kept


def test_what_the_screen_misses_the_engine_refuses_and_it_is_counted(tmp_path, monkeypatch):
    expected, kept = _real_capture(tmp_path / "real.pcap")
    monkeypatch.setattr(bench, "_ipv6_fragment", lambda ip: False)     # a screen blind to IPv6 fragments
    source = bench.Source.from_file(str(tmp_path / "real.pcap"))
    results, _ = bench.run_bench(source, ["aes128gcm16"], ["openssl"], repeats=1, chunk=16, baseline_kinds=())
    assert source.rules["refused"] == 1 and source.rules["fragment"] == expected["fragment"] - 1
    assert sum(source.rules.values()) == sum(expected.values())
    assert all(r.verified and r.packets == len(kept) for r in results)


def test_cli_reports_the_rules_in_text_and_json(tmp_path):
    expected, kept = _real_capture(tmp_path / "real.pcap")
    r = _cli("--trace", str(tmp_path / "real.pcap"), "--proposal", "aes128gcm16", "--repeats", "1",
             "--no-baselines", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["trace_rules"] == dict(expected) and doc["packets"] == len(kept)
    r = _cli("--trace", str(tmp_path / "real.pcap"), "--proposal", "aes128gcm16", "--repeats", "1", "--no-baselines")
    assert r.returncode == 0, r.stderr
    assert ("real.pcap, 60 packets (19 truncated packets padded to their original length, 1 packets trimmed to "
            "their IP length, 1 non-IP frames skipped, 2 fragments left out, 3 super-packets left out, "
            "2 packets with bogus IP lengths left out)") in r.stdout


@pytest.mark.parametrize("content, words", [
    (b"", "the capture is empty"),
    (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(8) + b"\xff\xff\x00\x00\x01\x00\x00\x00", "the capture is empty"),
    ("arp-only", "1 non-IP frames skipped"),
])
def test_bench_on_a_capture_without_ip_packets_is_one_line_exit_1(tmp_path, content, words):
    path = tmp_path / "none.pcap"
    if content == "arp-only":
        with TraceWriter(path, linktype=1) as w:
            w.write(ETH + b"\x08\x06" + bytes(28), 0)
    else:
        path.write_bytes(content)
    r = _cli("--trace", str(path), "--proposal", "aes128gcm16", "--plot", str(tmp_path / "p.png"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "none.pcap: no IP packets to measure" in r.stderr and words in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["none.pcap"]          # no plot, no temporary file


def test_plot_without_matplotlib_fails_before_measuring(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"       # import matplotlib now raises ImportError
            "from ipsp import bench\n"
            "def measured(*a, **kw): raise SystemExit('the bench ran')\n"
            "bench.run_bench = measured\n"
            "from ipsp.cli import main; sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "bench", "--packets", "100", "--plot", str(tmp_path / "p.png")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": PATH})
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr == "ipsp bench: --plot needs matplotlib (pip install 'ipsp[plot]')\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("option, value", [("--packets", "0"), ("--packets", str(2**64)), ("--batch", "-1"),
                                           ("--chunk", "0"), ("--threads", str(2**40)), ("--repeats", "0"),
                                           ("--proposal", "aes128gcm16-nope")])
def test_bench_refuses_absurd_options_at_once_exit_2(option, value):
    r = _cli(option, value)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and option in r.stderr, r.stderr
