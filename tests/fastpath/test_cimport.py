"""A forwarder written in Cython cimports the kernel and calls it without Python overhead.

The module below is the README's example: it is compiled here against the installed
fastpath (its .pxd files and headers ship with it) and must give exactly what the Python
batch call gives.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap
from array import array

import pytest

import fastpath
from fastpath import Cipher, SAState, Status

FORWARDER = textwrap.dedent("""
    # cython: language_level=3
    from libc.stdint cimport uint8_t, uint32_t, int64_t
    from fastpath.sa cimport SAState

    cdef uint32_t forward(SAState sa, uint8_t *buf, size_t n, int64_t *off, uint32_t *lens,
                          uint8_t *status, uint32_t count, size_t stride) noexcept nogil:
        return sa.encap_burst_c(buf, n, off, lens, status, count, stride)

    def run(SAState sa, uint8_t[::1] buf, int64_t[::1] off, uint32_t[::1] lens,
            uint8_t[::1] status, size_t stride):
        cdef uint32_t ok
        with nogil:
            ok = forward(sa, &buf[0], buf.shape[0], &off[0], &lens[0], &status[0],
                         <uint32_t>off.shape[0], stride)
        return ok
""")

SETUP = textwrap.dedent("""
    import fastpath
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    setup(ext_modules=cythonize([Extension("forwarder", ["forwarder.pyx"],
                                           include_dirs=[fastpath.get_include()])], quiet=True))
""")


@pytest.fixture(scope="module")
def forwarder(tmp_path_factory):
    pytest.importorskip("Cython")
    return _build(tmp_path_factory, "forwarder", FORWARDER)


def _sa():
    return SAState(spi=0x2001, cipher=Cipher.CIPHER_AES_GCM, icv_len=16, enc_key=bytes(range(20)),
                   src=bytes([192, 0, 2, 1]), dst=bytes([192, 0, 2, 2]), backend=fastpath.Backend.BACKEND_OPENSSL)


def test_cython_forwarder_matches_python_batch(forwarder):
    inner = bytes.fromhex("4500002c000100004011f0cb0a0000010a000002") + bytes(24)
    inner = inner[:2] + len(inner).to_bytes(2, "big") + inner[4:]
    stride, n = 256, 9
    results = []
    for call in ("cython", "python"):
        sa = _sa()
        buf = bytearray(stride * n)
        off = array("q", [i * stride + 96 for i in range(n)])
        lens = array("I", [len(inner)] * n)
        status = bytearray(n)
        for i in range(n):
            buf[off[i]:off[i] + len(inner)] = inner
        if call == "cython":
            ok = forwarder.run(sa, buf, off, lens, status, stride)
        else:
            ok = sa.encap_batch(buf, off, lens, status, stride)
        assert ok == n and set(status) == {Status.OK}
        out = [bytes(buf[off[i]:off[i] + lens[i]]) for i in range(n)]
        # same keys, same sequence numbers: identical ESP apart from the outer IPv4 ID and checksum
        results.append([p[:4] + p[6:10] + p[12:] for p in out])
        assert [_sa().decap(p) for p in out[:1]] == [inner]
    assert results[0] == results[1]


def test_closed_sa_marks_packets_dead(forwarder):
    sa = _sa()
    sa.close()
    buf = bytearray(512)
    status = bytearray(2)
    ok = forwarder.run(sa, buf, array("q", [64, 320]), array("I", [20, 20]), status, 256)
    assert ok == 0 and list(status) == [Status.SA_DEAD, Status.SA_DEAD]


EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "cforward.pyx"


@pytest.fixture(scope="module")
def cforward(tmp_path_factory):
    """examples/cforward.pyx (docs/embedding.md), built the way its docstring says."""
    pytest.importorskip("Cython")
    if not EXAMPLE.exists():
        pytest.skip("examples/ is not part of this installation")
    return _build(tmp_path_factory, "cforward", EXAMPLE.read_text())


def test_the_embedding_example_carries_a_burst_through_a_tunnel(cforward):
    inner = bytes.fromhex("4500002c000100004011f0cb0a0000010a000002") + bytes(24)
    stride, n = 256, 5
    buf = bytearray(stride * n)
    off = array("q", [i * stride + 96 for i in range(n)])
    lens = array("I", [len(inner)] * n)
    lens[3] = 10                                   # not an IP packet: BAD_INNER, never decapsulated
    for i in range(n):
        buf[off[i]:off[i] + len(inner)] = inner
    status = bytearray(n)
    assert cforward.run(_sa(), _sa(), buf, off, lens, status, stride) == n - 1
    assert [Status(s) for s in status] == [Status.OK] * 3 + [Status.BAD_INNER, Status.OK]
    assert all(bytes(buf[off[i]:off[i] + lens[i]]) == inner for i in (0, 1, 2, 4))


def _build(tmp_path_factory, name, source):
    """Compile a Cython module that cimports fastpath, as a user would, and import it."""
    d = tmp_path_factory.mktemp(name)
    (d / f"{name}.pyx").write_text(source)
    (d / "setup.py").write_text(SETUP.replace("forwarder", name))
    # the build must find the same fastpath this test imported (installed or in a source tree)
    site = os.path.dirname(os.path.dirname(fastpath.__file__))
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=d,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    so = next(p for p in d.iterdir() if p.name.startswith(name) and p.suffix == ".so")
    spec = importlib.util.spec_from_file_location(name, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
