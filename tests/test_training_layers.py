"""Tests of the training layer's pieces: Linear, LSTMModel and the losses.

Witness: torch (float64) — the seed's own PyTorch ``LSTMModel`` class, defined here verbatim,
``nn.Linear``, ``MSELoss`` and ``CrossEntropyLoss`` — and central finite differences for Linear.
"""
# Sizes: N batch, L time steps, I input size, H hidden size, O output size, C classes.

import numpy as np
import pytest
import torch  # a hard import on purpose: the torch witness must never be silently skipped
import torch.nn as tnn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import eigenlstm as el
from seed_model import SeedLSTMModel

N, L, I, H, O = 5, 7, 10, 20, 2
RTOL, ATOL = 1e-10, 1e-12  # float64 vs float64: only summation order differs


@pytest.fixture
def float64_default():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the seed's torch.zeros then make float64 states
    yield
    torch.set_default_dtype(before)


def assert_close(actual, expected, name=""):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=name)


def to_torch(state):
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def torch_grads(module, prefix=""):
    return {prefix + k: p.grad.numpy() for k, p in module.named_parameters()}


def assert_forward_and_backward_match_torch(ours, theirs, x, dy):
    """ours(x), ours.backward(dy) and ours.grads equal torch module theirs' output and autograd
    gradients (same parameter names)."""
    y = ours(x)
    dx = ours.backward(dy)
    xt = torch.from_numpy(x).requires_grad_()
    yt = theirs(xt)
    yt.backward(torch.from_numpy(dy))
    assert_close(y, yt.detach().numpy(), "y")
    assert_close(dx, xt.grad.numpy(), "dx")
    grads = ours.grads
    for k, g in torch_grads(theirs).items():
        assert_close(grads[k], g, k)


# ---- Linear ------------------------------------------------------------------------------------
def test_linear_initialisation_is_uniform_within_torchs_bound():
    fc = el.Linear(50, 400, seed=0)
    bound = 1 / np.sqrt(50)
    assert np.abs(fc.weight).max() <= bound
    assert np.abs(fc.bias).max() <= bound
    assert np.abs(fc.weight).max() > 0.95 * bound  # spread over the whole interval
    assert abs(fc.weight.std() - bound / np.sqrt(3)) < 0.02 * bound


def test_linear_same_seed_gives_same_weights_and_other_seed_other_weights():
    a, b, c = el.Linear(4, 3, seed=1), el.Linear(4, 3, seed=1), el.Linear(4, 3, seed=2)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    assert not np.array_equal(a.weight, c.weight)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_and_backward_match_torch_float64(bias):
    rng = np.random.default_rng(0)
    fc = el.Linear(6, 4, bias=bias, dtype=np.float64, seed=0)
    ref = tnn.Linear(6, 4, bias=bias, dtype=torch.float64)
    ref.load_state_dict(to_torch(fc.state_dict()))
    x = rng.standard_normal((3, 5, 6))
    dy = rng.standard_normal((3, 5, 4))
    assert_forward_and_backward_match_torch(fc, ref, x, dy)


