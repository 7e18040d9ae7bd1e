"""Truncated BPTT and stateful training: ``Trainer.fit(..., tbptt=k, stateful=True)`` with a
per-step ``LSTMModel(..., many_to_many=True)``, and ``sequence_loss``.

Witnesses: the float64 NumPy LSTM of tests/reference.py driven by a hand-written chunked loop
(cross-entropy, SGD), torch (a per-step ``nn.LSTM`` + ``nn.Linear`` trained with ``detach()``
between chunks), full forwards and streams for the carried state, and full BPTT itself for
``tbptt >= L``. Then every bad argument, checkpoints, rollback and the char-LM example.
"""
# Sizes: N samples, L time steps, I input size, H hidden size, O outputs (classes), k chunk.

import io

import numpy as np
import pytest
import torch  # a hard import on purpose: the torch witness must never be silently skipped
import torch.nn as tnn

import eigenlstm as el

N, L, I, H, O = 6, 11, 3, 5, 4


def data(seed=0, N=N, L=L, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, L, I)).astype(dtype)
    y = rng.integers(0, O, (N, L))
    return x, y


def model(dtype=np.float64, seed=1, **kw):
    return el.LSTMModel(I, H, O, many_to_many=True, dtype=dtype, seed=seed, **kw)


class Spy(el.LSTMModel):
    """A per-step LSTMModel that records every training-mode call: the chunk it saw, the
    state it started from and the weights it ran with."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = []

    def forward(self, x, *, lengths=None, state=None, return_state=False):
        if self.training:
            self.calls.append(
                {
                    "x": np.array(x),
                    "lengths": None if lengths is None else np.array(lengths),
                    "state": None if state is None else (state[0].copy(), state[1].copy()),
                    "weights": self.state_dict(),
                }
            )
        return super().forward(x, lengths=lengths, state=state, return_state=return_state)


def spy(dtype=np.float64, **kw):
    return Spy(I, H, O, many_to_many=True, dtype=dtype, seed=1, **kw)


def same_state(a, b):
    """Whether two state dicts hold the same arrays, bit for bit."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def same_weights(a, b):
    return same_state(a.state_dict(), b.state_dict())


def torch_pair(m):
    """torch's per-step model with ``m``'s weights: nn.LSTM (batch first) and nn.Linear."""
    lstm = tnn.LSTM(I, H, batch_first=True).double()
    fc = tnn.Linear(H, O).double()
    sd = {k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()}
    lstm.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("lstm.")})
    fc.load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("fc.")})
    return lstm, fc


SGD = dict(optimizer="sgd", lr=0.5, progress=False, seed=0, loss="cross_entropy")


# ---- the per-step model ----------------------------------------------------------------------
def test_a_per_step_model_applies_the_head_at_every_step_and_the_bias_past_a_length():
    m = model().eval()
    x, _ = data()
    lengths = np.array([11, 4, 0, 7, 1, 11])
    y, (h_n, c_n) = m(x, lengths=lengths, return_state=True)
    out, (h_ref, c_ref) = m.lstm(x, lengths=lengths)
    assert y.shape == (N, L, O)
    np.testing.assert_array_equal(y, out @ m.fc.weight.T + m.fc.bias)
    np.testing.assert_array_equal(y[1, 4:], np.broadcast_to(m.fc.bias, (L - 4, O)))
    assert np.array_equal(h_n, h_ref) and np.array_equal(c_n, c_ref)
    assert m.predict(x, batch_size=4, lengths=lengths).shape == (N, L, O)
    assert m.predict(x[:0]).shape == (0, L, O)
    # a stream applies the same head at every step
    steps = m.stream(batch_size=N)(x)
    np.testing.assert_allclose(steps, m(x), rtol=1e-12, atol=1e-12)


