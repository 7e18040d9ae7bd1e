"""Every argument check of eigenlstm.LSTM: constructor, forward, backward, load_state_dict.

Each rejected call must raise ValueError or TypeError with a message naming the function, the
argument, and the expected and given values; and it must change nothing (weights, gradients,
the training cache).
"""
# Sizes: T time steps, B batch, I input size, H hidden size, P projection size,
# Hout = P if P > 0 else H, D directions, L layers.

import re

import numpy as np
import pytest

import eigenlstm as el

T, B, I, H, P, L = 4, 2, 3, 5, 2, 2
D = 2
DL = D * L


def make(**kw):
    args = dict(num_layers=L, bidirectional=True, proj_size=P, seed=0)
    args.update(kw)
    return el.LSTM(I, H, **args)


def good(batch_first=False, dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((DL, B, P)).astype(dtype)
    c0 = rng.standard_normal((DL, B, H)).astype(dtype)
    return x, h0, c0


def assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


# ---- constructor -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, -1, -10])
def test_constructor_refuses_sizes_below_one(name, value):
    args = dict(input_size=I, hidden_size=H, num_layers=1)
    args[name] = value
    with pytest.raises(ValueError, match=rf"^LSTM: {name} must be >= 1, got {value}$"):
        el.LSTM(**args)


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "num_layers", "proj_size"])
@pytest.mark.parametrize(
    "value, shown",
    [
        (3.0, "float 3.0"),
        ("3", "str '3'"),
        (True, "bool True"),
        (None, "NoneType None"),
        (np.float64(2.0), r"float64 (np\.float64\()?2\.0\)?"),
    ],
)
def test_constructor_refuses_sizes_that_are_not_ints(name, value, shown):
    args = dict(input_size=I, hidden_size=H, num_layers=1, proj_size=0)
    args[name] = value
    with pytest.raises(TypeError, match=rf"^LSTM: {name} must be an int, got {shown}$"):
        el.LSTM(**args)


def test_constructor_accepts_numpy_integer_sizes():
    lstm = el.LSTM(np.int64(I), np.int32(H), np.int16(2), proj_size=np.uint8(P), seed=0)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.proj_size) == (I, H, 2, P)
    assert all(
        type(v) is int for v in (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.proj_size)
    )


@pytest.mark.parametrize("value", [-1, -5])
def test_constructor_refuses_a_negative_proj_size(value):
    with pytest.raises(ValueError, match=rf"^LSTM: proj_size must be >= 0, got {value}$"):
        el.LSTM(I, H, proj_size=value)


@pytest.mark.parametrize("value", [H, H + 1, 100])
def test_constructor_refuses_proj_size_not_below_hidden_size(value):
    with pytest.raises(
        ValueError, match=rf"^LSTM: proj_size must be < hidden_size={H}, got {value}$"
    ):
        el.LSTM(I, H, proj_size=value)


@pytest.mark.parametrize("value", [-0.1, 1.5, 2, float("nan"), float("inf"), -np.inf])
def test_constructor_refuses_dropout_outside_zero_one(value):
    with pytest.raises(
        ValueError, match=rf"^LSTM: dropout must be in \[0, 1\], got {re.escape(str(value))}$"
    ):
        el.LSTM(I, H, 2, dropout=value)


@pytest.mark.parametrize(
    "value, shown",
    [("0.5", "str '0.5'"), (True, "bool True"), (None, "NoneType None"), ([0.5], r"list \[0\.5\]")],
)
def test_constructor_refuses_dropout_that_is_not_a_number(value, shown):
    with pytest.raises(TypeError, match=rf"^LSTM: dropout must be a float, got {shown}$"):
        el.LSTM(I, H, 2, dropout=value)


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, np.float32(0.25)])
def test_constructor_accepts_dropout_at_and_between_the_bounds(value):
    assert el.LSTM(I, H, 2, dropout=value).dropout == float(value)


@pytest.mark.parametrize(
    "dtype, shown",
    [
        (np.int32, "int32"),
        (np.float16, "float16"),
        ("complex64", "complex64"),
        (np.complex128, "complex128"),
        (np.int64, "int64"),
        (object, "object"),
        (np.bool_, "bool"),
        ("notadtype", "'notadtype'"),
    ],
)
def test_constructor_refuses_dtypes_other_than_float32_and_float64(dtype, shown):
    with pytest.raises(TypeError, match=rf"^LSTM: dtype must be float32 or float64, got {shown}$"):
        el.LSTM(I, H, dtype=dtype)


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, "float32", "float64", np.dtype("f4"), "d"]
)
def test_constructor_accepts_float32_and_float64_in_any_spelling(dtype):
    assert el.LSTM(I, H, dtype=dtype, seed=0).dtype == np.dtype(dtype)


