"""``Series``: a target column, the input columns beside it, and its dates; ``as_series`` makes
one from a NumPy array or a pandas Series or DataFrame (pandas is never imported).

Reading a ``Series`` from a CSV file is csv_series.py's; scaling it into model inputs is
windows.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .datasets import DATASETS
from .dates import FREQUENCIES, infer_frequency, shift_dates

__all__ = ["Series", "as_series"]


class Series:
    """One target column (and optionally more input columns) of a CSV file or DataFrame.

    Attributes
    ----------
    values : ndarray of shape (n,), float64
        The target column.
    inputs : ndarray of shape (n, I), float64
        The columns the model reads, the target first.
    columns : list of str
        Names of ``inputs``' columns (``columns[0] == column``).
    column : str
        The target column's name.
    labels : list of str or None
        The first column's text per row (e.g. dates), if it is not a value column.
    dates : ndarray of datetime64[D] or None
        The parsed dates, when the file has a date column.
    frequency : {"D", "W", "M", "Q", "Y"} or None
        The dates' frequency (None without dates).
    source : str
        The file it came from (or a description of the object).
    dataset : str or None
        The bundled data set's name, if it is one.
    """

    def __init__(
        self,
        values: npt.ArrayLike,
        labels: list[str] | None,
        column: str,
        source: str,
        *,
        inputs: npt.ArrayLike | None = None,
        columns: Sequence[str] | None = None,
        dates: npt.NDArray[np.datetime64] | None = None,
        frequency: str | None = None,
        dataset: str | None = None,
    ) -> None:
        self.values: npt.NDArray[np.float64] = np.asarray(values, dtype=np.float64)
        n = self.values.shape[0]
        self.inputs: npt.NDArray[np.float64] = (
            self.values[:, None]
            if inputs is None
            else np.asarray(inputs, dtype=np.float64).reshape(n, -1)
        )
        self.columns = [column] if columns is None else list(columns)
        self.labels = labels
        self.column = column
        self.source = source
        self.dates = dates
        self.frequency = frequency
        self.dataset = dataset

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def season(self) -> int:
        """The default season of the frequency (1: none, or no dates)."""
        return FREQUENCIES[self.frequency][1] if self.frequency else 1

    def about(self) -> str:
        """One line saying where the data came from."""
        if self.dataset:
            return f"the bundled data set {self.dataset!r} ({DATASETS[self.dataset]['about']})"
        return self.source


def as_series(
    data: Any,
    column: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    source: str = "data",
) -> Series:
    """A ``Series`` from a ``Series``, a 1-D array, or a pandas Series or DataFrame.

    pandas is never imported: objects with ``to_numpy`` and ``index`` are read through them.
    A pandas Series' name, or a DataFrame's columns, are checked against ``column`` and
    ``columns``; a ``DatetimeIndex`` (or a date-typed index) becomes ``dates``.

    Parameters
    ----------
    data : Series, pandas Series or DataFrame, or array_like of shape (n,)
    column : str, optional
        The target column (required for a DataFrame of several columns).
    columns : sequence of str, optional
        More input columns, from a DataFrame.
    source : str
        How messages name ``data`` (``"forecast: history"``).

    Raises
    ------
    ValueError
        If a named column is missing, the values are not finite numbers, or the dates are not
        at one frequency.
    TypeError
        If ``data`` is of another type.

    Examples
    --------
    >>> from eigenlstm.data import as_series
    >>> s = as_series([1.0, 2.0, 4.0], "sales")
    >>> len(s), s.column, s.dates is None
    (3, 'sales', True)
    """
    if isinstance(data, Series):
        if column is not None and data.column != column:
            raise ValueError(f"{source}: the series is column {data.column!r}, expected {column!r}")
        return data
    dates = None
    freq = None
    index = getattr(data, "index", None)
    if index is not None and hasattr(data, "to_numpy"):
        idx = np.asarray(index)
        if idx.dtype.kind == "M":
            dates = idx.astype("datetime64[D]")
            freq = infer_frequency(dates)
            if freq is None or np.any(dates[1:] != shift_dates(dates[:-1], freq, 1)):
                raise ValueError(
                    f"{source}: the index dates must increase one step at a time "
                    "(daily, weekly, monthly, quarterly or yearly), with no gaps"
                )
    labels = None if dates is None else [str(d) for d in dates]
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a DataFrame
        names = [str(c) for c in data.columns]
        if column is None:
            if len(names) != 1:
                raise ValueError(
                    f"{source}: the DataFrame has columns {names}; name the target with column="
                )
            column = names[0]
        wanted = [column] + [c for c in (columns or []) if c != column]
        for name in wanted:
            if name not in names:
                raise ValueError(f"{source}: no column {name!r}; the columns are {names}")
        table = np.column_stack([_finite(source, name, data[name].to_numpy()) for name in wanted])
        return Series(
            table[:, 0],
            labels,
            column,
            source,
            inputs=table,
            columns=wanted,
            dates=dates,
            frequency=freq,
        )
    if hasattr(data, "to_numpy") and hasattr(data, "name"):  # a pandas Series
        label = None if data.name is None else str(data.name)
        if column is not None and label is not None and label != column:
            raise ValueError(f"{source}: the series is named {label!r}, expected column {column!r}")
        if columns:
            raise ValueError(
                f"{source}: a single series cannot hold the input columns {list(columns)}; "
                "pass a DataFrame"
            )
        values = _finite(source, label or "values", data.to_numpy())
        return Series(
            values, labels, label or column or "value", source, dates=dates, frequency=freq
        )
    if isinstance(data, (np.ndarray, list, tuple)):
        arr = np.asarray(data)
        if arr.ndim != 1:
            raise ValueError(f"{source}: expected a 1-D array of values, got shape {arr.shape}")
        if columns:
            raise ValueError(f"{source}: a 1-D array cannot hold the input columns {list(columns)}")
        return Series(_finite(source, column or "value", arr), None, column or "value", source)
    raise TypeError(
        f"{source}: expected an array, a pandas Series or DataFrame, or an "
        f"eigenlstm.data.Series, got {type(data).__name__}"
    )


def _finite(source: str, name: str, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``values`` as float64, or an error naming the column and the first non-finite value."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{source}: column {name!r} must hold numbers, got dtype {arr.dtype}"
            ) from None
    out = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise ValueError(
            f"{source}: column {name!r} has {out[bad[0]]} at position {bad[0]}; "
            "every value must be a finite number"
        )
    return out
