#!/usr/bin/env python3
"""Streaming latency: one time step with state, eigenlstm's Stream against torch.nn.LSTM and
ONNX Runtime's LSTM operator, side by side in one process with the same thread count.

What a serving loop does per incoming step: feed x_t (N, I) with the state the last step left,
keep the new state. eigenlstm: ``stream(x, out=buf)`` (the state stays inside the stream);
torch: ``lstm(x[None], (h, c))`` under ``inference_mode``; ONNX Runtime: ``session.run`` of an
LSTM node with ``initial_h``/``initial_c`` inputs, the state fed back. Identical weights, timed
in interleaved rounds by compare.py's ``measure`` (which lets spinning thread pools settle
between engines). The int8 and bfloat16 streams of ``el.quantize`` of the same LSTM are timed in
the same rounds, with their error against the float32 stream (``--no-quantized`` leaves them
out). Writes a markdown table (and a .json beside it) to --out; method in bench/README.md.

    python bench/stream.py                     # 2 threads, default shapes
    python bench/stream.py --threads 1 --budget 3
    python bench/stream.py --shapes b1_h128 --budget 2 --out /tmp/stream.md   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402  (engines, weights, ONNX graph and timing are compare.py's own)

SHAPES = {  # name: (N, I, H): rows of a step (clients), input and hidden size
    "b1_h128": (1, 128, 128),
    "b1_h256": (1, 256, 256),
    "b8_h256": (8, 256, 256),
    "b64_h512": (64, 512, 512),
}


# The reduced-precision streams: timing key -> el.quantize dtype. Their label in the report is
# "eigenlstm " + the key's suffix.
QUANTIZED = {"eigenlstm_int8": "int8", "eigenlstm_bf16": "bfloat16"}


def run_shape(name, el, torch, ort, threads, budget, quantized=True):
    N, I, H = SHAPES[name]
    tl = compare.make_torch_lstm(torch, I, H).eval()
    ell = compare.make_el_lstm(el, tl, I, H).eval()
    sess = compare.ort_session(ort, compare.onnx_lstm_model(tl, I, H, initial_state=True), threads)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((64, N, I)).astype(np.float32)  # steps, cycled

    stream, out = ell.stream(N), np.empty((N, H), np.float32)
    t_state = [(torch.zeros(1, N, H), torch.zeros(1, N, H))]
    o_state = [np.zeros((1, N, H), np.float32), np.zeros((1, N, H), np.float32)]
    xts = [torch.from_numpy(x[None]) for x in xs]
    step = {"el": 0, "torch": 0, "ort": 0}

    def el_step():
        k = step["el"] = (step["el"] + 1) % len(xs)
        stream(xs[k], out=out)

    def torch_step():
        k = step["torch"] = (step["torch"] + 1) % len(xs)
        with torch.inference_mode():
            _, t_state[0] = tl(xts[k], t_state[0])

    def ort_step():
        k = step["ort"] = (step["ort"] + 1) % len(xs)
        _, o_state[0], o_state[1] = sess.run(
            None, {"X": xs[k][None], "initial_h": o_state[0], "initial_c": o_state[1]}
        )

    # The three agree on a few steps from zero state before anything is timed.
    stream.reset()
    with torch.inference_mode():
        y_t, _ = tl(torch.from_numpy(xs[:5]))
    y_o = sess.run(None, {"X": xs[:5], "initial_h": o_state[0] * 0, "initial_c": o_state[1] * 0})[
        0
    ][:, 0]
    y_e = np.stack([stream(x) for x in xs[:5]])
    check = {
        "el_vs_torch_max_abs": float(np.abs(y_e - y_t.numpy()).max()),
        "el_vs_ort_max_abs": float(np.abs(y_e - y_o).max()),
    }
    for key, value in check.items():
        if not value <= 1e-5:
            print(f"  WARNING {name}: {key} = {value:.3g} > 1e-5", file=sys.stderr)

    fns = {"eigenlstm": el_step, "torch": torch_step, "onnxruntime": ort_step}
    if quantized:
        # Each precision's stream, from el.quantize of the float LSTM above; its error is the
        # norm-wise relative error of 64 steps from zero state against the float32 stream's.
        stream.reset()
        y_ref = np.stack([stream(x) for x in xs])
        stream.reset()
        check["rel_err_vs_fp32"] = {}
        for key, dtype in QUANTIZED.items():
            q_stream = el.quantize(ell, dtype).stream(N)
            y_q = np.stack([q_stream(x) for x in xs])
            check["rel_err_vs_fp32"][key] = compare.rel_error(y_q, y_ref)
            fns[key] = quantized_step(q_stream, xs, np.empty((N, H), np.float32))
    timing = compare.measure(fns, repeats=None, budget_s=budget, batch_s=0.02, warmup=50)
    return {"shape": [N, I, H], "check": check, "timing": timing}


def quantized_step(q_stream, xs, out):
    """One step of a quantized stream per call, cycling over xs like the float stream's."""
    step = [0]

    def run():
        k = step[0] = (step[0] + 1) % len(xs)
        q_stream(xs[k], out=out)

    return run


