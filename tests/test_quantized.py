"""Reduced-precision inference: ``el.quantize`` to int8 and bfloat16.

Witnesses: exact integer arithmetic for the int8 products (inputs chosen so that the
quantization is the identity, then every kernel must return the integer dot products
themselves), a float64 model of the bfloat16 products, the float32 model on the same weights
for accuracy, and the quantized model itself for streams, lengths and files (bitwise). The
kernels run at the level of this process; tests/test_isa_levels.py reruns this file at every
other level and feature cap the CPU has (generic, avx2, avx512 without VNNI and BF16, ...).
"""
# Sizes: T steps, B batch, I input size, H hidden size, P projection, O outputs.

import json

import numpy as np
import pytest

import eigenlstm as el
from eigenlstm import _core
from eigenlstm.nn.quantized import bfloat16_to_float32, quantize_weight

PRECISIONS = ("int8", "bfloat16")


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def float_lstm(I, H, *, seed=0, **kw):
    return el.LSTM(I, H, seed=seed, **kw).eval()


# ---- the products ------------------------------------------------------------------------------


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 7, 8, 9, 13, 17])
@pytest.mark.parametrize(("K", "N"), [(1, 1), (3, 5), (4, 33), (7, 16), (64, 70), (130, 40)])
def test_int8_products_are_the_exact_integer_dot_products(M, K, N):
    # Rows of integers 0..255 that reach both ends quantize to themselves (step 1, offset 0),
    # and weight rows of integers reaching +-127 have scale 1: y must be the exact integer
    # x q^T, whatever the kernel, the row block (M covers every leftover of every tile) and
    # the padding of K to quads and of N to panels.
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    x = rng.integers(0, 256, (M, K)).astype(np.float32)
    x[:, 0], x[:, -1] = 0, 255
    if K == 1:
        x[:, 0] = 0  # a one-value row has no range: lo = the value, step 0
    q = rng.integers(-127, 128, (N, K)).astype(np.int8)
    q[:, 0] = 127
    lin = el.nn.QuantizedLinear(K, N, bias=False, precision="int8")
    lin.load_state_dict({"weight": q, "weight_scale": np.ones(N, np.float32)})
    exact = x.astype(np.int64) @ q.T.astype(np.int64)
    assert np.array_equal(lin(x), exact.astype(np.float32))


def test_int8_products_dequantize_with_the_row_offset_and_the_column_scale():
    # Rows on arbitrary ranges: y = bias + scale * (step * (u q^T) + lo * sum_k q), with u
    # computed exactly as the engine does in float32; the integer part is exact, so the only
    # differences are float32 roundings of the dequantization.
    rng = np.random.default_rng(1)
    M, K, N = 6, 37, 50
    x = rng.standard_normal((M, K)).astype(np.float32) * 3 + 1
    fc = el.Linear(K, N, seed=0)
    lin = el.quantize(fc, "int8")
    state = lin.state_dict()
    q, scale, bias = (state[k].astype(np.float64) for k in ("weight", "weight_scale", "bias"))
    lo = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - lo
    inv = np.float32(255) / span
    u = np.minimum((x - lo) * inv + np.float32(0.5), np.float32(255)).astype(np.int64)
    step = (span / np.float32(255)).astype(np.float64)
    dot = (u @ q.T.astype(np.int64)).astype(np.float64)
    terms = np.abs(scale * step * dot) + np.abs(scale * lo * q.sum(axis=1)) + np.abs(bias)
    ref = bias + scale * (step * dot + lo.astype(np.float64) * q.sum(axis=1))
    assert np.all(np.abs(lin(x) - ref) <= 1e-6 * terms)


@pytest.mark.parametrize("M", [1, 3, 8, 11])
def test_bfloat16_products_are_float32_sums_of_rounded_operands(M):
    rng = np.random.default_rng(M)
    K, N = 45, 70
    x = rng.standard_normal((M, K)).astype(np.float32)
    fc = el.Linear(K, N, seed=1)
    lin = el.quantize(fc, "bfloat16")
    w = bfloat16_to_float32(lin.state_dict()["weight"]).astype(np.float64)
    xb = bfloat16_to_float32(quantize_weight("x", x, "bfloat16")["x"]).astype(np.float64)
    ref = xb @ w.T + np.asarray(fc.bias, np.float64)
    bound = 1e-6 * (np.abs(xb) @ np.abs(w).T + np.abs(np.asarray(fc.bias)))
    assert np.all(np.abs(lin(x) - ref) <= bound)


