"""Configuration loading over the hostile corpus: every field of a configuration file that uses
every section ([engine], [defaults], [gateway], [ike], [[connection]], [[peer]], [[policy]],
[[sa]]) and of an SA file gets every hostile value, through config_from_document, the TOML
files of load_config / load_sa_file and ``ipsp config check``. Each load either succeeds or
raises ConfigError naming the key path (or, for a file tomllib cannot parse, the file); the
message is one line; and a key written anywhere never shows in a message, a warning or a
control-socket reply (issue 11 items 4, 8, 9)."""

from __future__ import annotations

import copy
import os
import functools
import json
import logging
import math
import re
import subprocess
import sys

import hostile
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsp import cli
from ipsp.config import config_from_document, load_config, load_sa_file, sas_from_document
from ipsp.errors import ConfigError

K20 = "0x" + "11" * 20
K32 = "0x" + "22" * 32
ENV = {"IPSP_HOSTILE_AUTH": "0x" + "33" * 32}

BASE = {
    "allow_insecure": False,
    "engine": {"rekey_grace": 5.0, "control_socket": "/run/ipsp/hostile.sock", "log_interval": 1.0},
    "defaults": {"mode": "tunnel", "replay_window": 2048, "lifetime": {"soft_seconds": 3000, "hard_seconds": 3600}},
    "gateway": {"tun": "ipsp7", "address": "10.1.0.1", "local": "198.51.100.1", "routes": ["10.2.0.0/16"],
                "tun_mtu": 1400, "outer": "udp", "udp_port": 4500, "path_mtu": 1500, "batch": 64, "keepalive": 20},
    "ike": {"local_id": "fqdn:gw1.example.net", "cert": "/etc/ipsp/gw1.pem", "key": "/etc/ipsp/gw1.key",
            "chain": ["/etc/ipsp/sub.pem"], "cacerts": ["/etc/ipsp/ca.pem"], "crls": ["/etc/ipsp/ca.crl"],
            "port": 500, "nat_port": 4500, "cookie_threshold": 30, "half_open_timeout": 30,
            "retransmit_timeout": 2.0, "retransmit_base": 1.8, "retransmit_tries": 5, "initial_contact": True,
            "fragmentation": True, "fragment_size": 1280},
    "peer": [{"name": "gw2", "id": ["fqdn:gw2.example.net", "ip:198.51.100.2"], "auth": "psk", "psk": K32,
              "addresses": ["198.51.100.2"], "allowed": ["10.2.0.0/16"]},
             {"name": "rw", "id": "email:alice@example.org", "auth": "pubkey", "ca": "/etc/ipsp/ca.pem"}],
    "connection": [{"name": "to-gw2", "peer": "gw2", "remote": "198.51.100.2", "local_ts": ["10.1.0.0/16"],
                    "remote_ts": ["10.2.0.0/16"], "reqid": 7, "ike_proposals": ["aes128gcm16-prfsha256-x25519"],
                    "esp_proposals": ["aes128gcm16-x25519", "aes256-sha256"], "local_id": "fqdn:gw1.example.net",
                    "remote_id": "fqdn:gw2.example.net", "start": "start", "ike_rekey": 14400,
                    "child_rekey": 3600, "jitter": 0.1, "dpd": 30, "encap": True, "replay_window": 1024,
                    "backend": "auto"}],
    "policy": [{"direction": "out", "action": "protect", "src": "10.1.0.0/16", "dst": "10.3.0.0/16",
                "proto": "tcp", "sport": "1024-65535", "dport": 443, "priority": 100, "reqid": 1, "label": "web"},
               {"direction": "in", "action": "bypass", "src": "10.3.0.0/16", "proto": "icmp", "icmp_type": 8,
                "icmp_code": 0}],
    "sa": [{"direction": "out", "reqid": 1, "label": "web", "spi": 0x1001, "src": "198.51.100.1",
            "dst": "198.51.100.3", "proposal": "aes128gcm16", "enc_key": K20, "encap": "udp", "sport": 4500,
            "dport": 4500, "esn": True, "replay_window": 64, "implicit_iv": False, "tfc_pad": 0, "df": "copy",
            "dscp": 10, "ttl": 64, "backend": "auto", "fragment": "outer",
            "match": {"src": "10.1.0.0/16", "dst": "10.3.0.0/16"},
            "lifetime": {"soft_bytes": 1000, "hard_bytes": 2000, "soft_packets": 10, "hard_packets": 20}},
           {"direction": "in", "reqid": 1, "spi": 0x2001, "src": "198.51.100.3", "dst": "198.51.100.1",
            "proposal": "aes256-sha256", "enc_key": K32, "auth_key": {"env": "IPSP_HOSTILE_AUTH"},
            "encap": "udp", "sport": 4500, "dport": 4500, "mode": "tunnel"},
           {"direction": "in", "spi": 0x3001, "src": "198.51.100.4", "dst": "233.252.0.1",
            "proposal": "aes128gcm16", "enc_key": K20, "encap": "udp", "sport": 4500, "dport": 4500,
            "replay": "per-sender", "senders": ["198.51.100.4", "198.51.100.5"]}],
}

