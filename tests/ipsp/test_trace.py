"""``ipsp trace encrypt|decrypt`` end to end over capture files, against scapy."""

import os
import struct

import pytest
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import ARP, Ether
from scapy.utils import PcapNgWriter, rdpcap

from ipsp import gen, pcap
from ipsp.cli import main

GCM_KEY = bytes(range(16)) + b"salt"
CBC_KEY, SHA_KEY = bytes(range(32, 48)), bytes(range(64, 84))
MACS = bytes.fromhex("020000000001020000000002")


def _eth(ip: bytes) -> bytes:
    return MACS + (b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd") + ip


def _sa_file(tmp_path, body: str) -> str:
    p = tmp_path / "sa.toml"
    p.write_text(body)
    return str(p)


def _write(path, frames, linktype=pcap.LINKTYPE_ETHERNET):
    with pcap.TraceWriter(str(path), linktype) as w:
        for i, f in enumerate(frames):
            w.write(f, 1_700_000_000_000_000_000 + i * 1000)


def _read(path):
    with pcap.open_trace(str(path)) as t:
        return [bytes(t.frame(i)) for i in range(t.count)], list(t.timestamps)


CBC_TUNNEL = f"""
[[sa]]
spi = 0x2002
src = "198.51.100.1"
dst = "198.51.100.2"
proposal = "aes128-sha1"
enc_key = "0x{CBC_KEY.hex()}"
auth_key = "0x{SHA_KEY.hex()}"
"""

GCM_TUNNEL = f"""
[[sa]]
spi = "0x00001001"
src = "192.0.2.1"
dst = "192.0.2.2"
proposal = "aes128gcm16"
enc_key = "0x{GCM_KEY.hex()}"
"""


def test_encrypt_then_decrypt_restores_every_frame(tmp_path, capsys):
    packets = gen.imix_packets(300, seed=7)
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ARP())
    frames = [_eth(p) for p in packets[:150]] + [arp] + [_eth(p) for p in packets[150:]]
    _write(tmp_path / "plain.pcap", frames)
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap")]) == 0
    assert "301 packets read: 300 processed, 1 passed through unchanged, 0 dropped" in capsys.readouterr().out
    esp, ts = _read(tmp_path / "esp.pcap")
    assert len(esp) == 301 and esp[150] == arp
    assert all(f[12:14] == b"\x08\x00" and f[14 + 9] == 50 for i, f in enumerate(esp) if i != 150)
    assert main(["trace", "decrypt", "--sa", sa, str(tmp_path / "esp.pcap"), str(tmp_path / "back.pcap")]) == 0
    back, ts2 = _read(tmp_path / "back.pcap")
    assert back == frames and ts2 == ts


def test_scapy_decrypts_our_capture_and_we_decrypt_scapys(tmp_path):
    packets = gen.imix_packets(40, seed=3)
    _write(tmp_path / "plain.pcap", [_eth(p) for p in packets])
    sa = _sa_file(tmp_path, CBC_TUNNEL)
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap")]) == 0
    ssa = SecurityAssociation(ESP, spi=0x2002, crypt_algo="AES-CBC", crypt_key=CBC_KEY, auth_algo="HMAC-SHA1-96",
                              auth_key=SHA_KEY, tunnel_header=IP(src="198.51.100.1", dst="198.51.100.2"))
    ours = rdpcap(str(tmp_path / "esp.pcap"))
    assert [bytes(ssa.decrypt(f[IP])) for f in ours] == packets
    # the other way: scapy encrypts (its sequence numbers start at 0), we decrypt the capture
    ssa2 = SecurityAssociation(ESP, spi=0x2002, crypt_algo="AES-CBC", crypt_key=CBC_KEY, auth_algo="HMAC-SHA1-96",
                               auth_key=SHA_KEY, tunnel_header=IP(src="198.51.100.1", dst="198.51.100.2"), seq_num=1)
    _write(tmp_path / "scapy.pcap", [_eth(bytes(ssa2.encrypt(IP(p)))) for p in packets])
    assert main(["trace", "decrypt", "--sa", sa, str(tmp_path / "scapy.pcap"), str(tmp_path / "back.pcap")]) == 0
    assert [f[14:] for f in _read(tmp_path / "back.pcap")[0]] == packets


