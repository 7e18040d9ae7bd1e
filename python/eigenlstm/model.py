"""``eigenlstm.LSTMModel``: the seed's model (batch-first LSTM, then Linear on the last step).

Forward/backward of the composite and the training loop (``fit``, ``predict``, ``evaluate``).
The layers are lstm.py and linear.py; optimizers optim.py; checkpoints checkpoint.py.
"""
# Sizes: N batch, L time steps, I input size, H hidden size, D directions, O output size.

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import signal
import threading
import time
import warnings
from typing import Dict, List, Optional

import numpy as np

from . import optim as _optim
from ._validation import as_real_array, check_positive_int, resolve_dtype
from .callbacks import Callback, History
from .linear import Linear
from .losses import check_labels, cross_entropy, get_loss, mse_loss
from .lstm import LSTM
from .module import Module

__all__ = ["LSTMModel"]


class _TrainState:
    """Everything ``fit(resume=True)`` and checkpoints need to continue a run exactly."""

    def __init__(self, optimizer, scheduler, rng, history, epoch, settings):
        self.optimizer = optimizer    # Optimizer bound to the model's parameters
        self.scheduler = scheduler    # LRScheduler or None, stepped once per epoch
        self.rng = rng                # np.random.Generator that shuffles the batches
        self.history = history        # History of every epoch so far
        self.epoch = epoch            # epochs completed
        self.settings = settings      # loss name, batch_size, clip_grad_norm, shuffle


class _EpochSnapshot:
    """Copies of everything ``fit`` changes, taken at an epoch boundary to roll back to.

    The optimizer is copied through the attributes every Optimizer has (``state``,
    ``step_count``, ``lr``) and the scheduler through its attributes (``last_epoch``, ...), so
    that a user-written subclass without ``state_dict`` support still trains. History is
    append-only during ``fit``, so it is kept as lengths (truncating restores it) rather than
    copied each epoch, which would cost O(epochs^2) over a long run.
    """

    def __init__(self, model: "LSTMModel", state: _TrainState) -> None:
        h, opt = state.history, state.optimizer
        self.weights = model.state_dict()                           # copies, torch names
        self.dropout_state = model.lstm.dropout_state               # (seed, counter)
        self.opt_state = copy.deepcopy(opt.state)                  # per-parameter buffers
        self.opt_step_count, self.opt_lr = opt.step_count, opt.lr
        self.scheduler = None if state.scheduler is None else dict(vars(state.scheduler))
        self.rng = state.rng.bit_generator.state                    # a fresh dict
        self.history_lengths = {k: len(v) for k, v in h.history.items()}
        self.history_epochs = len(h.epoch)
        self.history_stop_reason = h.stop_reason
        self.epoch = state.epoch

    def restore(self, model: "LSTMModel", state: _TrainState) -> None:
        model.load_state_dict(self.weights)
        model.lstm.set_dropout_state(self.dropout_state)
        opt = state.optimizer
        opt.state[:] = self.opt_state  # used once: no need to copy again
        opt.step_count, opt.lr = self.opt_step_count, self.opt_lr
        if state.scheduler is not None:
            vars(state.scheduler).update(self.scheduler)
        state.rng.bit_generator.state = self.rng
        h = state.history  # in place: the caller may hold this History or its lists
        for key in list(h.history):
            if key in self.history_lengths:
                del h.history[key][self.history_lengths[key]:]
            else:
                del h.history[key]
        del h.epoch[self.history_epochs:]
        h.stop_reason = self.history_stop_reason
        state.epoch = self.epoch
        model._last = None
        model.zero_grad()


@contextlib.contextmanager
def _sigint_held():
    """Hold back Ctrl-C for the duration of the block; yields a list that records it.

    Used while ``fit`` rolls the model back: a second Ctrl-C (users press it twice) must not
    leave the model half restored. Only possible in the main thread, and only done when
    Python's default handler is installed (a custom handler is the caller's business).
    """
    received: list = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