SA_FILE = {"allow_insecure": False, "sa": [
    {"spi": 0x1001, "src": "192.0.2.1", "dst": "192.0.2.2", "proposal": "aes128-sha256", "enc_key": "0x" + "44" * 16,
     "auth_key": {"env": "IPSP_HOSTILE_AUTH"}, "mode": "tunnel", "encap": "udp", "sport": 4500, "dport": 4500,
     "esn": False, "replay_window": 128, "tfc_pad": 0, "df": "set", "dscp": 0, "ttl": 9, "backend": "openssl",
     "fragment": "inner", "match": {"src": "10.0.0.0/8"}}]}


def _leaves(node, path=()):
    """(path tuple, key path as errors write it) of every value in a document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list) and node and isinstance(node[0], dict):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))
    else:
        yield path, _keypath(path)


def _keypath(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _with(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


CONFIG_FIELDS = list(_leaves(BASE))
SA_FIELDS = list(_leaves(SA_FILE))
VALUES = hostile.values()


def test_the_base_documents_are_valid():
    # what every mutation below starts from: an error there is the mutation's
    assert len(config_from_document(BASE, env=ENV).sas) == 4
    assert len(sas_from_document(SA_FILE, env=ENV)) == 1
    assert len(CONFIG_FIELDS) > 100


def _names(err: ConfigError, keypath: str) -> bool:
    """The error is about that field: its key, inside it, the table holding it, or (a valid
    value that clashes with another field) another key whose message names this one."""
    k = err.key or ""
    return bool(k) and (k == keypath or k.startswith((keypath + ".", keypath + "[")) or keypath.startswith(k)
                        or re.sub(r"\[\d+\]", "", keypath).rsplit(".", 1)[-1] in err.message)


def _check(err: ConfigError, keypath: str) -> None:
    text = str(err)
    assert "\n" not in text and len(text) < 1000, text
    assert _names(err, keypath), (keypath, text)


@pytest.mark.parametrize("path,keypath", CONFIG_FIELDS, ids=[k for _, k in CONFIG_FIELDS])
def test_every_config_field_over_the_corpus(path, keypath):
    for name, value in VALUES + [("deep-array", _deep_list()), ("deep-table", _deep_table())]:
        try:
            config_from_document(_with(BASE, path, value), env=ENV)
        except ConfigError as err:
            _check(err, keypath)


@pytest.mark.parametrize("path,keypath", SA_FIELDS, ids=[k for _, k in SA_FIELDS])
def test_every_sa_file_field_over_the_corpus(path, keypath):
    for name, value in VALUES + [("deep-array", _deep_list())]:
        try:
            sas_from_document(_with(SA_FILE, path, value), env=ENV)
        except ConfigError as err:
            _check(err, keypath)


@functools.cache                  # built once: 100,000 levels take a fifth of a second
def _deep_list(depth: int = hostile.DEPTH):
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


@functools.cache
def _deep_table(depth: int = hostile.DEPTH):
    v: dict = {}
    for _ in range(depth):
        v = {"a": v}
    return v


# -- the same through TOML files and `ipsp config check` ----------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)               # JSON's escapes are TOML's, \uXXXX included
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml(doc) -> str:
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, (dict, list))
             or (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{json.dumps(a)} = {_toml_value(b)}" for a, b in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for t in v:
                lines.append(f"[[{k}]]")
                lines += [f"{json.dumps(a)} = {_toml_value(b)}" for a, b in t.items()]
    return "\n".join(lines) + "\n"


TOML_VALUES = [(n, v) for n, v in VALUES if not isinstance(v, (type(None), bytes))]
DEEP = "[" * hostile.DEPTH + "]" * hostile.DEPTH
DEEP_TABLES = "{b = " * 2000 + "1" + "}" * 2000


def _file_cases(base, fields):
    for path, keypath in fields:
        yield path, keypath, "secret", "0x" + "5e" * 32
        for name, value in TOML_VALUES:
            if name in ("str:nul", "str:hex-key", "str:non-ascii-15", "str:long", "int:2**64", "long-digits"):
                yield path, keypath, name, value


@pytest.mark.parametrize("path,keypath,name,value", list(_file_cases(BASE, CONFIG_FIELDS)),
                         ids=[f"{k}-{n}" for _, k, n, _ in _file_cases(BASE, CONFIG_FIELDS)])
def test_config_check_over_the_corpus(tmp_path, capsys, monkeypatch, path, keypath, name, value):
    """``ipsp config check`` in this process (the CLI's own code path; a few runs below go
    through a real subprocess): exit 0, or exit 1 with one line that names file and key."""
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    f = tmp_path / "c.toml"
    f.write_text(_toml(_with(BASE, path, value)), encoding="utf-8", errors="surrogatepass")
    f.chmod(0o600)
    rc = cli.main(["config", "check", str(f)])
    out, err = capsys.readouterr()
    assert rc in (0, 1), (rc, err)
    if rc == 1:
        assert err.count("\n") == 1 and re.match(rf"{re.escape(str(f))}:[^ ]+: ", err), err
    assert "Traceback" not in err
    # stdout lists what a valid file names (labels, names, paths), as it should; the errors
    # and warnings on stderr never show a key-like value
    assert "5e5e5e5e5e5e5e5e" not in err


@pytest.mark.parametrize("path,keypath", CONFIG_FIELDS[::7] + SA_FIELDS[::5])
def test_deep_toml_in_a_field_names_the_file(tmp_path, path, keypath):
    base = BASE if (path, keypath) in CONFIG_FIELDS else SA_FILE
    load = load_config if base is BASE else load_sa_file
    for deep in (DEEP, DEEP_TABLES):
        f = tmp_path / "deep.toml"
        f.write_text(_toml(_with(base, path, "@DEEP@")).replace('"@DEEP@"', deep))
        with pytest.raises(ConfigError) as e:
            load(f, env=ENV)
        assert e.value.path == str(f)


@pytest.mark.parametrize("text,message", [
    (hostile.deep_toml(), "nested too deeply"),
    (hostile.deep_toml_tables(), "nested too deeply"),
    ('[engine]\ncontrol_socket = "/run/a\\u0000b"\n', "engine.control_socket: a path cannot hold a NUL"),
    ('[gateway]\nlocal = "192.0.2.1"\naddress = "10.0.0.1"\ntun = "' + "é" * 15 + '"\n',
     "gateway.tun: not a network interface name: at most 15 bytes"),
    ("a = 1\n" * 2 + "\0", "not valid TOML"),
    (b"\xff\xfe".decode("latin-1"), "not valid TOML"),
], ids=["deep-arrays", "deep-tables", "nul-socket", "tun-15-non-ascii", "nul-byte", "not-utf8"])
def test_config_check_subprocess_one_line_no_traceback(tmp_path, text, message):
    f = tmp_path / "h.toml"
    f.write_text(text, encoding="latin-1" if text.startswith("\xff") else "utf-8")
    r = subprocess.run([sys.executable, "-m", "ipsp", "config", "check", str(f)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"{f}:") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# -- no key material in any message ---------------------------------------------------------

def _renderings(key: bytes) -> list[str]:
    """Every 16-hex-digit window of the key's hex, the way a message could hold a piece of it."""
    h = key.hex()
    return sorted({h[i:i + 16] for i in range(0, len(h) - 15)} | {h[i:i + 16].upper() for i in range(0, len(h) - 15)})


