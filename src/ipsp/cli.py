"""The ``ipsp`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
import time

import fastpath

from ipsp._version import __version__
from ipsp.errors import ConfigError


def _cmd_trace(args: argparse.Namespace) -> int:
    from ipsp import pcap, trace
    from ipsp.config import load_sa_file

    sas = load_sa_file(args.sa)
    try:
        if args.action == "encrypt":
            report = trace.encrypt_trace(args.input, args.output, sas)
        else:
            report = trace.decrypt_trace(args.input, args.output, sas, verify=not args.no_verify)
    except pcap.TraceError as exc:
        print(f"ipsp: {args.input}: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _cmd_bench(args: argparse.Namespace) -> int:
    from ipsp import bench, gen

    proposals = args.proposal or list(bench.DEFAULT_PROPOSALS)
    backends = args.backend or None
    t0 = time.perf_counter()
    packets = gen.imix_packets(args.packets, seed=args.seed)
    n_jobs = len(proposals) * len(backends or ["openssl"] + (["ipsecmb"] if "ipsecmb" in fastpath.backends() else []))
    done = [0]

    def progress() -> None:
        done[0] += 1
        if not args.json and sys.stderr.isatty():
            total = n_jobs * args.repeats
            bar = "#" * (30 * done[0] // total)
            print(f"\r[{bar:<30}] {done[0]}/{total}", end="", file=sys.stderr, flush=True)

    results = bench.run_bench(packets, proposals, backends, batch=args.batch, repeats=args.repeats,
                              progress=progress)
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        print(json.dumps({"version": __version__, "backends": fastpath.backends(), "trace": "Simple IMIX 7:4:1 (IP 40/576/1500)",
                          "packets": len(packets), "batch": args.batch, "results": bench.as_dicts(results)}, indent=2))
    else:
        print(f"ipsp {__version__} bench: Simple IMIX 7:4:1 (IP 40/576/1500), {len(packets)} packets, "
              f"batches of {args.batch}, best of {args.repeats}, one core")
        print("backends: " + ", ".join(f"{k} {v}" for k, v in fastpath.backends().items()))
        rows = [["proposal", "backend", "dir", "ns/pkt", "Mpps", "Gbit/s", "10GbE%", "40GbE%", "+bytes",
                 "floor ns", "x floor", "ok"]]
        for r in results:
            rows.append([r.proposal, r.backend, r.direction, f"{r.ns_per_packet:.0f}", f"{r.mpps:.2f}",
                         f"{r.gbps_wire:.1f}", f"{r.line_rate_pct['10G']:.0f}", f"{r.line_rate_pct['40G']:.0f}",
                         f"{r.esp_bytes_added:.0f}" if r.direction == "encap" else "",
                         f"{r.floor_ns:.0f}" if r.floor_ns else "-", f"{r.ratio:.2f}" if r.ratio else "-",
                         "yes" if r.verified else "NO"])
        print(_table(rows))
        print("Gbit/s: the cleartext packets as Ethernet frames on the wire (preamble, gap and FCS "
              "included); floor: a minimal C loop over the same library calls, same run; "
              f"ok: every decapsulated packet equals its input. {time.perf_counter() - t0:.0f} s.")
    return 0 if all(r.verified for r in results) else 1


def _cmd_info(args: argparse.Namespace) -> int:
    print(f"ipsp {__version__}")
    for name, version in fastpath.backends().items():
        print(f"  {name}: {version}")
    print(f"  OpenSSL headers at build: {fastpath.crypto.openssl_build_version()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ipsp", description="An embeddable IPsec ESP engine.")
    p.add_argument("--version", action="version", version=f"ipsp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="measure encapsulation and decapsulation against the floors (the main job)")
    b.add_argument("--packets", type=int, default=65536, help="packets in the generated trace (default 65536)")
    b.add_argument("--proposal", action="append", help="a proposal to measure (repeatable; default: a standard set)")
    b.add_argument("--backend", action="append", choices=["openssl", "ipsecmb"], help="backend (repeatable)")
    b.add_argument("--batch", type=int, default=256, help="packets per batch call (default 256)")
    b.add_argument("--repeats", type=int, default=5, help="timed passes, best taken (default 5)")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("trace", help="encrypt or decrypt a pcap/pcapng capture")
    t.add_argument("action", choices=["encrypt", "decrypt"])
    t.add_argument("--sa", required=True, help="TOML file with [[sa]] tables")
    t.add_argument("--no-verify", action="store_true",
                   help="decrypt: strip the ICV without checking it (only the cipher key is known)")
    t.add_argument("input")
    t.add_argument("output")
    t.set_defaults(func=_cmd_trace)

    i = sub.add_parser("info", help="versions and crypto backends")
    i.set_defaults(func=_cmd_info)

    args = p.parse_args(argv)
    if getattr(args, "no_verify", False) and args.action != "decrypt":
        p.error("--no-verify applies to decrypt only")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"ipsp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
