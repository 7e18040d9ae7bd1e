"""Time-series forecasting with ``LSTMModel``: the engine behind ``eigenlstm train`` and ``predict``.

Reads CSV columns (dialect sniffed, dates parsed to ``numpy.datetime64``, every problem named
by file, line and column), makes them stationary (log, first differences, standardisation),
trains on sliding windows with a validation tail and early stopping, scores the held-out test
tail against naive and seasonal-naive forecasts and plots it with calendar-aware date axes.
The command-line parsing is in cli/; the model is ``nn.LSTMModel``, trained by ``Trainer``.
"""
# Sizes: n series length, I input columns (the target first), W window (input steps),
# Hz horizon (steps forecast at once), N windows, n_val / n_test validation / test values.

from __future__ import annotations

import csv
import math
import os
import re
from importlib import resources
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .nn import LSTMModel
from .training import EarlyStopping, Trainer

__all__ = [
    "CSVError", "Series", "read_series", "as_series", "default_data_path", "DATASETS",
    "dataset_path", "load_dataset", "FREQUENCIES", "Scaling", "make_windows", "train_forecaster",
    "forecast", "holdout_forecasts", "seasonal_naive", "default_window", "default_val_size",
    "check_sizes", "next_dates", "ForecastReport",
    "plot_report",
]

DEFAULT_DATA = "airline_passengers.csv"

# Frequency code -> (name, default season in steps, step as a datetime64 count and unit).
FREQUENCIES: Dict[str, Tuple[str, int, Tuple[int, str]]] = {
    "D": ("daily", 7, (1, "D")),         # the week is the season of daily human activity
    "W": ("weekly", 52, (7, "D")),       # 52 weeks: the year, to the nearest whole week
    "M": ("monthly", 12, (1, "M")),
    "Q": ("quarterly", 4, (3, "M")),
    "Y": ("yearly", 1, (1, "Y")),        # no season within a year: seasonal naive = naive
}

# Bundled series: name -> file, target column, input columns, description. Sources and
# licences are in the header of each file and in data/README.md.
DATASETS: Dict[str, dict] = {
    "airline": {"file": "airline_passengers.csv", "target": "Passengers", "columns": None,
                "about": "monthly international airline passengers 1949-1960 (Box & Jenkins "
                         "series G)"},
    "gasoline": {"file": "us_gasoline_weekly.csv", "target": "barrels_per_day", "columns": None,
                 "about": "weekly US finished motor gasoline product supplied (sales), "
                          "million barrels a day, 2011-2017 (US EIA)"},
    "births": {"file": "us_births_daily.csv", "target": "births", "columns": None,
               "about": "daily births in the United States, 2015 (US NCHS)"},
    "usmacro": {"file": "us_macro_quarterly.csv", "target": "realcons",
                "columns": ["realgdp", "realinv", "realdpi"],
                "about": "US real consumption with GDP, investment and disposable income, "
                         "quarterly 1959-2009 (FRED): several inputs, one target"},
}


class CSVError(ValueError):
    """A CSV file that cannot be read or parsed; the message names the file, line and column."""


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

    def __init__(self, values, labels, column, source, *, inputs=None, columns=None,
                 dates=None, frequency=None, dataset=None):
        self.values = np.asarray(values, dtype=np.float64)
        self.inputs = (self.values[:, None] if inputs is None
                       else np.asarray(inputs, dtype=np.float64).reshape(len(self.values), -1))
        self.columns = [column] if columns is None else list(columns)
        self.labels = labels
        self.column = column
        self.source = source
        self.dates = dates
        self.frequency = frequency
        self.dataset = dataset

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def season(self) -> int:
        """The default season of the frequency (1: none, or no dates)."""
        return FREQUENCIES[self.frequency][1] if self.frequency else 1

    def about(self) -> str:
        """One line saying where the data came from."""
        if self.dataset:
            return f"the bundled data set {self.dataset!r} ({DATASETS[self.dataset]['about']})"
        return self.source


def default_data_path() -> str:
    """Path of the embedded airline-passengers CSV (Box & Jenkins series G, 1949-1960)."""
    return dataset_path("airline")