def _spellings(key: bytes):
    h = key.hex()
    return st.sampled_from(["0x" + h, h, "0X" + h.upper(), ":".join(h[i:i + 2] for i in range(0, len(h), 2)),
                            " ".join(h[i:i + 2] for i in range(0, len(h), 2))])


def _placements(text: str, key: bytes):
    return [text, {"env": text}, {"file": text}, [text], {text: 1}, int.from_bytes(key, "big")]


FIELD_CHOICES = [("config", p) for p, _ in CONFIG_FIELDS] + [("sa", p) for p, _ in SA_FIELDS]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), key=st.binary(min_size=8, max_size=64))
def test_a_key_in_any_field_never_reaches_a_message(caplog, data, key):
    kind, path = data.draw(st.sampled_from(FIELD_CHOICES))
    text = data.draw(_spellings(key))
    value = data.draw(st.sampled_from(_placements(text, key)))
    base, load = (BASE, config_from_document) if kind == "config" else (SA_FILE, sas_from_document)
    doc = _with(base, path, value)
    if data.draw(st.booleans()):                 # or as the name of a key nobody knows
        doc = _with(base, path[:-1] + (text,), 1)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        try:
            load(doc, env={**ENV, text: "0x" + "66" * 20})
            message = ""
        except ConfigError as err:
            message = str(err)
    seen = message + "\n".join(r.getMessage() for r in caplog.records)
    leaked = [w for w in _renderings(key) if w in seen.replace(":", "").replace(" ", "")]
    assert not leaked, (path, seen)


