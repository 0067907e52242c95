#!/usr/bin/env python3
"""Write a seed corpus for fuzz_decap.py: for every strategy, transform and mode an input
whose leading bytes select that configuration (found by searching prefixes through the
harness's own pick_cfg, so the seeds follow its input layout), followed by random bytes;
RAW seeds carry a valid ESP packet made by encap for their configuration.

    source fuzz/build/env.sh && $FUZZ_PY fuzz/make_seeds.py fuzz/corpus   (run.sh does this)
"""

import hashlib
import os
import random
import sys

sys.argv, _argv = sys.argv[:1], sys.argv
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz_decap as F  # noqa: E402
import fastpath as fp  # noqa: E402


def prefix_for(rng, strategy_index, t_index, mode, framing):
    """Bytes that make TestOneInput pick this strategy and configuration."""
    for _ in range(20000):
        head = bytes([strategy_index]) + bytes([t_index]) + rng.randbytes(24)
        r = F.R(head)
        r.u8()
        c = F.pick_cfg(r)
        if c.t is F.TRANSFORMS[t_index] and c.mode == mode and c.framing == framing and r.i <= len(head):
            return head[:r.i], c
    return None, None


def main():
    out = _argv[1] if len(_argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(1)
    seen = {}
    for si, strat in enumerate(F.STRATEGIES):
        if strat in seen.values():
            continue
        seen[si] = strat
    n = 0
    for si, strat in seen.items():
        for ti in range(len(F.TRANSFORMS)):
            for mode, framing in ((fp.TUNNEL, fp.IP), (fp.TUNNEL, fp.ESP), (fp.TRANSPORT, fp.IP)):
                head, c = prefix_for(rng, si, ti, mode, framing)
                if head is None:
                    continue
                if strat is F.strat_raw:
                    sa = F.make_sa(c)
                    inner = bytes([0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]) + rng.randbytes(8)
                    try:
                        pkt = sa.encap(inner)
                    except fp.PacketError:
                        continue
                    data = head + b"\x01" + pkt
                else:
                    data = head + rng.randbytes(rng.randrange(64, 600))
                name = hashlib.sha1(data).hexdigest()
                with open(os.path.join(out, name), "wb") as f:
                    f.write(data)
                n += 1
    print(f"wrote {n} seeds to {out}")


if __name__ == "__main__":
    main()
