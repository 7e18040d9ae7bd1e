"""torch tensors as inputs: tensors that require grad are taken (detached); a PackedSequence is
refused with what to pass instead, never with NumPy's "setting an array element" error."""

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import eigenlstm as el
from eigenlstm.functional import lstm_layer_forward

T, N, I, H = 5, 3, 4, 6


def _grad_tensor(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_lstm_forward_and_backward_take_tensors_that_require_grad():
    lstm = el.LSTM(I, H, dtype=np.float64, seed=0)
    x, h0, c0 = _grad_tensor(T, N, I), _grad_tensor(1, N, H), _grad_tensor(1, N, H)
    out, (h_n, c_n) = lstm(x, (h0, c0))
    ref, (ref_h, ref_c) = lstm(x.detach().numpy(), (h0.detach().numpy(), c0.detach().numpy()))
    assert np.array_equal(out, ref) and np.array_equal(h_n, ref_h) and np.array_equal(c_n, ref_c)
    dx, _ = lstm.backward(torch.ones(T, N, H, requires_grad=True, dtype=torch.float64))
    assert dx.shape == (T, N, I)


def test_model_loading_and_training_take_tensors_that_require_grad():
    torch.manual_seed(0)
    model = el.LSTMModel(I, H, 2, seed=0)
    # named_parameters() of a torch model yields tensors that require grad.
    from_torch = el.LSTMModel(I, H, 2, seed=1)
    tm = torch.nn.LSTM(I, H, batch_first=True)
    params = {f"lstm.{k}": v for k, v in tm.named_parameters()}
    params.update({f"fc.{k}": v for k, v in torch.nn.Linear(H, 2).named_parameters()})
    from_torch.load_state_dict(params)
    assert np.allclose(
        from_torch.state_dict()["lstm.weight_ih_l0"], tm.weight_ih_l0.detach().numpy()
    )
    x, y = _grad_tensor(8, T, I), _grad_tensor(8, 2)
    history = el.Trainer(model).fit(x, y, epochs=1, batch_size=4, progress=False, seed=0)
    assert len(history.history["loss"]) == 1
    value, _ = el.mse_loss(_grad_tensor(4, 2), _grad_tensor(4, 2))
    assert np.isfinite(value)


def test_functional_and_linear_take_tensors_that_require_grad():
    w_ih, w_hh = _grad_tensor(4 * H, I), _grad_tensor(4 * H, H)
    y, _, _ = lstm_layer_forward(
        _grad_tensor(T, N, I), _grad_tensor(N, H), _grad_tensor(N, H), w_ih, w_hh
    )
    assert y.shape == (T, N, H)
    fc = el.Linear(I, 2, dtype=np.float64, seed=0)
    assert fc(_grad_tensor(N, I)).shape == (N, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: el.LSTM(I, H, seed=0)(p),
        lambda p: el.LSTMModel(I, H, 1, seed=0)(p),
        lambda p: el.Trainer(el.LSTMModel(I, H, 1, seed=0)).fit(p, np.zeros(N), progress=False),
    ],
    ids=["LSTM.forward", "LSTMModel.forward", "Trainer.fit"],
)
def test_a_packed_sequence_is_refused_with_what_to_pass_instead(call):
    packed = pack_padded_sequence(torch.zeros(T, N, I), [5, 4, 2])
    with pytest.raises(
        TypeError,
        match=r"x must be an array, got a torch PackedSequence; pass the "
        r"padded batch and its lengths instead \(x, lengths = "
        r"torch\.nn\.utils\.rnn\.pad_packed_sequence\(packed\)",
    ):
        call(packed)
