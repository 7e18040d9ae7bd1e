"""Parity of eigenlstm.LSTM with the float64 NumPy reference (tests/reference.py) and torch.nn.LSTM.

Forward (output, h_n, c_n) and backward (dx, dh0, dc0 and every parameter gradient) over the grid
num_layers x bidirectional x batch_first x proj_size x bias x {full, ragged lengths, unbatched} x H,
in float32 and float64; then H=64, B=12 (several gate blocks and batch row blocks) at 1 and 2
threads, and run-to-run bitwise determinism for a fixed thread count.
"""
# Sizes: T time steps, B batch, I input size, H hidden size, P projection size,
# Hout = P if P > 0 else H, D directions, L layers.

import functools
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch  # a hard import on purpose: the torch witness must never be silently skipped
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import eigenlstm as el
from compare import ARRAYS, reference_results, results, results_to_api, to_api, torch_results
from reference import init_params

T, B, I = 4, 4, 6
# The engine interleaves gates in blocks of 16 floats / 8 doubles: 5 is below one block, 20 and
# 37 are not multiples of either block (37 leaves a short last block in both dtypes).
HIDDEN = (5, 20, 37)
PROJ = {5: 2, 20: 7, 37: 18, 64: 40}
# One full row, one zero length (reference only: torch's pack_padded_sequence refuses 0), one
# of length 1, one in between. Rows are unsorted on purpose (enforce_sorted=False semantics).
RAGGED = (3, 0, T, 1)
LAYOUTS = ("full", "ragged", "unbatched")

# Norm-wise relative error ||ours - theirs||_2 / max(||theirs||_2, tiny), per dtype:
# - float64: the witnesses compute the same float64 math in a different order (GEMM blocking,
#   fused gate passes), so the differences are a few ulps times the depth (~1e-15); 1e-9 is a
#   wide margin that still catches any wrong term.
# - float32: unit roundoff is 6e-8. Each step does dot products of length I + Hout <= 44 and
#   the error is carried through T=4 steps, up to 3 layers and then back through BPTT, so a
#   few hundred roundings accumulate at worst: ~1e-6 relative. 1e-5 leaves a 10x margin while
#   any wrong term (a missed gate, mask or step) shows up as >= 1e-3.
RTOL = {np.float32: 1e-5, np.float64: 1e-9}
TINY = np.finfo(np.float64).tiny
DTYPES = (np.float32, np.float64)
DTYPE_IDS = ("f32", "f64")


pytestmark = pytest.mark.usefixtures("torch_single_threaded")


def assert_close(actual, expected, rtol, what):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = np.asarray(actual, dtype=np.float64) - np.asarray(expected, dtype=np.float64)
    err = np.linalg.norm(diff.ravel()) / max(
        np.linalg.norm(np.asarray(expected, np.float64).ravel()), TINY
    )
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


# ---- cases -------------------------------------------------------------------------------------


def make_case(
    seed,
    *,
    num_layers,
    bidirectional,
    batch_first,
    proj_size,
    bias,
    layout,
    H,
    batch=B,
    steps=T,
    lengths=RAGGED,
):
    """Random float64 params and time-major arrays; `layout` says how the API will see them."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    Hout = proj_size if proj_size > 0 else H
    n = 1 if layout == "unbatched" else batch
    DL = D * num_layers
    return {
        "cfg": dict(
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            proj_size=proj_size,
            bias=bias,
            H=H,
            layout=layout,
        ),
        "params": init_params(rng, I, H, num_layers, bidirectional, proj_size, bias),
        "x": rng.standard_normal((steps, n, I)),
        "h0": rng.standard_normal((DL, n, Hout)),
        "c0": rng.standard_normal((DL, n, H)),
        "d_output": rng.standard_normal((steps, n, D * Hout)),
        "dh_n": rng.standard_normal((DL, n, Hout)),
        "dc_n": rng.standard_normal((DL, n, H)),
        "lengths": np.asarray(lengths, dtype=np.int64) if layout == "ragged" else None,
    }


def rounded(case, dtype):
    """The case with every array rounded to dtype (kept in float64 for the reference)."""
    out = dict(case)
    for k in ("x", "h0", "c0", "d_output", "dh_n", "dc_n"):
        out[k] = case[k].astype(dtype).astype(np.float64)
    out["params"] = {k: v.astype(dtype).astype(np.float64) for k, v in case["params"].items()}
    return out


def layout(cfg):
    """How the module sees time-major arrays: the keywords of compare.to_api."""
    return {"batch_first": cfg["batch_first"], "unbatched": cfg["layout"] == "unbatched"}


def batch_axis(cfg):
    return 0 if cfg["batch_first"] else 1


def our_lstm(case, dtype):
    """el.LSTM of the case's configuration (positional arguments, as torch takes them) and params."""
    cfg = case["cfg"]
    lstm = el.LSTM(
        I,
        cfg["H"],
        cfg["num_layers"],
        cfg["bias"],
        cfg["batch_first"],
        0.0,
        cfg["bidirectional"],
        cfg["proj_size"],
        dtype=dtype,
        seed=0,
    )
    lstm.load_state_dict({k: v.astype(dtype) for k, v in case["params"].items()})
    return lstm


