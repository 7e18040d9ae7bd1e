"""Loss functions for training: each returns the loss value and its gradient.

Mean reduction as in torch (``MSELoss()``, ``CrossEntropyLoss()``); the gradient is with
respect to the prediction, ready for ``model.backward``. Validation of labels lives here too.
"""
# Sizes: N samples, C classes (or output features).

from __future__ import annotations

from typing import Callable

import numpy as np

from .._validation import as_array

__all__ = ["mse_loss", "cross_entropy", "log_softmax", "check_labels", "get_loss", "LOSSES"]


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


def check_labels(where: str, name: str, labels, N: int, C: int) -> np.ndarray:
    """Return ``labels`` as int64 of shape (N,), all in [0, C), or raise naming the problem."""
    y = as_array(where, name, labels)
    if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # whole-number floats (e.g. from a CSV) are accepted
    if y.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name} must be integer class indices, got dtype {y.dtype}")
    if y.shape != (N,):
        raise ValueError(f"{where}: {name} must have shape ({N},), got {y.shape}")
    if N and (y.min() < 0 or y.max() >= C):
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
