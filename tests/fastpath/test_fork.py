"""CBC IVs stay unpredictable across fork(): a child must not reuse the random bytes its
parent has drawn but not yet used (the kernel's per-thread pool of DRBG output)."""

import os

import pytest

from fastpath import Backend, Cipher, Integ, SAState

INNER = bytes.fromhex("45000030000000004011f99b0a0000010a000002") + bytes(28)


def _iv(sa):
    return sa.encap(INNER)[20 + 8:20 + 8 + 16]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("backend", [Backend.BACKEND_OPENSSL, Backend.BACKEND_AUTO])
def test_child_and_parent_draw_different_ivs(backend):
    sa = SAState(spi=0x3001, cipher=Cipher.CIPHER_AES_CBC, integ=Integ.INTEG_HMAC_SHA1_96,
                 enc_key=bytes(16), auth_key=bytes(20), src=bytes([192, 0, 2, 1]),
                 dst=bytes([192, 0, 2, 2]), backend=backend)
    _iv(sa)                                # the pool is filled now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                           # child: report the next IV and leave at once
        os.close(r)
        os.write(w, _iv(sa))
        os._exit(0)
    os.close(w)
    child = b""
    while len(child) < 16:
        chunk = os.read(r, 16 - len(child))
        if not chunk:
            break
        child += chunk
    os.close(r)
    os.waitpid(pid, 0)
    parent = _iv(sa)
    assert len(child) == 16 and child != parent