def run_ours(case, dtype):
    cfg = case["cfg"]
    lstm = our_lstm(case, dtype)
    api = {
        k: to_api(k, case[k], **layout(cfg)).astype(dtype)
        for k in ("x", "h0", "c0", "d_output", "dh_n", "dc_n")
    }
    forward = lstm(api["x"], (api["h0"], api["c0"]), lengths=case["lengths"])
    backward = lstm.backward(api["d_output"], (api["dh_n"], api["dc_n"]))
    return results(forward, backward, lstm.grads)


def run_reference(case):
    return results_to_api(reference_results(case), **layout(case["cfg"]))


def nonempty_rows(case):
    """Batch rows torch can run: all, or those with length > 0."""
    if case["lengths"] is None:
        return None
    return np.flatnonzero(case["lengths"] > 0)


def select_rows(result, case, rows):
    """The sequences `rows` of a result in API layout (parameter gradients are unchanged)."""
    if rows is None:
        return result
    ax = batch_axis(case["cfg"])
    out = {k: np.take(result[k], rows, axis=ax) for k in ("output", "dx")}
    out.update({k: np.take(result[k], rows, axis=1) for k in ("h_n", "c_n", "dh0", "dc0")})
    out["grads"] = result["grads"]
    return out


def run_torch(case, dtype):
    """torch.nn.LSTM forward + autograd in `dtype` on the rows it accepts (lengths > 0)."""
    cfg = case["cfg"]
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    lstm = torch.nn.LSTM(
        I,
        cfg["H"],
        num_layers=cfg["num_layers"],
        bias=cfg["bias"],
        batch_first=cfg["batch_first"],
        bidirectional=cfg["bidirectional"],
        proj_size=cfg["proj_size"],
    ).to(tdtype)
    lstm.load_state_dict({k: torch.from_numpy(v.astype(dtype)) for k, v in case["params"].items()})
    rows = nonempty_rows(case)
    sub = (
        case
        if rows is None
        else dict(
            case,
            lengths=case["lengths"][rows],
            **{k: case[k][:, rows] for k in ("x", "h0", "c0", "d_output", "dh_n", "dc_n")},
        )
    )

    def tensor(k, grad=False):
        return torch.tensor(to_api(k, sub[k], **layout(cfg)).astype(dtype), requires_grad=grad)

    x, h0, c0 = tensor("x", True), tensor("h0", True), tensor("c0", True)
    if sub["lengths"] is None:
        out, (h_n, c_n) = lstm(x, (h0, c0))
    else:
        packed = pack_padded_sequence(
            x, torch.as_tensor(sub["lengths"]), batch_first=cfg["batch_first"], enforce_sorted=False
        )
        out, (h_n, c_n) = lstm(packed, (h0, c0))
        out, _ = pad_packed_sequence(
            out, batch_first=cfg["batch_first"], total_length=x.shape[1 - batch_axis(cfg)]
        )
    return torch_results(
        (x, h0, c0),
        (out, h_n, c_n),
        (tensor("d_output"), tensor("dh_n"), tensor("dc_n")),
        lstm.named_parameters(),
    )


def assert_forward_matches(ours, theirs, rtol, witness):
    for k in ("output", "h_n", "c_n"):
        assert_close(ours[k], theirs[k], rtol, f"{k} vs {witness}")


