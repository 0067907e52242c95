"""The ``ipsp`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import fastpath

from ipsp._version import __version__
from ipsp.errors import ConfigError, one_line
from ipsp.files import FileError, check_input, replacing


def _error(text: str) -> None:
    """An error as one line on standard error: a newline in a file name cannot split it, nor
    can a control or bidirectional character disguise it (they are shown escaped)."""
    print(one_line(text), file=sys.stderr)


def _cmd_trace(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ipsp import pcap, trace
    from ipsp.config import load_sa_file

    key_file = args.sa or args.secrets
    check_input(key_file)                  # before the TOML reader: /dev/zero would be read forever
    if args.secrets:
        sas = trace.load_secrets(args.secrets)
        if args.no_verify:
            sas = [replace(sa, icv_unchecked=True) for sa in sas]
    else:
        sas = load_sa_file(args.sa, icv_unchecked=args.no_verify)
    try:
        if args.action == "encrypt":
            report = trace.encrypt_trace(args.input, args.output, sas, sources=[key_file])
        else:
            report = trace.decrypt_trace(args.input, args.output, sas, verify=not args.no_verify,
                                         sources=[key_file])
    except pcap.TraceError as exc:
        _error(f"ipsp: {args.input}: {exc}")
        return 1
    except trace.NothingProcessed as exc:
        for line in exc.report.lines():
            print(line, file=_report_stream(args.output))
        _error(f"ipsp: {args.input}: {exc}")
        return 1
    for line in report.lines():
        print(line, file=_report_stream(args.output))
    return 0


def _report_stream(output: str):
    """Standard output, unless the capture itself goes there (/dev/stdout): then the report
    goes to standard error, as tcpdump -w - does, so the pcap stays whole."""
    try:
        out, fd1 = os.stat(output), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):    # no such output, or stdout without a descriptor
        return sys.stdout
    return sys.stderr if (out.st_dev, out.st_ino) == (fd1.st_dev, fd1.st_ino) else sys.stdout


def _cmd_trace_gen(args: argparse.Namespace) -> int:
    from ipsp import gen

    try:
        with replacing(args.output) as tmp:
            s = gen.write_trace(tmp, args.profile, args.packets, seed=args.seed, flows=args.flows,
                                ipv6_share=args.ipv6_share, tcp_share=args.tcp_share, rate_bps=args.rate,
                                linktype=args.linktype)
    except FileError:
        raise
    except ValueError as exc:        # what the parser cannot see alone, e.g. too few flows for the shares
        _error(f"ipsp trace gen: {exc}")
        return 2
    flows = args.flows or args.profile.default_flows
    mean = s.ip_bytes / s.packets if s.packets else 0
    mpps = s.packets / s.duration_ns * 1e3 if s.duration_ns else 0
    print(f"wrote {s.packets} packets to {args.output}: {args.profile.name}, {flows} flows, "
          f"{args.ipv6_share:.0%} IPv6, {args.tcp_share:.0%} TCP, mean IP size {mean:.1f} B; "
          f"{s.duration_ns / 1e6:.3f} ms at {args.rate / 1e9:g} Gbit/s ({mpps:.3f} Mpps)")
    return 0


def _checked(parse, name: str):
    """An argparse type from a parser that raises ValueError: its own words, exit 2."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name
    return convert


def _count(low: int, high: int):
    """An integer option within low..high (huge values would allocate or run for ever)."""
    def parse(text: str) -> int:
        try:
            if not text.isascii():       # int() takes any script's digits: "١٢" would be 12
                raise ValueError
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text[:40]!r}") from None
        if value < low:
            raise ValueError(f"must be at least {low}, got {text[:40]}")
        if value > high:
            raise ValueError(f"must be at most {high}, got {text[:40]}")
        return value
    return _checked(parse, "count")


def _proposal(text: str) -> str:
    from ipsp.transforms import parse_proposal

    try:
        parse_proposal(text)
    except ConfigError as exc:
        raise ValueError(exc.message) from None
    return text


def _path_arg(text: str) -> str:
    # a NUL cannot reach a system call (ValueError deep inside open()); an empty name is no file
    if not text:
        raise argparse.ArgumentTypeError("empty file name")
    if "\0" in text:
        raise argparse.ArgumentTypeError("file name contains a NUL byte")
    return text


