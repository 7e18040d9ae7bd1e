"""``eigenlstm.Trainer``: mini-batch training of any module, with rollback, resume and checkpoints.

The loop asks only for torch's module protocol plus an explicit backward: ``train``/``eval``,
``model(x)`` (or ``model(x, lengths=...)``), ``backward(d_output)``, ``zero_grad``,
``parameters``, ``state_dict``/``load_state_dict`` and ``get_extra_state``/``set_extra_state``
(the dropout stream). Everything else a run owns (optimizer, schedule, shuffling RNG, epoch
count, history, the state a stateful run carries) lives here, and goes into checkpoints
through ``state_dict()``. Truncated backpropagation through time and stateful training carry
an LSTM's ``(h, c)`` through ``model(x, state=..., return_state=True)``.
"""
# Sizes: N samples, B batch, L time steps, k steps of a truncated-BPTT chunk.

from __future__ import annotations

import contextlib
import math
import numbers
import signal
import threading
import time
import warnings
from typing import Any, Callable

import numpy as np

from .. import io as _io
from .. import optim as _optim
from .._validation import as_array, as_real_array, check_lengths, check_positive_int
from ..nn.losses import check_labels, cross_entropy, get_loss, mse_loss, sequence_loss
from ..nn.module import eval_in_batches
from ..optim import lr_scheduler as _sched
from ..optim.clip import clip_grad_norm_
from ..optim.optimizer import make_slots, resolve_params
from . import distributed as _distributed
from .callbacks import Callback, History

__all__ = ["Trainer", "make_optimizer", "make_scheduler"]

OPTIMIZERS: dict[str, Callable[..., _optim.Optimizer]] = {
    "sgd": _optim.SGD,
    "adam": _optim.Adam,
    "adamw": _optim.AdamW,
}
SCHEDULERS: dict[str, Callable[..., _sched.LRScheduler]] = {
    "step": _sched.StepLR,
    "steplr": _sched.StepLR,
    "cosine": _sched.CosineAnnealingLR,
    "cosineannealinglr": _sched.CosineAnnealingLR,
}


