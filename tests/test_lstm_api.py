"""The behaviour of eigenlstm.LSTM around the math: weights in and out of torch, initialisation,
gradient accumulation, dropout, the training cache, optional state gradients, empty inputs, NaN,
input layouts and dtypes, and allocation failures.

The numerical parity itself is in test_lstm_parity.py; argument validation in
test_lstm_validation.py.
"""
# Sizes: T time steps, B batch, I input size, H hidden size, P projection size,
# Hout = P if P > 0 else H, D directions, L layers.

import warnings

import numpy as np
import pytest
import torch  # a hard import on purpose: the torch witness must never be silently skipped

import eigenlstm as el
from reference import reference_backward, reference_forward

T, B, I, H = 5, 3, 4, 20
# Norm-wise relative tolerances per dtype (justified in test_lstm_parity.py).
RTOL = {np.float32: 1e-5, np.float64: 1e-9}
TINY = np.finfo(np.float64).tiny
DTYPES = (np.float32, np.float64)
DTYPE_IDS = ("f32", "f64")
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


pytestmark = pytest.mark.usefixtures("torch_single_threaded")


def assert_close(actual, expected, rtol, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = np.asarray(actual, np.float64) - np.asarray(expected, np.float64)
    err = np.linalg.norm(diff.ravel()) / max(
        np.linalg.norm(np.asarray(expected, np.float64).ravel()), TINY
    )
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k


def rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def shapes(lstm, batched=True, n=B, steps=T):
    """(x, h0, c0, output) shapes for this module."""
    DL = lstm.num_directions * lstm.num_layers
    Hout = lstm.output_size
    y_feat = lstm.num_directions * Hout
    if not batched:
        return (steps, lstm.input_size), (DL, Hout), (DL, lstm.hidden_size), (steps, y_feat)
    if lstm.batch_first:
        return (
            (n, steps, lstm.input_size),
            (DL, n, Hout),
            (DL, n, lstm.hidden_size),
            (n, steps, y_feat),
        )
    return (steps, n, lstm.input_size), (DL, n, Hout), (DL, n, lstm.hidden_size), (steps, n, y_feat)


# ---- state_dict and torch ----------------------------------------------------------------------

SD_CONFIGS = [
    # (num_layers, bidirectional, proj_size, bias)
    (1, False, 0, True),
    (2, True, 7, False),
    (3, True, 0, True),
    (2, False, 3, True),
]
SD_IDS = [
    f"L{L}-{'bi' if bi else 'uni'}-P{P}-{'bias' if b else 'nobias'}" for L, bi, P, b in SD_CONFIGS
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", SD_CONFIGS, ids=SD_IDS)
def test_state_dict_has_torch_keys_order_and_shapes(config, dtype):
    L, bi, P, bias = config
    ours = el.LSTM(I, H, L, bias, False, 0.0, bi, P, dtype=dtype, seed=0).state_dict()
    theirs = torch.nn.LSTM(
        I, H, num_layers=L, bias=bias, bidirectional=bi, proj_size=P
    ).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert all(v.dtype == dtype for v in ours.values())


@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensors", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", SD_CONFIGS, ids=SD_IDS)
def test_a_torch_state_dict_loads_unchanged_and_gives_torch_outputs(config, dtype, as_numpy):
    L, bi, P, bias = config
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(
        I, H, num_layers=L, bias=bias, bidirectional=bi, proj_size=P, batch_first=True
    ).to(TORCH_DTYPE[dtype])
    state = theirs.state_dict()
    ours = el.LSTM(I, H, L, bias, True, 0.0, bi, P, dtype=dtype, seed=1)
    ours.load_state_dict({k: v.numpy() for k, v in state.items()} if as_numpy else state)
    loaded = ours.state_dict()
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert np.array_equal(loaded[k], v.numpy()), k
    x = rand(np.random.default_rng(0), (B, T, I), dtype)
    out, (h_n, c_n) = ours(x)
    with torch.no_grad():
        t_out, (t_h, t_c) = theirs(torch.from_numpy(x))
    assert_close(out, t_out.numpy(), RTOL[dtype], "output")
    assert_close(h_n, t_h.numpy(), RTOL[dtype], "h_n")
    assert_close(c_n, t_c.numpy(), RTOL[dtype], "c_n")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", SD_CONFIGS, ids=SD_IDS)
def test_our_state_dict_loads_into_torch_and_gives_the_same_outputs(config, dtype):
    L, bi, P, bias = config
    ours = el.LSTM(I, H, L, bias, False, 0.0, bi, P, dtype=dtype, seed=3)
    theirs = torch.nn.LSTM(I, H, num_layers=L, bias=bias, bidirectional=bi, proj_size=P).to(
        TORCH_DTYPE[dtype]
    )
    theirs.load_state_dict(
        {k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True
    )
    rng = np.random.default_rng(1)
    x = rand(rng, (T, B, I), dtype)
    h0, c0 = (
        rand(rng, (theirs.num_layers * (1 + bi), B, P or H), dtype),
        rand(rng, (L * (1 + bi), B, H), dtype),
    )
    out, (h_n, c_n) = ours(x, (h0, c0))
    with torch.no_grad():
        t_out, (t_h, t_c) = theirs(
            torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0))
        )
    assert_close(out, t_out.numpy(), RTOL[dtype], "output")
    assert_close(h_n, t_h.numpy(), RTOL[dtype], "h_n")
    assert_close(c_n, t_c.numpy(), RTOL[dtype], "c_n")


