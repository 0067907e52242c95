"""The configuration file: the example loads into the expected objects; every file of the bad
corpus fails with the file, the key path and the message its first line names; and mutating a
valid document never produces anything but a Config or a ConfigError."""

import copy
import dataclasses
import ipaddress
import pathlib
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsp import ConfigError, load_sa_file
from ipsp.config import Config, EngineSettings, ManualSA, config_from_document, load_config
from ipsp.sad import Lifetime, Lifetimes
from ipsp.spd import ANY, Action, Direction, PolicySelector

HERE = pathlib.Path(__file__).parent
FULL = HERE / "good_configs" / "full.toml"
BAD = sorted((HERE / "bad_configs").glob("*.toml"))
A, N = ipaddress.ip_address, ipaddress.ip_network
K_OUT = "0x" + "11" * 20
PSK = b"\x44" * 32


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The example, its PSK file moved to a temporary directory; and the env it needs."""
    d = tmp_path_factory.mktemp("cfg")
    (d / "gw2.psk").write_text("0x" + PSK.hex() + "\n")
    path = d / "full.toml"
    path.write_text(FULL.read_text().replace("/etc/ipsp/gw2.psk", str(d / "gw2.psk")))
    return path, {"IPSP_GW2_OUT": K_OUT}


def test_example_loads_into_the_expected_objects(full):
    path, env = full
    cfg = load_config(path, env=env)
    assert cfg.path == str(path)
    assert cfg.engine == EngineSettings(5.0, "/run/ipsp/engine.sock", 1.0)
    assert dict(cfg.defaults)["proposal"] == "aes128gcm16"

    gw2, rw = cfg.peers
    assert (gw2.name, gw2.auth, gw2.psk) == ("gw2", "psk", PSK)                  # from the file
    assert [str(i) for i in gw2.identities] == ["fqdn:gw2.example.net", "ip:198.51.100.2"]
    assert gw2.addresses == (N("198.51.100.2/32"),) and gw2.allowed == (N("10.2.0.0/16"),)
    assert (rw.auth, rw.ca, rw.psk, rw.addresses) == ("pubkey", "/etc/ipsp/ca.pem", None, ())
    assert rw.allowed == (N("10.3.7.0/24"), N("2001:db8:7::/48"))

    dns, ping, out, inb, drop6 = cfg.policies
    assert (dns.action, dns.direction, dns.priority) == (Action.BYPASS, Direction.OUT, 10)
    assert dns.selector == PolicySelector(N("0.0.0.0/0"), N("10.2.0.53/32"), 17, (0, 65535), (53, 53))
    # RFC 4301 4.4.1.3: ICMP type in the source port range, code in the destination one
    assert ping.selector == PolicySelector(N("10.1.0.0/16"), N("0.0.0.0/0"), 1, (8, 8), (0, 0))
    assert (out.action, out.reqid, out.label, out.priority) == (Action.PROTECT, 1, "secret", 1000)
    assert out.selector == PolicySelector(N("10.1.0.0/16"), N("10.2.0.0/16"), ANY)
    assert (inb.direction, inb.selector.proto, inb.selector.sport) == (Direction.IN, 6, (1024, 65535))
    assert drop6.action == Action.DISCARD and drop6.selector.dst == N("::/0")        # any of src's family

    sa_out, sa_in, *group = cfg.sas
    default_life = Lifetimes(Lifetime(bytes=900_000_000, add_seconds=3000.0),
                             Lifetime(bytes=1_000_000_000, add_seconds=3600.0))
    assert (sa_out.direction, sa_out.reqid, sa_out.label, sa_out.group_source) == ("out", 1, "secret", None)
    assert sa_out.config.enc_key == bytes.fromhex(K_OUT[2:])                          # from env
    assert sa_out.config.transform.name == "aes128gcm16" and sa_out.config.replay_window == 2048
    assert sa_out.lifetimes == default_life
    assert sa_in.direction == "in" and sa_in.config.udp
    # the SA's lifetime table overrides the defaults key by key
    assert sa_in.lifetimes == Lifetimes(Lifetime(bytes=400_000_000, add_seconds=3000.0),
                                        Lifetime(bytes=1_000_000_000, add_seconds=3600.0, use_seconds=600.0))
    # per-sender replay: one inbound SA per sender, same keys, each its own group_source
    assert [g.group_source for g in group] == [A("198.51.100.7"), A("198.51.100.8")]
    assert all(g.config is group[0].config and g.direction == "in" for g in group)
    assert group[0].config.transform.name == "aes256gcm16" and group[0].config.dst == A("233.252.0.1")


def test_the_documented_example_loads(full):
    """docs/configuration.md's complete example is the same configuration as full.toml."""
    doc = (HERE.parents[1] / "docs" / "configuration.md").read_text()
    text = doc.split("## A complete example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    text = text.replace("/etc/ipsp/gw2.psk", str(full[0].parent / "gw2.psk"))
    documented = config_from_document(tomllib.loads(text), env=full[1])
    example = load_config(full[0], env=full[1])
    assert (documented.engine, documented.peers, documented.sas) == (example.engine, example.peers, example.sas)
    assert documented.defaults == example.defaults
    # policy ids are unique per object, so compare the rest
    assert [dataclasses.replace(p, id=0) for p in documented.policies] == \
        [dataclasses.replace(p, id=0) for p in example.policies]


def test_config_is_immutable_and_keeps_secrets_out_of_repr(full):
    cfg = load_config(*full[:1], env=full[1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sas = ()
    with pytest.raises(TypeError):
        cfg.defaults["proposal"] = "x"
    with pytest.raises(TypeError):
        cfg.defaults["lifetime"]["hard_bytes"] = 1
    assert isinstance(cfg.peers, tuple) and isinstance(cfg.policies, tuple) and isinstance(cfg.sas, tuple)
    text = repr(cfg)
    assert "11" * 20 not in text and "44" * 32 not in text and "22" * 20 not in text


def test_minimal_documents():
    cfg = config_from_document({})
    assert cfg == Config(None, EngineSettings(), cfg.defaults, (), (), ())
    sa = {"direction": "in", "spi": 0x100, "src": "192.0.2.1", "dst": "233.252.0.9",
          "proposal": "aes128gcm16", "enc_key": K_OUT}
    (msa,) = config_from_document({"sa": [dict(sa, source="192.0.2.1")]}).sas
    assert msa == ManualSA(msa.config, "in", group_source=A("192.0.2.1"))             # a shared group SA
    (msa,) = config_from_document({"sa": [dict(sa, replay="off")]}).sas
    assert msa.config.replay_window == 0 and msa.group_source is None


def test_protect_policy_without_its_sa_is_fine():
    doc = {"policy": [{"action": "protect", "src": "10.1.0.0/16", "dst": "10.2.0.0/16", "reqid": 7}]}
    assert config_from_document(doc).policies[0].reqid == 7                             # IKE supplies it later


def test_trace_sa_files_still_load(full):
    path = full[0].parent / "sa.toml"
    path.write_text(f'[[sa]]\nspi = 0x1001\nsrc = "192.0.2.1"\ndst = "192.0.2.2"\n'
                    f'proposal = "aes128gcm16"\nenc_key = "{K_OUT}"\n')
    assert load_sa_file(path)[0].spi == 0x1001


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert info.value.path == str(tmp_path / "missing.toml") and info.value.key is None


def _expectation(path):
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <key> | <message>'"
    key, _, message = first[len("# expect: "):].partition(" | ")
    return (None if key == "-" else key), message


def test_the_corpus_is_large_enough():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config(path):
    key, message = _expectation(path)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    err = info.value
    assert (err.path, err.key) == (str(path), key), err
    assert message in err.message


# -- mutations of a valid document --------------------------------------------------------

def _paths(node, prefix=()):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


# every TOML value type, with awkward members (huge, negative, NaN, NUL, empty)
_VALUES = st.one_of(
    st.integers(-2**70, 2**70), st.sampled_from([10**400, -10**400, 2**64]), st.floats(), st.booleans(), st.text(max_size=12),
    st.sampled_from(["", "in", "out", "0x", "\0", "any", "-", "1-", "::", "224.0.0.1", "per-sender"]),
    st.dates(), st.datetimes(), st.times(),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.sampled_from(["file", "env", "x", "soft_bytes"]), st.one_of(st.integers(), st.text(max_size=4)),
                    max_size=2),
)


@pytest.fixture(scope="module")
def full_doc(full):
    path, env = full
    with open(path, "rb") as f:
        return tomllib.load(f), env


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_documents_load_or_raise_config_error(full_doc, data):
    base, env = full_doc
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        if not paths:
            break
        *parent_path, last = data.draw(st.sampled_from(paths))
        parent = doc
        for k in parent_path:
            parent = parent[k]
        if data.draw(st.booleans()):
            del parent[last]                              # drop a key (or an array element)
        else:
            parent[last] = data.draw(_VALUES)             # a value of (usually) the wrong type
    before = copy.deepcopy(doc)
    try:
        cfg = config_from_document(doc, path="mutated.toml", env=env)
    except ConfigError as exc:
        assert exc.path == "mutated.toml"
    else:
        assert isinstance(cfg, Config)
    assert doc == before                                       # loading is pure: the document is untouched