def test_a_per_step_model_backward_matches_torch_float64():
    m = model()
    x, _ = data()
    d_y = np.random.default_rng(3).standard_normal((N, L, O))
    h0 = np.random.default_rng(4).standard_normal((1, N, H))
    c0 = np.random.default_rng(5).standard_normal((1, N, H))
    y, (h_n, _) = m(x, state=(h0, c0), return_state=True)
    m.zero_grad()
    dx = m.backward(d_y)
    lstm, fc = torch_pair(m)
    tx = torch.from_numpy(x).requires_grad_()
    th0, tc0 = (torch.from_numpy(s).requires_grad_() for s in (h0, c0))
    out, (t_h, _) = lstm(tx, (th0, tc0))
    ty = fc(out)
    (ty * torch.from_numpy(d_y)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_n, t_h.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for key, grad in m.grads.items():
        module, name = key.split(".", 1)
        want = dict((lstm if module == "lstm" else fc).named_parameters())[name].grad
        np.testing.assert_allclose(grad, want.numpy(), rtol=1e-10, atol=1e-12, err_msg=key)


def test_a_per_step_model_round_trips_through_a_checkpoint_of_format_version_5(tmp_path):
    m = model()
    el.save(m, tmp_path / "m.npz")
    back = el.load(tmp_path / "m.npz")
    assert back.many_to_many and back.config() == m.config() and same_weights(back, m)
    assert "many_to_many" not in el.LSTMModel(I, H, O).config()
    with np.load(tmp_path / "m.npz") as z:
        assert '"format_version": 5' in str(z["meta"][()])
    assert "many_to_many=True" in repr(m)


def test_a_per_step_model_is_refused_where_only_a_last_step_head_can_go():
    m = model()
    with pytest.raises(TypeError, match=r"LSTMModel: many_to_many must be a bool, got str 'yes'"):
        el.LSTMModel(I, H, O, many_to_many="yes")
    with pytest.raises(
        ValueError,
        match=r"quantize: module must be an LSTMModel with its head on the last step .* got many_to_many=True",
    ):
        el.quantize(m, "int8")
    pytest.importorskip("onnx")
    buf = io.BytesIO()
    with pytest.raises(
        ValueError,
        match=r"eigenlstm.onnx.export: module must be an LSTMModel with its head on the last step .* got many_to_many=True",
    ):
        el.onnx.export(m, buf)
    assert buf.getvalue() == b""


# ---- sequence_loss ---------------------------------------------------------------------------
def test_sequence_loss_is_torchs_loss_over_the_valid_steps_and_zero_past_them():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((N, L, O))
    labels = rng.integers(0, O, (N, L))
    lengths = np.array([11, 4, 0, 7, 1, 11])
    value, grad, steps = el.sequence_loss(el.cross_entropy, logits, labels, lengths)
    valid = np.arange(L) < lengths[:, None]
    t = torch.from_numpy(logits).requires_grad_()
    want = tnn.CrossEntropyLoss()(t[torch.from_numpy(valid)], torch.from_numpy(labels[valid]))
    want.backward()
    assert steps == lengths.sum()
    np.testing.assert_allclose(value, want.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert not grad[~valid].any()
    # mse without lengths is mse_loss of the whole array
    target = rng.standard_normal((N, L, O))
    value, grad, steps = el.sequence_loss(el.mse_loss, logits, target)
    whole, whole_grad = el.mse_loss(logits, target)
    assert (value, steps) == (whole, N * L) and np.array_equal(grad, whole_grad)


def test_sequence_loss_names_what_does_not_fit():
    p = np.zeros((2, 3, 4))
    with pytest.raises(
        ValueError, match=r"sequence_loss: prediction must have shape \(N, L, C\), got \(3, 4\)"
    ):
        el.sequence_loss(el.mse_loss, p[0], p[0])
    with pytest.raises(
        ValueError,
        match=r"sequence_loss: target must have shape \(2, 3, \.\.\.\) \(samples, steps\), got \(2, 4\)",
    ):
        el.sequence_loss(el.cross_entropy, p, np.zeros((2, 4), np.int64))
    with pytest.raises(
        ValueError, match=r"sequence_loss: lengths must have shape \(2,\), got \(3,\)"
    ):
        el.sequence_loss(el.cross_entropy, p, np.zeros((2, 3), np.int64), np.ones(3, np.int64))