def test_bfloat16_rounding_is_to_nearest_even_and_keeps_nan_and_infinity():
    x = np.array(
        [1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5, np.inf, -np.inf, np.nan],
        np.float32,
    )
    bits = quantize_weight("w", x[None, :5], "bfloat16")["w"][0]
    # 1 + 2^-8 is a tie (rounds to the even 1.0); 1 + 3*2^-8 a tie to the even 1 + 2^-6
    assert bfloat16_to_float32(bits).tolist() == [1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -2.5]
    with pytest.raises(ValueError, match="w holds NaN or infinite values"):
        quantize_weight("w", x[None], "bfloat16")


def test_int8_weights_are_symmetric_per_row_and_round_half_to_even():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [127.0, 0.5, -1.5]])
    out = quantize_weight("w", w, "int8")
    q, s = out["w"], out["w_scale"]
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert s.tolist() == [np.float32(1 / 127), 1.0, 1.0]
    assert q.tolist() == [[64, -127, 32], [0, 0, 0], [127, 0, -2]]


# ---- the LSTM ----------------------------------------------------------------------------------


def one_step_reference(lstm, q, x, h0, c0):
    """A one-step LSTM whose products are quantized exactly as the engine quantizes them
    (x to 8 bits, h to 7), in float64 from the engine's own integer weights."""

    def product(a, name, levels):
        a = a.astype(np.float32)
        lo = a.min(axis=1, keepdims=True)
        span = a.max(axis=1, keepdims=True) - lo
        inv = np.divide(np.float32(levels), span, out=np.zeros_like(span), where=span > 0)
        u = np.minimum((a - lo) * inv + np.float32(0.5), np.float32(levels)).astype(np.int64)
        step = (span / np.float32(levels)).astype(np.float64)
        w = q[name].astype(np.int64)
        s = q[name + "_scale"].astype(np.float64)
        return s * (step * (u @ w.T) + lo.astype(np.float64) * w.sum(axis=1))

    H = lstm.hidden_size
    z = product(x, "weight_ih_l0", 255) + product(h0, "weight_hh_l0", 127)
    z = z + q["bias_ih_l0"] + q["bias_hh_l0"]
    sig = lambda v: 0.5 * (1 + np.tanh(0.5 * v))  # noqa: E731
    i, f, g, o = (
        sig(z[:, :H]),
        sig(z[:, H : 2 * H]),
        np.tanh(z[:, 2 * H : 3 * H]),
        sig(z[:, 3 * H :]),
    )
    c = f * c0 + i * g
    return o * np.tanh(c), c


def test_an_int8_step_is_the_quantized_arithmetic_of_its_float64_model():
    rng = np.random.default_rng(2)
    B, I, H = 5, 23, 40  # H not a multiple of a gate block: padded cell blocks too
    lstm = float_lstm(I, H)
    q = el.quantize(lstm, "int8")
    x = rng.standard_normal((1, B, I)).astype(np.float32)
    h0 = np.tanh(rng.standard_normal((1, B, H))).astype(np.float32)
    c0 = rng.standard_normal((1, B, H)).astype(np.float32)
    y, (h1, c1) = q(x, (h0, c0))
    h_ref, c_ref = one_step_reference(lstm, q.state_dict(), x[0], h0[0], c0[0])
    assert rel(h1[0], h_ref) < 1e-5 and rel(c1[0], c_ref) < 1e-5
    assert np.array_equal(y[0], h1[0])


@pytest.mark.parametrize(("precision", "bound"), [("int8", 1.5e-2), ("bfloat16", 1e-2)])
def test_accuracy_against_float32_on_the_acceptance_model(precision, bound):
    # I = H = 256, T = 100, B = 8, the float model's random weights, standard normal inputs.
    lstm = float_lstm(256, 256)
    x = np.random.default_rng(3).standard_normal((100, 8, 256)).astype(np.float32)
    y, (h, c) = lstm(x)
    yq, (hq, cq) = el.quantize(lstm, precision)(x)
    assert rel(yq, y) <= bound
    assert rel(hq, h) <= bound and rel(cq, c) <= 2 * bound  # c is unbounded: a looser norm


