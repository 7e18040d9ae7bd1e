"""Tests of the optimizers, gradient clipping and learning-rate schedules against torch.optim.

Each case runs several steps on the same parameters and the same sequence of gradients in both
libraries and compares parameters (and learning rates) after every step.
"""

import math

import numpy as np
import pytest
import torch  # a hard import on purpose: the torch witness must never be silently skipped

import eigenlstm as el
from eigenlstm.optim import SGD, Adam, AdamW, CosineAnnealingLR, StepLR, clip_grad_norm_
from eigenlstm.training import make_optimizer, make_scheduler

STEPS = 6
SHAPES = [(4, 3), (5,), (2, 2, 2)]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=2e-5, atol=1e-6)}


def make_problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


def run_both(ours_cls, torch_cls, kwargs, dtype):
    """Step both optimizers STEPS times; return a list of (ours, theirs) params after each step."""
    params, grads = make_problem(dtype)
    pairs = [(p.copy(), np.zeros_like(p)) for p in params]
    opt = ours_cls(pairs, **kwargs)
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    topt = torch_cls(tparams, **kwargs)
    history = []
    for step_grads in grads:
        for (_, g), tp, new in zip(pairs, tparams, step_grads):
            g[...] = new
            tp.grad = torch.tensor(new)
        opt.step()
        topt.step()
        history.append(
            ([p.copy() for p, _ in pairs], [tp.detach().numpy().copy() for tp in tparams])
        )
    return history