def dataset_path(name: str) -> str:
    """Path of a bundled data set's CSV file (see ``DATASETS``).

    Raises
    ------
    ValueError
        If ``name`` is not a bundled data set; the message lists them.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return str(resources.files("eigenlstm").joinpath("data", DATASETS[name]["file"]))


def load_dataset(name: str) -> Series:
    """Read a bundled data set with its default target (and input columns).

    Examples
    --------
    >>> from eigenlstm.forecast import load_dataset
    >>> s = load_dataset("usmacro")
    >>> s.column, s.columns, s.frequency
    ('realcons', ['realcons', 'realgdp', 'realinv', 'realdpi'], 'Q')
    """
    spec = DATASETS.get(name)
    series = read_series(dataset_path(name), spec["target"] if spec else None,
                         columns=spec["columns"] if spec else None)
    series.dataset = name
    return series


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_DATE = re.compile(r"(\d{4})([-/])(\d{1,2})(?:\2(\d{1,2}))?")
_DATE_NAMES = {"date", "day", "week", "month", "quarter", "year", "time", "period", "ds"}


def _parse_date(text: str) -> Optional[np.datetime64]:
    """``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY-MM`` (first of the month) as datetime64[D]."""
    m = _DATE.fullmatch(text)
    if not m:
        return None
    year, month, day = int(m.group(1)), int(m.group(3)), int(m.group(4) or 1)
    try:
        return np.datetime64(f"{year:04d}-{month:02d}-{day:02d}", "D")
    except ValueError:
        return None


def _frequency_of(dates: np.ndarray) -> Optional[str]:
    """The frequency code whose step the median gap between dates matches, else None."""
    if dates.shape[0] < 2:
        return None
    gap = float(np.median(np.diff(dates).astype(np.int64)))
    for code, lo, hi in (("D", 1, 1), ("W", 7, 7), ("M", 28, 31), ("Q", 89, 92), ("Y", 365, 366)):
        if lo <= gap <= hi:
            return code
    return None


def _advance(dates: np.ndarray, freq: str, k) -> np.ndarray:
    """``dates`` moved by ``k`` steps of ``freq``.

    Monthly, quarterly and yearly steps move by calendar months: a month end stays a month
    end (Jan 31 -> Feb 28), any other day keeps its day of the month, clipped to the month.
    """
    count, unit = FREQUENCIES[freq][2]
    if unit == "D":
        return dates + np.asarray(k) * count
    months = np.asarray(k) * count * (12 if unit == "Y" else 1)
    start = dates.astype("datetime64[M]")
    offset = dates - start.astype("datetime64[D]")
    is_end = dates == (start + 1).astype("datetime64[D]") - 1
    new_start = (start + months).astype("datetime64[D]")
    new_end = (start + months + 1).astype("datetime64[D]") - 1
    return np.where(is_end, new_end, np.minimum(new_start + offset, new_end))


def next_dates(dates: np.ndarray, freq: str, steps: int) -> np.ndarray:
    """The ``steps`` dates that follow the last of ``dates`` at frequency ``freq``."""
    return _advance(np.asarray(dates[-1:], dtype="datetime64[D]"), freq, np.arange(1, steps + 1))


def _read_rows(path: str, delimiter: Optional[str]):
    """(dialect delimiter, [(line number, fields)]) of the non-blank, non-comment lines."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise CSVError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CSVError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    kept = [(i, line) for i, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not kept:
        raise CSVError(f"{path}: no data rows (the file is empty or only comments)")
    if delimiter is None:
        sample = "\n".join(line for _, line in kept[:50])
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","   # one column, or nothing to tell the delimiter by
    rows = []
    for lineno, line in kept:
        try:
            fields = next(csv.reader([line], delimiter=delimiter))
        except csv.Error as exc:
            raise CSVError(f"{path}:{lineno}: cannot parse as CSV: {exc}") from None
        rows.append((lineno, [x.strip() for x in fields]))
    return delimiter, rows