def _add_trace_gen_parser(trace_sub) -> None:
    """``ipsp trace gen PROFILE OUT``: the synthetic benchmark traces of ipsp.gen."""
    from ipsp import gen

    checked = _checked

    def share(text: str) -> float:
        if not 0.0 <= float(text) <= 1.0:
            raise ValueError(f"a share is between 0 and 1, got {text}")
        return float(text)

    g = trace_sub.add_parser(
        "gen", help="write a synthetic, checksum-valid trace paced at line rate",
        description="Write a seeded pcap of checksum-valid IPv4/IPv6 UDP/TCP packets, timestamped back to back "
                    "at the line rate. PROFILE: 64 128 256 512 1024 1280 1518 (RFC 2544 Ethernet frame sizes), "
                    "fixed:N (IP size N), imix (Simple IMIX 7:4:1 of IP 40/576/1500), genome:LETTERS (RFC 6985, "
                    "e.g. genome:aaaaaaaaaabg), internet (bimodal mix, Zipf flows).")
    g.add_argument("profile", metavar="PROFILE", type=checked(gen.parse_profile, "profile"))
    g.add_argument("output", metavar="OUT", type=_path_arg, help="the pcap file to write")
    g.add_argument("--packets", type=_count(0, 2**32), default=262144,
                   help="how many (default 262144: bigger than the L3 cache; at most 2**32)")
    g.add_argument("--seed", type=int, default=1, help="same seed, same bytes (default 1)")
    g.add_argument("--rate", type=checked(gen.parse_rate, "rate"), default=10_000_000_000,
                   help="line rate for the timestamps: 1G, 10G, 40G, 100G or bit/s (default 10G)")
    g.add_argument("--flows", type=_count(1, 2**24),
                   help=f"distinct 5-tuples (default {gen.INTERNET_FLOWS} for internet, {gen.DEFAULT_FLOWS} otherwise)")
    g.add_argument("--ipv6-share", type=checked(share, "share"), default=0.0, metavar="FRACTION",
                   help="expected fraction of IPv6 packets (default 0)")
    g.add_argument("--tcp-share", type=checked(share, "share"), default=0.0, metavar="FRACTION",
                   help="expected fraction of TCP packets (default 0)")
    g.add_argument("--linktype", choices=["raw", "ethernet"], default="raw",
                   help="raw IP (101, default) or Ethernet with a synthetic header (1)")
    g.set_defaults(func=_cmd_trace_gen)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


