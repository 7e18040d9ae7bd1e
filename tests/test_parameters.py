"""torch's parameter conventions: parameters() and named_parameters() yield the modules' own
arrays (views of their storage) with .grad, and optimizers take them as torch.optim does."""

import copy

import numpy as np
import pytest
import torch

import eigenlstm as el
from seed_model import SeedLSTMModel


def _models():
    return {
        "LSTMModel": el.LSTMModel(3, 5, 2, num_layers=2, bidirectional=True, seed=0),
        "LSTM proj": el.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4, seed=0),
        "Linear": el.Linear(3, 2, seed=0),
        "Sequential": el.Sequential(
            [el.LSTM(3, 4, batch_first=True, seed=0), el.Linear(4, 2, seed=1)],
            return_sequences=[False],
        ),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_named_parameters_are_the_state_dict_in_order_as_live_arrays_with_their_grads(name):
    model = _models()[name]
    named = list(model.named_parameters())
    sd = model.state_dict()
    assert [n for n, _ in named] == list(sd)
    params = list(model.parameters())
    assert len(params) == len(named) and all(a is b for a, (_, b) in zip(params, named))
    for n, p in named:
        assert isinstance(p, el.nn.Parameter) and isinstance(p, np.ndarray)
        assert np.array_equal(p, sd[n]) and p.grad.shape == p.shape and p.grad.dtype == p.dtype
        assert not np.shares_memory(sd[n], p)  # state_dict copies; parameters are the arrays


# The NumPy writes a parameter takes, each as (write, what it sets the values to). None of
# them is followed by params_updated(): the parameter tells its module.
WRITES = {
    "p[...] = v": (lambda p: p.__setitem__(..., p * 0.5), lambda v: v * 0.5),
    "p[0, 1] = v": (lambda p: p.__setitem__((0, 1), 3.0), lambda v: _set(v, (0, 1), 3.0)),
    "p *= v": (lambda p: p.__imul__(0.5), lambda v: v * 0.5),
    "np.clip(out=p)": (lambda p: np.clip(p, -0.1, 0.1, out=p), lambda v: np.clip(v, -0.1, 0.1)),
    "np.add.at(p)": (lambda p: np.add.at(p, (0, 1), 1.0), lambda v: _set(v, (0, 1), v[0, 1] + 1)),
    "p.fill(v)": (lambda p: p.fill(0.25), lambda v: np.full_like(v, 0.25)),
    "p[0] += v": (lambda p: p[0].__iadd__(1.0), lambda v: _set(v, 0, v[0] + 1)),
    "p[0][...] = v": (lambda p: p[0].__setitem__(..., 2.0), lambda v: _set(v, 0, 2.0)),
    "p[:, 1] *= v": (
        lambda p: p[:, 1].__imul__(3.0),
        lambda v: _set(v, (slice(None), 1), v[:, 1] * 3),
    ),
}


def _set(value, index, new):
    value = value.copy()
    value[index] = new
    return value


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("module", ["LSTM", "LSTMModel"])
def test_a_numpy_write_into_a_parameter_is_seen_by_the_next_forward(module, write):
    # The engine computes with packed copies of the weights: a write it were not told of
    # would be a silently wrong answer.
    make = {
        "LSTM": lambda: el.LSTM(3, 5, num_layers=2, proj_size=2, seed=0),
        "LSTMModel": lambda: el.LSTMModel(3, 5, 2, seed=0),
    }[module]
    model, loaded = make(), make()
    x = np.random.default_rng(0).standard_normal((6, 4, 3))
    model(x)  # the weights are packed and in use before the write
    do, expect = WRITES[write]
    new = model.state_dict()
    for n, p in model.named_parameters():
        if p.ndim == 2:
            do(p)
            new[n] = expect(new[n]).astype(p.dtype)
    loaded.load_state_dict(new)
    assert all(np.array_equal(v, new[n]) for n, v in model.state_dict().items())
    assert np.array_equal(
        model(x)[0] if module == "LSTM" else model(x),
        loaded(x)[0] if module == "LSTM" else loaded(x),
    )


def test_an_in_place_operator_keeps_the_attribute_the_same_parameter():
    fc, lstm = el.Linear(3, 2, seed=0), el.LSTM(3, 4, seed=0)
    weight, weight_ih = fc.weight, lstm.weight_ih_l0
    fc.weight += 1.0
    lstm.weight_ih_l0 -= 1.0
    assert fc.weight is weight and lstm.weight_ih_l0 is weight_ih
    assert next(lstm.parameters()) is weight_ih and next(fc.parameters()) is weight


UNSEEN_WRITES = {
    "np.copyto": lambda p: np.copyto(p, 0.0),
    "np.copyto into a row": lambda p: np.copyto(p[0], 0.0),
    "a reshape": lambda p: p.reshape(-1).__setitem__(0, 0.0),
    "a transpose": lambda p: p.T.__setitem__(..., 0.0),
    "np.ndarray.fill on a view": lambda p: p.view(np.ndarray).fill(0.0),
}


@pytest.mark.parametrize("write", list(UNSEEN_WRITES))
def test_a_write_the_module_cannot_see_raises_and_changes_nothing(write):
    lstm = el.LSTM(3, 4, seed=0)
    before = lstm.state_dict()
    with pytest.raises(ValueError, match="read-only"):
        UNSEEN_WRITES[write](lstm.weight_hh_l0)
    assert all(np.array_equal(v, before[n]) for n, v in lstm.state_dict().items())