@pytest.mark.parametrize("seed, shown", [(1.5, "1.5"), ("1", "'1'"), (True, "True")])
def test_constructor_refuses_a_seed_that_is_not_an_int(seed, shown):
    with pytest.raises(
        TypeError, match=rf"^LSTM: seed must be a non-negative int or None, got {shown}$"
    ):
        el.LSTM(I, H, seed=seed)


def test_constructor_refuses_a_negative_seed_with_value_error():
    # A negative int has the right type and a wrong value: ValueError, as for the sizes.
    with pytest.raises(
        ValueError, match=r"^LSTM: seed must be a non-negative int or None, got -1$"
    ):
        el.LSTM(I, H, seed=-1)


@pytest.mark.parametrize("n", [0, -1])
def test_set_num_threads_refuses_fewer_than_one(n):
    before = el.get_num_threads()
    with pytest.raises(ValueError, match=rf"^num_threads must be >= 1, got {n}$"):
        el.set_num_threads(n)
    assert el.get_num_threads() == before


# ---- forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(I,), (2, T, B, I), (), (1, 1, 1, 1, I)])
def test_forward_refuses_x_that_is_not_2_or_3_d(shape):
    lstm = make()
    got = rf"{len(shape)}-D with shape {re.escape(str(shape))}"
    with pytest.raises(
        ValueError,
        match=rf"^LSTM.forward: x must be 3-D \(batched\) or 2-D \(unbatched\), got {got}$",
    ):
        lstm(np.zeros(shape, np.float32))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", [(T, B, I + 1), (T, I - 1), (T, B, 0)])
def test_forward_refuses_x_with_the_wrong_number_of_features(shape, batch_first):
    lstm = make(batch_first=batch_first)
    with pytest.raises(
        ValueError,
        match=rf"^LSTM.forward: x must have {I} features \(input_size\), got {shape[-1]}$",
    ):
        lstm(np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", ["h0", "c0"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("change", ["layers", "batch", "features", "ndim"])
def test_forward_refuses_states_of_the_wrong_shape(name, batch_first, change):
    lstm = make(batch_first=batch_first)
    x, h0, c0 = good(batch_first)
    state = {"h0": h0, "c0": c0}
    expected = state[name].shape
    bad = {
        "layers": (DL - 1,) + expected[1:],
        "batch": (DL, B + 1, expected[2]),
        "features": (DL, B, expected[2] + 1),
        "ndim": (DL, expected[2]),
    }[change]
    state[name] = np.zeros(bad, np.float32)
    with pytest.raises(
        ValueError,
        match=rf"^LSTM.forward: {name} must have shape "
        rf"{re.escape(str(expected))}, got {re.escape(str(bad))}$",
    ):
        lstm(x, (state["h0"], state["c0"]))


@pytest.mark.parametrize("name", ["h0", "c0"])
def test_forward_refuses_batched_states_for_unbatched_x(name):
    lstm = make()
    x, h0, c0 = good()
    state = {"h0": h0[:, 0], "c0": c0[:, 0]}
    expected = state[name].shape
    state[name] = state[name][:, None]
    with pytest.raises(
        ValueError,
        match=rf"^LSTM.forward: {name} must have shape {re.escape(str(expected))}, "
        rf"got {re.escape(str(state[name].shape))}$",
    ):
        lstm(x[:, 0], (state["h0"], state["c0"]))


@pytest.mark.parametrize(
    "state, shown",
    [
        (np.zeros((DL, B, P)), "ndarray"),
        ("h0", "str"),
        (5, "int"),
    ],
)
def test_forward_refuses_a_state_that_is_not_a_pair(state, shown):
    lstm = make()
    x, _, _ = good()
    with pytest.raises(
        TypeError, match=rf"^LSTM.forward: state must be a tuple \(h0, c0\), got {shown}$"
    ):
        lstm(x, state)


@pytest.mark.parametrize("n", [1, 3])
def test_forward_refuses_a_state_tuple_of_the_wrong_length_and_says_its_length(n):
    lstm = make()
    x, h0, c0 = good()
    with pytest.raises(
        TypeError, match=rf"^LSTM.forward: state must be a tuple \(h0, c0\), got .*length {n}"
    ):
        lstm(x, (h0, c0, c0)[:n])


@pytest.mark.parametrize(
    "lengths, shown",
    [
        ([2, 3, 1], r"\(3,\)"),
        ([2], r"\(1,\)"),
        ([[2, 3]], r"\(1, 2\)"),
        (3, r"\(\)"),
        (np.zeros((2, 1), int), r"\(2, 1\)"),
    ],
)
def test_forward_refuses_lengths_of_the_wrong_shape(lengths, shown):
    lstm = make()
    x, _, _ = good()
    with pytest.raises(
        ValueError, match=rf"^LSTM.forward: lengths must have shape \({B},\), got {shown}$"
    ):
        lstm(x, lengths=lengths)


@pytest.mark.parametrize(
    "lengths, bad", [([-1, 2], -1), ([T + 1, 2], T + 1), ([2, 100], 100), ([-3, T + 2], -3)]
)
def test_forward_refuses_lengths_outside_zero_to_T(lengths, bad):
    lstm = make()
    x, _, _ = good()
    with pytest.raises(
        ValueError, match=rf"^LSTM.forward: lengths must be in \[0, {T}\] \(T\), got {bad}$"
    ):
        lstm(x, lengths=lengths)


@pytest.mark.parametrize(
    "lengths, dtype",
    [
        ([2.0, 3.0], "float64"),
        (np.array([2, 3], np.float32), "float32"),
        ([True, False], "bool"),
        (["2", "3"], "<U1"),
        ([2 + 0j, 3], "complex128"),
    ],
)
def test_forward_refuses_lengths_that_are_not_integers(lengths, dtype):
    lstm = make()
    x, _, _ = good()
    with pytest.raises(
        TypeError, match=rf"^LSTM.forward: lengths must be integers, got dtype {dtype}$"
    ):
        lstm(x, lengths=lengths)


def test_forward_refuses_lengths_with_unbatched_x():
    lstm = make()
    x, _, _ = good()
    with pytest.raises(
        ValueError,
        match=r"^LSTM.forward: x must be 3-D \(batched\) when lengths are given, got 2-D$",
    ):
        lstm(x[:, 0], lengths=[T])


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object, "U3", "S3", "M8[s]"])
@pytest.mark.parametrize("name", ["x", "h0", "c0"])
def test_forward_refuses_non_real_dtypes(name, dtype):
    lstm = make()
    x, h0, c0 = good()
    arrays = {"x": x, "h0": h0, "c0": c0}
    arrays[name] = np.zeros(arrays[name].shape, dtype)
    shown = re.escape(str(arrays[name].dtype))
    with pytest.raises(
        TypeError,
        match=rf"^LSTM.forward: {name} must hold real numbers \(float or int\), got dtype {shown}$",
    ):
        lstm(arrays["x"], (arrays["h0"], arrays["c0"]))