def assert_backward_matches(ours, theirs, rtol, witness):
    for k in ("dx", "dh0", "dc0"):
        assert_close(ours[k], theirs[k], rtol, f"{k} vs {witness}")
    assert list(ours["grads"]) == list(theirs["grads"])
    for k in theirs["grads"]:
        assert_close(ours["grads"][k], theirs["grads"][k], rtol, f"grad {k} vs {witness}")


def assert_dtype(ours, dtype):
    for k in ARRAYS:
        assert ours[k].dtype == dtype, k
    for k, v in ours["grads"].items():
        assert v.dtype == dtype, k


# ---- the grid ----------------------------------------------------------------------------------


def with_hidden(L, bi, bf, proj, bias, layout):
    """Rotate H through HIDDEN so that each H meets every value of every other factor."""
    return (
        L,
        bi,
        bf,
        proj,
        bias,
        layout,
        HIDDEN[(L + bi + bf + proj + bias + LAYOUTS.index(layout)) % len(HIDDEN)],
    )


GRID = [
    with_hidden(*c)
    for c in itertools.product(
        [1, 2, 3], [False, True], [False, True], [False, True], [True, False], LAYOUTS
    )
]


def grid_id(config):
    L, bi, bf, proj, bias, layout, H = config
    return (
        f"L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tm'}-{'P' if proj else 'noP'}-"
        f"{'bias' if bias else 'nobias'}-{layout}-H{H}"
    )


@functools.cache
def grid_results(config, dtype):
    """(ours, reference, torch, torch's rows) for one grid case, computed once for both tests."""
    L, bi, bf, proj, bias, layout, H = config
    case = make_case(
        GRID.index(config),
        num_layers=L,
        bidirectional=bi,
        batch_first=bf,
        proj_size=PROJ[H] if proj else 0,
        bias=bias,
        layout=layout,
        H=H,
    )
    case = rounded(case, dtype)
    return (
        run_ours(case, dtype),
        run_reference(case),
        run_torch(case, dtype),
        nonempty_rows(case),
        case,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", GRID, ids=[grid_id(c) for c in GRID])
def test_forward_matches_reference_and_torch(config, dtype):
    ours, ref, theirs, rows, case = grid_results(config, dtype)
    assert_dtype(ours, dtype)
    assert_forward_matches(ours, ref, RTOL[dtype], "reference")
    assert_forward_matches(select_rows(ours, case, rows), theirs, RTOL[dtype], "torch")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", GRID, ids=[grid_id(c) for c in GRID])
def test_backward_matches_reference_and_torch_autograd(config, dtype):
    ours, ref, theirs, rows, case = grid_results(config, dtype)
    assert_backward_matches(ours, ref, RTOL[dtype], "reference")
    assert_backward_matches(select_rows(ours, case, rows), theirs, RTOL[dtype], "torch")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "config",
    [c for c in GRID if c[5] == "ragged"],
    ids=[grid_id(c) for c in GRID if c[5] == "ragged"],
)
def test_padded_steps_are_exact_zeros_and_a_zero_length_passes_state_and_gradients_through(
    config, dtype
):
    ours, _, _, _, case = grid_results(config, dtype)
    cfg = case["cfg"]
    lengths = case["lengths"]
    past = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    if cfg["batch_first"]:
        past = past.T
    assert np.all(ours["output"][past] == 0)
    assert np.all(ours["dx"][past] == 0)
    zero = np.flatnonzero(lengths == 0)
    assert np.array_equal(ours["h_n"][:, zero], case["h0"][:, zero].astype(dtype))
    assert np.array_equal(ours["c_n"][:, zero], case["c0"][:, zero].astype(dtype))
    assert np.array_equal(ours["dh0"][:, zero], case["dh_n"][:, zero].astype(dtype))
    assert np.array_equal(ours["dc0"][:, zero], case["dc_n"][:, zero].astype(dtype))


# The cell update runs a layer's last gate block of w = H mod HB units (HB = 16 floats, 8
# doubles; w = HB when H is a multiple) one of six ways: a whole block; exactly half or a
# quarter of one, in narrower packets; or padded to a quarter, a half or a whole block.
# H = 1..16 gives every w in float32 and float64 alike.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("H", range(1, 17))
def test_every_width_of_the_last_gate_block_matches_reference(H, dtype):
    case = rounded(
        make_case(
            500 + H,
            num_layers=1,
            bidirectional=False,
            batch_first=False,
            proj_size=0,
            bias=True,
            layout="ragged",
            H=H,
        ),
        dtype,
    )
    ours, ref = run_ours(case, dtype), run_reference(case)
    assert_forward_matches(ours, ref, RTOL[dtype], "reference")
    assert_backward_matches(ours, ref, RTOL[dtype], "reference")


