"""Traffic ends for the gateway tests, run inside a namespace (`ip netns exec NS python traffic.py ...`).
Each prints one JSON line with its result on stdout; servers first print "ready".

    tcp-serve PORT                   accept one connection, read it to the end: {"bytes", "sha256"}
    tcp-send HOST PORT NBYTES SEED   send NBYTES seeded random bytes: {"bytes", "sha256"}
    udp-recv PORT IDLE               datagrams carrying an 8-byte sequence number, until IDLE
                                     seconds pass without one (after the first):
                                     {"received", "unique", "duplicates", "late", "max_seq"}
    udp-send HOST PORT COUNT PPS     COUNT datagrams (sequence 0..COUNT-1) at PPS: {"sent"}
"""

import hashlib
import json
import random
import socket
import sys
import time


def tcp_serve(port: str) -> dict:
    srv = socket.create_server(("0.0.0.0", int(port)))
    print("ready", flush=True)
    srv.settimeout(60)
    conn, _ = srv.accept()
    conn.settimeout(60)
    h, n = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 16):
        h.update(chunk)
        n += len(chunk)
    conn.close()
    return {"bytes": n, "sha256": h.hexdigest()}


def tcp_send(host: str, port: str, nbytes: str, seed: str) -> dict:
    data = random.Random(int(seed)).randbytes(int(nbytes))
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)                       # the peer closes once it has read everything
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def udp_recv(port: str, idle: str) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", int(port)))
    print("ready", flush=True)
    s.settimeout(30)                       # for the first datagram
    seen, received, late, top = set(), 0, 0, -1
    try:
        while True:
            data = s.recv(65536)
            s.settimeout(float(idle))
            seq = int.from_bytes(data[:8], "big")
            received += 1
            late += seq < top
            top = max(top, seq)
            seen.add(seq)
    except socket.timeout:
        pass
    return {"received": received, "unique": len(seen), "duplicates": received - len(seen), "late": late,
            "max_seq": top}


def udp_send(host: str, port: str, count: str, pps: str) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, int(port)))
    interval, start = 1.0 / float(pps), time.monotonic()
    for seq in range(int(count)):
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s.send(seq.to_bytes(8, "big") + bytes(56))
    return {"sent": int(count)}


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    fn = {"tcp-serve": tcp_serve, "tcp-send": tcp_send, "udp-recv": udp_recv, "udp-send": udp_send}[cmd]
    print(json.dumps(fn(*args)), flush=True)
