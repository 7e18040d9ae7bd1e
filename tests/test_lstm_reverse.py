"""``el.LSTM(reverse=True)``: every layer runs backwards in time (ONNX's direction="reverse").

The witness is torch.nn.LSTM on each sequence's valid steps reversed, its outputs reversed
back: that is what a reverse LSTM computes, and what a bidirectional LSTM's reverse direction
does alone.
"""

import numpy as np
import pytest
import torch

import eigenlstm as el

T, N, I, H = 6, 4, 3, 5
LENGTHS = np.array([6, 3, 1, 5])


def flip_valid(a, lengths):
    """a (T, N, ...) with each sequence's first lengths[n] steps in reversed order."""
    out = a.copy()
    for n, k in enumerate(lengths):
        out[:k, n] = a[:k, n][::-1]
    return out


def torch_reverse(lstm, x, lengths, state, dy):
    """Outputs, final states and every gradient of torch's LSTM run on flipped sequences."""
    t = torch.nn.LSTM(I, H, lstm.num_layers, proj_size=lstm.proj_size, dtype=torch.float64)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    xt = torch.tensor(flip_valid(x, lengths), requires_grad=True)
    h0, c0 = (torch.tensor(s, requires_grad=True) for s in state)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        xt, torch.from_numpy(lengths), enforce_sorted=False
    )
    y, (h_n, c_n) = t(packed, (h0, c0))
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=T)
    y_back = flip_valid(y.detach().numpy(), lengths)
    (y * torch.from_numpy(flip_valid(dy, lengths))).sum().backward()
    grads = {k: p.grad.numpy() for k, p in t.named_parameters()}
    dx = flip_valid(xt.grad.numpy(), lengths)
    return y_back, h_n.detach().numpy(), c_n.detach().numpy(), dx, h0.grad.numpy(), grads


@pytest.mark.usefixtures("torch_single_threaded")
@pytest.mark.parametrize("L, P", [(1, 0), (2, 0), (2, 2)], ids=["L1", "L2", "L2-proj"])
def test_a_reverse_lstm_is_torch_on_reversed_sequences_forward_and_backward(L, P):
    rng = np.random.default_rng(L + P)
    lstm = el.LSTM(I, H, L, proj_size=P, reverse=True, dtype=np.float64, seed=3)
    Hout = P or H
    x = rng.standard_normal((T, N, I))
    state = rng.standard_normal((L, N, Hout)), rng.standard_normal((L, N, H))
    y, (h_n, c_n) = lstm(x, state, lengths=LENGTHS)
    dy = rng.standard_normal(y.shape)
    for n, k in enumerate(LENGTHS):
        dy[k:, n] = 0  # torch's padded outputs are constants: no gradient flows from them
    lstm.zero_grad()
    dx, (dh0, _) = lstm.backward(dy)
    y_t, h_t, c_t, dx_t, dh0_t, grads_t = torch_reverse(lstm, x, LENGTHS, state, dy)
    np.testing.assert_allclose(y, y_t, atol=1e-12)
    np.testing.assert_allclose(h_n, h_t, atol=1e-12)
    np.testing.assert_allclose(c_n, c_t, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, atol=1e-12)
    np.testing.assert_allclose(dh0, dh0_t, atol=1e-12)
    for name, p in lstm.named_parameters():
        np.testing.assert_allclose(p.grad, grads_t[name], atol=1e-12, err_msg=name)


def test_a_reverse_layer_is_the_reverse_direction_of_a_bidirectional_one():
    rng = np.random.default_rng(0)
    bi = el.LSTM(I, H, bidirectional=True, seed=1)
    rev = el.LSTM(I, H, reverse=True, seed=1)
    rev.load_state_dict(
        {k.replace("_reverse", ""): v for k, v in bi.state_dict().items() if "_reverse" in k}
    )
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    y_bi, (h_bi, _) = bi(x, lengths=LENGTHS)
    y, (h, _) = rev(x, lengths=LENGTHS)
    np.testing.assert_array_equal(y, y_bi[..., H:])
    np.testing.assert_array_equal(h[0], h_bi[1])


def test_reverse_options_are_checked_and_shown():
    lstm = el.LSTM(I, H, reverse=True)
    assert repr(lstm).startswith("LSTM(3, 5, reverse=True")
    assert list(lstm.state_dict())[:2] == ["weight_ih_l0", "weight_hh_l0"]
    with pytest.raises(ValueError, match="already has a reverse direction"):
        el.LSTM(I, H, bidirectional=True, reverse=True)
    with pytest.raises(TypeError, match="reverse must be a bool, got str"):
        el.LSTM(I, H, reverse="yes")


def test_what_a_reverse_lstm_cannot_do_is_refused_by_name(tmp_path):
    lstm = el.LSTM(I, H, reverse=True, batch_first=True)
    with pytest.raises(ValueError, match="run forward in time to stream.*got reverse=True"):
        lstm.stream(2)
    with pytest.raises(ValueError, match="reverse=True has no reduced-precision engine"):
        el.quantize(lstm, "int8")
    model = el.Sequential([lstm, el.Linear(H, 1)], return_sequences=[False])
    with pytest.raises(ValueError, match="reverse=True cannot be written"):
        el.keras.save(model, tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()
