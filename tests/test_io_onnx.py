"""eigenlstm.io.onnx (el.onnx): exported graphs run in ONNX Runtime (float32) and onnx.reference
(float64) with eigenlstm's results; loading reads back our graphs, a hand-built LSTM node and
torch's export.

The witnesses are the real runtimes: ONNX Runtime's LSTM kernel, onnx's reference evaluator and
torch itself. Every configuration of the parity grid (layers, directions, batch_first,
proj_size, bias, lengths, initial state) is exported and run at two (batch, time) sizes.
"""
# Sizes: T time steps, N batch, I input size, H hidden size, P projection size, D directions,
# L layers.

import io
import itertools
import warnings

import numpy as np

# Hard imports: the runtimes are the witnesses and must never be silently skipped.
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import eigenlstm as el
from eigenlstm.io import onnx as elonnx
from seed_model import SeedLSTMModel

I, H, P_SIZE = 4, 6, 3
SIZES = ((1, 1), (3, 5))  # (N, T): a single step of a single sequence, and a small batch
# Float32: ORT and eigenlstm round differently (GEMM order, their own sigmoid/tanh); over <= 2
# layers and 5 steps the outputs (|h| <= 1) agree to a few 1e-7. 1e-5 is the issue's bound.
ATOL32 = 1e-5
# Float64: the reference evaluator is plain NumPy; differences are a few ulps (~1e-15).
ATOL64 = 1e-10

GRID = list(
    itertools.product(
        (1, 2),
        (False, True),
        (False, True),
        (0, P_SIZE),
        (True, False),
        (False, True),
        (False, True),
    )
)
GRID_IDS = [
    f"L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tf'}-P{p}-{'bias' if b else 'nobias'}"
    f"-{'len' if ln else 'full'}-{'state' if st else 'zero'}"
    for L, bi, bf, p, b, ln, st in GRID
]


def _export(module, **kw) -> bytes:
    buf = io.BytesIO()
    elonnx.export(module, buf, **kw)
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
    return data


def _session(data: bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _case(rng, lstm, N, T, lengths, state, dtype):
    """Random feeds for the graph and the matching keyword arguments of ``lstm.forward``."""
    D, L = lstm.num_directions, lstm.num_layers
    shape = (N, T, lstm.input_size) if lstm.batch_first else (T, N, lstm.input_size)
    x = rng.standard_normal(shape).astype(dtype)
    feeds, kw = {"input": x}, {}
    if state:
        h0 = rng.standard_normal((D * L, N, lstm.output_size)).astype(dtype)
        c0 = rng.standard_normal((D * L, N, lstm.hidden_size)).astype(dtype)
        feeds.update(h0=h0, c0=c0)
        kw["state"] = (h0, c0)
    if lengths:
        # Unsorted, with a full row and a length-1 row when N allows: every mask case.
        lens = np.array([T, 1, max(1, T - 2)][:N], dtype=np.int64)
        feeds["lengths"] = lens
        kw["lengths"] = lens
    return x, feeds, kw


def _max_err(got, want):
    return max(
        float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64))))
        for g, w in zip(got, want)
    )


@pytest.mark.parametrize("L, bi, bf, P, bias, lengths, state", GRID, ids=GRID_IDS)
def test_export_float32_matches_onnxruntime_and_loads_back(L, bi, bf, P, bias, lengths, state):
    lstm = el.LSTM(I, H, L, bias=bias, batch_first=bf, bidirectional=bi, proj_size=P, seed=7).eval()
    data = _export(lstm, initial_state=state, lengths=lengths)
    sess = _session(data)
    back = elonnx.load(data)
    assert type(back) is el.LSTM
    assert (back.num_layers, back.bidirectional, back.batch_first, back.proj_size) == (L, bi, bf, P)
    rng = np.random.default_rng(L * 100 + P)
    for N, T in SIZES:
        x, feeds, kw = _case(rng, lstm, N, T, lengths, state, np.float32)
        y, (h_n, c_n) = lstm(x, **kw)
        got = sess.run(["output", "h_n", "c_n"], feeds)
        err = _max_err(got, (y, h_n, c_n))
        assert err <= ATOL32, f"N={N} T={T}: ORT differs from eigenlstm by {err:.3g}"
        y2, (h2, c2) = back(x, **kw)
        assert _max_err((y2, h2, c2), (y, h_n, c_n)) <= ATOL32