CONFIGS = {
    "stacked": dict(num_layers=2),
    "bidirectional": dict(bidirectional=True),
    "projection": dict(proj_size=12),
    "all": dict(num_layers=2, bidirectional=True, proj_size=12, bias=False),
    "batch_first": dict(batch_first=True),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", CONFIGS)
def test_every_configuration_runs_close_to_float32_with_lengths(precision, name):
    kw = CONFIGS[name]
    lstm = float_lstm(10, 24, **kw)
    rng = np.random.default_rng(4)
    shape = (6, 9, 10) if kw.get("batch_first") else (9, 6, 10)
    x = rng.standard_normal(shape).astype(np.float32)
    lengths = np.array([9, 1, 5, 0, 9, 3])
    y, (h, c) = lstm(x, lengths=lengths)
    q = el.quantize(lstm, precision)
    yq, (hq, cq) = q(x, lengths=lengths)
    assert yq.dtype == np.float32 and yq.shape == y.shape and hq.shape == h.shape
    bound = 2e-2 if precision == "int8" else 1e-2
    assert rel(yq, y) < bound and rel(hq, h) < bound and rel(cq, c) < bound
    # past its length a row outputs zeros, as the float model does
    time = np.arange(9)[None, :] if kw.get("batch_first") else np.arange(9)[:, None]
    pad = time >= (lengths[:, None] if kw.get("batch_first") else lengths[None, :])
    assert not yq[pad].any()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_row_is_computed_alone_bitwise_whatever_its_batch(precision):
    # Activations are quantized per row: a sequence's result does not depend on the others in
    # its batch, nor on the padding and lengths of the call.
    q = el.quantize(float_lstm(10, 24, num_layers=2), precision)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 5, 10)).astype(np.float32)
    lengths = np.array([7, 2, 5, 1, 6])
    y, (h, c) = q(x, lengths=lengths)
    for b, n in enumerate(lengths):
        yb, (hb, cb) = q(x[:n, b : b + 1])
        assert np.array_equal(y[:n, b], yb[:, 0])
        assert np.array_equal(h[:, b], hb[:, 0]) and np.array_equal(c[:, b], cb[:, 0])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    ("H", "proj_size", "bidirectional", "threads"),
    [(96, 0, False, 2), (96, 0, True, 4), (40, 6, False, 2)],
)
def test_threads_that_split_a_large_batch_by_rows_give_each_row_its_own_bits(
    precision, H, proj_size, bidirectional, threads
):
    # From 16 rows a thread (and at most 1 MiB of one direction's step weights), the threads
    # of a quantized forward each run a slice of the batch instead of a share of the hidden
    # units (engine/plan.hpp; H = 96 is past the float32 rule's small-W_hh bound, so only that
    # rule splits it). Every row must come out the same either way: on one thread, on two
    # per direction, and alone in its own batch.
    lstm = float_lstm(12, H, num_layers=2, proj_size=proj_size, bidirectional=bidirectional)
    q = el.quantize(lstm, precision)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((12, 40, 12)).astype(np.float32)
    lengths = rng.integers(1, 13, size=40)
    before = el.get_num_threads()
    try:
        el.set_num_threads(threads)
        y, (h, c) = q(x, lengths=lengths)
        el.set_num_threads(1)
        y1, (h1, c1) = q(x, lengths=lengths)
    finally:
        el.set_num_threads(before)
    assert np.array_equal(y, y1) and np.array_equal(h, h1) and np.array_equal(c, c1)
    for b in (0, 17, 39):
        n = lengths[b]
        yb, (hb, cb) = q(x[:n, b : b + 1])
        assert np.array_equal(y[:n, b], yb[:, 0])
        assert np.array_equal(h[:, b], hb[:, 0]) and np.array_equal(c[:, b], cb[:, 0])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_threads_with_their_own_copy_of_the_weights_follow_new_weights(precision):
    # A thread that runs a slice of the batch multiplies by its own copy of the packed weights,
    # made once and kept across calls (engine/plan.hpp, thread_copy). New weights loaded into
    # the module, or a new module where a freed one was, must give the new weights' results
    # on every row: a copy is kept for one packing of the weights (an id that no other packing
    # has had), never for an address.
    old, new = (float_lstm(12, 96, num_layers=2, seed=s) for s in (1, 2))
    x = np.random.default_rng(12).standard_normal((6, 40, 12)).astype(np.float32)
    before = el.get_num_threads()
    try:
        el.set_num_threads(1)
        want, _ = el.quantize(new, precision)(x)
        el.set_num_threads(2)
        q = el.quantize(old, precision)
        q(x)  # the second thread copies the old weights
        q.load_state_dict(el.quantize(new, precision).state_dict())
        loaded, _ = q(x)
        replaced = []
        for _ in range(3):  # a module made after one is freed may take its addresses
            q = el.quantize(old, precision)
            q(x)
            del q
            replaced.append(el.quantize(new, precision)(x)[0])
    finally:
        el.set_num_threads(before)
    assert np.array_equal(loaded, want)
    for y in replaced:
        assert np.array_equal(y, want)


