"""Build the fastpath extensions: the Extension list, cythonize and library discovery only.

Environment:
  FASTPATH_IPSECMB=0|1   force intel-ipsec-mb off/on (default: on when its header is found)
  FASTPATH_OPENSSL_DIR   prefix of an OpenSSL 3.x install (default: pkg-config, then the system)
  FASTPATH_DEBUG=1       bounds checks on, annotated HTML, no -O3
"""

import os
import shutil
import subprocess
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
SRC = HERE / "src" / "fastpath"
DEBUG = os.environ.get("FASTPATH_DEBUG") == "1"


def pkg_config(*args):
    if not shutil.which("pkg-config"):
        return []
    out = subprocess.run(["pkg-config", *args], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def find_ipsecmb(include_dirs):
    choice = os.environ.get("FASTPATH_IPSECMB")
    if choice == "0":
        return False
    found = any(Path(d, "intel-ipsec-mb.h").exists() for d in [*include_dirs, "/usr/include", "/usr/local/include"])
    if choice == "1" and not found:
        raise SystemExit("FASTPATH_IPSECMB=1 but intel-ipsec-mb.h was not found (Debian: apt-get install libipsec-mb-dev)")
    return found


include_dirs = [str(SRC / "_include")]
library_dirs = []
ossl = os.environ.get("FASTPATH_OPENSSL_DIR")
if ossl:
    include_dirs.append(str(Path(ossl, "include")))
    library_dirs += [str(Path(ossl, "lib64")), str(Path(ossl, "lib"))]
else:
    include_dirs += [f[2:] for f in pkg_config("--cflags-only-I", "libcrypto")]
    library_dirs += [f[2:] for f in pkg_config("--libs-only-L", "libcrypto")]

libraries = ["crypto"]
# The low-level digest and DES calls are deprecated in OpenSSL 3 but exported and fastest:
# they give the precomputed HMAC pad states the issue asks for.
macros = [("OPENSSL_SUPPRESS_DEPRECATED", "1")]
with_ipsecmb = find_ipsecmb(include_dirs)

cflags = ["-O3", "-g0", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"] if not DEBUG else ["-O1", "-g"]
if DEBUG:
    macros.append(("FASTPATH_DEBUG", "1"))

# fastpath.mb, the multi-buffer backend, is the one module that links intel-ipsec-mb; without
# the library it is left out and the kernel runs on OpenSSL alone.
extensions = [
    Extension(
        f"fastpath.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        libraries=libraries + (["IPSec_MB"] if pyx.stem.startswith("mb") else []),
        define_macros=macros,
        extra_compile_args=cflags,
    )
    for pyx in sorted(SRC.glob("*.pyx"))
    if not pyx.stem.startswith("mb") or with_ipsecmb
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=[str(HERE / "src")],
        annotate=DEBUG,
        compiler_directives={
            "language_level": 3,
            "embedsignature": True,
            "boundscheck": DEBUG,
            "wraparound": False,
            "initializedcheck": DEBUG,
            "cdivision": True,
        },
    ),
)
