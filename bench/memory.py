#!/usr/bin/env python3
"""Training memory on long sequences: eigenlstm's `bptt_memory` modes against torch.nn.LSTM,
with and without `torch.utils.checkpoint`, each mode in a fresh subprocess.

Per mode: the peak RSS of a training step, what the forward keeps for backward, and the step
time, with ratios against eigenlstm's full storage and against torch.nn.LSTM. Writes memory.md
and memory.json into --out (default bench/results/). Method and columns: bench/README.md.

    python bench/memory.py                           # T=10000, B=16, I=H=512: a few GiB per mode
    python bench/memory.py --T 500 --B 4 --I 64 --H 64 --out /tmp/membench   # a smoke run
    python bench/memory.py --modes el-full,el-sqrt --rounds 3

The modes (size letters: T time, B batch, I input, H hidden; float32, one layer):

    el-full           el.LSTM(I, H), every step's activations kept (bptt_memory=None)
    el-sqrt           el.LSTM(I, H, bptt_memory="sqrt")
    el-budget         el.LSTM(I, H, bptt_memory=<--budget bytes>)
    torch             torch.nn.LSTM(I, H), autograd keeps what it saves
    torch-checkpoint  torch.nn.LSTM over chunks of ceil(sqrt(T)) steps, each chunk under
                      torch.utils.checkpoint.checkpoint(use_reentrant=False), (h, c) carried

"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import compare  # noqa: E402  (machine description and formatting are compare.py's own)

# mode -> (label in the report, engine, what the mode passes: bptt_memory or "checkpoint")
MODES = {
    "el-full": ("el full", "eigenlstm", None),
    "el-sqrt": ("el sqrt", "eigenlstm", "sqrt"),
    "el-budget": ("el budget", "eigenlstm", "budget"),
    "torch": ("torch nn.LSTM", "torch", None),
    "torch-checkpoint": ("torch checkpoint", "torch", "checkpoint"),
}
# The references every ratio is taken against.
EL_FULL, TORCH_FULL = "el-full", "torch"

# The targets for "sqrt" against full storage, each checked at the target sizes.
TARGET_SIZES = {"T": 10000, "B": 16, "I": 512, "H": 512}
TARGETS = {"kept": 0.05, "step_peak": 0.45, "step_time": 1.35}

# Fraction of full storage's estimated cache that el-budget gets when --budget is not given:
# a point between "sqrt" (about 1% at the default sizes) and full storage.
BUDGET_FRACTION = 0.10

MiB = 2**20
FLOAT32 = 4


def full_cache_bytes(T, B, I, H):
    """What full storage keeps for backward, estimated from the sizes (float32): the input copy
    [T, B, I], the gates [T, B, 4H], and h and c [T+1, B, H] each."""
    return FLOAT32 * (T * B * I + T * B * 4 * H + 2 * (T + 1) * B * H)


def caller_bytes(T, B, I, H):
    """The caller's arrays of one step: x [T, B, I], dy [T, B, H], y [T, B, H], dx [T, B, I]."""
    return FLOAT32 * T * B * (2 * I + 2 * H)


# ============================================================================================
# the child: one mode in a fresh process
# ============================================================================================


def status_bytes():
    """VmRSS and VmHWM (the peak RSS since start or the last reset) from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # the file counts kB
    return fields


def reset_peak():
    """Set VmHWM to the current RSS (`echo 5 > /proc/self/clear_refs`); False where the kernel
    refuses, in which case VmHWM also covers the input arrays' creation."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def eigenlstm_mode(args, bptt_memory):
    """(forward, backward, kept, gradients, versions) of an el.LSTM in training mode."""
    import eigenlstm as el

    el.set_num_threads(args.threads)
    lstm = el.LSTM(args.I, args.H, seed=0, bptt_memory=bptt_memory)
    lstm.train()

    def forward(x, count=False):  # count: torch's flag; the engine counts its cache itself
        lstm.zero_grad()
        y, (h_n, c_n) = lstm(x)
        return y, h_n, c_n

    def backward(outputs, dy):
        dx, _ = lstm.backward(dy)
        return dx

    def kept(outputs):
        return lstm.cache_bytes()  # the engine's own count

    def gradients():
        return list(lstm.grads.values())

    versions = {
        "eigenlstm": getattr(el, "__version__", "?"),
        "eigenlstm_isa": compare.eigenlstm_isa(el),
        "engine_threads": el.get_num_threads(),
    }
    return forward, backward, kept, gradients, versions