@pytest.mark.parametrize("L, bi, bf, P, bias, lengths, state", GRID, ids=GRID_IDS)
def test_export_float64_matches_onnx_reference_evaluator(L, bi, bf, P, bias, lengths, state):
    lstm = el.LSTM(
        I, H, L, bias=bias, batch_first=bf, bidirectional=bi, proj_size=P, seed=7, dtype=np.float64
    ).eval()
    model = onnx.load_model_from_string(_export(lstm, initial_state=state, lengths=lengths))
    ref = ReferenceEvaluator(model)
    rng = np.random.default_rng(L * 100 + P + 1)
    for N, T in SIZES:
        x, feeds, kw = _case(rng, lstm, N, T, lengths, state, np.float64)
        if lengths and P == 0:
            # onnx.reference's LSTM ignores sequence_lens (its source says so), so only full
            # lengths can be checked there; ragged ones are checked in ORT in float32 above.
            # The Scan graphs of P > 0 mask in standard ops, which the reference runs.
            feeds["lengths"] = kw["lengths"] = np.full(N, T, dtype=np.int64)
        y, (h_n, c_n) = lstm(x, **kw)
        err = _max_err(ref.run(["output", "h_n", "c_n"], feeds), (y, h_n, c_n))
        assert err <= ATOL64, f"N={N} T={T}: the reference differs from eigenlstm by {err:.3g}"


@pytest.mark.parametrize(
    "num_layers, bidirectional, lengths",
    list(itertools.product((1, 2), (False, True), (False, True))),
)
def test_lstm_model_export_matches_onnxruntime_and_loads_back(num_layers, bidirectional, lengths):
    model = el.LSTMModel(I, H, 2, num_layers, bidirectional=bidirectional, seed=3).eval()
    data = _export(model, lengths=lengths)
    graph = onnx.load_model_from_string(data).graph
    assert [i.name for i in graph.input] == ["input"] + (["lengths"] if lengths else [])
    assert [o.name for o in graph.output] == ["output"]
    sess = _session(data)
    back = elonnx.load(data)
    assert type(back) is el.LSTMModel
    rng = np.random.default_rng(5)
    for N, T in SIZES:
        x = rng.standard_normal((N, T, I)).astype(np.float32)
        lens = np.array([T, 1, max(1, T - 2)][:N], dtype=np.int64) if lengths else None
        want = model.predict(x, lengths=lens)
        feeds = {"input": x} if lens is None else {"input": x, "lengths": lens}
        assert _max_err(sess.run(["output"], feeds), [want]) <= ATOL32
        assert _max_err([back.predict(x, lengths=lens)], [want]) <= ATOL32


def test_seed_model_float64_export_matches_onnx_reference_evaluator():
    model = el.LSTMModel(10, 20, 2, dtype=np.float64, seed=0)
    ref = ReferenceEvaluator(onnx.load_model_from_string(_export(model)))
    x = np.random.default_rng(0).standard_normal((5, 7, 10))
    assert _max_err(ref.run(["output"], {"input": x}), [model.predict(x)]) <= ATOL64


def test_export_writes_to_a_path_with_the_requested_opset(tmp_path):
    lstm = el.LSTM(I, H, seed=0).eval()
    path = tmp_path / "lstm.onnx"
    elonnx.export(lstm, path, opset=20)
    model = onnx.load_model(str(path))
    assert [o.version for o in model.opset_import if o.domain == ""] == [20]
    x = np.random.default_rng(1).standard_normal((3, 2, I)).astype(np.float32)
    assert (
        _max_err(_session(path.read_bytes()).run(["output"], {"input": x}), [lstm(x)[0]]) <= ATOL32
    )
    assert _max_err([elonnx.load(path)(x)[0]], [lstm(x)[0]]) <= ATOL32


def test_export_refuses_what_it_cannot_write():
    lstm = el.LSTM(I, H, seed=0)
    with pytest.raises(
        TypeError, match="module must be an eigenlstm LSTM or LSTMModel, got Linear"
    ):
        elonnx.export(el.Linear(3, 2), io.BytesIO())
    with pytest.raises(ValueError, match=r"opset must be in \[13, \d+\], got 12"):
        elonnx.export(lstm, io.BytesIO(), opset=12)
    with pytest.raises(TypeError, match="opset must be an int, got str"):
        elonnx.export(lstm, io.BytesIO(), opset="17")
    with pytest.raises(ValueError, match="initial_state must be False for an LSTMModel"):
        elonnx.export(el.LSTMModel(I, H, 1, seed=0), io.BytesIO(), initial_state=True)


