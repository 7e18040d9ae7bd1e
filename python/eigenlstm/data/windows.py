"""From series values to model inputs and targets: ``Scaling`` (log, first differences,
standardisation, reversible) and ``make_windows`` (sliding windows at given forecast origins).

Sizes: n series length, I columns (the target first), W window, Hz horizon, N windows.
Which origins train, validate or test is the forecasting job's choice (forecast.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Scaling", "make_windows"]

Float64Array = npt.NDArray[np.float64]


class Scaling:
    r"""The reversible map from series values to the model's inputs and targets, per column.

    .. math::
        z_t = \frac{(\log v_t - \log v_{t-1}) - \mu}{\sigma}

    (without the log for a column with any value <= 0). ``mu`` and ``sigma`` come from the
    training part only. Differencing makes trending series stationary, so the LSTM never has
    to extrapolate beyond the levels it saw in training. Column 0 is the target.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.data import Scaling
    >>> v = np.array([100.0, 110.0, 121.0, 133.1])
    >>> sc = Scaling.fit(v)
    >>> bool(sc.log[0]), sc.transform(v).shape
    (True, (3, 1))
    >>> np.allclose(sc.unlevel(sc.level(v, 0)), v)
    True
    """

    def __init__(self, log: npt.ArrayLike, mean: npt.ArrayLike, std: npt.ArrayLike) -> None:
        self.log: npt.NDArray[np.bool_] = np.atleast_1d(np.asarray(log, dtype=bool))
        self.mean: Float64Array = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std: Float64Array = np.atleast_1d(np.asarray(std, dtype=np.float64))

    @classmethod
    def fit(cls, values: npt.ArrayLike) -> Scaling:
        """The scaling of ``values`` (shape (n,) or (n, I)): log where all > 0, then the mean
        and standard deviation (1 where 0) of the differences, per column."""
        v = np.asarray(values, dtype=np.float64)
        v = v.reshape(v.shape[0], -1)
        log = np.all(v > 0, axis=0)
        d = np.diff(np.where(log, np.log(np.where(log, v, 1.0)), v), axis=0)
        std = d.std(axis=0)
        return cls(log, d.mean(axis=0), np.where(std > 0, std, 1.0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaling:
        """The inverse of ``to_dict``."""
        return cls(d["log"], d["mean"], d["std"])

    def level(self, values: npt.ArrayLike, col: int | None = None) -> Float64Array:
        """Log (where used) of ``values``: shape (n, I), or (n,) for one column ``col``."""
        v = np.asarray(values, dtype=np.float64)
        log = self.log if col is None else self.log[col]
        return np.where(log, np.log(np.where(log, v, 1.0)), v)

    def unlevel(self, levels: Float64Array) -> Float64Array:
        """Inverse of ``level`` for the target column."""
        return np.exp(levels) if self.log[0] else levels

    def transform(self, values: npt.ArrayLike) -> Float64Array:
        """Standardised differences of every column, shape (n - 1, I)."""
        v = np.asarray(values, dtype=np.float64)
        v = v.reshape(v.shape[0], -1)
        return (np.diff(self.level(v), axis=0) - self.mean) / self.std

    def to_dict(self) -> dict[str, list[Any]]:
        """Plain lists, for JSON and checkpoint metadata: keys ``log``, ``mean`` and ``std``."""
        return {
            "log": [bool(x) for x in self.log],
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
        }


def make_windows(
    z: npt.ArrayLike, window: int, horizon: int, origins: Iterable[int]
) -> tuple[Float64Array, Float64Array]:
    """Inputs and targets for forecasting ``v[o:o+horizon]`` from ``v[:o]``, for each origin o.

    ``z`` are the scaled differences, shape (n - 1, I) (``z[k]`` is the change from ``v[k]``
    to ``v[k+1]``), so the input is ``z[o-1-window : o-1]`` and the target is column 0 of
    ``z[o-1 : o-1+horizon]``.

    Returns
    -------
    x : ndarray of shape (N, window, I)
    y : ndarray of shape (N, horizon)

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.data import make_windows
    >>> x, y = make_windows(np.arange(10.0), window=3, horizon=2, origins=[4, 5])
    >>> x[:, :, 0].tolist(), y.tolist()
    ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]], [[3.0, 4.0], [4.0, 5.0]])
    """
    zz = np.asarray(z, dtype=np.float64)
    zz = zz.reshape(zz.shape[0], -1)
    starts = list(origins)
    if not starts:
        return np.zeros((0, window, zz.shape[1])), np.zeros((0, horizon))
    x = np.stack([zz[o - 1 - window : o - 1] for o in starts])
    y = np.stack([zz[o - 1 : o - 1 + horizon, 0] for o in starts])
    return x, y
