#!/usr/bin/env python3
"""Side-by-side speed and memory of eigenlstm, torch.nn.LSTM and ONNX Runtime's LSTM operator.

Everything is measured in ONE process with the same thread count and identical weights (training
peak memory excepted: one fresh subprocess per engine and shape). Reduced-precision inference
is timed in the same rounds: eigenlstm int8 and bfloat16 (`el.quantize` of the same float LSTM)
and ONNX Runtime's DynamicQuantizeLSTM (`quantize_dynamic` of the same ONNX graph), with their
error against eigenlstm's float32 output; `--no-quantized` leaves them out. Writes compare.md,
compare.png and compare.json into --out (default bench/results/). Method and columns:
bench/README.md.

    python bench/compare.py                  # default: 2 threads, all shapes, < ~15 min
    python bench/compare.py --quick          # a fast smoke run while developing
    python bench/compare.py --shapes seed,ds_train_512 --threads 1 --repeats 21
    python bench/compare.py --no-quantized   # float32 engines only
    python bench/compare.py --variants       # the cell variants against the plain cell and
                                             # torch autograd (bench/variants.py; the other
                                             # arguments are its own)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Size letters: B batch, T time, I input size, H hidden size, G = 4H gate rows.
# Same names and sizes as kShapes in bench/bench_lstm.cpp.
SHAPES = {  # name: (B, T, I, H)
    "seed": (5, 7, 10, 20),  # the seed's LSTMModel example
    "streaming": (1, 100, 128, 128),  # batch 1, latency bound
    "ds_inf_b4": (4, 150, 256, 256),  # DeepBench inference
    "ds_inf_b32": (32, 100, 256, 256),  # DeepBench-like inference, larger batch
    "ds_train_512": (64, 25, 512, 512),  # DeepBench training
    "ds_train_1024": (16, 25, 1024, 1024),  # DeepBench training
    "long_seq": (8, 2000, 128, 128),  # long sequence: the memory case
}
DEEPBENCH_TRAINING = ("ds_train_512", "ds_train_1024")

# The targets (speedup = other engine's median time / eigenlstm's median time).
TARGETS = {
    "fwd_vs_ort_geomean": 0.9,
    "fwd_vs_ort_min": 0.75,
    "fwd_vs_torch_geomean": 1.5,
    "sgemm_fraction_deepbench_training": 0.80,
    "train_vs_torch_geomean": 1.5,
    "train_vs_torch_min": 1.0,
    "seed_forward_us": 15.0,
    "train_peak_vs_torch": 1.0,  # eigenlstm peak / torch peak <= 1
    "model_size_int8_vs_fp32": 0.30,  # el.save of an int8 LSTMModel / of its float32 model <= 30%
}

# The reduced-precision forward engines (keys of a shape's "fwd" next to the float ones) and
# their labels in the report. All three are quantized from the float weights the others use.
QUANTIZED = {
    "eigenlstm_int8": "eigenlstm int8",
    "eigenlstm_bf16": "eigenlstm bf16",
    "onnxruntime_int8": "ORT DynamicQuantizeLSTM",
}
# The model whose file size is reported: LSTMModel(I, H, O) saved with el.save.
MODEL_SIZE_IOH = (256, 256, 1)


def forward_flops(B, T, I, H):
    """2 * T*B * 4H * (I + H): the two GEMMs of one layer-direction; elementwise ignored."""
    return 2.0 * T * B * 4 * H * (I + H)


# ============================================================================================
# the process: threads and machine description
# ============================================================================================


def deny_amx():
    """Make this process's requests for the AMX tiles fail, as on a CPU or kernel without them.

    Linux gives a process the tiles only when it asks (arch_prctl(ARCH_REQ_XCOMP_PERM), Linux
    5.16). A seccomp filter answers that one call with EPERM in the calling thread and in every
    thread and child started after it (threads already running, such as numpy's BLAS pool, are
    not filtered, but none of them asks for the tiles). eigenlstm's front end and ONNX Runtime's
    MLAS then both have their request refused and run their AVX-512 kernels (vpdpbusd,
    vdpbf16ps), as on a VNNI CPU without AMX. Capping only eigenlstm
    (EIGENLSTM_MAX_ISA=avx512_bf16) would leave MLAS its tiles: on a Xeon with AMX its
    DynamicQuantizeLSTM ran ds_inf_b32 in 4.0 ms with them and 5.5 ms without. Call it before
    the engines are imported. Linux x86-64 only.
    """
    import ctypes
    import struct

    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise SystemExit("--deny-amx needs Linux on x86-64")
    # A classic BPF program over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}:
    # arch_prctl (syscall 158 on x86-64) whose first argument is ARCH_REQ_XCOMP_PERM (0x1023)
    # returns EPERM; everything else is allowed.
    ld_w, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, eperm = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    program = [
        (ld_w, 0, 0, 4),  # A = arch
        (jeq, 0, 5, 0xC000003E),  # AUDIT_ARCH_X86_64, else allow
        (ld_w, 0, 0, 0),  # A = syscall number
        (jeq, 0, 3, 158),  # arch_prctl, else allow
        (ld_w, 0, 0, 16),  # A = low 32 bits of the first argument
        (jeq, 0, 1, 0x1023),  # ARCH_REQ_XCOMP_PERM, else allow
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]
    code = b"".join(struct.pack("HBBI", *ins) for ins in program)
    filters = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or libc.prctl(
        pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0
    ):
        raise SystemExit(f"--deny-amx: seccomp refused: {os.strerror(ctypes.get_errno())}")


def import_engines(threads):
    """Import all engines with `threads` threads each. eigenlstm is imported first so the process
    uses the libgomp it was built against (torch then shares it; see the header's libgomp line)."""
    import eigenlstm as el

    el.set_num_threads(threads)  # a statement: keeps the import sorter from moving eigenlstm down

    import onnxruntime as ort
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set (or inter-op work already ran)
        torch.set_num_interop_threads(1)
    # numpy's BLAS (the SGEMM reference and the Linear of the overhead case) gets the same count.
    threadpool_limits(limits=threads, user_api="blas")
    return el, torch, ort


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = [
                    "sse4_2",
                    "avx",
                    "avx2",
                    "fma",
                    "f16c",
                    "avx512f",
                    "avx512bw",
                    "avx512_vnni",
                    "avx512_bf16",
                    "amx_tile",
                ]
                return " ".join(f.upper() for f in wanted if f in flags)
    except OSError:
        pass
    return "unknown"


def loaded_libs(pattern):
    try:
        return sorted(
            {
                l.split()[-1]
                for l in Path("/proc/self/maps").read_text().splitlines()
                if pattern in l and "/" in l
            }
        )
    except OSError:
        return []


def eigenlstm_isa(el):
    """The instruction-set level of the back end eigenlstm loaded (generic, avx2, avx512, ...), or
    None for a build without run-time dispatch (those were compiled with -march=native)."""
    isa = getattr(el._core, "isa", None)  # noqa: SLF001 - builds older than el.config() too
    return isa() if isa is not None else None


def machine_info(el, torch, ort, threads, amx_denied=False):
    import threadpoolctl

    # The reduced-precision kernels this CPU runs (builds before el.quantize have no such keys).
    config = el.config() if hasattr(el, "config") else {}
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "isa": cpu_flags(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "eigenlstm": getattr(el, "__version__", "?"),
        "eigenlstm_isa": eigenlstm_isa(el),
        "quantized_kernels": config.get("quantized_kernels"),
        "isa_features": config.get("isa_features"),
        "amx_denied": amx_denied,
        "threads": threads,
        "el_threads": el.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "libgomp": [Path(lib).name for lib in loaded_libs("libgomp")],
        "env": {
            k: os.environ.get(k, "<unset>")
            for k in (
                "OPENBLAS_CORETYPE",
                "OMP_NUM_THREADS",
                "OMP_WAIT_POLICY",
                "GOMP_SPINCOUNT",
                "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "EIGENLSTM_THREADS",
            )
        },
        # library file names only: the report should not carry this machine's paths
        "threadpoolctl": [
            {**d, "filepath": Path(d.get("filepath", "")).name}
            for d in threadpoolctl.threadpool_info()
        ],
        "loadavg_start": os.getloadavg(),
    }
    return info


# ============================================================================================
# the engines, with identical weights
# ============================================================================================


def make_torch_lstm(torch, I, H, seed=0):
    torch.manual_seed(seed)
    return torch.nn.LSTM(I, H).float()


def make_el_lstm(el, torch_lstm, I, H):
    lstm = el.LSTM(I, H, seed=0)
    lstm.load_state_dict({k: v.detach().numpy() for k, v in torch_lstm.state_dict().items()})
    return lstm


def onnx_lstm_model(torch_lstm, I, H, initial_state=False):
    """An ONNX graph with one LSTM node carrying torch_lstm's weights.

    torch stacks the gate blocks as [i; f; g; o]; ONNX as [i; o; f; c] (c is torch's g):
    W [1, 4H, I], R [1, 4H, H], B [1, 8H] = [Wb (b_ih) ; Rb (b_hh)]. With `initial_state`,
    the graph also takes inputs "initial_h" and "initial_c" [1, N, H] (a stream's state).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in torch_lstm.state_dict().items()}
    order = [0, 3, 1, 2]  # ONNX block q takes torch block order[q]: i<-i, o<-o, f<-f, c<-g

    def permute(w):
        return np.concatenate([w[q * H : (q + 1) * H] for q in order], axis=0)

    W = permute(sd["weight_ih_l0"])[None]
    R = permute(sd["weight_hh_l0"])[None]
    Bias = np.concatenate([permute(sd["bias_ih_l0"]), permute(sd["bias_hh_l0"])])[None]
    state = ["", "initial_h", "initial_c"] if initial_state else []  # "": no sequence_lens
    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B", *state], ["Y", "Y_h", "Y_c"], hidden_size=H
    )
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "N", H]) for n in state[1:]]
    graph = helper.make_graph(
        [node],
        "lstm",
        inputs,
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "N", H]),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "N", H]),
            helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [1, "N", H]),
        ],
        initializer=[
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(R, "R"),
            numpy_helper.from_array(Bias, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 10)  # an IR every recent onnxruntime reads
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_session(ort, model_bytes, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's workers spin inside Run (kept: that is ORT's speed) and, by default, keep spinning
    # after Run returns, taking a core from whatever runs next: on 2 cores that doubled the
    # time of the next engine's call (29 -> 72 ms, ds_inf_b4 training step). Stop at Run end.
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def onnx_dynamic_int8(model_bytes):
    """ONNX Runtime's dynamic int8 quantization of an LSTM graph: (model bytes, op types).

    `quantize_dynamic` (int8 weights per tensor, activations quantized at run time) replaces
    the LSTM node by com.microsoft's DynamicQuantizeLSTM; the op types are returned so that the
    caller can check it did. It reads and writes files, hence the temporary folder.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "lstm.onnx", Path(d) / "lstm_int8.onnx"
        src.write_bytes(model_bytes)
        # quantize_dynamic logs a warning advising its pre-processing (shape inference and graph
        # optimization for graphs of many nodes): a single LSTM node has nothing to pre-process.
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        quantized = dst.read_bytes()
    ops = [n.op_type for n in onnx.load_from_string(quantized).graph.node]
    return quantized, ops


def rel_error(y, ref):
    """Norm-wise relative error ||y - ref|| / ||ref|| (Frobenius over all values, in float64)."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def model_sizes(el):
    """Bytes of `el.save` of an LSTMModel(MODEL_SIZE_IOH) in float32, int8 and bfloat16.

    A checkpoint is what a deployment ships; it holds the config and metadata too, so the ratio
    is a file's, not only the weights' (int8 also stores a float32 scale per weight row, and
    the biases stay float32).
    """
    I, H, O = MODEL_SIZE_IOH
    model = el.LSTMModel(I, H, O, seed=0)
    models = {
        "float32": model,
        "int8": el.quantize(model, "int8"),
        "bfloat16": el.quantize(model, "bfloat16"),
    }
    sizes = {}
    with tempfile.TemporaryDirectory() as d:
        for label, m in models.items():
            path = Path(d) / f"{label}.npz"
            el.save(m, path)
            sizes[label] = path.stat().st_size
    return {
        "model": {"input_size": I, "hidden_size": H, "output_size": O},
        "parameters": sum(np.asarray(v).size for v in model.state_dict().values()),
        "bytes": sizes,
        "ratio_to_float32": {k: v / sizes["float32"] for k, v in sizes.items()},
    }


# ============================================================================================
# timing
# ============================================================================================


def calibrate(fn, target_s, warmup):
    """Warm fn up and return how many calls make one timed batch of at least target_s."""
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    per_call = (time.perf_counter() - t0) / max(1, warmup)
    return max(1, math.ceil(target_s / max(per_call, 1e-9))), per_call


def measure(
    fns, *, repeats, budget_s, batch_s, warmup, min_repeats=5, max_repeats=200, settle=None
):
    """Median seconds per call of each fn in `fns` (name -> callable).

    Each round times one batch of calls of every engine, in an order rotated every round, so
    that all engines share the machine's noise; a batch lasts >= batch_s so that short calls are
    not dominated by the timer or by the previous engine's spinning threads. Without an explicit
    `repeats`, rounds continue until `budget_s` is spent (within [min_repeats, max_repeats]): the
    count is planned from the warm-up times and cut short when the machine slows down.
    After each batch the harness sleeps `settle[name]` seconds (default SETTLE_S), untimed, so
    that thread pools which keep spinning after a call go to sleep before the next engine is
    timed (see SETTLE_S).
    """
    settle = settle or {}
    names = list(fns)
    inner, per_call = {}, {}
    for n in names:
        inner[n], per_call[n] = calibrate(fns[n], batch_s, warmup)
    round_s = sum(inner[n] * per_call[n] for n in names)
    deadline = math.inf
    if repeats is None:
        repeats = int(min(max_repeats, max(min_repeats, budget_s / max(round_s, 1e-9))))
        deadline = time.perf_counter() + budget_s
    samples = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            if r >= min_repeats and time.perf_counter() > deadline:
                break
            k = r % len(names)
            for n in names[k:] + names[:k]:
                fn, m = fns[n], inner[n]
                t0 = time.perf_counter()
                for _ in range(m):
                    fn()
                samples[n].append((time.perf_counter() - t0) / m)
                time.sleep(settle.get(n, SETTLE_S))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        n: {
            "median": statistics.median(s),
            "min": min(s),
            "q1": float(np.percentile(s, 25)),
            "q3": float(np.percentile(s, 75)),
            "repeats": len(s),
            "inner": inner[n],
            "samples": s,
        }
        for n, s in samples.items()
    }


SGEMM_N = 2048
OPENBLAS_SETTLE_S = 0.3  # > the ~0.15-0.2 s OpenBLAS's idle workers spin after a call (measured)
# libgomp's idle workers (the pool eigenlstm and torch share) spin a few ms after a parallel
# region (GOMP_SPINCOUNT); on 2 cores that made the ORT call timed next ~8 ms slower (10.5 ->
# 18.5 ms on ds_inf_b4), and a 10 ms pause removed it. Every batch is followed by this pause.
SETTLE_S = 0.02


def sgemm_operands(n=SGEMM_N):
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((n, n), dtype=np.float32),
        rng.standard_normal((n, n), dtype=np.float32),
        np.empty((n, n), np.float32),
    )


def measure_sgemm(torch, repeats, n=SGEMM_N):
    """Float32 n x n matmul: numpy (its BLAS, the reference) and torch.mm, interleaved."""
    a, b, out = sgemm_operands(n)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tout = torch.empty(n, n)
    res = measure(
        {"numpy": lambda: np.matmul(a, b, out=out), "torch": lambda: torch.mm(ta, tb, out=tout)},
        repeats=repeats,
        budget_s=None,
        batch_s=0.0,
        warmup=2,
        settle={"numpy": OPENBLAS_SETTLE_S},
    )
    flops = 2.0 * n**3
    return {k: {**v, "gflops": flops / v["median"] / 1e9} for k, v in res.items()}


# ============================================================================================
# one shape: correctness once, then forward and training-step timing
# ============================================================================================


def run_shape(name, el, torch, ort, threads, args):
    B, T, I, H = SHAPES[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    tl = make_torch_lstm(torch, I, H)
    ell = make_el_lstm(el, tl, I, H)
    sess = ort_session(ort, onnx_lstm_model(tl, I, H), threads)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    xt_grad = torch.from_numpy(x.copy()).requires_grad_(
        True
    )  # torch computes dx too, as eigenlstm does

    # ---- correctness, once, before timing -------------------------------------------------
    tl.eval()
    ell.eval()
    with torch.inference_mode():
        y_t, (h_t, c_t) = tl(xt)
    y_t = y_t.numpy()
    y_e, (h_e, c_e) = ell(x)
    y_o, h_o, c_o = sess.run(None, {"X": x})
    check = {
        "ort_vs_torch_max_abs": float(
            max(np.abs(y_o[:, 0] - y_t).max(), np.abs(c_o - c_t.numpy()).max())
        ),
        "el_vs_torch_max_abs": float(max(np.abs(y_e - y_t).max(), np.abs(c_e - c_t.numpy()).max())),
    }
    tl.train()
    ell.train()
    tl.zero_grad(set_to_none=True)
    y_tt, _ = tl(xt_grad)
    y_tt.backward(dyt)
    ell.zero_grad()
    ell(x)
    dx_e, _ = ell.backward(dy)
    g_e = ell.grads
    check["el_vs_torch_grad_max_rel"] = float(
        max(
            np.abs(g_e[k] - p.grad.numpy()).max() / max(1e-6, np.abs(p.grad.numpy()).max())
            for k, p in tl.named_parameters()
        )
    )
    check["el_vs_torch_dx_max_rel"] = float(
        np.abs(dx_e - xt_grad.grad.numpy()).max() / max(1e-6, np.abs(xt_grad.grad.numpy()).max())
    )
    for key, tol in (
        ("ort_vs_torch_max_abs", 1e-5),
        ("el_vs_torch_max_abs", 1e-5),
        ("el_vs_torch_grad_max_rel", 1e-3),
        ("el_vs_torch_dx_max_rel", 1e-3),
    ):
        if not check[key] <= tol:
            print(f"  WARNING {name}: {key} = {check[key]:.3g} > {tol:g}", file=sys.stderr)
    del y_t, y_e, y_o, y_tt, dx_e, g_e

    # ---- timing: forward (inference) and training step in the same interleaved rounds ------
    # Separate eval and train instances (same weights), so no mode switch happens per call.
    # Forward: eigenlstm in eval(), torch in eval() under inference_mode, ORT session.run.
    # Training step: zero_grad + training-mode forward + backward of the fixed dy (with dx).
    tl_eval = copy.deepcopy(tl).eval()
    ell_eval = make_el_lstm(el, tl, I, H).eval()
    tl.train()
    ell.train()
    feed = {"X": x}
    quantized = run_quantized(el, ort, tl, ell_eval, x, threads) if args.quantized else None

    def torch_fwd():
        with torch.inference_mode():
            return tl_eval(xt)

    def el_step():
        ell.zero_grad()
        ell(x)
        ell.backward(dy)

    def torch_step():
        tl.zero_grad(set_to_none=True)
        xt_grad.grad = None
        y, _ = tl(xt_grad)
        y.backward(dyt)

    fns = {
        "fwd/eigenlstm": lambda: ell_eval(x),
        "fwd/torch": torch_fwd,
        "fwd/onnxruntime": lambda: sess.run(None, feed),
        "train/eigenlstm": el_step,
        "train/torch": torch_step,
    }
    if quantized is not None:
        # In the same rounds as the float engines, so every ratio compares calls that shared
        # the machine's state; the quantized eigenlstm runs on the same libgomp pool (the
        # default pause after each batch applies) and the quantized ORT session stops spinning
        # at Run end as the float one does.
        fns.update({"fwd/" + k: fn for k, fn in quantized.pop("fns").items()})
    settle = {}
    if name in DEEPBENCH_TRAINING:
        # The 80%-of-SGEMM target shapes carry their own SGEMM reference in the same rounds, so
        # that it sees the same machine load as the engines. OpenBLAS's workers busy-wait for
        # ~0.15 s after a call (its THREAD_TIMEOUT), which would steal a core from the next
        # engine: sleep that off, untimed.
        a, b, c = sgemm_operands()
        fns["sgemm/numpy"] = lambda: np.matmul(a, b, out=c)
        settle["sgemm/numpy"] = OPENBLAS_SETTLE_S
    res = measure(
        fns,
        repeats=args.repeats,
        budget_s=args.budget,
        batch_s=args.batch,
        warmup=args.warmup,
        settle=settle,
    )
    fwd = {k.split("/")[1]: v for k, v in res.items() if k.startswith("fwd/")}
    train = {k.split("/")[1]: v for k, v in res.items() if k.startswith("train/")}

    flops = forward_flops(B, T, I, H)
    for group, mult in ((fwd, 1.0), (train, 3.0)):
        for v in group.values():
            v["gflops"] = mult * flops / v["median"] / 1e9
    sgemm = None
    if "sgemm/numpy" in res:
        sgemm = res["sgemm/numpy"]
        sgemm["gflops"] = 2.0 * SGEMM_N**3 / sgemm["median"] / 1e9
    return {
        "shape": (B, T, I, H),
        "check": check,
        "fwd": fwd,
        "train": train,
        "fwd_flops": flops,
        "sgemm": sgemm,
        "quantized": quantized,
    }


def run_quantized(el, ort, torch_lstm, el_lstm, x, threads):
    """The reduced-precision forward engines of one shape and their accuracy, before timing.

    eigenlstm int8 and bfloat16 are `el.quantize` of `el_lstm` (the float eigenlstm timed next
    to them); ORT's is `quantize_dynamic` of the same ONNX graph as the float session, run with
    the same session options. Accuracy: the norm-wise relative error of each engine's output
    sequence y against eigenlstm's float32 y on `x`, the input that is timed.
    Returns {"fns": name -> callable (popped by the caller), "ort_ops": the quantized graph's op
    types, "ort_dynamic_quantize_lstm": whether they hold DynamicQuantizeLSTM,
    "rel_err_vs_el_fp32": name -> error}.
    """
    I, H = el_lstm.input_size, el_lstm.hidden_size
    q8 = el.quantize(el_lstm, "int8")
    qbf = el.quantize(el_lstm, "bfloat16")
    model_int8, ops = onnx_dynamic_int8(onnx_lstm_model(torch_lstm, I, H))
    has_dq = "DynamicQuantizeLSTM" in ops
    if not has_dq:
        # Then the "quantized" session would run a float LSTM: not what the column claims.
        print(
            f"  WARNING: quantize_dynamic left no DynamicQuantizeLSTM (ops {ops}); "
            "ORT int8 not timed",
            file=sys.stderr,
        )
    fns = {"eigenlstm_int8": lambda: q8(x), "eigenlstm_bf16": lambda: qbf(x)}
    y_ref, _ = el_lstm(x)
    err = {
        "eigenlstm_int8": rel_error(q8(x)[0], y_ref),
        "eigenlstm_bf16": rel_error(qbf(x)[0], y_ref),
    }
    if has_dq:
        sess_int8 = ort_session(ort, model_int8, threads)
        feed = {"X": x}
        fns["onnxruntime_int8"] = lambda: sess_int8.run(None, feed)
        err["onnxruntime_int8"] = rel_error(sess_int8.run(None, feed)[0][:, 0], y_ref)
    return {
        "fns": fns,
        "ort_ops": ops,
        "ort_dynamic_quantize_lstm": has_dq,
        "rel_err_vs_el_fp32": err,
    }


# ============================================================================================
# Python overhead of the seed model: LSTM + Linear on the last step
# ============================================================================================


def run_overhead(el, torch, ort, threads, args):
    """Seed model (B=5, T=7, I=10, H=20, batch_first, Linear(H, 1) on the last step), per call."""
    B, T, I, H = SHAPES["seed"]
    torch.manual_seed(0)

    class LSTMModel(torch.nn.Module):
        def __init__(self, input_size=I, hidden_size=H, output_size=1):
            super().__init__()
            self.lstm = torch.nn.LSTM(input_size, hidden_size, batch_first=True)
            self.fc = torch.nn.Linear(hidden_size, output_size)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1, :])

    tm = LSTMModel().eval()
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    x = np.random.default_rng(2).standard_normal((B, T, I), dtype=np.float32)
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        ref = tm(xt).numpy()

    el_model, how = None, "el.LSTM + NumPy Linear (x @ W.T + b on the last step)"
    if hasattr(el, "LSTMModel"):
        try:
            m = el.LSTMModel(I, H, 1, seed=0)
            m.load_state_dict(sd)
            m.eval()
            if np.allclose(np.asarray(m(x)), ref, atol=1e-5):
                el_model, how = m, "el.LSTMModel"
        except Exception as e:  # an LSTMModel with another signature: fall back, say so
            how += f" (el.LSTMModel not used: {type(e).__name__}: {e})"
    lstm = make_el_lstm(el, tm.lstm, I, H)
    lstm.batch_first = True
    lstm.eval()
    w_fc, b_fc = sd["fc.weight"], sd["fc.bias"]

    def el_composed():
        out, _ = lstm(x)
        return out[:, -1, :] @ w_fc.T + b_fc

    el_call = (lambda: el_model(x)) if el_model is not None else el_composed
    assert np.allclose(np.asarray(el_call()), ref, atol=1e-5), (
        "overhead: eigenlstm and torch disagree"
    )

    sess = ort_session(ort, onnx_lstm_model(tm.lstm, I, H), threads)
    x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))

    def ort_composed():
        y, _, _ = sess.run(None, {"X": np.ascontiguousarray(x.transpose(1, 0, 2))})
        return y[-1, 0] @ w_fc.T + b_fc

    assert np.allclose(ort_composed(), ref, atol=1e-5), "overhead: onnxruntime and torch disagree"
    engine = lstm._engine  # noqa: SLF001 - the raw engine call is the floor being measured

    with torch.inference_mode():
        res = measure(
            {
                "eigenlstm": el_call,
                "torch": lambda: tm(xt),
                "onnxruntime": ort_composed,
                # the binding alone (no Python validation, time-major input): what the engine +
                # pybind11 cost; the difference to "eigenlstm" is the Python layer.
                "eigenlstm_binding": lambda: engine.forward(x_tm, None, None, None, False),
            },
            repeats=args.repeats,
            budget_s=min(20.0, args.budget * 0.3),
            batch_s=args.batch,
            warmup=args.warmup * 20,
        )
    return {"how": how, "results": res}


# ============================================================================================
# training-step peak memory, one fresh subprocess per (engine, shape)
# ============================================================================================


def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memprobe(engine, name, threads):
    """Runs in a fresh subprocess; prints JSON. RSS numbers in kB from /proc/self/status.

    base:  VmRSS after imports, a warm-up step on the seed shape (thread pools, lazy init) and
           the input/dy arrays, before the model exists.
    model: VmRSS after building the model (weights; eigenlstm also allocates its gradients).
    peak:  VmHWM during one training step (zero_grad, training forward, backward), after
           resetting VmHWM to the current RSS with `echo 5 > /proc/self/clear_refs`.
    Reported: peak - base (model + step: weights, gradients, cache, outputs, dx) and
    peak - model (the step's own allocations).
    """
    B, T, I, H = SHAPES[name]
    if engine == "eigenlstm":
        import eigenlstm as el

        el.set_num_threads(threads)

        def build(I, H):
            m = el.LSTM(I, H, seed=0)
            m.train()
            return m

        def step(m, x, dy):
            m.zero_grad()
            m(x)
            return m.backward(dy)
    else:
        import torch

        torch.set_num_threads(threads)

        def build(I, H):
            torch.manual_seed(0)
            m = torch.nn.LSTM(I, H)
            m.train()
            return m

        def step(m, x, dy):
            m.zero_grad(set_to_none=True)
            xt = torch.from_numpy(x).requires_grad_(True)
            y, _ = m(xt)
            y.backward(torch.from_numpy(dy))
            return xt.grad

    def inputs(B, T, I, H):
        rng = np.random.default_rng(1)
        return rng.standard_normal((T, B, I), dtype=np.float32), rng.standard_normal(
            (T, B, H), dtype=np.float32
        )

    sb, st, si, sh = SHAPES["seed"]
    m = build(si, sh)
    step(m, *inputs(sb, st, si, sh))
    del m
    x, dy = inputs(B, T, I, H)
    gc.collect()
    base = _status_kb("VmRSS")
    m = build(I, H)
    gc.collect()
    model = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    after_reset = _status_kb("VmHWM")
    out = step(m, x, dy)
    peak = _status_kb("VmHWM")
    print(
        json.dumps(
            {
                "engine": engine,
                "shape": name,
                "base_kb": base,
                "model_kb": model,
                "hwm_after_reset_kb": after_reset,
                "peak_kb": peak,
                "model_plus_step_mb": (peak - base) / 1024,
                "step_mb": (peak - model) / 1024,
            }
        )
    )
    del out


def run_memory(names, threads):
    res = {}
    for name in names:
        for engine in ("eigenlstm", "torch"):
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--_memprobe",
                engine,
                name,
                "--threads",
                str(threads),
            ]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                print(f"  memory probe {engine}/{name} failed:\n{p.stderr}", file=sys.stderr)
                continue
            res.setdefault(name, {})[engine] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


# ============================================================================================
# report
# ============================================================================================


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def fmt_t(s):
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def verdict(ok):
    return "✅ met" if ok else "❌ missed"


def summarize(results):
    shapes = [n for n in SHAPES if n in results["shapes"]]
    R = results["shapes"]
    s = {
        "fwd_vs_torch": {},
        "fwd_vs_ort": {},
        "train_vs_torch": {},
        "fwd_frac": {},
        "train_frac": {},
        "sgemm_ref": {},
    }
    for n in shapes:
        f, t = R[n]["fwd"], R[n]["train"]
        s["fwd_vs_torch"][n] = f["torch"]["median"] / f["eigenlstm"]["median"]
        s["fwd_vs_ort"][n] = f["onnxruntime"]["median"] / f["eigenlstm"]["median"]
        s["train_vs_torch"][n] = t["torch"]["median"] / t["eigenlstm"]["median"]
        # The shape's own interleaved SGEMM when it has one (DeepBench training), else the run's.
        sg = (R[n].get("sgemm") or results["sgemm"]["numpy"])["gflops"]
        s["sgemm_ref"][n] = sg
        s["fwd_frac"][n] = f["eigenlstm"]["gflops"] / sg
        s["train_frac"][n] = t["eigenlstm"]["gflops"] / sg
    for k in ("fwd_vs_torch", "fwd_vs_ort", "train_vs_torch"):
        s[k + "_geomean"] = geomean(s[k].values())
    # Reduced precision: speedup of the quantized eigenlstm = other's median / its median.
    # A shape has these only when its run timed them (not with --no-quantized, nor for a build
    # without el.quantize, nor for ORT when quantize_dynamic made no DynamicQuantizeLSTM).
    for key, this, other in QUANTIZED_RATIOS:
        s[key] = {
            n: R[n]["fwd"][other]["median"] / R[n]["fwd"][this]["median"]
            for n in shapes
            if this in R[n]["fwd"] and other in R[n]["fwd"]
        }
        s[key + "_geomean"] = geomean(s[key].values())
    return s


# (summary key, this engine, other engine): speedup = other's median time / this one's.
QUANTIZED_RATIOS = (
    ("int8_vs_el_fp32", "eigenlstm_int8", "eigenlstm"),
    ("bf16_vs_el_fp32", "eigenlstm_bf16", "eigenlstm"),
    ("int8_vs_ort_int8", "eigenlstm_int8", "onnxruntime_int8"),
    ("int8_vs_torch", "eigenlstm_int8", "torch"),
)


def targets_table(results, s):
    rows = []
    if s["fwd_vs_ort"]:
        worst = min(s["fwd_vs_ort"], key=s["fwd_vs_ort"].get)
        rows.append(
            (
                "forward vs ORT, geomean",
                f"≥ {TARGETS['fwd_vs_ort_geomean']}x",
                f"{s['fwd_vs_ort_geomean']:.2f}x",
                s["fwd_vs_ort_geomean"] >= TARGETS["fwd_vs_ort_geomean"],
            )
        )
        rows.append(
            (
                "forward vs ORT, worst shape",
                f"≥ {TARGETS['fwd_vs_ort_min']}x",
                f"{s['fwd_vs_ort'][worst]:.2f}x ({worst})",
                s["fwd_vs_ort"][worst] >= TARGETS["fwd_vs_ort_min"],
            )
        )
        rows.append(
            (
                "forward vs torch, geomean",
                f"≥ {TARGETS['fwd_vs_torch_geomean']}x",
                f"{s['fwd_vs_torch_geomean']:.2f}x",
                s["fwd_vs_torch_geomean"] >= TARGETS["fwd_vs_torch_geomean"],
            )
        )
    for n in DEEPBENCH_TRAINING:
        if n in s["fwd_frac"]:
            fr, tr = s["fwd_frac"][n], s["train_frac"][n]
            rows.append(
                (
                    f"% of SGEMM, {n} (fwd / train step)",
                    f"≥ {TARGETS['sgemm_fraction_deepbench_training']:.0%}",
                    f"{fr:.0%} / {tr:.0%}",
                    min(fr, tr) >= TARGETS["sgemm_fraction_deepbench_training"],
                )
            )
    if s["train_vs_torch"]:
        worst = min(s["train_vs_torch"], key=s["train_vs_torch"].get)
        rows.append(
            (
                "training step vs torch, geomean",
                f"≥ {TARGETS['train_vs_torch_geomean']}x",
                f"{s['train_vs_torch_geomean']:.2f}x",
                s["train_vs_torch_geomean"] >= TARGETS["train_vs_torch_geomean"],
            )
        )
        rows.append(
            (
                "training step vs torch, worst shape",
                f"≥ {TARGETS['train_vs_torch_min']}x",
                f"{s['train_vs_torch'][worst]:.2f}x ({worst})",
                s["train_vs_torch"][worst] >= TARGETS["train_vs_torch_min"],
            )
        )
    if results.get("overhead"):
        us = results["overhead"]["results"]["eigenlstm"]["median"] * 1e6
        rows.append(
            (
                "seed model forward from Python",
                f"≤ {TARGETS['seed_forward_us']:g} µs",
                f"{us:.1f} µs",
                us <= TARGETS["seed_forward_us"],
            )
        )
    mem = results.get("memory") or {}
    ratios = {
        n: m["eigenlstm"]["model_plus_step_mb"] / m["torch"]["model_plus_step_mb"]
        for n, m in mem.items()
        if "eigenlstm" in m and "torch" in m and m["torch"]["model_plus_step_mb"] > 0
    }
    if ratios:
        worst = max(ratios, key=ratios.get)
        rows.append(
            (
                "training peak memory / torch's, worst shape",
                "≤ 1.00",
                f"{ratios[worst]:.2f} ({worst})",
                ratios[worst] <= TARGETS["train_peak_vs_torch"],
            )
        )
    size = results.get("model_size")
    if size:
        ratio = size["ratio_to_float32"]["int8"]
        rows.append(
            (
                f"int8 model file / float32 file (`el.save`, LSTMModel{tuple(size['model'].values())})",
                f"≤ {TARGETS['model_size_int8_vs_fp32']:.0%}",
                f"{ratio:.1%}",
                ratio <= TARGETS["model_size_int8_vs_fp32"],
            )
        )
    lines = ["| target | goal | measured | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {verdict(ok)} |" for a, b, c, ok in rows]
    return lines


def quantized_section(results, s, shapes):
    """Markdown lines: reduced-precision speedups with their accuracy, and model file sizes."""
    R = results["shapes"]
    q_shapes = [n for n in shapes if R[n].get("quantized")]
    size = results.get("model_size")
    if not q_shapes and not size:
        return []
    L = ["## Reduced precision (inference): speed and accuracy", ""]
    if q_shapes:
        L.append(
            "Speedup = the other engine's median time / the quantized eigenlstm's, forward "
            "(inference), timed in the same rounds as the float engines (> 1: the quantized "
            "eigenlstm is faster). All are quantized from the same float weights: eigenlstm with "
            "`el.quantize(lstm, 'int8' | 'bfloat16')`, ORT with `quantize_dynamic` "
            "(`QuantType.QInt8`). Error = ‖y − y_fp32‖ / ‖y_fp32‖ over the whole output "
            "sequence, against eigenlstm's float32 y on the timed input."
        )
        L.append("")
        L.append(
            "| shape (B, T, I, H) | int8 vs el fp32 | bf16 vs el fp32 | int8 vs ORT DynamicQuantizeLSTM | "
            "int8 vs torch fp32 | rel. error int8 / bf16 / ORT int8 | fwd median int8 / bf16 / ORT int8 |"
        )
        L.append("|---|---|---|---|---|---|---|")
        keys = [k for k, _, _ in QUANTIZED_RATIOS]

        def ratio(k, n):
            v = s[k].get(n)
            return f"{v:.2f}x" if v is not None else "-"

        for n in q_shapes:
            f, err = R[n]["fwd"], R[n]["quantized"]["rel_err_vs_el_fp32"]
            errs = " / ".join(f"{err[e]:.1e}" if e in err else "-" for e in QUANTIZED)
            times = " / ".join(fmt_t(f[e]["median"]) if e in f else "-" for e in QUANTIZED)
            L.append(
                f"| {n} {tuple(R[n]['shape'])} | "
                + " | ".join(ratio(k, n) for k in keys)
                + f" | {errs} | {times} |"
            )
        L.append(
            "| **geomean** | "
            + " | ".join(f"**{s[k + '_geomean']:.2f}x**" if s[k] else "-" for k in keys)
            + " | | |"
        )
        missing = [n for n in q_shapes if not R[n]["quantized"]["ort_dynamic_quantize_lstm"]]
        L.append("")
        if missing:
            L.append(
                "ORT's quantized graph held no `DynamicQuantizeLSTM` for "
                + ", ".join(
                    f"{n} (ops: {', '.join(R[n]['quantized']['ort_ops'])})" for n in missing
                )
                + ": ORT int8 not timed there."
            )
        else:
            L.append(
                "ORT's quantized graph checked for every shape: its LSTM node became "
                "`DynamicQuantizeLSTM` (com.microsoft), ops: "
                + ", ".join(sorted({op for n in q_shapes for op in R[n]["quantized"]["ort_ops"]}))
                + "."
            )
        L.append("")
    if size:
        b, r = size["bytes"], size["ratio_to_float32"]
        L.append(
            f"Model size on disk: `el.save` of `el.LSTMModel{tuple(size['model'].values())}` "
            f"({size['parameters']:,} parameters) and of its `el.quantize` versions."
        )
        L.append("")
        L.append("| | float32 | int8 | bfloat16 |")
        L.append("|---|---|---|---|")
        L.append(
            "| bytes | " + " | ".join(f"{b[k]:,}" for k in ("float32", "int8", "bfloat16")) + " |"
        )
        L.append(
            "| / float32 | "
            + " | ".join(f"{r[k]:.1%}" for k in ("float32", "int8", "bfloat16"))
            + " |"
        )
        L.append("")
    return L


def write_markdown(results, path):
    info, s = results["machine"], summarize(results)
    R = results["shapes"]
    shapes = [n for n in SHAPES if n in R]
    sg = results["sgemm"]
    L = []
    L.append("# eigenlstm vs torch.nn.LSTM vs ONNX Runtime")
    L.append("")
    L.append(f"Generated by `{results['command']}` on {info['date']}.")
    L.append("")
    L.append(
        f"- **Machine**: {info['cpu']}, {info['cores']} logical cores ({info['affinity']} usable), "
        f"ISA: {info['isa']}; Linux {info['kernel']}; load average at start "
        f"{'/'.join(f'{v:.2f}' for v in info['loadavg_start'])}, at end "
        f"{'/'.join(f'{v:.2f}' for v in info.get('loadavg_end', ()))} (shared machine: read medians and ratios)"
    )
    isa = info.get("eigenlstm_isa")
    L.append(
        f"- **Versions**: eigenlstm {info['eigenlstm']} "
        f"({f'back end: {isa}' if isa else 'no run-time dispatch: -march=native build'}), numpy {info['numpy']}, "
        f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, Python {info['python']}"
    )
    kernels = info.get("quantized_kernels")
    if kernels:
        L.append(
            f"- **Reduced-precision kernels** (`el.config()`): int8: {kernels.get('int8', '-')}; "
            f"bfloat16: {kernels.get('bfloat16', '-')}; ISA features in use: "
            f"{', '.join(info.get('isa_features') or []) or 'none'}"
            + (
                " (AMX denied to every engine by `--deny-amx`: ONNX Runtime runs its AVX-512 kernels too)"
                if info.get("amx_denied")
                else ""
            )
        )
    L.append(
        f"- **Threads**: {info['threads']} for every engine (eigenlstm {info['el_threads']}, torch "
        f"{info['torch_threads']} intra-op / {info['torch_interop_threads']} inter-op, ORT intra_op "
        f"{info['threads']} / inter_op 1, numpy BLAS {info['threads']}); libgomp in use: "
        f"{', '.join(info['libgomp']) or 'none'}"
    )
    env = ", ".join(f"{k}={v}" for k, v in info["env"].items())
    L.append(f"- **Environment**: {env}")
    blas = "; ".join(
        f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture', '-')}, "
        f"{d.get('threading_layer', '-')}, num_threads={d.get('num_threads')}, {Path(d.get('filepath', '')).name})"
        for d in info["threadpoolctl"]
    )
    L.append(f"- **threadpoolctl**: {blas}")
    L.append(
        f"- **SGEMM reference** (float32 2048x2048, same process and threads): numpy "
        f"**{sg['numpy']['gflops']:.1f} GFLOP/s** (median of {sg['numpy']['repeats']}), torch.mm "
        f"{sg['torch']['gflops']:.1f} GFLOP/s (start {sg['numpy']['start_gflops']:.1f}, end {sg['numpy']['end_gflops']:.1f}). "
        f'"% SGEMM" below = engine GFLOP/s / numpy SGEMM GFLOP/s; the DeepBench training shapes time '
        f"the same numpy SGEMM inside their own rounds and use it ("
        + ", ".join(
            f"{n}: {R[n]['sgemm']['gflops']:.1f} GFLOP/s" for n in shapes if R[n].get("sgemm")
        )
        + ")."
    )
    L.append(
        f"- **Timing**: median of `repeats` rounds; each round times a batch of calls of every engine, "
        f"engine order rotated per round; {results['settings']}."
    )
    L.append("")
    L.append(
        "## Summary (speedup = other engine's median time / eigenlstm's; > 1 means eigenlstm is faster)"
    )
    L.append("")
    L.append(
        "| shape (B, T, I, H) | fwd vs torch | fwd vs ORT | train vs torch | fwd GFLOP/s el / torch / ORT | fwd % SGEMM | train GFLOP/s el / torch | train % SGEMM | train peak MB el / torch |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    mem = results.get("memory") or {}
    for n in shapes:
        f, t = R[n]["fwd"], R[n]["train"]
        m = mem.get(n, {})
        mm = (
            f"{m['eigenlstm']['model_plus_step_mb']:.1f} / {m['torch']['model_plus_step_mb']:.1f}"
            if "eigenlstm" in m and "torch" in m
            else "-"
        )
        L.append(
            f"| {n} {tuple(R[n]['shape'])} | {s['fwd_vs_torch'][n]:.2f}x | {s['fwd_vs_ort'][n]:.2f}x | "
            f"{s['train_vs_torch'][n]:.2f}x | {f['eigenlstm']['gflops']:.1f} / {f['torch']['gflops']:.1f} / "
            f"{f['onnxruntime']['gflops']:.1f} | {s['fwd_frac'][n]:.0%} | {t['eigenlstm']['gflops']:.1f} / "
            f"{t['torch']['gflops']:.1f} | {s['train_frac'][n]:.0%} | {mm} |"
        )
    if shapes:
        L.append(
            f"| **geomean** | **{s['fwd_vs_torch_geomean']:.2f}x** | **{s['fwd_vs_ort_geomean']:.2f}x** | "
            f"**{s['train_vs_torch_geomean']:.2f}x** | | | | | |"
        )
        rest = [n for n in shapes if n != "seed"]
        if "seed" in shapes and rest:
            # The seed shape's µs-scale calls swing the geomean most (torch's OpenMP team stalls
            # on a loaded machine); this row shows the geomean without it.
            L.append(
                "| geomean without seed | "
                + " | ".join(
                    f"{geomean([s[k][n] for n in rest]):.2f}x"
                    for k in ("fwd_vs_torch", "fwd_vs_ort", "train_vs_torch")
                )
                + " | | | | | |"
            )
    L.append("")
    L.append(
        "Noise floor: the same speedups from each engine's *minimum* time over the rounds (the least "
        "disturbed call; closer to a quiet machine, but not what the targets use):"
    )
    L.append("")
    L.append("| shape | fwd vs torch (min) | fwd vs ORT (min) | train vs torch (min) |")
    L.append("|---|---|---|---|")
    mins = {k: [] for k in ("ft", "fo", "tt")}
    for n in shapes:
        f, t = R[n]["fwd"], R[n]["train"]
        ft, fo = (
            f["torch"]["min"] / f["eigenlstm"]["min"],
            f["onnxruntime"]["min"] / f["eigenlstm"]["min"],
        )
        tt = t["torch"]["min"] / t["eigenlstm"]["min"]
        for k, v in (("ft", ft), ("fo", fo), ("tt", tt)):
            mins[k].append(v)
        L.append(f"| {n} | {ft:.2f}x | {fo:.2f}x | {tt:.2f}x |")
    if shapes:
        L.append(
            f"| geomean | {geomean(mins['ft']):.2f}x | {geomean(mins['fo']):.2f}x | {geomean(mins['tt']):.2f}x |"
        )
        if "seed" in shapes and len(shapes) > 1:
            L.append(
                "| geomean without seed | "
                + " | ".join(f"{geomean(v[1:]):.2f}x" for v in mins.values())
                + " |"
            )
    L.append("")
    L += quantized_section(results, s, shapes)
    L.append("## Targets")
    L.append("")
    L += targets_table(results, s)
    L.append("")
    L.append("## Forward (inference): median time per call [Q1–Q3] (min)")
    L.append("")
    L.append(
        "| shape | eigenlstm | torch (inference_mode) | onnxruntime | rounds × calls (el / torch / ORT) |"
    )
    L.append("|---|---|---|---|---|")
    for n in shapes:
        f = R[n]["fwd"]
        cells = [
            f"{fmt_t(f[e]['median'])} [{fmt_t(f[e]['q1'])}–{fmt_t(f[e]['q3'])}] ({fmt_t(f[e]['min'])})"
            for e in ("eigenlstm", "torch", "onnxruntime")
        ]
        rc = " / ".join(
            f"{f[e]['repeats']}×{f[e]['inner']}" for e in ("eigenlstm", "torch", "onnxruntime")
        )
        L.append(f"| {n} | " + " | ".join(cells) + f" | {rc} |")
    L.append("")
    q_shapes = [n for n in shapes if any(e in R[n]["fwd"] for e in QUANTIZED)]
    if q_shapes:
        L.append(
            "## Forward, reduced precision (same rounds as the table above): median time per call [Q1–Q3] (min)"
        )
        L.append("")
        L.append(
            "| shape | "
            + " | ".join(QUANTIZED.values())
            + " | rounds × calls (el int8 / el bf16 / ORT int8) |"
        )
        L.append("|---|---|---|---|---|")
        for n in q_shapes:
            f = R[n]["fwd"]
            cells = [
                f"{fmt_t(f[e]['median'])} [{fmt_t(f[e]['q1'])}–{fmt_t(f[e]['q3'])}] ({fmt_t(f[e]['min'])})"
                if e in f
                else "-"
                for e in QUANTIZED
            ]
            rc = " / ".join(
                f"{f[e]['repeats']}×{f[e]['inner']}" if e in f else "-" for e in QUANTIZED
            )
            L.append(f"| {n} | " + " | ".join(cells) + f" | {rc} |")
        L.append("")
    L.append(
        "## Training step (zero_grad + training forward + backward of a fixed dy, with dx and parameter gradients): median time [Q1–Q3] (min)"
    )
    L.append("")
    L.append("| shape | eigenlstm | torch | rounds × calls (el / torch) |")
    L.append("|---|---|---|---|")
    for n in shapes:
        t = R[n]["train"]
        cells = [
            f"{fmt_t(t[e]['median'])} [{fmt_t(t[e]['q1'])}–{fmt_t(t[e]['q3'])}] ({fmt_t(t[e]['min'])})"
            for e in ("eigenlstm", "torch")
        ]
        rc = " / ".join(f"{t[e]['repeats']}×{t[e]['inner']}" for e in ("eigenlstm", "torch"))
        L.append(f"| {n} | " + " | ".join(cells) + f" | {rc} |")
    L.append("")
    if mem:
        L.append("## Training-step peak memory (fresh subprocess per engine and shape)")
        L.append("")
        L.append(
            "`model + step` = VmHWM during one training step − VmRSS before the model was built "
            "(weights, gradients, activation cache, outputs, dx); `step` = VmHWM − VmRSS after the "
            "model was built. VmHWM is reset with `echo 5 > /proc/self/clear_refs` just before the step."
        )
        L.append("")
        L.append(
            "| shape | eigenlstm model + step (MB) | torch model + step (MB) | el / torch | eigenlstm step (MB) | torch step (MB) |"
        )
        L.append("|---|---|---|---|---|---|")
        for n in shapes:
            m = mem.get(n, {})
            if "eigenlstm" in m and "torch" in m:
                e, t = m["eigenlstm"], m["torch"]
                L.append(
                    f"| {n} | {e['model_plus_step_mb']:.1f} | {t['model_plus_step_mb']:.1f} | "
                    f"{e['model_plus_step_mb'] / max(t['model_plus_step_mb'], 1e-9):.2f} | {e['step_mb']:.1f} | {t['step_mb']:.1f} |"
                )
        L.append("")
    if results.get("overhead"):
        o = results["overhead"]
        r = o["results"]
        L.append(
            "## Python overhead: the seed model (B=5, T=7, I=10, H=20, batch_first, Linear(20, 1) on the last step)"
        )
        L.append("")
        L.append(f"eigenlstm side: {o['how']}.")
        L.append("")
        L.append("| engine | median µs per call [Q1–Q3] |")
        L.append("|---|---|")
        for e, label in (
            ("eigenlstm", "eigenlstm (Python API)"),
            (
                "eigenlstm_binding",
                "eigenlstm binding only (`_engine.forward`, no Python layer, no Linear)",
            ),
            ("torch", "torch (inference_mode)"),
            ("onnxruntime", "onnxruntime LSTM + NumPy Linear"),
        ):
            L.append(
                f"| {label} | {r[e]['median'] * 1e6:.1f} [{r[e]['q1'] * 1e6:.1f}–{r[e]['q3'] * 1e6:.1f}] |"
            )
        L.append("")
    L.append("## Correctness checks (once per shape, before timing)")
    L.append("")
    L.append(
        "| shape | ORT vs torch max abs (y, c_n) | eigenlstm vs torch max abs (y, c_n) | eigenlstm vs torch grads max rel | dx max rel |"
    )
    L.append("|---|---|---|---|---|")
    for n in shapes:
        c = R[n]["check"]
        L.append(
            f"| {n} | {c['ort_vs_torch_max_abs']:.1e} | {c['el_vs_torch_max_abs']:.1e} | "
            f"{c['el_vs_torch_grad_max_rel']:.1e} | {c['el_vs_torch_dx_max_rel']:.1e} |"
        )
    L.append("")
    L.append("![speedups and GFLOP/s](compare.png)")
    L.append("")
    path.write_text("\n".join(L))


def write_chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R = results["shapes"]
    shapes = [n for n in SHAPES if n in R]
    if not shapes:
        return
    s = summarize(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.5))
    xs = np.arange(len(shapes))
    w = 0.27
    for k, (key, label) in enumerate(
        (
            ("fwd_vs_torch", "forward vs torch"),
            ("fwd_vs_ort", "forward vs ORT"),
            ("train_vs_torch", "training step vs torch"),
        )
    ):
        ax1.bar(xs + (k - 1) * w, [s[key][n] for n in shapes], w, label=label)
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.axhline(1.5, color="gray", ls="--", lw=0.8, label="1.5x target (vs torch)")
    ax1.axhline(0.9, color="gray", ls=":", lw=0.8, label="0.9x target (vs ORT geomean)")
    ax1.set_yscale("log")
    ax1.set_xticks(xs, shapes, rotation=30, ha="right")
    ax1.set_ylabel("speedup of eigenlstm (other time / eigenlstm time)")
    ax1.set_title("eigenlstm speedup (log scale)")
    ax1.legend(fontsize=8)
    series = (
        ("fwd", "eigenlstm", "el fwd"),
        ("fwd", "torch", "torch fwd"),
        ("fwd", "onnxruntime", "ORT fwd"),
        ("train", "eigenlstm", "el train"),
        ("train", "torch", "torch train"),
    )
    w2 = 0.16
    for k, (phase, eng, label) in enumerate(series):
        ax2.bar(xs + (k - 2) * w2, [R[n][phase][eng]["gflops"] for n in shapes], w2, label=label)
    sg = results["sgemm"]["numpy"]["gflops"]
    ax2.axhline(sg, color="k", ls="--", lw=0.8, label=f"numpy SGEMM 2048 ({sg:.0f})")
    ax2.axhline(0.8 * sg, color="gray", ls=":", lw=0.8, label="80% SGEMM")
    ax2.set_yscale("log")
    ax2.set_xticks(xs, shapes, rotation=30, ha="right")
    ax2.set_ylabel("GFLOP/s (2·T·B·4H·(I+H) per forward, 3x for a training step)")
    ax2.set_title("throughput (log scale)")
    ax2.legend(fontsize=8)
    info = results["machine"]
    fig.suptitle(
        f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, ORT {info['onnxruntime']}, "
        f"eigenlstm {info['eigenlstm']}, {info['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ============================================================================================
# main
# ============================================================================================


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument(
        "--shapes",
        default="all",
        help=f"comma-separated subset of: {', '.join(SHAPES)} (default all)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds per shape; forward and training share the rounds (default: as many as fit in --budget, within [5, 200])",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timing per shape (default 90; --quick 6)",
    )
    p.add_argument(
        "--batch",
        type=float,
        default=None,
        help="min seconds per timed batch of calls (default 0.02; --quick 0.005)",
    )
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed calls per engine before timing (default 3)"
    )
    p.add_argument(
        "--quick", action="store_true", help="short budgets for development (numbers are noisier)"
    )
    p.add_argument(
        "--no-memory", action="store_true", help="skip the training peak-memory subprocesses"
    )
    p.add_argument(
        "--no-quantized",
        action="store_true",
        help="skip reduced precision: eigenlstm int8 and bf16, ORT DynamicQuantizeLSTM, model sizes",
    )
    p.add_argument(
        "--deny-amx",
        action="store_true",
        help="deny every engine the AMX tiles (a VNNI CPU without AMX; Linux x86-64)",
    )
    p.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory"
    )
    p.add_argument(
        "--_memprobe", dest="memprobe", nargs=2, metavar=("ENGINE", "SHAPE"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.shapes == "all":
        args.shape_list = list(SHAPES)
    else:
        args.shape_list = [s.strip() for s in args.shapes.split(",") if s.strip()]
        bad = [s for s in args.shape_list if s not in SHAPES]
        if bad:
            p.error(f"--shapes: unknown {bad}; choose from {list(SHAPES)}")
    if args.budget is None:
        args.budget = 6.0 if args.quick else 90.0
    if args.batch is None:
        args.batch = 0.005 if args.quick else 0.02
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--variants"]:  # the same measure, another table: bench/variants.py
        from variants import main as variants_main

        return variants_main(argv[1:])
    args = parse_args(argv)
    if args.memprobe:
        memprobe(args.memprobe[0], args.memprobe[1], args.threads)
        return 0
    t_start = time.perf_counter()
    if args.deny_amx:
        deny_amx()
    el, torch, ort = import_engines(args.threads)
    # A build older than el.quantize (bench/compare_builds.py runs this file against older
    # installs) is timed in float32 only.
    args.quantized = not args.no_quantized and hasattr(el, "quantize")
    if not args.no_quantized and not args.quantized:
        print("[compare] this eigenlstm has no quantize(): reduced precision skipped", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": "python bench/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(el, torch, ort, args.threads, args.deny_amx),
        "settings": (
            f"repeats={'auto' if args.repeats is None else args.repeats}, budget={args.budget:g} s/shape, "
            f"batch≥{args.batch * 1e3:g} ms, warmup={args.warmup}"
        ),
        "quantized": args.quantized,
        "shapes": {},
    }
    print(
        f"[compare] {results['machine']['cpu']}, threads={args.threads}, shapes={args.shape_list}",
        flush=True,
    )

    sgemm_repeats = 3 if args.quick else 7
    sg1 = measure_sgemm(torch, sgemm_repeats)
    print(
        f"[compare] SGEMM 2048 numpy {sg1['numpy']['gflops']:.1f} GFLOP/s, torch.mm {sg1['torch']['gflops']:.1f}",
        flush=True,
    )

    for name in args.shape_list:
        t0 = time.perf_counter()
        r = run_shape(name, el, torch, ort, args.threads, args)
        results["shapes"][name] = r
        f, t = r["fwd"], r["train"]
        print(
            f"[compare] {name:14s} fwd el {fmt_t(f['eigenlstm']['median'])} torch {fmt_t(f['torch']['median'])} "
            f"ort {fmt_t(f['onnxruntime']['median'])} | train el {fmt_t(t['eigenlstm']['median'])} "
            f"torch {fmt_t(t['torch']['median'])} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        if r["quantized"]:
            q = r["quantized"]
            print(
                f"[compare] {'':14s} fwd "
                + " ".join(
                    f"{label} {fmt_t(f[e]['median'])} (err {q['rel_err_vs_el_fp32'][e]:.1e})"
                    for e, label in QUANTIZED.items()
                    if e in f
                )
                + f"; ORT graph ops {q['ort_ops']}"
                + ("" if q["ort_dynamic_quantize_lstm"] else " (no DynamicQuantizeLSTM!)"),
                flush=True,
            )

    results["overhead"] = run_overhead(el, torch, ort, args.threads, args)
    o = results["overhead"]["results"]
    print(
        f"[compare] seed model per call: el {o['eigenlstm']['median'] * 1e6:.1f} µs, torch "
        f"{o['torch']['median'] * 1e6:.1f} µs",
        flush=True,
    )

    # SGEMM again at the end: the reference is the median of the samples of both ends of the run.
    sg2 = measure_sgemm(torch, sgemm_repeats)
    results["sgemm"] = {}
    for k in sg1:
        pooled = sg1[k]["samples"] + sg2[k]["samples"]
        med = statistics.median(pooled)
        results["sgemm"][k] = {
            "median": med,
            "gflops": 2.0 * 2048**3 / med / 1e9,
            "start_gflops": sg1[k]["gflops"],
            "end_gflops": sg2[k]["gflops"],
            "repeats": len(pooled),
        }

    if args.quantized:
        results["model_size"] = model_sizes(el)
        b = results["model_size"]["bytes"]
        print(
            "[compare] model file bytes: "
            + ", ".join(f"{k} {v:,} ({v / b['float32']:.1%})" for k, v in b.items()),
            flush=True,
        )

    if not args.no_memory:
        results["memory"] = run_memory(args.shape_list, args.threads)

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - t_start
    (out / "compare.json").write_text(json.dumps(results, indent=1, default=str))
    write_markdown(results, out / "compare.md")
    write_chart(results, out / "compare.png")
    print((out / "compare.md").read_text())
    print(
        f"[compare] wrote {out / 'compare.md'}, compare.png, compare.json in {results['elapsed_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
