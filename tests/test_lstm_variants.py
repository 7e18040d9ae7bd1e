"""The LSTM cell variants: peepholes, cell and projection clipping, recurrent dropout, weight
drop and zoneout.

Witnesses: a torch autograd model of each variant in float64 (tests/variant_reference.py) for
outputs, final states and every gradient, with the random masks drawn again in NumPy from the
documented dropout stream; ONNX Runtime's LSTM with peephole input P for the peepholes; float64
for float32. Finite differences are in test_lstm_gradcheck.py.
"""
# Sizes: T time steps, B batch, I input size, H hidden, P projection, Hout = P or H,
# D directions, L layers.

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import eigenlstm as el
from variant_reference import as_tensors, call_masks, draws, variant_forward

T, B, I = 6, 4, 5
# H = 19: with float32's gate blocks of 16 units a whole block plus a padded tail of 3; with
# float64's blocks of 8, two whole blocks plus the tail. Every cell path runs.
H = 19
# Outputs and gradients are sums of O(10) products of O(1) values computed in a different
# order; float64 keeps them within a few ulps of 1e-16, so 1e-9 relative has a wide margin.
RTOL64 = 1e-9
# Float32 against float64: rounding of O(T * H) accumulations at 6e-8 each.
RTOL32 = 1e-5

VARIANTS = {
    "peepholes": {"peepholes": True},
    "cell_clip": {"cell_clip": 0.4},
    "proj_clip": {"proj_clip": 0.05},
    "peepholes+cell_clip": {"peepholes": True, "cell_clip": 0.4},
    "all": {"peepholes": True, "cell_clip": 0.4, "proj_clip": 0.05},
    "cifg": {"cifg": True},
    "cifg+peepholes": {"cifg": True, "peepholes": True, "cell_clip": 0.4},
    "recurrent_dropout": {"recurrent_dropout": 0.3},
    "weight_drop": {"weight_drop": 0.4},
    "zoneout": {"zoneout": 0.3},
    "zoneout-pair": {"zoneout": (0.2, 0.5)},
    "everything": {
        "peepholes": True,
        "cell_clip": 0.4,
        "proj_clip": 0.05,
        "recurrent_dropout": 0.25,
        "weight_drop": 0.3,
        "zoneout": (0.3, 0.2),
    },
    "layer_norm": {"layer_norm": True},
    "layer_norm+cifg+peepholes": {"layer_norm": True, "cifg": True, "peepholes": True},
    "layer_norm+everything": {
        "layer_norm": True,
        "peepholes": True,
        "cell_clip": 0.4,
        "proj_clip": 0.05,
        "recurrent_dropout": 0.25,
        "weight_drop": 0.3,
        "zoneout": (0.3, 0.2),
    },
    "everything-cifg": {
        "cifg": True,
        "peepholes": True,
        "cell_clip": 0.4,
        "proj_clip": 0.05,
        "recurrent_dropout": 0.25,
        "weight_drop": 0.3,
        "zoneout": (0.3, 0.2),
    },
}
STRUCTURES = {
    # name: (num_layers, bidirectional, proj_size, bias, lengths)
    "L1": (1, False, 0, True, None),
    "L2-bi-lengths": (2, True, 0, True, [6, 0, 3, 1]),
    "L2-bi-P3-lengths": (2, True, 3, True, [2, 6, 0, 5]),
    "L1-P4-nobias": (1, False, 4, False, None),
}


def cases():
    return [
        pytest.param(options, L, bi, P, bias, lengths, id=f"{vname}-{sname}")
        for vname, options in VARIANTS.items()
        for sname, (L, bi, P, bias, lengths) in STRUCTURES.items()
        if P > 0 or "proj_clip" not in options
    ]


def make(options, L, bi, P, bias, dtype=np.float64, seed=0):
    """An LSTM with larger weights than the default init (U(-0.6, 0.6) instead of
    U(-0.23, 0.23)), so that the states reach the clips, and one problem for it."""
    lstm = el.LSTM(
        I, H, L, bias=bias, bidirectional=bi, proj_size=P, dtype=dtype, seed=seed, **options
    )
    rng = np.random.default_rng(seed)
    lstm.load_state_dict({k: rng.uniform(-0.6, 0.6, v.shape) for k, v in lstm.state_dict().items()})
    D, Hout = (2 if bi else 1), (P or H)
    arrays = {
        "x": rng.standard_normal((T, B, I)),
        "h0": 0.5 * rng.standard_normal((D * L, B, Hout)),
        "c0": rng.standard_normal((D * L, B, H)),
        "d_output": rng.standard_normal((T, B, D * Hout)),
        "dh_n": rng.standard_normal((D * L, B, Hout)),
        "dc_n": rng.standard_normal((D * L, B, H)),
    }
    return lstm, arrays


def run(lstm, a, lengths):
    """Training forward and backward of ``lstm``: {output, h_n, c_n, dx, dh0, dc0, <param
    grads>}."""
    lstm.train()
    lstm.zero_grad()
    out, (h_n, c_n) = lstm(a["x"], (a["h0"], a["c0"]), lengths=lengths)
    dx, (dh0, dc0) = lstm.backward(a["d_output"], (a["dh_n"], a["dc_n"]))
    return dict(output=out, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, **lstm.grads)