# ---- large sizes and threads ---------------------------------------------------------------------

BIG_B = 12
BIG_LENGTHS = (10, 0, 3, 10, 1, 5, 6, 2, 9, 4, 0, 10)  # includes zeros and the full length
BIG_T = 10
# At two threads the engine splits these two ways: a bidirectional layer runs its directions
# on one thread each; a unidirectional one (over 2^20 multiply-adds, W_hh small) gives each
# thread a slice of the batch rows (see plan_team in cpp/src/engine/plan.hpp: T*B*4H*(I+H_out) is
# 1.4M-2.2M multiply-adds here), with and without lengths and projection.
BIG_CONFIGS = {
    # (num_layers, bidirectional, batch_first, proj_size, bias, layout)
    "L2-bi-tm-noP-bias-ragged": (2, True, False, 0, True, "ragged"),
    "L1-uni-tm-P40-bias-full": (1, False, False, 40, True, "full"),
    "L2-bi-bf-P40-nobias-ragged": (2, True, True, 40, False, "ragged"),
    "L2-uni-bf-noP-bias-full": (2, False, True, 0, True, "full"),
    "L1-uni-tm-noP-bias-ragged": (1, False, False, 0, True, "ragged"),
    "L2-uni-bf-P40-bias-ragged": (2, False, True, 40, True, "ragged"),
}


@pytest.fixture
def restore_threads():
    saved = el.get_num_threads()
    yield
    el.set_num_threads(saved)


def big_case(name):
    L, bi, bf, P, bias, layout = BIG_CONFIGS[name]
    return make_case(
        1000 + list(BIG_CONFIGS).index(name),
        num_layers=L,
        bidirectional=bi,
        batch_first=bf,
        proj_size=P,
        bias=bias,
        layout=layout,
        H=64,
        batch=BIG_B,
        steps=BIG_T,
        lengths=BIG_LENGTHS,
    )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(BIG_CONFIGS))
def test_h64_b12_matches_reference_and_torch_at_one_and_two_threads(
    name, dtype, threads, restore_threads
):
    el.set_num_threads(threads)
    assert el.get_num_threads() == threads
    case = rounded(big_case(name), dtype)
    ours, ref, theirs = run_ours(case, dtype), run_reference(case), run_torch(case, dtype)
    rows = nonempty_rows(case)
    assert_dtype(ours, dtype)
    assert_forward_matches(ours, ref, RTOL[dtype], "reference")
    assert_backward_matches(ours, ref, RTOL[dtype], "reference")
    assert_forward_matches(select_rows(ours, case, rows), theirs, RTOL[dtype], "torch")
    assert_backward_matches(select_rows(ours, case, rows), theirs, RTOL[dtype], "torch")


# Over 128K parameter values the engine moves its weights (after a load or an update) and its
# gradients (after a backward) between torch's order and its own gate-interleaved one on every
# thread, each thread taking an equal share of the buffer, so that gate blocks are cut at the
# thread boundaries (engine.cpp, for_each_run_parallel). H = 100 leaves a last gate block of 4
# units in both dtypes.
WIDE_CONFIGS = {"L2-bi-noP": 0, "L2-bi-P40": 40}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(WIDE_CONFIGS))
def test_a_model_of_over_128k_values_matches_torch_at_one_and_two_threads(
    name, dtype, threads, restore_threads
):
    el.set_num_threads(threads)
    case = make_case(
        2000 + list(WIDE_CONFIGS).index(name),
        num_layers=2,
        bidirectional=True,
        batch_first=True,
        proj_size=WIDE_CONFIGS[name],
        bias=True,
        layout="full",
        H=100,
        batch=3,
        steps=4,
    )
    case = rounded(case, dtype)
    assert our_lstm(case, dtype).flat_buffers()[0].size > 2**17
    ours, theirs = run_ours(case, dtype), run_torch(case, dtype)
    assert_forward_matches(ours, theirs, RTOL[dtype], "torch")
    assert_backward_matches(ours, theirs, RTOL[dtype], "torch")


