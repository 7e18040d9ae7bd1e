"""Loss functions for training: each returns the loss value and its gradient.

Mean reduction as in torch (``MSELoss()``, ``CrossEntropyLoss()``); the gradient is with
respect to the prediction, ready for ``model.backward``. ``sequence_loss`` applies any of them
to per-step outputs, over the valid steps only. Validation of labels lives here too.
"""
# Sizes: N samples, C classes (or output features), L time steps, M valid steps.

from __future__ import annotations

from typing import Callable

import numpy as np

from .._validation import as_array

__all__ = [
    "mse_loss",
    "cross_entropy",
    "log_softmax",
    "sequence_loss",
    "check_labels",
    "get_loss",
    "LOSSES",
]


def mse_loss(prediction, target) -> tuple[float, np.ndarray]:
    r"""Mean squared error and its gradient, like ``torch.nn.MSELoss()``.

    Parameters
    ----------
    prediction : ndarray of shape (N, C)
        Model output (any shape; ``target`` must match it).
    target : array_like, the shape of ``prediction``
        Desired values.

    Returns
    -------
    value : float
        :math:`\frac{1}{n}\sum (p - t)^2` over all ``n`` elements.
    gradient : ndarray, the shape and dtype of ``prediction``
        :math:`2 (p - t) / n`.

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.nn.losses import mse_loss
    >>> value, grad = mse_loss(np.array([[1.0, 2.0]]), np.array([[0.0, 2.0]]))
    >>> value, grad.tolist()
    (0.5, [[1.0, 0.0]])
    """
    p = as_array("mse_loss", "prediction", prediction)
    t = as_array("mse_loss", "target", target)
    if p.shape != t.shape:
        raise ValueError(
            f"mse_loss: target must have the prediction's shape {p.shape}, got {t.shape}"
        )
    dtype = p.dtype if p.dtype.kind == "f" else np.dtype(np.float64)
    diff = p.astype(np.float64) - t.astype(np.float64)
    n = max(diff.size, 1)
    value = float(np.mean(diff * diff)) if diff.size else float("nan")
    return value, (2.0 / n * diff).astype(dtype)


