"""Every ``ipsp`` subcommand over the hostile corpus: paths, numbers and file contents.

A case passes when the command exits 1 (a bad file or data) or 2 (a usage error), says so
in exactly one line on standard error without a traceback, writes nothing and changes no
input. The control commands are pointed at a socket nobody listens on: they must fail by
name, not crash, whatever they are given.
"""

from __future__ import annotations

import os
import subprocess
import sys

import hostile
import pytest

import ipsp
from ipsp import gen, pcap
from ipsp.cli import main

SRC = os.path.dirname(os.path.dirname(ipsp.__file__))

GCM_SA = """
[[sa]]
spi = 0x1001
src = "192.0.2.1"
dst = "192.0.2.2"
proposal = "aes128gcm16"
enc_key = "0x000102030405060708090a0b0c0d0e0f73616c74"
"""

# file contents an input may have: each is refused as that kind of file
CONTENTS = {
    "zero-bytes": b"",
    "garbage": bytes(range(256)) * 4,
    "deep-toml": hostile.deep_toml().encode(),
    "deep-toml-tables": hostile.deep_toml_tables().encode(),
    "deep-json": hostile.deep_json().encode(),
    "nul": b"[[sa]]\nspi = 1\0\n",
    "not-utf8": b"\xff\xfe[[sa]]\n",
    "huge-int": f"[[sa]]\nspi = {hostile.LONG_DIGITS}\n".encode(),
    "hex-key-as-name": b'[[sa]]\nspi = "0x1111111111111111111111111111111111111111"\n',
}


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A directory with one good capture and SA file, and one file per hostile content."""
    monkeypatch.chdir(tmp_path)
    with pcap.TraceWriter("good.pcap", pcap.LINKTYPE_RAW) as w:
        for i, p in enumerate(gen.imix_packets(12)):
            w.write(p, i)
    (tmp_path / "sa.toml").write_text(GCM_SA)
    for name, data in CONTENTS.items():
        (tmp_path / name).write_bytes(data)
    os.mkdir("adir")
    return tmp_path


def _snapshot(folder):
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = os.path.join(root, n)
            if os.path.isdir(p):
                out[p] = "dir"
            else:
                with open(p, "rb") as f:
                    out[p] = f.read()
    return out


def _run(capsys, world, argv):
    before = _snapshot(world)
    try:
        status = main(argv)
    except SystemExit as exc:           # argparse: usage errors
        status = exc.code
    out, err = capsys.readouterr()
    assert status in (1, 2), (status, out, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.endswith("\n"), err
    assert _snapshot(world) == before, "a failed command changed or wrote a file"
    return status, err


# -- paths: every string of the corpus and every kind of wrong file, in every path slot -------

# (hex-key is left out: in a path slot it is a file name, and errors name the file)
BAD_PATHS = [(f"str:{n}", v) for n, v in hostile.STRINGS if n != "hex-key"] + [
    ("missing", "no/such/file"), ("directory", "adir"), ("dev-zero", "/dev/zero"),
    ("dev-stdin", "/dev/stdin"), ("too-long", "x" * 5000),
] + [(f"content:{n}", n) for n in CONTENTS]

SOCKET = "no-engine.sock"

# (name, argv with {} where the hostile path goes); an input path slot
INPUT_SLOTS = [
    ("trace-encrypt-in", ["trace", "encrypt", "--sa", "sa.toml", "{}", "out.pcap"]),
    ("trace-decrypt-in", ["trace", "decrypt", "--sa", "sa.toml", "{}", "out.pcap"]),
    ("trace-encrypt-sa", ["trace", "encrypt", "--sa", "{}", "good.pcap", "out.pcap"]),
    ("trace-decrypt-sa-no-verify", ["trace", "decrypt", "--no-verify", "--sa", "{}", "good.pcap", "out.pcap"]),
    ("trace-decrypt-secrets", ["trace", "decrypt", "--secrets", "{}", "good.pcap", "out.pcap"]),
    ("bench-trace", ["bench", "--trace", "{}", "--proposal", "aes128gcm16", "--no-baselines", "--repeats", "1"]),
    ("sa-list-config", ["sa", "list", "--config", "{}"]),
    ("policy-list-config", ["policy", "list", "--config", "{}"]),
    ("sa-add-file", ["sa", "add", "--socket", SOCKET, "--file", "{}"]),
    ("sa-list-socket", ["sa", "list", "--socket", "{}"]),
    ("stats-socket", ["stats", "--socket", "{}"]),
    ("events-socket", ["events", "--socket", "{}"]),
    ("reload-file", ["reload", "--socket", SOCKET, "{}"]),
    ("ike-status-socket", ["ike", "status", "--socket", "{}"]),
]

# an output path slot: what cannot be written, or must not be
OUTPUT_SLOTS = [
    ("trace-encrypt-out", ["trace", "encrypt", "--sa", "sa.toml", "good.pcap", "{}"]),
    ("trace-decrypt-out", ["trace", "decrypt", "--sa", "sa.toml", "good.pcap", "{}"]),
    ("trace-gen-out", ["trace", "gen", "64", "{}", "--packets", "3"]),
    ("bench-plot", ["bench", "--trace", "good.pcap", "--proposal", "aes128gcm16", "--no-baselines",
                    "--repeats", "1", "--plot", "{}"]),
]
BAD_OUTPUTS = [("empty", ""), ("nul", "a\0b"), ("directory", "adir"), ("missing-dir", "no/such/dir/out"),
               ("too-long", "x" * 5000), ("the-input", "good.pcap"), ("the-sa-file", "sa.toml"),
               ("through-a-dotdot", "adir/../good.pcap")]


def _expects_usage(value: str) -> bool:
    return value == "" or "\0" in value


@pytest.mark.parametrize("slot, argv", INPUT_SLOTS, ids=[s for s, _ in INPUT_SLOTS])
@pytest.mark.parametrize("name, value", BAD_PATHS, ids=[n for n, _ in BAD_PATHS])
def test_hostile_input_paths(world, capsys, slot, argv, name, value):
    if slot == "reload-file" and name.startswith("content:"):
        pytest.skip("reload sends the path to the engine, which is absent: covered by the socket slots")
    if slot.endswith("socket") and name.startswith("content:"):
        pytest.skip("a socket path's content is not read")
    if name == "content:zero-bytes" and (slot.endswith("config") or slot.endswith("-in")):
        pytest.skip("an empty configuration or capture is valid (docs/traces.md)")
    status, err = _run(capsys, world, [a.replace("{}", value) for a in argv])
    if _expects_usage(value):
        assert status == 2
    else:
        assert status == 1


@pytest.mark.parametrize("slot, argv", OUTPUT_SLOTS, ids=[s for s, _ in OUTPUT_SLOTS])
@pytest.mark.parametrize("name, value", BAD_OUTPUTS, ids=[n for n, _ in BAD_OUTPUTS])
def test_hostile_output_paths(world, capsys, slot, argv, name, value):
    if name in ("the-input", "through-a-dotdot", "the-sa-file") and (
            slot == "trace-gen-out" or slot == "bench-plot" and name == "the-sa-file"):
        pytest.skip("not an input of this command: replacing it is what was asked")
    status, err = _run(capsys, world, [a.replace("{}", value) for a in argv])
    assert status == (2 if _expects_usage(value) else 1)
    if name in ("the-input", "the-sa-file", "through-a-dotdot") and not slot.startswith("trace-gen"):
        assert "is the same file as the input" in err


@pytest.mark.parametrize("daemon", ["engine", "gateway"])
@pytest.mark.parametrize("name, value", [(n, v) for n, v in BAD_PATHS if n != "content:zero-bytes"],
                         ids=[n for n, _ in BAD_PATHS if n != "content:zero-bytes"])
def test_hostile_daemon_configuration_paths(world, daemon, name, value):
    # a process of its own: the daemons set up logging and signal handling for the process
    if "\0" in value or "\udcff" in value:
        pytest.skip("not passable through execve (NUL) or the tests' UTF-8 argv (lone surrogate)")
    before = _snapshot(world)
    r = subprocess.run([sys.executable, "-m", "ipsp", daemon, "--config", value, "--socket", SOCKET],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == (2 if value == "" else 1), r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert _snapshot(world) == before


# -- numbers: every huge, negative and malformed value for every numeric option ---------------

NUMBERS = [(n, str(v)) for n, v in hostile.HUGE_INTEGERS] + [
    ("long-digits", hostile.LONG_DIGITS), ("nan", "nan"), ("inf", "inf"), ("1e400", "1e400"), ("float", "1.5"),
    ("hex", "0x10"), ("empty", ""), ("space", " "), ("non-ascii", "١٢"), ("zero", "0")]

NUMBER_SLOTS = [
    ("bench-packets", ["bench", "--packets", "{}"]),
    ("bench-batch", ["bench", "--batch", "{}"]),
    ("bench-chunk", ["bench", "--chunk", "{}"]),
    ("bench-threads", ["bench", "--threads", "{}"]),
    ("bench-repeats", ["bench", "--repeats", "{}"]),
    ("gen-packets", ["trace", "gen", "64", "out.pcap", "--packets", "{}"]),
    ("gen-flows", ["trace", "gen", "64", "out.pcap", "--flows", "{}"]),
    ("gen-rate", ["trace", "gen", "64", "out.pcap", "--rate", "{}"]),
    ("gen-ipv6-share", ["trace", "gen", "64", "out.pcap", "--ipv6-share", "{}"]),
    ("gen-profile", ["trace", "gen", "fixed:{}", "out.pcap"]),
    ("policy-del-id", ["policy", "del", "--socket", SOCKET, "{}"]),
    ("events-since", ["events", "--socket", SOCKET, "--since", "{}"]),
    ("sa-del-spi", ["sa", "del", "--socket", SOCKET, "--spi", "{}", "--dst", "192.0.2.1", "--direction", "in"]),
]

# values a slot legitimately accepts, so the command would run: those are not hostile there
ACCEPTED = {
    ("bench-packets", "2**31"), ("bench-packets", "2**32"), ("bench-packets", "hex"),
    ("gen-packets", "2**31"), ("gen-packets", "2**32"), ("gen-packets", "zero"), ("gen-packets", "hex"),
    ("gen-rate", "2**31"), ("gen-rate", "2**32"), ("gen-rate", "2**63"), ("gen-rate", "2**64"),
    ("gen-rate", "2**200"), ("gen-rate", "inf"), ("gen-rate", "1e400"), ("gen-rate", "float"),
    ("gen-rate", "long-digits"), ("gen-rate", "hex"),
    ("gen-ipv6-share", "float"), ("gen-ipv6-share", "zero"),
    ("bench-batch", "hex"), ("bench-chunk", "hex"), ("bench-threads", "hex"), ("bench-repeats", "hex"),
    ("gen-flows", "hex"),
}


@pytest.mark.parametrize("slot, argv", NUMBER_SLOTS, ids=[s for s, _ in NUMBER_SLOTS])
@pytest.mark.parametrize("name, value", NUMBERS, ids=[n for n, _ in NUMBERS])
def test_hostile_numbers(world, capsys, slot, argv, name, value):
    if (slot, name) in ACCEPTED:
        pytest.skip("a valid value for this option")
    status, err = _run(capsys, world, [a.replace("{}", value) for a in argv])
    # parsed (or refused by the parser, 2) before anything else: the control commands that
    # parse it reach the absent engine (1)
    assert status == 2 or slot in ("policy-del-id", "events-since", "sa-del-spi")


def test_the_hostile_values_reach_the_commands_as_given(world, capsys):
    # the fixture is what the cases above assume: a good capture and SA file that work
    assert main(["trace", "encrypt", "--sa", "sa.toml", "good.pcap", "ok.pcap"]) == 0
    assert "12 packets read: 12 processed" in capsys.readouterr().out
    os.unlink("ok.pcap")


@pytest.mark.skipif(sys.platform != "linux", reason="Linux device files")
def test_a_secrets_file_is_read_bounded(world, capsys):
    from ipsp import trace
    with open("big", "wb") as f:
        f.truncate(trace.MAX_SECRETS_BYTES + 10)       # sparse: no disk used
    status, err = _run(capsys, world, ["trace", "decrypt", "--secrets", "big", "good.pcap", "out.pcap"])
    assert status == 1 and "larger than" in err