class _Failed(Exception):
    """A command that failed after its output was opened: the exit status, nothing written."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _cmd_bench(args: argparse.Namespace) -> int:
    import contextlib

    from ipsp import bench, gen

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.trace:
            check_input(args.trace)
        plot_tmp = None
        if args.plot:
            # both before the bench runs: a missing matplotlib or output directory found after
            # minutes of measuring would throw them away
            try:
                bench.plot_backend()
            except ImportError:
                print("ipsp bench: --plot needs matplotlib (pip install 'ipsp[plot]')", file=sys.stderr)
                return 1
            plot_tmp = stack.enter_context(replacing(args.plot, inputs=[args.trace] if args.trace else []))
        status = _bench(args, bench, gen, t0, plot_tmp)
        if status and plot_tmp:
            raise _Failed(status)      # leaves the with by an exception: the plot is not put in place
        return status


def _bench(args: argparse.Namespace, bench, gen, t0: float, plot_tmp: str | None) -> int:
    if args.trace:
        source = bench.Source.from_file(args.trace)
        total = None
    else:
        source = bench.Source.from_packets("Simple IMIX 7:4:1 (IP 40/576/1500)", gen.imix_packets(args.packets, seed=args.seed))
        total = args.packets
    show = not args.json and sys.stderr.isatty()

    def progress(done: int) -> None:
        if show:
            if total:
                bar = "#" * (30 * done // total)
                print(f"\r[{bar:<30}] {done}/{total} packets", end="", file=sys.stderr, flush=True)
            else:
                print(f"\r{done} packets", end="", file=sys.stderr, flush=True)

    try:
        results, scaling = bench.run_bench(
            source, args.proposal or list(bench.DEFAULT_PROPOSALS), args.backend or None, batch=args.batch,
            repeats=args.repeats, chunk=args.chunk, threads=args.threads,
            baseline_kinds=() if args.no_baselines else ("cryptography", "scapy"), progress=progress)
    except FileError:
        raise
    except ValueError as exc:          # pcap.TraceError and bench.NoPackets are ValueErrors
        _error(f"ipsp bench: {args.trace}: {exc}" if args.trace else f"ipsp bench: {exc}")
        return 1
    if show:
        print(file=sys.stderr)
    info = {"version": __version__, "backends": fastpath.backends(), "trace": source.name,
            "packets": results[0].packets if results else 0, "skipped_frames": source.skipped,
            "trace_rules": dict(source.rules),
            "batch": args.batch, "chunk": args.chunk, "repeats": args.repeats,
            "peak_rss_bytes": bench.peak_rss_bytes(), "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps({**info, "results": bench.as_dicts(results), "threads": bench.as_dicts(scaling)}, indent=2))
    else:
        print(f"ipsp {__version__} bench: {source.name}, {info['packets']} packets"
              + (f" ({source.describe_rules()})" if source.rules else "")
              + f", chunks of {args.chunk}, batches of {args.batch}, fastest of {args.repeats} per chunk, one core")
        print("backends: " + ", ".join(f"{k} {v}" for k, v in fastpath.backends().items()))
        print(_table(bench.table_rows(results)))
        for sc in scaling:
            print(f"threads: {sc.proposal} {sc.backend}: {sc.threads} threads {sc.mpps_all:.2f} Mpps, one thread "
                  f"{sc.mpps_one:.2f} Mpps: {sc.speedup:.2f}x"
                  + (f" (the floor loop alone: {sc.floor_speedup:.2f}x)" if sc.floor_speedup else "")
                  + ("" if sc.verified else " (NOT VERIFIED)"))
        print("Gbit/s and % of line rate: the cleartext packets as Ethernet frames on the wire (preamble, gap and "
              "FCS included). floor: a minimal C loop over the same library calls; cryptography, scapy: per-packet "
              "Python ESP on a sample, as multiples of our time (x); all measured in this run on the same packets. "
              f"ok: every decapsulated packet equals its input. Peak memory {info['peak_rss_bytes'] / 2**20:.0f} MiB; "
              f"{info['seconds']:.0f} s.")
    if plot_tmp:
        bench.plot(results, plot_tmp, title=f"ipsp {__version__}: {source.name}")
    return 0 if all(r.verified for r in results) and all(s.verified for s in scaling) else 1


def _cmd_info(args: argparse.Namespace) -> int:
    print(f"ipsp {__version__}")
    for name, version in fastpath.backends().items():
        print(f"  {name}: {version}")
    print(f"  OpenSSL headers at build: {fastpath.crypto.openssl_build_version()}")
    return 0


# -- the engine and its control socket ---------------------------------------------------------

def _grid(header: list[str], rows: list[list]) -> str:
    """A plain fixed-width table with a header row; None shows as '-'."""
    def cell(v) -> str:
        if v is None or v == []:
            return "-"
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)
    text = [header] + [[cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in text)


def _json(value) -> None:
    print(json.dumps(value, indent=2))


_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}


def _port_range(r: list[int]) -> str:
    return "any" if r == [0, 65535] else str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


def _policy_table(rows: list[dict]) -> str:
    return _grid(["ID", "DIR", "ACTION", "PRIO", "SRC", "DST", "PROTO", "SPORT", "DPORT", "REQID", "LABEL"],
                 [[p["id"], p["direction"].lower(), p["action"].lower(), p["priority"], p["src"], p["dst"],
                   _PROTO_NAMES.get(p["proto"], p["proto"]), _port_range(p["sport"]), _port_range(p["dport"]),
                   p["reqid"] or None, p["label"]] for p in rows])


def _sa_table(rows: list[dict], live: bool) -> str:
    header = ["SPI", "DIR", "SRC", "DST", "SENDER", "PROPOSAL", "MODE", "ENCAP", "REQID", "LABEL"]
    out = []
    for r in rows:
        row = [f"{r['spi']:#010x}", r["direction"], r.get("src"), r["dst"], r.get("group_source"),
               r["proposal"], r.get("mode"), r.get("encap"), r["reqid"] or None, r["label"]]
        if live:
            row += [r["state"], r["packets"], r["bytes"]]
        out.append(row)
    return _grid(header + (["STATE", "PACKETS", "BYTES"] if live else []), out)


def _peer_table(rows: list[dict]) -> str:
    return _grid(["NAME", "AUTH", "ID", "ADDRESSES", "ALLOWED"],
                 [[p["name"], p["auth"], p["id"], p["addresses"], p["allowed"]] for p in rows])


RELOAD_TIMEOUT = 600.0


def _client(args: argparse.Namespace):
    from ipsp.control import ControlClient
    return ControlClient(args.socket)


def _daemon_log() -> None:
    """The daemons' log on standard error, one line per message: a newline or a control
    character in a file name or a peer's identity cannot forge a second line."""
    import logging

    class OneLine(logging.Formatter):
        def formatMessage(self, record: logging.LogRecord) -> str:
            record.message = one_line(record.message)
            return super().formatMessage(record)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine("%(asctime)s ipsp[%(process)d] %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def _cmd_engine(args: argparse.Namespace) -> int:
    from ipsp.control import run_engine

    _daemon_log()
    return run_engine(args.config, args.socket)


def _cmd_gateway(args: argparse.Namespace) -> int:
    from ipsp.gateway import run_gateway

    _daemon_log()
    return run_gateway(args.config, args.socket)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from ipsp.config import load_config
    from ipsp.control import config_summary

    try:
        cfg = load_config(args.file)
        if cfg.ike is not None:
            # the certificates, keys and CRLs [ike] names are read when the daemon starts:
            # read them now, so that what passes here starts
            from ipsp.ike.transport import load_credentials
            from ipsp.pad import PeerAuthorizationDatabase

            try:
                load_credentials(cfg.ike, PeerAuthorizationDatabase(cfg.peers))
            except ConfigError as exc:      # it names the certificate file; say which table named it
                raise ConfigError(str(exc), path=args.file, key="ike") from None
    except ConfigError as exc:
        print(exc, file=sys.stderr)           # FILE:KEY: message
        return 1
    summary = config_summary(cfg)
    if args.json:
        _json(summary)
        return 0
    e = cfg.engine
    ike = f", {len(cfg.connections)} IKE connections" if cfg.connections else ""
    print(f"{args.file}: OK: {len(cfg.peers)} peers, {len(cfg.policies)} policies, {len(cfg.sas)} SAs{ike}")
    print(f"engine: control_socket {e.control_socket or '-'}, rekey_grace {e.rekey_grace:g} s, "
          f"log_interval {e.log_interval:g} s")
    g = cfg.gateway
    if g is not None:
        print(f"gateway: tun {g.tun} (mtu {g.tun_mtu}), address {','.join(map(str, g.address))}, "
              f"routes {','.join(map(str, g.routes)) or '-'}, outer {g.outer} on {g.local}"
              f"{f' port {g.udp_port}' if g.outer == 'udp' else ''}, path_mtu {g.path_mtu}, batch {g.batch}, "
              f"keepalive {g.keepalive:g} s")
    for title, rows, table in (("peers", summary["peers"], _peer_table),
                               ("policies", summary["policies"], _policy_table),
                               ("SAs", summary["sas"], lambda rows: _sa_table(rows, live=False))):
        if rows:
            print(f"\n{title}:\n{table(rows)}")
    for c in summary["connections"]:
        print(f"\nconnection {c['name']}: peer {c['peer']} at {c['remote'] or '(responder only)'}, "
              f"{','.join(c['local_ts'])} === {','.join(c['remote_ts'])}, reqid {c['reqid']}, start {c['start']}\n"
              f"  IKE {', '.join(c['ike_proposals'])}; ESP {', '.join(c['esp_proposals'])}; rekey IKE "
              f"{c['ike_rekey']:g} s, child {c['child_rekey']:g} s; dpd {c['dpd']:g} s")
    return 0


def _listing(args: argparse.Namespace, op: str):
    """What the running engine has (--socket), or what a configuration file defines (--config)."""
    if args.socket:
        return _client(args).call(op)
    from ipsp.config import load_config
    from ipsp.control import config_summary

    return config_summary(load_config(args.config))["sas" if op == "sa_list" else "policies"]


def _cmd_sa_list(args: argparse.Namespace) -> int:
    rows = _listing(args, "sa_list")
    if args.json:
        _json(rows)
    else:
        print(_sa_table(rows, live=bool(args.socket)))
    return 0


def _cmd_policy_list(args: argparse.Namespace) -> int:
    rows = _listing(args, "policy_list")
    print(json.dumps(rows, indent=2) if args.json else _policy_table(rows))
    return 0


def _key_ref(env: str | None, path: str | None) -> dict | None:
    # a reference the engine resolves: the key itself never passes through this process
    if env:
        return {"env": env}
    if path:
        return {"file": os.path.abspath(path)}     # the engine's working directory is not ours
    return None


def _sa_tables_from_file(path: str) -> list[dict]:
    from ipsp.config import read_toml, sa_tables

    tables, allow = sa_tables(read_toml(path), path=path)
    for t in tables:
        if allow:
            t.setdefault("allow_insecure", True)
        for name in ("enc_key", "auth_key"):
            ref = t.get(name)
            if isinstance(ref, dict) and isinstance(ref.get("file"), str):
                # relative to where the command runs, as in a configuration file; the engine
                # runs elsewhere
                ref["file"] = os.path.abspath(ref["file"])
    return tables


def _cmd_sa_add(args: argparse.Namespace) -> int:
    from ipsp.control import ControlError

    client = _client(args)
    if args.file:
        tables = _sa_tables_from_file(args.file)
        where = [f"{args.file}: sa[{i}]" for i in range(len(tables))]
    else:
        t = {"direction": args.direction, "spi": args.spi, "src": args.src, "dst": args.dst,
             "proposal": args.proposal, "enc_key": _key_ref(args.enc_key_env, args.enc_key_file),
             "auth_key": _key_ref(args.auth_key_env, args.auth_key_file), "reqid": args.reqid,
             "mode": args.mode, "encap": args.encap, "sport": args.sport, "dport": args.dport,
             "label": args.label, "replay_window": args.replay_window, "source": args.source,
             "esn": args.esn or None, "lifetime": dict(args.lifetime) or None}
        tables, where = [{k: v for k, v in t.items() if v is not None}], ["sa add"]
    added = []
    for table, name in zip(tables, where):
        try:
            added += client.call("sa_add", **table)
        except ControlError as exc:
            # all or nothing: take back what this command installed before the failure
            for sa in reversed(added):
                try:
                    client.call("sa_del", **sa)
                except ControlError:
                    pass
            note = f" ({len(added)} SA(s) added before it were deleted again)" if added else ""
            raise ControlError(f"{name}: {exc}{note}") from None
    if args.json:
        _json(added)
        return 0
    for sa in added:
        sender = f" from {sa['group_source']}" if sa["group_source"] else ""
        print(f"added {sa['direction']}bound SA {sa['spi']:#010x} to {sa['dst']}{sender}")
    return 0


def _cmd_sa_del(args: argparse.Namespace) -> int:
    params = {"spi": args.spi, "dst": args.dst, "direction": args.direction}
    if args.group_source:
        params["group_source"] = args.group_source
    sa = _client(args).call("sa_del", **params)
    print(f"deleted {sa['direction']}bound SA {sa['spi']:#010x} to {sa['dst']}")
    return 0


def _cmd_policy_add(args: argparse.Namespace) -> int:
    table = {"direction": args.direction, "action": args.action, "src": args.src, "dst": args.dst,
             "proto": int(args.proto) if args.proto and args.proto.isdigit() else args.proto,
             "sport": args.sport, "dport": args.dport, "reqid": args.reqid, "priority": args.priority,
             "label": args.label}
    row = _client(args).call("policy_add", **{k: v for k, v in table.items() if v is not None})
    print(json.dumps(row, indent=2) if args.json else f"added policy {row['id']}")
    return 0


def _cmd_policy_del(args: argparse.Namespace) -> int:
    _client(args).call("policy_del", id=args.id)
    print(f"deleted policy {args.id}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.prometheus:
        print(client.call("prometheus"), end="")
        return 0
    stats = client.call("stats")
    if args.json:
        _json(stats)
        return 0
    totals = stats["totals"]
    names = ["packets", "bytes"] + sorted((set(totals.get("in", {})) | set(totals.get("out", {})))
                                          - {"packets", "bytes"})
    print(_grid(["OUTCOME", "IN", "OUT"],
                [["OK" if n == "packets" else n, totals.get("in", {}).get(n, 0), totals.get("out", {}).get(n, 0)]
                 for n in names]))
    if stats["sas"]:
        rows = []
        for sa in stats["sas"]:
            c = sa["counters"]
            drops = " ".join(f"{k}={v}" for k, v in sorted(c.items()) if k not in ("packets", "bytes"))
            rows.append([f"{sa['spi']:#010x}", sa["direction"], sa["dst"], sa["state"], sa["reqid"] or None,
                         c.get("packets", 0), c.get("bytes", 0), sa["late_packets"], drops or None])
        print()
        print(_grid(["SPI", "DIR", "DST", "STATE", "REQID", "PACKETS", "BYTES", "LATE", "OTHER"], rows))
    if stats.get("gateway"):
        _gateway_tables(stats["gateway"])
    # what arrives unauthenticated and is bounded on the way in: the control socket's and
    # the IKE daemon's own counters, one line each
    print()
    print("control:   " + " ".join(f"{k}={v}" for k, v in (stats.get("control") or {}).items()))
    if stats.get("ike"):
        # two dozen counters each, most of them 0: the ones that are not, as OTHER does above
        for title in ("counters", "intake"):
            shown = " ".join(f"{k}={v}" for k, v in stats["ike"][title].items() if v)
            print(f"{'ike ' + title + ':':<16}{shown or '-'}")
    return 0


def _gateway_tables(g: dict) -> None:
    """The "gateway" section of `ipsp stats`: I/O per path, then the gateway's own events."""
    print(f"\ngateway {g['tun']} <-> {g['outer']} {g['local']}"
          f"{':' + str(g['udp_port']) if g.get('udp_port') else ''}")
    print(_grid(["PATH", "PACKETS", "SYSCALLS", "PER SYSCALL", "ERRORS", "DROPPED"],
                [[name, v["packets"], v["syscalls"], f"{v['packets_per_syscall']:.2f}", v["errors"], v["dropped"]]
                 for name, v in g["io"].items()]
                + [[d, g[d]["packets"], g[d]["syscalls"], f"{g[d]['packets_per_syscall']:.2f}", None, None]
                   for d in ("outbound", "inbound")]))
    print()
    for title, group in (("icmp", g["icmp"]), ("fragments", g["fragments"]), ("dropped", g["dropped"]),
                         ("other", {"keepalives_sent": g["keepalives_sent"], "pmtu_reports": g["pmtu"]["reports"],
                                    "pmtu_evicted": g["pmtu"]["evicted"]})):
        print(f"{title + ':':<11}" + " ".join(f"{k}={v}" for k, v in group.items()))
    if g["path_mtu"]:
        print()
        print(_grid(["SPI", "DST", "PATH MTU", "MAX INNER", "FRAGMENT"],
                    [[f"{r['spi']:#010x}", r["dst"], r["path_mtu"], r["max_inner"], r["fragment"]]
                     for r in g["path_mtu"]]))


def _cmd_events(args: argparse.Namespace) -> int:
    client = _client(args)
    since = args.since
    events = client.call("events", since=since)
    if args.json and not args.follow:
        _json(events)
        return 0
    if not args.json:
        print(f"{'ID':>6}  {'TIME':<19}  {'KIND':<7}  TEXT")
    try:
        while True:
            for e in events:
                since = e["id"]
                if args.json:            # --follow --json: one object per line
                    print(json.dumps(e))
                else:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
                    print(f"{e['id']:>6}  {stamp:<19}  {e['kind']:<7}  {e['text']}")
            if not args.follow:
                return 0
            sys.stdout.flush()
            time.sleep(1.0)
            events = client.call("events", since=since)
    except KeyboardInterrupt:
        return 0


def _cmd_reload(args: argparse.Namespace) -> int:
    from ipsp.control import ControlClient

    params = {"path": os.path.abspath(args.file)} if args.file else {}
    # a file of a few hundred thousand policies takes a while to read: wait for the answer
    r = ControlClient(args.socket, timeout=RELOAD_TIMEOUT).call("reload", **params)
    print(f"reloaded {r['path']}: {r['peers']} peers, {r['policies']} policies, {r['sas']} SAs")
    return 0


def _cmd_ike(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.ike_command == "status":
        status = client.call("ike", action="status")
        if args.json:
            _json(status)
            return 0
        for sa in status["ike_sas"]:
            role = "initiator" if sa["initiator"] else "responder"
            print(f"{sa['connection'] or '?'}: {sa['state']} {role} {sa['spi_i']}_i {sa['spi_r']}_r "
                  f"{sa['remote']} {sa['proposal'] or ''} {sa['peer'] or ''}")
            for c in sa["children"]:
                print(f"  child {c['spi_in']}_i {c['spi_out']}_o {c['proposal']} {c['state']}")
        print("counters: " + ", ".join(f"{k} {v}" for k, v in status["counters"].items() if v))
        return 0
    params = {"action": args.ike_command, "connection": args.connection}
    if args.ike_command == "rekey":
        params["ike"] = args.ike
    result = client.call("ike", **params)
    print(f"{args.ike_command} {args.connection}: {result.get('started', 'ok')}")
    return 0


def _spi(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an SPI such as 0x1001 or 4097, got {text!r}") from None


def _lifetime(text: str) -> tuple[str, int | float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE such as hard_seconds=3600, got {text!r}")
    try:
        return name, int(value)
    except ValueError:
        try:
            return name, float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number, got {value!r}") from None


_SA_OPTIONS = ("direction", "spi", "src", "dst", "proposal", "enc_key_env", "enc_key_file", "auth_key_env",
               "auth_key_file", "reqid", "mode", "encap", "sport", "dport", "label", "esn", "replay_window",
               "source", "lifetime")


def _add_control_parsers(sub) -> argparse.ArgumentParser:
    """The engine and control subcommands; returns `sa add`'s parser, which main checks."""
    def socket_opt(parser, required: bool = True) -> None:
        parser.add_argument("--socket", required=required, metavar="PATH", type=_path_arg,
                            help="the engine's control socket")

    def json_opt(parser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    e = sub.add_parser("engine", help="run an engine with its control socket (no packet I/O)")
    e.add_argument("--config", required=True, metavar="FILE", type=_path_arg, help="the configuration file")
    e.add_argument("--socket", metavar="PATH", type=_path_arg, help="control socket (default: [engine] control_socket)")
    e.set_defaults(func=_cmd_engine)

    g = sub.add_parser("gateway", help="run a tunnel gateway: a TUN device, the engine and an outer socket",
                       description="Run the engine as a tunnel gateway: the [gateway] table of the configuration "
                                   "file names the TUN device, the routes into it and the outer socket (ESP in UDP "
                                   "or raw ESP); prints 'ipsp gateway: ready' on standard error once it forwards.")
    g.add_argument("--config", required=True, metavar="FILE", type=_path_arg,
                   help="configuration file with a [gateway] table")
    g.add_argument("--socket", metavar="PATH", type=_path_arg, help="control socket (default: [engine] control_socket)")
    g.set_defaults(func=_cmd_gateway)

    c = sub.add_parser("config", help="configuration files").add_subparsers(dest="config_command", required=True)
    cc = c.add_parser("check", help="load and validate a configuration file, print what it defines")
    cc.add_argument("file", metavar="FILE")
    json_opt(cc)
    cc.set_defaults(func=_cmd_config_check)

    sa = sub.add_parser("sa", help="security associations").add_subparsers(dest="sa_command", required=True)
    pol = sub.add_parser("policy", help="security policies").add_subparsers(dest="policy_command", required=True)
    for group, func in ((sa, _cmd_sa_list), (pol, _cmd_policy_list)):
        ls = group.add_parser("list", help="from the running engine (--socket) or a configuration file (--config)")
        src = ls.add_mutually_exclusive_group(required=True)
        src.add_argument("--socket", metavar="PATH", type=_path_arg, help="the engine's control socket")
        src.add_argument("--config", metavar="FILE", type=_path_arg, help="a configuration file")
        json_opt(ls)
        ls.set_defaults(func=func)

    add = sa.add_parser("add", help="install SAs: every [[sa]] of --file, or one from the options")
    socket_opt(add)
    add.add_argument("--file", metavar="SA.toml", type=_path_arg, help="[[sa]] tables in the configuration file's schema")
    add.add_argument("--direction", choices=["in", "out"])
    add.add_argument("--spi", type=_spi, help="0x100..0xffffffff (hex with 0x)")
    add.add_argument("--src")
    add.add_argument("--dst")
    add.add_argument("--proposal", help="e.g. aes128gcm16, aes256-sha256")
    # keys by reference only, resolved by the engine: a key on a command line leaks through ps
    for name in ("enc", "auth"):
        k = add.add_mutually_exclusive_group()
        k.add_argument(f"--{name}-key-env", metavar="NAME", help=f"{name}_key from the engine's environment")
        k.add_argument(f"--{name}-key-file", metavar="PATH", type=_path_arg, help=f"{name}_key from a hex file the engine reads")
    add.add_argument("--reqid", type=int)
    add.add_argument("--mode", choices=["tunnel", "transport"])
    add.add_argument("--encap", choices=["udp"], help="ESP in UDP (RFC 3948)")
    add.add_argument("--sport", type=int)
    add.add_argument("--dport", type=int)
    add.add_argument("--label")
    add.add_argument("--esn", action="store_true", help="extended sequence numbers")
    add.add_argument("--replay-window", type=int)
    add.add_argument("--source", help="a shared multicast group SA's sender (RFC 5374)")
    add.add_argument("--lifetime", type=_lifetime, action="append", default=[], metavar="NAME=VALUE",
                     help="a lifetime limit such as hard_seconds=3600 (repeatable)")
    json_opt(add)
    add.set_defaults(func=_cmd_sa_add)

    d = sa.add_parser("del", help="delete an SA")
    socket_opt(d)
    d.add_argument("--spi", type=_spi, required=True)
    d.add_argument("--dst", required=True)
    d.add_argument("--direction", choices=["in", "out"], required=True)
    d.add_argument("--group-source", metavar="ADDR", help="the sender of a per-sender group SA")
    d.set_defaults(func=_cmd_sa_del)

    pa = pol.add_parser("add", help="add a policy")
    socket_opt(pa)
    pa.add_argument("--direction", choices=["out", "in"], default="out")
    pa.add_argument("--action", choices=["protect", "bypass", "discard"], required=True)
    pa.add_argument("--src", metavar="PREFIX")
    pa.add_argument("--dst", metavar="PREFIX")
    pa.add_argument("--proto", help="any, tcp, udp, sctp, icmp, ipv6-icmp or 0..255")
    pa.add_argument("--sport", help="a port or a range such as 1024-65535")
    pa.add_argument("--dport", help="a port or a range such as 1024-65535")
    pa.add_argument("--reqid", type=int, help="protect: the SAs that carry it")
    pa.add_argument("--priority", type=int, help="lower first (default 1000)")
    pa.add_argument("--label")
    json_opt(pa)
    pa.set_defaults(func=_cmd_policy_add)

    pd = pol.add_parser("del", help="delete a policy by id")
    socket_opt(pd)
    pd.add_argument("id", type=int, metavar="ID")
    pd.set_defaults(func=_cmd_policy_del)

    st = sub.add_parser("stats", help="packet counters of the running engine")
    socket_opt(st)
    fmt = st.add_mutually_exclusive_group()
    fmt.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format")
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_cmd_stats)

    ev = sub.add_parser("events", help="acquire, expire and mapping events of the running engine")
    socket_opt(ev)
    ev.add_argument("--since", type=int, default=0, metavar="N", help="only events with ids above N")
    ev.add_argument("--follow", action="store_true", help="keep printing new events (Ctrl-C stops)")
    json_opt(ev)
    ev.set_defaults(func=_cmd_events)

    rl = sub.add_parser("reload", help="make the running engine re-read its configuration file (or FILE)")
    socket_opt(rl)
    rl.add_argument("file", nargs="?", metavar="FILE", type=_path_arg)
    rl.set_defaults(func=_cmd_reload)

    ike = sub.add_parser("ike", help="the IKEv2 daemon of a running gateway").add_subparsers(
        dest="ike_command", required=True)
    ik_st = ike.add_parser("status", help="IKE SAs, Child SAs and counters")
    socket_opt(ik_st)
    json_opt(ik_st)
    ik_cmds = [ik_st]
    for action, text in (("initiate", "bring a connection up"), ("terminate", "delete a connection's IKE SA"),
                         ("rekey", "rekey a connection's Child SAs (--ike: its IKE SA)")):
        ik = ike.add_parser(action, help=text)
        socket_opt(ik)
        ik.add_argument("connection", metavar="CONNECTION")
        if action == "rekey":
            ik.add_argument("--ike", action="store_true", help="rekey the IKE SA instead")
        ik_cmds.append(ik)
    for ik in ik_cmds:
        ik.set_defaults(func=_cmd_ike)

    return add


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on standard error, exit 2 (subcommands inherit the class)."""

    def error(self, message: str):
        _error(f"{self.prog}: error: {message} (usage: {self.prog} --help)")
        self.exit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="ipsp", description="An embeddable IPsec ESP engine.")
    p.add_argument("--version", action="version", version=f"ipsp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="measure encapsulation and decapsulation against baselines (the main job)")
    b.add_argument("--trace", metavar="FILE", type=_path_arg,
                   help="a pcap or pcapng file (default: a generated Simple IMIX trace)")
    b.add_argument("--packets", type=_count(1, 1 << 22), default=65536,
                   help="packets in the generated trace (default 65536, at most 4194304)")
    b.add_argument("--proposal", action="append", type=_checked(_proposal, "proposal"),
                   help="a proposal to measure (repeatable; default: a standard set)")
    b.add_argument("--backend", action="append", choices=["openssl", "ipsecmb"], help="backend (repeatable)")
    b.add_argument("--batch", type=_count(1, 65536), default=256, help="packets per engine call (default 256)")
    b.add_argument("--chunk", type=_count(1, 65536), default=1024,
                   help="packets per timed pass, a receive ring (default 1024)")
    b.add_argument("--repeats", type=_count(1, 1000), default=3,
                   help="timed passes per chunk, the fastest counts (default 3)")
    b.add_argument("--threads", type=_count(1, 256), default=1,
                   help="also measure N threads against one (flows sharded over SAs)")
    b.add_argument("--no-baselines", action="store_true", help="skip the cryptography and scapy baselines")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.add_argument("--plot", metavar="FILE.png", type=_path_arg, help="draw the results (needs matplotlib: ipsp[plot])")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("trace", help="encrypt or decrypt a pcap/pcapng capture, or generate one")
    trace_sub = t.add_subparsers(dest="action", required=True)
    for action in ("encrypt", "decrypt"):
        ta = trace_sub.add_parser(action, help=f"{action} a capture with the SAs of an SA file")
        keys = ta.add_mutually_exclusive_group(required=True)
        keys.add_argument("--sa", type=_path_arg, metavar="FILE", help="TOML file with [[sa]] tables")
        if action == "decrypt":
            keys.add_argument("--secrets", type=_path_arg, metavar="FILE",
                              help="a tcpdump espsecret file (SPI@DST ALGO:SECRET lines) or a Wireshark esp_sa file")
            ta.add_argument("--no-verify", action="store_true",
                            help="strip the ICV without checking it (only the cipher key is known)")
        ta.add_argument("input", type=_path_arg)
        ta.add_argument("output", type=_path_arg)
        ta.set_defaults(func=_cmd_trace, secrets=None, no_verify=False)
    _add_trace_gen_parser(trace_sub)

    i = sub.add_parser("info", help="versions and crypto backends")
    i.set_defaults(func=_cmd_info)

    sa_add = _add_control_parsers(sub)

    args = p.parse_args(argv)
    if args.func is _cmd_sa_add:
        given = [o for o in _SA_OPTIONS if getattr(args, o) not in (None, False, [])]
        if args.file and given:
            sa_add.error(f"give --file or the SA's options (--{given[0].replace('_', '-')}), not both")
        if not args.file and not {"direction", "spi", "src", "dst", "proposal"} <= set(given):
            sa_add.error("give --file, or --direction, --spi, --src, --dst and --proposal")
    from ipsp.control import ControlError

    try:
        return args.func(args)
    except _Failed as exc:
        return exc.status
    except (ConfigError, ControlError, FileError) as exc:
        # a bad file or data, or an engine that refused: exit 1 (docs/cli.md); usage errors,
        # argparse's, are 2
        _error(f"ipsp: {exc}")
        return 1
    except KeyboardInterrupt:
        # Ctrl-C in a bench or a long trace: outputs in progress are removed (ipsp.files)
        _error("ipsp: interrupted")
        return 130
    except BrokenPipeError:
        # `ipsp sa list --json | head`: the reader has gone, so has the point of printing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # a file error the checks before could not foresee (a disk that fails, a file removed
        # meanwhile): one line naming it, never a traceback
        _error(f"ipsp: {exc.filename}: {exc.strerror}" if exc.filename else f"ipsp: {exc.strerror or exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