def test_load_state_dict_copies_so_later_changes_to_the_source_do_not_leak_in():
    lstm = el.LSTM(I, H, dtype=np.float64, seed=0)
    state = lstm.state_dict()
    before = {k: v.copy() for k, v in state.items()}
    lstm.load_state_dict(state)
    for v in state.values():
        v += 1.0
    assert_same_state(lstm.state_dict(), before)
    snapshot = lstm.state_dict()
    snapshot["weight_ih_l0"][:] = 0  # state_dict() returns copies
    assert_same_state(lstm.state_dict(), before)


# ---- initialisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", SD_CONFIGS, ids=SD_IDS)
def test_every_parameter_starts_uniform_in_plus_minus_one_over_sqrt_hidden_size(config, dtype):
    L, bi, P, bias = config
    k = 1.0 / np.sqrt(H)
    state = el.LSTM(I, H, L, bias, False, 0.0, bi, P, dtype=dtype, seed=11).state_dict()
    for name, v in state.items():
        assert np.all(np.abs(v) <= k), name
        # >= 60 draws each: no draw below -k/2 (or above k/2) has probability 0.75^60 < 1e-7
        assert v.min() < -0.5 * k and v.max() > 0.5 * k, name
    values = np.concatenate([v.ravel() for v in state.values()]).astype(np.float64)
    n = values.size
    # mean 0 and variance k^2/3 of U(-k, k); 6-sigma bounds for n >= 1000 draws
    assert abs(values.mean()) < 6 * k / np.sqrt(3 * n)
    assert abs(values.var() / (k * k / 3) - 1) < 6 * np.sqrt(0.8 / n)
    assert values.min() < -0.99 * k and values.max() > 0.99 * k


def test_the_same_seed_gives_the_same_weights_and_another_seed_different_weights():
    a = el.LSTM(I, H, 2, bidirectional=True, proj_size=5, seed=123).state_dict()
    b = el.LSTM(I, H, 2, bidirectional=True, proj_size=5, seed=123).state_dict()
    c = el.LSTM(I, H, 2, bidirectional=True, proj_size=5, seed=124).state_dict()
    assert_same_state(a, b)
    assert all(not np.array_equal(a[k], c[k]) for k in a)


def test_no_seed_gives_different_weights_each_time():
    a = el.LSTM(I, H).state_dict()
    b = el.LSTM(I, H).state_dict()
    assert all(not np.array_equal(a[k], b[k]) for k in a)


# ---- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_backward_adds_into_grads_and_zero_grad_clears_them(dtype):
    lstm = el.LSTM(I, H, 2, bidirectional=True, proj_size=6, dtype=dtype, seed=0)
    assert all(np.all(g == 0) for g in lstm.grads.values())
    rng = np.random.default_rng(0)
    x = rand(rng, (T, B, I), dtype)
    dy = rand(rng, (T, B, 2 * 6), dtype)
    out, _ = lstm(x, lengths=[5, 2, 4])
    lstm.backward(dy)
    once = lstm.grads
    assert all(np.any(g != 0) for g in once.values())
    lstm(x, lengths=[5, 2, 4])
    lstm.backward(dy)
    twice = lstm.grads
    assert list(twice) == list(once)
    for k in once:
        assert twice[k].dtype == dtype
        assert_close(twice[k], 2 * once[k], RTOL[dtype], k)
    lstm.zero_grad()
    assert all(np.all(g == 0) for g in lstm.grads.values())
    lstm(x, lengths=[5, 2, 4])
    lstm.backward(dy)
    for k, g in lstm.grads.items():
        assert np.array_equal(g, once[k]), k