def test_a_non_finite_input_row_gives_nan_outputs_and_leaves_the_others_alone():
    q = el.quantize(float_lstm(6, 16), "int8")
    x = np.random.default_rng(6).standard_normal((4, 3, 6)).astype(np.float32)
    clean, _ = q(x)
    x[1, 1, 2] = np.inf
    y, _ = q(x)
    assert np.isnan(y[1:, 1]).all() and np.isfinite(y[:1, 1]).all()
    assert np.array_equal(y[:, [0, 2]], clean[:, [0, 2]])


# ---- streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_stream_step_by_step_and_by_chunks_equals_one_call_bitwise(precision):
    q = el.quantize(float_lstm(8, 20, num_layers=2, proj_size=6), precision)
    x = np.random.default_rng(7).standard_normal((12, 4, 8)).astype(np.float32)
    y, (h, c) = q(x)
    stream = q.stream(4)
    steps = np.stack([stream(x[t]) for t in range(5)])
    rest = stream(x[5:])
    assert np.array_equal(np.concatenate([steps, rest]), y)
    assert np.array_equal(stream.state[0], h) and np.array_equal(stream.state[1], c)
    stream.reset(rows=[2])
    again = stream(x[0])
    assert np.array_equal(again[2], y[0, 2])  # row 2 restarted, the others went on
    assert not np.array_equal(again[0], y[0, 0])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_model_stream_applies_the_quantized_head_at_every_step(precision):
    model = el.LSTMModel(5, 16, 3, num_layers=2, seed=0)
    q = el.quantize(model, precision)
    x = np.random.default_rng(8).standard_normal((4, 7, 5)).astype(np.float32)
    stream = q.stream(4)
    out = np.empty((4, 3), np.float32)
    ys = []
    for t in range(7):
        assert stream(x[:, t], out=out) is out
        ys.append(out.copy())
    assert np.array_equal(ys[-1], q(x))
    chunk = q.stream(4)(x)
    assert chunk.shape == (4, 7, 3) and np.array_equal(chunk[:, -1], q(x))
    y, (h, c) = q.predict(x, return_state=True)
    assert np.array_equal(y, q(x)) and h.shape == (2, 4, 16)


# ---- the modules -------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_quantized_model_predicts_like_the_float_model(precision):
    model = el.LSTMModel(8, 32, 2, num_layers=2, bidirectional=True, seed=0).eval()
    q = el.quantize(model, precision)
    x = np.random.default_rng(9).standard_normal((40, 10, 8))
    lengths = np.random.default_rng(9).integers(1, 11, 40)
    y = model.predict(x, lengths=lengths)
    yq = q.predict(x, batch_size=16, lengths=lengths)
    assert yq.dtype == np.float32 and rel(yq, y) < 2e-2
    assert np.array_equal(yq, q(x, lengths=lengths))
    assert isinstance(q, el.nn.QuantizedLSTMModel) and isinstance(q.lstm, el.nn.QuantizedLSTM)
    assert f"precision='{precision}'" in repr(q)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantized_modules_refuse_to_train_naming_the_precision(precision):
    model = el.LSTMModel(3, 8, 1, seed=0)
    q = el.quantize(model, precision)
    for module in (q, q.lstm, q.fc, el.quantize(model.lstm, precision)):
        with pytest.raises(RuntimeError, match=f"{precision} modules are inference-only"):
            module.train()
        with pytest.raises(RuntimeError, match=f"a {precision} (module|model) is inference-only"):
            module.backward(np.zeros((1, 1)))
        assert module.training is False and list(module.parameters()) == []
    assert q.eval() is q
    with pytest.raises(RuntimeError, match=f"{precision} modules are inference-only"):
        el.Trainer(q).fit(np.zeros((4, 2, 3)), np.zeros((4, 1)), epochs=1, progress=False)


