"""Ratios from one saved pytest-benchmark run: kernel / floor per transform, backend,
direction, packet size and batch size (both measured in that run), in ns per packet; and,
from the stage suite (test_bench_stages.py), each stage's ns per packet and Gbit/s at batch
256 and its share of encap / decap.

    python bench/report.py .benchmarks/<machine>/<NNNN>_<name>.json
"""

import json
import re
import sys

STAGES = ("parse", "replay_check", "replay_update", "seal", "open", "encap", "decap")
STAGE_BATCH = 256


def main(path):
    with open(path) as f:
        data = json.load(f)
    kern, floor, threads, engine, spd, stages, ike = {}, {}, [], {}, {}, {}, {}
    peers = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "speedup" in info:
            threads.append(info)
            continue
        if info.get("stage") == "ike":
            ike[info["case"]] = b["stats"]["min"]
            continue
        if info.get("stage") == "ike_peers":
            peers[info["responder"]] = info
            continue
        if info.get("stage") in STAGES:
            key = (info["stage"], info.get("proposal"), info.get("backend"), info["size"], info["packets"],
                   info.get("case"))
            stages[key] = (b["stats"]["min"], info["bytes"])
            continue
        ns = b["stats"]["min"] * 1e9 / info["packets"]
        if "path" in info:
            engine[(info["direction"], info["backend"], info["path"], info["policies"])] = ns
            continue
        if info.get("stage") == "spd":
            spd[(info["flows"], info["policies"])] = ns
            continue
        m = re.search(r"batch(\d+)", b["name"])
        batch = int(m.group(1)) if m else 1
        key = (info["proposal"], info["backend"], info["direction"], info["size"], batch)
        ns = b["stats"]["min"] * 1e9 / info["packets"]
        (floor if info.get("floor") else kern)[key] = ns
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}; "
          f"{data['datetime']}; min of rounds, ns per packet")
    if "handshake" in ike:
        hs = ike["handshake"]
        line = f"IKE: {1 / hs:,.0f} handshakes/s (IKE_SA_INIT + IKE_AUTH, PSK, x25519, {hs * 1e6:.0f} us)"
        if "floor" in ike:
            line += f"; floor (2 X25519 key pairs + 2 exchanges) {ike['floor'] * 1e6:.0f} us: {hs / ike['floor']:.1f}x"
        print(line)
    if peers:
        ours, swan = peers.get("ipsp"), peers.get("strongswan")
        rate = lambda p: f"{p['rate']:,.0f}/s" if p else "-"
        line = f"IKE responder: ipsp {rate(ours)}, strongSwan {rate(swan)} (same initiator, same run)"
        if ours and swan:
            line += f": {ours['rate'] / swan['rate']:.2f}x"
        print(line)
        for name, p in (("ipsp", ours), ("strongSwan", swan)):
            if p:
                print(f"  {name:11} {p['handshakes']} handshakes, {p.get('window', '?')} in flight; CPU per handshake: "
                      f"responder {p.get('responder_cpu_us', 0):,.0f} us, initiator {p.get('initiator_cpu_us', 0):,.0f} us "
                      f"(initiator busy {100 * p.get('initiator_busy', 0):.0f}% of the wall time)")
                states = p.get("responder_engine_sas")
                if states is not None and states.get("mature", 0) != 2 * p["handshakes"]:
                    print(f"  {name:11} WARNING: after the run its engine holds SAs {states}, not "
                          f"{2 * p['handshakes']} mature (IKE lists {p.get('responder_child_sas')} Child SAs)")
    if kern or not stages:
        print(f"{'proposal':18} {'backend':8} {'dir':13} {'size':>5} {'batch':>5} {'kernel':>8} {'floor':>8} {'ratio':>6}")
    for key in sorted(kern):
        f = floor.get(key)
        ratio = f"{kern[key] / f:6.2f}" if f else "     -"
        fl = f"{f:8.1f}" if f else "       -"
        print(f"{key[0]:18} {key[1]:8} {key[2]:13} {key[3]:5} {key[4]:5} {kern[key]:8.1f} {fl} {ratio}")
    for t in threads:
        print(f"threads: {t['proposal']} {t['backend']} {t['size']}B: two threads on two SAs "
              f"{t['speedup']:.2f}x one thread")
    if engine:
        print("engine path / bare kernel batch call, aes128gcm16 64 B, batches of 256 (ns per packet):")
        for (direction, backend, path, policies), ns in sorted(engine.items()):
            if path == "engine":
                base = engine.get((direction, backend, "kernel", 0))
                print(f"  {direction:8} {backend:8} {policies:5} policies {ns:7.1f} vs {base:7.1f}  "
                      f"{ns / base:5.2f}x")
    if spd:
        print("SPD lookup, outbound classifier alone (ns per packet):")
        for flows in sorted({f for f, _ in spd}):
            few, many = spd.get((flows, 10)), spd.get((flows, 1000))
            if few and many:
                print(f"  {flows:6} flows: 10 policies {few:7.1f}, 1000 policies {many:7.1f}  {many / few:6.2f}x")
    if stages:
        stage_report(stages)


