"""Accuracy of the engine's gate nonlinearities against float64, measured through the engine.

A one-unit, one-step LSTM with chosen biases exposes one nonlinearity in c_n:
  sigmoid: pre_i = x, g = tanh(40) = 1, f = sigma(-40) = 0  ->  c_n = sigma(x)
  tanh:    pre_g = x, i = sigma(40) = 1, f = 0              ->  c_n = tanh(x)
(sigma(40) and tanh(40) round to exactly 1 and sigma(-40) = 4e-18 is below float32's
resolution next to the other term, so c_n carries the one function alone.)
Measured on x in [-20, 20] (400001 points), AVX2 build: float32 sigma max abs error 8.9e-8,
max rel 1.8e-7; float32 tanh max abs and rel error 2.6e-7 (about 4 ulp near |tanh| = 1);
float64 both below 2.3e-16. The bounds below leave a little room for other SIMD widths.
"""

import numpy as np
import pytest

import eigenlstm as el

X = np.linspace(-20.0, 20.0, 400001)


def engine_activation(which, x, dtype):
    lstm = el.LSTM(1, 1, dtype=dtype, seed=0)
    big = 40.0
    w = np.zeros((4, 1))
    b = np.array([0.0, -big, 0.0, big])
    if which == "sigmoid":
        w[0], b[2] = 1.0, big
    else:
        w[2], b[0] = 1.0, big
    lstm.load_state_dict(
        {
            "weight_ih_l0": w,
            "weight_hh_l0": np.zeros((4, 1)),
            "bias_ih_l0": b,
            "bias_hh_l0": np.zeros(4),
        }
    )
    lstm.eval()
    _, (_, c_n) = lstm(x.reshape(1, -1, 1))
    return c_n[0, :, 0].astype(np.float64)


def reference(which, x):
    return 1.0 / (1.0 + np.exp(-x)) if which == "sigmoid" else np.tanh(x)


@pytest.mark.parametrize(
    "which, dtype, max_abs, max_rel",
    [
        ("sigmoid", np.float32, 2e-7, 3e-7),
        ("tanh", np.float32, 4e-7, 4e-7),
        ("sigmoid", np.float64, 5e-16, 5e-15),
        ("tanh", np.float64, 5e-16, 5e-16),
    ],
)
def test_gate_nonlinearity_error_against_float64_is_bounded(which, dtype, max_abs, max_rel):
    x = X.astype(dtype)
    got = engine_activation(which, x, dtype)
    want = reference(which, x.astype(np.float64))
    err = np.abs(got - want)
    assert err.max() <= max_abs
    nonzero = want != 0  # tanh(0) = 0 exactly; its absolute error is checked above
    assert (err[nonzero] / np.abs(want[nonzero])).max() <= max_rel


def test_gate_nonlinearities_saturate_exactly_and_propagate_nan():
    x = np.array([-1e4, -100.0, 100.0, 1e4, np.nan], dtype=np.float32)
    assert np.array_equal(engine_activation("sigmoid", x, np.float32)[:4], [0.0, 0.0, 1.0, 1.0])
    assert np.array_equal(engine_activation("tanh", x, np.float32)[:4], [-1.0, -1.0, 1.0, 1.0])
    assert np.isnan(engine_activation("sigmoid", x, np.float32)[4])
    assert np.isnan(engine_activation("tanh", x, np.float32)[4])
