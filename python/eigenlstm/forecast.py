"""Univariate time-series forecasting with ``LSTMModel``: the engine behind ``eigenlstm train``.

Reads a CSV column, makes it stationary (log, first differences, standardisation), trains on
sliding windows, scores the held-out tail against a naive last-value forecast and plots it.
The command-line parsing is in cli.py; the model and training loop in model.py.
"""
# Sizes: n series length, W window (input steps), Hz horizon (steps forecast at once),
# N windows, n_test held-out values at the end of the series.

from __future__ import annotations

import csv
import math
import os
from importlib import resources
from typing import List, Optional, Tuple

import numpy as np

from .model import LSTMModel

__all__ = [
    "CSVError", "Series", "read_series", "default_data_path", "Scaling", "make_windows",
    "train_forecaster", "forecast", "holdout_forecasts", "ForecastReport", "plot_report",
]

DEFAULT_DATA = "airline_passengers.csv"


class CSVError(ValueError):
    """A CSV file that cannot be read or parsed; the message names the file (and line)."""


class Series:
    """One numeric column of a CSV file.

    Attributes
    ----------
    values : ndarray of shape (n,), float64
    labels : list of str or None
        The first column's text per row (e.g. dates), if it is not the value column.
    column : str
        The column's name.
    source : str
        The file it came from.
    """

    def __init__(self, values, labels, column, source):
        self.values = np.asarray(values, dtype=np.float64)
        self.labels = labels
        self.column = column
        self.source = source

    def __len__(self) -> int:
        return self.values.shape[0]