def read_series(path, column: Optional[str] = None, *, columns: Optional[Sequence[str]] = None,
                delimiter: Optional[str] = None) -> Series:
    """Read a numeric target column (and input columns) from a CSV file with a header row.

    Lines starting with ``#`` and blank lines are skipped. The delimiter is detected with
    ``csv.Sniffer`` among ``, ; tab |`` unless given. If the first row is all numbers, the
    file has no header and columns are named ``col1``, ``col2``, ... A first column of dates
    (``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY-MM``, or years under a header such as ``year``)
    becomes ``dates``; they must be increasing at one frequency, with no gaps.

    Parameters
    ----------
    path : str or os.PathLike
    column : str, optional
        The target column. Default: the only numeric column (an error if there are several).
    columns : sequence of str, optional
        More input columns the model reads besides the target's own past.
    delimiter : str, optional
        The field delimiter (one character); sniffed when None.

    Returns
    -------
    Series

    Raises
    ------
    CSVError (a ValueError)
        If the file cannot be opened or decoded, has no rows, a row has the wrong number of
        fields, a column is missing or ambiguous, a value is not a number, or a date is
        malformed, out of order or leaves a gap; the message names the file and, for a bad
        value, its line and column.

    Examples
    --------
    >>> from eigenlstm.forecast import read_series, default_data_path
    >>> s = read_series(default_data_path())
    >>> len(s), s.column, s.labels[0], float(s.values[0]), s.frequency, str(s.dates[0])
    (144, 'Passengers', '1949-01', 112.0, 'M', '1949-01-01')
    """
    path = os.fspath(path)
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise CSVError(f"{path}: the delimiter must be one character, got {delimiter!r}")
    delimiter, rows = _read_rows(path, delimiter)
    header_line, header = rows[0]
    if all(_is_number(x) for x in header):
        names = [f"col{i + 1}" for i in range(len(header))]
        data = rows
    else:
        names, data = header, rows[1:]
    if not data:
        raise CSVError(f"{path}:{header_line}: a header but no data rows")
    for lineno, fields in data:
        if len(fields) != len(names):
            shown = delimiter.join(fields)
            raise CSVError(
                f"{path}:{lineno}: expected {len(names)} fields as in the header {names} "
                f"(delimiter {delimiter!r}), got {len(fields)}: {shown!r}"
            )
    # The date column: the first column, if it holds dates (or years under a date-like name).
    first = [fields[0] for _, fields in data]
    parsed = [_parse_date(x) for x in first]
    dates = None
    # Decided by the first row, so that a later malformed date is an error, not a reason to
    # read the column as text.
    if parsed[0] is not None:
        dates = parsed
    elif names[0].strip().lower() in _DATE_NAMES and re.fullmatch(r"\d{4}", first[0]):
        dates = [np.datetime64(f"{x}-01-01", "D") if re.fullmatch(r"\d{4}", x) else None
                 for x in first]
    if dates is not None:
        for (lineno, fields), d in zip(data, dates):
            if d is None:
                raise CSVError(f"{path}:{lineno}: column {names[0]!r} has {fields[0]!r}, which "
                               "is not a date like the rows above it")
    value_cols = list(range(1 if dates is not None else 0, len(names)))
    # A column is numeric if any of its values is a number; one that holds none is text.
    numeric = [c for c in value_cols if any(_is_number(f[c]) for _, f in data)]
    numeric_names = [names[c] for c in numeric]

    def index_of(name: str, what: str) -> int:
        if name not in names:
            raise CSVError(f"{path}: no column {name!r} ({what}); the columns are {names}")
        c = names.index(name)
        if dates is not None and c == 0:
            raise CSVError(f"{path}: column {name!r} ({what}) holds the dates; the numeric "
                           f"columns are {numeric_names}")
        return c

    if column is None:
        if len(numeric) != 1:
            found = (f"numeric columns {numeric_names}" if numeric
                     else f"no numeric column among {names}")
            raise CSVError(f"{path}: {found}; choose the one to forecast with --column "
                           "(or column= in Python)")
        col = numeric[0]
    else:
        col = index_of(column, "the target")
    extra = [index_of(name, "an input") for name in (columns or [])]
    cols = [col] + [c for c in extra if c != col]
    table = np.empty((len(data), len(cols)))
    for j, c in enumerate(cols):
        for i, (lineno, fields) in enumerate(data):
            text = fields[c]
            try:
                value = float(text)
            except ValueError:
                what = "an empty value" if not text else f"{text!r}"
                raise CSVError(
                    f"{path}:{lineno}: column {names[c]!r} has {what}, which is not a number"
                ) from None
            if not math.isfinite(value):
                raise CSVError(f"{path}:{lineno}: column {names[c]!r} has {text!r}, not a "
                               "finite number")
            table[i, j] = value
    freq = None
    if dates is not None:
        dates = np.array(dates, dtype="datetime64[D]")
        freq = _frequency_of(dates)
        lines = [lineno for lineno, _ in data]
        if freq is None and len(dates) > 1:
            raise CSVError(f"{path}:{lines[1]}: column {names[0]!r}: cannot tell the frequency "
                           "of the dates (expected daily, weekly, monthly, quarterly or yearly "
                           f"steps; the median step is {np.median(np.diff(dates))})")
        if freq is not None:
            expected = _advance(dates[:-1], freq, 1)
            bad = np.flatnonzero(dates[1:] != expected)
            if bad.size:
                k = int(bad[0]) + 1
                raise CSVError(
                    f"{path}:{lines[k]}: column {names[0]!r} has {first[k]!r} after "
                    f"{first[k - 1]!r} (line {lines[k - 1]}); {FREQUENCIES[freq][0]} data needs "
                    f"{expected[k - 1]} there: the dates must increase one step at a time, "
                    "with no gaps"
                )
    labels = first if (dates is not None or 0 not in cols) else None
    return Series(table[:, 0], labels, names[col], path, inputs=table,
                  columns=[names[c] for c in cols], dates=dates, frequency=freq)