def test_a_write_that_fails_leaves_the_old_values_and_the_module_in_step():
    lstm = el.LSTM(3, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    before, y = lstm.state_dict(), lstm(x)[0]
    p = lstm.weight_hh_l0
    with np.errstate(divide="raise"), pytest.raises(FloatingPointError):
        np.divide(p, 0.0, out=p)  # NumPy writes inf, then raises
    assert all(np.array_equal(v, before[n]) for n, v in lstm.state_dict().items())
    assert np.array_equal(lstm(x)[0], y)


def test_a_ufunc_with_two_outputs_returns_the_parameter_and_its_own_result():
    p = el.LSTM(3, 4, seed=0).weight_ih_l0
    value = p.copy()
    frac, whole = np.modf(p * 3, out=(p, None))
    assert frac is p and type(whole) is np.ndarray
    np.testing.assert_array_equal(whole + p, value * 3)


def test_an_index_that_copies_gives_a_plain_array():
    p = el.LSTM(3, 4, seed=0).weight_ih_l0
    rows = p[[0, 2]]
    assert type(rows) is np.ndarray and rows.flags.writeable
    rows[...] = 0  # a copy: the parameter is untouched
    assert p[0].any()


def test_grad_is_the_gradient_by_the_same_name_and_backward_adds_into_it():
    model = el.LSTMModel(3, 5, 2, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 6, 3))
    model.zero_grad()
    model.backward(np.ones_like(model(x)))
    grads = model.grads
    for n, p in model.named_parameters():
        assert np.array_equal(p.grad, grads[n]), n
    model.backward(np.ones_like(model(x)))
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * grads[n], rtol=1e-12, err_msg=n)
    model.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


def test_arithmetic_on_a_parameter_gives_plain_arrays_and_copies_are_plain():
    p = el.LSTM(3, 4, seed=0).weight_ih_l0
    assert type(p * 2) is np.ndarray and type(p.sum()) is not el.nn.Parameter
    assert type(copy.deepcopy(p)) is np.ndarray and np.array_equal(copy.deepcopy(p), p)
    with pytest.raises(AttributeError, match="'LSTM' object has no attribute 'weight_ih_l9'"):
        _ = el.LSTM(3, 4, seed=0).weight_ih_l9


def test_the_torch_training_loop_runs_as_written_and_matches_torch():
    # The loop torch users write, in float64 on the seed's model, against torch itself.
    torch.manual_seed(0)
    tm = SeedLSTMModel(3, 6, 2, num_layers=2).double()
    em = el.LSTMModel(3, 6, 2, num_layers=2, dtype=np.float64, seed=0)
    em.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 5, 3)), rng.standard_normal((8, 2))
    t_opt = torch.optim.Adam(tm.parameters(), lr=1e-2, weight_decay=1e-3)
    e_opt = el.optim.Adam(em.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(5):
        t_opt.zero_grad()
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # the seed's zero states take the default dtype
        try:
            loss = torch.nn.functional.mse_loss(tm(torch.from_numpy(x)), torch.from_numpy(y))
        finally:
            torch.set_default_dtype(default)
        loss.backward()
        t_opt.step()
        e_opt.zero_grad()
        value, grad = el.mse_loss(em(x), y)
        em.backward(grad)
        e_opt.step()
        assert value == pytest.approx(loss.item(), rel=1e-10)
    for n, p in em.named_parameters():
        np.testing.assert_allclose(p, tm.state_dict()[n].numpy(), rtol=1e-9, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("opt_cls", [el.optim.SGD, el.optim.Adam, el.optim.AdamW])
def test_an_lstm_updated_as_one_buffer_matches_one_update_per_tensor_bitwise(opt_cls):
    kwargs = {"lr": 1e-2, "momentum": 0.9} if opt_cls is el.optim.SGD else {"lr": 1e-2}
    fused, split = (el.LSTM(3, 5, num_layers=2, bidirectional=True, seed=0) for _ in range(2))
    x = np.random.default_rng(0).standard_normal((6, 4, 3)).astype(np.float32)
    opt_fused = opt_cls(fused.parameters(), **kwargs)
    # (value, grad) pairs carry no owner: the same update runs tensor by tensor.
    opt_split = opt_cls([(p, p.grad) for p in split.parameters()], **kwargs)
    assert len(opt_fused._slots) == 1 and len(opt_split._slots) == len(list(split.parameters()))
    for _ in range(3):
        for lstm, opt in ((fused, opt_fused), (split, opt_split)):
            opt.zero_grad()
            out, _ = lstm(x)
            lstm.backward(np.cos(out))
            opt.step()
        split.params_updated()
    for (n, a), (_, b) in zip(fused.named_parameters(), split.named_parameters()):
        assert np.array_equal(a, b), n
    padding = np.ones(fused.flat_buffers()[0].shape, bool)
    for p in fused.parameters():
        start = (
            p.__array_interface__["data"][0]
            - fused.flat_buffers()[0].__array_interface__["data"][0]
        ) // 4
        padding[start : start + p.size] = False
    assert not fused.flat_buffers()[0][padding].any()  # the padding stayed zero
    for s_f, s_s in zip(opt_fused.state_dict()["state"], opt_split.state_dict()["state"]):
        assert sorted(s_f) == sorted(s_s)
        for k in s_f:
            assert np.array_equal(s_f[k], s_s[k]), k


def test_an_optimizer_over_some_parameters_updates_only_those():
    model = el.LSTMModel(3, 5, 2, seed=0)
    frozen = {n: np.array(p) for n, p in model.named_parameters() if n.startswith("lstm.")}
    opt = el.optim.SGD([p for n, p in model.named_parameters() if n.startswith("fc.")], lr=0.1)
    opt.zero_grad()
    model.zero_grad()
    model.backward(np.ones_like(model(np.ones((2, 4, 3)))))
    before_fc = model.fc.weight.copy()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert np.array_equal(p, frozen[n]), n
    assert not np.array_equal(model.fc.weight, before_fc)