def log_softmax(logits) -> np.ndarray:
    r"""Numerically stable log-softmax over the last axis.

    Parameters
    ----------
    logits : ndarray of shape (N, C)

    Returns
    -------
    ndarray of shape (N, C), float64
        :math:`z - m - \log\sum_j e^{z_j - m}` with :math:`m = \max_j z_j`, so no exponent
        overflows however large the logits are.
    """
    z = as_array("log_softmax", "logits", logits).astype(np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy(logits, labels) -> tuple[float, np.ndarray]:
    r"""Cross-entropy of integer class labels given logits, like ``torch.nn.CrossEntropyLoss()``.

    Parameters
    ----------
    logits : ndarray of shape (N, C)
        Unnormalised class scores.
    labels : array_like of int of shape (N,)
        Class indices in ``[0, C)``.

    Returns
    -------
    value : float
        :math:`-\frac{1}{N}\sum_n \log \mathrm{softmax}(z_n)_{y_n}`.
    gradient : ndarray of shape (N, C), the dtype of ``logits``
        :math:`(\mathrm{softmax}(z) - \mathrm{onehot}(y)) / N`.

    Raises
    ------
    ValueError
        If ``logits`` is not 2-D, ``labels`` is not of shape (N,), or a label is outside
        ``[0, C)``.
    TypeError
        If ``labels`` are not integers.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.nn.losses import cross_entropy
    >>> value, grad = cross_entropy(np.array([[0.0, 0.0]]), np.array([1]))
    >>> round(value, 6), grad.tolist()
    (0.693147, [[0.5, -0.5]])
    """
    where = "cross_entropy"
    z = as_array(where, "logits", logits)
    if z.ndim != 2:
        raise ValueError(f"{where}: logits must have shape (N, C), got {z.shape}")
    N, C = z.shape
    y = check_labels(where, "labels", labels, N, C)
    logp = log_softmax(z)
    value = float(-logp[np.arange(N), y].mean()) if N else float("nan")
    grad = np.exp(logp)
    grad[np.arange(N), y] -= 1.0
    grad /= max(N, 1)
    dtype = z.dtype if z.dtype.kind == "f" else np.dtype(np.float64)
    return value, grad.astype(dtype)


def sequence_loss(loss_fn, prediction, target, lengths=None) -> tuple[float, np.ndarray, int]:
    r"""A loss of per-step outputs: the mean over every valid step of every sequence.

    Parameters
    ----------
    loss_fn : callable
        ``(prediction rows, target rows) -> (value, gradient)``, a mean over its rows:
        :func:`mse_loss`, :func:`cross_entropy` or one's own.
    prediction : ndarray of shape (N, L, C)
        One output row per step.
    target : ndarray of shape (N, L, C), or of int of shape (N, L) for class labels
    lengths : ndarray of int of shape (N,), optional
        Valid steps of each sequence, in [0, L]: step ``t`` of sequence ``n`` counts if
        ``t < lengths[n]``. All steps count when omitted.

    Returns
    -------
    value : float
        ``loss_fn`` of the ``M`` valid steps gathered into rows (NaN if ``M = 0``).
    gradient : ndarray, the shape of ``prediction``
        ``loss_fn``'s gradient at the valid steps, exactly 0 past each length.
    steps : int
        ``M``, the number of valid steps the value is a mean over.

    Raises
    ------
    ValueError
        If ``prediction`` is not 3-D, or ``target`` or ``lengths`` does not match its (N, L).

    Notes
    -----
    With the mask :math:`m_{nt} = [t < \ell_n]` and :math:`M = \sum_{nt} m_{nt}`, the rows
    :math:`\{(p_{nt}, y_{nt}) : m_{nt} = 1\}` are what torch's losses see on
    ``pack_padded_sequence(...).data``; so for cross-entropy

    .. math::
        \mathcal{L} = -rac{1}{M} \sum_{n,t} m_{nt} \log \mathrm{softmax}(z_{nt})_{y_{nt}},

    and mean squared error is :math:`rac{1}{M C}\sum_{n,t,c} m_{nt} (p_{ntc} - y_{ntc})^2`.
    Without lengths the rows are a reshape (no copy) and the value is ``loss_fn`` of the whole
    (N, L, C) array read as (N L, C).

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.nn.losses import cross_entropy, sequence_loss
    >>> logits = np.zeros((2, 3, 4))
    >>> labels = np.zeros((2, 3), dtype=np.int64)
    >>> value, grad, steps = sequence_loss(cross_entropy, logits, labels, lengths=np.array([3, 1]))
    >>> round(value, 6), steps, float(abs(grad[1, 1:]).max())
    (1.386294, 4, 0.0)
    """
    where = "sequence_loss"
    p = as_array(where, "prediction", prediction)
    t = as_array(where, "target", target)
    if p.ndim != 3:
        raise ValueError(f"{where}: prediction must have shape (N, L, C), got {p.shape}")
    N, L, C = p.shape
    if t.shape[:2] != (N, L):
        raise ValueError(
            f"{where}: target must have shape ({N}, {L}, ...) (samples, steps), got {t.shape}"
        )
    if lengths is None:
        value, rows_grad = loss_fn(p.reshape(N * L, C), t.reshape((N * L,) + t.shape[2:]))
        return float(value), np.asarray(rows_grad).reshape(p.shape), N * L
    lengths = np.asarray(lengths)
    if lengths.shape != (N,):
        raise ValueError(f"{where}: lengths must have shape ({N},), got {lengths.shape}")
    valid = np.arange(L) < lengths[:, None]  # (N, L): m_nt
    value, rows_grad = loss_fn(p[valid], t[valid])
    rows_grad = np.asarray(rows_grad)
    grad = np.zeros(p.shape, rows_grad.dtype)
    grad[valid] = rows_grad  # past a length: exactly 0, so nothing flows back from there
    return float(value), grad, int(valid.sum())


def check_labels(
    where: str, name: str, labels, N: int, C: int, *, steps: int | None = None
) -> np.ndarray:
    """Return ``labels`` as int64 of shape (N,) ((N, steps) for a label per step), all in
    [0, C), or raise naming the problem."""
    shape = (N,) if steps is None else (N, steps)
    y = as_array(where, name, labels)
    if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # whole-number floats (e.g. from a CSV) are accepted
    if y.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name} must be integer class indices, got dtype {y.dtype}")
    if y.shape != shape:
        raise ValueError(f"{where}: {name} must have shape {shape}, got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= C):
        bad = y[(y < 0) | (y >= C)]
        raise ValueError(
            f"{where}: {name} must be class indices in [0, {C}) for {C} classes, got "
            f"{int(bad[0])} ({bad.size} out of range)"
        )
    return y.astype(np.int64, copy=False)


LOSSES = {"mse": mse_loss, "cross_entropy": cross_entropy}


def get_loss(name, *, where: str = "get_loss") -> Callable:
    """Return the loss function called ``name`` (``"mse"`` or ``"cross_entropy"``), or a callable.

    ``where`` is the public function to name in error messages (``LSTMModel.fit``).

    Raises
    ------
    ValueError
        If ``name`` is an unknown string.
    """
    if callable(name):
        return name
    key = str(name).lower().replace("-", "_")
    if key in ("crossentropy", "ce"):
        key = "cross_entropy"
    if key not in LOSSES:
        raise ValueError(
            f"{where}: loss must be one of {sorted(LOSSES)} or a callable, got {name!r}"
        )
    return LOSSES[key]