def test_failures_are_counted_per_reason_and_left_out(tmp_path, capsys):
    packets = gen.imix_packets(20, seed=5)
    _write(tmp_path / "plain.pcap", [_eth(p) for p in packets])
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    main(["trace", "encrypt", "--sa", sa, str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap")])
    esp, _ = _read(tmp_path / "esp.pcap")
    bad = [bytearray(f) for f in esp]
    bad[3][-1] ^= 1                         # ICV
    bad[4] = bad[4][:40]                    # truncated (outer length now lies)
    bad.append(bytearray(esp[5]))           # replay
    _write(tmp_path / "bad.pcap", bad)
    capsys.readouterr()
    assert main(["trace", "decrypt", "--sa", sa, str(tmp_path / "bad.pcap"), str(tmp_path / "back.pcap")]) == 0
    out = capsys.readouterr().out
    assert "21 packets read: 18 processed, 0 passed through unchanged, 3 dropped" in out
    for reason in ("ICV_FAIL", "TRUNCATED", "REPLAY"):
        assert f"1  {reason}:" in out
    assert len(_read(tmp_path / "back.pcap")[0]) == 18


CBC_SHA1 = f"""
[[sa]]
spi = 0x2002
src = "198.51.100.1"
dst = "198.51.100.2"
proposal = "3des-sha1"
allow_insecure = true
enc_key = "0x{bytes(range(100, 124)).hex()}"
"""


def test_no_verify_decrypts_with_only_the_cipher_key(tmp_path, capsys):
    packets = gen.imix_packets(10, seed=9)
    _write(tmp_path / "plain.pcap", [_eth(p) for p in packets])
    both = _sa_file(tmp_path, CBC_SHA1 + f'auth_key = "0x{SHA_KEY.hex()}"\n')
    assert main(["trace", "encrypt", "--sa", both, str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap")]) == 0
    esp, _ = _read(tmp_path / "esp.pcap")
    (tmp_path / "cipher-only.toml").write_text(CBC_SHA1)          # no auth_key at all
    only = str(tmp_path / "cipher-only.toml")
    capsys.readouterr()
    # verifying needs the integrity key: refused by name, nothing written
    assert main(["trace", "decrypt", "--sa", only, str(tmp_path / "esp.pcap"), str(tmp_path / "x.pcap")]) == 1
    assert "sa[0].auth_key: 3des-sha1 needs a 20-byte auth_key" in capsys.readouterr().err
    assert not (tmp_path / "x.pcap").exists()
    # --no-verify: the ICV is stripped by its length, the plaintext comes back
    assert main(["trace", "decrypt", "--sa", only, "--no-verify", str(tmp_path / "esp.pcap"),
                 str(tmp_path / "y.pcap")]) == 0
    assert "10 processed" in capsys.readouterr().out
    assert [f[14:] for f in _read(tmp_path / "y.pcap")[0]] == packets
    # and it is truly unchecked: destroyed ICVs make no difference
    _write(tmp_path / "noicv.pcap", [f[:-12] + bytes(12) for f in esp])
    assert main(["trace", "decrypt", "--sa", only, "--no-verify", str(tmp_path / "noicv.pcap"),
                 str(tmp_path / "z.pcap")]) == 0
    assert [f[14:] for f in _read(tmp_path / "z.pcap")[0]] == packets
    assert main(["trace", "decrypt", "--sa", both, str(tmp_path / "noicv.pcap"), str(tmp_path / "w.pcap")]) == 1
    assert "10  ICV_FAIL" in capsys.readouterr().out


def test_an_sa_without_its_integrity_key_never_encrypts(tmp_path):
    from ipsp import trace
    from ipsp.config import load_sa_file

    _write(tmp_path / "plain.pcap", [_eth(p) for p in gen.imix_packets(3)])
    sas = load_sa_file(_sa_file(tmp_path, CBC_SHA1), icv_unchecked=True)
    with pytest.raises(ValueError, match="can only decrypt"):
        trace.encrypt_trace(str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap"), sas)
    assert not (tmp_path / "esp.pcap").exists()


def test_transport_mode_udp_encap_over_pcapng(tmp_path):
    packets = [gen.ipv4_udp(100 + i, bytes([192, 0, 2, 10]), bytes([192, 0, 2, 20]), 5000, 6000, i, i) for i in range(12)]
    other = gen.ipv4_udp(64, bytes([192, 0, 2, 99]), bytes([192, 0, 2, 20]), 1, 2, 0, 0)
    w = PcapNgWriter(str(tmp_path / "plain.pcapng"))
    for p in packets + [other]:
        w.write(Ether(_eth(p)))
    w.close()
    sa = _sa_file(tmp_path, f"""
[[sa]]
spi = 0x3003
src = "192.0.2.10"
dst = "192.0.2.20"
proposal = "chacha20poly1305"
enc_key = "0x{os.urandom(36).hex()}"
mode = "transport"
encap = "udp"
""")
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "plain.pcapng"), str(tmp_path / "esp.pcap")]) == 0
    esp, _ = _read(tmp_path / "esp.pcap")
    assert all(struct.unpack("!HH", f[14 + 20:14 + 24]) == (4500, 4500) for f in esp[:12])
    assert esp[12][14:] == other
    assert main(["trace", "decrypt", "--sa", sa, str(tmp_path / "esp.pcap"), str(tmp_path / "back.pcap")]) == 0
    assert [f[14:] for f in _read(tmp_path / "back.pcap")[0]] == packets + [other]


def test_damaged_capture_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.pcap").write_bytes(b"\x00" * 40)
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    # a bad file is exit 1 (docs/cli.md), and nothing is written
    assert main(["trace", "decrypt", "--sa", sa, str(tmp_path / "bad.pcap"), str(tmp_path / "o.pcap")]) == 1
    assert "bad.pcap: offset 0" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bad.pcap", "sa.toml"]


@pytest.mark.parametrize("proposal", ["des-sha1", "des-md5", "aes128-md5"])
def test_legacy_transforms_need_allow_insecure(tmp_path, capsys, proposal):
    body = f"""
[[sa]]
spi = 0x4004
src = "192.0.2.1"
dst = "192.0.2.2"
proposal = "{proposal}"
enc_key = "0x{os.urandom(8 if proposal.startswith('des') else 16).hex()}"
auth_key = "0x{os.urandom(20 if proposal.endswith('sha1') else 16).hex()}"
"""
    sa = _sa_file(tmp_path, body)
    _write(tmp_path / "p.pcap", [_eth(gen.ipv4_udp(60, bytes(4), bytes(4), 1, 2, 0, 0))])
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "p.pcap"), str(tmp_path / "o.pcap")]) == 1
    err = capsys.readouterr().err
    assert "sa.toml:sa[0].proposal" in err and "allow_insecure" in err
    sa = _sa_file(tmp_path, "allow_insecure = true\n" + body)
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "p.pcap"), str(tmp_path / "o.pcap")]) == 0