def as_series(data, column: Optional[str] = None, *, columns: Optional[Sequence[str]] = None,
              source: str = "data") -> Series:
    """A ``Series`` from a ``Series``, a 1-D array, or a pandas Series or DataFrame.

    pandas is never imported: objects with ``to_numpy`` and ``index`` are read through them.
    A pandas Series' name, or a DataFrame's columns, are checked against ``column`` and
    ``columns``; a ``DatetimeIndex`` (or a date-typed index) becomes ``dates``.

    Raises
    ------
    ValueError
        If a named column is missing, the values are not finite numbers, or the dates are not
        at one frequency.
    TypeError
        If ``data`` is of another type.
    """
    if isinstance(data, Series):
        if column is not None and data.column != column:
            raise ValueError(f"{source}: the series is column {data.column!r}, expected {column!r}")
        return data
    dates = freq = None
    index = getattr(data, "index", None)
    if index is not None and hasattr(data, "to_numpy"):
        idx = np.asarray(index)
        if idx.dtype.kind == "M":
            dates = idx.astype("datetime64[D]")
            freq = _frequency_of(dates)
            if freq is None or np.any(dates[1:] != _advance(dates[:-1], freq, 1)):
                raise ValueError(f"{source}: the index dates must increase one step at a time "
                                 "(daily, weekly, monthly, quarterly or yearly), with no gaps")
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):          # a DataFrame
        names = [str(c) for c in data.columns]
        if column is None:
            if len(names) != 1:
                raise ValueError(f"{source}: the DataFrame has columns {names}; name the target "
                                 "with column=")
            column = names[0]
        wanted = [column] + [c for c in (columns or []) if c != column]
        for name in wanted:
            if name not in names:
                raise ValueError(f"{source}: no column {name!r}; the columns are {names}")
        table = np.column_stack([_finite(source, name, data[name].to_numpy()) for name in wanted])
        labels = None if dates is None else [str(d) for d in dates]
        return Series(table[:, 0], labels, column, source, inputs=table, columns=wanted,
                      dates=dates, frequency=freq)
    if hasattr(data, "to_numpy") and hasattr(data, "name"):              # a pandas Series
        name = None if data.name is None else str(data.name)
        if column is not None and name is not None and name != column:
            raise ValueError(f"{source}: the series is named {name!r}, expected column {column!r}")
        if columns:
            raise ValueError(f"{source}: a single series cannot hold the input columns {list(columns)}; "
                             "pass a DataFrame")
        values = _finite(source, name or "values", data.to_numpy())
        labels = None if dates is None else [str(d) for d in dates]
        return Series(values, labels, name or column or "value", source, dates=dates,
                      frequency=freq)
    if isinstance(data, (np.ndarray, list, tuple)):
        arr = np.asarray(data)
        if arr.ndim != 1:
            raise ValueError(f"{source}: expected a 1-D array of values, got shape {arr.shape}")
        if columns:
            raise ValueError(f"{source}: a 1-D array cannot hold the input columns {list(columns)}")
        return Series(_finite(source, column or "value", arr), None, column or "value", source)
    raise TypeError(f"{source}: expected an array, a pandas Series or DataFrame, or a "
                    f"forecast.Series, got {type(data).__name__}")


def _finite(source: str, name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{source}: column {name!r} must hold numbers, got dtype {arr.dtype}") \
                from None
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{source}: column {name!r} has {arr[bad[0]]} at position {bad[0]}; "
                         "every value must be a finite number")
    return arr