def test_quantize_refuses_what_it_cannot_quantize():
    lstm = el.LSTM(3, 8, seed=0)
    with pytest.raises(ValueError, match=r"dtype must be one of \('int8', 'bfloat16'\), got 'fp8'"):
        el.quantize(lstm, "fp8")
    with pytest.raises(TypeError, match="dtype must be one of .*, got type"):
        el.quantize(lstm, np.int8)
    with pytest.raises(TypeError, match="module must be an LSTM, Linear or LSTMModel, got dict"):
        el.quantize({}, "int8")
    with pytest.raises(TypeError, match=r"module is already quantized \(int8\)"):
        el.quantize(el.quantize(lstm, "int8"), "bfloat16")
    lstm.weight_hh_l0[0, 0] = np.nan
    with pytest.raises(ValueError, match="weight_hh_l0 holds NaN or infinite values"):
        el.quantize(lstm, "int8")


def test_loading_bad_tensors_is_refused_by_name_and_changes_nothing():
    q = el.quantize(el.LSTM(3, 8, seed=0), "int8")
    x = np.ones((2, 1, 3), np.float32)
    before, good = q(x)[0], q.state_dict()
    cases = [
        (
            dict(good, weight_ih_l0=good["weight_ih_l0"].astype(np.float32)),
            TypeError,
            r"weight_ih_l0 must be an integer array \(int8\), got dtype float32",
        ),
        (
            dict(good, weight_hh_l0=np.full((32, 8), -128)),
            ValueError,
            r"weight_hh_l0 must hold values in \[-127, 127\], got -128",
        ),
        (
            dict(good, weight_ih_l0_scale=np.ones(31)),
            ValueError,
            "weight_ih_l0_scale must have shape",
        ),
        ({k: v for k, v in good.items() if k != "bias_hh_l0"}, ValueError, "bias_hh_l0"),
        (dict(good, extra=np.ones(1)), ValueError, "extra"),
    ]
    for state, error, message in cases:
        with pytest.raises(error, match=message):
            q.load_state_dict(state)
        assert np.array_equal(q(x)[0], before)
    b = el.quantize(el.LSTM(3, 8, seed=0), "bfloat16")
    with pytest.raises(ValueError, match=r"weight_ih_l0 must hold values in \[0, 65535\], got -1"):
        b.load_state_dict(dict(b.state_dict(), weight_ih_l0=np.full((32, 3), -1)))


