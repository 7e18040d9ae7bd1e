#!/usr/bin/env python3
"""Data-parallel training throughput: eigenlstm over MPI against torch's DistributedDataParallel.

Trains the seed's model shape (LSTM then a Linear head on the last step) with SGD on one global
batch per step, in these jobs, each a fresh `mpiexec` launch (or one process), side by side in
interleaved rounds:

    eigenlstm 1x2   one process, 2 engine threads            Trainer.fit
    eigenlstm P=1   mpiexec -n 1, 1 thread                   Trainer.fit(distributed="mpi")
    eigenlstm P=2   mpiexec -n 2, 1 thread per rank          Trainer.fit(distributed="mpi")
    torch 1x2       one process, 2 intra-op threads          nn.LSTM + nn.Linear, autograd
    torch DDP P=2   mpiexec -n 2, 1 thread per rank          DistributedDataParallel, gloo

Each job times every step after a warm-up (its median is the job's figure); the table gives
the median over rounds, samples per second and ratios. Inside eigenlstm's P=2 job the time
spent summing gradients (MPIGroup.allreduce_) is timed too: the communication share of a step.
A last job measures MPI_Allreduce between 2 ranks for sizes from 4 KiB to 64 MiB and fits
t = alpha + bytes * beta, the figures bench/README.md uses for scaling to more nodes. ONNX
Runtime has no training, so it has no column here. Writes distributed.md and distributed.json
into --out (default bench/results/).

    python bench/distributed.py                 # 3 rounds, the default shape
    python bench/distributed.py --quick         # a smoke run while developing
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from compare import cpu_model  # noqa: E402

# (label, launcher ranks or 0 for a plain process, engine, threads per process)
JOBS = [
    ("eigenlstm 1x2", 0, "eigenlstm", 2),
    ("eigenlstm P=1", 1, "eigenlstm", 1),
    ("eigenlstm P=2", 2, "eigenlstm", 1),
    ("torch 1x2", 0, "torch", 2),
    ("torch DDP P=2", 2, "torch", 1),
]


def rank_and_size() -> tuple[int, int]:
    """This process's place in an MPICH (PMI_*) or Open MPI job; (0, 1) alone."""
    for rank, size in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if size in os.environ:
            return int(os.environ[rank]), int(os.environ[size])
    return 0, 1


def problem(args):
    rng = np.random.default_rng(0)
    N = args.batch * (args.warmup + args.steps)
    x = rng.standard_normal((N, args.T, args.I)).astype(np.float32)
    y = rng.standard_normal((N, args.O)).astype(np.float32)
    return x, y


# ---- workers: one training job each ---------------------------------------------------------
def work_eigenlstm(args, rank, size) -> dict:
    import eigenlstm as el
    from eigenlstm.training import distributed as dist

    el.set_num_threads(args.threads)
    x, y = problem(args)
    model = el.LSTMModel(args.I, args.H, args.O, num_layers=args.layers, seed=0)
    comm_time = []
    if size > 1 or os.environ.get("PMI_SIZE"):
        real = dist.MPIGroup.allreduce_

        def timed(self, arrays):
            t0 = time.perf_counter()
            real(self, arrays)
            comm_time.append(time.perf_counter() - t0)

        dist.MPIGroup.allreduce_ = timed
    stamps = []

    class Clock(el.Callback):
        def on_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    stamps.append(time.perf_counter())
    el.Trainer(model).fit(
        x,
        y,
        epochs=1,
        batch_size=args.batch,
        optimizer="sgd",
        lr=0.01,
        shuffle=False,
        progress=False,
        callbacks=[Clock()],
        distributed="mpi" if "PMI_SIZE" in os.environ or size > 1 else None,
    )
    steps = np.diff(stamps)[args.warmup :]
    grad_bytes = sum(p.nbytes for p in model.parameters())
    return {
        "step_s": float(np.median(steps)),
        "comm_s": float(np.median(comm_time[args.warmup :])) if comm_time else 0.0,
        "grad_bytes": grad_bytes,
    }


