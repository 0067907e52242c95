"""SA files and proposals: every error names the file, the key path and what is wrong."""

import pytest

from fastpath import Cipher, Integ
from ipsp import ConfigError, load_sa_file, parse_proposal
from ipsp.transforms import PROPOSALS

K16 = "0x" + "11" * 16
K20 = "0x" + "22" * 20
GOOD = """
[[sa]]
spi = 0x1001
src = "192.0.2.1"
dst = "192.0.2.2"
proposal = "aes128gcm16"
enc_key = "{k}"
""".format(k=K20)


def _load(tmp_path, text, env=None):
    p = tmp_path / "sa.toml"
    p.write_text(text)
    return load_sa_file(p, env=env or {})


BAD = [
    ("[[sa]]\nspi = 1\n", "sa[0]: missing required key 'src'"),
    (GOOD.replace("0x1001", "0x10"), "sa[0].spi: spi 0x10 is outside 0x100..0xffffffff"),
    (GOOD.replace("0x1001", '"zz"'), "sa[0].spi: expected an integer or a '0x...' string"),
    (GOOD.replace('"192.0.2.2"', '"2001:db8::2"'), "sa[0].src: src 192.0.2.1 and dst 2001:db8::2 are of different IP versions"),
    (GOOD.replace('"192.0.2.1"', '"192.0.2.300"'), "sa[0].src: '192.0.2.300' is not an IPv4 or IPv6 address"),
    (GOOD.replace("aes128gcm16", "aes128gcm17"), "sa[0].proposal: unknown ESP proposal 'aes128gcm17'"),
    (GOOD.replace("aes128gcm16", "aes128-sha999"), "sa[0].proposal: unknown integrity algorithm 'sha999'"),
    (GOOD.replace(K20, K16), "sa[0].enc_key: aes128gcm16 needs a 20-byte enc_key (key + 4-byte salt), got 16 bytes"),
    (GOOD.replace(K20, "0xabc"), "sa[0].enc_key: not a valid hex string"),
    (GOOD + 'auth_key = "0x00"\n', "sa[0].auth_key: aes128gcm16 takes no auth_key (AEAD), got 1 bytes"),
    (GOOD.replace("aes128gcm16", "aes128-sha256").replace(K20, K16), "sa[0].auth_key: aes128-sha256 needs a 32-byte auth_key, got 0 bytes"),
    (GOOD + 'mode = "bridge"\n', "sa[0].mode: mode must be 'tunnel' or 'transport', got 'bridge'"),
    (GOOD + 'encap = "tcp"\n', "sa[0].encap: encap must be 'udp' or absent"),
    (GOOD + "replay_window = 16\n", "sa[0].replay_window: replay_window must be 0 (off) or 32..1048576, got 16"),
    (GOOD + "esn = true\nreplay_window = 0\n", "sa[0].replay_window: esn needs a replay window"),
    (GOOD + "esn = 1\n", "sa[0].esn: expected a bool, got 1"),
    (GOOD + 'mode = "transport"\ntfc_pad = 100\n', "sa[0].tfc_pad: tfc_pad needs tunnel mode"),
    (GOOD + "dport = 70000\n", "sa[0].dport: dport must be 1..65535"),
    (GOOD + "colour = 3\n", "sa[0]: unknown key(s) colour"),
    (GOOD + 'match = { src = "10.0.0.0/33" }\n', "sa[0].match.src: '10.0.0.0/33' is not an IP prefix"),
    (GOOD + GOOD, "sa[1].spi: SPI 0x1001 to 192.0.2.2 is already used by sa[0]"),
    ("allow_insecure = 1\n" + GOOD, "allow_insecure: expected true or false"),
    ("sas = []\n", "unknown top-level key(s) sas"),
    ("", "sa: no SAs: expected one or more [[sa]] tables"),
    ("[[sa]\n", "not valid TOML"),
    (GOOD.replace("aes128gcm16", "des-sha1").replace(K20, "0x" + "33" * 8) + f'auth_key = "{K20}"\n',
     "sa[0].proposal: proposal 'des-sha1' is insecure"),
    (GOOD.replace(f'"{K20}"', '{ env = "NOPE" }'), "sa[0].enc_key: environment variable 'NOPE' is not set"),
    (GOOD.replace(f'"{K20}"', '{ file = "/nonexistent/k" }'), "sa[0].enc_key: cannot read key file '/nonexistent/k'"),
    (GOOD.replace(f'"{K20}"', '{ file = 1 }'), "sa[0].enc_key: 'file' must be a path, got 1"),
    (GOOD.replace(f'"{K20}"', '{ env = 1 }'), "sa[0].enc_key: 'env' must name an environment variable, got 1"),
    (GOOD.replace('"192.0.2.2"', "true"), "sa[0].dst: expected an address string, got True"),
    (GOOD + "udp = true\n", "sa[0]: unknown key(s) udp"),
    (GOOD + 'backend = "gpu"\n', "sa[0].backend: backend must be one of auto, openssl, ipsecmb"),
    (GOOD.replace("aes128gcm16", "aes128-sha1").replace(K20, K16) + f'auth_key = "{K20}"\nimplicit_iv = true\n',
     "sa[0].implicit_iv: implicit_iv (RFC 8750) needs an AES-GCM or ChaCha20-Poly1305 proposal"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(":")[0] + "-" + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_sa_files_name_file_key_and_problem(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert str(info.value).startswith(str(tmp_path / "sa.toml") + ":")
    assert message in str(info.value)


def test_keys_from_env_and_file(tmp_path):
    (tmp_path / "k.hex").write_text(K20 + "\n")
    text = GOOD.replace(f'"{K20}"', f'{{ file = "{tmp_path / "k.hex"}" }}')
    assert _load(tmp_path, text)[0].enc_key == b"\x22" * 20
    text = GOOD.replace(f'"{K20}"', '{ env = "IPSP_TEST_KEY" }')
    assert _load(tmp_path, text, env={"IPSP_TEST_KEY": K20})[0].enc_key == b"\x22" * 20


def test_keys_are_never_in_repr(tmp_path):
    sa = _load(tmp_path, GOOD)[0]
    assert "22" * 20 not in repr(sa) and "enc_key=" not in repr(sa)


def test_every_listed_proposal_parses_and_builds_kernel_state():
    for name in PROPOSALS:
        t = parse_proposal(name)
        assert t.name == name
        import ipaddress
        from ipsp import SAConfig
        sa = SAConfig(spi=0x1234, src=ipaddress.ip_address("192.0.2.1"), dst=ipaddress.ip_address("192.0.2.2"),
                      transform=t, enc_key=bytes(t.enc_key_len), auth_key=bytes(t.auth_key_len), allow_insecure=True)
        st = sa.make_state()
        assert st.icv_len == t.icv_len and st.iv_len == t.iv_len
        st.close()


@pytest.mark.parametrize("word,cipher,integ,icv", [
    ("aes128gcm16", Cipher.CIPHER_AES_GCM, Integ.INTEG_NONE, 16),
    ("aes256gcm128", Cipher.CIPHER_AES_GCM, Integ.INTEG_NONE, 16),
    ("aes128gcm64", Cipher.CIPHER_AES_GCM, Integ.INTEG_NONE, 8),
    ("AES192GCM12", Cipher.CIPHER_AES_GCM, Integ.INTEG_NONE, 12),
    ("aes256-sha2_512", Cipher.CIPHER_AES_CBC, Integ.INTEG_HMAC_SHA512_256, 32),
    ("3des-sha1", Cipher.CIPHER_3DES_CBC, Integ.INTEG_HMAC_SHA1_96, 12),
    ("aes256ctr-sha384", Cipher.CIPHER_AES_CTR, Integ.INTEG_HMAC_SHA384_192, 24),
    ("null-sha256", Cipher.CIPHER_NULL, Integ.INTEG_HMAC_SHA256_128, 16),
])
def test_strongswan_keywords_and_aliases(word, cipher, integ, icv):
    t = parse_proposal(word)
    assert (t.cipher, t.integ, t.icv_len) == (cipher, integ, icv)


def test_legacy_flags_follow_rfc8221():
    assert parse_proposal("des-sha1").legacy and parse_proposal("aes128-md5").legacy
    assert not parse_proposal("3des-sha1").legacy and not parse_proposal("aes128gcm16").legacy


def test_a_binary_key_file_is_a_config_error(tmp_path):
    (tmp_path / "k").write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="must hold hex text"):
        _load(tmp_path, GOOD.replace(f'"{K20}"', f'{{ file = "{tmp_path / "k"}" }}'))