def oracle(lstm, a, lengths, masks=None):
    """The same, from the torch autograd model of the variants, with a training call's
    ``masks`` (call_masks), or in evaluation without them."""
    params = as_tensors(lstm.state_dict())
    inputs = as_tensors({k: a[k] for k in ("x", "h0", "c0")})
    out, h_n, c_n = variant_forward(
        params,
        inputs["x"],
        inputs["h0"],
        inputs["c0"],
        num_layers=lstm.num_layers,
        bidirectional=lstm.bidirectional,
        proj_size=lstm.proj_size,
        lengths=lengths,
        cifg=lstm.cifg,
        peepholes=lstm.peepholes,
        cell_clip=lstm.cell_clip,
        proj_clip=lstm.proj_clip,
        zoneout=lstm.zoneout if isinstance(lstm.zoneout, tuple) else (lstm.zoneout,) * 2,
        layer_norm=lstm.layer_norm,
        masks=masks,
    )
    loss = (
        (out * torch.tensor(a["d_output"])).sum()
        + (h_n * torch.tensor(a["dh_n"])).sum()
        + (c_n * torch.tensor(a["dc_n"])).sum()
    )
    loss.backward()
    res = dict(output=out, h_n=h_n, c_n=c_n)
    res.update({"d" + k: v.grad for k, v in inputs.items()})
    res.update({k: v.grad for k, v in params.items()})
    return {k: v.detach().numpy() for k, v in res.items()}


def assert_close(got, want, rtol):
    assert list(got) == list(want)
    for key in want:
        scale = max(np.abs(want[key]).max(), 1.0)
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=rtol * scale, err_msg=key)


@pytest.mark.parametrize("options, L, bi, P, bias, lengths", cases())
def test_matches_the_torch_autograd_model_float64(options, L, bi, P, bias, lengths):
    lstm, a = make(options, L, bi, P, bias)
    want = oracle(lstm, a, lengths, call_masks(lstm, T, B, *lstm.dropout_state))
    assert_close(run(lstm, a, lengths), want, RTOL64)
    # The clips bite: some states sit at the bound (so the test sees clipping at all).
    if "cell_clip" in options:
        (c_all,) = [want["c_n"]]
        assert np.isclose(np.abs(c_all), options["cell_clip"]).any()
    if "proj_clip" in options:
        assert np.isclose(np.abs(want["output"]), options["proj_clip"]).mean() > 0.2


def max_rel_err(got, want):
    """The largest error of any result, relative as assert_close measures it."""
    return max(np.abs(got[k] - want[k]).max() / max(np.abs(want[k]).max(), 1.0) for k in want)


@pytest.mark.parametrize("options, L, bi, P, bias, lengths", cases())
def test_float32_agrees_with_float64(options, L, bi, P, bias, lengths):
    lstm64, a = make(options, L, bi, P, bias)
    lstm32, _ = make(options, L, bi, P, bias, dtype=np.float32)
    lstm32.load_state_dict(lstm64.state_dict())
    state = lstm64.dropout_state
    want = run(lstm64, a, lengths)
    got = run(lstm32, a, lengths)
    for key in want:
        assert got[key].dtype == np.float32, key
    # Float32 sees the problem rounded to float32. What that alone moves the float64 results
    # is the instance's sensitivity: about 1e-7 here, but one instance, the layer norm of the
    # 3-wide projected state (LN(W_hh h) is scale-invariant in h, its Jacobian 1/std: up to
    # 30 here), moves them by 3.6e-6, and float32's own roundings are amplified alike (2.5e-5).
    # So float32 must agree to 1e-5, or to 10 times that sensitivity where it is larger.
    lstm64.load_state_dict({k: v.astype(np.float32) for k, v in lstm64.state_dict().items()})
    lstm64.set_dropout_state(state)
    rounded = run(
        lstm64, {k: v.astype(np.float32).astype(np.float64) for k, v in a.items()}, lengths
    )
    # Where a float64 state sits exactly at a clip, float32 rounding may put it on either side
    # of the kink; those are measure-zero here (no state is within 1e-5 of a bound that it
    # does not sit on), so the gradients agree too.
    assert_close(got, want, max(RTOL32, 10 * max_rel_err(rounded, want)))


def test_the_variants_change_the_results():
    """Each option changes what a plain LSTM with the same weights computes (so the tests
    above would see an option that is ignored)."""
    for options in (
        {"peepholes": True},
        {"cell_clip": 0.4},
        {"proj_clip": 0.05},
        {"zoneout": 0.3},
        {"layer_norm": True},
    ):
        P = 3 if "proj_clip" in options else 0
        lstm, a = make(options, 2, True, P, True)
        plain = el.LSTM(I, H, 2, bidirectional=True, proj_size=P, dtype=np.float64, seed=0)
        plain.load_state_dict(
            {
                k: v
                for k, v in lstm.state_dict().items()
                if "peephole" not in k and "layer_norm" not in k
            }
        )
        y, _ = lstm(a["x"], (a["h0"], a["c0"]))
        y_plain, _ = plain(a["x"], (a["h0"], a["c0"]))
        assert np.abs(y - y_plain).max() > 1e-2, options