def test_linear_backward_matches_finite_differences_float64():
    rng = np.random.default_rng(1)
    fc = el.Linear(3, 2, dtype=np.float64, seed=0)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    fc(x)
    fc.backward(dy)
    eps = 1e-6
    for name, value in (("weight", fc.weight), ("bias", fc.bias)):
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            old = value[idx]
            value[idx] = old + eps
            up = np.sum(fc(x) * dy)
            value[idx] = old - eps
            down = np.sum(fc(x) * dy)
            value[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(fc.grads[name], numeric, rtol=1e-7, atol=1e-9)


def test_linear_backward_adds_into_gradients_and_zero_grad_clears_them():
    fc = el.Linear(3, 2, dtype=np.float64, seed=0)
    x, dy = np.ones((2, 3)), np.ones((2, 2))
    fc(x)
    fc.backward(dy)
    once = fc.grads["weight"]
    fc(x)
    fc.backward(dy)
    assert np.array_equal(fc.grads["weight"], 2 * once)
    fc.zero_grad()
    assert not fc.grads["weight"].any() and not fc.grads["bias"].any()


def test_linear_state_dict_round_trips_and_keeps_parameter_arrays_in_place():
    a, b = el.Linear(3, 2, seed=0), el.Linear(3, 2, seed=1)
    weight_array = next(b.parameters())
    b.load_state_dict(a.state_dict())
    assert next(b.parameters()) is weight_array and b.weight is weight_array
    assert np.array_equal(b.weight, a.weight) and np.array_equal(b.bias, a.bias)


def test_linear_load_state_dict_with_wrong_shape_names_the_key_and_changes_nothing():
    fc = el.Linear(3, 2, seed=0)
    before = fc.state_dict()
    with pytest.raises(
        ValueError, match=r"Linear.load_state_dict: bias must have shape \(2,\), got \(3,\)"
    ):
        fc.load_state_dict({"weight": np.zeros((2, 3)), "bias": np.zeros(3)})
    assert np.array_equal(fc.weight, before["weight"])


def test_linear_load_state_dict_with_missing_or_extra_keys_says_which():
    fc = el.Linear(3, 2, seed=0)
    with pytest.raises(ValueError, match=r"missing keys \['bias'\]; unexpected keys \['b'\]"):
        fc.load_state_dict({"weight": np.zeros((2, 3)), "b": np.zeros(2)})


def test_linear_forward_with_wrong_feature_count_names_the_expected_shape():
    with pytest.raises(
        ValueError,
        match=r"Linear.forward: x must have shape \(\.\.\., 3\) \(in_features\), got \(2, 4\)",
    ):
        el.Linear(3, 2)(np.zeros((2, 4)))


def test_linear_backward_without_a_training_forward_raises():
    fc = el.Linear(3, 2).eval()
    fc(np.zeros((1, 3)))
    with pytest.raises(RuntimeError, match="Linear.backward: no training-mode forward"):
        fc.backward(np.zeros((1, 2)))


def test_linear_with_bad_sizes_raises_naming_the_argument():
    with pytest.raises(ValueError, match="Linear: out_features must be >= 1, got 0"):
        el.Linear(3, 0)
    with pytest.raises(TypeError, match="Linear: dtype must be float32 or float64"):
        el.Linear(3, 2, dtype=np.int32)


# ---- LSTMModel vs the seed's PyTorch model -----------------------------------------------------
SEED_KEYS = [
    "lstm.weight_ih_l0",
    "lstm.weight_hh_l0",
    "lstm.bias_ih_l0",
    "lstm.bias_hh_l0",
    "fc.weight",
    "fc.bias",
]


def test_lstm_model_state_dict_keys_are_exactly_the_seed_models():
    ours = el.LSTMModel(I, H, O, seed=0)
    theirs = SeedLSTMModel(I, H, O)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == SEED_KEYS
    for k, v in theirs.state_dict().items():
        assert ours.state_dict()[k].shape == tuple(v.shape)


def test_seed_example_runs_and_maps_5_by_7_by_10_to_5_by_2():
    model = el.LSTMModel(input_size=10, hidden_size=20, output_size=2)
    x = np.random.default_rng(0).standard_normal((5, 7, 10))
    assert model(x).shape == (5, 2)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_weights_from_eigenlstm_give_the_seed_models_outputs_and_gradients(
    num_layers, float64_default
):
    rng = np.random.default_rng(num_layers)
    ours = el.LSTMModel(I, H, O, num_layers, dtype=np.float64, seed=3)
    theirs = SeedLSTMModel(I, H, O, num_layers)
    theirs.load_state_dict(to_torch(ours.state_dict()))
    x, dy = rng.standard_normal((N, L, I)), rng.standard_normal((N, O))
    assert_forward_and_backward_match_torch(ours, theirs, x, dy)


def test_weights_from_the_seed_model_load_into_eigenlstm_and_give_its_outputs(float64_default):
    torch.manual_seed(0)
    theirs = SeedLSTMModel(I, H, O, num_layers=2)
    ours = el.LSTMModel(I, H, O, 2, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((N, L, I))
    assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy())
    back = SeedLSTMModel(I, H, O, num_layers=2)
    back.load_state_dict(to_torch(ours.state_dict()))
    for k, v in back.state_dict().items():
        assert torch.equal(v, theirs.state_dict()[k])


def torch_last_step_model(ours, x, lengths, dy):
    """torch witness for LSTMModel with lengths/bidirectional: pack, unpack, take out[n, len-1]."""
    lstm = tnn.LSTM(
        ours.input_size,
        ours.hidden_size,
        ours.num_layers,
        batch_first=True,
        bidirectional=ours.bidirectional,
        dtype=torch.float64,
    )
    fc = tnn.Linear(ours.fc.in_features, ours.output_size, dtype=torch.float64)
    state = ours.state_dict()
    lstm.load_state_dict(to_torch({k[5:]: v for k, v in state.items() if k.startswith("lstm.")}))
    fc.load_state_dict(to_torch({k[3:]: v for k, v in state.items() if k.startswith("fc.")}))
    xt = torch.from_numpy(x).requires_grad_()
    if lengths is None:
        out, _ = lstm(xt)
        last = out[:, -1, :]
    else:
        packed = pack_padded_sequence(
            xt, torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
        )
        out, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])
        last = out[torch.arange(x.shape[0]), torch.from_numpy(lengths) - 1, :]
    y = fc(last)
    y.backward(torch.from_numpy(dy))
    grads = {**torch_grads(lstm, "lstm."), **torch_grads(fc, "fc.")}
    return y.detach().numpy(), xt.grad.numpy(), grads


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [None, [7, 3, 1, 5, 7]])
def test_last_step_with_lengths_and_bidirectional_matches_torch(bidirectional, lengths):
    rng = np.random.default_rng(7)
    lengths = None if lengths is None else np.array(lengths)
    ours = el.LSTMModel(4, 3, 2, 2, bidirectional=bidirectional, dtype=np.float64, seed=5)
    x, dy = rng.standard_normal((N, L, 4)), rng.standard_normal((N, 2))
    y = ours(x, lengths=lengths)
    dx = ours.backward(dy)
    y_ref, dx_ref, grads_ref = torch_last_step_model(ours, x, lengths, dy)
    assert_close(y, y_ref, "y")
    assert_close(dx, dx_ref, "dx")
    grads = ours.grads
    for k, g in grads_ref.items():
        assert_close(grads[k], g, k)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [None, [7, 3, 1, 5, 7]])
