"""An IKE_SA_INIT flood for the gateway tests, run inside a namespace
(`ip netns exec NS python flood.py HOST PORT COUNT [MARKER]`).

COUNT well-formed IKE_SA_INIT requests (RFC 7296 1.2: SA, KE x25519, Nonce; each its own
initiator SPI, as a flood of new initiators) to HOST:PORT, behind the non-ESP marker when
MARKER is 1 (UDP 4500, RFC 3948 2.2), as fast as the kernel takes them: sendmmsg(2) through
ctypes, 1024 datagrams a call, on a connected socket. A full send buffer (ENOBUFS, EAGAIN) is
waited out, so COUNT datagrams leave. Prints {"sent", "seconds", "pps"}.
"""

import ctypes
import ctypes.util
import errno
import json
import os
import socket
import struct
import sys
import time

from ipsp.ike.message import KE, SA, ExchangeType, Header, Message, Nonce
from ipsp.ike.proposals import parse_ike

BATCH = 1024


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def datagrams(marker: bool) -> list[bytes]:
    """BATCH requests differing in their initiator SPI (and so each a new IKE SA)."""
    proposal = parse_ike("aes128gcm16-prfsha256-x25519")
    body = (SA((proposal.payload(1),)), KE(31, os.urandom(32)), Nonce(os.urandom(32)))
    out = []
    for i in range(BATCH):
        header = Header(struct.pack("!II", os.getpid(), i), bytes(8), ExchangeType.IKE_SA_INIT, 0, initiator=True)
        out.append((b"\0\0\0\0" if marker else b"") + Message(header, body).encode())
    return out


def main(host: str, port: str, count: str, marker: str = "0") -> dict:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect((host, int(port)))
    bufs = [ctypes.create_string_buffer(d, len(d)) for d in datagrams(marker == "1")]
    iovs = (_Iovec * BATCH)(*[_Iovec(ctypes.cast(b, ctypes.c_void_p), len(b)) for b in bufs])
    msgs = (_Mmsghdr * BATCH)()
    for i in range(BATCH):
        msgs[i].hdr.iov = ctypes.pointer(iovs[i])
        msgs[i].hdr.iovlen = 1
    total, sent, start = int(count), 0, time.monotonic()
    while sent < total:
        n = libc.sendmmsg(sock.fileno(), msgs, min(BATCH, total - sent), 0)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR, errno.ECONNREFUSED):
                time.sleep(0.0005)
                continue
            raise OSError(err, os.strerror(err))
        sent += n
    seconds = time.monotonic() - start
    return {"sent": sent, "seconds": round(seconds, 3), "pps": round(sent / seconds)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])), flush=True)
