"""The functional single-layer API against the float64 reference and the LSTM module."""

import numpy as np
import pytest

import eigenlstm as el
from eigenlstm.functional import lstm_layer_backward, lstm_layer_forward
from reference import init_params, reference_backward, reference_forward


def rel_err(a, b):
    return np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("proj", [0, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_layer_forward_and_backward_match_reference_float64(proj, bias, reverse, with_lengths):
    T, B, I, H = 6, 4, 5, 19
    rng = np.random.default_rng(3)
    p = init_params(rng, I, H, 1, reverse, proj, bias)  # bidirectional params when reverse
    sfx = "_reverse" if reverse else ""
    Hout = proj or H
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, Hout)), rng.standard_normal((B, H))
    lengths = np.array([6, 0, 3, 5]) if with_lengths else None
    weights = dict(
        weight_ih=p["weight_ih_l0" + sfx],
        weight_hh=p["weight_hh_l0" + sfx],
        bias_ih=p.get("bias_ih_l0" + sfx),
        bias_hh=p.get("bias_hh_l0" + sfx),
        weight_hr=p.get("weight_hr_l0" + sfx),
    )
    y, (h_n, c_n), ctx = lstm_layer_forward(x, h0, c0, **weights, lengths=lengths, reverse=reverse)

    # The reference runs a bidirectional layer when reverse: take its reverse half, feeding
    # the forward half zeros.
    D = 2 if reverse else 1
    H0 = np.zeros((D, B, Hout))
    H0[-1] = h0
    C0 = np.zeros((D, B, H))
    C0[-1] = c0
    ry, rh, rc, cache = reference_forward(
        p, x, H0, C0, num_layers=1, bidirectional=reverse, proj_size=proj, lengths=lengths
    )
    ry = ry[:, :, (D - 1) * Hout :]
    assert rel_err(y, ry) < 1e-12
    assert rel_err(h_n, rh[-1]) < 1e-12
    assert rel_err(c_n, rc[-1]) < 1e-12

    dy = rng.standard_normal(y.shape)
    dh_n, dc_n = rng.standard_normal((B, Hout)), rng.standard_normal((B, H))
    dx, (dh0, dc0), grads = lstm_layer_backward(ctx, dy, (dh_n, dc_n))
    DY = np.zeros(ry.shape[:2] + (D * Hout,))
    DY[:, :, (D - 1) * Hout :] = dy
    DH = np.zeros((D, B, Hout))
    DH[-1] = dh_n
    DC = np.zeros((D, B, H))
    DC[-1] = dc_n
    rdx, rdh0, rdc0, rgrads = reference_backward(cache, DY, DH, DC)
    assert rel_err(dx, rdx) < 1e-12
    assert rel_err(dh0, rdh0[-1]) < 1e-12
    assert rel_err(dc0, rdc0[-1]) < 1e-12
    for name, g in grads.items():
        assert rel_err(g, rgrads[name + "_l0" + sfx]) < 1e-12, name


def test_layer_forward_equals_one_layer_module_float32():
    lstm = el.LSTM(7, 24, seed=5)
    sd = lstm.state_dict()
    x = np.random.default_rng(0).standard_normal((9, 3, 7)).astype(np.float32)
    y, (h_n, c_n) = lstm(x)
    fy, (fh, fc), _ = lstm_layer_forward(
        x,
        np.zeros((3, 24), np.float32),
        np.zeros((3, 24), np.float32),
        sd["weight_ih_l0"],
        sd["weight_hh_l0"],
        sd["bias_ih_l0"],
        sd["bias_hh_l0"],
        training=False,
    )
    assert fy.dtype == np.float32
    np.testing.assert_array_equal(fy, y)
    np.testing.assert_array_equal(fh, h_n[0])
    np.testing.assert_array_equal(fc, c_n[0])


def test_layer_backward_refuses_a_used_context():
    rng = np.random.default_rng(0)
    w_ih, w_hh = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    y, _, ctx = lstm_layer_forward(
        rng.standard_normal((4, 1, 3)), np.zeros((1, 2)), np.zeros((1, 2)), w_ih, w_hh
    )
    lstm_layer_backward(ctx, np.ones_like(y))
    with pytest.raises(RuntimeError, match="already used"):
        lstm_layer_backward(ctx, np.ones_like(y))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(weight_ih=np.zeros((7, 3))), r"weight_ih must have shape \(4H, I\)"),
        (dict(weight_hh=np.zeros((8, 3))), r"weight_hh must have shape \(8, 2\), got \(8, 3\)"),
        (
            dict(bias_ih=np.zeros(8)),
            "bias_ih and bias_hh must be given together or not at all, got bias_ih only",
        ),
        (dict(x=np.zeros((4, 1, 5))), r"x must have shape \(T, B, 3\), got \(4, 1, 5\)"),
        (dict(h0=np.zeros((2, 2))), r"h0 must have shape \(1, 2\), got \(2, 2\)"),
        (dict(c0=np.zeros((1, 3))), r"c0 must have shape \(1, 2\), got \(1, 3\)"),
        (dict(weight_hr=np.zeros((1, 3))), r"weight_hr must have shape \(P, 2\), got \(1, 3\)"),
    ],
)
def test_layer_forward_rejects_bad_shapes_naming_the_argument(change, match):
    args = dict(
        x=np.zeros((4, 1, 3)),
        h0=np.zeros((1, 2)),
        c0=np.zeros((1, 2)),
        weight_ih=np.zeros((8, 3)),
        weight_hh=np.zeros((8, 2)),
    )
    args.update(change)
    with pytest.raises(ValueError, match=match):
        lstm_layer_forward(**args)


def test_layer_backward_rejects_a_wrong_d_output_shape():
    rng = np.random.default_rng(0)
    y, _, ctx = lstm_layer_forward(
        rng.standard_normal((4, 1, 3)),
        np.zeros((1, 2)),
        np.zeros((1, 2)),
        rng.standard_normal((8, 3)),
        rng.standard_normal((8, 2)),
    )
    with pytest.raises(ValueError, match=r"d_output must have shape \(4, 1, 2\), got \(4, 1, 3\)"):
        lstm_layer_backward(ctx, np.ones((4, 1, 3)))