class Scaling:
    r"""The reversible map from series values to the model's inputs and targets, per column.

    .. math::
        z_t = \frac{(\log v_t - \log v_{t-1}) - \mu}{\sigma}

    (without the log for a column with any value <= 0). ``mu`` and ``sigma`` come from the
    training part only. Differencing makes trending series stationary, so the LSTM never has
    to extrapolate beyond the levels it saw in training. Column 0 is the target.
    """

    def __init__(self, log, mean, std) -> None:
        self.log = np.atleast_1d(np.asarray(log, dtype=bool))
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))

    @classmethod
    def fit(cls, values: np.ndarray) -> "Scaling":
        v = np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1)
        log = np.all(v > 0, axis=0)
        d = np.diff(np.where(log, np.log(np.where(log, v, 1.0)), v), axis=0)
        std = d.std(axis=0)
        return cls(log, d.mean(axis=0), np.where(std > 0, std, 1.0))

    @classmethod
    def from_dict(cls, d: dict) -> "Scaling":
        return cls(d["log"], d["mean"], d["std"])

    def level(self, values: np.ndarray, col: Optional[int] = None) -> np.ndarray:
        """Log (where used) of ``values``: shape (n, I), or (n,) for one column ``col``."""
        v = np.asarray(values, dtype=np.float64)
        log = self.log if col is None else self.log[col]
        return np.where(log, np.log(np.where(log, v, 1.0)), v)

    def unlevel(self, levels: np.ndarray) -> np.ndarray:
        """Inverse of ``level`` for the target column."""
        return np.exp(levels) if self.log[0] else levels

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Standardised differences of every column, shape (n - 1, I)."""
        v = np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1)
        return (np.diff(self.level(v), axis=0) - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"log": [bool(x) for x in self.log], "mean": [float(x) for x in self.mean],
                "std": [float(x) for x in self.std]}


def make_windows(z: np.ndarray, window: int, horizon: int, origins) -> Tuple[np.ndarray, np.ndarray]:
    """Inputs and targets for forecasting ``v[o:o+horizon]`` from ``v[:o]``, for each origin o.

    ``z`` are the scaled differences, shape (n - 1, I) (``z[k]`` is the change from ``v[k]``
    to ``v[k+1]``), so the input is ``z[o-1-window : o-1]`` and the target is column 0 of
    ``z[o-1 : o-1+horizon]``.

    Returns
    -------
    x : ndarray of shape (N, window, I)
    y : ndarray of shape (N, horizon)
    """
    z = z.reshape(z.shape[0], -1)
    origins = list(origins)
    if not origins:
        return np.zeros((0, window, z.shape[1])), np.zeros((0, horizon))
    x = np.stack([z[o - 1 - window:o - 1] for o in origins])
    y = np.stack([z[o - 1:o - 1 + horizon, 0] for o in origins])
    return x, y


def seasonal_naive(values: np.ndarray, origins, horizon: int, season: int) -> np.ndarray:
    """Forecasts of ``v[o:o+horizon]`` that repeat the value one season earlier.

    ``v[o+h]`` is forecast by ``v[o+h-season*k]`` with the smallest ``k >= 1`` that lands
    before ``o``; with ``season = 1`` this is the naive forecast ``v[o-1]``.

    Returns
    -------
    ndarray of shape (len(origins), horizon)
    """
    out = np.empty((len(origins), horizon))
    for i, o in enumerate(origins):
        for h in range(horizon):
            out[i, h] = values[o + h - season * (h // season + 1)]
    return out


def forecast(model: LSTMModel, history, steps: Optional[int] = None) -> np.ndarray:
    """Forecast the ``steps`` values that follow ``history`` with a model from ``train_forecaster``.

    Beyond the model's horizon, forecasts are fed back as inputs (recursive forecasting),
    which is only possible for a model that reads its target alone.

    Parameters
    ----------
    model : LSTMModel
        With ``model.metadata`` as written by ``train_forecaster``.
    history : Series, pandas Series or DataFrame, or array_like of shape (n,) or (n, I)
        The observed series; its last ``window + 1`` rows are used. A pandas Series must
        carry the trained column's name (or none); a DataFrame must hold the trained columns.
    steps : int, optional
        How many values to forecast (the model's horizon by default).

    Returns
    -------
    ndarray of shape (steps,)

    Raises
    ------
    ValueError
        If the model has no forecasting metadata, ``history`` is too short or has other
        columns than the model was trained on, or ``steps`` exceeds the horizon of a model
        with input columns (their future is unknown).
    """
    meta = model.metadata
    if "window" not in meta or "scaling" not in meta:
        raise ValueError(
            "forecast: this model has no forecasting metadata (window, scaling); train it with "
            "`eigenlstm train` or eigenlstm.forecast.train_forecaster"
        )
    W, Hz = int(meta["window"]), int(meta["horizon"])
    columns = list(meta.get("columns") or [meta.get("column")])
    steps = Hz if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"forecast: steps must be >= 1, got {steps}")
    if isinstance(history, np.ndarray) and history.ndim == 2:
        v = history.astype(np.float64)
    elif isinstance(history, (np.ndarray, list, tuple)):
        v = np.asarray(history, dtype=np.float64).reshape(-1, 1)
    else:
        s = as_series(history, meta.get("column"), columns=columns[1:], source="forecast: history")
        v = s.inputs
    if v.shape[1] != len(columns):
        raise ValueError(f"forecast: history must have {len(columns)} column(s) {columns}, got "
                         f"shape {v.shape}")
    if v.shape[0] < W + 1:
        raise ValueError(f"forecast: history must hold at least window + 1 = {W + 1} values, "
                         f"got {v.shape[0]}")
    if len(columns) > 1 and steps > Hz:
        raise ValueError(
            f"forecast: steps must be <= the horizon {Hz} for a model that reads input columns "
            f"{columns[1:]}: forecasting further would need their future values"
        )
    sc = Scaling.from_dict(meta["scaling"])
    last = v[-(W + 1):]
    if np.any(sc.log & np.any(last <= 0, axis=0)):
        raise ValueError("forecast: this model works on log values; the history must be > 0")
    levels = sc.level(last)                                     # (W + 1, I)
    out: List[float] = []
    while len(out) < steps:
        z = (np.diff(levels[-(W + 1):], axis=0) - sc.mean) / sc.std
        dz = model.predict(z[None]).astype(np.float64)[0] * sc.std[0] + sc.mean[0]
        for d in dz[:steps - len(out)]:
            # Only a target-only model gets here past the horizon: its one column is the target.
            levels = np.vstack([levels, levels[-1:] + d])
            out.append(float(levels[-1, 0]))
    return sc.unlevel(np.array(out))


def holdout_forecasts(model: LSTMModel, inputs: np.ndarray, start: int, stop: int,
                      season: int = 1):
    """Rolling-origin forecasts of ``v[start:stop]``, and the naive and seasonal-naive ones.

    For every origin o in ``[start, stop - Hz]``, forecast ``v[o:o+Hz]`` from ``v[:o]``.

    Parameters
    ----------
    inputs : ndarray of shape (n, I)
        All columns, the target first.

    Returns
    -------
    origins : list of int
    predicted, naive, snaive, actual : ndarray of shape (len(origins), Hz)
    """
    meta = model.metadata
    W, Hz = int(meta["window"]), int(meta["horizon"])
    inputs = inputs.reshape(inputs.shape[0], -1)
    values = inputs[:, 0]
    origins = list(range(start, stop - Hz + 1))
    sc = Scaling.from_dict(meta["scaling"])
    x, _ = make_windows(sc.transform(inputs), W, Hz, origins)
    dz = model.predict(x).astype(np.float64) * sc.std[0] + sc.mean[0]
    levels = sc.level(values, 0)
    base = np.array([levels[o - 1] for o in origins])
    predicted = sc.unlevel(base[:, None] + np.cumsum(dz, axis=1))
    naive = seasonal_naive(values, origins, Hz, 1)
    snaive = seasonal_naive(values, origins, Hz, season)
    actual = np.stack([values[o:o + Hz] for o in origins])
    return origins, predicted, naive, snaive, actual


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


class ForecastReport:
    """What ``train_forecaster`` measured on the held-out test tail.

    Attributes
    ----------
    rmse, mae : float
        Errors of the model's rolling-origin forecasts, in the series' units.
    naive_rmse, naive_mae : float
        The same for the naive last-value forecast.
    snaive_rmse, snaive_mae : float
        The same for the seasonal-naive forecast (the value one ``season`` earlier).
    season : int
    origins, predicted, naive, snaive, actual
        As returned by ``holdout_forecasts``.
    history : History
    best_epoch : int or None
        The 1-based epoch whose weights were kept (early stopping), or None without it.
    epochs_run : int
    """

    def __init__(self, origins, predicted, naive, snaive, actual, history, season,
                 best_epoch=None):
        self.origins, self.predicted, self.actual = origins, predicted, actual
        self.naive, self.snaive, self.season = naive, snaive, int(season)
        self.history = history
        self.best_epoch = best_epoch
        self.epochs_run = len(history.epoch)
        self.rmse, self.mae = _rmse(predicted, actual), float(np.mean(np.abs(predicted - actual)))
        self.naive_rmse = _rmse(naive, actual)
        self.naive_mae = float(np.mean(np.abs(naive - actual)))
        self.snaive_rmse = _rmse(snaive, actual)
        self.snaive_mae = float(np.mean(np.abs(snaive - actual)))

    @property
    def beats_naive(self) -> bool:
        return self.rmse < self.naive_rmse

    @property
    def beats_seasonal_naive(self) -> bool:
        return self.rmse < self.snaive_rmse

    def to_dict(self) -> dict:
        return {"rmse": self.rmse, "mae": self.mae, "naive_rmse": self.naive_rmse,
                "naive_mae": self.naive_mae, "seasonal_naive_rmse": self.snaive_rmse,
                "seasonal_naive_mae": self.snaive_mae, "season": self.season,
                "best_epoch": self.best_epoch, "epochs_run": self.epochs_run}


def check_sizes(n: int, *, window: int, horizon: int, test_size: int, val_size: int,
                season: int = 1, where: str = "train_forecaster", source: str = "the series",
                names: Optional[Dict[str, str]] = None) -> None:
    """Raise ValueError unless a series of ``n`` values fits the window and the tails.

    Training needs at least 2 windows before the validation tail; the tails must each hold
    a whole horizon; the seasonal-naive forecast needs one season before the test tail.
    ``names`` maps argument names to how the caller spells them (``--test-size``).
    """
    pre = f"{where}: " if where else ""   # the CLI adds its own "eigenlstm train: error:"
    nm = {k: k for k in ("window", "horizon", "test_size", "val_size")}
    nm.update(names or {})
    if test_size < horizon:
        raise ValueError(f"{pre}{nm['test_size']} must be >= {nm['horizon']} = {horizon}, "
                         f"got {test_size}")
    if val_size and val_size < horizon:
        raise ValueError(f"{pre}{nm['val_size']} must be 0 or >= {nm['horizon']} = "
                         f"{horizon}, got {val_size}")
    need = window + horizon + 2 + val_size + test_size
    if n < need or n - test_size < season:
        raise ValueError(
            f"{pre}{source} has {n} values; with {nm['window']}={window}, {nm['horizon']}="
            f"{horizon}, {nm['val_size']}={val_size} and {nm['test_size']}={test_size} it needs "
            f"at least {max(need, season + test_size)} values"
        )


def default_window(season: int) -> int:
    """12 steps, or a whole season if longer (52 for weekly data): the model then sees the
    value one season back, which the seasonal-naive forecast uses."""
    return max(12, int(season))


def default_val_size(n: int, test_size: int) -> int:
    """A fifth of the series, and at least the test tail: a shorter validation tail picks
    the epoch to keep by noise (measured on the bundled series)."""
    return max(int(test_size), int(n) // 5)


def train_forecaster(series, *, window: Optional[int] = None, horizon: int = 1, hidden: int = 32,
                     layers: int = 1, epochs: int = 300, lr: float = 1e-2, batch_size: int = 16,
                     test_size: int = 24, val_size: Optional[int] = None, patience: int = 20,
                     season: Optional[int] = None, seed: Optional[int] = 0,
                     progress: bool = True, column: Optional[str] = None,
                     columns: Optional[Sequence[str]] = None):
    """Train an ``LSTMModel`` to forecast ``series`` and score it on the held-out test tail.

    The series is split in time: training windows, then a validation tail of ``val_size``
    values that picks the epoch to keep (early stopping with the best weights restored), then
    a test tail of ``test_size`` values, never seen before scoring.

    Parameters
    ----------
    series : Series, pandas Series or DataFrame, or array_like of shape (n,)
    window : int, optional
        Past differences the model reads; default ``default_window(season)``: 12, or the
        season if longer.
    horizon : int, default 1
        Values forecast at once (direct multi-step forecasting).
    hidden, layers : int
        LSTM size.
    epochs, lr, batch_size : training settings (Adam, clipping at 1); ``epochs`` is the most
        that early stopping allows.
    test_size : int, default 24
        Held-out values at the end, scored against the naive baselines.
    val_size : int, optional
        Values before the test tail that choose the epoch; default ``default_val_size``: a
        fifth of the series, at least ``test_size``. 0 trains all ``epochs`` with a
        cosine schedule and no early stopping.
    patience : int, default 20
        Epochs without a better validation loss before stopping.
    season : int, optional
        Steps in a season for the seasonal-naive baseline; default from the dates' frequency
        (daily 7, weekly 52, monthly 12, quarterly 4, else 1).
    seed : int, optional
        Seeds the weights and the shuffling.
    progress : bool
        Show the progress bar.
    column, columns : str, sequence of str, optional
        Target and input columns when ``series`` is a pandas DataFrame.

    Returns
    -------
    model : LSTMModel
        With ``metadata`` holding the columns, window, horizon, scaling, frequency and
        season (saved with checkpoints).
    report : ForecastReport

    Raises
    ------
    ValueError
        If the series is too short for the window, horizon and tails.

    Examples
    --------
    >>> from eigenlstm.forecast import load_dataset, train_forecaster, forecast
    >>> series = load_dataset("airline")
    >>> model, report = train_forecaster(series, progress=False)
    >>> report.rmse < report.naive_rmse and report.rmse < report.snaive_rmse
    True
    >>> forecast(model, series, steps=12).shape
    (12,)
    """
    where = "train_forecaster"
    series = as_series(series, column, columns=columns, source=f"{where}: series")
    season = series.season if season is None else int(season)
    if season < 1:
        raise ValueError(f"{where}: season must be >= 1, got {season}")
    n = len(series)
    window = default_window(season) if window is None else int(window)
    val_size = default_val_size(n, test_size) if val_size is None else int(val_size)
    check_sizes(n, window=window, horizon=horizon, test_size=test_size, val_size=val_size,
                season=season, where=where, source=series.source)
    if patience < 0:
        raise ValueError(f"{where}: patience must be >= 0, got {patience}")
    v = series.inputs
    n_test0 = n - test_size                  # first value of the test tail
    n_val0 = n_test0 - val_size              # first value of the validation tail
    train_origins = range(window + 1, n_val0 - horizon + 1)
    val_origins = range(n_val0, n_test0 - horizon + 1)
    sc = Scaling.fit(v[:n_val0])
    z = sc.transform(v)
    x, y = make_windows(z, window, horizon, train_origins)
    model = LSTMModel(v.shape[1], hidden, horizon, num_layers=layers, seed=seed)
    model.metadata = {
        "task": "forecast", "window": window, "horizon": horizon, "test_size": test_size,
        "val_size": val_size, "scaling": sc.to_dict(), "column": series.column,
        "columns": series.columns, "frequency": series.frequency, "season": season,
        "source": os.path.basename(series.source), "dataset": series.dataset,
        "last_date": None if series.dates is None else str(series.dates[-1]),
    }
    callbacks, validation = [], None
    if val_size:
        validation = make_windows(z, window, horizon, val_origins)
        stop = EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        callbacks.append(stop)
    history = Trainer(model).fit(
        x, y, epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam",
        lr_schedule=None if val_size else "cosine", clip_grad_norm=1.0, seed=seed,
        progress=progress, validation_data=validation, callbacks=callbacks)
    best = None if not val_size or callbacks[0].best_epoch is None else callbacks[0].best_epoch + 1
    report = ForecastReport(*holdout_forecasts(model, v, n_test0, n, season), history, season,
                            best)
    return model, report


def _tick_labels_overlap(fig) -> List[Tuple[str, str]]:
    """Pairs of neighbouring x tick labels whose rendered boxes overlap (empty: all legible)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        order = sorted(range(len(boxes)), key=lambda i: boxes[i].x0)
        for a, b in zip(order, order[1:]):
            if boxes[a].overlaps(boxes[b]):
                pairs.append((labels[a].get_text(), labels[b].get_text()))
    return pairs


def plot_report(series: Series, report: ForecastReport, path: str, title: str = ""):
    """Save a PNG: forecast vs actual on the held-out tail (top) and the loss curves (bottom).

    With dates, the x axis is a matplotlib date axis (``AutoDateLocator`` and
    ``ConciseDateFormatter``), so ticks fall on whole days, weeks, months or years whatever
    the frequency. The forecast line joins the rolling forecasts made every ``horizon`` steps
    from the start of the tail (each from the actual values before it): those that were scored.

    Returns
    -------
    list of (str, str)
        Neighbouring tick labels whose boxes overlap once rendered (empty when legible).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    v = series.values
    n = v.shape[0]
    Hz = report.predicted.shape[1]
    fig, (ax, ax_loss) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [2, 1]})
    t = series.dates if series.dates is not None else np.arange(n)
    ax.plot(t, v, color="black", lw=1.2, label="actual")
    start = report.origins[0]
    if series.dates is not None:
        ax.axvline(series.dates[start], color="grey", ls=":", lw=1)
        locator = mdates.AutoDateLocator(minticks=4, maxticks=9)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        ax.axvline(start - 0.5, color="grey", ls=":", lw=1)
    blocks = range(0, len(report.origins), Hz)
    idx = np.concatenate([np.arange(report.origins[b], report.origins[b] + Hz) for b in blocks])
    fc = np.concatenate([report.predicted[b] for b in blocks])
    nv = np.concatenate([report.naive[b] for b in blocks])
    sn = np.concatenate([report.snaive[b] for b in blocks])
    ax.plot(t[idx], fc, color="tab:red", lw=1.8, marker="o", ms=3,
            label=f"LSTM forecast (RMSE {report.rmse:.4g})")
    ax.plot(t[idx], nv, color="tab:blue", lw=1.2, ls="--",
            label=f"naive last value (RMSE {report.naive_rmse:.4g})")
    if report.season > 1:
        ax.plot(t[idx], sn, color="tab:purple", lw=1.2, ls=":",
                label=f"seasonal naive, {report.season} steps back (RMSE {report.snaive_rmse:.4g})")
    ax.set_ylabel(series.column)
    freq = f"{FREQUENCIES[series.frequency][0]} " if series.frequency else ""
    ax.set_title(title or f"{series.column}: {Hz}-step forecasts of the last {n - start} "
                 f"{freq}values (held out)")
    ax.legend(loc="upper left", fontsize=9)
    hist = report.history.history
    loss = hist.get("loss", [])
    ax_loss.plot(np.arange(1, len(loss) + 1), loss, color="tab:green", label="training")
    if hist.get("val_loss"):
        ax_loss.plot(np.arange(1, len(hist["val_loss"]) + 1), hist["val_loss"],
                     color="tab:orange", label="validation")
    if report.best_epoch:
        ax_loss.axvline(report.best_epoch, color="grey", ls=":", lw=1)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (MSE, scaled)")
    ax_loss.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    overlaps = _tick_labels_overlap(fig)
    plt.close(fig)
    return overlaps
