"""IKEv2 handshakes per second: IKE_SA_INIT + IKE_AUTH (PSK, x25519, aes128gcm16-prfsha256 for
IKE and aes128gcm16 for the Child SA) between two in-process daemons (tests/ike/loop.py), key
manager installs included; beside it the floor: the public-key work one handshake cannot
avoid (two X25519 key pairs and two exchanges, through `cryptography`), measured in the
same run. ``python bench/report.py`` prints handshakes/s and the ratio.
"""

import importlib.util
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

_LOOP = Path(__file__).resolve().parents[1] / "tests" / "ike" / "loop.py"
if "ike_loop" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("ike_loop", _LOOP)
    sys.modules["ike_loop"] = _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
ike_loop = sys.modules["ike_loop"]

CONN = {"ike_proposals": ["aes128gcm16-prfsha256-x25519"], "esp_proposals": ["aes128gcm16"]}


def test_ike_handshake(benchmark):
    def setup():
        pair = ike_loop.Pair(a_conn=CONN, b_conn=CONN)
        return (pair,), {}

    def handshake(pair):
        pair.connect()
        assert pair.a.ike.stats["child_installed"] == 1

    benchmark.extra_info.update(stage="ike", case="handshake", packets=1)
    benchmark.pedantic(handshake, setup=setup, rounds=200, iterations=1, warmup_rounds=5)


def test_ike_handshake_floor(benchmark):
    def floor():
        a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        a.exchange(b.public_key())
        b.exchange(a.public_key())

    benchmark.extra_info.update(stage="ike", case="floor", packets=1)
    benchmark.pedantic(floor, rounds=200, iterations=5, warmup_rounds=5)
