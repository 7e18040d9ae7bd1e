"""Optimizers (SGD, Adam, AdamW), gradient clipping and learning-rate schedules, for NumPy.

Each follows torch.optim's single-tensor update rule line by line and updates a module's
(value, gradient) pairs in place, then calls ``module.params_updated()``. The training loop
that drives them is in model.py; their state goes into checkpoints through ``state_dict()``.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm",
    "LRScheduler", "StepLR", "CosineAnnealingLR",
    "make_optimizer", "make_scheduler", "optimizer_from_state_dict", "scheduler_from_state_dict",
]


def _resolve_params(where: str, params):
    """Return (module or None, list of (value, grad) pairs) from a module or a list of pairs."""
    module = params if callable(getattr(params, "parameters", None)) else None
    pairs = list(module.parameters() if module is not None else params)
    for i, pair in enumerate(pairs):
        ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
            isinstance(a, np.ndarray) for a in pair)
        if not ok:
            raise TypeError(
                f"{where}: params must be a Module or a list of (value, gradient) ndarray pairs, "
                f"got {type(pair).__name__} at index {i}"
            )
        value, grad = pair
        if value.shape != grad.shape or value.dtype.kind != "f" or not value.flags.writeable:
            raise ValueError(
                f"{where}: pair {i} must be a writable float value and a gradient of the same "
                f"shape, got shapes {value.shape} and {grad.shape}, dtype {value.dtype}"
            )
    return module, pairs


def _check_float(where: str, name: str, value, low=0.0, high=None, high_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a float, got {type(value).__name__} {value!r}")
    v = float(value)
    too_high = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or v < low or too_high:
        bracket = ")" if high_open else "]"
        rng = f"[{low}, {high}{bracket}" if high is not None else f">= {low}"
        raise ValueError(f"{where}: {name} must be in {rng}, got {value!r}")
    return v


class Optimizer:
    """Base class: holds the parameter pairs, the learning rate and per-parameter state.

    Parameters
    ----------
    params : Module or list of (ndarray, ndarray)
        A module (its ``parameters()`` are used, and ``params_updated()`` is called after each
        step) or (value, gradient) pairs updated in place.
    lr : float
        Learning rate; schedulers change ``optimizer.lr`` between epochs.
    """

    name = "Optimizer"
    _state_keys: Tuple[str, ...] = ()

    def __init__(self, params, lr: float) -> None:
        where = type(self).__name__
        self._module, self._pairs = _resolve_params(where, params)
        self.lr = _check_float(where, "lr", lr)
        self.step_count = 0
        self.state: List[Dict[str, np.ndarray]] = [{} for _ in self._pairs]

    def hyperparameters(self) -> dict:
        """The constructor's arguments (with the current ``lr``), as plain Python values."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        for _, grad in self._pairs:
            grad.fill(0)

    def step(self) -> None:
        """Apply one update to every parameter, in place, then call ``params_updated()``."""
        self.step_count += 1
        for i, (param, grad) in enumerate(self._pairs):
            self._update(i, param, grad)
        if self._module is not None:
            self._module.params_updated()

    def _update(self, i: int, param: np.ndarray, grad: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A copy of everything needed to continue: name, hyperparameters, step, buffers.

        Returns
        -------
        dict
            ``{"name": str, "hyperparameters": dict, "step_count": int,
            "state": list of dict of ndarray}`` (one dict per parameter pair, empty before
            the first step).
        """
        return {
            "name": self.name,
            "hyperparameters": self.hyperparameters(),
            "step_count": self.step_count,
            "state": [{k: v.copy() for k, v in s.items()} for s in self.state],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``; all or nothing.

        Raises
        ------
        ValueError
            If it belongs to another optimizer, another number of parameters, or holds
            buffers of the wrong shape or names.
        """
        where = f"{type(self).__name__}.load_state_dict"
        try:
            name = state_dict["name"]
            hyper = dict(state_dict["hyperparameters"])
            step_count = int(state_dict["step_count"])
            states = list(state_dict["state"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: not an optimizer state_dict ({exc!r})") from None
        if name != self.name:
            raise ValueError(f"{where}: state_dict is for {name}, expected {self.name}")
        if len(states) != len(self._pairs):
            raise ValueError(
                f"{where}: state_dict has {len(states)} parameter states, expected {len(self._pairs)}"
            )
        new_states = []
        for i, (s, (param, _)) in enumerate(zip(states, self._pairs)):
            keys = set(s)
            if keys and keys != set(self._required_state(hyper)):
                raise ValueError(
                    f"{where}: state {i} must have keys {sorted(self._required_state(hyper))}, "
                    f"got {sorted(keys)}"
                )
            entry = {}
            for k, v in s.items():
                v = np.asarray(v)
                if v.shape != param.shape:
                    raise ValueError(
                        f"{where}: state {i} {k!r} must have shape {param.shape}, got {v.shape}"
                    )
                entry[k] = np.array(v, dtype=param.dtype, copy=True)
            new_states.append(entry)
        fresh = type(self)(list(self._pairs), **hyper)  # validates the hyperparameters
        for k, v in vars(fresh).items():
            if k not in ("_module", "_pairs", "state", "step_count"):
                setattr(self, k, v)
        self.state = new_states
        self.step_count = step_count

    def _required_state(self, hyper: dict) -> Tuple[str, ...]:
        return self._state_keys


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : Module or list of (ndarray, ndarray)
        What to optimize (see :class:`Optimizer`).
    lr : float, default 1e-3
    momentum : float, default 0
    dampening : float, default 0
    weight_decay : float, default 0
        L2 penalty added to the gradient.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).

    Notes
    -----
    With :math:`g` the gradient, for every parameter :math:`p` (torch's ``_single_tensor_sgd``):

    .. math::
        g &\leftarrow g + \lambda p \\
        b &\leftarrow g \text{ (first step)}, \quad
            b \leftarrow \mu b + (1 - \tau) g \text{ (later)} \\
        g &\leftarrow g + \mu b \text{ (nesterov)}, \quad g \leftarrow b \text{ (otherwise)} \\
        p &\leftarrow p - \eta g

    Raises
    ------
    ValueError
        On a negative hyperparameter, or nesterov without momentum or with dampening.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.optim import SGD
    >>> p, g = np.ones(3), np.full(3, 0.5)
    >>> opt = SGD([(p, g)], lr=0.1, momentum=0.9)
    >>> opt.step(); p.tolist()
    [0.95, 0.95, 0.95]
    """

    name = "SGD"

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr)
        self.momentum = _check_float("SGD", "momentum", momentum)
        self.dampening = _check_float("SGD", "dampening", dampening)
        self.weight_decay = _check_float("SGD", "weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"SGD: nesterov needs momentum > 0 and dampening = 0, got momentum={momentum}, "
                f"dampening={dampening}"
            )

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def _required_state(self, hyper: dict):
        return ("momentum_buffer",) if hyper.get("momentum", 0) != 0 else ()

    def _update(self, i, param, grad):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param  # a new array: p.grad is left alone
        if self.momentum != 0:
            buf = self.state[i].get("momentum_buffer")
            if buf is None:
                buf = self.state[i]["momentum_buffer"] = np.array(grad, copy=True)
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        param -= self.lr * grad


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient).

    Parameters
    ----------
    params : Module or list of (ndarray, ndarray)
        What to optimize (see :class:`Optimizer`).
    lr : float, default 1e-3
    betas : tuple of float, default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad : bool, default False

    Notes
    -----
    At step :math:`t` (torch's ``_single_tensor_adam``, non-capturable branch):

    .. math::
        g &\leftarrow g + \lambda p \quad(\text{Adam; AdamW instead does } p \leftarrow p(1 - \eta\lambda)) \\
        m &\leftarrow m + (1 - \beta_1)(g - m) \\
        v &\leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \text{ (amsgrad, else } \hat v = v) \\
        p &\leftarrow p - \frac{\eta}{1 - \beta_1^t} \cdot
            \frac{m}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}

    Raises
    ------
    ValueError
        On a hyperparameter out of range (betas in [0, 1), eps >= 0, ...).

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.optim import Adam
    >>> p, g = np.ones(2), np.array([1.0, -1.0])
    >>> opt = Adam([(p, g)], lr=0.1)
    >>> opt.step(); np.round(p, 6).tolist()
    [0.9, 1.1]
    """

    name = "Adam"
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        where = type(self).__name__
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}: betas must be a pair of floats, got {betas!r}")
        self.betas = (_check_float(where, "betas[0]", betas[0], 0.0, 1.0, high_open=True),
                      _check_float(where, "betas[1]", betas[1], 0.0, 1.0, high_open=True))
        self.eps = _check_float(where, "eps", eps)
        self.weight_decay = _check_float(where, "weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}

    def _required_state(self, hyper: dict):
        base = ("exp_avg", "exp_avg_sq")
        return base + ("max_exp_avg_sq",) if hyper.get("amsgrad") else base

    def _update(self, i, param, grad):
        beta1, beta2 = self.betas
        s = self.state[i]
        if not s:
            s["exp_avg"] = np.zeros_like(param)
            s["exp_avg_sq"] = np.zeros_like(param)
            if self.amsgrad:
                s["max_exp_avg_sq"] = np.zeros_like(param)
        if self.weight_decay != 0:
            if self._decoupled:
                param *= 1 - self.lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * param
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        # exp_avg.lerp_(grad, 1 - beta1)
        exp_avg += (1 - beta1) * (grad - exp_avg)
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        step = self.step_count
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = self.lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        if self.amsgrad:
            np.maximum(s["max_exp_avg_sq"], exp_avg_sq, out=s["max_exp_avg_sq"])
            denom = np.sqrt(s["max_exp_avg_sq"]) / bias_correction2_sqrt + self.eps
        else:
            denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + self.eps
        # param.addcdiv_(exp_avg, denom, value=-step_size)
        param += -step_size * exp_avg / denom


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay.

    Parameters
    ----------
    params : Module or list of (ndarray, ndarray)
        What to optimize (see :class:`Optimizer`).
    lr : float, default 1e-3
    betas : tuple of float, default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 1e-2
        Applied as :math:`p \leftarrow p (1 - \eta \lambda)` before the Adam step.
    amsgrad : bool, default False

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.optim import AdamW
    >>> p, g = np.ones(1), np.zeros(1)
    >>> opt = AdamW([(p, g)], lr=0.1, weight_decay=0.5)
    >>> opt.step(); p.tolist()
    [0.95]
    """

    name = "AdamW"
    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


def clip_grad_norm(module_or_params, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> float:
    r"""Scale all gradients so that their joint norm is at most ``max_norm``, in place.

    Like ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients as one vector
    and every gradient is multiplied by :math:`\min(1, \text{max\_norm} / (\text{norm} + 10^{-6}))`.

    Parameters
    ----------
    module_or_params : Module or list of (ndarray, ndarray)
        Whose gradients to clip.
    max_norm : float
        The largest allowed norm.
    norm_type : float, default 2.0
        The p of the p-norm; ``inf`` for the largest absolute value.
    error_if_nonfinite : bool, default False
        Raise instead of clipping when the norm is NaN or infinite.

    Returns
    -------
    float
        The total norm of the gradients before clipping.

    Raises
    ------
    RuntimeError
        If ``error_if_nonfinite`` and the norm is not finite.
    ValueError
        If ``max_norm`` is negative or ``norm_type`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.optim import clip_grad_norm
    >>> p, g = np.zeros(2), np.array([3.0, 4.0])
    >>> clip_grad_norm([(p, g)], 1.0)
    5.0
    >>> np.round(g, 6).tolist()
    [0.6, 0.8]
    """
    where = "clip_grad_norm"
    _, pairs = _resolve_params(where, module_or_params)
    max_norm = _check_float(where, "max_norm", max_norm)
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"{where}: norm_type must be > 0 (or inf), got {norm_type}")
    if not pairs:
        return 0.0
    grads = [g for _, g in pairs]
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        # Sums, not np.linalg.norm: that calls BLAS dot, whose threads stall on a busy machine.
        def pnorm(v: np.ndarray) -> float:
            v = np.abs(v.astype(np.float64, copy=False))
            return float(np.sqrt(np.sum(v * v))) if norm_type == 2 else \
                float(np.sum(v ** norm_type) ** (1.0 / norm_type))

        total = pnorm(np.array([pnorm(g.ravel()) for g in grads]))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"{where}: the total norm of order {norm_type} of the gradients is {total}; "
            "pass error_if_nonfinite=False to clip anyway"
        )
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef < 1.0 or not math.isfinite(total):
        for g in grads:
            g *= coef
    return total


class LRScheduler:
    """Base class: changes ``optimizer.lr`` once per ``step()`` (call it once per epoch).

    Parameters
    ----------
    optimizer : Optimizer
        Whose learning rate to schedule; its current ``lr`` is the base rate.
    """

    name = "LRScheduler"

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: optimizer must be an eigenlstm Optimizer, got "
                f"{type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def step(self) -> None:
        """Advance one epoch and set the optimizer's learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self._next_lr(self.optimizer.lr)

    def get_last_lr(self) -> float:
        """The learning rate set by the last step."""
        return self.optimizer.lr

    def _next_lr(self, lr: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """``{"name", "hyperparameters", "base_lr", "last_epoch"}`` as plain Python values."""
        return {"name": self.name, "hyperparameters": self.hyperparameters(),
                "base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()`` (the optimizer's lr is restored with the optimizer).

        Raises
        ------
        ValueError
            If it belongs to another kind of schedule or is malformed.
        """
        where = f"{type(self).__name__}.load_state_dict"
        try:
            name = state_dict["name"]
            hyper = dict(state_dict["hyperparameters"])
            base_lr = float(state_dict["base_lr"])
            last_epoch = int(state_dict["last_epoch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a scheduler state_dict ({exc!r})") from None
        if name != self.name:
            raise ValueError(f"{where}: state_dict is for {name}, expected {self.name}")
        fresh = type(self)(self.optimizer, **hyper)
        for k, v in vars(fresh).items():
            setattr(self, k, v)
        self.base_lr, self.last_epoch = base_lr, last_epoch


class StepLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` epochs, as ``torch``'s StepLR.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        Epochs between decays.
    gamma : float, default 0.1

    Notes
    -----
    torch's recursive form: at epoch :math:`e > 0` with :math:`e \bmod s = 0`,
    :math:`\eta \leftarrow \gamma\eta`; otherwise unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.optim import SGD, StepLR
    >>> opt = SGD([(np.zeros(1), np.zeros(1))], lr=1.0)
    >>> sched = StepLR(opt, step_size=2, gamma=0.5)
    >>> [(sched.step(), opt.lr)[1] for _ in range(4)]
    [1.0, 0.5, 0.5, 0.25]
    """

    name = "StepLR"

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be an int >= 1, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _check_float("StepLR", "gamma", gamma)

    def hyperparameters(self) -> dict:
        return {"step_size": self.step_size, "gamma": self.gamma}

    def _next_lr(self, lr: float) -> float:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from the base rate to ``eta_min`` over ``T_max`` epochs, as torch's.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Epochs of the half cosine.
    eta_min : float, default 0

    Notes
    -----
    torch's recursive form (so results match it to the last bit):

    .. math::
        \eta_{e} = \eta_{\min} + (\eta_{e-1} - \eta_{\min})
            \frac{1 + \cos(\pi e / T)}{1 + \cos(\pi (e - 1) / T)}

    with the special case :math:`(e - 1 - T) \bmod 2T = 0`, where
    :math:`\eta_e = \eta_{e-1} + (\eta_0 - \eta_{\min})(1 - \cos(\pi / T)) / 2`.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.optim import SGD, CosineAnnealingLR
    >>> opt = SGD([(np.zeros(1), np.zeros(1))], lr=1.0)
    >>> sched = CosineAnnealingLR(opt, T_max=2)
    >>> [round((sched.step(), opt.lr)[1], 6) for _ in range(2)]
    [0.5, 0.0]
    """

    name = "CosineAnnealingLR"

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        if isinstance(T_max, bool) or not isinstance(T_max, numbers.Integral) or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be an int >= 1, got {T_max!r}")
        self.T_max = int(T_max)
        self.eta_min = _check_float("CosineAnnealingLR", "eta_min", eta_min)

    def hyperparameters(self) -> dict:
        return {"T_max": self.T_max, "eta_min": self.eta_min}

    def _next_lr(self, lr: float) -> float:
        e, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if e == 0:
            return lr
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - eta_min) * (1 - math.cos(math.pi / T)) / 2
        return ((1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
                * (lr - eta_min) + eta_min)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
SCHEDULERS = {"step": StepLR, "steplr": StepLR, "cosine": CosineAnnealingLR,
              "cosineannealinglr": CosineAnnealingLR}


def make_optimizer(spec, params, lr: float, *, where: str = "make_optimizer") -> Optimizer:
    """Build an optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``) or return an instance.

    Parameters
    ----------
    spec : str or Optimizer
        The name, or an optimizer already built on ``params``.
    params : Module or list of (ndarray, ndarray)
    lr : float
        Learning rate for a named optimizer.
    where : str, optional
        The public function to name in error messages (``LSTMModel.fit`` when it calls this).

    Raises
    ------
    ValueError
        On an unknown name.

    Examples
    --------
    >>> import eigenlstm as el
    >>> model = el.LSTMModel(2, 4, 1, seed=0)
    >>> make_optimizer("adamw", model, lr=1e-3)
    AdamW(lr=0.001, betas=[0.9, 0.999], eps=1e-08, weight_decay=0.01, amsgrad=False)
    """
    if isinstance(spec, Optimizer):
        return spec
    key = str(spec).lower()
    if key not in OPTIMIZERS:
        raise ValueError(
            f"{where}: optimizer must be one of {sorted(OPTIMIZERS)} or an Optimizer, got {spec!r}"
        )
    return OPTIMIZERS[key](params, lr=lr)


def make_scheduler(spec, optimizer: Optimizer, epochs: int, *,
                   where: str = "make_scheduler") -> Optional[LRScheduler]:
    """Build a per-epoch schedule from ``None``, a name, a ``(name, kwargs)`` pair or an instance.

    ``"cosine"`` anneals over ``epochs`` (``T_max=epochs``); ``"step"`` decays by 10x every
    third of the run (``step_size=max(1, epochs // 3)``). Pass ``("step", {"step_size": 5,
    "gamma": 0.5})`` for other settings. ``where`` names the caller in error messages.

    Raises
    ------
    ValueError
        On an unknown name.

    Examples
    --------
    >>> import numpy as np
    >>> opt = SGD([(np.zeros(1), np.zeros(1))], lr=1.0)
    >>> sched = make_scheduler(("step", {"step_size": 5, "gamma": 0.5}), opt, epochs=20)
    >>> type(sched).__name__, sched.step_size, sched.gamma
    ('StepLR', 5, 0.5)
    """
    if spec is None or isinstance(spec, LRScheduler):
        return spec
    name, kwargs = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(
            f"{where}: lr_schedule must be one of ['cosine', 'step'], a (name, kwargs) "
            f"pair or an LRScheduler, got {spec!r}"
        )
    cls = SCHEDULERS[key]
    if cls is CosineAnnealingLR:
        kwargs.setdefault("T_max", epochs)
    else:
        kwargs.setdefault("step_size", max(1, epochs // 3))
    return cls(optimizer, **kwargs)


def optimizer_from_state_dict(params, state_dict: dict) -> Optimizer:
    """Rebuild the optimizer described by ``state_dict`` on ``params`` and load its state.

    Raises
    ------
    ValueError
        If the name is unknown or the state does not fit ``params``.
    """
    name = str(state_dict.get("name", "")).lower() if hasattr(state_dict, "get") else ""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer_from_state_dict: unknown optimizer {name!r}")
    opt = OPTIMIZERS[name](params, **dict(state_dict["hyperparameters"]))
    opt.load_state_dict(state_dict)
    return opt


def scheduler_from_state_dict(optimizer: Optimizer, state_dict: dict) -> LRScheduler:
    """Rebuild the schedule described by ``state_dict`` on ``optimizer`` and load its state."""
    name = str(state_dict.get("name", "")).lower() if hasattr(state_dict, "get") else ""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler_from_state_dict: unknown schedule {name!r}")
    sched = SCHEDULERS[name](optimizer, **dict(state_dict["hyperparameters"]))
    sched.load_state_dict(state_dict)
    return sched