def test_grads_is_a_snapshot_that_the_next_backward_does_not_change():
    lstm = el.LSTM(I, H, seed=0)
    x = rand(np.random.default_rng(0), (T, B, I), np.float32)
    out, _ = lstm(x)
    lstm.backward(np.ones_like(out))
    snapshot = lstm.grads
    copy = {k: v.copy() for k, v in snapshot.items()}
    lstm(x)
    lstm.backward(np.ones_like(out))
    assert_same_state(snapshot, copy)
    snapshot["weight_hh_l0"][:] = 7.0
    assert not np.any(lstm.grads["weight_hh_l0"] == 7.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_d_state_may_hold_only_dh_n_or_only_dc_n(dtype):
    lstm = el.LSTM(I, H, 2, bidirectional=True, proj_size=4, dtype=dtype, seed=0)
    rng = np.random.default_rng(2)
    x = rand(rng, (T, B, I), dtype)
    dy = rand(rng, (T, B, 8), dtype)
    dh_n, dc_n = rand(rng, (4, B, 4), dtype), rand(rng, (4, B, H), dtype)

    def run(d_state):
        lstm.zero_grad()
        lstm(x)
        dx, (dh0, dc0) = lstm.backward(dy, d_state)
        return [dx, dh0, dc0] + list(lstm.grads.values())

    zeros_h, zeros_c = np.zeros_like(dh_n), np.zeros_like(dc_n)
    for given, explicit in [
        ((dh_n, None), (dh_n, zeros_c)),
        ((None, dc_n), (zeros_h, dc_n)),
        ((None, None), (zeros_h, zeros_c)),
        (None, (zeros_h, zeros_c)),
    ]:
        for a, b in zip(run(given), run(explicit)):
            assert np.array_equal(a, b)
    # and each one matters
    assert not np.array_equal(run((dh_n, None))[1], run(None)[1])
    assert not np.array_equal(run((None, dc_n))[2], run(None)[2])


def test_padded_steps_ignore_values_an_earlier_forward_left_in_the_cache():
    # A first forward fills the cache (here with NaN at steps that the second forward pads);
    # the second forward's gradients must not read them.
    lstm = el.LSTM(3, 4, proj_size=2, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    poisoned = x.copy()
    poisoned[3:, 1] = np.nan
    lstm(poisoned)
    out, _ = lstm(x, lengths=[5, 2])
    lstm.backward(np.ones_like(out))
    fresh = el.LSTM(3, 4, proj_size=2, seed=0)
    fresh_out, _ = fresh(x, lengths=[5, 2])
    fresh.backward(np.ones_like(fresh_out))
    assert np.array_equal(out, fresh_out)
    for k, g in fresh.grads.items():
        assert np.all(np.isfinite(lstm.grads[k])), k
        assert np.array_equal(lstm.grads[k], g), k


# ---- the training cache ------------------------------------------------------------------------


def test_backward_without_a_forward_raises_runtime_error():
    lstm = el.LSTM(I, H, seed=0)
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        lstm.backward(np.zeros((T, B, H), np.float32))


def test_backward_after_an_eval_mode_forward_raises_runtime_error():
    lstm = el.LSTM(I, H, seed=0).eval()
    out, _ = lstm(np.zeros((T, B, I), np.float32))
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        lstm.backward(np.ones_like(out))


def test_a_second_backward_raises_runtime_error_because_the_cache_is_consumed():
    lstm = el.LSTM(I, H, seed=0)
    out, _ = lstm(np.ones((T, B, I), np.float32))
    lstm.backward(np.ones_like(out))
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        lstm.backward(np.ones_like(out))


def test_an_eval_forward_between_forward_and_backward_keeps_the_training_cache():
    rng = np.random.default_rng(0)
    x, other = rand(rng, (T, B, I)), rand(rng, (T + 2, 1, I))
    dy = rand(rng, (T, B, H))
    plain = el.LSTM(I, H, seed=0, dtype=np.float64)
    plain(x)
    expected = plain.backward(dy)[0]
    lstm = el.LSTM(I, H, seed=0, dtype=np.float64)
    lstm(x)
    lstm.eval()
    lstm(other)
    lstm.train()
    assert np.array_equal(lstm.backward(dy)[0], expected)
    assert_same_state(lstm.grads, plain.grads)


def test_train_and_eval_set_the_training_flag_and_return_the_module():
    lstm = el.LSTM(I, H, seed=0)
    assert lstm.training is True
    assert lstm.eval() is lstm and lstm.training is False
    assert lstm.train() is lstm and lstm.training is True
    assert lstm.train(False) is lstm and lstm.training is False


def test_calling_the_module_is_forward():
    lstm = el.LSTM(I, H, 2, seed=0).eval()
    x = rand(np.random.default_rng(0), (T, B, I), np.float32)
    a, (ha, ca) = lstm(x, lengths=[1, 5, 3])
    b, (hb, cb) = lstm.forward(x, lengths=[1, 5, 3])
    for u, v in ((a, b), (ha, hb), (ca, cb)):
        assert np.array_equal(u, v)


# ---- dropout -----------------------------------------------------------------------------------


def dropout_pair(p, L=3, dtype=np.float32, seed=5):
    """A module with dropout p and a twin with the same weights and dropout 0."""
    lstm = el.LSTM(I, H, L, dropout=p, bidirectional=True, dtype=dtype, seed=seed)
    twin = el.LSTM(I, H, L, dropout=0.0, bidirectional=True, dtype=dtype, seed=seed)
    twin.load_state_dict(lstm.state_dict())
    return lstm, twin


def test_eval_mode_applies_no_dropout():
    lstm, twin = dropout_pair(0.5)
    x = rand(np.random.default_rng(0), (T, B, I), np.float32)
    lstm.eval()
    twin.eval()
    out, (h_n, c_n) = lstm(x)
    t_out, (t_h, t_c) = twin(x)
    assert np.array_equal(out, t_out) and np.array_equal(h_n, t_h) and np.array_equal(c_n, t_c)
    again, _ = lstm(x)
    assert np.array_equal(again, out)


def test_training_mode_dropout_is_reproducible_with_the_same_seed_and_advances_between_calls():
    x = rand(np.random.default_rng(0), (T, B, I), np.float32)
    a, twin = dropout_pair(0.5, seed=9)
    b, _ = dropout_pair(0.5, seed=9)
    a1, _ = a(x)
    a2, _ = a(x)
    b1, _ = b(x)
    b2, _ = b(x)
    assert np.array_equal(a1, b1) and np.array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    plain, _ = twin(x)
    assert not np.array_equal(a1, plain)


def test_dropout_state_rewinds_the_masks():
    lstm, _ = dropout_pair(0.3)
    x = rand(np.random.default_rng(0), (T, B, I), np.float32)
    state = lstm.dropout_state
    first, _ = lstm(x)
    assert lstm.dropout_state != state
    lstm.set_dropout_state(state)
    again, _ = lstm(x)
    assert np.array_equal(first, again)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dropout_one_cuts_the_lower_layers_off_in_training(dtype):
    L = 3
    lstm, _ = dropout_pair(1.0, L=L, dtype=dtype)
    rng = np.random.default_rng(0)
    x, other = rand(rng, (T, B, I), dtype), rand(rng, (T, B, I), dtype)
    h0, c0 = rand(rng, (2 * L, B, H), dtype), rand(rng, (2 * L, B, H), dtype)
    out, (h_n, c_n) = lstm(x, (h0, c0))
    # The top layer sees an input of zeros: the same as a 1-layer LSTM with its weights.
    top = el.LSTM(2 * H, H, 1, bidirectional=True, dtype=dtype, seed=0)
    top.load_state_dict(
        {
            k.replace(f"_l{L - 1}", "_l0"): v
            for k, v in lstm.state_dict().items()
            if f"_l{L - 1}" in k
        }
    )
    top.eval()
    t_out, (t_h, t_c) = top(np.zeros((T, B, 2 * H), dtype), (h0[-2:], c0[-2:]))
    assert_close(out, t_out, RTOL[dtype], "output")
    assert_close(h_n[-2:], t_h, RTOL[dtype], "h_n")
    assert_close(c_n[-2:], t_c, RTOL[dtype], "c_n")
    dy = rand(rng, out.shape, dtype)
    dx, (dh0, dc0) = lstm.backward(dy)
    assert np.all(dx == 0)
    assert np.all(dh0[:-2] == 0) and np.all(dc0[:-2] == 0)
    for k, g in lstm.grads.items():
        if f"_l{L - 1}" not in k or k.startswith("weight_ih"):
            assert np.all(g == 0), k
        else:
            assert np.any(g != 0), k
    other_out, _ = lstm(other, (h0, c0))
    assert np.array_equal(other_out, out)


def test_dropout_with_one_layer_warns_that_it_has_no_effect():
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        el.LSTM(I, H, 1, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        el.LSTM(I, H, 2, dropout=0.5)
        el.LSTM(I, H, 1, dropout=0.0)


# ---- empty inputs ------------------------------------------------------------------------------

EMPTY_CONFIGS = [
    # (num_layers, bidirectional, proj_size, batch_first)
    (1, False, 0, False),
    (2, True, 5, True),
    (3, True, 0, False),
]
EMPTY_IDS = [
    f"L{L}-{'bi' if bi else 'uni'}-P{P}-{'bf' if bf else 'tm'}" for L, bi, P, bf in EMPTY_CONFIGS
]


@pytest.mark.parametrize("with_lengths", [False, True], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", EMPTY_CONFIGS, ids=EMPTY_IDS)
def test_an_empty_batch_gives_empty_results_of_the_right_shapes(config, dtype, with_lengths):
    L, bi, P, bf = config
    lstm = el.LSTM(I, H, L, True, bf, 0.0, bi, P, dtype=dtype, seed=0)
    x_s, h_s, c_s, y_s = shapes(lstm, n=0)
    lengths = np.zeros(0, np.int64) if with_lengths else None
    for state in (None, (np.zeros(h_s, dtype), np.zeros(c_s, dtype))):
        out, (h_n, c_n) = lstm(np.zeros(x_s, dtype), state, lengths=lengths)
        assert (out.shape, h_n.shape, c_n.shape) == (y_s, h_s, c_s)
        assert out.dtype == h_n.dtype == c_n.dtype == dtype
        dx, (dh0, dc0) = lstm.backward(
            np.zeros(y_s, dtype), (np.zeros(h_s, dtype), np.zeros(c_s, dtype))
        )
        assert (dx.shape, dh0.shape, dc0.shape) == (x_s, h_s, c_s)
        assert dx.dtype == dh0.dtype == dc0.dtype == dtype
    assert all(np.all(g == 0) for g in lstm.grads.values())


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", EMPTY_CONFIGS, ids=EMPTY_IDS)
def test_an_empty_sequence_passes_the_state_and_its_gradient_through(config, dtype):
    L, bi, P, bf = config
    lstm = el.LSTM(I, H, L, True, bf, 0.0, bi, P, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    x_s, h_s, c_s, y_s = shapes(lstm, steps=0)
    h0, c0 = rand(rng, h_s, dtype), rand(rng, c_s, dtype)
    dh_n, dc_n = rand(rng, h_s, dtype), rand(rng, c_s, dtype)
    for lengths in (None, np.zeros(B, np.int64)):
        out, (h_n, c_n) = lstm(np.zeros(x_s, dtype), (h0, c0), lengths=lengths)
        assert out.shape == y_s and out.dtype == dtype
        assert np.array_equal(h_n, h0) and np.array_equal(c_n, c0)
        dx, (dh0, dc0) = lstm.backward(np.zeros(y_s, dtype), (dh_n, dc_n))
        assert dx.shape == x_s and dx.dtype == dtype
        assert np.array_equal(dh0, dh_n) and np.array_equal(dc0, dc_n)
    out, (h_n, c_n) = lstm(np.zeros(x_s, dtype))
    assert np.all(h_n == 0) and np.all(c_n == 0)
    assert all(np.all(g == 0) for g in lstm.grads.values())


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_an_empty_unbatched_sequence_gives_an_empty_output_and_the_initial_state(dtype):
    lstm = el.LSTM(I, H, 2, bidirectional=True, proj_size=3, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    h0, c0 = rand(rng, (4, 3), dtype), rand(rng, (4, H), dtype)
    out, (h_n, c_n) = lstm(np.zeros((0, I), dtype), (h0, c0))
    assert out.shape == (0, 6)
    assert np.array_equal(h_n, h0) and np.array_equal(c_n, c0)
    dx, (dh0, dc0) = lstm.backward(np.zeros((0, 6), dtype), (h0, None))
    assert dx.shape == (0, I)
    assert np.array_equal(dh0, h0) and np.all(dc0 == 0) and dc0.shape == (4, H)


# ---- NaN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_in_x_propagates_to_the_output_of_its_sequence_from_that_step_on(dtype):
    lstm = el.LSTM(I, H, 2, proj_size=6, dtype=dtype, seed=0)
    x = rand(np.random.default_rng(0), (T, B, I), dtype)
    x[2, 1, 0] = np.nan
    for mode in (lstm.train, lstm.eval):
        mode()
        out, (h_n, c_n) = lstm(x)
        assert np.all(np.isfinite(out[:2])) and np.all(np.isfinite(out[:, [0, 2]]))
        assert np.all(np.isnan(out[2:, 1]))
        assert np.all(np.isnan(h_n[:, 1])) and np.all(np.isnan(c_n[:, 1]))
        assert np.all(np.isfinite(h_n[:, [0, 2]])) and np.all(np.isfinite(c_n[:, [0, 2]]))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_an_inf_in_weight_hh_gives_torchs_nan_from_the_first_step_without_initial_state(dtype):
    # The engine skips the first step's h0 W_hh^T when no initial state is given (it is zero),
    # but only while W_hh is finite: torch computes 0 * inf = NaN there.
    torch_lstm = torch.nn.LSTM(I, H).to(TORCH_DTYPE[dtype])
    state = {k: v.detach().numpy().copy() for k, v in torch_lstm.state_dict().items()}
    state["weight_hh_l0"][2, 1] = np.inf
    torch_lstm.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    lstm = el.LSTM(I, H, dtype=dtype)
    lstm.load_state_dict(state)
    x = rand(np.random.default_rng(0), (1, B, I), dtype)
    with torch.no_grad():
        want, (want_h, want_c) = torch_lstm(torch.from_numpy(x))
    for mode in (lstm.train, lstm.eval):
        mode()
        out, (h_n, c_n) = lstm(x)
        for got, ref in ((out, want), (h_n, want_h), (c_n, want_c)):
            ref = ref.numpy()
            assert np.isnan(ref).any()
            assert np.array_equal(np.isnan(got), np.isnan(ref))
            np.testing.assert_allclose(got[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=1e-5)


# ---- layouts and dtypes of the inputs ------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_non_contiguous_inputs_give_the_contiguous_result(batch_first, dtype):
    # proj_size=0 keeps this test about layouts: with a projection and lengths, weight_hr's
    # gradient can pick up NaN left in the cache by an earlier call (see
    # test_padded_steps_ignore_values_an_earlier_forward_left_in_the_cache).
    lstm = el.LSTM(I, H, 2, batch_first=batch_first, bidirectional=True, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    x_s, h_s, c_s, y_s = shapes(lstm)
    x, h0, c0, dy = (
        rand(rng, x_s, dtype),
        rand(rng, h_s, dtype),
        rand(rng, c_s, dtype),
        rand(rng, y_s, dtype),
    )
    dh_n, dc_n = rand(rng, h_s, dtype), rand(rng, c_s, dtype)
    lengths = np.array([5, 1, 3])

    def run(x, h0, c0, dy, dh_n, dc_n, lengths):
        lstm.zero_grad()
        out, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths)
        dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))
        return [out, h_n, c_n, dx, dh0, dc0] + list(lstm.grads.values())

    def strided(a):
        """The same values as a view with every axis strided (every other element of a bigger array)."""
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view

    def negative_strides(a):
        """The same values as a view with a negative stride on axis 1."""
        return np.flip(np.ascontiguousarray(np.flip(a, 1)), 1)

    expected = run(x, h0, c0, dy, dh_n, dc_n, lengths)
    lengths_view = np.repeat(lengths, 2)[::2].astype(np.int32)
    variants = {
        "strided": [strided(a) for a in (x, h0, c0, dy, dh_n, dc_n)] + [lengths_view],
        "fortran": [np.asfortranarray(a) for a in (x, h0, c0, dy, dh_n, dc_n)]
        + [lengths.astype(np.uint8)],
        "negative strides": [negative_strides(a) for a in (x, h0, c0, dy, dh_n, dc_n)]
        + [list(lengths)],
    }
    assert not strided(x).flags.c_contiguous and not np.asfortranarray(x).flags.c_contiguous
    for name, args in variants.items():
        for a, b in zip(run(*args), expected):
            assert np.array_equal(a, b), name


def test_x_as_a_transposed_view_gives_the_contiguous_result():
    lstm = el.LSTM(I, H, seed=0).eval()
    x = rand(np.random.default_rng(0), (T, B, I), np.float32)
    view = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)
    assert not view.flags.c_contiguous
    assert np.array_equal(lstm(view)[0], lstm(x)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "source",
    [np.int64, np.int32, np.uint8, np.bool_, np.float16],
    ids=["int64", "int32", "uint8", "bool", "float16"],
)
def test_other_real_dtypes_are_converted_to_the_module_dtype(source, dtype):
    lstm = el.LSTM(I, H, bidirectional=True, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (T, B, I)).astype(source)
    h0 = rng.integers(0, 2, (2, B, H)).astype(source)
    dy = rng.integers(-1, 2, (T, B, 2 * H)).astype(source)
    out, (h_n, c_n) = lstm(x, (h0, h0))
    dx, (dh0, dc0) = lstm.backward(dy, (h0, h0))
    grads = lstm.grads
    lstm.zero_grad()
    f_out, (f_h, f_c) = lstm(x.astype(dtype), (h0.astype(dtype), h0.astype(dtype)))
    f_dx, (f_dh0, f_dc0) = lstm.backward(dy.astype(dtype), (h0.astype(dtype), h0.astype(dtype)))
    for a, b in ((out, f_out), (h_n, f_h), (c_n, f_c), (dx, f_dx), (dh0, f_dh0), (dc0, f_dc0)):
        assert a.dtype == dtype
        assert np.array_equal(a, b)
    assert_same_state(grads, lstm.grads)


def test_a_float64_module_keeps_float64_parameters_and_results():
    lstm = el.LSTM(I, H, 2, bidirectional=True, proj_size=5, dtype=np.float64, seed=0)
    state = {k: v + 1e-12 / 3 for k, v in lstm.state_dict().items()}  # below float32 resolution
    lstm.load_state_dict(state)
    assert_same_state(lstm.state_dict(), state)
    rng = np.random.default_rng(0)
    x32 = rand(rng, (T, B, I), np.float32)
    h0, c0 = rand(rng, (4, B, 5), np.float32), rand(rng, (4, B, H), np.float32)
    out, (h_n, c_n) = lstm(x32, (h0, c0))
    dy = rand(rng, out.shape, np.float32)
    dx, (dh0, dc0) = lstm.backward(dy)
    for a in (out, h_n, c_n, dx, dh0, dc0, *lstm.grads.values()):
        assert a.dtype == np.float64
    ref_out, ref_h, ref_c, cache = reference_forward(
        state, x32, h0, c0, num_layers=2, bidirectional=True, proj_size=5
    )
    ref_dx, ref_dh0, ref_dc0, ref_grads = reference_backward(cache, dy)
    for a, b, name in (
        (out, ref_out, "output"),
        (h_n, ref_h, "h_n"),
        (c_n, ref_c, "c_n"),
        (dx, ref_dx, "dx"),
        (dh0, ref_dh0, "dh0"),
        (dc0, ref_dc0, "dc0"),
    ):
        assert_close(a, b, RTOL[np.float64], name)
    for k, g in lstm.grads.items():
        assert_close(g, ref_grads[k], RTOL[np.float64], k)


def test_a_float32_module_gives_float32_for_float64_inputs():
    lstm = el.LSTM(I, H, seed=0)
    x = rand(np.random.default_rng(0), (T, B, I))
    out, (h_n, c_n) = lstm(x)
    dx, (dh0, dc0) = lstm.backward(np.ones(out.shape))
    assert all(a.dtype == np.float32 for a in (out, h_n, c_n, dx, dh0, dc0))
    lstm.zero_grad()
    assert np.array_equal(lstm(x.astype(np.float32))[0], out)


# ---- allocation failures -------------------------------------------------------------------------
# Every size below needs more than 2**47 bytes (the x86-64 user address space), or overflows
# 64 bits, so the allocation fails at once whatever the overcommit policy: nothing is touched.


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "sizes",
    [(10, 4_000_000), (2**40, 1000), (2**62, 2)],
    ids=["H=4e6:256TB", "I=2^40:17PB", "I=2^62:overflow"],
)
def test_parameters_too_large_to_allocate_raise_memory_error(sizes, dtype):
    with pytest.raises(MemoryError):
        el.LSTM(*sizes, dtype=dtype, seed=0)


def overcommit_always():
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "1"
    except OSError:
        return True  # unknown policy: assume the worst


@pytest.mark.skipif(
    overcommit_always(),
    reason="with overcommit_memory=1 a 640 GB allocation may succeed and be touched",
)
def test_parameters_larger_than_memory_raise_memory_error():
    # 4 * 2e5 * (2e5 + 10) float32 weights alone are 640 GB, far beyond RAM + swap.
    with pytest.raises(MemoryError):
        el.LSTM(10, 200_000, seed=0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_a_forward_on_a_gigantic_broadcast_input_raises_memory_error_and_keeps_the_module_usable(
    batch_first, training
):
    lstm = el.LSTM(4, 8, batch_first=batch_first, seed=0).train(training)
    small = np.ones((1, 1, 4), np.float32)
    x = np.broadcast_to(small, (2**22, 2**22, 4))  # 2**46 elements, 256 TiB once materialized
    with pytest.raises(MemoryError):
        lstm(x)
    with pytest.raises(MemoryError):
        lstm(np.broadcast_to(small.astype(np.int64), x.shape))  # the dtype conversion fails
    out, _ = lstm(np.ones((3, 2, 4), np.float32))
    assert out.shape == (3, 2, 8)
    if training:
        dx, _ = lstm.backward(np.ones_like(out))
        assert dx.shape == (3, 2, 4)


def test_flatten_and_unflatten_convert_between_the_flat_buffer_and_torch_names():
    lstm = el.LSTM(4, 19, num_layers=2, bidirectional=True, proj_size=3, seed=0)
    sd = lstm.state_dict()
    flat = lstm.flatten(sd)
    np.testing.assert_array_equal(flat, lstm.flat_buffers()[0])
    back = lstm.unflatten(flat)
    assert list(back) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    with pytest.raises(ValueError, match=r"LSTM.flatten: missing key 'weight_hr_l1_reverse'"):
        lstm.flatten({k: v for k, v in sd.items() if k != "weight_hr_l1_reverse"})


def torch_layout_views(lstm, flat):
    """{state_dict key: flat[offset:offset + size].reshape(torch shape)}, views at param_offset."""
    engine, views = lstm._engine, {}
    padding = np.ones(flat.shape, bool)
    for name, kind, layer, d in el.nn.lstm.param_names(
        lstm.num_layers, lstm.bidirectional, lstm.proj_size, lstm.bias
    ):
        shape = tuple(engine.param_shape(kind, layer))
        offset = engine.param_offset(kind, layer, d)
        span = slice(offset, offset + int(np.prod(shape)))
        assert padding[span].all(), f"{name} overlaps another tensor"
        padding[span] = False
        views[name] = flat[span].reshape(shape)
        assert np.shares_memory(views[name], flat), name
    assert not flat[padding].any(), "padding between tensors must stay zero"
    return views


def torch_twin(lstm, dtype):
    """torch.nn.LSTM of the same configuration and dtype, with lstm's weights."""
    net = torch.nn.LSTM(
        lstm.input_size,
        lstm.hidden_size,
        lstm.num_layers,
        bidirectional=lstm.bidirectional,
        proj_size=lstm.proj_size,
        dtype=TORCH_DTYPE[dtype],
    )
    net.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    return net


# H = 19: a full and a partial gate block of the engine's internal layout, in both dtypes.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_the_flat_parameter_buffer_holds_every_tensor_as_torch_does_and_writes_to_views_count(
    dtype,
):
    rng = np.random.default_rng(3)
    lstm = el.LSTM(4, 19, num_layers=2, bidirectional=True, proj_size=3, dtype=dtype, seed=0)
    lstm.load_state_dict({k: rand(rng, v.shape, dtype) for k, v in lstm.state_dict().items()})
    net = torch_twin(lstm, dtype)
    views = torch_layout_views(lstm, lstm._engine.params)
    for name, tensor in net.state_dict().items():
        np.testing.assert_array_equal(views[name], tensor.numpy(), err_msg=name)

    # Write every tensor through its view, as an optimizer does, then params_updated(): the
    # module computes exactly what loading the same tensors through load_state_dict gives.
    changed = {k: rand(rng, v.shape, dtype) for k, v in views.items()}
    for name, value in changed.items():
        views[name][...] = value
    lstm.params_updated()
    loaded = el.LSTM(4, 19, num_layers=2, bidirectional=True, proj_size=3, dtype=dtype, seed=1)
    loaded.load_state_dict(changed)
    x = rand(rng, (T, B, 4), dtype)
    for module in (lstm, loaded):
        module.eval()
    y, (h_n, c_n) = lstm(x)
    y_ref, (h_ref, c_ref) = loaded(x)
    assert np.array_equal(y, y_ref) and np.array_equal(h_n, h_ref) and np.array_equal(c_n, c_ref)
    assert_same_state(lstm.state_dict(), changed)
    torch_layout_views(lstm, lstm._engine.params)  # the padding is still zero


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_the_flat_gradient_buffer_holds_torchs_grad_of_every_tensor_at_its_offset(dtype):
    rng = np.random.default_rng(4)
    lstm = el.LSTM(4, 19, num_layers=2, bidirectional=True, proj_size=3, dtype=dtype, seed=0)
    lstm.load_state_dict({k: rand(rng, v.shape, dtype) for k, v in lstm.state_dict().items()})
    net = torch_twin(lstm, dtype)
    x, dy = rand(rng, (T, B, 4), dtype), rand(rng, (T, B, 2 * 3), dtype)
    lstm.train()
    lstm.zero_grad()
    lstm(x)
    lstm.backward(dy)
    y_t, _ = net(torch.from_numpy(x))
    y_t.backward(torch.from_numpy(dy))
    grads = torch_layout_views(lstm, lstm._engine.grads)
    for name, param in net.named_parameters():
        assert_close(grads[name], param.grad.numpy(), RTOL[dtype], f"grad {name}")
    # backward adds into the buffer: a second identical step doubles every gradient.
    before = lstm._engine.grads.copy()
    lstm(x)
    lstm.backward(dy)
    assert_close(lstm._engine.grads, 2 * before, RTOL[dtype], "accumulated grads")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_tensor_slice_gives_each_tensor_its_own_span_at_param_offset_and_torchs_shape(dtype):
    # What LSTM's parameters and the functional API locate their tensors with.
    from eigenlstm import _core
    from eigenlstm._layout import tensor_slice

    engine_cls = _core.EngineF32 if dtype == np.float32 else _core.EngineF64
    engine = engine_cls(4, 19, 2, True, True, 3, 0.0, False, 0)
    net = torch.nn.LSTM(4, 19, 2, bidirectional=True, proj_size=3)
    used = np.zeros(engine.num_params, bool)
    for name, kind, layer, d in el.nn.lstm.param_names(2, True, 3, True):
        span, shape = tensor_slice(engine, kind, layer, d)
        assert shape == tuple(getattr(net, name).shape), name
        assert all(type(n) is int for n in shape), name
        assert span.start == engine.param_offset(kind, layer, d), name
        assert span.stop - span.start == int(np.prod(shape)) and span.stop <= engine.num_params
        assert not used[span].any(), f"{name} overlaps another tensor"
        used[span] = True
    plain = engine_cls(4, 19, 1, False, False, 0, 0.0, False, 0)
    with pytest.raises(ValueError, match=r"this LSTM has no weight_hr \(proj_size is 0\)"):
        tensor_slice(plain, "weight_hr", 0, 0)
    with pytest.raises(ValueError, match=r"this LSTM has no bias_ih \(bias is false\)"):
        tensor_slice(plain, "bias_ih", 0, 0)
    with pytest.raises(ValueError, match=r"direction must be in \[0, 1\), got 1"):
        tensor_slice(plain, "weight_ih", 0, 1)


def test_type_stubs_of_the_compiled_module_name_exactly_its_public_api():
    import ast
    from pathlib import Path

    import eigenlstm._core as core

    stub = ast.parse((Path(el.__file__).parent / "_core.pyi").read_text())
    assert (Path(el.__file__).parent / "py.typed").exists()
    classes = {n.name: n for n in stub.body if isinstance(n, ast.ClassDef)}
    for stub_class, compiled in (
        ("_Engine", core.EngineF32),
        ("QuantizedEngine", core.QuantizedEngine),
        ("QuantizedLinear", core.QuantizedLinear),
    ):
        methods = {f.name for f in classes[stub_class].body if isinstance(f, ast.FunctionDef)}
        public = {a for a in dir(compiled) if not a.startswith("_")} | {"__init__"}
        assert methods == public, stub_class
    compiled_classes = {"EngineF32", "EngineF64", "QuantizedEngine", "QuantizedLinear"}
    assert set(classes) >= compiled_classes
    top = {n.name for n in stub.body if isinstance(n, ast.FunctionDef)}
    top |= {n.target.id for n in stub.body if isinstance(n, ast.AnnAssign)}
    # module level: the public names and the test hooks (one underscore), not the dunders
    assert top == {a for a in dir(core) if not a.startswith("__") and a not in compiled_classes}