@pytest.mark.parametrize("threads", [1, 2])
def test_results_do_not_depend_on_the_thread_count(threads):
    options = VARIANTS["layer_norm+everything"]
    lstm, a = make(options, 2, True, 3, True)
    saved, state = el.get_num_threads(), lstm.dropout_state
    try:
        el.set_num_threads(1)
        want = run(lstm, a, [6, 2, 0, 5])
        el.set_num_threads(threads)
        lstm.set_dropout_state(state)  # the same masks
        got = run(lstm, a, [6, 2, 0, 5])
    finally:
        el.set_num_threads(saved)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize(
    "hidden, batch, steps",
    [
        # the engine's plan (cpp/src/engine/plan.hpp) for two threads: a team that splits the
        # hidden units, so each layer norm sums its row over both threads' gate blocks
        (160, 6, 5),
        # small weights and many rows: each thread runs its own batch rows
        (32, 8, 40),
    ],
)
def test_layer_norm_across_threads_matches_the_oracle_and_one_thread(hidden, batch, steps):
    options = {"layer_norm": True, "peepholes": True, "zoneout": (0.2, 0.1), "cell_clip": 0.5}
    lstm = el.LSTM(I, hidden, dtype=np.float64, seed=3, **options)
    rng = np.random.default_rng(3)
    lstm.load_state_dict({k: rng.uniform(-0.3, 0.3, v.shape) for k, v in lstm.state_dict().items()})
    a = {
        "x": rng.standard_normal((steps, batch, I)),
        "h0": 0.5 * rng.standard_normal((1, batch, hidden)),
        "c0": rng.standard_normal((1, batch, hidden)),
        "d_output": rng.standard_normal((steps, batch, hidden)),
        "dh_n": rng.standard_normal((1, batch, hidden)),
        "dc_n": rng.standard_normal((1, batch, hidden)),
    }
    lengths = [steps] + [int(n) for n in rng.integers(0, steps + 1, batch - 1)]
    saved, state = el.get_num_threads(), lstm.dropout_state
    try:
        el.set_num_threads(2)
        got = run(lstm, a, lengths)
        el.set_num_threads(1)
        lstm.set_dropout_state(state)
        one = run(lstm, a, lengths)
    finally:
        el.set_num_threads(saved)
    for key in got:
        np.testing.assert_array_equal(got[key], one[key], err_msg=key)
    assert_close(got, oracle(lstm, a, lengths, call_masks(lstm, steps, batch, *state)), RTOL64)


@pytest.mark.parametrize("options, L, bi, P, bias, lengths", cases())
def test_evaluation_matches_the_model_without_masks(options, L, bi, P, bias, lengths):
    """Evaluation draws nothing: the dropouts are off and zoneout is its expectation."""
    lstm, a = make(options, L, bi, P, bias)
    lstm.eval()
    state = lstm.dropout_state
    out, (h_n, c_n) = lstm(a["x"], (a["h0"], a["c0"]), lengths=lengths)
    want = oracle(lstm, a, lengths)
    got = dict(output=out, h_n=h_n, c_n=c_n)
    assert_close(got, {k: want[k] for k in got}, RTOL64)
    assert lstm.dropout_state == state


RANDOM = [
    k
    for k in VARIANTS
    if any(o in VARIANTS[k] for o in ("recurrent_dropout", "weight_drop", "zoneout"))
]


@pytest.mark.parametrize("name", RANDOM)
def test_a_training_call_takes_the_next_masks_and_set_dropout_state_replays_them(name):
    options = VARIANTS[name]
    P = 3 if "proj_clip" in options else 0
    lstm, a = make(options, 2, True, P, True)
    state = lstm.dropout_state
    first = run(lstm, a, None)
    assert lstm.dropout_state == (state[0], state[1] + 1)
    second = run(lstm, a, None)
    assert np.abs(second["output"] - first["output"]).max() > 1e-3  # new masks
    lstm.set_dropout_state(state)
    again = run(lstm, a, None)
    for key in first:
        np.testing.assert_array_equal(again[key], first[key], err_msg=key)


def test_the_masks_are_bernoulli_with_the_given_probability():
    """The stream's draws (which the engine matches exactly above) hit p on average."""
    for q in (0.1, 0.5, 0.9):
        frac = draws(12345, 200_000, q).mean()
        assert abs(frac - q) < 0.005, (q, frac)
    # and the engine's own: a recurrent-dropout LSTM with p = 1/2 behaves half the time like
    # h = 0 for W_hh; checked through the masks of call_masks, which the oracle test uses
    lstm = el.LSTM(3, 50, recurrent_dropout=0.5, zoneout=(0.2, 0.7), weight_drop=0.3, seed=3)
    (m,) = call_masks(lstm, 20, 40, *lstm.dropout_state)
    assert abs((m["r"] == 0).mean() - 0.5) < 0.05
    assert abs((m["w"] == 0).mean() - 0.3) < 0.02
    assert abs(m["zc"].mean() - 0.2) < 0.02 and abs(m["zh"].mean() - 0.7) < 0.02