def test_forward_refuses_none_inside_the_state_pair():
    lstm = make()
    x, h0, c0 = good()
    with pytest.raises(
        TypeError,
        match=r"^LSTM.forward: h0 must hold real numbers \(float or int\), got dtype object$",
    ):
        lstm(x, (None, c0))
    with pytest.raises(
        TypeError,
        match=r"^LSTM.forward: c0 must hold real numbers \(float or int\), got dtype object$",
    ):
        lstm(x, (h0, None))


def test_a_rejected_training_forward_keeps_the_previous_cache():
    lstm = make(dtype=np.float64)
    x, h0, c0 = good(dtype=np.float64)
    out, _ = lstm(x, (h0, c0))
    with pytest.raises(ValueError, match="lengths must be in"):
        lstm(x, lengths=[T + 1, 0])
    dx, _ = lstm.backward(np.ones_like(out))
    fresh = make(dtype=np.float64)
    fresh(x, (h0, c0))
    assert np.array_equal(dx, fresh.backward(np.ones_like(out))[0])


# ---- backward ----------------------------------------------------------------------------------


def trained_module(layout):
    """A module after a training-mode forward, with good gradients for its backward."""
    lstm = make(batch_first=layout == "batch_first", dtype=np.float64)
    x, h0, c0 = good(layout == "batch_first", np.float64)
    if layout == "unbatched":
        x, h0, c0 = x[:, 0], h0[:, 0], c0[:, 0]
    out, (h_n, c_n) = lstm(x, (h0, c0))
    return lstm, np.ones_like(out), np.ones_like(h_n), np.ones_like(c_n)


@pytest.fixture(params=["time_major", "batch_first", "unbatched"])
def trained(request):
    return trained_module(request.param)