def write_markdown(results, path):
    m = results["machine"]
    lines = [
        "# Streaming: one step with state, eigenlstm vs torch.nn.LSTM vs ONNX Runtime",
        "",
        f"Generated by `{results['command']}` on {results['date']}.",
        "",
        f"- **Machine**: {m['cpu']}, {m['cores']} logical cores; CPU flags: {m['isa']}; "
        f"eigenlstm {m['eigenlstm']} at ISA level {m['eigenlstm_isa']}, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}; {results['threads']} threads for every engine",
        "- eigenlstm: `stream(x, out=buf)`; torch: `lstm(x[None], (h, c))` under "
        "`inference_mode`; ONNX Runtime: `session.run` with `initial_h`/`initial_c` fed back",
    ]
    kernels = m.get("quantized_kernels")
    if kernels:
        lines.append(
            f"- eigenlstm's reduced-precision kernels (`el.config()`): int8: "
            f"{kernels.get('int8', '-')}; bfloat16: {kernels.get('bfloat16', '-')}; ISA "
            f"features in use: {', '.join(m.get('isa_features') or []) or 'none'}"
        )
    lines += [
        "",
        "| shape (N, I, H) | eigenlstm | torch | ONNX Runtime | torch / eigenlstm | ORT / eigenlstm |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["shapes"].items():
        t = {k: v["median"] for k, v in r["timing"].items()}
        lines.append(
            f"| {name} {tuple(r['shape'])} | {compare.fmt_t(t['eigenlstm'])} | "
            f"{compare.fmt_t(t['torch'])} | {compare.fmt_t(t['onnxruntime'])} | "
            f"**{t['torch'] / t['eigenlstm']:.1f}x** | **{t['onnxruntime'] / t['eigenlstm']:.1f}x** |"
        )
    lines += ["", "Medians per step over interleaved rounds; ratios > 1: eigenlstm is faster."]
    q_rows = [
        (name, r, key)
        for name, r in results["shapes"].items()
        for key in QUANTIZED
        if key in r["timing"]
    ]
    if q_rows:
        lines += [
            "",
            "Reduced precision: `el.quantize(lstm, 'int8' | 'bfloat16').stream(N)`, same weights, "
            "timed in the same rounds as the table above. Ratios = the other step's median / "
            "this one's (> 1: this stream is faster); error = ‖y − y_fp32‖ / ‖y_fp32‖ over 64 "
            "steps from zero state, against the float32 stream.",
            "",
            "| shape (N, I, H) | stream | step | torch / this | eigenlstm fp32 / this | "
            "ORT / this | rel. error vs fp32 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r, key in q_rows:
            t = {k: v["median"] for k, v in r["timing"].items()}
            err = r["check"]["rel_err_vs_fp32"][key]
            lines.append(
                f"| {name} {tuple(r['shape'])} | eigenlstm {key.split('_')[-1]} | "
                f"{compare.fmt_t(t[key])} | **{t['torch'] / t[key]:.1f}x** | "
                f"{t['eigenlstm'] / t[key]:.2f}x | {t['onnxruntime'] / t[key]:.1f}x | {err:.1e} |"
            )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--budget", type=float, default=5.0, help="seconds of timing per shape")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of shapes")
    p.add_argument(
        "--out",
        default=str(HERE / "results" / "stream.md"),
        help="markdown report; the .json is written beside it (default bench/results/stream.md)",
    )
    p.add_argument("--no-quantized", action="store_true", help="skip the int8 and bfloat16 streams")
    args = p.parse_args(argv)
    names = args.shapes.split(",")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        p.error(f"--shapes: unknown {unknown}; choose from {list(SHAPES)}")
    el, torch, ort = compare.import_engines(args.threads)
    # A build older than el.quantize is timed in float32 only.
    quantized = not args.no_quantized and hasattr(el, "quantize")
    results = {
        "command": "python bench/stream.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": compare.machine_info(el, torch, ort, args.threads),
        "threads": args.threads,
        "quantized": quantized,
        "shapes": {},
    }
    for name in names:
        r = run_shape(name, el, torch, ort, args.threads, args.budget, quantized)
        results["shapes"][name] = r
        t = {k: v["median"] for k, v in r["timing"].items()}
        print(
            f"[stream] {name}: el {compare.fmt_t(t['eigenlstm'])} torch {compare.fmt_t(t['torch'])} "
            f"ort {compare.fmt_t(t['onnxruntime'])}"
            + "".join(
                f" {key.split('_')[-1]} {compare.fmt_t(t[key])}" for key in QUANTIZED if key in t
            ),
            flush=True,
        )
        for timing in r["timing"].values():
            timing.pop("samples")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(results, out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