def make_optimizer(spec, params, lr: float, *, where: str = "make_optimizer") -> _optim.Optimizer:
    """Build an optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``) or return an instance.

    Parameters
    ----------
    spec : str or Optimizer
        The name, or an optimizer already built on ``params``.
    params : Module or iterable of parameters
    lr : float
        Learning rate for a named optimizer.
    where : str, optional
        The public function to name in error messages.

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
    if isinstance(spec, _optim.Optimizer):
        return spec
    key = str(spec).lower()
    if key not in OPTIMIZERS:
        raise ValueError(
            f"{where}: optimizer must be one of {sorted(OPTIMIZERS)} or an Optimizer, got {spec!r}"
        )
    return OPTIMIZERS[key](params, lr=lr)


def make_scheduler(
    spec, optimizer: _optim.Optimizer, epochs: int, *, where: str = "make_scheduler"
) -> _sched.LRScheduler | None:
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
    >>> import numpy as np, eigenlstm as el
    >>> opt = el.optim.SGD([(np.zeros(1), np.zeros(1))], lr=1.0)
    >>> sched = make_scheduler(("step", {"step_size": 5, "gamma": 0.5}), opt, epochs=20)
    >>> type(sched).__name__, sched.step_size, sched.gamma
    ('StepLR', 5, 0.5)
    """
    if spec is None or isinstance(spec, _sched.LRScheduler):
        return spec
    name, kwargs = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(
            f"{where}: lr_schedule must be one of ['cosine', 'step'], a (name, kwargs) "
            f"pair or an LRScheduler, got {spec!r}"
        )
    cls = SCHEDULERS[key]
    if cls is _sched.CosineAnnealingLR:
        kwargs.setdefault("T_max", epochs)
    else:
        kwargs.setdefault("step_size", max(1, epochs // 3))
    return cls(optimizer, **kwargs)


def _batch_loss(loss_fn, pred, y, lengths) -> tuple[float, np.ndarray, int]:
    """``(value, gradient, terms)`` of one batch; ``terms`` is what the value is a mean over:
    one per sample, or one per valid step of per-step outputs (N, L, O) (see
    :func:`~eigenlstm.nn.losses.sequence_loss`). An empty batch has none and a NaN value."""
    if len(y) == 0:
        return math.nan, np.zeros_like(pred), 0
    if pred.ndim == 3:
        return sequence_loss(loss_fn, pred, y, lengths)
    value, grad = loss_fn(pred, y)
    return float(value), grad, len(y)


def _shard_loss(group: _distributed.MPIGroup, value: float, grad, terms: int):
    """The loss of a global batch from this rank's part of it, this rank's share of its
    gradient, and the batch's number of terms.

    The loss is a mean over terms (samples, or valid steps), so the batch's is
    sum_r n_r * loss_r / n with n = sum_r n_r: each rank's gradient is weighted by n_r / n
    before the gradients are summed over ranks, and the value returned, the same on every
    rank, is the whole batch's. A rank with no terms (a last batch smaller than the ranks)
    adds zero.
    """
    loss_sum, n = group.sum([value * terms if terms else 0.0, float(terms)])
    return float(loss_sum) / n, grad * (terms / n), int(n)


#: The settings of a run added after checkpoints first held settings, with the values that
#: runs without them ran with: a run holds them only when it differs from these.
_SETTING_DEFAULTS = {"tbptt": None, "stateful": False, "reset_each_epoch": True}


class _Run:
    """Everything ``fit(resume=True)`` and checkpoints need to continue a run exactly."""

    def __init__(self, optimizer, scheduler, rng, history, epoch, settings):
        self.optimizer = optimizer  # Optimizer bound to the model's parameters
        self.scheduler = scheduler  # LRScheduler or None, stepped once per epoch
        self.rng = rng  # np.random.Generator that shuffles the batches
        self.history = history  # History of every epoch so far
        self.epoch = epoch  # epochs completed
        self.settings = settings  # loss name, batch_size, clip_grad_norm, shuffle, tbptt, ...
        # (h, c) a stateful fit carries from batch to batch; None stands for zeros. Replaced
        # by new arrays at each batch, never written into, so holding a reference is a copy.
        self.carried: tuple[np.ndarray, np.ndarray] | None = None


class _EpochSnapshot:
    """Copies of everything ``fit`` changes, taken at an epoch boundary to roll back to.

    The optimizer is copied through its ``state_dict`` (buffers, step count, learning rate)
    and the scheduler through its attributes (``last_epoch``, ...). History is append-only
    during ``fit``, so it is kept as lengths (truncating restores it) rather than copied each
    epoch, which would cost O(epochs^2) over a long run.
    """

    def __init__(self, model, run: _Run) -> None:
        h, opt = run.history, run.optimizer
        self.weights = model.state_dict()  # copies, torch names
        self.extra_state = model.get_extra_state()  # the dropout stream
        self.optimizer = opt.state_dict()  # copies
        self.scheduler = None if run.scheduler is None else dict(vars(run.scheduler))
        self.rng = run.rng.bit_generator.state  # a fresh dict
        self.history_lengths = {k: len(v) for k, v in h.history.items()}
        self.history_epochs = len(h.epoch)
        self.history_stop_reason = h.stop_reason
        self.epoch = run.epoch
        self.carried = run.carried  # never written into (see _Run)

    def restore(self, model, run: _Run) -> None:
        model.load_state_dict(self.weights)
        model.set_extra_state(self.extra_state)
        run.optimizer.load_state_dict(self.optimizer)
        if run.scheduler is not None:
            vars(run.scheduler).update(self.scheduler)
        run.rng.bit_generator.state = self.rng
        h = run.history  # in place: the caller may hold this History or its lists
        for key in list(h.history):
            if key in self.history_lengths:
                del h.history[key][self.history_lengths[key] :]
            else:
                del h.history[key]
        del h.epoch[self.history_epochs :]
        h.stop_reason = self.history_stop_reason
        run.epoch = self.epoch
        run.carried = self.carried
        model.zero_grad()


@contextlib.contextmanager
def _sigint_held():
    """Hold back Ctrl-C for the duration of the block; yields a list that records it.

    Used while ``fit`` rolls the model back: a second Ctrl-C (users press it twice) must not
    leave the model half restored. Only possible in the main thread, and only done when
    Python's default handler is installed (a custom handler is the caller's business).
    """
    received: list = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress_bar(progress: bool, total: int):
    """A tqdm bar, or a silent stand-in when ``progress`` is off or tqdm is not installed."""
    if progress:
        try:
            from tqdm.auto import tqdm  # optional: the eigenlstm[cli] extra
        except ImportError:
            warnings.warn(
                "progress=True needs tqdm (pip install 'eigenlstm[cli]'); training "
                "without a progress bar",
                RuntimeWarning,
                stacklevel=4,
            )
        else:
            return tqdm(total=total, unit="batch", leave=True, dynamic_ncols=True)
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str, refresh: bool = True) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    r"""Trains a module on ``(x, y)`` with mini-batches: ``Trainer(model).fit(x, y)``.

    Parameters
    ----------
    model : Module
        Anything with torch's module protocol and an explicit backward: ``train()``,
        ``eval()``, ``model(x)`` (and ``model(x, lengths=...)`` if ``lengths`` are given),
        ``backward(d_output)``, ``zero_grad()``, ``parameters()``, ``state_dict()``,
        ``load_state_dict()``, ``get_extra_state()`` and ``set_extra_state()``; for example
        :class:`eigenlstm.LSTMModel`, or a module of your own built from ``LSTM`` and
        ``Linear`` layers.

    Attributes
    ----------
    model : Module
    optimizer : Optimizer or None
        The optimizer of the current run (None before ``fit``).
    scheduler : LRScheduler or None
    history : History or None
        Every epoch of the current run, across resumes.
    epoch : int
        Epochs completed in the current run.
    stop_training : bool
        Set it to True (from a callback) to stop after the current epoch.
    stop_reason : str or None
        Why the last ``fit`` ended before its last epoch.
    carried_state : tuple (h, c) or None
        The state a ``fit(..., stateful=True)`` carries into its next batch (None: zeros).

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((256, 8, 1))
    >>> y = x.sum(axis=1)
    >>> trainer = el.Trainer(el.LSTMModel(1, 16, 1, seed=0))
    >>> h = trainer.fit(x, y, epochs=20, lr=1e-2, progress=False, seed=0)
    >>> h.history["loss"][-1] < h.history["loss"][0]
    True
    """

    _PROTOCOL = (
        "train",
        "eval",
        "backward",
        "zero_grad",
        "parameters",
        "state_dict",
        "load_state_dict",
        "get_extra_state",
        "set_extra_state",
    )

    def __init__(self, model) -> None:
        missing = [m for m in self._PROTOCOL if not callable(getattr(model, m, None))]
        if missing or not callable(model):
            raise TypeError(
                f"Trainer: model must be a module with forward, {', '.join(self._PROTOCOL)}; "
                f"got {type(model).__name__}, which lacks {missing or ['__call__']}"
            )
        self.model = model
        self.stop_training = False
        self.stop_reason: str | None = None
        self._run: _Run | None = None
        self._group: _distributed.MPIGroup | None = None  # the ranks, during a distributed fit

    # ---- the current run -------------------------------------------------------------------
    @property
    def optimizer(self) -> _optim.Optimizer | None:
        return None if self._run is None else self._run.optimizer

    @property
    def scheduler(self) -> _sched.LRScheduler | None:
        return None if self._run is None else self._run.scheduler

    @property
    def history(self) -> History | None:
        return None if self._run is None else self._run.history

    @property
    def epoch(self) -> int:
        return 0 if self._run is None else self._run.epoch

    @property
    def carried_state(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Copies of the ``(h, c)`` that a ``fit(..., stateful=True)`` carries into its next
        batch, each of shape (num_layers, batch_size, H); None when it is zeros (after
        :meth:`reset_states`, at the start of a run, or in a run that is not stateful)."""
        carried = None if self._run is None else self._run.carried
        return None if carried is None else (carried[0].copy(), carried[1].copy())

    def reset_states(self) -> None:
        """Zero the state a stateful run carries, as Keras's ``model.reset_states()``: the next
        batch starts every row from zeros. Nothing to do before ``fit``.

        Examples
        --------
        >>> import numpy as np, eigenlstm as el
        >>> x = np.random.default_rng(0).standard_normal((8, 5, 2))
        >>> trainer = el.Trainer(el.LSTMModel(2, 4, 1, seed=0))
        >>> _ = trainer.fit(x, x.sum(axis=(1, 2)), epochs=1, batch_size=4, shuffle=False,
        ...                 stateful=True, progress=False)
        >>> trainer.carried_state[0].shape
        (1, 4, 4)
        >>> trainer.reset_states()
        >>> trainer.carried_state is None
        True
        """
        if self._run is not None:
            self._run.carried = None

    def __repr__(self) -> str:
        return f"Trainer({type(self.model).__name__}, epoch={self.epoch}, optimizer={self.optimizer!r})"

    # ---- data checks -----------------------------------------------------------------------
    def _check_data(self, where: str, x, y, lengths, loss_name, suffix: str = ""):
        """Convert and check one data set, all before anything is trained.

        ``x`` is checked by the model itself: an evaluation-mode forward of the sequences with
        the shortest and the longest length (of the first one without lengths) raises the
        model's own error for a wrong shape or length, and gives the output shape that ``y``
        must match.
        """
        # Converted once to the model's dtype (a module without one gets floats as given).
        x = as_array(where, f"x{suffix}", x)
        model_dtype = getattr(self.model, "dtype", None)
        if model_dtype is not None:
            dtype = np.dtype(model_dtype)
        else:
            dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
        x = as_real_array(where, f"x{suffix}", x, dtype)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(
                f"{where}: x{suffix} must hold at least one sample, got shape {x.shape}"
            )
        N = x.shape[0]
        y_arr = as_array(where, f"y{suffix}", y)
        if y_arr.ndim == 0 or y_arr.shape[0] != N:
            got = "a scalar" if y_arr.ndim == 0 else f"{y_arr.shape[0]}"
            raise ValueError(
                f"{where}: x{suffix} and y{suffix} must have the same number of samples, got {N} "
                f"in x{suffix} and {got} in y{suffix}"
            )
        if lengths is not None:
            # Kind and shape here; the range is the model's to say (an LSTMModel needs >= 1),
            # and the probe below runs the shortest and the longest sequence through it.
            lengths = check_lengths(where, f"lengths{suffix}", lengths, N, None)
            probe = np.unique([int(np.argmin(lengths)), int(np.argmax(lengths))])
        else:
            probe = np.array([0])
        try:
            out = self._predict(x[probe], None if lengths is None else lengths[probe], None)
        except (ValueError, TypeError) as exc:
            # The model's own message, said of the whole array: the model saw one or two of
            # its samples, which is the shape its message gives.
            what = f"x{suffix} of shape {x.shape}" + (
                "" if lengths is None else f" with lengths{suffix}"
            )
            raise type(exc)(
                f"{where}: {what} does not fit the model (checked on {len(probe)} of its "
                f"samples): {exc}"
            ) from None
        y = self._check_targets(where, f"y{suffix}", y_arr, N, out.shape[1:], loss_name, x.dtype)
        return x, y, lengths

    @staticmethod
    def _check_targets(where, name, y, N, out_shape, loss_name, dtype):
        # A model output of shape (N, L, O) is per step: a target (label) per step and output.
        per_step = len(out_shape) == 2
        if loss_name == "cross_entropy":
            if per_step:
                return check_labels(where, name, y, N, out_shape[1], steps=out_shape[0])
            return check_labels(where, name, y, N, int(np.prod(out_shape)))
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{where}: {name} must hold real numbers, got dtype {y.dtype}")
        if loss_name is None:  # a callable loss checks its own targets
            return y
        if out_shape[-1:] == (1,) and y.shape == (N,) + tuple(out_shape[:-1]):
            y = y[..., None]  # one output: (N,) for (N, 1), (N, L) for (N, L, 1)
        if y.shape[1:] != out_shape:
            axes = "(samples, steps, outputs)" if per_step else "(samples, outputs)"
            raise ValueError(
                f"{where}: {name} must have shape {(N,) + tuple(out_shape)} {axes}, got {y.shape}"
            )
        return y.astype(dtype)

    def _check_carry(self, where: str, x, lengths, tbptt: int | None) -> None:
        """That the model can carry its state from one call to the next, as ``tbptt`` and
        ``stateful`` need (and, with ``tbptt``, gives an output at every step): one
        evaluation-mode forward of the first sample with ``return_state=True`` says so."""
        what = "stateful=True" if tbptt is None else f"tbptt={tbptt}"
        if getattr(self.model, "bidirectional", False):
            raise ValueError(
                f"{where}: {what} needs a unidirectional model (a reverse direction reads each "
                "sequence from its end, so no state carries forward), got bidirectional=True"
            )
        try:
            ((out, _),) = eval_in_batches(
                self.model, x[:1], 1, None if lengths is None else lengths[:1], return_state=True
            )
        except TypeError as exc:
            raise TypeError(
                f"{where}: {what} needs a model whose forward takes state= and "
                f"return_state=True, as LSTMModel's does; {type(self.model).__name__} refused "
                f"them ({exc})"
            ) from None
        if tbptt is not None and (out.ndim != 3 or out.shape[1] != x.shape[1]):
            raise ValueError(
                f"{where}: tbptt needs a model with an output at every step, (N, {x.shape[1]}, "
                "O) for x of shape (N, L, I), as LSTMModel(..., many_to_many=True) gives; got "
                f"tbptt={tbptt} for a model whose output has shape {(len(x),) + out.shape[1:]}"
            )

    # ---- training --------------------------------------------------------------------------
    def fit(
        self,
        x,
        y,
        *,
        epochs: int = 10,
        batch_size: int = 32,
        loss="mse",
        optimizer="adam",
        lr: float = 1e-3,
        clip_grad_norm: float | None = None,
        validation_data=None,
        shuffle: bool = True,
        seed: int | None = None,
        progress: bool = True,
        callbacks: list[Callback] | None = None,
        lengths=None,
        lr_schedule=None,
        resume: bool = False,
        distributed: str | None = None,
        tbptt: int | None = None,
        stateful: bool = False,
        reset_each_epoch: bool = True,
    ) -> History:
        r"""Train on ``(x, y)`` with mini-batches.

        Parameters
        ----------
        x : array_like of shape (N, ...)
            Inputs, ``(N, L, I)`` sequences for an LSTMModel.
        y : array_like of shape (N, O) for "mse" ((N,) if O = 1), or int of shape (N,)
            Targets, or class indices in [0, O) for "cross_entropy". For a model with an
            output at every step, ``(N, L, O)`` ((N, L) if O = 1), or int of shape (N, L).
        epochs : int, default 10
            Epochs to run in this call (with ``resume=True``: epochs to add).
        batch_size : int, default 32
        loss : {"mse", "cross_entropy"} or callable, default "mse"
            A callable takes ``(prediction, y_batch)`` and returns ``(value, gradient)``.
        optimizer : {"adam", "adamw", "sgd"} or Optimizer, default "adam"
            A name (built with ``lr``), or an optimizer built on the model's parameters.
        lr : float, default 1e-3
        clip_grad_norm : float, optional
            Clip the global gradient norm of every batch to this value.
        validation_data : tuple (x_val, y_val) or (x_val, y_val, lengths_val), optional
            Evaluated after each epoch: adds ``val_loss`` (and ``val_accuracy`` for
            cross-entropy) to the history.
        shuffle : bool, default True
            Reshuffle the samples each epoch.
        seed : int, optional
            Seeds the shuffling (the dropout masks are seeded by the model's own ``seed``).
        progress : bool, default True
            Show a tqdm progress bar with the loss and samples per second (needs the
            ``eigenlstm[cli]`` extra; without tqdm a warning says so and training goes on).
        callbacks : list of Callback, optional
            E.g. ``[EarlyStopping(patience=5), ModelCheckpoint("run.npz")]``.
        lengths : array_like of int of shape (N,), optional
            Valid steps of each right-padded sequence, passed to ``model(x, lengths=...)``.
            With per-step outputs, the steps past a length have no loss and no gradient.
        lr_schedule : {"cosine", "step"}, (name, kwargs), LRScheduler or None
            Per-epoch learning-rate schedule (see :func:`make_scheduler`).
        resume : bool, default False
            Continue this trainer's run (or the run of the checkpoint it was loaded from with
            :meth:`load`): the optimizer state, learning rate and schedule, shuffling RNG,
            dropout stream, epoch count and history carry on, so training 2 + 2 epochs this
            way gives bitwise the same weights as 4 epochs in one call. ``optimizer``,
            ``lr``, ``lr_schedule`` and ``seed`` are then ignored, and ``loss``,
            ``batch_size``, ``clip_grad_norm`` and ``shuffle`` must equal the original run's.
        distributed : {None, "mpi"}, default None
            ``"mpi"``: data-parallel training over the ranks of an ``mpiexec -n P`` job (needs
            the ``eigenlstm[mpi]`` extra). Every rank calls ``fit`` with the same arguments;
            see Notes. Not with ``tbptt`` or ``stateful``.
        tbptt : int, optional
            Truncated backpropagation through time over chunks of ``tbptt`` steps, for a
            model with an output at every step (``LSTMModel(..., many_to_many=True)``): each
            batch is trained chunk by chunk, one optimizer step per chunk, each chunk starting
            from the state the one before ended with (see Notes). None: the whole sequence.
        stateful : bool, default False
            Keras's ``stateful=True``: row ``r`` of each batch continues from the final state
            of row ``r`` of the batch before, so sample ``i * batch_size + r`` continues
            sample ``(i - 1) * batch_size + r``. Needs ``shuffle=False``, a unidirectional
            model whose forward takes ``state=`` and ``return_state=True`` (an LSTMModel) and
            N a multiple of ``batch_size``. :meth:`reset_states` zeroes the carried state.
        reset_each_epoch : bool, default True
            With ``stateful``: zero the carried state at the start of each epoch (each epoch
            reads the streams from their start). False carries it across epochs too, until
            :meth:`reset_states` or a :class:`~eigenlstm.ResetStates` callback zeroes it.

        Returns
        -------
        History
            ``history.history["loss"]`` etc., one value per epoch (all epochs of the run when
            resuming). If a batch loss (or, with clipping, the gradient norm) is NaN or
            infinite, training stops: a RuntimeWarning says where, ``history.stop_reason``
            records it and the weights are put back to those of the end of the last completed
            epoch (or of the start of this call). Such a run cannot be resumed exactly.

        Raises
        ------
        ValueError
            On shape or length mismatches between ``x``, ``y`` and ``lengths``, labels out
            of range, ``resume=True`` with nothing to resume or different settings; a
            ``tbptt`` below 1, or given for a model without an output at every step;
            ``stateful`` with ``shuffle=True`` or a short last batch; ``tbptt`` or
            ``stateful`` with a bidirectional model or ``distributed``.
        TypeError
            On non-numeric data or non-integer labels; a ``tbptt`` that is not an int, a
            ``stateful`` or ``reset_each_epoch`` that is not a bool, or (with them) a model
            whose forward does not take ``state=`` and ``return_state=True``.
        KeyboardInterrupt
            Re-raised after a Ctrl-C, once the model has been rolled back (see Notes); as is
            any other exception from inside the loop (a callback's, a loss function's).

        Notes
        -----
        **Interruption.** If the loop is stopped by an exception, ``KeyboardInterrupt``
        (Ctrl-C) included, wherever it lands (the engine, the loss, an optimizer step
        half applied, validation, a callback, a checkpoint being written), then

        1. the model is rolled back to the end of the last completed epoch (to the start of
           this call if none completed): weights, optimizer state and learning rate,
           schedule, shuffling RNG, dropout stream, epoch count and history all describe that
           epoch boundary, exactly as a checkpoint saved there would;
        2. the progress bar is closed and the callbacks' ``on_train_end`` hooks run (so
           ``EarlyStopping(restore_best_weights=True)`` still puts back its best weights);
        3. ``trainer.stop_reason`` says what stopped training and where it was rolled back to;
        4. the exception is re-raised, so Ctrl-C stops the program as Python users expect
           (catch ``KeyboardInterrupt`` around ``fit`` to carry on).

        Rolling back, rather than keeping the weights of the last optimizer step, is what
        makes ``fit(..., resume=True)`` correct afterwards: a partial epoch's weights,
        optimizer moments, shuffling order and dropout stream cannot be continued, while from
        the epoch boundary the resumed run is bitwise the uninterrupted one (a Ctrl-C in
        epoch ``k`` costs only the work of epoch ``k``). A second Ctrl-C during the rollback
        (which takes a copy's time) is held until it is done.

        Nothing of an interrupted epoch is ever written: ``ModelCheckpoint`` saves only in
        ``on_epoch_end``, after an epoch completed, and a save interrupted halfway leaves the
        previous file intact (:func:`eigenlstm.save` writes a temp file and renames it).

        **Truncated BPTT** (``tbptt=k``). A batch of sequences of ``L`` steps is cut into the
        chunks :math:`[t, t + k)`, :math:`t = 0, k, 2k, \dots` (the last may be shorter), and
        for each chunk in turn

        .. math::
            (\hat y_{[t, t+k)}, s_{t+k}) = f_\theta(x_{[t, t+k)}; s_t), \qquad
            \theta \leftarrow \mathrm{step}\big(\nabla_\theta\,
            \mathcal{L}(\hat y_{[t, t+k)}, y_{[t, t+k)}) \,\big|_{s_t\ \text{fixed}}\big)

        where :math:`s_t = (h_t, c_t)` is the state the previous chunk ended with (zeros for
        the first, or the carried state with ``stateful``), treated as a constant: no
        gradient flows from a chunk into the one before, as torch's ``h.detach()`` between
        chunks. The loss of a chunk is the mean over its valid steps. With ``lengths``, a
        sequence's steps past its length count in no chunk, and a sequence that has ended
        keeps its final state through the remaining chunks; a chunk in which every sequence
        has ended is skipped (no optimizer step). With ``k >= L`` this is full BPTT, bitwise.
        ``on_batch_end`` is called after every optimizer step (every chunk), with the
        count of steps of the epoch so far as ``batch``. The epoch's ``loss`` is the mean over
        every valid step trained, :math:`\sum_j M_j \mathcal{L}_j / \sum_j M_j` over the
        chunks ``j`` of :math:`M_j` valid steps. Each chunk's forward runs the model on a
        slice of steps, so the dropout masks differ from those of one forward over ``L``.

        **Stateful training** (``stateful=True``). The final state of batch ``i`` (after its
        last chunk, with ``tbptt``) is the initial state of batch ``i + 1``, row by row, and
        is a constant there as between chunks. It is zeroed at the start of each epoch
        unless ``reset_each_epoch=False``. Validation and :meth:`evaluate` run from zeros.
        The carried state is part of the run: rolled back with it on interruption, saved in
        checkpoints (``Trainer.save``, ``ModelCheckpoint``) and carried on by ``resume``, so
        an interrupted and resumed stateful run is bitwise the uninterrupted one.

        **Distributed training** (``distributed="mpi"``). Rank 0's weights, dropout stream,
        optimizer and scheduler state, shuffling RNG and epoch count are broadcast first, so
        every rank starts the same.
        Each global batch of ``batch_size`` samples (the same order on every rank) is split
        into contiguous shards, one per rank; each rank runs forward and backward on its
        shard, with its loss gradient weighted by its share of the batch's samples, and the
        gradients are summed over ranks (``Allreduce``), so that every rank applies the
        update of the whole batch. The loss must be a mean over samples, as the built-in
        ones are. Each rank draws its own dropout masks during fit, and holds rank 0's
        dropout stream again after it. Up to reduction order, the weights
        are those of one process training on the same batches without dropout; they are
        bitwise equal across ranks, which is checked after every epoch. Losses and
        validation metrics are averaged over all samples of all ranks; only rank 0 shows a
        progress bar; ``ModelCheckpoint`` (``Trainer.save`` called by every rank inside the
        loop; a save on one rank only would wait forever) writes from rank 0 alone while the
        others wait, and its error is raised on every rank. A callback that sets
        ``stop_training`` on any rank stops every rank at the end of that epoch. An error in
        the arguments, the data or a callback's ``on_train_begin`` raises on every rank and
        is printed once. Any other exception inside the loop on any rank prints that rank's
        error and stops the whole job (``MPI_Abort``), since the other ranks would wait for
        it forever.
        """
        where = "Trainer.fit"
        group = _distributed.connect(where, distributed)
        error = None
        try:
            # Every check, and the run it continues or starts; nothing changes yet.
            epochs = check_positive_int(where, "epochs", epochs, minimum=0)
            batch_size = check_positive_int(where, "batch_size", batch_size)
            if tbptt is not None:
                tbptt = check_positive_int(where, "tbptt", tbptt)
            for name, flag in (("stateful", stateful), ("reset_each_epoch", reset_each_epoch)):
                if not isinstance(flag, (bool, np.bool_)):
                    raise TypeError(
                        f"{where}: {name} must be a bool, got {type(flag).__name__} {flag!r}"
                    )
            stateful, reset_each_epoch = bool(stateful), bool(reset_each_epoch)
            if not reset_each_epoch and not stateful:
                raise ValueError(
                    f"{where}: reset_each_epoch=False needs stateful=True (only a stateful run "
                    "carries a state across batches), got stateful=False"
                )
            if distributed is not None and (tbptt is not None or stateful):
                raise ValueError(
                    f"{where}: tbptt and stateful are not supported with distributed="
                    f"{distributed!r} (each rank would carry its own shard's state); got "
                    f"tbptt={tbptt}, stateful={stateful}"
                )
            if stateful and shuffle:
                raise ValueError(
                    f"{where}: stateful=True needs shuffle=False (row r of each batch continues "
                    "row r of the batch before), got shuffle=True"
                )
            if clip_grad_norm is not None and (
                isinstance(clip_grad_norm, bool)
                or not isinstance(clip_grad_norm, numbers.Real)
                or not clip_grad_norm > 0
            ):
                raise ValueError(
                    f"{where}: clip_grad_norm must be a float > 0 or None, got {clip_grad_norm!r}"
                )
            loss_fn = get_loss(loss, where=where)
            loss_name = {mse_loss: "mse", cross_entropy: "cross_entropy"}.get(loss_fn)
            x, y, lengths = self._check_data(where, x, y, lengths, loss_name)
            if stateful and len(x) % batch_size:
                raise ValueError(
                    f"{where}: stateful=True needs full batches, a number of samples that is a "
                    f"multiple of batch_size={batch_size}, got {len(x)} (a last batch of "
                    f"{len(x) % batch_size} could not continue the rows of the one before)"
                )
            if tbptt is not None or stateful:
                self._check_carry(where, x, lengths, tbptt)
            val = None
            if validation_data is not None:
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (
                    2,
                    3,
                ):
                    raise TypeError(
                        f"{where}: validation_data must be a tuple (x_val, y_val) or "
                        f"(x_val, y_val, lengths_val), got {type(validation_data).__name__}"
                    )
                xv, yv, lv = (tuple(validation_data) + (None,))[:3]
                val = self._check_data(where, xv, yv, lv, loss_name, suffix="_val")
            settings = {
                "loss": loss_name,
                "batch_size": batch_size,
                "clip_grad_norm": None if clip_grad_norm is None else float(clip_grad_norm),
                "shuffle": bool(shuffle),
            }
            # The newer settings only when set, so that a plain run's checkpoint is laid out
            # as those of the releases before them.
            given = {"tbptt": tbptt, "stateful": stateful, "reset_each_epoch": reset_each_epoch}
            settings.update({k: v for k, v in given.items() if v != _SETTING_DEFAULTS[k]})

            if resume:
                if self._run is None:
                    raise ValueError(
                        f"{where}: resume=True but this trainer has no run to resume; train with "
                        "fit first or load a checkpoint saved after training with Trainer.load"
                    )
                run = self._run
                for key, value in {**_SETTING_DEFAULTS, **settings}.items():
                    old = run.settings.get(key, _SETTING_DEFAULTS.get(key))
                    if key == "loss" and (old is None or value is None):
                        continue
                    if old != value:
                        raise ValueError(
                            f"{where}: resume=True continues a run that used {key}={old!r}, got "
                            f"{key}={value!r}; pass the original settings"
                        )
            else:
                opt = make_optimizer(optimizer, self.model, lr, where=where)
                if not opt.updates(self.model):
                    raise ValueError(f"{where}: optimizer must be built on this model's parameters")
                sched = make_scheduler(lr_schedule, opt, max(epochs, 1), where=where)
                run = _Run(opt, sched, np.random.default_rng(seed), History(), 0, settings)
        except Exception as exc:  # on one rank, any error must reach the others (agree)
            error = exc
        if group is not None:
            group.agree(error)
        if error is not None:
            raise error
        if group is not None:
            error = None
            try:
                self._synchronise(group, run)
            except Exception as exc:  # a rank's model or optimizer differs
                error = exc
            group.agree(error)
            progress = progress and group.rank == 0
        self._run = run
        self._group = group
        try:
            return self._loop(
                x, y, lengths, val, loss_fn, loss_name, run, epochs, progress, list(callbacks or [])
            )
        finally:
            self._group = None
            if group is not None:
                # Rank 0's dropout stream again, so that the model (and a checkpoint saved
                # after fit, from any rank) continues as one process would.
                group.unseed_streams(self.model)

    def _synchronise(self, group: _distributed.MPIGroup, run: _Run) -> None:
        """Rank 0's weights, dropout stream, optimizer state and shuffling RNG on every rank,
        then each rank's own dropout stream (``MPIGroup.seed_streams``)."""
        state = group.broadcast(
            (
                self.model.state_dict(),
                self.model.get_extra_state(),
                run.optimizer.state_dict(),
                None if run.scheduler is None else run.scheduler.state_dict(),
                run.rng.bit_generator.state,
                run.epoch,
            )
            if group.rank == 0
            else None
        )
        if group.rank != 0:
            weights, extra, optimizer_state, scheduler_state, rng_state, epoch = state
            if (run.scheduler is None) != (scheduler_state is None):
                raise ValueError(
                    f"Trainer.fit: rank {group.rank} has "
                    f"{'no' if run.scheduler is None else 'an'} lr_schedule and rank 0 "
                    f"{'has' if run.scheduler is None else 'has none'}; give every rank the "
                    "same arguments"
                )
            self.model.load_state_dict(weights)
            self.model.set_extra_state(extra)
            run.optimizer.load_state_dict(optimizer_state)
            if run.scheduler is not None:
                run.scheduler.load_state_dict(scheduler_state)
            run.rng.bit_generator.state = rng_state
            run.epoch = epoch
        group.seed_streams(self.model)

    def _forward(self, x, lengths, **carry):
        """``model(x)``, with ``lengths=`` if given; with ``state=...`` in ``carry``, also
        ``return_state=True``: ``(output, final state)``."""
        if carry:
            carry["return_state"] = True
        return (
            self.model(x, **carry) if lengths is None else self.model(x, lengths=lengths, **carry)
        )

    def _loop(self, x, y, lengths, val, loss_fn, loss_name, run, epochs, progress, callbacks):
        model = self.model
        group = self._group
        N = x.shape[0]
        bs = run.settings["batch_size"]
        clip = run.settings["clip_grad_norm"]
        tbptt, stateful, reset_each_epoch = (
            run.settings.get(key, default) for key, default in _SETTING_DEFAULTS.items()
        )
        carry = tbptt is not None or stateful  # the model's state goes from call to call
        # The chunks of steps [t, u) of truncated BPTT; [None]: the whole sample at once.
        L = x.shape[1] if tbptt is not None else 0
        spans = [None] if tbptt is None else [(t, min(t + tbptt, L)) for t in range(0, L, tbptt)]
        n_batches = math.ceil(N / bs)
        opt, history = run.optimizer, run.history
        self.stop_training, self.stop_reason = False, None
        error = None
        try:
            # The gradient buffers the ranks sum: one contiguous array per optimizer slot.
            grads = (
                []
                if group is None
                else [s.grad for s in make_slots(resolve_params("Trainer.fit", model))]
            )
            for cb in callbacks:
                cb.set_trainer(self)
                cb.on_train_begin({})
            model.train()
            # What an interruption (or divergence) rolls back to: the last epoch boundary. It
            # is replaced by one assignment at the end of each epoch, so never half updated.
            snapshot = _EpochSnapshot(model, run)
        except Exception as exc:  # a callback's, before any step: every rank hears of it
            error = exc
        if group is not None:
            group.agree(error)
        if error is not None:
            raise error
        first_epoch = e = run.epoch
        bar = None
        seen, t0 = 0, time.perf_counter()
        # Overflow on the way to a non-finite loss is reported once, by _diverged.
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                bar = _progress_bar(progress, epochs * n_batches)
                for e in range(first_epoch, first_epoch + epochs):
                    if stateful and reset_each_epoch:
                        run.carried = None  # each epoch reads the streams from their start
                    for cb in callbacks:
                        cb.on_epoch_begin(e)
                    bar.set_description(f"epoch {e + 1}/{first_epoch + epochs}", refresh=False)
                    order = run.rng.permutation(N) if run.settings["shuffle"] else np.arange(N)
                    total, terms_seen, steps = 0.0, 0, 0
                    for b in range(n_batches):
                        idx = order[b * bs : (b + 1) * bs]
                        mine = idx if group is None else idx[group.shard(len(idx))]
                        xb, yb = x[mine], y[mine]
                        lb = None if lengths is None else lengths[mine]
                        state = run.carried if stateful else None
                        for span in spans:
                            if span is None:  # the whole sequence (or sample)
                                xc, yc, lc, at = xb, yb, lb, ""
                            else:  # steps [t, u): chunk lengths min(max(len - t, 0), u - t)
                                t, u = span
                                xc, yc, at = xb[:, t:u], yb[:, t:u], f", steps {t}-{u - 1}"
                                lc = None if lb is None else np.clip(lb - t, 0, u - t)
                            model.zero_grad()
                            if carry:  # the state comes in as a constant: no gradient to it
                                pred, state = self._forward(xc, lc, state=state)
                            else:
                                pred = self._forward(xc, lc)
                            value, grad, terms = _batch_loss(loss_fn, pred, yc, lc)
                            if group is not None:
                                value, grad, terms = _shard_loss(group, value, grad, terms)
                            if terms == 0:
                                continue  # every sequence has ended: no loss, no step
                            if not math.isfinite(value):
                                self._diverged(
                                    f"the loss is {value} at epoch {e + 1}, batch {b + 1}{at}",
                                    snapshot,
                                    run,
                                )
                                return history
                            model.backward(grad)
                            if group is not None:
                                group.allreduce_(grads)
                            if clip is not None:
                                norm = clip_grad_norm_(model, clip)
                                if not math.isfinite(norm):
                                    self._diverged(
                                        f"the gradient norm is {norm} at epoch {e + 1}, "
                                        f"batch {b + 1}{at}",
                                        snapshot,
                                        run,
                                    )
                                    return history
                            opt.step()
                            total += value * terms
                            terms_seen += terms
                            for cb in callbacks:
                                cb.on_batch_end(steps, {"loss": value, "size": len(idx)})
                            steps += 1
                        if stateful:
                            run.carried = state
                        seen += len(idx)
                        bar.update(1)
                        rate = seen / max(time.perf_counter() - t0, 1e-9)
                        bar.set_postfix_str(
                            f"loss={total / max(terms_seen, 1):.4g}, {rate:.0f} seq/s",
                            refresh=False,
                        )
                    if not all(np.isfinite(p).all() for p in model.parameters()):
                        self._diverged(
                            f"the weights became NaN or infinite during epoch {e + 1}",
                            snapshot,
                            run,
                        )
                        return history
                    if group is not None:
                        group.check_same(f"Trainer.fit (epoch {e + 1})", list(model.parameters()))
                    logs = {"loss": total / terms_seen if terms_seen else math.nan}
                    if val is not None:
                        metrics = self._evaluate(
                            val[0], val[1], val[2], loss_fn, loss_name, None, group
                        )
                        logs.update({f"val_{k}": v for k, v in metrics.items()})
                    if run.scheduler is not None:
                        run.scheduler.step()
                    history.append(e, logs)
                    run.epoch = e + 1
                    snapshot = _EpochSnapshot(model, run)  # epoch e is complete
                    bar.set_postfix_str(
                        ", ".join(f"{k}={v:.4g}" for k, v in logs.items())
                        + f", {seen / max(time.perf_counter() - t0, 1e-9):.0f} seq/s",
                        refresh=False,
                    )
                    for cb in callbacks:
                        cb.on_epoch_end(e, logs)
                    reason = None
                    if self.stop_training:
                        reason = self.stop_reason or "stopped by a callback"
                    if group is not None:  # a callback on one rank stops every rank
                        reason = group.first(reason)
                    if reason is not None:
                        if not self.stop_training:  # another rank's callback stopped
                            self.stop_training, self.stop_reason = True, reason
                        history.stop_reason = reason
                        break
            except BaseException as exc:
                if group is not None and group.size > 1 and not _distributed.agreed(exc):
                    group.abort(exc)  # the other ranks would wait for this one forever
                self._interrupted(exc, snapshot, run, e)
                raise
            finally:
                if bar is not None:
                    bar.close()
                for cb in callbacks:
                    cb.on_train_end({})
        return history

    def _interrupted(
        self, exc: BaseException, snapshot: _EpochSnapshot, run: _Run, epoch: int
    ) -> None:
        # Roll back to the last epoch boundary (see fit's Notes), with Ctrl-C held meanwhile.
        with _sigint_held() as held:
            snapshot.restore(self.model, run)
        done = f"the end of epoch {snapshot.epoch}" if snapshot.epoch else "the start of training"
        what = (
            "interrupted (KeyboardInterrupt)"
            if isinstance(exc, KeyboardInterrupt)
            else (f"stopped by {type(exc).__name__}")
        )
        self.stop_training = True
        self.stop_reason = (
            f"Trainer.fit: {what} during epoch {epoch + 1}; the model was rolled back to {done}"
        )
        if held and not isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from exc  # the Ctrl-C held during the rollback

    def _diverged(self, what: str, snapshot: _EpochSnapshot, run: _Run) -> None:
        # Put back the weights (and the carried state) of the end of the last completed epoch
        # (the start of this fit if none), so that the weights match the history and are never
        # NaN or absurdly large.
        history = run.history
        self.model.load_state_dict(snapshot.weights)
        run.carried = snapshot.carried
        done = f"the end of epoch {history.epoch[-1] + 1}" if history.epoch else "the start of fit"
        msg = (
            f"Trainer.fit: {what}; training stopped and the weights were restored to those "
            f"of {done}. Try a smaller lr or clip_grad_norm."
        )
        self.stop_training, self.stop_reason = True, msg
        history.stop_reason = msg
        self.model.zero_grad()
        if self._group is None or self._group.rank == 0:  # every rank diverges together
            warnings.warn(msg, RuntimeWarning, stacklevel=4)

    # ---- evaluation ------------------------------------------------------------------------
    def _predict(self, x, lengths, batch_size: int | None) -> np.ndarray:
        """Outputs in evaluation mode, ``batch_size`` samples per call; the mode is restored."""
        bs = x.shape[0] if batch_size is None else batch_size
        return np.concatenate(eval_in_batches(self.model, x, bs, lengths))

    def evaluate(self, x, y, *, loss=None, batch_size: int | None = None, lengths=None) -> dict:
        """Loss (and accuracy, for cross-entropy) on ``(x, y)`` in evaluation mode.

        Parameters
        ----------
        x : array_like of shape (N, ...)
        y : array_like
            Targets as for ``fit``.
        loss : {"mse", "cross_entropy"} or callable, optional
            Defaults to the loss of the current run (``"mse"`` if none).
        batch_size : int, optional
            Samples per forward call (all at once when None).
        lengths : array_like of int of shape (N,), optional

        Returns
        -------
        dict
            ``{"loss": float}``, plus ``"accuracy"`` for cross-entropy.

        Raises
        ------
        ValueError
            On mismatched shapes or labels out of range.

        Examples
        --------
        >>> import numpy as np, eigenlstm as el
        >>> trainer = el.Trainer(el.LSTMModel(3, 8, 4, seed=0))
        >>> sorted(trainer.evaluate(np.zeros((10, 5, 3)), np.arange(10) % 4, loss="cross_entropy"))
        ['accuracy', 'loss']
        """
        where = "Trainer.evaluate"
        if loss is None:
            run = self._run
            loss = run.settings["loss"] if run is not None and run.settings["loss"] else "mse"
        loss_fn = get_loss(loss, where=where)
        loss_name = {mse_loss: "mse", cross_entropy: "cross_entropy"}.get(loss_fn)
        if batch_size is not None:
            batch_size = check_positive_int(where, "batch_size", batch_size)
        x, y, lengths = self._check_data(where, x, y, lengths, loss_name)
        return self._evaluate(x, y, lengths, loss_fn, loss_name, batch_size)

    def _evaluate(self, x, y, lengths, loss_fn, loss_name, batch_size, group=None) -> dict:
        """The metrics of ``(x, y)``; with ``group``, of every rank's shard of it, averaged
        over all samples (all valid steps, for per-step outputs)."""
        if group is not None:
            rows = group.shard(len(x))
            x, y, lengths = x[rows], y[rows], None if lengths is None else lengths[rows]
        value, terms, correct = math.nan, 0, 0.0
        if len(x):
            pred = self._predict(x, lengths, batch_size)
            value, _, terms = _batch_loss(loss_fn, pred, y, lengths)
            if loss_name == "cross_entropy":
                hits = pred.argmax(axis=-1) == y  # (N,), or (N, L) for per-step outputs
                if hits.ndim == 2 and lengths is not None:  # the valid steps only
                    hits = hits[np.arange(hits.shape[1]) < lengths[:, None]]
                correct = float(np.sum(hits))
        if group is None:
            out = {"loss": value}
        else:
            loss_sum, correct, terms = group.sum([value * terms if terms else 0.0, correct, terms])
            out = {"loss": float(loss_sum / terms)}
        if loss_name == "cross_entropy":
            out["accuracy"] = float(correct / terms) if terms else math.nan
        return out

    # ---- state and checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """The run's state, or None before ``fit``: what a checkpoint needs to resume exactly.

        Returns
        -------
        dict or None
            ``{"optimizer": {"name", "hyperparameters", "step_count", "state"}, "scheduler",
            "rng_state", "epoch", "history", "settings"}``, and ``"carried_state"`` when a
            stateful run carries one: the optimizer's buffers as ``state[buffer][state_dict
            name]`` arrays in torch layout, everything else JSON-ready; ``carried_state``
            (see :attr:`carried_state`) is ``{"h", "c", "dtype"}`` with nested lists of
            floats, which JSON writes and reads back bit for bit.
        """
        run = self._run
        if run is None:
            return None
        opt_sd = run.optimizer.state_dict()
        names = [name for name, _ in self.model.named_parameters()]
        keys = sorted(opt_sd["state"][0]) if opt_sd["state"] else []
        if any(sorted(s) != keys for s in opt_sd["state"]):
            raise ValueError(
                "Trainer.state_dict: the optimizer's per-parameter states differ in keys"
            )
        # Keyed by buffer, then by state_dict name (fit checked it runs on the model's parameters).
        named = {key: {n: st[key] for n, st in zip(names, opt_sd["state"])} for key in keys}
        return {
            "optimizer": dict(opt_sd, state=named),
            "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
            "rng_state": run.rng.bit_generator.state,
            "epoch": run.epoch,
            "history": run.history.to_dict(),
            "settings": dict(run.settings),
            # only when a stateful run carries one, as the newer settings
            **(
                {}
                if run.carried is None
                else {
                    "carried_state": {
                        "h": run.carried[0].tolist(),
                        "c": run.carried[1].tolist(),
                        "dtype": run.carried[0].dtype.name,
                    }
                }
            ),
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore a run saved with ``state_dict()`` (None clears it); all or nothing.

        Raises
        ------
        ValueError
            If the state does not fit this trainer's model.
        """
        where = "Trainer.load_state_dict"
        if state is None:
            self._run = None
            return
        try:
            ometa = dict(state["optimizer"])
            buffers = dict(ometa["state"])  # {buffer: {state_dict name: array}}
            ometa["state"] = [
                {key: named[name] for key, named in buffers.items()}
                for name, _ in self.model.named_parameters()
            ]
            name = str(ometa.get("name", "")).lower()
            if name not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {ometa.get('name')!r}")
            opt = OPTIMIZERS[name](self.model, **dict(ometa["hyperparameters"]))
            opt.load_state_dict(ometa)
            sched = None
            if state["scheduler"] is not None:
                sname = str(state["scheduler"].get("name", "")).lower()
                if sname not in SCHEDULERS:
                    raise ValueError(f"unknown schedule {state['scheduler'].get('name')!r}")
                sched = SCHEDULERS[sname](opt, **dict(state["scheduler"]["hyperparameters"]))
                sched.load_state_dict(state["scheduler"])
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = state["rng_state"]
            h = state["history"]
            history = History(h["history"], h["epoch"], h.get("stop_reason"))
            run = _Run(opt, sched, rng, history, int(state["epoch"]), dict(state["settings"]))
            carried = state.get("carried_state")  # absent from runs saved before stateful fits
            if carried is not None:
                h, c = (np.array(carried[k], dtype=np.dtype(carried["dtype"])) for k in "hc")
                if h.ndim != 3 or c.ndim != 3 or h.shape[:2] != c.shape[:2]:
                    raise ValueError(
                        f"carried_state must hold h and c of shapes (layers, batch, size), got "
                        f"{h.shape} and {c.shape}"
                    )
                run.carried = (h, c)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a training state of this model ({exc})") from exc
        self._run = run

    def save(self, path, *, metadata: dict | None = None) -> None:
        """Write the model and this run to one checkpoint (see :func:`eigenlstm.save`).

        ``Trainer.load(path).fit(..., resume=True)`` then continues bitwise as if never
        interrupted. Inside a distributed ``fit`` (a callback such as ``ModelCheckpoint``) every
        rank calls it and rank 0 alone writes; outside, it writes from the rank that calls it
        (ranks writing the same file at once are safe: each renames a whole file of its own).
        """

        def write() -> None:
            _io.save(self.model, path, metadata=metadata, training=self.state_dict())

        if self._group is None:
            write()
        else:  # in a distributed fit: rank 0 writes, the others wait (and see its errors)
            self._group.on_root(write)

    @classmethod
    def load(cls, path) -> Trainer:
        """Read a checkpoint: a trainer on its model, with its run if it was saved after training.

        Raises
        ------
        FileNotFoundError, ValueError
            As :func:`eigenlstm.load`.

        Examples
        --------
        >>> import os, tempfile, numpy as np, eigenlstm as el
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.standard_normal((32, 4, 2)), rng.standard_normal(32)
        >>> trainer = el.Trainer(el.LSTMModel(2, 8, 1, seed=0))
        >>> _ = trainer.fit(x, y, epochs=2, progress=False, seed=0)
        >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
        >>> trainer.save(path)
        >>> el.Trainer.load(path).epoch
        2
        """
        model, training = _io.load(path, with_training=True)
        trainer = cls(model)
        try:
            trainer.load_state_dict(training)
        except ValueError as exc:
            raise ValueError(
                f"Trainer.load: {path} is not a valid eigenlstm checkpoint "
                f"(inconsistent training state: {exc})"
            ) from exc
        return trainer
