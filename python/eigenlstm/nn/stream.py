"""``Stream``: stateful inference over a module, one step or one chunk of steps per call.

Serving code keeps each client's ``(h, c)`` between calls; a stream keeps it inside, for a
fixed batch of rows (one per client), and resets rows when their streams end. Made by
``LSTM.stream(batch_size)`` and ``LSTMModel.stream(batch_size)``; the engine call is the
evaluation-mode forward, which writes into the stream's own state buffers.
"""
# Sizes: N rows (batch_size), T steps of a chunk, I input size, H hidden size, H_out output
# size of the LSTM, DL = layers (a stream is unidirectional), O outputs of the head.

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .._validation import (
    as_array,
    as_real_array,
    check_lengths,
    check_pair,
    check_positive_int,
    check_shape,
)

__all__ = ["Stream", "check_streamable"]


def check_streamable(where: str, batch_size, bidirectional: bool, reverse: bool = False) -> int:
    """``batch_size`` as an int >= 1, for a module that can stream (one forward direction)."""
    batch_size = check_positive_int(where, "batch_size", batch_size)
    if bidirectional or reverse:
        got = "bidirectional=True" if bidirectional else "reverse=True"
        raise ValueError(
            f"{where}: the LSTM must run forward in time to stream (a reverse direction reads "
            f"each sequence from its end), got {got}"
        )
    return batch_size