# From 16 rows, with a step's W_ih and W_hh in 2 MiB, a float eval projects each step's input
# in its time loop instead of all steps' at once (engine.cpp, step_inputs), and may split the
# batch between threads by rows. A row must come out with the bits it has alone (one row: the
# all-steps product), at one thread and at two.
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    ("bidirectional", "proj_size", "cifg"), [(False, 0, False), (True, 0, False), (False, 8, True)]
)
def test_an_eval_of_16_rows_or_more_gives_each_row_its_bits_alone(
    bidirectional, proj_size, cifg, dtype, threads, restore_threads
):
    lstm = el.LSTM(
        12,
        40,
        num_layers=2,
        bidirectional=bidirectional,
        proj_size=proj_size,
        cifg=cifg,
        dtype=dtype,
        seed=3,
    ).eval()
    rng = np.random.default_rng(13)
    x = rng.standard_normal((10, 20, 12)).astype(dtype)
    lengths = rng.integers(1, 11, size=20)
    el.set_num_threads(threads)
    y, (h, c) = lstm(x, lengths=lengths)
    for b in (0, 9, 19):
        n = lengths[b]
        yb, (hb, cb) = lstm(x[:n, b : b + 1])
        assert np.array_equal(y[:n, b], yb[:, 0])
        assert np.array_equal(h[:, b], hb[:, 0]) and np.array_equal(c[:, b], cb[:, 0])


def repeated_runs(case, dtype, threads):
    """Three training runs and three eval forwards at a fixed thread count."""
    el.set_num_threads(threads)
    runs = [run_ours(case, dtype) for _ in range(3)]
    lstm = our_lstm(case, dtype).eval()
    x, h0, c0 = (to_api(k, case[k], **layout(case["cfg"])).astype(dtype) for k in ("x", "h0", "c0"))
    evals = [lstm(x, (h0, c0), lengths=case["lengths"]) for _ in range(3)]
    return runs, evals


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(BIG_CONFIGS))
def test_results_are_bitwise_identical_run_to_run_for_a_fixed_thread_count(
    name, dtype, restore_threads
):
    case = rounded(big_case(name), dtype)
    by_threads = {}
    for threads in (1, 2):
        runs, evals = repeated_runs(case, dtype, threads)
        for run in runs[1:]:
            for k in ARRAYS:
                assert np.array_equal(run[k], runs[0][k]), f"{k} at {threads} threads"
            for k in run["grads"]:
                assert np.array_equal(run["grads"][k], runs[0]["grads"][k]), (
                    f"grad {k} at {threads} threads"
                )
        for out, (h_n, c_n) in evals[1:]:
            assert np.array_equal(out, evals[0][0])
            assert np.array_equal(h_n, evals[0][1][0])
            assert np.array_equal(c_n, evals[0][1][1])
        # eval mode computes the same forward as training mode
        assert_close(evals[0][0], runs[0]["output"], RTOL[dtype], "eval output vs training output")
        by_threads[threads] = runs[0]
    # 1 vs 2 threads may sum in a different order: equal within the dtype's tolerance.
    assert_forward_matches(by_threads[2], by_threads[1], RTOL[dtype], "1 thread")
    assert_backward_matches(by_threads[2], by_threads[1], RTOL[dtype], "1 thread")


def test_set_num_threads_is_read_back_by_get_num_threads(restore_threads):
    for n in (1, 2, 3):
        el.set_num_threads(n)
        assert el.get_num_threads() == n


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="counts threads through Linux /proc"
)
def test_one_thread_keeps_every_call_on_the_calling_thread():
    # In a fresh process, so that no thread pool exists yet: with set_num_threads(1) no call,
    # bidirectional or not, may start another thread.
    code = textwrap.dedent("""
        import os, numpy as np, eigenlstm as el
        el.set_num_threads(1)
        threads = lambda: len(os.listdir("/proc/self/task"))
        before = threads()
        for bidirectional in (False, True):
            lstm = el.LSTM(4, 64, 2, bidirectional=bidirectional, seed=0)
            out, _ = lstm(np.ones((3, 12, 4), np.float32))
            lstm.backward(np.ones_like(out))
            lstm.eval()(np.ones((3, 12, 4), np.float32))
            print(bidirectional, before, threads())
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    for line in result.stdout.splitlines():
        bidirectional, before, after = line.split()
        assert int(after) == int(before), (
            f"bidirectional={bidirectional}: {before} -> {after} threads"
        )