def work_torch(args, rank, size) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    class Model(nn.Module):  # the seed's LSTMModel
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(args.I, args.H, args.layers, batch_first=True)
            self.fc = nn.Linear(args.H, args.O)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1, :])

    model = Model()
    if size > 1:
        import torch.distributed as tdist

        tdist.init_process_group("gloo", rank=rank, world_size=size)
        model = nn.parallel.DistributedDataParallel(model)
    x, y = (torch.from_numpy(a) for a in problem(args))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    share = args.batch // size  # the global batch split evenly (args.batch % size == 0)
    stamps = [time.perf_counter()]
    for s in range(args.warmup + args.steps):
        lo = s * args.batch + rank * share
        opt.zero_grad()
        loss = loss_fn(model(x[lo : lo + share]), y[lo : lo + share])
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    if size > 1:
        tdist.destroy_process_group()
    steps = np.diff(stamps)[args.warmup :]
    return {"step_s": float(np.median(steps))}


def work_allreduce(args, rank, size) -> dict:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = {}
    for log2 in range(12, 27, 2):
        a = np.ones((1 << log2) // 4, dtype=np.float32)
        times = []
        for _ in range(5 + 20):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        out[str(1 << log2)] = float(np.median(times[5:]))
    sizes = np.array([int(k) for k in out], dtype=np.float64)
    times = np.array(list(out.values()))
    # Weighted by 1/t: the fit's relative error is what counts, at 4 KiB as at 64 MiB.
    beta, alpha = np.polyfit(sizes, times, 1, w=1 / times)
    return {"by_bytes": out, "alpha_s": float(alpha), "beta_s_per_byte": float(beta)}


WORKERS = {"eigenlstm": work_eigenlstm, "torch": work_torch, "allreduce": work_allreduce}


# ---- the launcher -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mpiexec() -> str:
    found = Path(sys.executable).with_name("mpiexec")
    return str(found) if found.exists() else "mpiexec"


def launch(engine, ranks, threads, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(HERE),
            "--worker",
            engine,
            "--threads",
            str(threads),
            "--result",
            str(out),
        ] + shape_args(args)
        if ranks:
            cmd = [mpiexec(), "-n", str(ranks)] + cmd
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
            OMP_NUM_THREADS=str(threads),
        )
        subprocess.run(cmd, check=True, env=env, timeout=900)
        return json.loads(out.read_text())


def shape_args(args) -> list[str]:
    return [
        f"--{k}={getattr(args, k)}"
        for k in ("T", "I", "H", "O", "layers", "batch", "warmup", "steps")
    ]


def write_markdown(res, path: Path) -> None:
    med = {
        label: statistics.median(r["step_s"] for r in runs) for label, runs in res["jobs"].items()
    }
    batch = res["shape"]["batch"]
    lines = [
        "# Data-parallel training: eigenlstm over MPI against torch DDP",
        "",
        f"`python bench/distributed.py` on {res['machine']['cpu']} ({res['machine']['cores']} "
        f"cores), {res['date']}. LSTMModel I={res['shape']['I']}, H={res['shape']['H']}, "
        f"{res['shape']['layers']} layers, O={res['shape']['O']}, T={res['shape']['T']}, "
        f"global batch {batch}, SGD, float32; {res['rounds']} interleaved rounds, each job the "
        f"median of {res['shape']['steps']} steps after {res['shape']['warmup']} of warm-up; "
        "the table gives the median over rounds.",
        "",
        "| job | processes x threads | step (ms) | samples/s | vs eigenlstm 1x2 | vs torch, same layout |",
        "|---|---|---|---|---|---|",
    ]
    peer = {"eigenlstm 1x2": "torch 1x2", "eigenlstm P=2": "torch DDP P=2"}
    for label, ranks, _, threads in JOBS:
        t = med[label]
        vs_torch = f"{med[peer[label]] / t:.2f}x" if label in peer else ""
        lines.append(
            f"| {label} | {max(ranks, 1)} x {threads} | {t * 1e3:.1f} | {batch / t:.0f} | "
            f"{med['eigenlstm 1x2'] / t:.2f}x | {vs_torch} |"
        )
    comm = statistics.median(r["comm_s"] for r in res["jobs"]["eigenlstm P=2"])
    grad = res["jobs"]["eigenlstm P=2"][0]["grad_bytes"]
    ar = res["allreduce"]
    lines += [
        "",
        f"- Scaling from P=1 to P=2 (1 thread per rank): "
        f"{med['eigenlstm P=1'] / med['eigenlstm P=2']:.2f}x the samples per second.",
        f"- Communication share of an eigenlstm P=2 step: {comm * 1e3:.2f} ms of "
        f"{med['eigenlstm P=2'] * 1e3:.1f} ms ({100 * comm / med['eigenlstm P=2']:.1f}%), "
        f"summing {grad / 2**20:.2f} MiB of gradients.",
        f"- MPI_Allreduce between 2 ranks on this machine (shared memory): "
        f"alpha = {ar['alpha_s'] * 1e6:.1f} us, beta = {ar['beta_s_per_byte'] * 1e9:.3f} ns/byte "
        f"({1e-9 / ar['beta_s_per_byte']:.2f} GB/s), a least-squares fit of the relative error over "
        f"{len(ar['by_bytes'])} sizes from 4 KiB to 64 MiB.",
        "",
        "| bytes | Allreduce (us) |",
        "|---|---|",
    ]
    lines += [f"| {int(b):,} | {t * 1e6:.1f} |" for b, t in ar["by_bytes"].items()]
    lines += ["", *projection(res, med["eigenlstm P=2"] - comm, grad)]
    path.write_text("\n".join(lines) + "\n")


