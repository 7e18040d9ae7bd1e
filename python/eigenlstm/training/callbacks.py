"""What ``Trainer.fit`` reports and who may act on it: History, Callback, EarlyStopping,
ModelCheckpoint, ResetStates.

The loop itself is in trainer.py; it calls these hooks once per epoch (and per batch) and reads
``trainer.stop_training`` after each epoch. Files are written by ``Trainer.save`` (io/).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

__all__ = ["History", "Callback", "EarlyStopping", "ModelCheckpoint", "ResetStates"]


def _monitored(where: str, monitor: str, logs: dict) -> float:
    """The value of ``monitor`` in an epoch's logs, or ValueError naming the metrics there are."""
    if monitor not in logs:
        hint = "; pass validation_data to fit" if monitor.startswith("val_") else ""
        raise ValueError(
            f"{where}: monitor must be one of the epoch metrics {sorted(logs)}{hint}, "
            f"got {monitor!r}"
        )
    return float(logs[monitor])


class History:
    """Per-epoch metrics of a training run, as returned by ``Trainer.fit``.

    Attributes
    ----------
    history : dict of str to list of float
        ``"loss"`` (mean training loss of each epoch), plus ``"val_loss"`` with validation data
        and ``"val_accuracy"`` with validation data and the cross-entropy loss.
    epoch : list of int
        The 0-based index of each recorded epoch (counting epochs of resumed runs too).
    stop_reason : str or None
        Why training ended before ``epochs`` (early stopping, a non-finite loss), else None.

    Examples
    --------
    >>> h = History()
    >>> h.append(0, {"loss": 1.5})
    >>> h.history
    {'loss': [1.5]}
    """

    def __init__(
        self,
        history: dict[str, list[float]] | None = None,
        epoch: list[int] | None = None,
        stop_reason: str | None = None,
    ) -> None:
        self.history: dict[str, list[float]] = {
            k: [float(v) for v in vs] for k, vs in (history or {}).items()
        }
        self.epoch: list[int] = [int(e) for e in (epoch or [])]
        self.stop_reason = stop_reason

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        """Record the metrics of one finished epoch."""
        self.epoch.append(int(epoch))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def to_dict(self) -> dict:
        """A JSON-ready copy (used by checkpoints)."""
        return {
            "history": {k: list(v) for k, v in self.history.items()},
            "epoch": list(self.epoch),
            "stop_reason": self.stop_reason,
        }

    def __repr__(self) -> str:
        last = {k: round(v[-1], 6) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


class Callback:
    """Base class of training callbacks; override the hooks you need.

    ``Trainer.fit`` calls, in order: ``set_trainer(trainer)``, ``on_train_begin(logs)``, then
    per epoch ``on_epoch_begin(epoch)``, ``on_batch_end(batch, logs)`` for each batch and
    ``on_epoch_end(epoch, logs)``, and finally ``on_train_end(logs)``. ``self.trainer`` is the
    trainer and ``self.model`` its model; set ``self.trainer.stop_training = True`` to stop
    after the current epoch.
    """

    trainer: Any = None  # the Trainer running fit (set by set_trainer)
    model: Any = None  # its model

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer
        self.model = trainer.model

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Called before each epoch (0-based, counting resumed epochs)."""

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Called after each optimizer step with ``{"loss": batch loss, "size": batch size}``."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Called after each epoch with that epoch's metrics (``loss``, ``val_loss``, ...)."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """Called once when training ends, however it ends."""


class EarlyStopping(Callback):
    """Stop training when a monitored metric has stopped improving.

    Parameters
    ----------
    monitor : str, default "val_loss"
        The metric to watch, a key of the epoch logs (``val_loss`` needs ``validation_data``).
    patience : int, default 5
        Epochs without improvement before stopping.
    min_delta : float, default 0.0
        The smallest change that counts as an improvement.
    mode : {"auto", "min", "max"}, default "auto"
        Whether lower or higher is better; "auto" picks "max" for accuracies, else "min".
    restore_best_weights : bool, default False
        At the end of training, put back the weights of the best epoch.

    Attributes
    ----------
    best : float
        The best value seen.
    best_epoch : int or None
    stopped_epoch : int or None
        The epoch after which training was stopped, if it was.

    Raises
    ------
    ValueError
        (from ``on_epoch_end``) if ``monitor`` is not among the epoch's metrics.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((64, 5, 2)), rng.standard_normal((64, 1))
    >>> trainer = el.Trainer(el.LSTMModel(2, 8, 1, seed=0))
    >>> stop = el.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    >>> h = trainer.fit(x, y, epochs=50, validation_data=(x[:16], y[:16]), callbacks=[stop],
    ...                 progress=False, seed=0)
    >>> len(h.history["val_loss"]) <= 50
    True
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = False,
    ) -> None:
        where = "EarlyStopping"
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(f"{where}: patience must be an int >= 0, got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real) or min_delta < 0:
            raise ValueError(f"{where}: min_delta must be a float >= 0, got {min_delta!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{where}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor: str = str(monitor)
        self.patience: int = int(patience)
        self.min_delta: float = float(min_delta)
        if mode == "auto":
            mode = "max" if "acc" in self.monitor else "min"
        self.mode: str = mode
        self.restore_best_weights: bool = bool(restore_best_weights)
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.best_weights = None
        self.stopped_epoch: int | None = None
        self.wait = 0

    def on_train_begin(self, logs=None) -> None:
        self._reset()

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = _monitored("EarlyStopping", self.monitor, logs or {})
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True
            self.trainer.stop_reason = (
                f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                f"(best {self.best:.6g} at epoch {self.best_epoch})"
            )

    def on_train_end(self, logs=None) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model to a checkpoint at the end of each epoch, or only when it improves.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file (``.npz`` by convention), written with ``Trainer.save`` (the model
        and the run) and replaced atomically at each save.
    monitor : str, optional, keyword-only
        A key of the epoch logs to watch (``"loss"``, ``"val_loss"``, ``"val_accuracy"``);
        ``val_*`` keys need ``validation_data``. Required with ``save_best_only``.
    mode : {"min", "max"}, default "min", keyword-only
        Whether lower or higher values of ``monitor`` are better.
    save_best_only : bool, default False, keyword-only
        Save only after epochs whose ``monitor`` value beats every earlier epoch of the run;
        otherwise save after every epoch.

    Attributes
    ----------
    best : float
        The best ``monitor`` value of the run so far (``inf`` for "min", ``-inf`` for "max"
        before any; stays so without ``monitor``).
    best_epoch : int or None
        The 0-based epoch of ``best``, when known.
    last_saved_epoch : int or None
        The 0-based epoch of the last file this callback wrote.

    Raises
    ------
    TypeError
        If ``path`` is not a str or os.PathLike.
    ValueError
        If ``mode`` is not "min" or "max", or ``save_best_only`` is set without ``monitor``;
        from ``on_epoch_end``, if ``monitor`` is not among the epoch's metrics, or (from
        ``Trainer.save``) if a weight is NaN or infinite.
    OSError
        From ``on_epoch_end``, if the file cannot be written; the previous file is untouched.

    Notes
    -----
    A save holds everything ``Trainer.save`` writes (weights, optimizer and schedule,
    shuffling RNG, dropout stream, epoch count and history), taken in ``on_epoch_end``, that
    is after an epoch has completed and ``fit`` has checked its weights are finite. So
    ``Trainer.load(path).fit(x, y, epochs=k, resume=True)`` continues the run exactly as if it had
    never stopped, and no file ever holds a partial epoch: if ``fit`` is interrupted (Ctrl-C)
    mid-epoch nothing is saved, and if it is interrupted during a save the previous file stays
    intact (the write goes to a temp file renamed into place).

    Saving also refuses what :func:`eigenlstm.save` refuses: weights holding NaN or infinity
    are never written over a good file. A NaN or infinite ``monitor`` value never counts as an
    improvement.

    With ``save_best_only``, ``best`` starts from the ``monitor`` values already in the
    run's history (a second ``fit(..., resume=True)``, or a trainer loaded from a checkpoint),
    so a resumed run never overwrites its best checkpoint with a worse epoch; a fresh
    ``fit`` starts from scratch. The file then holds the best epoch, not the last one.

    Examples
    --------
    >>> import os, tempfile, numpy as np, eigenlstm as el
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((64, 5, 2)), rng.standard_normal((64, 1))
    >>> path = os.path.join(tempfile.mkdtemp(), "best.npz")
    >>> trainer = el.Trainer(el.LSTMModel(2, 8, 1, seed=0))
    >>> save = el.ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    >>> h = trainer.fit(x, y, epochs=5, validation_data=(x[:16], y[:16]), callbacks=[save],
    ...                 progress=False, seed=0)
    >>> el.Trainer.load(path).history.history["val_loss"][-1] == min(h.history["val_loss"])
    True
    """

    def __init__(
        self, path, *, monitor: str | None = None, mode: str = "min", save_best_only: bool = False
    ) -> None:
        where = "ModelCheckpoint"
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"{where}: path must be a str or os.PathLike, got {type(path).__name__}"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"{where}: mode must be 'min' or 'max', got {mode!r}")
        if save_best_only and monitor is None:
            raise ValueError(
                f"{where}: save_best_only=True needs a monitor (e.g. monitor='val_loss') to "
                "tell which epoch is best"
            )
        self.path = os.fspath(path)
        self.monitor = None if monitor is None else str(monitor)
        self.mode = mode
        self.save_best_only = bool(save_best_only)
        self.last_saved_epoch: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None

    def _improved(self, value: float) -> bool:
        # NaN compares False either way: a NaN metric is never an improvement.
        return value < self.best if self.mode == "min" else value > self.best

    def on_train_begin(self, logs=None) -> None:
        # Start from the epochs the run already has (resume), so that a resumed run's first
        # epoch does not replace a better checkpoint; a fresh fit has an empty history.
        self._reset()
        history = self.trainer.history
        if self.monitor is None or history is None:
            return
        values = history.history.get(self.monitor, [])
        epochs = history.epoch if len(history.epoch) == len(values) else [None] * len(values)
        for epoch, value in zip(epochs, values):
            if math.isfinite(value) and self._improved(value):
                self.best, self.best_epoch = float(value), epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        improved = False
        if self.monitor is not None:
            value = _monitored("ModelCheckpoint", self.monitor, logs or {})
            improved = math.isfinite(value) and self._improved(value)
            if self.save_best_only and not improved:
                return
        self.trainer.save(self.path)  # atomic; refuses NaN or infinite weights
        self.last_saved_epoch = epoch
        if improved:  # only once the file holds it: a failed save must not raise the bar
            self.best, self.best_epoch = value, epoch


class ResetStates(Callback):
    """Zero the state a stateful ``fit`` carries at the end of every epoch (Keras's idiom of
    calling ``model.reset_states()`` in ``on_epoch_end``).

    ``fit(..., stateful=True)`` already zeroes the carried state at the start of each epoch
    unless ``reset_each_epoch=False``; with that default this callback changes only what is
    left after the last epoch (zeros rather than the last batch's final state). It is for runs
    with ``reset_each_epoch=False``, or a subclass that resets on a schedule of its own.

    Notes
    -----
    ``fit`` takes its rollback point before the callbacks' ``on_epoch_end`` (see
    ``Trainer.fit``), and ``ModelCheckpoint`` saves in its own ``on_epoch_end``: list
    ``ResetStates`` before ``ModelCheckpoint`` for the file to hold the reset state.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> x = np.random.default_rng(0).standard_normal((8, 5, 2))
    >>> trainer = el.Trainer(el.LSTMModel(2, 4, 1, seed=0))
    >>> _ = trainer.fit(x, x.sum(axis=(1, 2)), epochs=2, batch_size=4, shuffle=False,
    ...                 stateful=True, reset_each_epoch=False, callbacks=[el.ResetStates()],
    ...                 progress=False)
    >>> trainer.carried_state is None
    True
    """

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.trainer.reset_states()
