"""The floors: minimal C loops over the same library calls the kernel makes, over the same
cipher regions of the same packets, restored the same way. Kernel / floor is the ratio the
project reports (bench/report.py computes it from one saved run)."""

import pytest

from ipsp.bench import floor_for

from conftest import Arena, sa_pair


@pytest.mark.parametrize("direction", ["encap", "decap"])
def test_floor(benchmark, proposal, backend, size, batch, direction):
    floor = floor_for(proposal, backend)
    if floor is None:
        pytest.skip(f"no floor loop for {proposal} on {backend}")
    out, _ = sa_pair(proposal, backend)
    arena = Arena(size, batch, out)
    esp = arena.esp_image(out)[0]          # also lays out the cipher regions the floor uses
    image = esp if direction == "decap" else arena.plain
    benchmark.group = f"{direction} {proposal} {size}B"
    benchmark.extra_info.update(packets=batch, bytes=batch * size, proposal=proposal, backend=backend,
                                size=size, direction=direction, floor=True)
    benchmark.pedantic(floor[1], args=(arena.buf, arena.floor_off, arena.floor_len),
                       kwargs={"encrypt": direction == "encap"},
                       setup=lambda: arena.reset(image, arena.off0, arena.len0),
                       rounds=300 if batch > 1 else 3000, warmup_rounds=10)