# Links the projection assumes for other machines: (name, alpha in s, bytes per s).
NETWORKS = [
    ("10 Gb/s Ethernet (assumed)", 50e-6, 1.25e9),
    ("100 Gb/s RDMA (assumed)", 5e-6, 12.5e9),
]


def projection(res, compute_s: float, grad_bytes: int) -> list[str]:
    """Weak scaling on paper: each rank keeps this run's per-rank batch and compute time, and
    the gradients are summed by a ring all-reduce, t(P) = 2 (P-1) alpha + 2 (P-1)/P n beta,
    the bandwidth-optimal schedule. No overlap is assumed: the engine's backward finishes
    every layer's gradient in one call. Efficiency = compute / (compute + t(P))."""
    ar = res["allreduce"]
    links = [("this machine, measured", max(ar["alpha_s"], 0.0), 1 / ar["beta_s_per_byte"])]
    links += NETWORKS
    Ps = (2, 8, 64)
    lines = [
        f"Projected weak scaling ({res['shape']['batch'] // 2} samples per rank, "
        f"{compute_s * 1e3:.1f} ms of compute per step, {grad_bytes / 2**20:.2f} MiB of "
        "gradients; ring all-reduce, no overlap): all-reduce time and efficiency",
        "",
        "| link | alpha | bandwidth | " + " | ".join(f"P={P}" for P in Ps) + " |",
        "|---|---|---|" + "---|" * len(Ps),
    ]
    for name, alpha, bandwidth in links:
        cells = []
        for P in Ps:
            t = 2 * (P - 1) * alpha + 2 * (P - 1) / P * grad_bytes / bandwidth
            cells.append(f"{t * 1e3:.2f} ms, {100 * compute_s / (compute_s + t):.0f}%")
        lines.append(
            f"| {name} | {alpha * 1e6:.0f} us | {bandwidth / 1e9:.2f} GB/s | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 round of few steps")
    p.add_argument("--out", type=Path, default=HERE.parent / "results")
    for name, default in (
        ("T", 50),
        ("I", 64),
        ("H", 256),
        ("O", 10),
        ("layers", 2),
        ("batch", 64),
        ("warmup", 3),
        ("steps", 20),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        rank, size = rank_and_size()
        result = WORKERS[args.worker](args, rank, size)
        if rank == 0:
            args.result.write_text(json.dumps(result))
        return 0
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 4, 1
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "shape": {
            k: getattr(args, k) for k in ("T", "I", "H", "O", "layers", "batch", "warmup", "steps")
        },
        "rounds": args.rounds,
        "jobs": {label: [] for label, *_ in JOBS},
    }
    for r in range(args.rounds):
        for label, ranks, engine, threads in JOBS:
            result = launch(engine, ranks, threads, args)
            res["jobs"][label].append(result)
            print(
                f"round {r + 1}/{args.rounds} {label:14s} step {result['step_s'] * 1e3:7.1f} ms",
                flush=True,
            )
    res["allreduce"] = launch("allreduce", 2, 1, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "distributed.md")
    print((args.out / "distributed.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
