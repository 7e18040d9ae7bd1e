"""Central finite differences in float64 through eigenlstm.LSTM itself.

Every entry of every parameter (perturbed through load_state_dict), of x, h0 and c0 is
perturbed, and the slope of a scalar loss is compared with the gradient from LSTM.backward.
With dropout, the dropout stream is rewound before every forward so the masks are replayed.
The cell variants (peepholes, cell and projection clipping) run through the same check.
"""
# Sizes: T time steps, B batch, I input size, H hidden size, P projection size,
# Hout = P if P > 0 else H, D directions, L layers.

import numpy as np
import pytest

import eigenlstm as el
from compare import finite_difference

T, B, I, H = 4, 3, 2, 3  # tiny, so that every entry of every array can be perturbed
EPS = 1e-6
# Central differences have truncation error ~EPS^2 * f''' ~ 1e-12 and rounding error
# ~ eps64 * |loss| / EPS ~ 1e-16 * 10 / 1e-6 = 1e-9; 1e-6 relative + 1e-7 absolute covers both
# with margin while a wrong term (O(1e-2) or more) cannot hide.
RTOL, ATOL = 1e-6, 1e-7


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny forwards: one thread avoids waking a thread team for each (threads are
    tested in test_lstm_parity.py); the setting is restored afterwards."""
    saved = el.get_num_threads()
    el.set_num_threads(1)
    yield
    el.set_num_threads(saved)


CONFIGS = {
    # name: (num_layers, bidirectional, proj_size, bias, batch_first, dropout, layout, lengths)
    "L1-uni-noP-bias-full": (1, False, 0, True, False, 0.0, "batched", None),
    "L2-bi-P2-bias-lengths": (2, True, 2, True, False, 0.0, "batched", [4, 0, 2]),
    "L2-uni-P1-nobias-batch_first-lengths": (2, False, 1, False, True, 0.0, "batched", [1, 4, 3]),
    "L3-bi-noP-bias-unbatched": (3, True, 0, True, False, 0.0, "unbatched", None),
    "L2-bi-P2-bias-lengths-dropout": (2, True, 2, True, False, 0.4, "batched", [4, 0, 2]),
    "L3-uni-noP-nobias-batch_first-dropout": (3, False, 0, False, True, 0.5, "batched", None),
}
# The cell variants on some of the configs above: name -> (config, options of el.LSTM). The
# clips are below the states' typical size here (|c| ~ 0.5, |h| ~ 0.3), so they bite.
VARIANTS = {
    "peepholes": ("L2-bi-P2-bias-lengths-dropout", {"peepholes": True}),
    "peepholes-unbatched": ("L3-bi-noP-bias-unbatched", {"peepholes": True}),
    "cell_clip": ("L2-bi-P2-bias-lengths", {"cell_clip": 0.3}),
    "proj_clip": ("L2-uni-P1-nobias-batch_first-lengths", {"proj_clip": 0.1}),
    "all-deterministic": (
        "L2-bi-P2-bias-lengths-dropout",
        {"peepholes": True, "cell_clip": 0.3, "proj_clip": 0.1},
    ),
    # the random ones in training mode, their masks replayed with the dropout stream
    "recurrent_dropout": ("L2-bi-P2-bias-lengths", {"recurrent_dropout": 0.4}),
    "weight_drop": ("L3-bi-noP-bias-unbatched", {"weight_drop": 0.4}),
    "zoneout": ("L2-uni-P1-nobias-batch_first-lengths", {"zoneout": (0.3, 0.5)}),
    "zoneout-noP": ("L3-uni-noP-nobias-batch_first-dropout", {"zoneout": 0.4}),
    "cifg": ("L2-bi-P2-bias-lengths", {"cifg": True}),
    "cifg-peepholes": ("L3-bi-noP-bias-unbatched", {"cifg": True, "peepholes": True}),
    "layer_norm": ("L2-bi-P2-bias-lengths-dropout", {"layer_norm": True}),
    "layer_norm-cifg": (
        "L3-uni-noP-nobias-batch_first-dropout",
        {"layer_norm": True, "cifg": True},
    ),
    "layer_norm-zoneout": (
        "L2-uni-P1-nobias-batch_first-lengths",
        {"layer_norm": True, "zoneout": (0.3, 0.5), "recurrent_dropout": 0.3},
    ),
    "everything": (
        "L2-bi-P2-bias-lengths-dropout",
        {
            "peepholes": True,
            "cell_clip": 0.3,
            "proj_clip": 0.1,
            "recurrent_dropout": 0.3,
            "weight_drop": 0.3,
            "zoneout": (0.3, 0.4),
        },
    ),
}


def make_problem(name, options=None):
    L, bi, P, bias, bf, p, layout, lengths = CONFIGS[name]
    rng = np.random.default_rng(list(CONFIGS).index(name))
    D = 2 if bi else 1
    Hout = P if P > 0 else H
    lstm = el.LSTM(I, H, L, bias, bf, p, bi, P, dtype=np.float64, seed=7, **(options or {}))
    if layout == "unbatched":
        x_shape, h_shape, c_shape, y_shape = (T, I), (D * L, Hout), (D * L, H), (T, D * Hout)
    else:
        x_shape = (B, T, I) if bf else (T, B, I)
        y_shape = (B, T, D * Hout) if bf else (T, B, D * Hout)
        h_shape, c_shape = (D * L, B, Hout), (D * L, B, H)
    arrays = {
        "x": rng.standard_normal(x_shape),
        "h0": rng.standard_normal(h_shape),
        "c0": rng.standard_normal(c_shape),
    }
    weights = {
        "d_output": rng.standard_normal(y_shape),
        "dh_n": rng.standard_normal(h_shape),
        "dc_n": rng.standard_normal(c_shape),
    }
    return lstm, arrays, weights, lengths


def weighted_sum(lstm, arrays, weights, lengths):
    """The scalar loss sum(output*d_output) + sum(h_n*dh_n) + sum(c_n*dc_n) of one forward."""
    out, (h_n, c_n) = lstm(arrays["x"], (arrays["h0"], arrays["c0"]), lengths=lengths)
    return (
        np.sum(out * weights["d_output"])
        + np.sum(h_n * weights["dh_n"])
        + np.sum(c_n * weights["dc_n"])
    )


@pytest.mark.parametrize(
    "name, options",
    [(name, None) for name in CONFIGS] + list(VARIANTS.values()),
    ids=list(CONFIGS) + list(VARIANTS),
)
def test_backward_matches_finite_differences_float64(name, options):
    lstm, arrays, weights, lengths = make_problem(name, options)
    params = lstm.state_dict()
    rng_state = lstm.dropout_state

    def loss():
        lstm.set_dropout_state(rng_state)  # replay the same dropout masks
        return weighted_sum(lstm, arrays, weights, lengths)

    def loss_of_params():
        lstm.load_state_dict(params)
        return loss()

    loss()  # training-mode forward: the cache backward differentiates
    lstm.zero_grad()
    dx, (dh0, dc0) = lstm.backward(weights["d_output"], (weights["dh_n"], weights["dc_n"]))
    analytic = {"x": dx, "h0": dh0, "c0": dc0}
    analytic.update(lstm.grads)
    numeric = {k: finite_difference(loss, arrays[k], EPS) for k in ("x", "h0", "c0")}
    numeric.update({k: finite_difference(loss_of_params, params[k], EPS) for k in params})
    assert list(analytic) == ["x", "h0", "c0"] + list(params)
    for key in analytic:
        assert analytic[key].dtype == np.float64, key
        np.testing.assert_allclose(analytic[key], numeric[key], rtol=RTOL, atol=ATOL, err_msg=key)


def test_finite_differences_see_no_dependence_on_padded_inputs():
    lstm, arrays, weights, lengths = make_problem("L2-bi-P2-bias-lengths")
    lstm.eval()

    dx = finite_difference(lambda: weighted_sum(lstm, arrays, weights, lengths), arrays["x"], EPS)
    past = np.arange(T)[:, None] >= np.asarray(lengths)[None, :]  # (T, B), time-major layout
    assert np.all(dx[past] == 0)
    assert np.all(np.abs(dx[~past]).sum(axis=-1) > 0)
