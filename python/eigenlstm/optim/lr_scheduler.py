"""Learning-rate schedules, as ``torch.optim.lr_scheduler`` has them: StepLR, CosineAnnealingLR.

Each changes ``optimizer.lr`` once per ``step()``; the trainer steps them once per epoch.
"""

from __future__ import annotations

import math
import numbers

from .._validation import check_float
from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR"]


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
        return {
            "name": self.name,
            "hyperparameters": self.hyperparameters(),
            "base_lr": self.base_lr,
            "last_epoch": self.last_epoch,
        }

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
        if (
            isinstance(step_size, bool)
            or not isinstance(step_size, numbers.Integral)
            or step_size < 1
        ):
            raise ValueError(f"StepLR: step_size must be an int >= 1, got {step_size!r}")
        self.step_size: int = int(step_size)
        self.gamma: float = check_float("StepLR", "gamma", gamma)

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
        self.T_max: int = int(T_max)
        self.eta_min: float = check_float("CosineAnnealingLR", "eta_min", eta_min)

    def hyperparameters(self) -> dict:
        return {"T_max": self.T_max, "eta_min": self.eta_min}

    def _next_lr(self, lr: float) -> float:
        e, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if e == 0:
            return lr
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - eta_min) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (
            lr - eta_min
        ) + eta_min
