"""Ratios from one saved pytest-benchmark run: kernel / floor per transform, backend,
direction, packet size and batch size (both measured in that run), in ns per packet.

    python bench/report.py .benchmarks/<machine>/<NNNN>_<name>.json
"""

import json
import re
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    kern, floor, threads, engine, spd = {}, {}, [], {}, {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "speedup" in info:
            threads.append(info)
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


if __name__ == "__main__":
    main(sys.argv[1])