# ---- import of a hand-built node -------------------------------------------------------------
def _hand_built(
    rng, *, D=2, layout=0, attrs=None, P=None, extra_node=None, dtype=np.float32, reverse=False
):
    """One ONNX LSTM node with every input (X, W, R, B, sequence_lens, initial_h, initial_c, P)
    as a graph, with the usual glue to (T, N, D*H) (layout 0) or (N, T, D*H) (layout 1)."""
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    W = rng.uniform(-0.5, 0.5, (D, 4 * H, I)).astype(dtype)
    R = rng.uniform(-0.5, 0.5, (D, 4 * H, H)).astype(dtype)
    B = rng.uniform(-0.5, 0.5, (D, 8 * H)).astype(dtype)
    Pw = np.zeros((D, 3 * H), dtype) if P is None else P.astype(dtype)
    inits = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"), (Pw, "P"))]
    x_dims = ["time", "batch", I] if layout == 0 else ["batch", "time", I]
    s_dims = [D, "batch", H] if layout == 0 else ["batch", D, H]
    inputs = [
        helper.make_tensor_value_info("input", elem, x_dims),
        helper.make_tensor_value_info("h0", elem, s_dims),
        helper.make_tensor_value_info("c0", elem, s_dims),
        helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"]),
    ]
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape"))
    direction = "bidirectional" if D == 2 else "reverse" if reverse else "forward"
    node_attrs = {
        "hidden_size": H,
        "direction": direction,
        **({"layout": 1} if layout else {}),
        **(attrs or {}),
    }
    # Y is (T, D, N, H) for layout 0 and (N, T, D, H) for layout 1: move D next to H and merge.
    perm = [0, 2, 1, 3] if layout == 0 else [0, 1, 2, 3]
    nodes = [
        helper.make_node(
            "LSTM",
            ["input", "W", "R", "B", "lengths", "h0", "c0", "P"],
            ["Y", "h_n", "c_n"],
            **node_attrs,
        ),
        helper.make_node("Transpose", ["Y"], ["Yt"], perm=perm),
        helper.make_node("Reshape", ["Yt", "shape"], ["output" if extra_node is None else "y0"]),
    ]
    if extra_node is not None:
        nodes.append(helper.make_node(extra_node, ["y0"], ["output"]))
    out_dims = ["time", "batch", D * H] if layout == 0 else ["batch", "time", D * H]
    outputs = [
        helper.make_tensor_value_info("output", elem, out_dims),
        helper.make_tensor_value_info("h_n", elem, s_dims),
        helper.make_tensor_value_info("c_n", elem, s_dims),
    ]
    graph = helper.make_graph(nodes, "hand_built", inputs, outputs, inits)
    # Opset 7, the oldest load reads (layout needs 14; 22 is the newest LSTM). IR version 4 is
    # the first that lets initializers stay out of the graph inputs.
    opset = 22 if layout else 7
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = max(4, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    return model.SerializeToString()


@pytest.mark.parametrize("D", (1, 2))
def test_load_of_a_hand_built_lstm_node_with_every_input_matches_onnxruntime(D):
    rng = np.random.default_rng(D)
    data = _hand_built(rng, D=D)
    onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
    lstm = elonnx.load(data)
    assert (type(lstm), lstm.bidirectional, lstm.batch_first) == (el.LSTM, D == 2, False)
    _assert_matches_onnxruntime(lstm, data, D, rng)


def test_load_of_a_hand_built_reverse_node_is_a_reverse_lstm_matching_onnxruntime():
    rng = np.random.default_rng(11)
    data = _hand_built(rng, D=1, reverse=True)
    lstm = elonnx.load(data)
    assert (lstm.reverse, lstm.bidirectional) == (True, False)
    _assert_matches_onnxruntime(lstm, data, 1, rng)


REVERSE = list(itertools.product((1, 2), (0, P_SIZE), (False, True)))


@pytest.mark.parametrize(
    "L, P, bf", REVERSE, ids=[f"L{L}-P{P}-{'bf' if bf else 'tf'}" for L, P, bf in REVERSE]
)
def test_export_of_a_reverse_lstm_matches_the_runtimes_and_loads_back(L, P, bf):
    # The LSTM operator with direction="reverse" (P = 0), or a Scan on reversed time (P > 0).
    lstm = el.LSTM(I, H, L, batch_first=bf, proj_size=P, reverse=True, seed=5).eval()
    data = _export(lstm, initial_state=True, lengths=True)
    ops = {n.op_type for n in onnx.load_model_from_string(data).graph.node}
    assert ("LSTM" in ops) == (P == 0)
    back = elonnx.load(data)
    assert (back.reverse, back.num_layers, back.proj_size, back.batch_first) == (True, L, P, bf)
    rng = np.random.default_rng(L + P)
    for N, T in SIZES:
        x, feeds, kw = _case(rng, lstm, N, T, True, True, np.float32)
        want = lstm(x, **kw)
        got = _session(data).run(["output", "h_n", "c_n"], feeds)
        assert _max_err(got, (want[0], *want[1])) <= ATOL32
        again = back(x, **kw)
        assert _max_err((again[0], *again[1]), (want[0], *want[1])) <= ATOL32
    if P:  # float64, in the reference evaluator (which runs Scan graphs with their masks)
        ref64 = el.LSTM(
            I, H, L, batch_first=bf, proj_size=P, reverse=True, seed=5, dtype=np.float64
        ).eval()
        model = onnx.load_model_from_string(_export(ref64, initial_state=True, lengths=True))
        x, feeds, kw = _case(rng, ref64, 3, 5, True, True, np.float64)
        want = ref64(x, **kw)
        got = ReferenceEvaluator(model).run(["output", "h_n", "c_n"], feeds)
        assert _max_err(got, (want[0], *want[1])) <= ATOL64


def test_load_refuses_layers_that_run_in_different_directions():
    data = _export(el.LSTM(I, H, 2, reverse=True, seed=1).eval())
    model = onnx.load_model_from_string(data)
    second = [n for n in model.graph.node if n.op_type == "LSTM"][1]
    for attr in second.attribute:
        if attr.name == "direction":
            attr.s = b"forward"
    with pytest.raises(ValueError, match="layer 1 .* runs forwards in time and layer 0 backwards"):
        elonnx.load(model.SerializeToString())


def _assert_matches_onnxruntime(lstm, data, D, rng):
    """``lstm``, loaded from the hand-built graph ``data``, gives ONNX Runtime's outputs and
    final states on a batch with lengths and initial states."""
    N, T = 3, 5
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    h0 = rng.standard_normal((D, N, H)).astype(np.float32)
    c0 = rng.standard_normal((D, N, H)).astype(np.float32)
    lens = np.array([5, 1, 3], np.int32)
    want = _session(data).run(
        ["output", "h_n", "c_n"], {"input": x, "h0": h0, "c0": c0, "lengths": lens}
    )
    y, (h_n, c_n) = lstm(x, (h0, c0), lengths=lens)
    assert _max_err((y, h_n, c_n), want) <= ATOL32


def test_load_of_a_layout_1_node_matches_onnx_reference_evaluator():
    # ORT refuses layout=1, so the float64 reference is the witness; full lengths because the
    # reference ignores sequence_lens.
    rng = np.random.default_rng(3)
    data = _hand_built(rng, layout=1, dtype=np.float64)
    lstm = elonnx.load(data)
    assert lstm.batch_first and lstm.dtype == np.float64
    N, T = 3, 5
    x = rng.standard_normal((N, T, I))
    s = rng.standard_normal((N, 2, H)), rng.standard_normal((N, 2, H))
    feeds = {"input": x, "h0": s[0], "c0": s[1], "lengths": np.full(N, T, np.int32)}
    want = ReferenceEvaluator(onnx.load_model_from_string(data)).run(
        ["output", "h_n", "c_n"], feeds
    )
    # The graph's states are (N, D, H) (layout 1); eigenlstm's are torch's (D, N, H).
    y, (h_n, c_n) = lstm(x, (s[0].transpose(1, 0, 2), s[1].transpose(1, 0, 2)))
    assert _max_err((y, h_n.transpose(1, 0, 2), c_n.transpose(1, 0, 2)), want) <= ATOL64


@pytest.mark.parametrize("D", (1, 2))
@pytest.mark.parametrize(
    "kw, variants",
    [
        ({"P": "random"}, {"peepholes": True, "cifg": False}),
        ({"attrs": {"input_forget": 1}}, {"peepholes": False, "cifg": True}),
        ({"attrs": {"input_forget": 1}, "P": "random"}, {"peepholes": True, "cifg": True}),
    ],
    ids=["peepholes", "input_forget", "both"],
)
def test_load_of_a_node_with_peepholes_or_coupled_gates_matches_onnxruntime(D, kw, variants):
    """P becomes LSTM(peepholes=True), input_forget=1 LSTM(cifg=True); ONNX Runtime computes
    the node as the operator defines it."""
    rng = np.random.default_rng(7)
    if kw.get("P") == "random":
        kw = dict(kw, P=rng.uniform(-0.5, 0.5, (D, 3 * H)))
    data = _hand_built(rng, D=D, **kw)
    lstm = elonnx.load(data)
    assert {k: getattr(lstm, k) for k in variants} == variants
    _assert_matches_onnxruntime(lstm, data, D, rng)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"attrs": {"clip": 3.0}}, "attribute clip is not supported"),
        ({"attrs": {"input_forget": 2}}, "attribute input_forget must be 0 or 1, got 2"),
        (
            {"attrs": {"activations": ["Sigmoid", "Tanh", "Relu"] * 2}},
            "attribute activations must be",
        ),
        (
            {"attrs": {"direction": "sideways"}, "D": 1},
            "attribute direction must be 'forward', 'reverse' or 'bidirectional', got 'sideways'",
        ),
        (
            {"P": np.full((2, 2 * H), 0.1)},
            f"P must have shape \\(2, {3 * H}\\), got \\(2, {2 * H}\\)",
        ),
        ({"extra_node": "Relu"}, "\\(Relu\\): this op is outside the pattern"),
    ],
)
def test_load_refuses_what_eigenlstm_cannot_express_naming_it(kw, match):
    data = _hand_built(np.random.default_rng(0), **kw)
    with pytest.raises(ValueError, match=match):
        elonnx.load(data)


