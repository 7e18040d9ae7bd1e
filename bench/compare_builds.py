#!/usr/bin/env python3
"""Two or more eigenlstm installs measured side by side by bench/compare.py, in one run.

Each build is a Python interpreter that imports a different eigenlstm (a venv per build). Every
round runs bench/compare.py once per build, as a subprocess of that build's interpreter, with the
same threads, shapes and budgets; rounds alternate the order (A B, B A, A B, ...: ABBA pairs, so
a drift of the machine's speed over the run falls on both builds alike). Reported per build: the
median over rounds of compare.py's geomeans, and their ratio to the reference build (the first
--build unless --ref). Writes a markdown table to --out (and the numbers of every round to a .json
beside it) and prints it. Method: bench/README.md.

    python bench/compare_builds.py --build native=VENV1/bin/python --build dispatch=VENV2/bin/python
    python bench/compare_builds.py --build native=... --build dispatch=... --rounds 2 --quick --no-memory
    python bench/compare_builds.py --build dispatch=P --build avx2=P --env avx2:EIGENLSTM_MAX_ISA=avx2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPARE = HERE / "compare.py"
sys.path.insert(0, str(HERE))
import compare  # noqa: E402  (the numbers are compare.py's own: summarize, geomean, SHAPES)

# Options forwarded to every compare.py run unchanged (name, takes a value). --out is set per run.
PASSTHROUGH = (
    ("threads", True),
    ("shapes", True),
    ("repeats", True),
    ("budget", True),
    ("batch", True),
    ("warmup", True),
    ("quick", False),
    ("no_memory", False),
    ("no_quantized", False),
)

NATIVE = "native (-march=native)"  # what a build without eigenlstm._core.isa() was compiled for


# ============================================================================================
# the probe: runs under a build's interpreter, says which eigenlstm it imports
# ============================================================================================


def probe():
    """Print JSON about the eigenlstm this interpreter imports (run as `PYTHON compare_builds.py
    --_probe` with the build's environment). Builds before run-time dispatch have no isa()."""
    import eigenlstm as el

    core = el._core  # noqa: SLF001 - builds older than el.config() have only _core
    info = {
        "version": getattr(el, "__version__", "?"),
        "file": el.__file__,
        "isa": core.isa() if hasattr(core, "isa") else None,
        "isa_available": list(core.isa_available()) if hasattr(core, "isa_available") else None,
        "compiler": None,
        "simd": None,
    }
    if hasattr(core, "build_info"):  # the back end's compiler and Eigen's SIMD (not its path)
        b = core.build_info()
        info["compiler"], info["simd"] = b.get("compiler"), b.get("simd")
    print(json.dumps(info))


def run_probe(build):
    p = subprocess.run(
        [build["python"], str(Path(__file__).resolve()), "--_probe"],
        env=build["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if p.returncode != 0:
        sys.exit(
            f"[builds] {build['label']}: {build['python']} cannot import eigenlstm:\n{p.stderr}"
        )
    return json.loads(p.stdout.strip().splitlines()[-1])


# ============================================================================================
# one compare.py run and the numbers taken from its compare.json
# ============================================================================================


def run_compare(build, args, out_dir):
    """Run compare.py under the build's interpreter into out_dir; return its compare.json.

    compare.py's own output goes to out_dir/compare.log; its progress lines and warnings are
    echoed. Builds never overlap (one process at a time), so no thread pool of one build runs
    while the other is timed; within the process compare.py stops and sleeps off the pools
    between engines itself.
    """
    cmd = [build["python"], str(COMPARE), "--out", str(out_dir)]
    for name, takes_value in PASSTHROUGH:
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if takes_value and value is not None:
            cmd += [flag, str(value)]
        elif not takes_value and value:
            cmd.append(flag)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "compare.log", "w") as log:
        p = subprocess.Popen(
            cmd,
            env=build["env"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for line in p.stdout:
            log.write(line)
            if (line.startswith("[compare]") and "wrote" not in line) or "WARNING" in line:
                print(f"    {build['label']}: {line.rstrip()}", flush=True)
        p.wait()
    if p.returncode != 0:
        tail = "".join((out_dir / "compare.log").read_text().splitlines(keepends=True)[-30:])
        sys.exit(f"[builds] compare.py failed for {build['label']} (exit {p.returncode}):\n{tail}")
    return json.loads((out_dir / "compare.json").read_text())


def metrics(results):
    """The numbers compared between builds, from one compare.json (compare.summarize's geomeans).

    Returns (higher, times): `higher` maps metric -> value where higher is better (speedups,
    % of SGEMM, GFLOP/s); `times` maps metric -> seconds of eigenlstm per call (lower is better).
    """
    s = compare.summarize(results)
    R = results["shapes"]
    shapes = [n for n in compare.SHAPES if n in R]
    higher = {
        "fwd vs torch (geomean)": s["fwd_vs_torch_geomean"],
        "fwd vs ORT (geomean)": s["fwd_vs_ort_geomean"],
        "train vs torch (geomean)": s["train_vs_torch_geomean"],
    }
    rest = [n for n in shapes if n != "seed"]
    if "seed" in shapes and rest:  # compare.md's "geomean without seed" row
        for key, label in (
            ("fwd_vs_torch", "fwd vs torch"),
            ("fwd_vs_ort", "fwd vs ORT"),
            ("train_vs_torch", "train vs torch"),
        ):
            higher[f"{label} (geomean without seed)"] = compare.geomean([s[key][n] for n in rest])
    for n in compare.DEEPBENCH_TRAINING:  # the shapes that carry the 80%-of-SGEMM target
        if n in shapes:
            higher[f"fwd % SGEMM, {n}"] = s["fwd_frac"][n]
            higher[f"train % SGEMM, {n}"] = s["train_frac"][n]
    # eigenlstm's own throughput, without the peer engine's time in the ratio.
    higher["eigenlstm fwd GFLOP/s (geomean)"] = compare.geomean(
        [R[n]["fwd"]["eigenlstm"]["gflops"] for n in shapes]
    )
    higher["eigenlstm train GFLOP/s (geomean)"] = compare.geomean(
        [R[n]["train"]["eigenlstm"]["gflops"] for n in shapes]
    )
    times = {}
    for n in shapes:
        times[f"{n} fwd"] = R[n]["fwd"]["eigenlstm"]["median"]
        times[f"{n} train"] = R[n]["train"]["eigenlstm"]["median"]
    if results.get("overhead"):
        times["seed model from Python"] = results["overhead"]["results"]["eigenlstm"]["median"]
    return higher, times


# ============================================================================================
# report
# ============================================================================================

# The acceptance check applies to compare.py's three headline geomeans.
CHECKED = ("fwd vs torch (geomean)", "fwd vs ORT (geomean)", "train vs torch (geomean)")


def fmt_value(metric, v):
    if "% SGEMM" in metric:
        return f"{v:.1%}"
    if "GFLOP/s" in metric:
        return f"{v:.2f}"
    return f"{v:.3f}x"


def aggregate(runs, builds, key):
    """Per build and metric: the values of every round, in round order."""
    out = {b["label"]: {} for b in builds}
    for run in runs:
        for metric, v in run[key].items():
            out[run["label"]].setdefault(metric, []).append(v)
    return out


def public_command(argv):
    """The command line as run, minus this machine's paths: interpreters become <python>, --out and
    --keep-runs keep only their last component."""
    out, it = ["python", "bench/compare_builds.py"], iter(argv)
    for a in it:
        opt, eq, val = a.partition("=")
        if opt in ("--build", "--out", "--keep-runs") and not eq:
            val = next(it, "")
        if opt == "--build":
            out += ["--build", val.partition("=")[0] + "=<python>"]
        elif opt in ("--out", "--keep-runs"):
            out += [opt, Path(val).name]
        else:
            out.append(a)
    return " ".join(out)


def write_report(report, path):
    builds, ref = report["builds"], report["ref"]
    labels = [b["label"] for b in builds]
    others = [lab for lab in labels if lab != ref]
    higher = aggregate(report["runs"], builds, "higher")
    times = aggregate(report["runs"], builds, "times")
    tol = report["tolerance"]
    m = report["machine"]

    L = ["# eigenlstm builds side by side (bench/compare.py in alternating rounds)", ""]
    L.append(f"Generated by `{report['command']}` on {report['date']}.")
    L.append("")
    L.append(
        f"- **Machine**: {m['cpu']}, {m['cores']} logical cores; CPU flags: {m['flags']}; "
        f"load average at start {m['loadavg_start']}, at end {m['loadavg_end']}"
    )
    L.append(
        f"- **compare.py**: {report['compare_settings']}; threads {report['threads']} for every engine "
        f"and build; shapes: {', '.join(report['shapes'])}"
    )
    L.append(
        f"- **Rounds**: {report['rounds']}, order per round alternated ({report['orders']}); one compare.py "
        f"process at a time; {report['elapsed_s'] / 60:.1f} min in all"
    )
    L.append("")
    L.append(
        "| build | eigenlstm | ISA level it ran at | levels this CPU and build can run | back end: compiler, Eigen SIMD "
        "| environment |"
    )
    L.append("|---|---|---|---|---|---|")
    for b in builds:
        isa = ", ".join(sorted(set(report["isa_seen"][b["label"]])))
        avail = ", ".join(b["probe"]["isa_available"]) if b["probe"]["isa_available"] else "-"
        env = ", ".join(f"{k}={v}" for k, v in b["env_extra"].items()) or "-"
        backend = (
            f"{b['probe']['compiler']}, {b['probe']['simd']}" if b["probe"]["compiler"] else "-"
        )
        L.append(
            f"| {b['label']}{' (reference)' if b['label'] == ref else ''} | {b['probe']['version']} | "
            f"{isa} | {avail} | {backend} | {env} |"
        )
    L.append("")

    L.append("## Geomeans: median over rounds [min–max] (higher is better)")
    L.append("")
    L.append(
        "Speedups as in compare.py (other engine's median time / eigenlstm's). Ratio = build's median / "
        f"{ref}'s median, with the range of the per-round ratios (both builds of a round ran back to back); "
        f"the check asks ratio ≥ {1 - tol:.2f} (within {tol:.0%}) of the three headline geomeans."
    )
    L.append("")
    head = (
        ["metric"]
        + labels
        + [f"{o} / {ref}" for o in others]
        + ([f"within {tol:.0%}"] if others else [])
    )
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for metric in higher[ref]:
        cells = [metric]
        for lab in labels:
            v = higher[lab].get(metric, [])
            cells.append(
                f"{fmt_value(metric, statistics.median(v))} [{fmt_value(metric, min(v))}–"
                f"{fmt_value(metric, max(v))}]"
                if v
                else "-"
            )
        checks = []
        for o in others:
            a, b = higher[o].get(metric), higher[ref][metric]
            if not a:
                cells.append("-")
                continue
            r = statistics.median(a) / statistics.median(b)
            per_round = [x / y for x, y in zip(a, b)]
            cells.append(f"**{r:.3f}** [{min(per_round):.3f}–{max(per_round):.3f}]")
            checks.append(f"{'✅' if r >= 1 - tol else '❌'}{' ' + o if len(others) > 1 else ''}")
        if others:
            cells.append(" ".join(checks) if metric in CHECKED else "")
        L.append("| " + " | ".join(cells) + " |")
    L.append("")

    L.append("## eigenlstm median time per call: median over rounds (lower is better)")
    L.append("")
    L.append(
        f"Ratio = build's time / {ref}'s (> 1: slower). `seed model from Python` is compare.py's overhead case."
    )
    L.append("")
    head = ["case"] + labels + [f"{o} / {ref}" for o in others]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for metric in times[ref]:
        cells = [metric]
        for lab in labels:
            v = times[lab].get(metric)
            cells.append(compare.fmt_t(statistics.median(v)) if v else "-")
        for o in others:
            a = times[o].get(metric)
            cells.append(
                f"{statistics.median(a) / statistics.median(times[ref][metric]):.3f}" if a else "-"
            )
        L.append("| " + " | ".join(cells) + " |")
    L.append("")

    L.append("## Rounds")
    L.append("")
    L.append(
        "| round | build | ISA | fwd vs torch | fwd vs ORT | train vs torch | load avg (start → end) | seconds |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    for run in report["runs"]:
        h = run["higher"]
        L.append(
            f"| {run['round']} | {run['label']} | {run['isa']} | "
            + " | ".join(f"{h[c]:.3f}x" for c in CHECKED)
            + f" | {run['loadavg'][0]:.2f} → {run['loadavg'][1]:.2f} | {run['elapsed_s']:.0f} |"
        )
    L.append("")
    path.write_text("\n".join(L))


# ============================================================================================
# main
# ============================================================================================


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--build",
        action="append",
        required=True,
        metavar="LABEL=PYTHON",
        help="a build: a label and the interpreter that imports it (repeat; the first is the reference)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE",
        help="an environment variable for one build's runs, e.g. avx2:EIGENLSTM_MAX_ISA=avx2 (repeat)",
    )
    p.add_argument(
        "--ref", help="label of the reference build for the ratios (default: the first --build)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="compare.py runs per build, order alternated (default 4)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.03,
        help="the check: a build's headline geomeans >= (1 - tolerance) x the reference's (default 0.03)",
    )
    p.add_argument(
        "--out",
        default=str(HERE / "results" / "compare_builds.md"),
        help="markdown report (default bench/results/compare_builds.md; the .json goes beside it)",
    )
    p.add_argument(
        "--keep-runs",
        metavar="DIR",
        help="keep every run's compare.md/.json/.png/.log under DIR "
        "(default: a temporary directory, removed)",
    )
    g = p.add_argument_group("passed to every compare.py run (see compare.py --help)")
    g.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    g.add_argument("--shapes", help="comma-separated subset of compare.py's shapes (default all)")
    g.add_argument(
        "--repeats", type=int, help="rounds per shape inside compare.py (default: from --budget)"
    )
    g.add_argument(
        "--budget",
        type=float,
        help="seconds of timing per shape (compare.py's default 90; --quick 6)",
    )
    g.add_argument("--batch", type=float, help="min seconds per timed batch of calls")
    g.add_argument("--warmup", type=int, help="untimed calls per engine before timing")
    g.add_argument("--quick", action="store_true", help="compare.py's short budgets (smoke runs)")
    g.add_argument(
        "--no-memory",
        action="store_true",
        help="skip compare.py's training peak-memory subprocesses",
    )
    g.add_argument(
        "--no-quantized",
        action="store_true",
        help="skip compare.py's int8 and bfloat16 engines (a build older than el.quantize "
        "skips them anyway; then the builds' rounds are made of different engines)",
    )
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")

    builds = []
    for spec in args.build:
        label, eq, python = spec.partition("=")
        if not eq or not label or not python:
            p.error(f"--build wants LABEL=PYTHON, got {spec!r}")
        if label in (b["label"] for b in builds):
            p.error(f"--build: label {label!r} given twice")
        if not shutil.which(python):
            p.error(f"--build {label}: no interpreter at {python!r}")
        builds.append({"label": label, "python": python, "env_extra": {}})
    by_label = {b["label"]: b for b in builds}
    for spec in args.env:
        label, colon, assignment = spec.partition(":")
        name, eq, value = assignment.partition("=")
        if not colon or not eq or not name or label not in by_label:
            p.error(f"--env wants LABEL:NAME=VALUE with a --build label, got {spec!r}")
        by_label[label]["env_extra"][name] = value
    for b in builds:
        b["env"] = {**os.environ, **b["env_extra"]}
    args.ref = args.ref or builds[0]["label"]
    if args.ref not in by_label:
        p.error(f"--ref {args.ref!r} is not a --build label")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    args.builds = builds
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--_probe"]:
        probe()
        return 0
    args = parse_args(argv)
    shapes = (
        list(compare.SHAPES)
        if not args.shapes
        else [s.strip() for s in args.shapes.split(",") if s.strip()]
    )
    if any(s not in compare.SHAPES for s in shapes):
        sys.exit(
            f"--shapes: unknown {[s for s in shapes if s not in compare.SHAPES]}; choose from {list(compare.SHAPES)}"
        )
    builds = args.builds
    for b in builds:  # fail before the first round if a build does not import
        b["probe"] = run_probe(b)
        print(
            f"[builds] {b['label']}: eigenlstm {b['probe']['version']} from {b['probe']['file']}, "
            f"ISA {b['probe']['isa'] or NATIVE}",
            flush=True,
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_dir = (
        Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="compare_builds_"))
    )
    t_start = time.perf_counter()
    loadavg_start = os.getloadavg()
    if loadavg_start[0] > 0.5 * (os.cpu_count() or 1):
        # spin-waiting thread teams lose a core to any other process: the ratios will be noisy
        print(
            f"[builds] WARNING: load average {loadavg_start[0]:.2f} on {os.cpu_count()} cores: "
            "the machine is busy, expect noisy numbers",
            flush=True,
        )
    runs, orders, settings = [], [], None
    try:
        for r in range(args.rounds):
            # A B, B A, A B, ...: every build runs first in half of the rounds, and each pair of
            # rounds is symmetric in time (ABBA), so a linear drift cancels out of the medians.
            order = builds if r % 2 == 0 else builds[::-1]
            orders.append(" ".join(b["label"] for b in order))
            for b in order:
                print(f"[builds] round {r + 1}/{args.rounds}: {b['label']}", flush=True)
                t0 = time.perf_counter()
                res = run_compare(b, args, runs_dir / f"round{r + 1}_{b['label']}")
                higher, times = metrics(res)
                isa = res["machine"].get("eigenlstm_isa") or NATIVE
                runs.append(
                    {
                        "round": r + 1,
                        "label": b["label"],
                        "isa": isa,
                        "higher": higher,
                        "times": times,
                        "loadavg": [
                            res["machine"]["loadavg_start"][0],
                            res["machine"]["loadavg_end"][0],
                        ],
                        "elapsed_s": time.perf_counter() - t0,
                    }
                )
                settings = res["settings"]
                print(
                    f"[builds]   {b['label']} ({isa}): "
                    + ", ".join(f"{c} {higher[c]:.3f}x" for c in CHECKED)
                    + f" ({runs[-1]['elapsed_s']:.0f} s)",
                    flush=True,
                )
    finally:
        if not args.keep_runs:
            shutil.rmtree(runs_dir, ignore_errors=True)

    report = {
        "command": public_command(argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpu": compare.cpu_model(),
            "cores": os.cpu_count(),
            "flags": compare.cpu_flags(),
            "loadavg_start": "/".join(f"{v:.2f}" for v in loadavg_start),
            "loadavg_end": "/".join(f"{v:.2f}" for v in os.getloadavg()),
        },
        "compare_settings": settings,
        "threads": args.threads,
        "shapes": shapes,
        "rounds": args.rounds,
        "orders": ", ".join(orders),
        "ref": args.ref,
        "tolerance": args.tolerance,
        # no interpreter paths in the report: labels, versions and environment overrides only
        "builds": [
            {
                "label": b["label"],
                "env_extra": b["env_extra"],
                "probe": {k: v for k, v in b["probe"].items() if k != "file"},
            }
            for b in builds
        ],
        "isa_seen": {
            b["label"]: [run["isa"] for run in runs if run["label"] == b["label"]] for b in builds
        },
        "runs": runs,
        "elapsed_s": time.perf_counter() - t_start,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    write_report(report, out)
    print(out.read_text())
    print(
        f"[builds] wrote {out} and {out.with_suffix('.json').name} in {report['elapsed_s'] / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