def test_eval_forward_matches_torch_and_the_training_mode_forward(
    dtype, rtol, bidirectional, lengths
):
    # In eval mode LSTMModel.forward is one engine call (LSTM, last step, Linear in C++).
    rng = np.random.default_rng(11)
    lengths = None if lengths is None else np.array(lengths)
    ours = el.LSTMModel(4, 20, 3, 2, bidirectional=bidirectional, dtype=dtype, seed=5)
    x = rng.standard_normal((N, L, 4)).astype(dtype)
    y_train = ours(x, lengths=lengths)
    y_eval = ours.eval()(x, lengths=lengths)
    y_ref, _, _ = torch_last_step_model(ours, x.astype(np.float64), lengths, np.zeros((N, 3)))
    assert y_eval.dtype == dtype and y_eval.shape == (N, 3)
    np.testing.assert_allclose(y_eval, y_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(y_eval, y_train, rtol=rtol, atol=rtol)
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        ours.backward(np.zeros((N, 3)))


def test_eval_forward_of_an_empty_batch_has_shape_0_by_o():
    model = el.LSTMModel(4, 20, 3).eval()
    y = model(np.zeros((0, 6, 4), np.float32))
    assert y.shape == (0, 3) and y.dtype == np.float32


def test_engine_forward_last_rechecks_the_shapes_that_could_corrupt_memory():
    # The binding checks again what LSTMModel.forward validated: a direct call with bad
    # shapes raises ValueError instead of reading out of bounds.
    model = el.LSTMModel(4, 3, 2)
    engine, w, b = model.lstm._engine, model.fc.weight, model.fc.bias
    x = np.zeros((2, 5, 4), np.float32)
    with pytest.raises(
        ValueError, match=r"forward_last: x must have shape \(2, 5, 4\), got \(2, 5, 3\)"
    ):
        engine.forward_last(np.zeros((2, 5, 3), np.float32), None, w, b, True)
    with pytest.raises(
        ValueError, match=r"forward_last: weight must have shape \(2, 3\), got \(2, 4\)"
    ):
        engine.forward_last(x, None, np.zeros((2, 4), np.float32), b, True)
    with pytest.raises(ValueError, match=r"forward_last: bias must have shape \(2,\), got \(3,\)"):
        engine.forward_last(x, None, w, np.zeros(3, np.float32), True)
    with pytest.raises(
        ValueError, match=r"forward_last: lengths must have shape \(2,\), got \(3,\)"
    ):
        engine.forward_last(x, np.ones(3, np.int64), w, b, True)
    with pytest.raises(ValueError, match=r"lengths\[1\] must be in \[1, 5\], got 0"):
        engine.forward_last(x, np.array([1, 0]), w, b, True)
    with pytest.raises(ValueError, match=r"T must be >= 1"):
        engine.forward_last(np.zeros((2, 0, 4), np.float32), None, w, b, True)


def test_lstm_model_with_the_same_seed_has_the_same_weights():
    a, b = el.LSTMModel(3, 4, 2, seed=11), el.LSTMModel(3, 4, 2, seed=11)
    for k, v in a.state_dict().items():
        assert np.array_equal(v, b.state_dict()[k])
    assert a.config() == b.config()


@pytest.mark.parametrize(
    "make",
    [lambda seed: el.LSTMModel(3, 4, 2, seed=seed), lambda seed: el.Linear(3, 2, seed=seed)],
    ids=["LSTMModel", "Linear"],
)
def test_a_negative_seed_is_a_value_error_and_a_seed_that_is_not_an_int_a_type_error(make):
    # As LSTM's (test_lstm_validation.py): one message for every module with a seed.
    name = make(0).__class__.__name__
    with pytest.raises(
        ValueError, match=rf"^{name}: seed must be a non-negative int or None, got -1$"
    ):
        make(-1)
    for seed, shown in [(1.5, "1.5"), ("1", "'1'"), (True, "True")]:
        with pytest.raises(
            TypeError, match=rf"^{name}: seed must be a non-negative int or None, got {shown}$"
        ):
            make(seed)


def test_lstm_model_forward_with_wrong_input_shape_names_the_expected_shape():
    model = el.LSTMModel(10, 20, 2)
    with pytest.raises(
        ValueError,
        match=r"LSTMModel.forward: x must have shape \(N, L, 10\) \(batch, steps, input_size\), got \(7, 10\)",
    ):
        model(np.zeros((7, 10)))


@pytest.mark.parametrize("training", [True, False])
def test_lstm_model_rejects_input_without_time_steps_in_both_modes(training):
    model = el.LSTMModel(10, 20, 2).train(training)
    with pytest.raises(
        ValueError,
        match=r"LSTMModel.forward: x must have at least one time step "
        r"\(the output is read at the last step\), got shape \(3, 0, 10\)",
    ):
        model(np.zeros((3, 0, 10)))


def test_lstm_model_rejects_zero_lengths_because_a_sequence_needs_a_last_step():
    model = el.LSTMModel(2, 3, 1)
    with pytest.raises(
        ValueError, match=r"lengths must be in \[1, 4\] \(each sequence needs a last step\), got 0"
    ):
        model(np.zeros((2, 4, 2)), lengths=[4, 0])


def test_lstm_model_backward_without_a_training_forward_raises():
    model = el.LSTMModel(2, 3, 1)
    with pytest.raises(RuntimeError, match="LSTMModel.backward: no training-mode forward"):
        model.backward(np.zeros((1, 1)))


def test_lstm_model_load_state_dict_is_all_or_nothing():
    model = el.LSTMModel(2, 3, 1, seed=0)
    before = model.state_dict()
    bad = dict(el.LSTMModel(2, 3, 1, seed=1).state_dict())
    bad["fc.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"fc.bias must have shape \(1,\), got \(5,\)"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k])


# ---- losses ------------------------------------------------------------------------------------
def assert_loss_matches_torch(loss, torch_loss, prediction, target):
    """loss(prediction, target) returns torch_loss's value and its gradient by prediction."""
    value, grad = loss(prediction, target)
    pt = torch.from_numpy(prediction).requires_grad_()
    ref = torch_loss(pt, torch.from_numpy(target))
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-12)
    assert_close(grad, pt.grad.numpy())


def test_mse_loss_value_and_gradient_match_torch():
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    assert_loss_matches_torch(el.mse_loss, tnn.MSELoss(), p, t)


def test_cross_entropy_value_and_gradient_match_torch():
    rng = np.random.default_rng(1)
    z, y = rng.standard_normal((8, 5)), rng.integers(0, 5, 8)
    assert_loss_matches_torch(el.cross_entropy, tnn.CrossEntropyLoss(), z, y)


def test_cross_entropy_is_finite_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [3e4, 3e4, 3e4]])
    value, grad = el.cross_entropy(z, np.array([1, 2]))
    ref = tnn.CrossEntropyLoss()(torch.from_numpy(z), torch.tensor([1, 2])).item()
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert value == pytest.approx(ref, rel=1e-12)