class Stream:
    r"""Stateful evaluation-mode inference over a unidirectional LSTM (and an optional head).

    Each call continues every row's sequence from where the last call left it: a chunk of
    steps split over several calls gives the outputs and the final state of one call over the
    whole chunk, bit for bit (at a given thread count). Dropout is off and nothing is kept for
    ``backward``, whatever the module's mode.

    Made by :meth:`LSTM.stream <eigenlstm.nn.LSTM.stream>` and
    :meth:`LSTMModel.stream <eigenlstm.nn.LSTMModel.stream>`; not constructed directly.

    Attributes
    ----------
    batch_size : int
        ``N``, the rows (independent sequences) of every call.
    state : tuple (h, c)
        Copies of the state, ``h`` of shape (L, N, H_out) and ``c`` of shape (L, N, H), as
        ``torch.nn.LSTM`` shapes them; assigning a pair sets it (zeros at the start).

    Notes
    -----
    A stream belongs to one thread at a time: a call (or a read of ``state``) that overlaps
    another on the same stream raises ``RuntimeError``. Several streams of one module may run
    at once, each in its own thread. Updates of the LSTM's parameters and training-mode calls
    on it are refused while a step runs (a parameter write then keeps its old values); the
    head's parameters are not guarded: do not update them while a stream steps.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> lstm = el.LSTM(3, 8, seed=0).eval()
    >>> x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    >>> stream = lstm.stream(batch_size=2)
    >>> steps = np.stack([stream(x[t]) for t in range(5)])   # one step (N, I) per call
    >>> output, (h_n, c_n) = lstm(x)                         # the whole sequence at once
    >>> bool(np.array_equal(steps, output)), bool(np.array_equal(stream.state[0], h_n))
    (True, True)
    >>> stream.reset(rows=[1])                               # row 1 starts a new sequence
    """

    def __init__(self, lstm: Any, engine: Any, batch_size: int, head: Any = None) -> None:
        # lstm: the LSTM (unidirectional, checked by the caller); engine: a function returning
        # its engine, looked up at every step (a quantized LSTM's load_state_dict makes a new
        # one); head: a Linear or QuantizedLinear applied at every step, or None.
        N = batch_size
        self._engine = engine
        self.batch_size = N
        self._dtype = lstm.dtype
        self._input_size = lstm.input_size
        self._batch_first = lstm.batch_first
        L, H, Hout = lstm.num_layers, lstm.hidden_size, lstm.output_size
        # Two state buffers: a step reads one and writes the other (the engine's inputs and
        # outputs must not overlap), then they swap.
        self._h = [np.zeros((L, N, Hout), self._dtype) for _ in range(2)]
        self._c = [np.zeros((L, N, H), self._dtype) for _ in range(2)]
        self._k = 0
        self._one = np.empty((1, N, Hout), self._dtype)  # one step's LSTM output, with a head
        # A head with its own forward_into(x, y) (a QuantizedLinear) runs it; a Linear's weights
        # are used as plain read-only views of its parameters (they follow updates).
        self._head = head
        self._head_into = getattr(head, "forward_into", None)
        linear = head is not None and self._head_into is None
        self._head_w: Any = head.weight.view(np.ndarray) if linear else None
        self._features = Hout if head is None else head.out_features
        # The head's bias, with a step's rows of it (see _step), or None.
        self._head_b: tuple[np.ndarray, np.ndarray] | None = None
        if linear and head.bias is not None:
            rows = np.empty((N, self._features), self._dtype)
            self._head_b = (head.bias.view(np.ndarray), rows)
        self._busy = threading.Lock()

    def __repr__(self) -> str:
        return f"Stream(batch_size={self.batch_size}, dtype={self._dtype.name})"

    # ---- state -----------------------------------------------------------------------------
    @property
    def state(self) -> tuple[np.ndarray, np.ndarray]:
        with self._owned("Stream.state"):
            return self._h[self._k].copy(), self._c[self._k].copy()

    @state.setter
    def state(self, value) -> None:
        where = "Stream.state"
        check_pair(where, "state", "(h, c)", value)
        h = as_real_array(where, "h", value[0], self._dtype)
        c = as_real_array(where, "c", value[1], self._dtype)
        check_shape(where, "h", h, self._h[0].shape)
        check_shape(where, "c", c, self._c[0].shape)
        with self._owned(where):
            self._h[self._k][...] = h
            self._c[self._k][...] = c

    def reset(self, rows=None) -> None:
        """Zero the state of every row, or of ``rows`` only (the others are untouched).

        Parameters
        ----------
        rows : int, array_like of int, or array_like of bool of shape (N,), optional
            Row indices in [-N, N), or a mask of the rows to reset.

        Raises
        ------
        ValueError, TypeError
            On an index out of range, a mask of the wrong length, or a non-integer index.
        """
        where = "Stream.reset"
        index: Any = slice(None)
        if rows is not None:
            index = as_array(where, "rows", rows)
            N = self.batch_size
            if index.dtype == bool:
                check_shape(where, "rows", index, (N,))
            elif index.dtype.kind not in "iu":
                raise TypeError(
                    f"{where}: rows must be integers or a boolean mask, got dtype {index.dtype}"
                )
            elif index.size and not (-N <= index.min() and index.max() < N):
                bad = index[(index < -N) | (index >= N)].flat[0]
                raise ValueError(f"{where}: rows must be in [{-N}, {N}), got {bad}")
        with self._owned(where):
            self._h[self._k][:, index] = 0
            self._c[self._k][:, index] = 0

    # ---- steps -----------------------------------------------------------------------------
    def __call__(self, x, *, lengths=None, out=None) -> np.ndarray:
        """Advance every row by one step or by a chunk of steps.

        Parameters
        ----------
        x : array_like of shape (N, I), or a chunk (T, N, I) ((N, T, I) if batch_first)
            One step of every row, or T steps in the module's layout.
        lengths : array_like of int of shape (N,), optional
            Steps of the chunk that each row takes, in [0, T]: a row past its length keeps
            its state and outputs zeros (0 leaves a row idle for this call).
        out : ndarray, optional
            Where to write the result: C-contiguous, of the module's dtype and the result's
            shape. With ``out``, a step allocates no array.

        Returns
        -------
        ndarray
            The outputs: (N, H_out) for a step, (T, N, H_out) or (N, T, H_out) for a chunk; with
            a head, O features instead of H_out (the head applied at every step). ``out`` when
            given.

        Raises
        ------
        ValueError, TypeError
            On a wrong shape or dtype of ``x``, ``lengths`` or ``out``.
        RuntimeError
            If another thread is using this stream.
        """
        where = "Stream"
        x = as_real_array(where, "x", x, self._dtype)
        N, I = self.batch_size, self._input_size
        if x.ndim == 2:
            check_shape(where, "x", x, (N, I))
            x3 = x.reshape(1, N, I)
        elif x.ndim == 3:
            x3 = x.transpose(1, 0, 2) if self._batch_first else x
            if x3.shape[1:] != (N, I):
                layout = f"(N, T, {I})" if self._batch_first else f"(T, N, {I})"
                raise ValueError(
                    f"{where}: x must have shape (N, {I}) (one step) or {layout} with N = {N}, "
                    f"got {x.shape}"
                )
        else:
            raise ValueError(
                f"{where}: x must be 2-D (one step) or 3-D (a chunk of steps), got {x.ndim}-D "
                f"with shape {x.shape}"
            )
        T = x3.shape[0]
        if lengths is not None:
            lengths = check_lengths(where, "lengths", lengths, N, T)
        shape = (N, self._features) if x.ndim == 2 else x.shape[:2] + (self._features,)
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"{where}: out must be an ndarray, got {type(out).__name__}")
            if out.dtype != self._dtype:
                raise TypeError(f"{where}: out must have dtype {self._dtype}, got {out.dtype}")
            check_shape(where, "out", out, shape)
            if not (out.flags.c_contiguous and out.flags.writeable):
                raise ValueError(
                    f"{where}: out must be a C-contiguous writable array, got one that is "
                    + ("read-only" if out.flags.c_contiguous else "not C-contiguous")
                )
            if np.may_share_memory(out, x):
                raise ValueError(
                    f"{where}: out must not share memory with x, got an array that overlaps it"
                )
        x3 = np.ascontiguousarray(x3)
        with self._owned(where):
            return self._step(x3, lengths, out, shape)

    def _step(self, x3: np.ndarray, lengths, out, shape) -> np.ndarray:
        T, N, _ = x3.shape
        k = self._k
        h0, c0, h1, c1 = self._h[k], self._c[k], self._h[1 - k], self._c[1 - k]
        chunk = len(shape) == 3
        if self._head is None:
            # The engine writes time-major (T, N, H_out): straight into `out` for a step or a
            # time-major chunk, through a buffer for a batch-first chunk.
            direct = out is not None and not (chunk and self._batch_first)
            y = out.reshape(T, N, -1) if direct else np.empty((T, N, shape[-1]), self._dtype)
            self._engine().forward_into(x3, h0, c0, lengths, y, h1, c1)
            self._k = 1 - k
            result = y[0] if not chunk else (y.transpose(1, 0, 2) if self._batch_first else y)
            if out is None or direct:
                return result if out is None else out
            out[...] = result
            return out
        hidden = self._one if T == 1 else np.empty((T, N, h0.shape[-1]), self._dtype)
        self._engine().forward_into(x3, h0, c0, lengths, hidden, h1, c1)
        self._k = 1 - k
        if chunk and self._batch_first:
            hidden = hidden.transpose(1, 0, 2)
        features = hidden[0] if not chunk else hidden
        if self._head_into is not None:
            result = np.empty(shape, self._dtype) if out is None else out
            self._head_into(features.reshape(-1, features.shape[-1]), result.reshape(-1, shape[-1]))
        else:
            result = np.matmul(features, self._head_w.T, out=out)
        if self._head_b is not None:
            bias, bias_rows = self._head_b
            if chunk:
                result += bias
            else:
                # result += b would take NumPy's buffered broadcasting loop, which allocates a
                # buffer of up to 32 KiB per call; rows of the bias, refreshed from the
                # parameter (a broadcast copy needs no buffer), keep a step allocation-free.
                np.copyto(bias_rows, bias)
                np.add(result, bias_rows, out=result)
        if lengths is not None and (lengths < T).any():  # rows past their length: zeros
            steps = np.arange(T)[:, None] >= lengths[None, :]  # (T, N)
            if not chunk:
                result[steps[0]] = 0
            else:
                result[steps.T if self._batch_first else steps] = 0
        return result

    # ---- one thread at a time --------------------------------------------------------------
    def _owned(self, where: str):
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"{where}: this stream is being used by another thread; a stream belongs to "
                "one thread at a time (make one stream per thread)"
            )
        return _Release(self._busy)


class _Release:
    """Context manager releasing an already acquired lock."""

    __slots__ = ("_lock",)

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
