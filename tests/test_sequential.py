"""el.Sequential: layers run in order with Keras's return_sequences semantics; bad stacks are
refused by name."""

import numpy as np
import pytest

import eigenlstm as el


def test_sequential_runs_its_layers_in_order_with_keras_last_state_semantics():
    lstm = el.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True, seed=0)
    fc = el.Linear(8, 2, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 6, 3)).astype(np.float32)
    lstm.eval()
    out, (h_n, _) = lstm(x)
    # return_sequences=False: the last layer's final states, forward then reverse direction.
    last = np.concatenate([h_n[-2], h_n[-1]], axis=1)
    got = el.Sequential([lstm, fc], return_sequences=[False]).predict(x, batch_size=2)
    np.testing.assert_allclose(got, last @ fc.weight.T + fc.bias, rtol=0, atol=1e-6)
    # return_sequences=True: the Linear layer acts at every step.
    got = el.Sequential([lstm, fc]).predict(x)
    np.testing.assert_allclose(got, out @ fc.weight.T + fc.bias, rtol=0, atol=1e-6)
    assert sorted(el.Sequential([lstm, fc]).state_dict())[:2] == [
        "0.bias_hh_l0",
        "0.bias_hh_l0_reverse",
    ]


def test_sequential_refuses_bad_stacks_naming_the_layer():
    lstm = el.LSTM(3, 4, batch_first=True, seed=0)
    with pytest.raises(ValueError, match="layers must hold at least one layer, got none"):
        el.Sequential([])
    with pytest.raises(TypeError, match=r"layers\[1\] must be an LSTM or a Linear, got str"):
        el.Sequential([lstm, "dense"])
    with pytest.raises(ValueError, match=r"layers\[0\] must be an LSTM with batch_first=True"):
        el.Sequential([el.LSTM(3, 4, seed=0)])
    with pytest.raises(TypeError, match=r"layers\[1\] must have dtype float32, got float64"):
        el.Sequential([lstm, el.Linear(4, 2, dtype=np.float64)])
    with pytest.raises(
        ValueError, match=r"return_sequences must have one flag per LSTM \(1\), got 2"
    ):
        el.Sequential([lstm], return_sequences=[True, False])
    with pytest.raises(ValueError, match=r"layers\[1\] must take 4 input features, got 5"):
        el.Sequential([lstm, el.Linear(5, 2)])
    with pytest.raises(ValueError, match=r"x must have shape \(N, T, 3\), got \(2, 3\)"):
        el.Sequential([lstm]).predict(np.zeros((2, 3)))