def assert_rejected_backward_changes_nothing(lstm, dy, dh_n, dc_n):
    """After a rejected backward: no gradient was added, and the cache still serves a good one."""
    assert all(np.all(g == 0) for g in lstm.grads.values())
    dx, _ = lstm.backward(dy, (dh_n, dc_n))
    assert np.all(np.isfinite(dx))
    assert any(np.any(g != 0) for g in lstm.grads.values())


def shape_str(shape):
    return re.escape(str(tuple(shape)))


@pytest.mark.parametrize("change", ["longer", "shorter", "features", "fewer_features", "ndim"])
def test_backward_refuses_d_output_of_the_wrong_shape(trained, change):
    lstm, dy, dh_n, dc_n = trained
    s = dy.shape
    bad = {
        "longer": (s[0] + 1,) + s[1:],
        "shorter": (s[0] - 1,) + s[1:],
        "features": s[:-1] + (s[-1] + 1,),
        "ndim": (1,) + s,
        "fewer_features": s[:-1] + (s[-1] - 1,),
    }[change]
    with pytest.raises(
        ValueError,
        match=rf"^LSTM.backward: d_output must have shape {shape_str(s)}, got {shape_str(bad)}$",
    ):
        lstm.backward(np.zeros(bad), (dh_n, dc_n))
    assert_rejected_backward_changes_nothing(lstm, dy, dh_n, dc_n)


def test_backward_after_a_batch_first_forward_refuses_a_time_major_d_output():
    lstm, dy, dh_n, dc_n = trained_module("batch_first")
    time_major = np.ascontiguousarray(dy.transpose(1, 0, 2))
    assert time_major.shape != dy.shape
    with pytest.raises(
        ValueError,
        match=rf"^LSTM.backward: d_output must have shape {shape_str(dy.shape)}, "
        rf"got {shape_str(time_major.shape)}$",
    ):
        lstm.backward(time_major, (dh_n, dc_n))
    assert_rejected_backward_changes_nothing(lstm, dy, dh_n, dc_n)


@pytest.mark.parametrize("name", ["dh_n", "dc_n"])
@pytest.mark.parametrize("change", ["layers", "features", "ndim"])
def test_backward_refuses_state_gradients_of_the_wrong_shape(trained, name, change):
    lstm, dy, dh_n, dc_n = trained
    grads = {"dh_n": dh_n, "dc_n": dc_n}
    s = grads[name].shape
    bad = {"layers": (s[0] + 1,) + s[1:], "features": s[:-1] + (s[-1] + 1,), "ndim": s + (1,)}[
        change
    ]
    grads[name] = np.zeros(bad)
    with pytest.raises(
        ValueError,
        match=rf"^LSTM.backward: {name} must have shape {shape_str(s)}, got {shape_str(bad)}$",
    ):
        lstm.backward(dy, (grads["dh_n"], grads["dc_n"]))
    assert_rejected_backward_changes_nothing(lstm, dy, dh_n, dc_n)


@pytest.mark.parametrize("dtype", [np.complex128, object, "U3"])
@pytest.mark.parametrize("name", ["d_output", "dh_n", "dc_n"])
def test_backward_refuses_non_real_dtypes(trained, name, dtype):
    lstm, dy, dh_n, dc_n = trained
    arrays = {"d_output": dy, "dh_n": dh_n, "dc_n": dc_n}
    arrays[name] = np.zeros(arrays[name].shape, dtype)
    shown = re.escape(str(arrays[name].dtype))
    with pytest.raises(
        TypeError,
        match=rf"^LSTM.backward: {name} must hold real numbers \(float or int\), got dtype {shown}$",
    ):
        lstm.backward(arrays["d_output"], (arrays["dh_n"], arrays["dc_n"]))
    assert_rejected_backward_changes_nothing(lstm, dy, dh_n, dc_n)


@pytest.mark.parametrize("d_state, shown", [(np.zeros(3), "ndarray"), ("dh", "str"), (0, "int")])
def test_backward_refuses_a_d_state_that_is_not_a_pair(trained, d_state, shown):
    lstm, dy, dh_n, dc_n = trained
    with pytest.raises(
        TypeError, match=rf"^LSTM.backward: d_state must be a tuple \(dh_n, dc_n\), got {shown}$"
    ):
        lstm.backward(dy, d_state)
    assert_rejected_backward_changes_nothing(lstm, dy, dh_n, dc_n)


@pytest.mark.parametrize("n", [1, 3])
def test_backward_refuses_a_d_state_tuple_of_the_wrong_length_and_says_its_length(n):
    lstm, dy, dh_n, dc_n = trained_module("time_major")
    with pytest.raises(
        TypeError,
        match=rf"^LSTM.backward: d_state must be a tuple \(dh_n, dc_n\), got .*length {n}",
    ):
        lstm.backward(dy, (dh_n, dc_n, dc_n)[:n])
    assert_rejected_backward_changes_nothing(lstm, dy, dh_n, dc_n)