def test_zoneout_one_keeps_the_initial_state():
    lstm, a = make({"zoneout": 1.0}, 1, False, 0, True)
    for mode in (lstm.train, lstm.eval):
        mode()
        out, (h_n, c_n) = lstm(a["x"], (a["h0"], a["c0"]))
        np.testing.assert_array_equal(h_n, a["h0"])
        np.testing.assert_array_equal(c_n, a["c0"])
        np.testing.assert_array_equal(out, np.broadcast_to(a["h0"][0], out.shape))


# ---- ONNX Runtime: a second witness for peepholes ----------------------------------------------
def peephole_node_model(lstm):
    """An ONNX LSTM node built by hand from ``lstm``'s weights (one layer): W, R, B in ONNX's
    gate order i, o, f, c and P = [w_ci, w_co, w_cf], as the ONNX operator defines them."""
    sd = lstm.state_dict()
    D = lstm.num_directions
    sfx = ["", "_reverse"][:D]
    order = [0, 3, 1, 2]  # torch i, f, g, o -> ONNX i, o, f, c

    def gates(w):
        return np.concatenate([np.split(w, 4)[k] for k in order])

    W = np.stack([gates(sd[f"weight_ih_l0{s}"]) for s in sfx]).astype(np.float32)
    R = np.stack([gates(sd[f"weight_hh_l0{s}"]) for s in sfx]).astype(np.float32)
    Bias = np.stack(
        [np.concatenate([gates(sd[f"bias_ih_l0{s}"]), gates(sd[f"bias_hh_l0{s}"])]) for s in sfx]
    ).astype(np.float32)
    Pw = np.stack([sd[f"weight_peephole_l0{s}"][[0, 2, 1]].reshape(-1) for s in sfx]).astype(
        np.float32
    )
    node = helper.make_node(
        "LSTM",
        ["X", "W", "R", "B", "", "", "", "P"],
        ["Y", "Y_h", "Y_c"],
        hidden_size=H,
        direction="bidirectional" if D == 2 else "forward",
    )
    graph = helper.make_graph(
        [node],
        "peephole_lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", D, "N", H]),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [D, "N", H]),
            helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [D, "N", H]),
        ],
        [
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(R, "R"),
            numpy_helper.from_array(Bias, "B"),
            numpy_helper.from_array(Pw, "P"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_session(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_peepholes_match_onnx_runtime(bidirectional):
    lstm, a = make({"peepholes": True}, 1, bidirectional, 0, True, dtype=np.float32)
    lstm.eval()
    x = a["x"].astype(np.float32)
    y, (h_n, c_n) = lstm(x)
    Y, Y_h, Y_c = ort_session(peephole_node_model(lstm)).run(None, {"X": x})
    D = lstm.num_directions
    np.testing.assert_allclose(
        y, Y.transpose(0, 2, 1, 3).reshape(T, B, D * H), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(h_n, Y_h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_n, Y_c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options", [{"peepholes": True}, {"cifg": True}, {"cifg": True, "peepholes": True}]
)
def test_a_variant_lstm_exports_to_onnx_and_runs_in_onnx_runtime(options):
    """Peepholes are the LSTM node's P, cifg its input_forget=1: ONNX Runtime computes them."""
    lstm, a = make(options, 2, True, 0, True, dtype=np.float32)
    lstm.eval()
    buf = io.BytesIO()
    el.onnx.export(lstm, buf, lengths=True)
    x = a["x"].astype(np.float32)
    lengths = np.array([6, 1, 3, 4])
    y, (h_n, c_n) = lstm(x, lengths=lengths)
    out, h, c = ort_session(buf.getvalue()).run(None, {"input": x, "lengths": lengths})
    for got, want in ((out, y), (h, h_n), (c, c_n)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and the file loads back as the same LSTM: the same options, weights and outputs
    back = el.onnx.load(buf.getvalue())
    assert (back.peepholes, back.cifg) == (lstm.peepholes, lstm.cifg)
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    np.testing.assert_array_equal(back(x, lengths=lengths)[0], y)


# the options an evaluation graph holds (the training regularizers are not in it)
EVAL_OPTIONS = ("cifg", "peepholes", "cell_clip", "proj_clip", "zoneout", "layer_norm")


@pytest.mark.parametrize("options, L, bi, P, bias, lengths", cases())
def test_every_variant_exports_to_onnx_and_runs_as_in_evaluation(options, L, bi, P, bias, lengths):
    """What the LSTM operator lacks (projection, the clips, zoneout, layer norm) is a Scan of
    standard ops: ONNX Runtime runs the float32 graph, the reference evaluator the float64
    one, each as eigenlstm's evaluation forward (zoneout: its expectation); and the file
    loads back as the same LSTM."""
    lstm64, a = make(options, L, bi, P, bias)
    lengths = [T] * B if lengths is None else lengths
    feeds = {
        "input": a["x"],
        "h0": a["h0"],
        "c0": a["c0"],
        "lengths": np.array([max(n, 1) for n in lengths]),  # ORT's LSTM: lengths >= 1
    }
    for lstm, rtol in ((lstm64, 1e-9), (make(options, L, bi, P, bias, dtype=np.float32)[0], 1e-5)):
        lstm.load_state_dict(lstm64.state_dict())
        lstm.eval()
        dt = lstm.dtype
        buf = io.BytesIO()
        el.onnx.export(lstm, buf, initial_state=True, lengths=True)
        model = onnx.load_model_from_string(buf.getvalue())
        onnx.checker.check_model(model, full_check=True)
        f = {k: v.astype(dt) if k != "lengths" else v for k, v in feeds.items()}
        back = el.onnx.load(buf.getvalue())
        assert el.nn.lstm.variant_options(back) == {
            k: v for k, v in el.nn.lstm.variant_options(lstm).items() if k in EVAL_OPTIONS
        }
        sd, sd_back = lstm.state_dict(), back.state_dict()
        assert list(sd_back) == list(sd)
        for k in sd:  # a Scan graph adds the biases: bias_ih holds the sum, bias_hh zeros
            if k.startswith("bias_ih"):
                k_hh = "bias_hh" + k[len("bias_ih") :]
                np.testing.assert_array_equal(sd_back[k] + sd_back[k_hh], sd[k] + sd[k_hh], k)
            elif k.startswith("weight_peephole") and lstm.cifg:  # w_cf has no gate: not written
                np.testing.assert_array_equal(sd_back[k][[0, 2]], sd[k][[0, 2]], err_msg=k)
            elif not k.startswith("bias_hh"):
                np.testing.assert_array_equal(sd_back[k], sd[k], err_msg=k)
        np.testing.assert_allclose(
            back(f["input"], (f["h0"], f["c0"]), lengths=f["lengths"])[0],
            lstm(f["input"], (f["h0"], f["c0"]), lengths=f["lengths"])[0],
            rtol=rtol,
            atol=rtol,
        )
        if dt == np.float64 and any(n.op_type == "LSTM" for n in model.graph.node):
            # onnx.reference's LSTM ignores sequence_lens and input_forget: ONNX Runtime, in
            # float32, is the witness of the LSTM operator's graphs
            continue
        y, (h_n, c_n) = lstm(f["input"], (f["h0"], f["c0"]), lengths=f["lengths"])
        if dt == np.float32:
            got = ort_session(buf.getvalue()).run(["output", "h_n", "c_n"], f)
        else:
            got = ReferenceEvaluator(model).run(["output", "h_n", "c_n"], f)
        for name, g, w in zip(("output", "h_n", "c_n"), got, (y, h_n, c_n)):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol, err_msg=f"{dt.name} {name}")


def test_a_layer_norm_model_exports_to_onnx_for_serving():
    model = el.LSTMModel(I, H, 3, 2, layer_norm=True, zoneout=(0.15, 0.05), seed=0).eval()
    buf = io.BytesIO()
    el.onnx.export(model, buf, lengths=True)
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    lengths = np.array([6, 2, 3, 1])
    (out,) = ort_session(buf.getvalue()).run(["output"], {"input": x, "lengths": lengths})
    np.testing.assert_allclose(out, model.predict(x, lengths=lengths), rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="layer_norm=True needs opset >= 17.*opset=16"):
        el.onnx.export(model, io.BytesIO(), opset=16)


# ---- the module's contract -------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"peepholes": 1}, TypeError, "peepholes must be a bool, got int 1"),
        ({"peepholes": "yes"}, TypeError, "peepholes must be a bool"),
        ({"layer_norm": 1}, TypeError, "layer_norm must be a bool, got int 1"),
        ({"layer_norm": None}, TypeError, "layer_norm must be a bool, got NoneType"),
        ({"cell_clip": -1.0}, ValueError, r"cell_clip must be a finite float > 0.*got -1\.0"),
        ({"cell_clip": 0}, ValueError, "cell_clip must be a finite float > 0"),
        ({"cell_clip": float("nan")}, ValueError, "cell_clip must be a finite float > 0"),
        ({"cell_clip": float("inf")}, ValueError, "cell_clip must be a finite float > 0"),
        ({"cell_clip": "1"}, TypeError, "cell_clip must be a float or None, got str"),
        ({"cell_clip": True}, TypeError, "cell_clip must be a float or None, got bool"),
        ({"proj_clip": 1.0}, ValueError, "proj_clip .*needs proj_size > 0.*proj_size=0"),
        ({"proj_clip": -2.0, "proj_size": 2}, ValueError, "proj_clip must be a finite float > 0"),
    ],
)
def test_bad_options_are_refused_with_their_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        el.LSTM(3, 4, **kwargs)


def test_peephole_weights_are_parameters_with_torch_style_names():
    lstm = el.LSTM(3, 4, 2, bidirectional=True, peepholes=True, seed=0)
    keys = list(lstm.state_dict())
    assert keys[:5] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "bias_ih_l0",
        "bias_hh_l0",
        "weight_peephole_l0",
    ]
    assert "weight_peephole_l1_reverse" in keys
    assert lstm.weight_peephole_l0.shape == (3, 4)
    assert lstm.weight_peephole_l0.grad.shape == (3, 4)
    # the default init, as every other parameter: U(-1/sqrt(H), 1/sqrt(H)), not zero
    w = lstm.weight_peephole_l1_reverse
    assert np.abs(w).max() <= 0.5 and np.abs(w).max() > 0
    # names in named_parameters (what optimizers see)
    assert "weight_peephole_l1_reverse" in dict(lstm.named_parameters())
    assert (
        repr(lstm) == "LSTM(3, 4, num_layers=2, bidirectional=True, peepholes=True, dtype=float32)"
    )


def test_load_state_dict_checks_the_peephole_weights_and_changes_nothing_on_error():
    lstm = el.LSTM(3, 4, peepholes=True, seed=0)
    before = lstm.state_dict()
    bad = dict(before, weight_peephole_l0=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"weight_peephole_l0.*\(3, 4\).*\(4, 3\)"):
        lstm.load_state_dict(bad)
    missing = {k: v for k, v in before.items() if k != "weight_peephole_l0"}
    with pytest.raises(ValueError, match="weight_peephole_l0"):
        lstm.load_state_dict(missing)
    plain_keys = el.LSTM(3, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="weight_peephole_l0"):
        el.LSTM(3, 4, seed=0).load_state_dict(dict(plain_keys, weight_peephole_l0=np.zeros((3, 4))))
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_a_loaded_state_dict_reproduces_the_outputs():
    src, a = make({"peepholes": True, "cell_clip": 0.4}, 2, False, 0, True, dtype=np.float32)
    dst = el.LSTM(I, H, 2, peepholes=True, cell_clip=0.4, seed=5)
    dst.load_state_dict(src.state_dict())
    x = a["x"].astype(np.float32)
    np.testing.assert_array_equal(dst.eval()(x)[0], src.eval()(x)[0])


def test_a_model_with_variants_saves_and_loads(tmp_path):
    model = el.LSTMModel(3, 8, 2, peepholes=True, cell_clip=0.5, seed=0)
    assert model.config()["peepholes"] is True and model.config()["cell_clip"] == 0.5
    path = tmp_path / "m.npz"
    el.save(model, path)
    back = el.load(path)
    assert back.config() == model.config()
    assert back.lstm.peepholes and back.lstm.cell_clip == 0.5
    x = np.random.default_rng(0).standard_normal((4, 5, 3))
    np.testing.assert_array_equal(back.eval().predict(x), model.eval().predict(x))
    # a plain model's config is what releases before the variants wrote
    assert "peepholes" not in el.LSTMModel(3, 8, 2, seed=0).config()


def test_a_layer_norm_zoneout_model_trains_saves_and_loads(tmp_path):
    model = el.LSTMModel(3, 8, 1, 2, layer_norm=True, zoneout=(0.2, 0.1), cifg=True, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 5, 3)), rng.standard_normal((16, 1))
    el.Trainer(model).fit(x, y, epochs=2, batch_size=8, progress=False, seed=0)
    # training moved the layer norms' gains and shifts off their initial 1 and 0
    sd = model.state_dict()
    assert not np.all(sd["lstm.layer_norm_c_weight_l1"] == 1)
    assert not np.all(sd["lstm.layer_norm_hh_bias_l0"] == 0)
    el.save(model, tmp_path / "m.npz")
    back = el.load(tmp_path / "m.npz")
    assert back.config() == model.config()
    assert back.lstm.layer_norm and back.lstm.zoneout == (0.2, 0.1) and back.lstm.cifg
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    np.testing.assert_array_equal(back.eval().predict(x), model.eval().predict(x))


