"""Optimizers (SGD, Adam, AdamW) for NumPy, as torch.optim has them.

Each follows torch.optim's single-tensor update rule line by line and updates parameters in
place from their gradients (``p.grad`` of a :class:`~eigenlstm.nn.Parameter`, or the second
array of a ``(value, gradient)`` pair), then calls ``params_updated()`` on the modules that
own them. The trainer (training/) drives them; their state goes into checkpoints through
``state_dict()``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import check_float

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "resolve_params", "Slot"]


def resolve_params(where: str, params) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """``(value, gradient, owner or None)`` for each parameter, in order.

    ``params`` is a module (its ``parameters()``), or an iterable of parameters (arrays with
    ``grad`` and ``owner``, as ``Module.parameters()`` yields) or of ``(value, gradient)``
    pairs of arrays you own.
    """
    if callable(getattr(params, "parameters", None)):
        params = params.parameters()
    try:
        items = list(params)
    except TypeError:
        raise TypeError(
            f"{where}: params must be a Module or an iterable of parameters, got "
            f"{type(params).__name__}"
        ) from None
    out = []
    for i, item in enumerate(items):
        item_grad = getattr(item, "grad", None)
        if isinstance(item, np.ndarray) and isinstance(item_grad, np.ndarray):
            value, grad, owner = item, item_grad, getattr(item, "owner", None)
        elif (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and all(isinstance(a, np.ndarray) for a in item)
        ):
            (value, grad), owner = item, None
        else:
            raise TypeError(
                f"{where}: params[{i}] must be a parameter (an array with .grad, from "
                f"Module.parameters()) or a (value, gradient) pair of arrays, got "
                f"{type(item).__name__}"
            )
        if (
            value.shape != grad.shape
            or value.dtype.kind != "f"
            or not _writable(value).flags.writeable
        ):
            raise ValueError(
                f"{where}: params[{i}] must be a writable float array with a gradient of its "
                f"shape, got shapes {value.shape} and {grad.shape}, dtype {value.dtype}"
            )
        out.append((value, grad, owner))
    return out


class Slot:
    """What one update runs on: a parameter, or all of a module's parameters as one array.

    A module whose parameters are views of one flat buffer (``LSTM``: the engine's, with zero
    padding between tensors) offers it through ``flat_buffers()``. When an optimizer is given
    every parameter of such a module, one update runs over the whole buffer instead of one
    per tensor (the padding is zero in values and gradients, and every update rule keeps a
    zero at zero), which is what keeps a training step's Python cost flat in the number of
    layers. ``members`` maps the slot back to the parameters: (index, offset, shape).
    """

    def __init__(
        self, value: np.ndarray, grad: np.ndarray, members: list[tuple[int, int, tuple[int, ...]]]
    ) -> None:
        self.value, self.grad, self.members = value, grad, members


def _writable(value: np.ndarray) -> np.ndarray:
    """The array an update writes into: a parameter's writable view (its owner is told after
    the step), or the caller's own array."""
    writable = getattr(value, "writable", None)
    return writable() if callable(writable) else value


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def _member(buffer: np.ndarray, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """The view of one parameter's part of a slot's buffer (see :class:`Slot`)."""
    return buffer.reshape(-1)[offset : offset + int(np.prod(shape))].reshape(shape)


def make_slots(entries: list[tuple[np.ndarray, np.ndarray, Any]]) -> list[Slot]:
    """Group ``resolve_params`` entries into slots (see :class:`Slot`)."""
    slots: list[Slot] = []
    done: set[int] = set()
    for i, (value, grad, owner) in enumerate(entries):
        if i in done:
            continue
        flat = getattr(owner, "flat_buffers", None)
        if flat is not None:
            members = [j for j, e in enumerate(entries) if e[2] is owner]
            own = {id(p) for p in owner.parameters()}
            if own == {id(entries[j][0]) for j in members}:
                values, grads = flat()
                base, size = _address(values), values.itemsize
                layout = [
                    (j, (_address(entries[j][0]) - base) // size, entries[j][0].shape)
                    for j in members
                ]
                slots.append(Slot(values, grads, layout))
                done.update(members)
                continue
        # Plain views: buffers derived from the slot (np.zeros_like) must not be parameters.
        slots.append(Slot(_writable(value), grad.view(np.ndarray), [(i, 0, value.shape)]))
        done.add(i)
    return slots


class Optimizer:
    """Base class: holds the parameters, the learning rate and per-parameter state.

    Parameters
    ----------
    params : Module, or iterable of parameters or of (ndarray, ndarray) pairs
        ``model.parameters()`` (or the model itself), as torch.optim takes them; or
        ``(value, gradient)`` pairs of arrays you own, updated in place.
    lr : float
        Learning rate; schedulers change ``optimizer.lr`` between epochs.

    Attributes
    ----------
    params : list of ndarray
        The parameters, in the order given.
    state : list of dict of ndarray
        Per parameter, its buffers (``exp_avg``, ...) by name; empty before the first step.
    """

    name = "Optimizer"
    _state_keys: tuple[str, ...] = ()

    def __init__(self, params, lr: float) -> None:
        where = type(self).__name__
        module = params if callable(getattr(params, "parameters", None)) else None
        entries = resolve_params(where, params)
        self.params: list[np.ndarray] = [value for value, _, _ in entries]
        self._grads = [grad for _, grad, _ in entries]
        self._slots = make_slots(entries)
        # Told after each step: the module given, else the modules that own the parameters.
        self._owners = (
            [module]
            if module is not None
            else list({id(o): o for _, _, o in entries if o is not None}.values())
        )
        # Buffers per slot; per-parameter views of them make up ``state``.
        self._slot_state: list[dict[str, np.ndarray]] = [{} for _ in self._slots]
        self.lr = check_float(where, "lr", lr)
        self.step_count = 0

    def hyperparameters(self) -> dict:
        """The constructor's arguments (with the current ``lr``), as plain Python values."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    @property
    def state(self) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = [{} for _ in self.params]
        for slot, buffers in zip(self._slots, self._slot_state):
            for i, offset, shape in slot.members:
                out[i] = {k: _member(v, offset, shape) for k, v in buffers.items()}
        return out

    def updates(self, params) -> bool:
        """Whether this optimizer updates exactly ``params`` (a module or its parameters).

        Compares memory, not array objects, so that views made apart count as the same.
        """
        entries = resolve_params(f"{type(self).__name__}.updates", params)
        return [(_address(v), v.shape) for v in self.params] == [
            (_address(v), v.shape) for v, _, _ in entries
        ]

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        for slot in self._slots:
            slot.grad.fill(0)

    def step(self) -> None:
        """Apply one update to every parameter, in place, then tell the modules that own them."""
        self.step_count += 1
        for k, slot in enumerate(self._slots):
            self._update(k, slot.value, slot.grad)
        for owner in self._owners:
            owner.params_updated()

    def _update(
        self, k: int, param: np.ndarray, grad: np.ndarray
    ) -> None:  # pragma: no cover - abstract
        """One update of slot ``k`` (its buffers are ``self._slot_state[k]``)."""
        raise NotImplementedError

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A copy of everything needed to continue: name, hyperparameters, step, buffers.

        Returns
        -------
        dict
            ``{"name": str, "hyperparameters": dict, "step_count": int,
            "state": list of dict of ndarray}`` (one dict per parameter, in the order given,
            empty before the first step).
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
        if len(states) != len(self.params):
            raise ValueError(
                f"{where}: state_dict must have {len(self.params)} parameter states, got "
                f"{len(states)}"
            )
        required = set(self._required_state(hyper))
        for i, (s, param) in enumerate(zip(states, self.params)):
            keys = set(s)
            if keys and keys != required:
                raise ValueError(
                    f"{where}: state {i} must have keys {sorted(required)}, got {sorted(keys)}"
                )
            for k, v in s.items():
                if np.shape(v) != param.shape:
                    raise ValueError(
                        f"{where}: state {i} {k!r} must have shape {param.shape}, got {np.shape(v)}"
                    )
        new_slot_state = []
        for slot in self._slots:
            given = [bool(states[i]) for i, _, _ in slot.members]
            if any(given) and not all(given):
                raise ValueError(
                    f"{where}: the states of parameters {[i for i, _, _ in slot.members]} must "
                    "all be empty or all be set (they are updated together)"
                )
            buffers: dict[str, np.ndarray] = {}
            if all(given):
                for key in required:
                    flat = np.zeros_like(slot.value)
                    for i, offset, shape in slot.members:
                        _member(flat, offset, shape)[...] = states[i][key]
                    buffers[key] = flat
            new_slot_state.append(buffers)
        fresh = type(self)(list(zip(self.params, self._grads)), **hyper)  # checks them
        for k, v in vars(fresh).items():
            if k not in ("params", "_grads", "_slots", "_owners", "_slot_state", "step_count"):
                setattr(self, k, v)
        self._slot_state = new_slot_state
        self.step_count = step_count

    def _required_state(self, hyper: dict) -> tuple[str, ...]:
        return self._state_keys


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : Module, or iterable of parameters or of (ndarray, ndarray) pairs
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
                f"SGD: momentum must be > 0 and dampening 0 with nesterov=True, got "
                f"momentum={momentum}, dampening={dampening}"
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

    def _update(self, k, param, grad):
        state = self._slot_state[k]
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param  # a new array: p.grad is left alone
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, copy=True)
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        param -= self.lr * grad


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient).

    Parameters
    ----------
    params : Module, or iterable of parameters or of (ndarray, ndarray) pairs
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

    def _update(self, k, param, grad):
        beta1, beta2 = self.betas
        s = self._slot_state[k]
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
    params : Module, or iterable of parameters or of (ndarray, ndarray) pairs
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