@pytest.mark.parametrize("field,value", [
    (("sa", 0, "enc_key"), {"env": "0x" + "5e" * 20}),
    (("sa", 0, "enc_key"), {"file": "0x" + "5e" * 20}),
    (("sa", 0, "proposal"), "0x" + "5e" * 20),
    (("peer", 0, "psk"), {"env": "0x" + "5e" * 32}),
    (("peer", 0, "name"), "0x" + "5e" * 32),
    (("sa", 0, "spi"), int("5e" * 20, 16)),
    (("sa", 0, "label"), ["0x" + "5e" * 20]),
    (("connection", 0, "esp_proposals"), ["aes128gcm16-0x" + "5e" * 20]),
    (("connection", 0, "local_ts"), ["5e" * 20]),
    (("ike", "local_id"), "fqdn:" + "5e" * 20 if False else "0x" + "5e" * 20),
])
def test_the_reported_leaks_name_field_not_value(field, value):
    """Issue 11 item 8's cases (a key in the wrong field), each by name."""
    with pytest.raises(ConfigError) as e:
        config_from_document(_with(BASE, field, value), env=ENV)
    assert "5e5e5e5e5e5e5e5e" not in str(e.value)
    assert _names(e.value, _keypath(field)), str(e.value)


def test_control_socket_sa_add_does_not_echo_a_key(tmp_path):
    from ipsp.control import ControlServer
    from ipsp.engine import Engine

    srv = ControlServer(Engine(), tmp_path / "s.sock")
    secret = "0x" + "5e" * 20
    for table in ({"enc_key": {"env": secret}}, {"proposal": secret}, {"enc_key": {"file": secret}},
                  {"spi": secret}, {secret: 1}):
        sa = {"direction": "out", "spi": 0x1001, "src": "192.0.2.1", "dst": "192.0.2.2", "proposal": "aes128gcm16",
              "enc_key": K20, **table}
        reply = srv.handle(json.dumps({"op": "sa_add", **sa}).encode())
        assert reply["ok"] is False and not re.search("5e5e5e5e5e5e5e5e", reply["error"]), reply


ROTATION = [(path, keypath, TOML_VALUES[i % len(TOML_VALUES)]) for i, (path, keypath) in enumerate(CONFIG_FIELDS)]


@pytest.mark.parametrize("path,keypath,value", ROTATION,
                         ids=[f"{k}-{TOML_VALUES[i % len(TOML_VALUES)][0]}" for i, (_, k, _) in enumerate(ROTATION)])
def test_config_check_subprocess_every_field(tmp_path, path, keypath, value):
    """A real `python -m ipsp config check` per field (one corpus value each, in rotation, so
    every value meets the real process somewhere): exit 0 or 1, one line, no traceback."""
    f = tmp_path / "c.toml"
    f.write_text(_toml(_with(BASE, path, value[1])), encoding="utf-8", errors="surrogatepass")
    f.chmod(0o600)
    r = subprocess.run([sys.executable, "-m", "ipsp", "config", "check", str(f)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **ENV})
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    if r.returncode == 1:
        assert r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
        assert re.match(rf"{re.escape(str(f))}:[^ ]+: |{re.escape(str(f))}: not valid TOML", r.stderr), r.stderr


@pytest.mark.parametrize("path,keypath", SA_FIELDS, ids=[k for _, k in SA_FIELDS])
def test_load_sa_file_over_the_corpus(tmp_path, path, keypath):
    f = tmp_path / "sa.toml"
    for name, value in TOML_VALUES:
        f.write_text(_toml(_with(SA_FILE, path, value)), encoding="utf-8", errors="surrogatepass")
        f.chmod(0o600)
        try:
            load_sa_file(f, env=ENV)
        except ConfigError as err:
            assert err.path == str(f), (name, str(err))
            if err.key is not None:                  # None: tomllib refused the text itself
                _check(err, keypath)