@pytest.mark.parametrize(
    "node, index, match",
    [
        (0, 0, r"node 'Y' \(LSTM\): input 0 \(X\) is required, got none"),
        (0, 1, r"node 'Y' \(LSTM\): input 1 \(W\) is required, got none"),
        (0, 2, r"node 'Y' \(LSTM\): input 2 \(R\) is required, got none"),
        (1, 0, r"node 'Yt' \(Transpose\): input 0 \(data\) is required, got none"),
    ],
)
def test_load_refuses_a_node_whose_required_input_is_empty_naming_it(node, index, match):
    # An empty input name marks an omitted optional input; on a required one the graph is
    # malformed, and load says which input of which node (it failed with a KeyError or an
    # AttributeError from deep inside).
    model = onnx.load_model_from_string(_hand_built(np.random.default_rng(0)))
    model.graph.node[node].input[index] = ""
    with pytest.raises(ValueError, match=match):
        elonnx.load(model.SerializeToString())


def test_load_refuses_an_opset_outside_the_supported_range():
    model = onnx.load_model_from_string(_hand_built(np.random.default_rng(0)))
    model.opset_import[0].version = 6
    with pytest.raises(ValueError, match=r"opset must be in \[7, \d+\], got 6"):
        elonnx.load(model.SerializeToString())


