"""Issue 11 items 4 (reading), 8, 9 and 14 (proposals): each reproduced case by name.

Key material never in an error; bounded key-file reads; a warning for secrets others can
read; ``config check`` refuses what the daemons would refuse later; strongSwan's ESP proposal
with a DH group; and reading a TOML file raises ConfigError and nothing else."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import hostile
import pytest

from ipsp import cli
from ipsp.config import config_from_document, load_config, load_sa_file, read_toml
from ipsp.errors import ConfigError, notes_on_success, shown
from ipsp.ike.proposals import parse_esp
from ipsp.sa import KEY_FILE_MAX, sa_from_mapping
from ipsp.transforms import parse_esp_proposal, parse_proposal

KEY = "0x" + "11" * 16 + "deadbeef"          # 20 bytes: aes128gcm16's key and salt
HEX = KEY[2:]


def _sa(**over):
    return {"spi": 0x1001, "src": "192.0.2.1", "dst": "192.0.2.2", "proposal": "aes128gcm16", "enc_key": KEY,
            "direction": "out", **over}


def _error(doc, env=None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        config_from_document(doc, env=env or {})
    return e.value


# -- item 8: no key material in errors ------------------------------------------------------

@pytest.mark.parametrize("over,key,says", [
    ({"enc_key": {"env": KEY}}, "sa[0].enc_key", "looks like a key, not a variable's name"),
    ({"enc_key": {"file": KEY}}, "sa[0].enc_key", "looks like a key, not a path"),
    ({"proposal": KEY}, "sa[0].proposal", "unknown ESP proposal"),
    ({"proposal": "aes128gcm16-" + HEX}, "sa[0].proposal", "is an AEAD cipher"),
    ({"proposal": "aes128-" + HEX}, "sa[0].proposal", "unknown integrity algorithm"),
    ({"spi": int(HEX, 16)}, "sa[0].spi", "is outside 0x100..0xffffffff"),
    ({"spi": KEY + "00"}, "sa[0].spi", "expected an integer"),
    ({"mode": KEY}, "sa[0].mode", "mode must be"),
    ({"src": KEY}, "sa[0].src", "not an IPv4 or IPv6 address"),
    ({"match": {"src": KEY}}, "sa[0].match.src", "not an IP prefix"),
    ({"label": [KEY]}, "sa[0].label", "expected a non-empty string"),
    ({"direction": KEY}, "sa[0].direction", "must be one of in, out"),
    ({HEX: 1}, "sa[0]", "unknown key(s)"),
])
def test_a_key_in_the_wrong_sa_field_is_not_echoed(over, key, says):
    err = _error({"sa": [_sa(**over)]})
    assert err.key == key and says in err.message, str(err)
    assert "11111111" not in str(err) and "deadbeef" not in str(err)


@pytest.mark.parametrize("peer,key", [
    ({"psk": {"env": KEY}}, "peer[0].psk"),
    ({"psk": {"file": KEY}}, "peer[0].psk"),
    ({"name": KEY, "psk": "0x1122"}, "peer[0].psk"),          # the PAD's own message names the peer
    ({"id": KEY}, "peer[0].id"),
    ({"id": "fqdn:x", "ca": KEY, "auth": "pubkey", "psk": None}, "peer[0].ca"),
])
def test_a_key_in_the_wrong_peer_field_is_not_echoed(peer, key):
    base = {"name": "p", "id": "fqdn:p.example", "auth": "psk", "psk": "0x" + "22" * 16}
    t = {k: v for k, v in {**base, **peer}.items() if v is not None}
    try:
        config_from_document({"peer": [t]}, env={})
        text = ""
    except ConfigError as err:
        text = str(err)
        assert err.key == key or key == "peer[0].ca", text
    assert "11111111" not in text and "deadbeef" not in text


@pytest.mark.parametrize("ike,conn", [
    ({"local_id": KEY}, {}),
    ({"cert": KEY}, {}),
    ({"frobnicate" + HEX: 1}, {}),
    ({}, {"esp_proposals": [KEY]}),
    ({}, {"esp_proposals": ["aes128gcm16-" + HEX]}),
    ({}, {"ike_proposals": ["aes128gcm16-prfsha256-" + HEX]}),
    ({}, {"local_ts": [KEY]}),
    ({}, {"remote": KEY}),
    ({}, {"start": KEY}),
    ({}, {"peer": KEY}),
    ({}, {"name": [KEY]}),
])
def test_a_key_in_an_ike_field_is_not_echoed(ike, conn):
    c = {"name": "c", "peer": "p", "remote": "192.0.2.9", "local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16",
         **conn}
    doc = {"ike": ike, "peer": [{"name": "p", "id": "fqdn:p.example", "auth": "psk", "psk": "0x" + "22" * 16}],
           "connection": [c]}
    err = _error(doc)
    assert "11111111" not in str(err) and "deadbeef" not in str(err), str(err)


def test_config_check_stderr_never_shows_the_key(tmp_path):
    """The reported case end to end: enc_key = {env = "0x..."} through `ipsp config check`."""
    f = tmp_path / "c.toml"
    f.write_text(f'[[sa]]\ndirection = "out"\nspi = 0x1001\nsrc = "192.0.2.1"\ndst = "192.0.2.2"\n'
                 f'proposal = "aes128gcm16"\nenc_key = {{env = "{KEY}"}}\n')
    r = subprocess.run([sys.executable, "-m", "ipsp", "config", "check", str(f)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"{f}:sa[0].enc_key: the value of 'env' looks like a key" in r.stderr
    assert HEX not in r.stderr and "11111111" not in r.stderr


@pytest.mark.parametrize("cert", ["missing.pem", "garbage.pem", "/dev/zero"])
def test_config_check_reads_the_certificates_the_daemon_will_read(tmp_path, cert):
    """[ike].cert, key, cacerts and crls are read when the gateway starts; config check reads
    them too (before, a broken certificate passed the check and failed the start)."""
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "key.pem").chmod(0o600)
    f = tmp_path / "c.toml"
    f.write_text(f'[ike]\ncert = "{tmp_path / cert}"\nkey = "{tmp_path / "key.pem"}"\n')
    r = subprocess.run([sys.executable, "-m", "ipsp", "config", "check", str(f)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"{f}:ike: {tmp_path / cert}:"), r.stderr


def test_shown_keeps_ordinary_values_and_hides_keylike_ones():
    assert shown("tunel") == "'tunel'" and shown(7) == "7" and shown(None) == "None"
    assert shown("2001:db8::1") == "'2001:db8::1'"
    for value in (KEY, HEX, HEX.upper(), ":".join(HEX[i:i + 2] for i in range(0, 40, 2)), int(HEX, 16),
                  " ".join(HEX[i:i + 2] for i in range(0, 40, 2))):
        assert "1111" not in shown(value), value
    assert shown("x" * 100_000) == "a string of 100000 characters"
    deep: list = []
    for _ in range(hostile.DEPTH):
        deep = [deep]
    assert shown(deep) == "an array"           # repr() would raise RecursionError


def test_an_error_built_from_another_libraries_text_is_redacted():
    # ConfigError itself hides what a message gets from elsewhere (ipaddress, the kernel)
    err = ConfigError(f"{KEY!r} does not appear to be an IPv4 or IPv6 address", key="x")
    assert HEX not in str(err) and "11111111" not in str(err)
    full = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"
    assert full in str(ConfigError(f"{full} is taken"))


# -- item 8: key files: bounded, regular, and private ---------------------------------------

def test_a_key_file_of_dev_zero_is_refused_at_once():
    err = _error({"sa": [_sa(enc_key={"file": "/dev/zero"})]})
    assert err.key == "sa[0].enc_key" and "is not a regular file" in err.message


def test_a_fifo_as_key_file_does_not_hang(tmp_path):
    fifo = tmp_path / "k"
    os.mkfifo(fifo)
    result: list = []
    t = threading.Thread(target=lambda: result.append(_error({"sa": [_sa(enc_key={"file": str(fifo)})]})),
                         daemon=True)
    t.start()
    t.join(30)
    assert result and "is not a regular file" in result[0].message


def test_a_key_file_above_the_limit_is_refused(tmp_path):
    big = tmp_path / "big.key"
    big.write_text(HEX + " " * KEY_FILE_MAX)
    big.chmod(0o600)
    err = _error({"sa": [_sa(enc_key={"file": str(big)})]})
    assert f"larger than {KEY_FILE_MAX} bytes" in err.message and HEX not in str(err)
    ok = tmp_path / "ok.key"
    ok.write_text(HEX + "\n" + " " * (KEY_FILE_MAX - len(HEX) - 1))
    ok.chmod(0o600)
    assert len(ok.read_bytes()) == KEY_FILE_MAX
    cfg = config_from_document({"sa": [_sa(enc_key={"file": str(ok)})]}, env={})
    assert cfg.sas[0].config.enc_key == bytes.fromhex(HEX)


def test_a_binary_key_file_does_not_show_its_bytes(tmp_path):
    f = tmp_path / "bin.key"
    f.write_bytes(b"\xff" * 20)
    f.chmod(0o600)
    err = _error({"sa": [_sa(enc_key={"file": str(f)})]})
    assert "must hold hex text" in err.message


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "ipsp.config" and r.levelno == logging.WARNING]


def test_exposed_config_and_key_files_warn_once(tmp_path, caplog):
    key = tmp_path / "k.hex"
    key.write_text(HEX)
    key.chmod(0o640)
    conf = tmp_path / "gw.toml"
    conf.write_text('[[peer]]\nname = "p"\nid = "fqdn:p.example"\nauth = "psk"\npsk = "0x' + "22" * 16 + '"\n'
                    f'[[sa]]\ndirection = "out"\nspi = 0x1001\nsrc = "192.0.2.1"\ndst = "192.0.2.2"\n'
                    f'proposal = "aes128gcm16"\nenc_key = {{file = "{key}"}}\n')
    conf.chmod(0o644)
    with caplog.at_level(logging.WARNING, "ipsp.config"):
        load_config(conf)
        load_config(conf)                   # a reload: no second warning
    got = _warnings(caplog)
    assert got == [f"{conf}: this file holds keys and is accessible by group or others (mode 0644): chmod 600 it",
                   f"{conf}:sa[0].enc_key: key file '{key}' is accessible by group or others (mode 0640): "
                   "chmod 600 it"], got
    assert not any(HEX in m or "2222222222" in m for m in got)


def test_private_files_and_references_do_not_warn(tmp_path, caplog):
    key = tmp_path / "k2.hex"
    key.write_text(HEX)
    key.chmod(0o600)
    conf = tmp_path / "ref.toml"          # only references: nothing secret in the file itself
    conf.write_text(f'[[sa]]\ndirection = "out"\nspi = 0x1001\nsrc = "192.0.2.1"\ndst = "192.0.2.2"\n'
                    f'proposal = "aes128gcm16"\nenc_key = {{file = "{key}"}}\n')
    conf.chmod(0o644)
    with caplog.at_level(logging.WARNING, "ipsp.config"):
        load_config(conf)
    assert _warnings(caplog) == []


def test_a_failed_load_says_one_thing(tmp_path, caplog):
    conf = tmp_path / "bad.toml"
    conf.write_text(f'[[sa]]\ndirection = "sideways"\nspi = 0x1001\nsrc = "192.0.2.1"\ndst = "192.0.2.2"\n'
                    f'proposal = "aes128gcm16-modp2048"\nenc_key = "{KEY}"\n')
    conf.chmod(0o644)
    with caplog.at_level(logging.WARNING, "ipsp.config"), pytest.raises(ConfigError):
        load_config(conf)
    assert _warnings(caplog) == []


def test_an_exposed_ike_private_key_warns(tmp_path, caplog):
    pem = tmp_path / "gw.key"
    pem.write_text("-----BEGIN PRIVATE KEY-----\n")
    pem.chmod(0o644)
    with caplog.at_level(logging.WARNING, "ipsp.config"):
        config_from_document({"ike": {"cert": str(tmp_path / "gw.pem"), "key": str(pem)}}, env={})
    assert _warnings(caplog) == [f"ike.key: private key file '{pem}' is accessible by group or others "
                                 "(mode 0644): chmod 600 it"]


# -- item 9: what config check accepts, the daemons accept ----------------------------------

GW = {"local": "198.51.100.1", "address": "10.1.0.1"}


@pytest.mark.parametrize("doc,key,says", [
    ({"engine": {"control_socket": "/run/a\0b"}}, "engine.control_socket", "cannot hold a NUL"),
    ({"engine": {"control_socket": "/run/" + "s" * 120}}, "engine.control_socket", "at most 107 bytes"),
    ({"engine": {"control_socket": "/run/\udcff\ud800"}}, "engine.control_socket", "lone surrogate"),
    ({"peer": [{"name": "p\udcff", "id": "fqdn:p", "auth": "pubkey", "ca": "/a"}]}, "peer[0].name", "lone surrogate"),
    ({"sa": [_sa(label="\ud800")]}, "sa[0].label", "lone surrogate"),
    ({"gateway": {**GW, "tun": "é" * 15}}, "gateway.tun", "at most 15 bytes (this one is 30 as UTF-8)"),
    ({"gateway": {**GW, "tun": "tunà"}}, "gateway.tun", "not a network interface name"),    # c3 a0: isspace
    ({"gateway": {**GW, "tun": "a:b"}}, "gateway.tun", "not a network interface name"),
    ({"gateway": {**GW, "tun": ".."}}, "gateway.tun", "not a network interface name"),
    ({"gateway": {**GW, "tun": "a\u3000b"}}, None, None),         # U+3000 is e3 80 80: Linux takes it
    ({"gateway": {**GW, "local": "fe80::1%eth0", "address": "fe80::2"}}, "gateway.local", "not an IPv4 or IPv6"),
    ({"ike": {"port": 4500}}, "ike.nat_port", "port and nat_port must differ"),
    ({"ike": {"cert": "/etc/a\0.pem", "key": "/etc/k.pem"}}, "ike.cert", "cannot hold a NUL"),
    ({"ike": {"cacerts": ["/etc/ca.pem", "/etc/\0"]}}, "ike.cacerts[1]", "cannot hold a NUL"),
    ({"peer": [{"name": "p", "id": "fqdn:p", "auth": "pubkey", "ca": "/a\0"}]}, "peer[0].ca", "cannot hold a NUL"),
    ({"sa": [_sa(proposal="aes128gmac", enc_key="0x" + "11" * 20, backend="ipsecmb")]}, "sa[0]",
     "AES-GMAC is not offered by the intel-ipsec-mb backend"),
    ({"sa": [_sa(src="fe80::1%eth0", dst="fe80::2")]}, "sa[0].src", "not an IPv4 or IPv6 address"),
    ({"sa": [_sa(spi="9" * 5000)]}, "sa[0].spi", "expected an integer"),
    ({"peer": [{"name": "p", "id": "ip:fe80::1%eth0", "auth": "pubkey", "ca": "/a"}]}, "peer[0].id",
     "is not an IP address"),
])
def test_config_check_refuses_what_the_daemons_refuse(doc, key, says):
    if key is None:
        config_from_document(doc, env={})
        return
    err = _error(doc)
    assert err.key == key and says in err.message, str(err)
    assert len(str(err)) < 300            # a 5000-digit value is described, not repeated


CONN = {"name": "c", "peer": "p", "remote": "198.51.100.2", "local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16"}
PEER = [{"name": "p", "id": "fqdn:p.example", "auth": "psk", "psk": "0x" + "22" * 16}]


@pytest.mark.parametrize("conn,gateway,key,says", [
    ({"replay_window": 5}, None, "connection[0].replay_window", "0 (off) or 32..1048576"),
    ({"local_ts": []}, None, "connection[0].local_ts", "non-empty list"),
    ({"remote_ts": ["10.2.0.0/16", "10.3.0.0/33"]}, None, "connection[0].remote_ts[1]", "not an IP prefix"),
    ({}, {**GW, "outer": "esp"}, "connection[0].encap", 'needs gateway.outer = "udp"'),
    ({"remote": "2001:db8::2"}, GW, "connection[0].remote", "IPv6, the gateway's local address"),
    ({}, {**GW, "udp_port": 500}, "ike.port", "must differ from gateway.udp_port"),
    ({"remote_id": "fqdn:gw\udcff"}, None, "connection[0].remote_id", "lone surrogate"),
    ({"esp_proposals": ["aes128gcm16", "\ud800"]}, None, "connection[0].esp_proposals[1]", "lone surrogate"),
])
def test_connections_fail_at_check_not_at_start(conn, gateway, key, says):
    doc = {"peer": PEER, "connection": [{**CONN, **conn}]}
    if gateway:
        doc["gateway"] = gateway
    err = _error(doc)
    assert err.key == key and says in err.message, str(err)


def test_replay_window_is_one_rule_for_manual_and_ike_sas():
    for window in (1, 31, 2**20 + 1):
        assert "0 (off) or 32..1048576" in _error({"sa": [_sa(replay_window=window)]}).message
        assert "0 (off) or 32..1048576" in _error({"peer": PEER, "connection": [{**CONN, "replay_window": window}]}
                                                  ).message if window <= 2**20 else True


# -- item 14: strongSwan's ESP proposal with a DH group ------------------------------------

def test_a_manual_sa_takes_a_dh_group_and_notes_it_is_ignored(caplog):
    with caplog.at_level(logging.WARNING, "ipsp.config"):
        cfg = config_from_document({"sa": [_sa(proposal="aes128gcm16-modp2048")]}, env={})
    assert cfg.sas[0].config.transform == parse_proposal("aes128gcm16")
    assert _warnings(caplog) == ["sa[0].proposal: the Diffie-Hellman group after aes128gcm16 is ignored: a "
                                 "manually keyed SA has no key exchange (the group means PFS for IKE-keyed "
                                 "Child SAs)"]


@pytest.mark.parametrize("text,name,groups", [
    ("aes128gcm16-modp2048", "aes128gcm16", (14,)),
    ("aes256-sha256-x25519", "aes256-sha256", (31,)),
    ("aes256-sha256-ecp256-ecp384", "aes256-sha256", (19, 20)),
    ("chacha20poly1305-curve25519-x25519", "chacha20poly1305", (31,)),
    ("AES128GCM16-MODP3072", "aes128gcm16", (15,)),
    ("aes128gcm16", "aes128gcm16", ()),
])
def test_one_parser_for_manual_and_ike_esp_proposals(text, name, groups):
    t, g = parse_esp_proposal(text)
    assert (t.name, g) == (name, groups)
    p = parse_esp(text)                         # the IKE side: the same transform, the groups as PFS
    assert (p.name, p.groups) == (name, groups)


@pytest.mark.parametrize("text,says", [
    ("aes128gcm16-modp1024", "aes128gcm16 is an AEAD cipher: it takes no integrity algorithm, and 'modp1024'"),
    ("aes128gcm16-sha256", "aes128gcm16 is an AEAD cipher"),
    ("modp2048-aes128gcm16", "starts with the Diffie-Hellman group modp2048"),
    ("aes128gcm16-modp2048-sha1", "'sha1' after the Diffie-Hellman group modp2048 is not a group"),
    ("aes999-sha256-modp2048", "unknown cipher 'aes999'"),
    ("aes128-sha999-x25519", "unknown integrity algorithm 'sha999' after aes128"),
])
def test_bad_esp_proposals_say_which_part_is_wrong(text, says):
    with pytest.raises(ConfigError) as e:
        parse_esp_proposal(text)
    assert says in e.value.message, e.value.message
    err = _error({"sa": [_sa(proposal=text)]})
    assert err.key == "sa[0].proposal" and says in err.message


def test_an_ike_connection_keeps_the_group_for_pfs():
    cfg = config_from_document({"peer": PEER, "connection": [{**CONN, "esp_proposals": ["aes128gcm16-modp2048"]}]},
                               env={})
    assert cfg.connections[0].esp_proposals[0].groups == (14,)


# -- item 4 (reading): any parse failure is a ConfigError naming the file -------------------

@pytest.mark.parametrize("text", [hostile.deep_toml(), hostile.deep_toml_tables(), "a = " + hostile.LONG_DIGITS],
                         ids=["deep-arrays", "deep-tables", "long-digits"])
def test_read_toml_turns_every_parse_failure_into_config_error(tmp_path, text):
    f = tmp_path / "x.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_toml(f)
    assert e.value.path == str(f) and e.value.key is None
    with pytest.raises(ConfigError):
        load_sa_file(f)
    with pytest.raises(ConfigError):
        load_config(f)


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert e.value.path == str(tmp_path) and "directory" in e.value.message


def test_documents_nested_in_python_raise_config_error_only():
    deep: dict = {}
    for _ in range(hostile.DEPTH):
        deep = {"a": deep}
    for doc in ({"sa": [_sa(match={"src": "10.0.0.0/8", "dst": [deep]})]}, {"defaults": {"match": deep}},
                {"sa": [deep]}, deep):
        with pytest.raises(ConfigError):
            config_from_document(doc, env={})


def test_sa_add_file_reads_through_the_same_reader(tmp_path, capsys):
    """`ipsp sa add --file` used its own tomllib call: a deep file was a traceback."""
    f = tmp_path / "deep.toml"
    f.write_text(hostile.deep_toml())
    rc = cli.main(["sa", "add", "--socket", str(tmp_path / "none.sock"), "--file", str(f)])
    err = capsys.readouterr().err
    assert rc != 0 and err == f"ipsp: {f}: not valid TOML for ipsp: nested too deeply\n"


def test_notes_wait_for_the_outermost_block(caplog):
    with caplog.at_level(logging.WARNING, "ipsp.config"):
        with pytest.raises(ConfigError), notes_on_success("f.toml"):
            sa_from_mapping(_sa(proposal="aes128gcm16-ecp384"), key="sa[7]")
            raise ConfigError("a later error")
        assert _warnings(caplog) == []
        with notes_on_success("f.toml"):
            sa_from_mapping({k: v for k, v in _sa(proposal="aes128gcm16-ecp384").items() if k != "direction"},
                            key="sa[7]")
    assert _warnings(caplog) == ["f.toml:sa[7].proposal: the Diffie-Hellman group after aes128gcm16 is ignored: "
                                 "a manually keyed SA has no key exchange (the group means PFS for IKE-keyed "
                                 "Child SAs)"]


def test_an_error_is_one_line_whatever_its_text():
    from ipsp.pad import PeerAuthorizationDatabase

    with pytest.raises(ConfigError) as e:
        PeerAuthorizationDatabase().authorize("fqdn:a\nFAKE LOG LINE", "192.0.2.1", [])
    assert "\n" not in str(e.value) and "a\\nFAKE" in str(e.value)
