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
    sa = _sa_file(tmp_path, f"""
[[sa]]
spi = 0x2002
src = "198.51.100.1"
dst = "198.51.100.2"
proposal = "aes128-sha1"
enc_key = "0x{CBC_KEY.hex()}"
auth_key = "0x{SHA_KEY.hex()}"
""")
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
