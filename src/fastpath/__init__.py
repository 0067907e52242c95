"""fastpath: the per-packet IPsec ESP kernel of ipsp (Cython over OpenSSL and intel-ipsec-mb).

There is no pure-Python fallback: if the extensions are missing the import fails loudly,
because a silently slow kernel is a broken kernel.
"""

import os as _os

try:
    from fastpath.status import (
        Status, status_name, status_description, raise_for_status, STATUS_EXCEPTIONS,
        PacketError, MalformedPacket, ReplayError, IntegrityError, NoDataPacket, BufferTooSmall,
        SequenceExhausted, SAClosedError, CryptoFailure, PacketTooBig)
    from fastpath.crypto import Cipher, Integ, Backend, backends, hmac_digest, openssl_version
    from fastpath.replay import ReplayWindow
    from fastpath.sa import SAState, TUNNEL, TRANSPORT, IP, ESP, DF_COPY_INNER, DF_ALWAYS, DF_NEVER
    from fastpath.batch import PacketBatch
except ImportError as exc:
    # ipsp is not on any package index: the cure is a build from the source tree. The most
    # common cause is PYTHONPATH=src over a tree whose extensions were never built in place,
    # which shadows an installed copy, so the message names the directory imported from.
    raise ImportError(
        f"fastpath's compiled extensions are missing or failed to load from "
        f"{_os.path.dirname(__file__)} ({exc}); build them from the ipsp source tree, with "
        "OpenSSL 3 headers installed: 'pip install .' there (and run without PYTHONPATH=src), "
        "or 'python setup.py build_ext --inplace' to use src/ in place") from exc

try:
    # the multi-buffer backend registers itself with fastpath.crypto when it is importable
    from fastpath import mb as _mb  # noqa: F401
except ImportError:
    _mb = None


def get_include() -> str:
    """The directory holding fastpath's C headers, for Cython code that cimports fastpath."""
    return _os.path.join(_os.path.dirname(__file__), "_include")


__all__ = [
    "Status", "status_name", "status_description", "raise_for_status", "STATUS_EXCEPTIONS",
    "PacketError", "MalformedPacket", "ReplayError", "IntegrityError", "NoDataPacket",
    "BufferTooSmall", "SequenceExhausted", "SAClosedError", "CryptoFailure", "PacketTooBig",
    "Cipher", "Integ", "Backend", "backends", "hmac_digest", "openssl_version",
    "ReplayWindow", "SAState", "PacketBatch", "TUNNEL", "TRANSPORT", "IP", "ESP",
    "DF_COPY_INNER", "DF_ALWAYS", "DF_NEVER", "get_include",
]
