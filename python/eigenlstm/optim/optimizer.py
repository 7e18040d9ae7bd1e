"""Optimizers (SGD, Adam, AdamW) for NumPy, as torch.optim has them.

Each follows torch.optim's single-tensor update rule line by line and updates a module's
(value, gradient) pairs in place, then calls ``module.params_updated()``. The trainer
(training/) drives them; their state goes into checkpoints through ``state_dict()``.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_float

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "resolve_params"]


def resolve_params(where: str, params):
    """Return (module or None, list of (value, grad) pairs) from a module or a list of pairs."""
    module = params if callable(getattr(params, "parameters", None)) else None
    pairs = list(module.parameters() if module is not None else params)
    for i, pair in enumerate(pairs):
        ok = (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and all(isinstance(a, np.ndarray) for a in pair)
        )
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
    _state_keys: tuple[str, ...] = ()

    def __init__(self, params, lr: float) -> None:
        where = type(self).__name__
        self._module, self._pairs = resolve_params(where, params)
        self.lr = check_float(where, "lr", lr)
        self.step_count = 0
        self.state: list[dict[str, np.ndarray]] = [{} for _ in self._pairs]

    def hyperparameters(self) -> dict:
        """The constructor's arguments (with the current ``lr``), as plain Python values."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def updates(self, params) -> bool:
        """Whether this optimizer updates exactly ``params`` (a module or its parameters).

        Compares memory, not array objects: each ``parameters()`` call may return new views.
        """
        _, pairs = resolve_params(f"{type(self).__name__}.updates", params)

        def where(a: np.ndarray):
            return a.__array_interface__["data"][0], a.shape

        return [where(v) for v, _ in self._pairs] == [where(v) for v, _ in pairs]

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

    def _required_state(self, hyper: dict) -> tuple[str, ...]:
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

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self.momentum = check_float("SGD", "momentum", momentum)
        self.dampening = check_float("SGD", "dampening", dampening)
        self.weight_decay = check_float("SGD", "weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"SGD: nesterov needs momentum > 0 and dampening = 0, got momentum={momentum}, "
                f"dampening={dampening}"
            )

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }

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

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        where = type(self).__name__
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}: betas must be a pair of floats, got {betas!r}")
        self.betas = (
            check_float(where, "betas[0]", betas[0], 0.0, 1.0, high_open=True),
            check_float(where, "betas[1]", betas[1], 0.0, 1.0, high_open=True),
        )
        self.eps = check_float(where, "eps", eps)
        self.weight_decay = check_float(where, "weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "amsgrad": self.amsgrad,
        }

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
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = self.lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
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

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