def test_a_checkpoint_with_variants_has_the_format_version_that_holds_them(tmp_path):
    import json

    for model, version in (
        (el.LSTMModel(3, 8, 1, peepholes=True, seed=0), 4),
        (el.LSTMModel(3, 8, 1, seed=0), 2),
    ):
        el.save(model, tmp_path / "m.npz")
        with np.load(tmp_path / "m.npz") as z:
            assert json.loads(str(z["meta"][()]))["format_version"] == version


def test_keras_save_refuses_a_variant(tmp_path):
    model = el.LSTMModel(3, 8, 2, peepholes=True, seed=0)
    with pytest.raises(ValueError, match="peepholes=True"):
        el.keras.save(model, tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_quantized_variants_follow_the_float_model(precision):
    lstm, a = make(
        {"peepholes": True, "cell_clip": 0.4, "proj_clip": 0.05}, 2, True, 3, True, dtype=np.float32
    )
    lstm.eval()
    q = el.quantize(lstm, precision)
    assert q.peepholes and q.cell_clip == 0.4 and q.proj_clip == 0.05
    # peephole weights stay float32
    assert q.state_dict()["weight_peephole_l0"].dtype == np.float32
    x = a["x"].astype(np.float32)
    y, (h_n, c_n) = lstm(x)
    yq, (hq, cq) = q(x)
    assert np.abs(cq).max() <= 0.4 and np.abs(yq).max() <= 0.05
    np.testing.assert_allclose(yq, y, atol=0.05 * 0.1)
    np.testing.assert_allclose(cq, c_n, atol=0.04)
    # and a quantized model with the peepholes zeroed differs: they are used
    sd = q.state_dict()
    sd = {k: (np.zeros_like(v) if "peephole" in k else v) for k, v in sd.items()}
    q.load_state_dict(sd)
    assert np.abs(q(x)[1][1] - cq).max() > 1e-2


def layer_args(a, sd):
    """x, h0, c0, weight_ih, weight_hh of layer 0 for el.functional.lstm_layer_forward."""
    return a["x"], a["h0"][0], a["c0"][0], sd["weight_ih_l0"], sd["weight_hh_l0"]


def functional_run(a, sd, lengths, **kwargs):
    """el.functional's single layer on the arrays ``a`` with the layer-0 weights of ``sd``
    (and its projection, if any) and ``kwargs``, forward and backward, keyed as ``run``'s."""
    y, (_, c_n), ctx = el.functional.lstm_layer_forward(
        *layer_args(a, sd),
        sd["bias_ih_l0"],
        sd["bias_hh_l0"],
        sd.get("weight_hr_l0"),
        lengths=lengths,
        **kwargs,
    )
    dx, (_, dc0), grads = el.functional.lstm_layer_backward(
        ctx, a["d_output"], (a["dh_n"][0], a["dc_n"][0])
    )
    return dict(
        output=y, c_n=c_n[None], dx=dx, dc0=dc0[None], **{k + "_l0": v for k, v in grads.items()}
    )


def assert_functional_matches(got, want):
    for k, v in got.items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)