def stage_report(stages, batch=STAGE_BATCH):
    """Per stage at one batch size: ns per packet and Gbit/s (inner packet bytes, as the
    kernel's figures), then each stage's share of the full encap / decap call."""

    def get(stage, proposal, backend, size, case=None):
        v = stages.get((stage, proposal, backend, size, batch, case))
        return None if v is None else (v[0] * 1e9 / batch, v[1] * 8 / (v[0] * 1e9))

    def cell(v):
        if v is None:
            return f"{'-':>8} {'-':>7}"
        return f"{v[0]:8.1f} {v[1]:7.1f}" if v[1] >= 100 else f"{v[0]:8.1f} {v[1]:7.2f}"

    def pct(part, whole):
        return f"{100 * part / whole:5.1f}%" if part is not None and whole else f"{'-':>6}"

    rows = sorted({(p, be, sz) for (st, p, be, sz, n, _) in stages
                   if n == batch and st in ("seal", "open", "encap", "decap")})
    check = get("replay_check", None, None, 0, "ahead")
    inwin = get("replay_check", None, None, 0, "inwindow")
    update = get("replay_update", None, None, 0)
    print(f"stages at batch {batch} (min of rounds): ns per packet and Gbit/s of inner packet bytes; "
          "parse has no backend (no crypto)")
    heads = ("parse", "seal", "open", "encap", "decap")
    print(f"{'proposal':18} {'backend':8} {'size':>5} " + " ".join(f"{h + ' ns':>8} {'Gbit/s':>7}" for h in heads))
    for p, be, sz in rows:
        vals = [get("parse", p, None, sz)] + [get(h, p, be, sz) for h in heads[1:]]
        print(f"{p:18} {be:8} {sz:5} " + " ".join(cell(v) for v in vals))
    if check or update:
        def ns(v):
            return f"{v[0]:.2f}" if v else "-"
        print(f"replay window, batch {batch} (ns per sequence number, any transform or size): check "
              f"{ns(check)} above the top, {ns(inwin)} inside the window; update {ns(update)}")
    print(f"share of the full call at batch {batch}: encap = seal + rest (prepare, finish, call); decap = "
          "parse + check + open + update + rest (padding, strip, call); each part is timed on its own, so "
          "a rest within a few percent of zero (or below it) is noise")
    print(f"{'proposal':18} {'backend':8} {'size':>5} {'seal':>6} {'rest':>6} | {'parse':>6} {'check':>6} "
          f"{'open':>6} {'update':>6} {'rest':>6}")
    for p, be, sz in rows:
        enc, dec = get("encap", p, be, sz), get("decap", p, be, sz)
        seal, opn, parse = get("seal", p, be, sz), get("open", p, be, sz), get("parse", p, None, sz)
        parts = [parse, check, opn, update]
        e = enc[0] if enc else None
        d = dec[0] if dec else None
        erest = e - seal[0] if e and seal else None
        drest = d - sum(x[0] for x in parts) if d and all(parts) else None
        print(f"{p:18} {be:8} {sz:5} {pct(seal and seal[0], e)} {pct(erest, e)} | "
              + " ".join(pct(x and x[0], d) for x in parts) + f" {pct(drest, d)}")


if __name__ == "__main__":
    main(sys.argv[1])