# -- outputs never harm an input, appear whole or not at all (issue 11 item 3) ---------------

def _snapshot(folder):
    return {p.name: (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir")
            for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("action", ["encrypt", "decrypt"])
@pytest.mark.parametrize("how", ["same-name", "symlink", "hard-link", "the-sa-file", "relative-path"])
def test_an_output_that_is_an_input_is_refused_and_nothing_changes(tmp_path, capsys, monkeypatch, action, how):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "in.pcap", [_eth(p) for p in gen.imix_packets(20)])
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    if action == "decrypt":
        assert main(["trace", "encrypt", "--sa", sa, "in.pcap", "esp.pcap"]) == 0
        os.replace("esp.pcap", "in.pcap")
    out = {"same-name": "in.pcap", "symlink": "link.pcap", "hard-link": "hard.pcap", "the-sa-file": sa,
           "relative-path": "./sub/../in.pcap"}[how]
    if how == "symlink":
        os.symlink("in.pcap", "link.pcap")
    elif how == "hard-link":
        os.link("in.pcap", "hard.pcap")
    elif how == "relative-path":
        os.mkdir("sub")
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(["trace", action, "--sa", sa, str(tmp_path / "in.pcap"), out]) == 1
    err = capsys.readouterr().err
    assert "is the same file as the input" in err and err.count("\n") == 1
    assert _snapshot(tmp_path) == before            # input intact, no temporary file left


def test_a_run_that_fails_midway_leaves_the_old_output_and_no_temporary_file(tmp_path, monkeypatch):
    _write(tmp_path / "in.pcap", [_eth(p) for p in gen.imix_packets(9000)])
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    (tmp_path / "out.pcap").write_bytes(b"the previous output")
    real = pcap.TraceWriter.write
    calls = []

    def failing(self, *a, **kw):
        calls.append(1)
        if len(calls) == 5000:                    # the second chunk: the first is already on disk
            raise OSError(28, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(pcap.TraceWriter, "write", failing)
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap")]) == 1
    assert (tmp_path / "out.pcap").read_bytes() == b"the previous output"
    assert sorted(os.listdir(tmp_path)) == ["in.pcap", "out.pcap", "sa.toml"]


def test_the_output_keeps_a_symlink_and_is_created_with_the_umask(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "in.pcap", [_eth(p) for p in gen.imix_packets(5)])
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    os.mkdir("real")
    os.symlink("real/out.pcap", "out.pcap")      # dangling until written
    old = os.umask(0o027)
    try:
        assert main(["trace", "encrypt", "--sa", sa, "in.pcap", "out.pcap"]) == 0
    finally:
        os.umask(old)
    assert os.path.islink("out.pcap") and len(_read("real/out.pcap")[0]) == 5
    assert os.stat("real/out.pcap").st_mode & 0o777 == 0o640


# -- file errors: one line naming the file, exit 1; usage errors exit 2 (item 10) -------------

@pytest.mark.parametrize("case, words", [
    ("missing-input", "nope.pcap: No such file or directory"),
    ("missing-output-dir", "directory"),
    ("input-is-a-directory", "adir: is a directory"),
    ("output-is-a-directory", "adir: is a directory"),
    ("sa-missing", "none.toml: No such file or directory"),
    ("sa-is-a-directory", "adir: is a directory"),
    ("sa-is-dev-zero", "/dev/zero: is not a regular file"),
    ("sa-not-toml", "bad.toml: not valid TOML"),
    ("input-garbage", "junk.pcap: offset 0: unknown magic number"),
])
def test_file_errors_are_one_line_exit_1_and_write_nothing(tmp_path, capsys, monkeypatch, case, words):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "in.pcap", [_eth(p) for p in gen.imix_packets(5)])
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    os.mkdir("adir")
    (tmp_path / "bad.toml").write_text("[[sa]\n")
    (tmp_path / "junk.pcap").write_bytes(b"\xff" * 100)
    args = {"missing-input": [sa, "nope.pcap", "o.pcap"], "missing-output-dir": [sa, "in.pcap", "no/dir/o.pcap"],
            "input-is-a-directory": [sa, "adir", "o.pcap"], "output-is-a-directory": [sa, "in.pcap", "adir"],
            "sa-missing": ["none.toml", "in.pcap", "o.pcap"], "sa-is-a-directory": ["adir", "in.pcap", "o.pcap"],
            "sa-is-dev-zero": ["/dev/zero", "in.pcap", "o.pcap"], "sa-not-toml": ["bad.toml", "in.pcap", "o.pcap"],
            "input-garbage": [sa, "junk.pcap", "o.pcap"]}[case]
    before = _snapshot(tmp_path)
    assert main(["trace", "encrypt", "--sa", *args]) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("content", [b"", "pcapng-header-only", "pcap-header-only"])
def test_an_empty_capture_is_valid_and_gives_an_empty_one(tmp_path, capsys, content):
    if content == "pcapng-header-only":
        content = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    elif content == "pcap-header-only":
        content = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    (tmp_path / "empty.pcap").write_bytes(content)
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    for action in ("encrypt", "decrypt"):
        assert main(["trace", action, "--sa", sa, str(tmp_path / "empty.pcap"), str(tmp_path / "o.pcap")]) == 0
        assert "0 packets read" in capsys.readouterr().out
        assert _read(tmp_path / "o.pcap") == ([], [])


def test_a_decrypt_that_drops_every_packet_exits_1_and_writes_nothing(tmp_path, capsys):
    _write(tmp_path / "plain.pcap", [_eth(p) for p in gen.imix_packets(12)])
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap")]) == 0
    wrong = _sa_file(tmp_path, GCM_TUNNEL.replace(GCM_KEY.hex(), bytes(20).hex()))
    capsys.readouterr()
    assert main(["trace", "decrypt", "--sa", wrong, str(tmp_path / "esp.pcap"), str(tmp_path / "back.pcap")]) == 1
    out, err = capsys.readouterr()
    assert "12 packets read: 0 processed, 0 passed through unchanged, 12 dropped" in out and "12  ICV_FAIL" in out
    assert "no packet could be decrypted" in err and err.count("\n") == 1
    assert not (tmp_path / "back.pcap").exists()


# -- tcpdump and Wireshark secrets files (item 11) ---------------------------------------------

PLAIN_FIELDS = "ip.src,ip.dst,ip.id,udp.srcport,udp.dstport,udp.length,udp.checksum".split(",")


def _tshark(path, config_dir=None):
    """tshark's view of each packet's innermost IP/UDP fields (and whether it found an ICV bad)."""
    import shutil
    import subprocess
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir or path.parent / "no-config")}
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=l", "-E", "separator=|"]
    for f in PLAIN_FIELDS + ["esp.icv_bad"]:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.splitlines()]