def test_functional_layer_with_layer_norm_matches_the_module():
    lstm, a = make({"layer_norm": True, "zoneout": 0.2}, 1, False, 0, True)
    sd = lstm.state_dict()
    state = lstm.dropout_state
    want = run(lstm, a, [6, 2, 4, 0])
    norms = {k[: -len("_l0")]: v for k, v in sd.items() if k.startswith("layer_norm_")}
    got = functional_run(a, sd, [6, 2, 4, 0], layer_norm=norms, zoneout=0.2, dropout_state=state)
    assert_functional_matches(got, want)
    assert set(got) - {"output", "c_n", "dx", "dc0"} == set(sd)
    with pytest.raises(ValueError, match=r"missing keys \['layer_norm.layer_norm_c_bias'\]"):
        el.functional.lstm_layer_forward(
            *layer_args(a, sd),
            layer_norm={k: v for k, v in norms.items() if k != "layer_norm_c_bias"},
        )
    with pytest.raises(ValueError, match=r"layer_norm\['layer_norm_c_weight'\].*\(19,\)"):
        el.functional.lstm_layer_forward(
            *layer_args(a, sd),
            layer_norm=dict(norms, layer_norm_c_weight=np.ones(5)),
        )


def test_layer_norm_parameters_start_as_torch_layer_norms_and_have_torch_style_names():
    lstm = el.LSTM(3, 4, 2, bidirectional=True, layer_norm=True, seed=0)
    keys = list(lstm.state_dict())
    assert keys[4:10] == [
        "layer_norm_ih_weight_l0",
        "layer_norm_ih_bias_l0",
        "layer_norm_hh_weight_l0",
        "layer_norm_hh_bias_l0",
        "layer_norm_c_weight_l0",
        "layer_norm_c_bias_l0",
    ]
    assert lstm.layer_norm_hh_weight_l1_reverse.shape == (16,)
    assert lstm.layer_norm_c_bias_l1_reverse.shape == (4,)
    for k, v in lstm.state_dict().items():
        if k.startswith("layer_norm_"):
            np.testing.assert_array_equal(v, 1.0 if "_weight_" in k else 0.0, err_msg=k)
    assert "layer_norm=True" in repr(lstm)
    assert el.LSTMModel(3, 8, 1, layer_norm=True, seed=0).config()["layer_norm"] is True
    # the gains and shifts are checked on load like any parameter, and a failed load changes
    # nothing
    before = lstm.state_dict()
    with pytest.raises(ValueError, match=r"layer_norm_c_weight_l0.*\(4,\).*\(16,\)"):
        lstm.load_state_dict(dict(before, layer_norm_c_weight_l0=np.ones(16)))
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_a_layer_norm_lstm_is_not_quantized_or_written_to_keras(tmp_path):
    model = el.LSTMModel(3, 8, 1, layer_norm=True, seed=0)
    with pytest.raises(ValueError, match="layer_norm=True cannot be quantized"):
        el.quantize(model, "int8")
    with pytest.raises(ValueError, match="layer_norm=True"):
        el.keras.save(model, tmp_path / "m.keras")