def test_cross_entropy_with_a_label_out_of_range_names_the_label_and_the_class_count():
    with pytest.raises(
        ValueError,
        match=r"cross_entropy: labels must be class indices in \[0, 3\) for 3 classes, got 3",
    ):
        el.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"got -1"):
        el.cross_entropy(np.zeros((2, 3)), np.array([-1, 0]))


def test_cross_entropy_with_fractional_labels_raises_type_error():
    with pytest.raises(TypeError, match="labels must be integer class indices, got dtype float64"):
        el.cross_entropy(np.zeros((2, 3)), np.array([0.5, 1.0]))


def test_cross_entropy_with_mismatched_label_count_raises():
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\), got \(3,\)"):
        el.cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))


def test_mse_loss_with_mismatched_shapes_names_both():
    with pytest.raises(
        ValueError, match=r"mse_loss: target must have the prediction's shape \(2, 1\), got \(2,\)"
    ):
        el.mse_loss(np.zeros((2, 1)), np.zeros(2))


def test_calling_a_module_runs_its_own_classes_forward():
    class Base(el.nn.Module):
        def forward(self, x, *, scale=1):
            return ("base", x * scale)

    class Override(Base):
        def forward(self, x):
            return ("override", x)

    class Inherit(Base):
        pass

    class OwnCall(Base):
        def __call__(self, x):
            return ("call", x)

    class BelowOwnCall(OwnCall):
        def forward(self, x):
            return ("below", x)

    assert Base()(2, scale=3) == ("base", 6)
    assert Override()(2) == ("override", 2)
    assert Inherit()(2, scale=2) == ("base", 4)
    assert OwnCall()(2) == ("call", 2)
    assert BelowOwnCall()(2) == ("call", 2)
    with pytest.raises(NotImplementedError):
        el.nn.Module()(1)