WS_ESP_SA = ('"IPv4","198.51.100.1","198.51.100.2","0x00002002","AES-CBC [RFC3602]","0x{enc}",'
             '"HMAC-SHA-1-96 [RFC2404]","0x{auth}"\n'
             '"IPv4","*","192.0.2.2","0x00001001","AES-GCM with 16 octet ICV [RFC4106]","0x{gcm}","NULL",""\n')


def _two_sa_capture(tmp_path):
    """A capture with a CBC/HMAC tunnel and a GCM tunnel, written by our encrypt."""
    a = [gen.ipv4_udp(100 + i, bytes([10, 1, 0, i]), bytes([10, 2, 0, 1]), 1000 + i, 53, i, i) for i in range(15)]
    b = [gen.ipv4_udp(60 + i, bytes([10, 3, 0, i]), bytes([10, 4, 0, 1]), 2000 + i, 123, i, i) for i in range(15)]
    _write(tmp_path / "plain.pcap", [_eth(p) for pair in zip(a, b) for p in pair])
    sa = _sa_file(tmp_path, CBC_TUNNEL + 'match = { src = "10.1.0.0/16" }\n' + GCM_TUNNEL + 'match = { src = "10.3.0.0/16" }\n')
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap")]) == 0
    return [_eth(p) for pair in zip(a, b) for p in pair]