def test_functional_layer_with_variants_matches_the_module():
    lstm, a = make({"peepholes": True, "cell_clip": 0.4, "proj_clip": 0.05}, 1, False, 3, True)
    sd = lstm.state_dict()
    want = run(lstm, a, [6, 2, 4, 0])
    got = functional_run(
        a,
        sd,
        [6, 2, 4, 0],
        weight_peephole=sd["weight_peephole_l0"],
        cell_clip=0.4,
        proj_clip=0.05,
    )
    assert_functional_matches(got, want)
    assert set(got) - {"output", "c_n", "dx", "dc0"} == set(sd)
    with pytest.raises(ValueError, match=r"weight_peephole.*\(3, 19\)"):
        el.functional.lstm_layer_forward(
            *layer_args(a, sd),
            weight_hr=sd["weight_hr_l0"],
            weight_peephole=np.zeros((3, 4)),
        )


def _exported(options, **kw):
    lstm = el.LSTM(I, H, proj_size=kw.pop("P", 0), seed=0, **options).eval()
    buf = io.BytesIO()
    el.onnx.export(lstm, buf, **kw)
    return onnx.load_model_from_string(buf.getvalue())


def _set_attr(node, name, value):
    for a in node.attribute:
        if a.name == name:
            a.CopyFrom(helper.make_attribute(name, value))
            return
    node.attribute.append(helper.make_attribute(name, value))