def torch_mode(args, checkpointed):
    """(forward, backward, kept, gradients, versions) of a torch.nn.LSTM in training mode."""
    import torch
    from torch.autograd.graph import saved_tensors_hooks
    from torch.utils.checkpoint import checkpoint

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # already set
        torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(args.I, args.H).train()
    chunk = math.ceil(math.sqrt(args.T))
    saved = {}  # storage address -> bytes of the tensors autograd saved in a counted forward

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t.detach()  # the same memory; t itself would tie an output to its own graph

    def run_chunk(x_k, h, c):
        y_k, (h, c) = lstm(x_k, (h, c))
        return y_k, h, c

    def run(xt):
        if not checkpointed:
            y, (h, c) = lstm(xt)
            return y, h, c
        # One split, so that backward gathers dx with one cat; slices of xt would each add a
        # zero-filled [T, B, I] gradient. Each chunk keeps only its inputs (views of x and the
        # carried state) and recomputes its activations in backward.
        h = c = torch.zeros(1, xt.shape[1], args.H)
        ys = []
        for x_k in xt.split(chunk):
            y_k, h, c = checkpoint(run_chunk, x_k, h, c, use_reentrant=False)
            ys.append(y_k)
        return torch.cat(ys), h, c

    def forward(x, count=False):
        # (y, h_n, c_n, x as a leaf tensor): x requires grad, since eigenlstm always returns dx
        lstm.zero_grad(set_to_none=True)
        saved.clear()
        xt = torch.from_numpy(x).requires_grad_(True)
        with saved_tensors_hooks(pack, lambda t: t) if count else contextlib.nullcontext():
            return (*run(xt), xt)

    def backward(outputs, dy):
        y, xt = outputs[0], outputs[-1]
        y.backward(torch.from_numpy(dy))
        return xt.grad.numpy()

    def kept(outputs):
        # What autograd saved for backward, by storage: the checkpointed chunks save only their
        # inputs. The caller's x, the outputs and the weights are not counted.
        theirs = {t.untyped_storage().data_ptr() for t in (*outputs, *lstm.parameters())}
        return sum(n for ptr, n in saved.items() if ptr not in theirs)

    def gradients():
        return [p.grad.numpy() for p in lstm.parameters()]

    versions = {"torch": torch.__version__, "engine_threads": torch.get_num_threads()}
    return forward, backward, kept, gradients, versions