class LSTMModel(Module):
    r"""A batch-first LSTM followed by a Linear layer on the last time step (the seed's model).

    Parameters
    ----------
    input_size : int
        Features per time step, ``I``.
    hidden_size : int
        LSTM hidden size, ``H``.
    output_size : int
        Outputs per sequence, ``O`` (regression targets or class logits).
    num_layers : int, default 1
        Stacked LSTM layers.
    dropout : float, default 0.0, keyword-only
        Dropout between LSTM layers in training mode (as torch.nn.LSTM's ``dropout``).
    bidirectional : bool, default False, keyword-only
        Bidirectional LSTM; the Linear layer then takes ``2H`` features.
    dtype : {np.float32, np.float64}, keyword-only
    seed : int, optional, keyword-only
        Seeds the initial weights and the dropout stream (fresh entropy when None).

    Attributes
    ----------
    lstm : LSTM
        ``LSTM(I, H, num_layers, batch_first=True, ...)``.
    fc : Linear
        ``Linear(D*H, O)``.
    metadata : dict
        Free-form JSON-ready data saved with checkpoints (the CLI keeps its scaling there).

    Notes
    -----
    .. math::
        \text{out} = \mathrm{LSTM}(x), \qquad y = \text{out}[:, \ell - 1, :]\, W^T + b

    where :math:`\ell = L` without ``lengths``, and :math:`\ell = \text{lengths}[n]` (the
    sequence's last valid step) with them. For a bidirectional LSTM this is torch's
    ``out[:, -1, :]`` (resp. the padded output at index ``length-1`` after
    ``pack_padded_sequence``/``pad_packed_sequence``): the forward half has read the whole
    sequence and the reverse half only its last step, exactly as the seed's model behaves.

    ``state_dict()`` keys are those of the seed's PyTorch ``LSTMModel`` (``lstm.weight_ih_l0``,
    ..., ``fc.weight``, ``fc.bias``), so weights load both ways with ``load_state_dict``.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> model = el.LSTMModel(input_size=10, hidden_size=20, output_size=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((5, 7, 10))
    >>> model(x).shape
    (5, 2)
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, num_layers: int = 1,
                 *, dropout: float = 0.0, bidirectional: bool = False, dtype=np.float32,
                 seed: Optional[int] = None) -> None:
        where = "LSTMModel"
        self.input_size = check_positive_int(where, "input_size", input_size)
        self.hidden_size = check_positive_int(where, "hidden_size", hidden_size)
        self.output_size = check_positive_int(where, "output_size", output_size)
        self.num_layers = check_positive_int(where, "num_layers", num_layers)
        self.dtype = resolve_dtype(where, dtype)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError(f"{where}: seed must be a non-negative int or None, got {seed!r}")
        self.seed = int(seed)
        lstm_seed, fc_seed = (int(s >> np.uint64(1)) for s in
                              np.random.SeedSequence(self.seed).generate_state(2, np.uint64))
        self.training = True
        self.lstm = LSTM(self.input_size, self.hidden_size, self.num_layers, batch_first=True,
                         dropout=dropout, bidirectional=bidirectional, dtype=self.dtype,
                         seed=lstm_seed)
        D = 2 if self.lstm.bidirectional else 1
        self.fc = Linear(D * self.hidden_size, self.output_size, dtype=self.dtype, seed=fc_seed)
        self.metadata: dict = {}
        self.stop_training = False
        self.stop_reason: Optional[str] = None
        self._last = None          # (N, L, last-step index) of the last training-mode forward
        self._train_state: Optional[_TrainState] = None

    @property
    def dropout(self) -> float:
        return self.lstm.dropout

    @property
    def bidirectional(self) -> bool:
        return self.lstm.bidirectional

    def config(self) -> dict:
        """The constructor arguments, JSON-ready; ``LSTMModel(**config)`` rebuilds the model."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "output_size": self.output_size, "num_layers": self.num_layers,
                "dropout": self.dropout, "bidirectional": self.bidirectional,
                "dtype": self.dtype.name, "seed": self.seed}

    def __repr__(self) -> str:
        return (f"LSTMModel(\n  (lstm): {self.lstm!r}\n  (fc): {self.fc!r}\n)")

    def children(self) -> List[Module]:
        return [self.lstm, self.fc]

    def _named_children(self):
        return [("lstm", self.lstm), ("fc", self.fc)]

    @property
    def grads(self) -> Dict[str, np.ndarray]:
        """Copies of the accumulated gradients, keyed like ``state_dict()``."""
        out = {f"lstm.{k}": v for k, v in self.lstm.grads.items()}
        out.update({f"fc.{k}": v for k, v in self.fc.grads.items()})
        return out

    # ---- parameter-shaped arrays <-> torch-named tensors (for optimizer state in checkpoints)
    def _named_arrays(self, arrays: List[np.ndarray]) -> Dict[str, np.ndarray]:
        """Split arrays shaped like ``parameters()`` values into state_dict-named tensors."""
        out = {f"lstm.{key}": value for key, value in self.lstm.unflatten(arrays[0]).items()}
        out["fc.weight"] = np.array(arrays[1], copy=True)
        if len(arrays) > 2:
            out["fc.bias"] = np.array(arrays[2], copy=True)
        return out

    def _flat_arrays(self, named: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """Inverse of ``_named_arrays`` (padding entries of the engine layout are zero)."""
        flat = self.lstm.flatten({k[len("lstm."):]: v for k, v in named.items() if k.startswith("lstm.")})
        out = [flat, np.array(named["fc.weight"], dtype=self.dtype)]
        if self.fc.bias is not None:
            out.append(np.array(named["fc.bias"], dtype=self.dtype))
        return out

    # ---- compute ---------------------------------------------------------------------------
    def _check_x(self, where: str, x, name: str = "x") -> np.ndarray:
        x = as_real_array(where, name, x, self.dtype)
        shape = x.shape
        if len(shape) != 3 or shape[2] != self.input_size:
            raise ValueError(
                f"{where}: {name} must have shape (N, L, {self.input_size}) (batch, steps, input_size), "
                f"got {shape}"
            )
        if shape[1] == 0:
            raise ValueError(
                f"{where}: {name} must have at least one time step (the output is read at the "
                f"last step), got shape {shape}"
            )
        return x

    def _check_lengths(self, where: str, lengths, N: int, L: int) -> Optional[np.ndarray]:
        if lengths is None:
            return None
        arr = np.asarray(lengths)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{where}: lengths must be integers, got dtype {arr.dtype}")
        if arr.shape != (N,):
            raise ValueError(f"{where}: lengths must have shape ({N},) (one per sequence), got {arr.shape}")
        if N and (arr.min() < 1 or arr.max() > L):
            bad = arr[(arr < 1) | (arr > L)][0]
            raise ValueError(
                f"{where}: lengths must be in [1, {L}] (each sequence needs a last step), got {bad}"
            )
        return arr.astype(np.int64)

    def forward(self, x, *, lengths=None) -> np.ndarray:
        """Map sequences to one output row each.

        Parameters
        ----------
        x : array_like of shape (N, L, I)
        lengths : array_like of int of shape (N,), optional
            Valid steps of each right-padded sequence, in [1, L]; the output is taken at
            step ``lengths[n] - 1`` (see Notes of the class).

        Returns
        -------
        y : ndarray of shape (N, O)

        Raises
        ------
        ValueError
            On a wrong shape of ``x`` or ``lengths``, no time steps (L = 0), or a length
            outside [1, L].
        TypeError
            On non-real ``x`` or non-integer ``lengths``.
        """
        where = "LSTMModel.forward"
        x = self._check_x(where, x)
        if lengths is not None:
            lengths = self._check_lengths(where, lengths, x.shape[0], x.shape[1])
        if not self.training:  # inference: one engine call, no (N, L, D*H) output array
            self._last = None
            return self.lstm._forward_last(x, lengths, self.fc.weight, self.fc.bias)
        N, L, _ = x.shape
        out, _ = self.lstm(x, lengths=lengths)
        if lengths is None:  # the common case: a view, no gather
            idx = L - 1
            last = out[:, -1, :]
        else:
            idx = lengths - 1
            last = out[np.arange(N), idx, :]
        y = self.fc(last)
        self._last = (N, L, idx)
        return y

    def backward(self, d_y) -> np.ndarray:
        """Backpropagate ``d_y`` through the last training-mode forward.

        Parameters
        ----------
        d_y : array_like of shape (N, O)
            Gradient of the loss with respect to the output.

        Returns
        -------
        dx : ndarray of shape (N, L, I)

        Raises
        ------
        RuntimeError
            If there was no training-mode forward since the last backward.
        ValueError
            If ``d_y`` has the wrong shape.

        Notes
        -----
        Parameter gradients are *added* into the layers' gradients (call ``zero_grad()``).
        """
        if self._last is None:
            raise RuntimeError(
                "LSTMModel.backward: no training-mode forward to differentiate; call the model "
                "in training mode (model.train()) before each backward"
            )
        N, L, idx = self._last
        d_last = self.fc.backward(d_y)
        d_out = np.zeros((N, L, d_last.shape[1]), dtype=self.dtype)
        if np.isscalar(idx):
            d_out[:, idx, :] = d_last  # forward: last = out[:, L-1, :]
        else:
            d_out[np.arange(N), idx, :] = d_last  # forward: last = out[n, idx[n], :]
        dx, _ = self.lstm.backward(d_out)
        self._last = None
        return dx

    # ---- the training loop -----------------------------------------------------------------
    def _check_targets(self, where: str, y, N: int, loss_name: Optional[str], name: str = "y"):
        if loss_name == "cross_entropy":
            return check_labels(where, name, y, N, self.output_size)
        y = np.asarray(y)
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{where}: {name} must hold real numbers, got dtype {y.dtype}")
        if y.ndim >= 1 and y.shape[0] != N:
            raise ValueError(
                f"{where}: x and {name} must have the same number of samples, got {N} in x and "
                f"{y.shape[0]} in {name}"
            )
        if loss_name is None:
            return y
        if y.ndim == 1 and self.output_size == 1:
            y = y[:, None]
        if y.shape != (N, self.output_size):
            raise ValueError(
                f"{where}: {name} must have shape ({N}, {self.output_size}) (samples, output_size), "
                f"got {y.shape}"
            )
        return y.astype(self.dtype)

    def _check_data(self, where, x, y, lengths, loss_name, suffix=""):
        x = self._check_x(where, x, name=f"x{suffix}")
        N, L, _ = x.shape
        if N == 0:
            raise ValueError(f"{where}: x{suffix} must hold at least one sequence, got shape {x.shape}")
        y_arr = np.asarray(y)
        if y_arr.ndim == 0 or y_arr.shape[0] != N:
            got = "a scalar" if y_arr.ndim == 0 else f"{y_arr.shape[0]}"
            raise ValueError(
                f"{where}: x{suffix} and y{suffix} must have the same number of samples, got {N} in "
                f"x{suffix} and {got} in y{suffix}"
            )
        y = self._check_targets(where, y, N, loss_name, name=f"y{suffix}")
        lengths = self._check_lengths(where, lengths, N, L)
        return x, y, lengths

    def fit(self, x, y, *, epochs: int = 10, batch_size: int = 32, loss="mse", optimizer="adam",
            lr: float = 1e-3, clip_grad_norm: Optional[float] = None, validation_data=None,
            shuffle: bool = True, seed: Optional[int] = None, progress: bool = True,
            callbacks: Optional[List[Callback]] = None, lengths=None, lr_schedule=None,
            resume: bool = False) -> History:
        """Train on ``(x, y)`` with mini-batches.

        Parameters
        ----------
        x : array_like of shape (N, L, I)
            Input sequences.
        y : array_like of shape (N, O) for "mse" ((N,) if O = 1), or int of shape (N,)
            Targets, or class indices in [0, O) for "cross_entropy".
        epochs : int, default 10
            Epochs to run in this call (with ``resume=True``: epochs to add).
        batch_size : int, default 32
        loss : {"mse", "cross_entropy"} or callable, default "mse"
            A callable takes ``(prediction, y_batch)`` and returns ``(value, gradient)``.
        optimizer : {"adam", "adamw", "sgd"} or Optimizer, default "adam"
            A name (built with ``lr``), or an optimizer built on this model.
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
            Show a tqdm progress bar with the loss and sequences per second.
        callbacks : list of Callback, optional
            E.g. ``[EarlyStopping(patience=5), ModelCheckpoint("run.npz")]``.
        lengths : array_like of int of shape (N,), optional
            Valid steps of each right-padded sequence (see ``forward``).
        lr_schedule : {"cosine", "step"}, (name, kwargs), LRScheduler or None
            Per-epoch learning-rate schedule (see ``optim.make_scheduler``).
        resume : bool, default False
            Continue the previous run of this model (or of the checkpoint it was loaded
            from): the optimizer state, learning rate and schedule, shuffling RNG, dropout
            stream, epoch count and history carry on, so training 2 + 2 epochs this way gives
            bitwise the same weights as 4 epochs in one call. ``optimizer``, ``lr``,
            ``lr_schedule`` and ``seed`` are then ignored, and ``loss``, ``batch_size``,
            ``clip_grad_norm`` and ``shuffle`` must equal the original run's.

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
            of range, ``resume=True`` with nothing to resume or different settings.
        TypeError
            On non-numeric data or non-integer labels.
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
        3. ``model.stop_reason`` says what stopped training and where it was rolled back to;
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

        Examples
        --------
        >>> import numpy as np, eigenlstm as el
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((256, 8, 1))
        >>> y = x.sum(axis=1)
        >>> model = el.LSTMModel(1, 16, 1, seed=0)
        >>> h = model.fit(x, y, epochs=20, lr=1e-2, progress=False, seed=0)
        >>> h.history["loss"][-1] < h.history["loss"][0]
        True
        """
        where = "LSTMModel.fit"
        epochs = check_positive_int(where, "epochs", epochs, minimum=0)
        batch_size = check_positive_int(where, "batch_size", batch_size)
        if clip_grad_norm is not None and (
                isinstance(clip_grad_norm, bool) or not isinstance(clip_grad_norm, numbers.Real)
                or not clip_grad_norm > 0):
            raise ValueError(f"{where}: clip_grad_norm must be a float > 0 or None, got {clip_grad_norm!r}")
        loss_fn = get_loss(loss, where=where)
        loss_name = {mse_loss: "mse", cross_entropy: "cross_entropy"}.get(loss_fn)
        x, y, lengths = self._check_data(where, x, y, lengths, loss_name)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise TypeError(
                    f"{where}: validation_data must be a tuple (x_val, y_val) or "
                    f"(x_val, y_val, lengths_val), got {type(validation_data).__name__}"
                )
            xv, yv, lv = (tuple(validation_data) + (None,))[:3]
            val = self._check_data(where, xv, yv, lv, loss_name, suffix="_val")
        settings = {"loss": loss_name, "batch_size": batch_size,
                    "clip_grad_norm": None if clip_grad_norm is None else float(clip_grad_norm),
                    "shuffle": bool(shuffle)}

        if resume:
            state = self._train_state
            if state is None:
                raise ValueError(
                    f"{where}: resume=True but this model has no training state to resume; train "
                    "it with fit first or load a checkpoint saved after training"
                )
            for key, value in settings.items():
                old = state.settings.get(key)
                if key == "loss" and (old is None or value is None):
                    continue
                if old != value:
                    raise ValueError(
                        f"{where}: resume=True continues a run that used {key}={old!r}, got "
                        f"{key}={value!r}; pass the original settings"
                    )
        else:
            opt = _optim.make_optimizer(optimizer, self, lr, where=where)
            if opt._module is not self and [id(p) for p, _ in opt._pairs] != [
                    id(p) for p, _ in self.parameters()]:
                raise ValueError(f"{where}: optimizer must be built on this model's parameters")
            sched = _optim.make_scheduler(lr_schedule, opt, max(epochs, 1), where=where)
            state = _TrainState(opt, sched, np.random.default_rng(seed), History(), 0, settings)
            self._train_state = state

        return self._run(x, y, lengths, val, loss_fn, loss_name, state, epochs, progress,
                         list(callbacks or []))

    def _run(self, x, y, lengths, val, loss_fn, loss_name, state, epochs, progress, callbacks):
        from tqdm.auto import tqdm

        N = x.shape[0]
        bs = state.settings["batch_size"]
        clip = state.settings["clip_grad_norm"]
        n_batches = math.ceil(N / bs)
        opt, history = state.optimizer, state.history
        self.stop_training, self.stop_reason = False, None
        for cb in callbacks:
            cb.set_model(self)
            cb.on_train_begin({})
        self.train()
        # What an interruption (or divergence) rolls back to: the last epoch boundary. It is
        # replaced by one assignment at the end of each epoch, so it is never half updated.
        snapshot = _EpochSnapshot(self, state)
        first_epoch = e = state.epoch
        bar = None
        seen, t0 = 0, time.perf_counter()
        # Overflow on the way to a non-finite loss is reported once, by _diverged.
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                bar = tqdm(total=epochs * n_batches, disable=not progress, unit="batch",
                           leave=True, dynamic_ncols=True)
                for e in range(first_epoch, first_epoch + epochs):
                    for cb in callbacks:
                        cb.on_epoch_begin(e)
                    bar.set_description(f"epoch {e + 1}/{first_epoch + epochs}", refresh=False)
                    order = state.rng.permutation(N) if state.settings["shuffle"] else np.arange(N)
                    total = 0.0
                    for b in range(n_batches):
                        idx = order[b * bs:(b + 1) * bs]
                        self.zero_grad()
                        pred = self.forward(x[idx], lengths=None if lengths is None else lengths[idx])
                        value, grad = loss_fn(pred, y[idx])
                        value = float(value)
                        if not math.isfinite(value):
                            self._diverged(f"the loss is {value} at epoch {e + 1}, batch {b + 1}",
                                           snapshot.weights, history)
                            return history
                        self.backward(grad)
                        if clip is not None:
                            norm = _optim.clip_grad_norm(self, clip)
                            if not math.isfinite(norm):
                                self._diverged(f"the gradient norm is {norm} at epoch {e + 1}, "
                                               f"batch {b + 1}", snapshot.weights, history)
                                return history
                        opt.step()
                        total += value * len(idx)
                        seen += len(idx)
                        for cb in callbacks:
                            cb.on_batch_end(b, {"loss": value, "size": len(idx)})
                        bar.update(1)
                        rate = seen / max(time.perf_counter() - t0, 1e-9)
                        bar.set_postfix_str(f"loss={total / min(N, (b + 1) * bs):.4g}, {rate:.0f} seq/s",
                                            refresh=False)
                    if not all(np.isfinite(p).all() for p, _ in self.parameters()):
                        self._diverged(f"the weights became NaN or infinite during epoch {e + 1}",
                                       snapshot.weights, history)
                        return history
                    logs = {"loss": total / N}
                    if val is not None:
                        metrics = self._evaluate(val[0], val[1], val[2], loss_fn, loss_name, None)
                        logs.update({f"val_{k}": v for k, v in metrics.items()})
                    if state.scheduler is not None:
                        state.scheduler.step()
                    history.append(e, logs)
                    state.epoch = e + 1
                    snapshot = _EpochSnapshot(self, state)  # epoch e is complete
                    bar.set_postfix_str(
                        ", ".join(f"{k}={v:.4g}" for k, v in logs.items())
                        + f", {seen / max(time.perf_counter() - t0, 1e-9):.0f} seq/s", refresh=False)
                    for cb in callbacks:
                        cb.on_epoch_end(e, logs)
                    if self.stop_training:
                        history.stop_reason = self.stop_reason or "stopped by a callback"
                        break
            except BaseException as exc:
                self._interrupted(exc, snapshot, state, e)
                raise
            finally:
                if bar is not None:
                    bar.close()
                for cb in callbacks:
                    cb.on_train_end({})
        return history

    def _interrupted(self, exc: BaseException, snapshot: _EpochSnapshot, state: _TrainState,
                     epoch: int) -> None:
        # Roll back to the last epoch boundary (see fit's Notes), with Ctrl-C held meanwhile.
        with _sigint_held() as held:
            snapshot.restore(self, state)
        done = f"the end of epoch {snapshot.epoch}" if snapshot.epoch else "the start of training"
        what = "interrupted (KeyboardInterrupt)" if isinstance(exc, KeyboardInterrupt) else (
            f"stopped by {type(exc).__name__}")
        self.stop_training = True
        self.stop_reason = (f"LSTMModel.fit: {what} during epoch {epoch + 1}; the model was "
                            f"rolled back to {done}")
        if held and not isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from exc  # the Ctrl-C held during the rollback

    def _diverged(self, what: str, last_good, history: History) -> None:
        # Put back the weights of the end of the last completed epoch (the start of this fit if
        # none), so that the weights match the history and are never NaN or absurdly large.
        self.load_state_dict(last_good)
        done = f"the end of epoch {history.epoch[-1] + 1}" if history.epoch else "the start of fit"
        msg = (f"LSTMModel.fit: {what}; training stopped and the weights were restored to those "
               f"of {done}. Try a smaller lr or clip_grad_norm.")
        self.stop_training, self.stop_reason = True, msg
        history.stop_reason = msg
        self.zero_grad()
        warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def predict(self, x, batch_size: Optional[int] = None, *, lengths=None) -> np.ndarray:
        """Outputs for ``x`` in evaluation mode (no dropout, nothing kept for backward).

        Parameters
        ----------
        x : array_like of shape (N, L, I)
        batch_size : int, optional
            Sequences per forward call (all at once when None).
        lengths : array_like of int of shape (N,), optional

        Returns
        -------
        ndarray of shape (N, O)

        Raises
        ------
        ValueError
            On a wrong shape of ``x`` or ``lengths``.

        Examples
        --------
        >>> import numpy as np, eigenlstm as el
        >>> model = el.LSTMModel(3, 8, 2, seed=0)
        >>> model.predict(np.zeros((100, 5, 3)), batch_size=32).shape
        (100, 2)
        """
        where = "LSTMModel.predict"
        x = self._check_x(where, x)
        N, L, _ = x.shape
        lengths = self._check_lengths(where, lengths, N, L)
        bs = N if batch_size is None else check_positive_int(where, "batch_size", batch_size)
        was_training = self.training
        self.eval()
        try:
            parts = [self.forward(x[i:i + bs], lengths=None if lengths is None else lengths[i:i + bs])
                     for i in range(0, N, max(bs, 1))]
        finally:
            self.train(was_training)
        return np.concatenate(parts) if parts else np.zeros((0, self.output_size), self.dtype)

    def evaluate(self, x, y, *, loss=None, batch_size: Optional[int] = None, lengths=None) -> dict:
        """Loss (and accuracy, for cross-entropy) on ``(x, y)`` in evaluation mode.

        Parameters
        ----------
        x : array_like of shape (N, L, I)
        y : array_like
            Targets as for ``fit``.
        loss : {"mse", "cross_entropy"} or callable, optional
            Defaults to the loss of the last ``fit`` (``"mse"`` if none).
        batch_size : int, optional
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
        >>> model = el.LSTMModel(3, 8, 4, seed=0)
        >>> sorted(model.evaluate(np.zeros((10, 5, 3)), np.arange(10) % 4, loss="cross_entropy"))
        ['accuracy', 'loss']
        """
        where = "LSTMModel.evaluate"
        if loss is None:
            st = self._train_state
            loss = st.settings["loss"] if st is not None and st.settings["loss"] else "mse"
        loss_fn = get_loss(loss, where=where)
        loss_name = {mse_loss: "mse", cross_entropy: "cross_entropy"}.get(loss_fn)
        x, y, lengths = self._check_data(where, x, y, lengths, loss_name)
        return self._evaluate(x, y, lengths, loss_fn, loss_name, batch_size)

    def _evaluate(self, x, y, lengths, loss_fn, loss_name, batch_size) -> dict:
        pred = self.predict(x, batch_size, lengths=lengths)
        value, _ = loss_fn(pred, y)
        out = {"loss": float(value)}
        if loss_name == "cross_entropy":
            out["accuracy"] = float(np.mean(pred.argmax(axis=1) == y))
        return out

    # ---- checkpoints -----------------------------------------------------------------------
    @property
    def optimizer(self):
        """The optimizer of the current run (None before ``fit``); restored by ``load``."""
        return None if self._train_state is None else self._train_state.optimizer

    @property
    def history(self) -> Optional[History]:
        """The History of the current run (all epochs, across resumes), or None."""
        return None if self._train_state is None else self._train_state.history

    def save(self, path, *, metadata: Optional[dict] = None) -> None:
        """Write a checkpoint (see :func:`eigenlstm.save`): config, weights, optimizer state.

        Parameters
        ----------
        path : str or os.PathLike
            Destination ``.npz`` file, replaced atomically.
        metadata : dict, optional
            JSON-ready data to store (defaults to ``self.metadata``).
        """
        from .checkpoint import save

        save(self, path, metadata=metadata)