OPTIMIZER_CASES = {
    "sgd": (SGD, torch.optim.SGD, dict(lr=0.1)),
    "sgd_momentum": (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    "sgd_nesterov": (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd_weight_decay": (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, weight_decay=0.1)),
    "sgd_dampening": (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.5, dampening=0.3)),
    "adam": (Adam, torch.optim.Adam, dict(lr=0.01)),
    "adam_weight_decay": (
        Adam,
        torch.optim.Adam,
        dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
    ),
    "adam_amsgrad": (Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, eps=1e-6)),
    "adamw": (AdamW, torch.optim.AdamW, dict(lr=0.01)),
    "adamw_amsgrad": (AdamW, torch.optim.AdamW, dict(lr=0.02, weight_decay=0.3, amsgrad=True)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", sorted(OPTIMIZER_CASES))
def test_optimizer_matches_torch_optim_after_every_step(case, dtype):
    ours_cls, torch_cls, kwargs = OPTIMIZER_CASES[case]
    for step, (ours, theirs) in enumerate(run_both(ours_cls, torch_cls, kwargs, dtype)):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, err_msg=f"step {step + 1}, param {i}", **TOL[dtype])


def test_optimizer_does_not_modify_the_gradients():
    p, g = np.ones(3), np.full(3, 0.5)
    SGD([(p, g)], lr=0.1, momentum=0.9, weight_decay=0.5).step()
    Adam([(p, g)], lr=0.1, weight_decay=0.5).step()
    assert np.array_equal(g, np.full(3, 0.5))


def test_optimizer_on_a_module_calls_params_updated_after_each_step():
    class Counting(el.Module):
        def __init__(self):
            self.pair = (np.zeros(2), np.ones(2))
            self.updates = 0

        def parameters(self):
            return [self.pair]

        def params_updated(self):
            self.updates += 1

    module = Counting()
    opt = Adam(module, lr=0.1)
    opt.step()
    opt.step()
    assert module.updates == 2


def test_optimizer_updates_a_real_model_in_place_and_changes_its_output():
    model = el.LSTMModel(2, 3, 1, seed=0)
    x = np.ones((1, 4, 2))
    before = model.predict(x)
    model.zero_grad()
    model.backward(np.ones_like(model(x)))
    opt = SGD(model, lr=0.5)
    opt.step()
    assert not np.array_equal(model.predict(x), before)


@pytest.mark.parametrize("name", ["sgd_momentum", "adam_amsgrad", "adamw"])
def test_optimizer_state_dict_restores_an_identical_continuation(name):
    ours_cls, _, kwargs = OPTIMIZER_CASES[name]
    params, grads = make_problem(np.float64, seed=3)
    a_pairs = [(p.copy(), np.zeros_like(p)) for p in params]
    a = ours_cls(a_pairs, **kwargs)
    for step_grads in grads[:3]:
        for (_, g), new in zip(a_pairs, step_grads):
            g[...] = new
        a.step()
    b_pairs = [(p.copy(), g.copy()) for p, g in a_pairs]
    b = ours_cls(b_pairs)  # default hyperparameters: load_state_dict restores a's
    b.load_state_dict(a.state_dict())
    assert b.state_dict()["hyperparameters"] == a.state_dict()["hyperparameters"]
    for step_grads in grads[3:]:
        for (_, ga), (_, gb), new in zip(a_pairs, b_pairs, step_grads):
            ga[...] = new
            gb[...] = new
        a.step()
        b.step()
    for (pa, _), (pb, _) in zip(a_pairs, b_pairs):
        assert np.array_equal(pa, pb)


def test_optimizer_load_state_dict_of_another_optimizer_raises_and_changes_nothing():
    pairs = [(np.zeros(2), np.ones(2))]
    adam = Adam(pairs, lr=0.1)
    adam.step()
    sgd = SGD(pairs, lr=0.1, momentum=0.9)
    with pytest.raises(
        ValueError, match="SGD.load_state_dict: state_dict is for Adam, expected SGD"
    ):
        sgd.load_state_dict(adam.state_dict())
    assert sgd.step_count == 0 and sgd.state == [{}]


def test_optimizer_load_state_dict_with_wrong_buffer_shape_names_it():
    adam = Adam([(np.zeros(2), np.ones(2))], lr=0.1)
    adam.step()
    state = adam.state_dict()
    state["state"][0]["exp_avg"] = np.zeros(3)
    other = Adam([(np.zeros(2), np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=r"state 0 'exp_avg' must have shape \(2,\), got \(3,\)"):
        other.load_state_dict(state)


def test_optimizer_with_bad_hyperparameters_raises_naming_them():
    pairs = [(np.zeros(2), np.zeros(2))]
    with pytest.raises(ValueError, match=r"Adam: betas\[1\] must be in \[0.0, 1.0\), got 1.0"):
        Adam(pairs, betas=(0.9, 1.0))
    with pytest.raises(
        ValueError,
        match=r"^SGD: momentum must be > 0 and dampening 0 with nesterov=True, got momentum=0.0, dampening=0.0$",
    ):
        SGD(pairs, nesterov=True)
    with pytest.raises(ValueError, match="SGD: lr must be in >= 0.0, got -1"):
        SGD(pairs, lr=-1)
    with pytest.raises(ValueError, match="make_optimizer: optimizer must be one of"):
        make_optimizer("adagrad", pairs, 0.1)
    with pytest.raises(
        TypeError,
        match=r"SGD: params\[0\] must be a parameter \(an array with \.grad, from Module\.parameters\(\)\) or a \(value, gradient\) pair of arrays, got ndarray",
    ):
        SGD([np.zeros(2)])


# ---- clipping ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "max_norm,norm_type", [(0.5, 2.0), (100.0, 2.0), (0.3, 1.0), (0.2, math.inf)]
)
def test_clip_grad_norm_matches_torch_and_returns_the_total_norm(max_norm, norm_type):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s) for s in SHAPES]
    pairs = [(np.zeros_like(g), g.copy()) for g in grads]
    tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.tensor(g)
    total = clip_grad_norm_(pairs, max_norm, norm_type)
    ref = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type)
    assert total == pytest.approx(ref.item(), rel=1e-12)
    for (_, g), tp in zip(pairs, tparams):
        np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_clip_grad_norm_on_a_model_bounds_the_joint_norm():
    model = el.LSTMModel(3, 4, 2, seed=0)
    model.zero_grad()
    y = model(np.random.default_rng(0).standard_normal((4, 5, 3)))
    model.backward(100 * np.ones_like(y))
    total = el.clip_grad_norm_(model, 1.0)
    after = math.sqrt(
        sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in model.parameters())
    )
    assert total > 1.0
    assert after == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_with_error_if_nonfinite_raises_on_nan():
    pairs = [(np.zeros(2), np.array([np.nan, 1.0]))]
    with pytest.raises(
        RuntimeError, match="clip_grad_norm_: the total norm of order 2.0 of the gradients is nan"
    ):
        clip_grad_norm_(pairs, 1.0, error_if_nonfinite=True)


def test_the_deprecated_name_clip_grad_norm_warns_and_clips_as_clip_grad_norm_():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s) for s in SHAPES]
    old = [(np.zeros_like(g), g.copy()) for g in grads]
    new = [(np.zeros_like(g), g.copy()) for g in grads]
    with pytest.warns(
        DeprecationWarning, match="eigenlstm.clip_grad_norm is deprecated; use clip_grad_norm_"
    ):
        total_old = el.clip_grad_norm(old, 0.5)
    assert total_old == clip_grad_norm_(new, 0.5)
    for (_, a), (_, b) in zip(old, new):
        assert np.array_equal(a, b)


# ---- schedules --------------------------------------------------------------------------------
SCHEDULE_CASES = {
    "step": (StepLR, torch.optim.lr_scheduler.StepLR, dict(step_size=3, gamma=0.5)),
    "step_1": (StepLR, torch.optim.lr_scheduler.StepLR, dict(step_size=1, gamma=0.9)),
    "cosine": (CosineAnnealingLR, torch.optim.lr_scheduler.CosineAnnealingLR, dict(T_max=10)),
    "cosine_eta_min": (
        CosineAnnealingLR,
        torch.optim.lr_scheduler.CosineAnnealingLR,
        dict(T_max=4, eta_min=0.01),
    ),  # runs past T_max: the cosine comes back up
}