def test_wireshark_esp_sa_file_decrypts_what_tshark_decrypts(tmp_path, capsys):
    frames = _two_sa_capture(tmp_path)
    conf = tmp_path / "wireshark"
    conf.mkdir()
    (conf / "esp_sa").write_text("# This file is automatically generated, DO NOT MODIFY.\n"
                                 + WS_ESP_SA.format(enc=CBC_KEY.hex(), auth=SHA_KEY.hex(), gcm=GCM_KEY.hex()))
    (conf / "preferences").write_text("esp.enable_encryption_decode: TRUE\nesp.enable_authentication_check: TRUE\n")
    capsys.readouterr()
    assert main(["trace", "decrypt", "--secrets", str(conf / "esp_sa"), str(tmp_path / "esp.pcap"),
                 str(tmp_path / "back.pcap")]) == 0
    out = capsys.readouterr().out
    assert "30 packets read: 30 processed" in out and "unchecked" not in out    # both SAs verified
    assert _read(tmp_path / "back.pcap")[0] == frames
    # tshark, given the same file, sees the same inner packets in our ESP, and no bad ICV
    theirs = _tshark(tmp_path / "esp.pcap", conf)
    ours = _tshark(tmp_path / "back.pcap")
    assert [row[:-1] for row in theirs] == [row[:-1] for row in ours] and len(ours) == 30
    assert all(row[0] for row in theirs) and "1" not in [row[-1] for row in theirs]


def test_tcpdump_espsecret_file_decrypts_with_only_the_cipher_key(tmp_path, capsys):
    frames = _two_sa_capture(tmp_path)
    (tmp_path / "espsecret").write_text(
        "# spi@dst algo:secret, as tcpdump -E takes them\n\n"
        f"0x2002@198.51.100.2 aes128-cbc-hmac96:0x{CBC_KEY.hex()}\n")
    capsys.readouterr()
    assert main(["trace", "decrypt", "--secrets", str(tmp_path / "espsecret"), str(tmp_path / "esp.pcap"),
                 str(tmp_path / "back.pcap")]) == 0
    out = capsys.readouterr().out
    assert "30 packets read: 15 processed, 15 passed through unchanged, 0 dropped" in out
    assert "ICVs stripped unchecked" in out and "0x00002002 to 198.51.100.2" in out
    back = _read(tmp_path / "back.pcap")[0]
    assert back[0::2] == frames[0::2]
    # an ASCII secret works as in tcpdump: the text's bytes are the key
    (tmp_path / "espsecret").write_text("4097@192.0.2.2 aes128-cbc-hmac96:0123456789abcdef\n")
    text_sa = _sa_file(tmp_path, """
[[sa]]
spi = 4097
src = "192.0.2.1"
dst = "192.0.2.2"
proposal = "aes128-md5"
allow_insecure = true
enc_key = "0x30313233343536373839616263646566"
auth_key = "0x000102030405060708090a0b0c0d0e0f"
""")
    assert main(["trace", "encrypt", "--sa", text_sa, str(tmp_path / "plain.pcap"), str(tmp_path / "md5.pcap")]) == 0
    assert main(["trace", "decrypt", "--secrets", str(tmp_path / "espsecret"), str(tmp_path / "md5.pcap"),
                 str(tmp_path / "back2.pcap")]) == 0
    assert _read(tmp_path / "back2.pcap")[0] == [f for f in _read(tmp_path / "plain.pcap")[0]]