def test_a_state_dict_round_trip_gives_the_same_module():
    q = el.quantize(el.LSTM(4, 8, num_layers=2, proj_size=3, seed=0), "int8")
    twin = el.nn.QuantizedLSTM(4, 8, 2, proj_size=3, precision="int8")
    x = np.random.default_rng(10).standard_normal((5, 2, 4))
    assert not np.array_equal(twin(x)[0], q(x)[0])  # constructed with zero weights
    twin.load_state_dict(q.state_dict())
    assert np.array_equal(twin(x)[0], q(x)[0])
    keys = list(q.state_dict())
    assert keys[:4] == ["weight_ih_l0", "weight_ih_l0_scale", "weight_hh_l0", "weight_hh_l0_scale"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_save_and_load_keep_a_quantized_model_exactly(tmp_path, precision):
    model = el.LSTMModel(6, 16, 2, seed=0)
    model.metadata = {"note": "kept"}
    q = el.quantize(model, precision)
    el.save(q, tmp_path / "q.npz")
    back = el.load(tmp_path / "q.npz")
    x = np.random.default_rng(11).standard_normal((3, 5, 6))
    assert type(back) is el.nn.QuantizedLSTMModel and back.precision == precision
    assert np.array_equal(back.predict(x), q.predict(x))
    assert back.metadata == {"note": "kept"} and back.config() == q.config()
    with np.load(tmp_path / "q.npz") as z:
        meta = json.loads(str(z["meta"][()]))
        assert meta["format_version"] == 3 and meta["model"] == "QuantizedLSTMModel"
        assert z["weights/lstm.weight_ih_l0"].dtype == (
            np.int8 if precision == "int8" else np.uint16
        )


def test_an_int8_model_file_is_under_30_percent_of_float32(tmp_path):
    model = el.LSTMModel(256, 256, 1, seed=0)
    el.save(model, tmp_path / "f32.npz")
    el.save(el.quantize(model, "int8"), tmp_path / "i8.npz")
    el.save(el.quantize(model, "bfloat16"), tmp_path / "bf16.npz")
    f32 = (tmp_path / "f32.npz").stat().st_size
    assert (tmp_path / "i8.npz").stat().st_size <= 0.30 * f32
    assert (tmp_path / "bf16.npz").stat().st_size <= 0.55 * f32


def test_config_names_the_kernels_each_precision_runs():
    cfg = el.config()
    kernels = cfg["quantized_kernels"]
    assert set(kernels) == set(PRECISIONS)
    features = set(cfg["isa_features"])
    vnni, bf16, amx = (
        "avx512_vnni" in features,
        "avx512_bf16" in features,
        "avx512_amx" in features,
    )
    assert kernels["int8"].startswith(
        "avx512_amx"
        if amx
        else "avx512_vnni"
        if vnni
        else {"generic": "generic"}.get(cfg["isa"], "avx2")
    )
    assert kernels["bfloat16"].startswith(
        "avx512_amx" if amx else "avx512_bf16" if bf16 else "emulated"
    )
    assert features <= {"avx512_vnni", "avx512_bf16", "avx512_amx"}
    assert not amx or (vnni and bf16)  # the tiles come with both features
    assert _core.quantized_kernel("int8") == kernels["int8"]


# ---- edges -------------------------------------------------------------------------------------


def test_a_stream_follows_the_weights_a_load_brings():
    model = el.LSTMModel(4, 12, 2, seed=0)
    q = el.quantize(model, "int8")
    stream = q.stream(2)
    x = np.random.default_rng(12).standard_normal((2, 5, 4)).astype(np.float32)
    q.load_state_dict(el.quantize(el.LSTMModel(4, 12, 2, seed=1), "int8").state_dict())
    assert np.array_equal(stream(x), q.stream(2)(x))  # the new LSTM and the new head


def test_products_deeper_than_int32_sums_allow_are_refused_not_wrapped():
    limit = 65536
    with pytest.raises(ValueError, match=f"in_features must be <= {limit} for int8"):
        el.nn.QuantizedLinear(limit + 1, 1, precision="int8")
    with pytest.raises(ValueError, match=f"input_size must be <= {limit} for int8"):
        el.nn.QuantizedLSTM(limit + 1, 4, precision="int8")
    el.nn.QuantizedLinear(limit + 1, 1, precision="bfloat16")  # float32 sums: no bound


def test_the_engine_refuses_int8_weights_of_minus_128_by_name():
    tensors = {"weight": np.full((2, 3), -128, np.int8), "weight_scale": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match=r"weight must hold values in \[-127, 127\], got -128"):
        _core.QuantizedLinear(3, 2, "int8", tensors)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rows_on_extreme_ranges_stay_finite(precision):
    # A wide range, one of subnormals (its inverse step is clamped to a float) and a constant
    # row (no range at all). (Near float32's limit, |x| ~ 1e38, the dequantization's products
    # overflow as float32's own arithmetic does.)
    lin = el.quantize(el.Linear(4, 3, seed=0), precision)
    x = np.array([[1e30, -1e30, 1.0, 0.0], [1e-39, 0.0, 0.0, 1e-39], [5.0, 5.0, 5.0, 5.0]])
    y = lin(x.astype(np.float32))
    assert np.isfinite(y).all()
    ref = el.Linear(4, 3, seed=0)(x.astype(np.float32))
    for row, want in zip(y, ref):  # the error is relative to the row's scale
        assert rel(row, want) < 2e-2


def test_formats_that_store_float_weights_refuse_a_quantized_model(tmp_path):
    q = el.quantize(el.LSTMModel(3, 8, 1, seed=0), "int8")
    with pytest.raises(TypeError, match="module must hold float weights, got a int8"):
        el.onnx.export(q, tmp_path / "q.onnx")
    with pytest.raises(TypeError, match="module must hold float weights, got a int8"):
        el.keras.save(q, tmp_path / "q.keras")
    assert not list(tmp_path.iterdir())


def test_a_quantized_module_names_its_precision_argument_and_has_no_gradients():
    with pytest.raises(ValueError, match=r"QuantizedLSTM: precision must be one of"):
        el.nn.QuantizedLSTM(3, 4, precision="fp16")
    q = el.quantize(el.LSTMModel(3, 8, 1, seed=0), "bfloat16")
    assert q.grads == {} and q.lstm.grads == {}