# ---- import of torch's export ----------------------------------------------------------------
def _torch_seed_model(num_layers):
    return SeedLSTMModel(10, 20, 2, num_layers).eval()


@pytest.mark.usefixtures("torch_single_threaded")
@pytest.mark.parametrize("num_layers", (1, 2))
def test_load_of_torch_legacy_export_of_the_seed_model_matches_torch(num_layers):
    torch.manual_seed(num_layers)
    model = _torch_seed_model(num_layers)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notes about the legacy exporter
        torch.onnx.export(
            model,
            torch.randn(5, 7, 10),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch", 1: "time"}, "output": {0: "batch"}},
        )
    ours = elonnx.load(buf.getvalue())
    assert type(ours) is el.LSTMModel and ours.num_layers == num_layers
    x = np.random.default_rng(0).standard_normal((4, 9, 10)).astype(np.float32)  # other N, T
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert _max_err([ours.predict(x)], [want]) <= ATOL32


@pytest.mark.usefixtures("torch_single_threaded")
def test_load_of_torch_legacy_export_of_a_bidirectional_lstm_with_states_matches_torch():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, 2, bidirectional=True).eval()
    x, h0, c0 = torch.randn(5, 3, I), torch.randn(4, 3, H), torch.randn(4, 3, H)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            lstm,
            (x, (h0, c0)),
            buf,
            dynamo=False,
            input_names=["input", "h0", "c0"],
            output_names=["output", "h_n", "c_n"],
            dynamic_axes={"input": {0: "time", 1: "batch"}, "h0": {1: "batch"}, "c0": {1: "batch"}},
        )
    ours = elonnx.load(buf.getvalue())
    with torch.no_grad():
        y, (h_n, c_n) = lstm(x, (h0, c0))
    got_y, (got_h, got_c) = ours(x.numpy(), (h0.numpy(), c0.numpy()))
    assert _max_err((got_y, got_h, got_c), (y.numpy(), h_n.numpy(), c_n.numpy())) <= ATOL32
