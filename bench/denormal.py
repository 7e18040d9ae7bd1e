#!/usr/bin/env python3
"""The cost of subnormal numbers: one forward whose states are all subnormal, timed with
el.set_flush_denormal off (IEEE, the default) and on, against the same forward on normal
numbers. Method and results: bench/README.md.

    python bench/denormal.py                 # (B, T, I, H) = (32, 100, 256, 256), 2 threads
    python bench/denormal.py --threads 1 --dtype float64 --repeats 31

The subnormal model is the one of tests/test_flush_denormal.py, scaled up: the weights are
tiny and the cell-gate bias is 1e-39 (float32; 1e-310 for float64), so the gates' inputs, g,
c and h are all subnormal while i, f, o stay at 1/2. The normal model is the same with the
weights scaled to 0.05: the same instructions on numbers of ordinary size. Rounds alternate
the three cases; each is reported as the median over rounds, and the ratios as medians of the
per-round ratios (the machine is shared: read ratios, not times).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import eigenlstm as el

TINY = {"float32": 1e-39, "float64": 1e-310}


def model(I, H, dtype, subnormal, seed=0):
    """An eval-mode LSTM whose states are subnormal (subnormal=True) or of ordinary size."""
    lstm = el.LSTM(I, H, dtype=np.dtype(dtype).type, seed=seed)
    rng = np.random.default_rng(seed)
    tiny = TINY[dtype]
    state = {}
    for k, v in lstm.state_dict().items():
        if k.startswith("weight"):
            state[k] = (rng.uniform(-1, 1, v.shape) * (tiny if subnormal else 0.05)).astype(dtype)
        else:
            state[k] = np.zeros_like(v)
    # the g block of [i, f, g, o]: drives c and h; subnormal or ordinary
    state["bias_ih_l0"][2 * H : 3 * H] = tiny if subnormal else 0.1
    lstm.load_state_dict(state)
    return lstm.eval()


def time_call(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="32,100,256,256", help="B,T,I,H (default 32,100,256,256)")
    p.add_argument("--dtype", choices=sorted(TINY), default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    p.add_argument("--repeats", type=int, default=11, help="calls per case and round (default 11)")
    args = p.parse_args(argv)
    B, T, I, H = (int(v) for v in args.shape.split(","))
    el.set_num_threads(args.threads)
    saved = el.get_flush_denormal()

    x_sub = np.full((T, B, I), TINY[args.dtype], args.dtype)
    x_norm = np.random.default_rng(1).standard_normal((T, B, I)).astype(args.dtype)
    sub, norm = model(I, H, args.dtype, True), model(I, H, args.dtype, False)
    y, _ = sub(x_sub)
    assert np.all(np.abs(y) < np.finfo(args.dtype).tiny) and np.any(y != 0), "states not subnormal"

    cases = {
        "normal numbers": (False, lambda: norm(x_norm)),
        "subnormal, flush off (IEEE)": (False, lambda: sub(x_sub)),
        "subnormal, flush on": (True, lambda: sub(x_sub)),
    }
    times = {name: [] for name in cases}
    try:
        for _ in range(args.rounds):
            for name, (flush, fn) in cases.items():
                el.set_flush_denormal(flush)
                fn()  # warm-up
                times[name].append(time_call(fn, args.repeats))
    finally:
        el.set_flush_denormal(saved)

    base = times["normal numbers"]
    cfg = el.config()
    print(
        f"eigenlstm {cfg['version']} ({cfg['isa']}), {args.dtype}, (B, T, I, H) = ({B}, {T}, {I}, "
        f"{H}), {args.threads} threads, {args.rounds} rounds x {args.repeats} calls"
    )
    print("| case | median time per forward | / normal numbers |")
    print("|---|---|---|")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"| {name} | {statistics.median(ts) * 1e3:.2f} ms | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