def default_data_path() -> str:
    """Path of the embedded airline-passengers CSV (Box & Jenkins series G, 1949-1960)."""
    return str(resources.files("eigenlstm").joinpath("data", DEFAULT_DATA))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_series(path, column: Optional[str] = None) -> Series:
    """Read one numeric column from a CSV file with a header row.

    Lines starting with ``#`` and blank lines are skipped. Without ``column`` the last column
    is used; if the first row is all numbers, the file has no header and columns are named
    ``col1``, ``col2``, ...

    Parameters
    ----------
    path : str or os.PathLike
    column : str, optional
        Header name of the column to read.

    Returns
    -------
    Series

    Raises
    ------
    CSVError (a ValueError)
        If the file cannot be opened or decoded, has no rows, a row has the wrong number of
        fields, the column is missing, or a value is not a number; the message names the file
        and, for a bad row, its line number.

    Examples
    --------
    >>> from eigenlstm.forecast import read_series, default_data_path
    >>> s = read_series(default_data_path())
    >>> len(s), s.column, s.labels[0], float(s.values[0])
    (144, 'Passengers', '1949-01', 112.0)
    """
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise CSVError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CSVError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    rows: List[Tuple[int, List[str]]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = next(csv.reader([line]))
        except csv.Error as exc:
            raise CSVError(f"{path}:{lineno}: cannot parse as CSV: {exc}") from None
        rows.append((lineno, [x.strip() for x in fields]))
    if not rows:
        raise CSVError(f"{path}: no data rows (the file is empty or only comments)")
    header_line, header = rows[0]
    if all(_is_number(x) for x in header):
        names = [f"col{i + 1}" for i in range(len(header))]
        data = rows
    else:
        names, data = header, rows[1:]
    if not data:
        raise CSVError(f"{path}:{header_line}: a header but no data rows")
    if column is None:
        col = len(names) - 1
    elif column in names:
        col = names.index(column)
    else:
        raise CSVError(f"{path}: no column {column!r}; the columns are {names}")
    values, labels = [], []
    for lineno, fields in data:
        if len(fields) != len(names):
            raise CSVError(
                f"{path}:{lineno}: expected {len(names)} fields as in the header {names}, "
                f"got {len(fields)}: {','.join(fields)!r}"
            )
        text = fields[col]
        try:
            value = float(text)
        except ValueError:
            what = "an empty value" if not text else f"{text!r}"
            raise CSVError(
                f"{path}:{lineno}: column {names[col]!r} has {what}, which is not a number"
            ) from None
        if not math.isfinite(value):
            raise CSVError(f"{path}:{lineno}: column {names[col]!r} has {text!r}, not a finite number")
        values.append(value)
        labels.append(fields[0])
    return Series(values, labels if col != 0 else None, names[col], path)


class Scaling:
    r"""The reversible map from series values to the model's inputs and targets.

    .. math::
        z_t = \frac{(\log v_t - \log v_{t-1}) - \mu}{\sigma}

    (without the log if any value is <= 0). ``mu`` and ``sigma`` come from the training part
    only. Differencing makes the airline series stationary, so the LSTM never has to
    extrapolate beyond the levels it saw in training.
    """

    def __init__(self, log: bool, mean: float, std: float) -> None:
        self.log, self.mean, self.std = bool(log), float(mean), float(std)

    @classmethod
    def fit(cls, values: np.ndarray) -> "Scaling":
        log = bool(np.all(values > 0))
        d = np.diff(np.log(values) if log else values)
        std = float(d.std()) or 1.0
        return cls(log, float(d.mean()), std)

    def level(self, values: np.ndarray) -> np.ndarray:
        return np.log(values) if self.log else np.asarray(values, dtype=np.float64)

    def unlevel(self, levels: np.ndarray) -> np.ndarray:
        return np.exp(levels) if self.log else levels

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Standardised differences, one shorter than ``values``."""
        return (np.diff(self.level(values)) - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"log": self.log, "mean": self.mean, "std": self.std}


def make_windows(z: np.ndarray, window: int, horizon: int, origins) -> Tuple[np.ndarray, np.ndarray]:
    """Inputs and targets for forecasting ``v[o:o+horizon]`` from ``v[:o]``, for each origin o.

    ``z`` are the scaled differences (``z[k]`` is the change from ``v[k]`` to ``v[k+1]``), so
    the input is ``z[o-1-window : o-1]`` and the target ``z[o-1 : o-1+horizon]``.

    Returns
    -------
    x : ndarray of shape (N, window, 1)
    y : ndarray of shape (N, horizon)
    """
    origins = list(origins)
    x = np.stack([z[o - 1 - window:o - 1] for o in origins])[:, :, None] if origins else \
        np.zeros((0, window, 1))
    y = np.stack([z[o - 1:o - 1 + horizon] for o in origins]) if origins else np.zeros((0, horizon))
    return x, y


def forecast(model: LSTMModel, history, steps: Optional[int] = None) -> np.ndarray:
    """Forecast the ``steps`` values that follow ``history`` with a model from ``train_forecaster``.

    Beyond the model's horizon, forecasts are fed back as inputs (recursive forecasting).

    Parameters
    ----------
    model : LSTMModel
        With ``model.metadata`` as written by ``train_forecaster``.
    history : array_like of shape (n,)
        The observed series; its last ``window + 1`` values are used.
    steps : int, optional
        How many values to forecast (the model's horizon by default).

    Returns
    -------
    ndarray of shape (steps,)

    Raises
    ------
    ValueError
        If the model has no forecasting metadata or ``history`` is too short.
    """
    meta = model.metadata
    if "window" not in meta or "scaling" not in meta:
        raise ValueError(
            "forecast: this model has no forecasting metadata (window, scaling); train it with "
            "`eigenlstm train` or eigenlstm.forecast.train_forecaster"
        )
    W, Hz = int(meta["window"]), int(meta["horizon"])
    steps = Hz if steps is None else int(steps)
    v = np.asarray(history, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] < W + 1:
        raise ValueError(f"forecast: history must hold at least window + 1 = {W + 1} values, got {v.shape}")
    sc = Scaling(**meta["scaling"])
    if sc.log and np.any(v[-(W + 1):] <= 0):
        raise ValueError("forecast: this model works on log values; the history must be > 0")
    levels = list(sc.level(v[-(W + 1):]))
    out: List[float] = []
    while len(out) < steps:
        z = (np.diff(levels[-(W + 1):]) - sc.mean) / sc.std
        dz = model.predict(z[None, :, None])[0].astype(np.float64) * sc.std + sc.mean
        for d in dz[:steps - len(out)]:
            levels.append(levels[-1] + d)
            out.append(levels[-1])
    return sc.unlevel(np.array(out))


def holdout_forecasts(model: LSTMModel, values: np.ndarray, n_test: int):
    """Rolling-origin forecasts of the last ``n_test`` values, and the naive ones.

    For every origin o in the tail with a full horizon inside it, forecast ``v[o:o+Hz]`` from
    ``v[:o]``; the naive forecast repeats ``v[o-1]``.

    Returns
    -------
    origins : list of int
    predicted : ndarray of shape (len(origins), Hz)
    naive : ndarray of shape (len(origins), Hz)
    actual : ndarray of shape (len(origins), Hz)
    """
    meta = model.metadata
    W, Hz = int(meta["window"]), int(meta["horizon"])
    n = values.shape[0]
    origins = list(range(n - n_test, n - Hz + 1))
    sc = Scaling(**meta["scaling"])
    z = sc.transform(values)
    x, _ = make_windows(z, W, Hz, origins)
    dz = model.predict(x).astype(np.float64) * sc.std + sc.mean
    levels = sc.level(values)
    base = np.array([levels[o - 1] for o in origins])
    predicted = sc.unlevel(base[:, None] + np.cumsum(dz, axis=1))
    naive = np.repeat(np.array([values[o - 1] for o in origins])[:, None], Hz, axis=1)
    actual = np.stack([values[o:o + Hz] for o in origins])
    return origins, predicted, naive, actual


class ForecastReport:
    """What ``train_forecaster`` measured on the held-out tail.

    Attributes
    ----------
    rmse, mae : float
        Errors of the model's rolling-origin forecasts, in the series' units.
    naive_rmse, naive_mae : float
        The same for the naive last-value forecast.
    origins, predicted, naive, actual
        As returned by ``holdout_forecasts``.
    history : History
    """

    def __init__(self, origins, predicted, naive, actual, history):
        self.origins, self.predicted, self.naive, self.actual = origins, predicted, naive, actual
        self.history = history
        self.rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
        self.mae = float(np.mean(np.abs(predicted - actual)))
        self.naive_rmse = float(np.sqrt(np.mean((naive - actual) ** 2)))
        self.naive_mae = float(np.mean(np.abs(naive - actual)))

    @property
    def beats_naive(self) -> bool:
        return self.rmse < self.naive_rmse


def train_forecaster(series: Series, *, window: int = 12, horizon: int = 1, hidden: int = 32,
                     layers: int = 1, epochs: int = 150, lr: float = 1e-2, batch_size: int = 16,
                     test_size: int = 24, seed: Optional[int] = 0, progress: bool = True):
    """Train an ``LSTMModel`` to forecast ``series`` and score it on the held-out tail.

    Parameters
    ----------
    series : Series
    window : int, default 12
        Past differences the model reads.
    horizon : int, default 1
        Values forecast at once (direct multi-step forecasting).
    hidden, layers : int
        LSTM size.
    epochs, lr, batch_size : training settings (Adam, cosine schedule, clipping at 1).
    test_size : int, default 24
        Held-out values at the end, never seen in training.
    seed : int, optional
        Seeds the weights and the shuffling.
    progress : bool
        Show the progress bar.

    Returns
    -------
    model : LSTMModel
        With ``metadata`` holding window, horizon and scaling (saved with checkpoints).
    report : ForecastReport

    Raises
    ------
    ValueError
        If the series is too short for the window, horizon and test size.

    Examples
    --------
    >>> from eigenlstm.forecast import read_series, default_data_path, train_forecaster, forecast
    >>> series = read_series(default_data_path())
    >>> model, report = train_forecaster(series, epochs=40, progress=False)
    >>> report.rmse < report.naive_rmse
    True
    >>> forecast(model, series.values, steps=12).shape
    (12,)
    """
    v = series.values
    n = v.shape[0]
    n_train = n - test_size
    first = window + 1                       # first origin with a full input window
    train_origins = range(first, n_train - horizon + 1)
    if test_size < horizon or len(train_origins) < 2:
        raise ValueError(
            f"train_forecaster: {series.source} has {n} values; with window={window}, "
            f"horizon={horizon} and test_size={test_size} it needs test_size >= horizon and at "
            f"least {window + horizon + test_size + 2} values"
        )
    sc = Scaling.fit(v[:n_train])
    z = sc.transform(v)
    x, y = make_windows(z, window, horizon, train_origins)
    model = LSTMModel(1, hidden, horizon, num_layers=layers, seed=seed)
    model.metadata = {
        "task": "forecast", "window": window, "horizon": horizon, "test_size": test_size,
        "scaling": sc.to_dict(), "column": series.column, "source": os.path.basename(series.source),
    }
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam",
                        lr_schedule="cosine", clip_grad_norm=1.0, seed=seed, progress=progress)
    report = ForecastReport(*holdout_forecasts(model, v, test_size), history)
    return model, report


def plot_report(series: Series, report: ForecastReport, path: str, title: str = "") -> None:
    """Save a PNG: forecast vs actual on the held-out tail (top) and the loss curve (bottom).

    The forecast line joins the rolling forecasts made every ``horizon`` steps from the start
    of the tail (each from the actual values before it), i.e. the forecasts that were scored.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = series.values
    n = v.shape[0]
    Hz = report.predicted.shape[1]
    fig, (ax, ax_loss) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [2, 1]})
    t = np.arange(n)
    ax.plot(t, v, color="black", lw=1.2, label="actual")
    start = report.origins[0]
    ax.axvline(start - 0.5, color="grey", ls=":", lw=1)
    blocks = range(0, len(report.origins), Hz)
    ts = np.concatenate([np.arange(report.origins[b], report.origins[b] + Hz) for b in blocks])
    fc = np.concatenate([report.predicted[b] for b in blocks])
    nv = np.concatenate([report.naive[b] for b in blocks])
    ax.plot(ts, fc, color="tab:red", lw=1.8, marker="o", ms=3,
            label=f"LSTM forecast (RMSE {report.rmse:.1f})")
    ax.plot(ts, nv, color="tab:blue", lw=1.2, ls="--",
            label=f"naive last value (RMSE {report.naive_rmse:.1f})")
    if series.labels:
        january = [i for i, lab in enumerate(series.labels) if lab.endswith("-01")]
        ticks = january[::max(1, len(january) // 8)] if len(january) >= 3 else \
            np.linspace(0, n - 1, 8).astype(int)
        ax.set_xticks(ticks)
        ax.set_xticklabels([series.labels[i] for i in ticks])
    ax.set_ylabel(series.column)
    ax.set_title(title or f"{series.column}: {Hz}-step forecasts of the last {n - start} values "
                 "(held out)")
    ax.legend(loc="upper left")
    loss = report.history.history.get("loss", [])
    ax_loss.plot(np.arange(1, len(loss) + 1), loss, color="tab:green")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (MSE, scaled)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
