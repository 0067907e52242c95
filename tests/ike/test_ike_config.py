"""[ike] and [[connection]] in the configuration file: what loads, and every refusal naming
its key path (docs/configuration.md)."""

import subprocess
import sys

import pytest

from ipsp.config import config_from_document
from ipsp.errors import ConfigError

PEER = {"name": "b", "id": "fqdn:b.example", "auth": "psk", "psk": "0x" + "11" * 32}
CONN = {"name": "to-b", "peer": "b", "remote": "192.0.2.2", "local_ts": "10.1.0.0/16", "remote_ts": ["10.2.0.0/16"]}


def doc(conn=None, ike=None, peer=None, **extra):
    d = {"peer": [peer or PEER], "connection": [conn or CONN], **extra}
    if ike is not None:
        d["ike"] = ike
    return d


def test_a_connection_with_defaults():
    cfg = config_from_document(doc(ike={"local_id": "fqdn:a.example", "cookie_threshold": 10}))
    (c,) = cfg.connections
    assert (c.name, c.peer, str(c.remote), c.start, c.reqid) == ("to-b", "b", "192.0.2.2", "none", 0x10000)
    assert [p.name for p in c.ike_proposals][0] == "aes128gcm16-prfsha256-x25519"
    assert [p.name for p in c.esp_proposals] == ["aes128gcm16", "aes256-sha256", "chacha20poly1305"]
    assert cfg.ike.cookie_threshold == 10 and str(cfg.ike.local_id) == "fqdn:a.example"


def test_connections_without_ike_table_get_defaults():
    assert config_from_document(doc()).ike.port == 500


@pytest.mark.parametrize("change,key,message", [
    ({"peer": "nobody"}, "connection[0].peer", "no [[peer]] is named 'nobody'"),
    ({"remote": "not-an-address"}, "connection[0].remote", "is not an IPv4 or IPv6 address"),
    ({"local_ts": "10.1.0.0/33"}, "connection[0].local_ts", "10.1.0.0/33"),
    ({"ike_proposals": ["aes128-sha256"]}, "connection[0].ike_proposals[0]", "names no Diffie-Hellman group"),
    ({"ike_proposals": ["aes128gcm16-x25519"]}, "connection[0].ike_proposals[0]", "name its PRF"),
    ({"esp_proposals": ["aes128-md9"]}, "connection[0].esp_proposals[0]", "md9"),
    ({"esp_proposals": ["aes128gcm16-sha256"]}, "connection[0].esp_proposals[0]", "aes128gcm16 is an AEAD cipher: it takes no integrity algorithm"),
    ({"start": "sometimes"}, "connection[0].start", "must be one of none, start, trap"),
    ({"start": "start", "remote": None}, "connection[0].start", "needs 'remote'"),
    ({"jitter": 0.9}, "connection[0].jitter", "0..0.5"),
    ({"child_rekey": 1}, "connection[0].child_rekey", "10"),
    ({"local_id": "nonsense"}, "connection[0].local_id", "must be one of"),
    ({"colour": "blue"}, "connection[0]", "unknown key(s) colour"),
])
def test_bad_connections_name_their_key(change, key, message):
    conn = {k: v for k, v in {**CONN, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        config_from_document(doc(conn))
    assert e.value.key == key and message in e.value.message, (e.value.key, e.value.message)


@pytest.mark.parametrize("ike,key,message", [
    ({"port": 0}, "ike.port", "1..65535"),
    ({"cert": "a.pem"}, "ike.key", "needs its private key"),
    ({"retransmit_tries": 1.5}, "ike.retransmit_tries", "an integer"),
    ({"frobnicate": 1}, "ike", "unknown key(s) frobnicate"),
])
def test_bad_ike_table(ike, key, message):
    with pytest.raises(ConfigError) as e:
        config_from_document(doc(ike=ike))
    assert e.value.key == key and message in e.value.message, (e.value.key, e.value.message)


def test_duplicates_and_clashes():
    with pytest.raises(ConfigError, match="already used by connection\\[0\\]") as e:
        config_from_document({"peer": [PEER], "connection": [CONN, CONN]})
    assert e.value.key == "connection[1].name"
    with pytest.raises(ConfigError, match="reqid 5 is already used by policy") as e:
        config_from_document(doc({**CONN, "reqid": 5}, policy=[{"direction": "out", "action": "protect",
                                                               "src": "10.1.0.0/16", "dst": "10.9.0.0/16",
                                                               "reqid": 5}]))
    pub = {"name": "b", "id": "fqdn:b.example", "auth": "pubkey", "ca": "ca.pem"}
    with pytest.raises(ConfigError, match="needs cert and key") as e:
        config_from_document(doc(peer=pub))
    assert e.value.key == "connection[0].peer"


def test_config_check_prints_connections(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[[peer]]\nname = "b"\nid = "fqdn:b.example"\nauth = "psk"\npsk = "0x' + "22" * 32 + '"\n'
                 '[[connection]]\nname = "to-b"\npeer = "b"\nremote = "192.0.2.2"\nlocal_ts = "10.1.0.0/16"\n'
                 'remote_ts = "10.2.0.0/16"\nstart = "trap"\n')
    r = subprocess.run([sys.executable, "-m", "ipsp", "config", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1 IKE connections" in r.stdout and "connection to-b: peer b at 192.0.2.2" in r.stdout
    assert "22" * 8 not in r.stdout