def test_onnx_load_refuses_a_variant_step_that_export_does_not_write():
    """The loader reads the variants' Scan steps by their exact pattern: a layer norm with
    another epsilon, or a clip that is not symmetric, is refused naming the node."""
    model = _exported({"layer_norm": True})
    (ln,) = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    _set_attr(ln, "epsilon", 1e-3)
    with pytest.raises(ValueError, match=r"\(LayerNormalization\): .*epsilon 1e-5.*0\.001"):
        el.onnx.load(model.SerializeToString())

    model = _exported({"cell_clip": 0.5})
    (scan,) = [n for n in model.graph.node if n.op_type == "Scan"]
    (clip,) = [n for n in scan.attribute[0].g.node if n.op_type == "Clip"]
    clip.input[1] = clip.input[2]  # Clip(c, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"\(Scan\): the Scan body's Clip is not part"):
        el.onnx.load(model.SerializeToString())

    model = _exported({"zoneout": 0.25})
    (scan,) = [n for n in model.graph.node if n.op_type == "Scan"]
    body = scan.attribute[0].g
    (keep,) = [n for n in body.node if n.op_type == "Mul" and n.input[0].startswith("keep_c")]
    (z,) = [n for n in body.node if n.op_type == "Mul" and n.input[0].startswith("zoneout_c")]
    keep.input[0] = z.input[0]  # z*prev + z*new: not zoneout's expectation
    with pytest.raises(ValueError, match=r"\(Scan\): the Scan body's .* not part of the LSTM"):
        el.onnx.load(model.SerializeToString())


def _scan_body_of(model):
    (scan,) = [n for n in model.graph.node if n.op_type == "Scan"]
    return scan.attribute[0].g


def _body_node(body, op_type, reads=None):
    (n,) = [n for n in body.node if n.op_type == op_type and (reads is None or reads in n.input)]
    return n


@pytest.mark.parametrize(
    "options, mutate, match",
    [
        # the gates' sum reads the raw recurrent product: the layer norm beside it is dead
        (
            {"layer_norm": True},
            lambda body: _body_node(body, "Add", "pre_t").input.__setitem__(
                1, _body_node(body, "MatMul", "h_prev").output[0]
            ),
            "the Scan body's cell is not the LSTM step",
        ),
        # the input gate reads the raw gate block: the peephole term beside it is dead
        (
            {"peepholes": True, "cell_clip": 0.5},  # (the clip makes the layer a Scan)
            lambda body: _body_node(
                body,
                "Sigmoid",
                _body_node(body, "Add", _body_node(body, "Split").output[0]).output[0],
            ).input.__setitem__(0, _body_node(body, "Split").output[0]),
            "the Scan body's cell is not the LSTM step",
        ),
        # a second clip of the same state, with other bounds
        (
            {"cell_clip": 0.5},
            lambda body: body.node.append(
                helper.make_node(
                    "Clip",
                    [_body_node(body, "Clip").input[0], *_body_node(body, "Clip").input[1:]],
                    ["clip_again"],
                )
            ),
            "computes a value of the step a second time",
        ),
    ],
    ids=["dead-layer-norm", "dead-peephole", "second-clip"],
)
def test_onnx_load_refuses_a_step_whose_variant_is_not_what_it_computes(options, mutate, match):
    model = _exported(options)
    mutate(_scan_body_of(model))
    with pytest.raises(ValueError, match=match):
        el.onnx.load(model.SerializeToString())


def test_onnx_load_refuses_a_vector_zoneout_with_a_value_error():
    model = _exported({"zoneout": 0.25})
    (z,) = [t for t in model.graph.initializer if t.name.startswith("zoneout_c")]
    z.CopyFrom(numpy_helper.from_array(np.full(H, 0.25, np.float32), z.name))
    with pytest.raises(ValueError, match=r"\(Scan\): the Scan body's Add of a scaled value"):
        el.onnx.load(model.SerializeToString())