@pytest.mark.parametrize("case", sorted(SCHEDULE_CASES))
def test_lr_schedule_matches_torch_exactly_epoch_by_epoch(case):
    ours_cls, torch_cls, kwargs = SCHEDULE_CASES[case]
    opt = SGD([(np.zeros(1), np.zeros(1))], lr=0.1)
    sched = ours_cls(opt, **kwargs)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    tsched = torch_cls(topt, **kwargs)
    for epoch in range(15):
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert opt.lr == tsched.get_last_lr()[0], f"epoch {epoch + 1}"


def test_lr_schedule_state_dict_resumes_the_same_sequence():
    opt = SGD([(np.zeros(1), np.zeros(1))], lr=0.1)
    sched = CosineAnnealingLR(opt, T_max=8)
    for _ in range(3):
        sched.step()
    opt2 = SGD([(np.zeros(1), np.zeros(1))], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    sched2 = CosineAnnealingLR(opt2, T_max=1)
    sched2.load_state_dict(sched.state_dict())
    for _ in range(4):
        sched.step()
        sched2.step()
        assert opt.lr == opt2.lr


def test_lr_schedule_with_bad_arguments_raises_naming_them():
    opt = SGD([(np.zeros(1), np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="StepLR: step_size must be an int >= 1, got 0"):
        StepLR(opt, step_size=0)
    with pytest.raises(
        TypeError, match="CosineAnnealingLR: optimizer must be an eigenlstm Optimizer"
    ):
        CosineAnnealingLR(object(), T_max=3)


def test_make_scheduler_builds_schedules_by_name_with_their_defaults():
    opt = SGD([(np.zeros(1), np.zeros(1))], lr=0.1)
    cosine = make_scheduler("cosine", opt, epochs=12)
    assert type(cosine) is CosineAnnealingLR and cosine.T_max == 12
    step = make_scheduler("step", opt, epochs=12)
    assert type(step) is StepLR and step.step_size == 4 and step.gamma == 0.1
    assert make_scheduler(None, opt, epochs=12) is None
    assert make_scheduler(step, opt, epochs=12) is step
    with pytest.raises(
        ValueError, match=r"^make_scheduler: lr_schedule must be one of \['cosine', 'step'\]"
    ):
        make_scheduler("linear", opt, epochs=12)


# ---- the optimizer and schedule of a training run ----------------------------------------------
def test_trainer_load_state_dict_rebuilds_the_optimizer_and_schedule_and_continues_identically():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((24, 5, 2)), rng.standard_normal((24, 1))
    fit = {"batch_size": 8, "clip_grad_norm": None, "progress": False}
    a = el.Trainer(el.LSTMModel(2, 4, 1, dtype=np.float64, seed=0))
    a.fit(
        x,
        y,
        epochs=2,
        optimizer=SGD(a.model, lr=0.1, momentum=0.9, nesterov=True),
        lr_schedule=("step", {"step_size": 1, "gamma": 0.5}),
        seed=1,
        **fit,
    )

    b = el.Trainer(el.LSTMModel(2, 4, 1, dtype=np.float64, seed=7))
    b.model.load_state_dict(a.model.state_dict())
    b.load_state_dict(a.state_dict())
    assert type(b.optimizer) is SGD and b.optimizer is not a.optimizer
    assert (
        b.optimizer.state_dict()["hyperparameters"] == a.optimizer.state_dict()["hyperparameters"]
    )
    assert b.optimizer.lr == a.optimizer.lr == 0.025
    assert type(b.scheduler) is StepLR and b.scheduler.state_dict() == a.scheduler.state_dict()
    assert b.epoch == 2 and b.history.history == a.history.history

    a.fit(x, y, epochs=2, resume=True, **fit)
    b.fit(x, y, epochs=2, resume=True, **fit)
    for k, v in a.model.state_dict().items():
        assert np.array_equal(b.model.state_dict()[k], v), k
    assert b.optimizer.lr == a.optimizer.lr


def test_trainer_load_state_dict_of_another_model_raises_and_changes_nothing():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 2)), rng.standard_normal(8)
    a = el.Trainer(el.LSTMModel(2, 4, 1, seed=0))
    a.fit(x, y, epochs=1, progress=False)
    other = el.Trainer(el.LSTMModel(2, 5, 1, seed=0))
    with pytest.raises(
        ValueError, match=r"^Trainer.load_state_dict: not a training state of this model"
    ):
        other.load_state_dict(a.state_dict())
    assert other.optimizer is None and other.history is None and other.epoch == 0
