#!/usr/bin/env python3
"""The cost of each LSTM cell variant against the plain cell, and against torch autograd.

For each shape, one process times in the same interleaved rounds (compare.py's `measure`, same
thread count for every engine): eigenlstm's plain LSTM and each variant with the same weights,
an evaluation forward and a training step (training forward + backward). A variant's ratio is
its median time over the plain cell's: the overhead it adds. The torch column is the same
variant written as a torch autograd cell in a Python loop over time (tests/variant_reference.py
does the same in float64), what users write today, timed for the training step. Writes
variants.md and variants.json into --out (default bench/results/).

    python bench/variants.py                       # ds_inf_b32 and ds_train_512, 2 threads
    python bench/variants.py --quick               # a smoke run while developing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import SHAPES, import_engines, machine_info, measure  # noqa: E402

# name: (keyword arguments of el.LSTM, projection size as a fraction of H or 0). A projected
# variant is timed against the plain LSTM with the same projection.
VARIANTS = {
    "peepholes": ({"peepholes": True}, 0),
    "cell_clip": ({"cell_clip": 1.0}, 0),
    "proj_clip": ({"proj_clip": 0.1}, 0.5),
    "peepholes+cell_clip": ({"peepholes": True, "cell_clip": 1.0}, 0),
    "recurrent_dropout": ({"recurrent_dropout": 0.25}, 0),
    "weight_drop": ({"weight_drop": 0.5}, 0),
    "zoneout": ({"zoneout": 0.1}, 0),
    "cifg": ({"cifg": True}, 0),
    "layer_norm": ({"layer_norm": True}, 0),
}
DEFAULT_SHAPES = ("ds_inf_b32", "ds_train_512")
# the bound on each variant's time over the plain cell's (layer norm: LAYER_NORM_BOUND)
BOUND = 1.15
LAYER_NORM_BOUND = 1.5


def bound(name: str) -> float:
    return LAYER_NORM_BOUND if "layer_norm" in name else BOUND


def make_lstms(el, I, H, options, P):
    """(plain, variant): el.LSTMs with the same weights (the variant's extra parameters at
    their default initialisation; a cifg variant takes the plain cell's i, g and o rows)."""
    plain = el.LSTM(I, H, proj_size=P, seed=0)
    variant = el.LSTM(I, H, proj_size=P, seed=0, **options)
    state = variant.state_dict()
    for k, v in plain.state_dict().items():
        if v.shape != state[k].shape:  # cifg: the gate blocks i, g, o of i, f, g, o
            v = np.concatenate([v[:H], v[2 * H :]])
        state[k] = v
    variant.load_state_dict(state)
    return plain, variant


def torch_variant_step(torch, I, H, P, options):
    """A training step of the variant as a torch autograd cell in a Python loop over time."""
    g = torch.Generator().manual_seed(0)
    k = 1.0 / H**0.5
    Hout = P or H

    def param(*shape):
        return ((torch.rand(*shape, generator=g) * 2 - 1) * k).requires_grad_()

    NG = 3 if options.get("cifg") else 4
    G = NG * H
    w_ih, w_hh, b = param(G, I), param(G, Hout), param(G)
    w_hr = param(P, H) if P else None
    ln = None
    if options.get("layer_norm"):  # torch.nn.LayerNorm's parameters: gains 1, shifts 0

        def norm(n):
            return torch.ones(n, requires_grad=True), torch.zeros(n, requires_grad=True)

        ln = {"ih": norm(G), "hh": norm(G), "c": norm(H)}

    def layer_norm(v, part):
        if ln is None:
            return v
        gain, shift = ln[part]
        return torch.nn.functional.layer_norm(v, gain.shape, gain, shift)

    w_p = param(3, H) if options.get("peepholes") else None
    cell_clip, proj_clip = options.get("cell_clip"), options.get("proj_clip")
    p_r, p_w = options.get("recurrent_dropout", 0.0), options.get("weight_drop", 0.0)
    z = options.get("zoneout", 0.0)

    def step(x, dy):
        T, B, _ = x.shape
        h, c = x.new_zeros(B, Hout), x.new_zeros(B, H)
        pre = layer_norm(x @ w_ih.T, "ih") + b
        w_rec = w_hh * torch.bernoulli(torch.full_like(w_hh, 1 - p_w)) / (1 - p_w) if p_w else w_hh
        r = torch.bernoulli(h.new_full(h.shape, 1 - p_r)) / (1 - p_r) if p_r else None
        outs = []
        for t in range(T):
            a = pre[t] + layer_norm((h * r if r is not None else h) @ w_rec.T, "hh")
            c_prev, h_prev = c, h
            if NG == 3:
                ai, ag, ao = a.chunk(3, dim=1)
                af = None
            else:
                ai, af, ag, ao = a.chunk(4, dim=1)
            if w_p is not None:
                ai = ai + w_p[0] * c
                if af is not None:
                    af = af + w_p[1] * c
            i = torch.sigmoid(ai)
            f = 1 - i if af is None else torch.sigmoid(af)
            c = f * c + i * torch.tanh(ag)
            if cell_clip is not None:
                c = c.clamp(-cell_clip, cell_clip)
            if w_p is not None:
                ao = ao + w_p[2] * c
            h = torch.sigmoid(ao) * torch.tanh(layer_norm(c, "c"))
            if w_hr is not None:
                h = h @ w_hr.T
            if proj_clip is not None:
                h = h.clamp(-proj_clip, proj_clip)
            if z:
                m_c = torch.bernoulli(torch.full_like(c, z))
                m_h = torch.bernoulli(torch.full_like(h, z))
                c = m_c * c_prev + (1 - m_c) * c
                h = m_h * h_prev + (1 - m_h) * h
            outs.append(h)
        torch.stack(outs).backward(dy)

    return step


def run_shape(name, el, torch, threads, args):
    B, T, I, H = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    xt = torch.from_numpy(x)
    rows = {}
    for vname in args.variants.split(","):
        options, frac = VARIANTS[vname]
        P = int(H * frac)
        plain, variant = make_lstms(el, I, H, options, P)
        dy = rng.standard_normal((T, B, P or H), dtype=np.float32)
        dyt = torch.from_numpy(dy)

        def fwd(m):
            m.eval()
            return lambda: m(x)

        def train(m, dy=dy):
            m.train()

            def step():
                m(x)
                m.backward(dy)

            return step

        torch_step = torch_variant_step(torch, I, H, P, options)
        budget = dict(
            repeats=args.repeats,
            budget_s=args.budget,
            batch_s=args.batch,
            warmup=args.warmup,
        )
        f = measure({"plain": fwd(plain), "variant": fwd(variant)}, **budget)
        s = measure(
            {
                "plain": train(plain),
                "variant": train(variant),
                "torch": lambda torch_step=torch_step, dyt=dyt: torch_step(xt, dyt),
            },
            **budget,
        )
        rows[vname] = {
            "options": options,
            "proj_size": P,
            "fwd": {k: v["median"] for k, v in f.items()},
            "train": {k: v["median"] for k, v in s.items()},
            "fwd_ratio": f["variant"]["median"] / f["plain"]["median"],
            "train_ratio": s["variant"]["median"] / s["plain"]["median"],
            "torch_ratio": s["torch"]["median"] / s["variant"]["median"],
            "repeats": {"fwd": f["plain"]["repeats"], "train": s["plain"]["repeats"]},
        }
        print(
            f"{name:>13} {vname:<20} fwd {rows[vname]['fwd_ratio']:.3f}x  "
            f"train {rows[vname]['train_ratio']:.3f}x  torch autograd / el "
            f"{rows[vname]['torch_ratio']:.1f}x",
            flush=True,
        )
    return rows


def write_markdown(results, path):
    info = results["machine"]
    lines = [
        "# Cell variants against the plain cell",
        "",
        f"`python bench/variants.py {' '.join(results['argv'])}`, {info['date']}; "
        f"{info['cpu']}, {info['threads']} threads, eigenlstm {info['eigenlstm_isa']}, "
        f"torch {info['torch']}.",
        "",
        "Medians of interleaved rounds in one process. **fwd** and **train** are the variant's "
        "time over the plain cell's with the same weights (eval forward; training forward + "
        f"backward); the bound is {BOUND}x. **torch** is a torch autograd cell of the same "
        "variant in a Python loop (what users write today) over eigenlstm's variant, training "
        f"step. The bound is {LAYER_NORM_BOUND}x for layer norm, which must also be at least "
        "5x faster than torch autograd.",
        "",
        "| shape (B, T, I, H) | variant | P | fwd | train | torch autograd / eigenlstm |",
        "|---|---|---|---|---|---|",
    ]
    for shape, rows in results["shapes"].items():
        for vname, r in rows.items():
            lines.append(
                f"| {shape} {SHAPES[shape]} | {vname} | {r['proj_size']} | "
                f"{r['fwd_ratio']:.3f} | {r['train_ratio']:.3f} | {r['torch_ratio']:.1f}x |"
            )
    over = [
        f"{shape} {vname} {k} {r[k]:.3f}"
        for shape, rows in results["shapes"].items()
        for vname, r in rows.items()
        for k in ("fwd_ratio", "train_ratio")
        if r[k] > bound(vname)
    ]
    ratios = [
        r[k]
        for rows in results["shapes"].values()
        for vname, r in rows.items()
        if "layer_norm" not in vname
        for k in ("fwd_ratio", "train_ratio")
    ]
    summary = (
        f"Worst ratio without layer norm {max(ratios):.3f}, median "
        f"{statistics.median(ratios):.3f}. "
        if ratios
        else ""
    )
    verdict = (
        "Every ratio is within its bound." if not over else "Over the bound: " + "; ".join(over)
    )
    lines += ["", summary + verdict, ""]
    Path(path).write_text("\n".join(lines))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="comma-separated SHAPES")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated VARIANTS (default: all)"
    )
    p.add_argument("--repeats", type=int, default=None, help="rounds (default: by --budget)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds per measure (default 20)")
    p.add_argument("--batch", type=float, default=0.05, help="seconds per timed batch")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="5 rounds, short batches")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if args.quick:
        args.repeats, args.batch, args.warmup = 5, 0.01, 1
    return args


def main(argv=None):
    args = parse_args(argv)
    el, torch, ort = import_engines(args.threads)
    results = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": machine_info(el, torch, ort, args.threads),
        "shapes": {},
    }
    for name in args.shapes.split(","):
        if name not in SHAPES:
            raise SystemExit(f"--shapes: unknown shape {name!r}; known: {', '.join(SHAPES)}")
        results["shapes"][name] = run_shape(name, el, torch, args.threads, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out / "variants.md")
    print(f"wrote {out / 'variants.md'}")


if __name__ == "__main__":
    main()