KEY = "0x" + "ab" * 16


@pytest.mark.parametrize("body, words", [
    (f"0x2002@198.51.100.2 {KEY}\n", "line 1: expected ALGO:SECRET"),
    (f"0x2002@198.51.100.2 {KEY}:{KEY}\n", "line 1: unknown algorithm"),
    (f"0x2002@198.51.100.2 aes128-cbc:{KEY}\n", "line 1: the algorithm needs -hmac96"),
    (f"# c\n0x2002@{KEY} aes128-cbc-hmac96:{KEY}\n", "line 2: the address after @ is not"),
    (f"0x2002@198.51.100.2 aes256-cbc-hmac96:{KEY}\n", "needs a 32-byte enc_key, got 16 bytes"),
    (f"0x2002@198.51.100.2 aes128-cbc-hmac96:0x{'zz' * 16}\n", "line 1: the secret is not valid hex"),
    (f"aes128-cbc-hmac96:{KEY}\n", "a default SA without SPI@DST is not supported"),
    (f'"IPv4","1.2.3.4","5.6.7.8","0x1001","{KEY}","{KEY}","NULL",""\n', "line 1: unsupported encryption"),
    (f'"IPv4","1.2.3.4","5.6.7.8","0x1001","AES-CBC [RFC3602]","{KEY}","{KEY}",""\n',
     "line 1: unsupported authentication"),
    (f'"IPv4","1.2.3.4","5.6.7.8","0x1001","AES-CBC [RFC3602]","{KEY}","NULL",""\n', "without an ICV"),
    (f'"IPv4","1.2.3.4","*","0x1001","AES-CBC [RFC3602]","{KEY}","HMAC-MD5-96 [RFC2403]",""\n', "wildcards"),
    (f'"IPv4","1.2.3.4","5.6.7.8","0x1001","AES-CBC [RFC3602]","{KEY}"\n', "expected 8 fields"),
    ("# nothing\n", "no SAs"),
])
def test_secrets_file_errors_name_the_line_never_the_key(tmp_path, capsys, body, words):
    (tmp_path / "secrets").write_text(body)
    _write(tmp_path / "in.pcap", [_eth(p) for p in gen.imix_packets(2)])
    assert main(["trace", "decrypt", "--secrets", str(tmp_path / "secrets"), str(tmp_path / "in.pcap"),
                 str(tmp_path / "o.pcap")]) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert "ab" * 8 not in err and "zz" * 8 not in err
    assert not (tmp_path / "o.pcap").exists()


def test_ctrl_c_midway_is_one_line_exit_130_and_leaves_no_file(tmp_path, capsys, monkeypatch):
    _write(tmp_path / "in.pcap", [_eth(p) for p in gen.imix_packets(50)])
    sa = _sa_file(tmp_path, GCM_TUNNEL)

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pcap.TraceWriter, "write", interrupted)
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap")]) == 130
    assert capsys.readouterr().err == "ipsp: interrupted\n"
    assert sorted(os.listdir(tmp_path)) == ["in.pcap", "sa.toml"]


def test_a_pipe_or_device_output_is_written_through(tmp_path):
    import subprocess
    import sys
    _write(tmp_path / "in.pcap", [_eth(p) for p in gen.imix_packets(7)])
    sa = _sa_file(tmp_path, GCM_TUNNEL)
    assert main(["trace", "encrypt", "--sa", sa, str(tmp_path / "in.pcap"), "/dev/null"]) == 0
    code = "import sys; from ipsp.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "trace", "encrypt", "--sa", sa, str(tmp_path / "in.pcap"),
                        "/dev/stdout"], capture_output=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(pcap.__file__))})
    assert r.returncode == 0, r.stderr
    # the report goes to standard error then: the capture on standard output stays whole
    assert r.stdout.startswith(struct.pack("<I", 0xA1B23C4D)) and b"7 packets read: 7 processed" in r.stderr
    (tmp_path / "piped.pcap").write_bytes(r.stdout)
    assert len(_read(tmp_path / "piped.pcap")[0]) == 7
    os.unlink(tmp_path / "piped.pcap")
    assert sorted(os.listdir(tmp_path)) == ["in.pcap", "sa.toml"]