def digest(arrays):
    """sha256 of the arrays' bytes: equal digests mean bitwise equal gradients. Read through
    the buffer protocol: a bytes copy of dx (as large as x) would raise the step's peak."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def run_child(args):
    """Build the mode's model, then the data, then run warm-up and timed training steps.

    Memory comes from the first full-size step of this fresh process (a warm-up step): RSS
    before its forward (x and dy allocated), VmHWM reset to it, RSS and VmHWM after that
    forward, VmHWM after its backward; the process's VmHWM after all steps is the peak.
    Prints one JSON line.
    """
    _, engine, option = MODES[args.child]
    T, B, I, H = args.T, args.B, args.I, args.H
    if engine == "eigenlstm":
        bptt_memory = args.budget if option == "budget" else option
        forward, backward, kept, gradients, versions = eigenlstm_mode(args, bptt_memory)
    else:
        forward, backward, kept, gradients, versions = torch_mode(args, option is not None)
    # A step of two time steps first: the libraries' code pages, the thread pools and lazy
    # initialisation enter RSS here rather than in the first measured step.
    tiny = np.random.default_rng(0).standard_normal((2, B, max(I, H)), dtype=np.float32)
    backward(forward(tiny[..., :I].copy()), tiny[..., :H].copy())
    del tiny
    gc.collect()
    rss_ready = status_bytes()["VmRSS"]  # libraries, threads and the model; no data yet
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    gc.collect()
    rss_before = status_bytes()["VmRSS"]
    peak_reset = reset_peak()
    fwd_s, bwd_s = [], []
    first = {}
    gc.disable()  # no collection inside a timed call
    for s in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        outputs = forward(x, count=s == 0)
        t1 = time.perf_counter()
        if s == 0:
            first["after_forward"] = status_bytes()
            first["outputs_bytes"] = sum(int(o.nbytes) for o in outputs[:3])
            first["kept_count"] = kept(outputs)
        t2 = time.perf_counter()
        dx = backward(outputs, dy)
        t3 = time.perf_counter()
        if s == 0:
            first["after_step_hwm"] = status_bytes()["VmHWM"]
        if s >= args.warmup:
            fwd_s.append(t1 - t0)
            bwd_s.append(t3 - t2)
        if s == args.warmup + args.repeats - 1:
            grads_digest = digest([dx, *gradients()])
        del outputs, dx
    gc.enable()
    peak = status_bytes()["VmHWM"]
    step_s = [f + b for f, b in zip(fwd_s, bwd_s)]
    after_forward = first["after_forward"]
    result = {
        "mode": args.child,
        "available": True,
        **versions,
        "rss_ready": rss_ready,
        "rss_before": rss_before,
        "peak_reset": peak_reset,
        "rss_after_forward": after_forward["VmRSS"],
        "hwm_after_forward": after_forward["VmHWM"],
        "hwm_after_first_step": first["after_step_hwm"],
        "peak_rss": peak,
        "outputs_bytes": first["outputs_bytes"],
        # what the forward left allocated beyond its outputs: its cache, by RSS
        "kept_rss": after_forward["VmRSS"] - rss_before - first["outputs_bytes"],
        "kept_count": first["kept_count"],
        "step_peak": peak - rss_ready,
        "forward_peak": after_forward["VmHWM"] - rss_before,
        "step_s": statistics.median(step_s),
        "forward_s": statistics.median(fwd_s),
        "backward_s": statistics.median(bwd_s),
        "step_samples": step_s,
        "grads_digest": grads_digest,
    }
    print(json.dumps(result))
    return 0


# ============================================================================================
# the parent: every mode in its own process, in rounds
# ============================================================================================


def launch(mode, args):
    """Run one mode in a fresh process; its JSON, or why it has none."""
    cmd = [sys.executable, str(HERE), "--child", mode, *size_args(args)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "available": False, "failed": True, "reason": "timed out"}
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        if p.returncode < 0:  # a signal; SIGKILL here is most likely the kernel's OOM killer
            last = f"killed by signal {-p.returncode}; {last}"
        return {"mode": mode, "available": False, "failed": True, "reason": last}
    return json.loads(p.stdout.strip().splitlines()[-1])


def size_args(args):
    return [
        f"--{k}={getattr(args, k)}" for k in ("T", "B", "I", "H", "repeats", "warmup", "threads")
    ] + [f"--budget={args.budget}"]


def summarize(runs):
    """One row per mode: the median over rounds of each figure, ratios against the references.

    Kept bytes of two eigenlstm modes are compared by cache_bytes() when the build has it;
    any pair with torch by RSS, since the storages torch saves include oneDNN's workspace,
    which is reserved whole but only partly written (at T=2000, B=16, I=H=512: 954 MiB of
    storages, 315 MiB resident).
    """
    rows = {}
    for mode, results in runs.items():
        ok = [r for r in results if r.get("available")]
        if not ok:
            rows[mode] = {
                "available": False,
                "failed": results[0].get("failed", False),
                "reason": results[0].get("reason", ""),
            }
            continue
        row = {"available": True, "rounds": len(ok), "grads_digest": ok[-1]["grads_digest"]}
        samples = [t for r in ok for t in r["step_samples"]]
        row["step_min"], row["step_max"] = min(samples), max(samples)
        for key in FIGURES:
            values = [r[key] for r in ok if r[key] is not None]
            row[key] = statistics.median(values) if values else None
        rows[mode] = row
    for ref in (EL_FULL, TORCH_FULL):
        base = rows.get(ref, {})
        if not base.get("available"):
            continue
        for mode, row in rows.items():
            if not row["available"]:
                continue
            counted = MODES[mode][1] == MODES[ref][1] == "eigenlstm" and None not in (
                row["kept_count"],
                base["kept_count"],
            )
            kept = "kept_count" if counted else "kept_rss"
            row[f"vs_{ref}"] = {
                "step_s": quotient(row["step_s"], base["step_s"]),
                "step_peak": quotient(row["step_peak"], base["step_peak"]),
                "kept": quotient(row[kept], base[kept]),
                "kept_by": kept,
            }
    full = rows.get(EL_FULL, {})
    for mode, row in rows.items():
        if row["available"] and full.get("available") and MODES[mode][1] == "eigenlstm":
            row["same_grads_as_el_full"] = row["grads_digest"] == full["grads_digest"]
    return rows


def quotient(a, b):
    return a / b if b else None


# The per-process figures summarize() takes the median of.
FIGURES = (
    "step_s",
    "forward_s",
    "backward_s",
    "step_peak",
    "forward_peak",
    "kept_rss",
    "kept_count",
    "peak_rss",
)


def claims(rows, sizes):
    """The three targets for el-sqrt against el-full, (text, measured, target, met,
    format) each, and whether the run was at the target sizes."""
    sqrt, full = rows.get("el-sqrt", {}), rows.get(EL_FULL, {})
    texts = {
        "kept": "kept for backward, el sqrt / el full",
        "step_peak": "step peak RSS (inputs, outputs, dx included), el sqrt / el full",
        "step_time": "step time, el sqrt / el full",
    }
    key = {"kept": "kept", "step_peak": "step_peak", "step_time": "step_s"}  # in vs_<ref>
    fmts = {"kept": "{:.1%}", "step_peak": "{:.1%}", "step_time": "{:.2f}x"}
    out = []
    for name, target in TARGETS.items():
        if not (sqrt.get("available") and full.get("available")):
            out.append((texts[name], None, target, None, fmts[name]))
            continue
        vs = sqrt[f"vs_{EL_FULL}"]
        value = vs[key[name]]
        text = texts[name] + (" (by RSS)" if name == "kept" and vs["kept_by"] == "kept_rss" else "")
        out.append((text, value, target, value is not None and value <= target, fmts[name]))
    at_target = sizes == TARGET_SIZES
    return out, at_target


def busy(machine, threads):
    """Whether other work shared the machine: the run itself adds about `threads` to the load."""
    return machine["loadavg_start"][0] > 1.0 or machine["loadavg_end"][0] > threads + 1


def load(averages):
    return "/".join(f"{v:.2f}" for v in averages)


def missing(row):
    return "failed" if row["failed"] else "not available"


def mib(n):
    return "-" if n is None else f"{n / MiB:,.1f}"


def ratio(row, ref, key, fmt="{:.1%}"):
    """row / ref for one figure; kept ratios taken by RSS (no count on one side) say so."""
    vs = row.get(f"vs_{ref}", {})
    if vs.get(key) is None:
        return "-"
    by_rss = key == "kept" and vs["kept_by"] == "kept_rss"
    return fmt.format(vs[key]) + (" (RSS)" if by_rss else "")


def write_markdown(res, path):
    m, s, rows = res["machine"], res["sizes"], res["summary"]
    T, B, I, H = s["T"], s["B"], s["I"], s["H"]
    versions = ", ".join(f"{k} {v}" for k, v in res["versions"].items())
    L = [
        "# Training memory on long sequences: eigenlstm's bptt_memory against torch.nn.LSTM",
        "",
        f"Generated by `{res['command']}` on {res['date']}.",
        "",
        f"- **Machine**: {m['cpu']}, {m['cores']} logical cores, {m['mem_total'] / 2**30:.1f} "
        f"GiB; CPU flags: {m['isa']}; {versions}; {res['threads']} threads for every engine; "
        f"load average at start {load(m['loadavg_start'])}, at end {load(m['loadavg_end'])}",
        f"- **Sizes**: T = {T}, B = {B}, I = {I}, H = {H}, float32, one layer; "
        f"{res['warmup']} warm-up and {res['repeats']} timed training steps per process, "
        f"{res['rounds']} round(s), each mode in a fresh process, mode order rotated per round",
        f"- **Full storage, estimated from the sizes** (x copy T·B·I, gates T·B·4H, h and c "
        f"(T+1)·B·H each): {mib(res['full_cache_estimate'])} MiB; the caller's x, dy, y and dx: "
        f"{mib(caller_bytes(T, B, I, H))} MiB",
        f"- **el budget**: `bptt_memory={res['budget']}` ({res['budget'] / MiB:,.1f} MiB, "
        f"{res['budget'] / res['full_cache_estimate']:.0%} of the full-storage estimate); "
        f"**torch checkpoint**: chunks of {math.ceil(math.sqrt(T))} steps",
    ]
    if busy(m, res["threads"]):
        L.append(
            "- **The machine was busy**: other work ran beside this one (a load average above "
            "1 at the start, or above the run's threads + 1 at the end), so the times are "
            "unreliable; the memory figures do not depend on it"
        )
    L += [
        "",
        "## Memory (MiB)",
        "",
        "| mode | kept for backward: own count | kept: by RSS | kept vs el full | kept vs torch | "
        "step peak | vs el full | vs torch | forward peak | process peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in rows.items():
        label = MODES[mode][0]
        if not row["available"]:
            L.append(f"| {label} | {missing(row)} |" + " |" * 8)
            continue
        L.append(
            f"| {label} | {mib(row['kept_count'])} | {mib(row['kept_rss'])} | "
            f"{ratio(row, EL_FULL, 'kept')} | {ratio(row, TORCH_FULL, 'kept')} | "
            f"{mib(row['step_peak'])} | {ratio(row, EL_FULL, 'step_peak')} | "
            f"{ratio(row, TORCH_FULL, 'step_peak')} | {mib(row['forward_peak'])} | "
            f"{mib(row['peak_rss'])} |"
        )
    L += [
        "",
        "## Time",
        "",
        "| mode | step | step: fastest–slowest | forward | backward | vs el full | vs torch | "
        "grads bitwise = el full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in rows.items():
        label = MODES[mode][0]
        if not row["available"]:
            L.append(f"| {label} | {missing(row)} |" + " |" * 6)
            continue
        same = row.get("same_grads_as_el_full")
        same = "-" if same is None else "reference" if mode == EL_FULL else "yes" if same else "NO"
        L.append(
            f"| {label} | {compare.fmt_t(row['step_s'])} | {compare.fmt_t(row['step_min'])}–"
            f"{compare.fmt_t(row['step_max'])} | {compare.fmt_t(row['forward_s'])} | "
            f"{compare.fmt_t(row['backward_s'])} | {ratio(row, EL_FULL, 'step_s', '{:.2f}x')} | "
            f"{ratio(row, TORCH_FULL, 'step_s', '{:.2f}x')} | "
            f"{same} |"
        )
    found, at_target = claims(rows, s)
    L += ["", "## Targets (el sqrt against el full)", ""]
    if not at_target:
        L += [
            "The claims are made at T = {T}, B = {B}, I = {I}, H = {H}; at this run's sizes the "
            "verdicts only indicate.".format(**TARGET_SIZES),
            "",
        ]
    L += ["| claim | measured | target | verdict |", "|---|---|---|---|"]
    for text, value, target, met, fmt in found:
        measured = "not available" if value is None else fmt.format(value)
        verdict = "-" if met is None else compare.verdict(met)
        L.append(f"| {text} | {measured} | ≤ {fmt.format(target)} | {verdict} |")
    unavailable = [f"{MODES[k][0]}: {r['reason']}" for k, r in rows.items() if not r["available"]]
    L += [
        "",
        "Medians over rounds; ratios are this mode / the reference. **kept for backward**: "
        "what the first training forward keeps for backward beyond the caller's x and its "
        "outputs, counted two ways. *Own count*: eigenlstm's `cache_bytes()`; for torch, the storages of the tensors autograd saves (a `saved_tensors_hooks` "
        "during that forward), without x, the outputs and the weights. *By RSS*: VmRSS after "
        "the forward − VmRSS before it − the bytes of y, h_n and c_n (it also counts memory the "
        "allocator keeps after freeing temporaries). Kept ratios between eigenlstm modes use "
        "`cache_bytes()`; all others use RSS, marked (RSS): torch's "
        "saved storages include oneDNN's workspace, reserved whole but only partly written. "
        "**step peak**: VmHWM over all steps − VmRSS once "
        "the model was built and a 2-step warm-up had run, before x and dy were made: x, dy, y, "
        "dx, what is kept and the scratch of forward and backward (not the interpreter, "
        "libraries or model). **forward peak**: VmHWM during the first forward − VmRSS before "
        "it (y, what is kept, the forward's scratch). **process peak RSS**: VmHWM of the whole "
        "process. **step**: median of zero_grad + training forward + backward of a random dy "
        "with dx (the range: over all timed steps of all rounds); the memory reads between "
        "forward and backward are not timed. **grads bitwise = el full**: sha256 of dx and "
        "every parameter gradient of the last step.",
    ]
    if unavailable:
        L += ["", "Modes without figures: " + "; ".join(unavailable) + "."]
    path.write_text("\n".join(L) + "\n", encoding="utf-8")


def meminfo(field):
    """Bytes of a /proc/meminfo field (MemTotal, MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    for name in ("T", "B", "I", "H"):
        p.add_argument(f"--{name}", type=int, default=TARGET_SIZES[name])
    p.add_argument("--repeats", type=int, default=3, help="timed steps per process (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="processes per mode (default 1)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}"
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"el-budget's bptt_memory in bytes (default {BUDGET_FRACTION:.0%} of the "
        "full-storage estimate)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds per process")
    p.add_argument("--out", type=Path, default=HERE.parent / "results", help="output directory")
    p.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # warmup too: the first step, whose memory is read, is never timed
    for name in ("T", "B", "I", "H", "repeats", "warmup", "rounds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.mode_list if m not in MODES]
    if unknown:
        p.error(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    if args.budget is None:
        args.budget = int(BUDGET_FRACTION * full_cache_bytes(args.T, args.B, args.I, args.H))
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    sizes = {k: getattr(args, k) for k in ("T", "B", "I", "H")}
    estimate = full_cache_bytes(**sizes) + caller_bytes(**sizes)
    available = meminfo("MemAvailable")
    if estimate > available:
        print(
            f"[memory] warning: full storage needs about {estimate / 2**30:.1f} GiB, "
            f"{available / 2**30:.1f} GiB are available",
            file=sys.stderr,
        )
    load_start = os.getloadavg()  # the machine may be shared: the report gives its load
    runs = {m: [] for m in args.mode_list}
    versions = {}
    for r in range(args.rounds):
        k = r % len(args.mode_list)
        for mode in args.mode_list[k:] + args.mode_list[:k]:
            t0 = time.perf_counter()
            result = launch(mode, args)
            runs[mode].append(result)
            if result.get("available"):
                for key in ("eigenlstm", "eigenlstm_isa", "torch"):
                    if key in result:
                        versions[key] = result[key]
                print(
                    f"[memory] round {r + 1}/{args.rounds} {mode:16s} step "
                    f"{compare.fmt_t(result['step_s'])}, step peak {mib(result['step_peak'])} MiB, "
                    f"kept {mib(result['kept_rss'])} MiB by RSS, "
                    f"{mib(result['kept_count'])} MiB by its own count "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            else:
                what = "failed" if result.get("failed") else "not available"
                print(f"[memory] {mode}: {what} ({result['reason']})", flush=True)
    res = {
        "command": " ".join(["python bench/memory.py", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": compare.cpu_model(),
            "cores": os.cpu_count(),
            "isa": compare.cpu_flags(),
            "mem_total": meminfo("MemTotal"),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "versions": versions,
        "threads": args.threads,
        "sizes": sizes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "budget": args.budget,
        "full_cache_estimate": full_cache_bytes(**sizes),
        "summary": summarize(runs),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res, args.out / "memory.md")
    print((args.out / "memory.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
