"""Argument checks shared by the NumPy-facing modules.

Every check raises ``TypeError`` or ``ValueError`` naming the function, the argument, the
expected value and the value given; none of them modifies anything.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["as_real_array", "check_shape", "check_positive_int", "resolve_dtype"]

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(where: str, dtype) -> np.dtype:
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise TypeError.

    ``None`` means float32, torch's default dtype (``np.dtype(None)`` would be float64).
    """
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _SUPPORTED:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dt}")
    return dt


def check_positive_int(where: str, name: str, value, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= minimum (bools are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return int(value)


def as_real_array(where: str, name: str, value, dtype: np.dtype) -> np.ndarray:
    """Convert ``value`` to an ndarray of ``dtype``, refusing non-real dtypes.

    Integer, boolean and floating inputs are converted (as torch converts on ``.to(dtype)``);
    complex, object, string and other dtypes raise TypeError rather than being cast.
    """
    if type(value) is np.ndarray and value.dtype == dtype:  # the hot path: nothing to do
        return value
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind not in "fiub":
        raise TypeError(
            f"{where}: {name} must hold real numbers (float or int), got dtype {arr.dtype}"
        )
    return arr.astype(dtype, copy=False)


def check_shape(where: str, name: str, arr: np.ndarray, expected: tuple) -> None:
    """Raise ValueError unless ``arr.shape == expected``."""
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{where}: {name} must have shape {tuple(expected)}, got {tuple(arr.shape)}")