# ---- load_state_dict: all or nothing -------------------------------------------------------------


@pytest.fixture
def loaded():
    """A module, a valid state for it (different from its weights), and a probe of its outputs."""
    lstm = make(dtype=np.float64)
    other = make(dtype=np.float64, seed=1).state_dict()
    x, h0, c0 = good(dtype=np.float64)
    lstm.eval()
    return lstm, other, lambda: lstm(x, (h0, c0))[0]


def assert_unchanged(lstm, before, probe, out_before):
    assert_same_state(lstm.state_dict(), before)
    assert np.array_equal(probe(), out_before)  # derived (packed) weights were not rebuilt either


def attempt(loaded, state, exc, pattern):
    lstm, _, probe = loaded
    before, out_before = lstm.state_dict(), probe()
    with pytest.raises(exc, match=pattern):
        lstm.load_state_dict(state)
    assert_unchanged(lstm, before, probe, out_before)


def test_load_state_dict_refuses_missing_keys(loaded):
    _, other, _ = loaded
    for k in ("weight_ih_l0", "weight_hr_l1_reverse", "bias_hh_l1"):
        other.pop(k)
    attempt(
        loaded,
        other,
        ValueError,
        r"^LSTM.load_state_dict: missing keys \['bias_hh_l1', "
        r"'weight_hr_l1_reverse', 'weight_ih_l0'\]$",
    )


def test_load_state_dict_refuses_unexpected_keys(loaded):
    _, other, _ = loaded
    other["weight_ih_l2"] = np.zeros((4 * H, D * P))
    other["lstm.bias"] = np.zeros(3)
    attempt(
        loaded,
        other,
        ValueError,
        r"^LSTM.load_state_dict: unexpected keys \['lstm.bias', 'weight_ih_l2'\]$",
    )


def test_load_state_dict_names_both_missing_and_unexpected_keys(loaded):
    _, other, _ = loaded
    other["weight_ih_l0_rev"] = other.pop("weight_ih_l0_reverse")
    attempt(
        loaded,
        other,
        ValueError,
        r"^LSTM.load_state_dict: missing keys \['weight_ih_l0_reverse'\]; "
        r"unexpected keys \['weight_ih_l0_rev'\]$",
    )


@pytest.mark.parametrize(
    "key, bad",
    [
        ("weight_ih_l0", (4 * H, I + 1)),  # the first key
        ("weight_hr_l1_reverse", (H, P)),  # the last key, transposed
        ("bias_ih_l1", (1, 4 * H)),  # a bias as a row
        ("bias_hh_l0_reverse", (4 * H + 1,)),
        ("weight_hh_l1", ()),  # a scalar
        ("weight_ih_l1", (4 * H, I)),  # layer 1 takes D*Hout features, not I
    ],
)
def test_load_state_dict_refuses_values_of_the_wrong_shape(loaded, key, bad):
    _, other, _ = loaded
    expected = other[key].shape
    other[key] = np.zeros(bad)
    attempt(
        loaded,
        other,
        ValueError,
        rf"^LSTM.load_state_dict: {key} must have shape {shape_str(expected)}, "
        rf"got {shape_str(bad)}$",
    )


@pytest.mark.parametrize("key", ["weight_ih_l0", "weight_hr_l1_reverse"])
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64, object, "U3"])
def test_load_state_dict_refuses_non_real_values(loaded, key, dtype):
    _, other, _ = loaded
    other[key] = other[key].astype(dtype) if dtype != "U3" else np.full(other[key].shape, "abc")
    shown = re.escape(str(other[key].dtype))
    attempt(
        loaded,
        other,
        TypeError,
        rf"^LSTM.load_state_dict: {key} must hold real numbers \(float or int\), "
        rf"got dtype {shown}$",
    )


@pytest.mark.parametrize(
    "state, shown", [([("weight_ih_l0", 0)], "list"), (None, "NoneType"), ("abc", "str")]
)
def test_load_state_dict_refuses_something_that_is_not_a_mapping(loaded, state, shown):
    attempt(
        loaded,
        state,
        TypeError,
        rf"^LSTM.load_state_dict: state_dict must be a mapping, got {shown}$",
    )


def test_load_state_dict_accepts_the_valid_state_after_all_those_refusals(loaded):
    lstm, other, probe = loaded
    lstm.load_state_dict(other)
    assert_same_state(lstm.state_dict(), other)
