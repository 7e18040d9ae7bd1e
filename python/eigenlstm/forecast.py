"""Time-series forecasting with ``LSTMModel``: the job behind ``eigenlstm train`` and ``predict``.

Trains on sliding windows of a series made stationary (log, first differences,
standardisation) with a validation tail and early stopping, scores the held-out test tail
against naive and seasonal-naive forecasts, and plots it with calendar-aware date axes. The
series, CSV reading, dates and windows are ``eigenlstm.data``'s; the command line is cli/'s;
the model is ``nn.LSTMModel``, trained by ``Trainer``.
"""
# Sizes: n series length, I input columns (the target first), W window (input steps),
# Hz horizon (steps forecast at once), N windows, n_val / n_test validation / test values.

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .data import FREQUENCIES, Scaling, Series, as_series, make_windows
from .nn import LSTMModel
from .training import Callback, EarlyStopping, History, Trainer

__all__ = [
    "train_forecaster",
    "forecast",
    "holdout_forecasts",
    "seasonal_naive",
    "ForecastReport",
    "check_sizes",
    "default_window",
    "default_val_size",
    "plot_report",
    "tick_label_overlaps",
]

Float64Array = npt.NDArray[np.float64]


def seasonal_naive(
    values: npt.ArrayLike, origins: Sequence[int], horizon: int, season: int
) -> Float64Array:
    """Forecasts of ``v[o:o+horizon]`` that repeat the value one season earlier.

    ``v[o+h]`` is forecast by ``v[o+h-season*k]`` with the smallest ``k >= 1`` that lands
    before ``o``; with ``season = 1`` this is the naive forecast ``v[o-1]``.

    Returns
    -------
    ndarray of shape (len(origins), horizon)
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.empty((len(origins), horizon))
    for i, o in enumerate(origins):
        for h in range(horizon):
            out[i, h] = v[o + h - season * (h // season + 1)]
    return out


def forecast(model: LSTMModel, history: Any, steps: int | None = None) -> Float64Array:
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
        raise ValueError(
            f"forecast: history must have {len(columns)} column(s) {columns}, got shape {v.shape}"
        )
    if v.shape[0] < W + 1:
        raise ValueError(
            f"forecast: history must hold at least window + 1 = {W + 1} values, got {v.shape[0]}"
        )
    if len(columns) > 1 and steps > Hz:
        raise ValueError(
            f"forecast: steps must be <= the horizon {Hz} for a model that reads input columns "
            f"{columns[1:]}: forecasting further would need their future values"
        )
    sc = Scaling.from_dict(meta["scaling"])
    last = v[-(W + 1) :]
    if np.any(sc.log & np.any(last <= 0, axis=0)):
        raise ValueError("forecast: this model works on log values; the history must be > 0")
    levels = sc.level(last)  # (W + 1, I)
    out: list[float] = []
    while len(out) < steps:
        z = (np.diff(levels[-(W + 1) :], axis=0) - sc.mean) / sc.std
        dz = model.predict(z[None]).astype(np.float64)[0] * sc.std[0] + sc.mean[0]
        for d in dz[: steps - len(out)]:
            # Only a target-only model gets here past the horizon: its one column is the target.
            levels = np.vstack([levels, levels[-1:] + d])
            out.append(float(levels[-1, 0]))
    return sc.unlevel(np.array(out))


def holdout_forecasts(
    model: LSTMModel, inputs: npt.ArrayLike, start: int, stop: int, season: int = 1
) -> tuple[list[int], Float64Array, Float64Array, Float64Array, Float64Array]:
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
    table = np.asarray(inputs, dtype=np.float64)
    table = table.reshape(table.shape[0], -1)
    values = table[:, 0]
    origins = list(range(start, stop - Hz + 1))
    sc = Scaling.from_dict(meta["scaling"])
    x, _ = make_windows(sc.transform(table), W, Hz, origins)
    dz = model.predict(x).astype(np.float64) * sc.std[0] + sc.mean[0]
    levels = sc.level(values, 0)
    base = np.array([levels[o - 1] for o in origins])
    predicted = sc.unlevel(base[:, None] + np.cumsum(dz, axis=1))
    naive = seasonal_naive(values, origins, Hz, 1)
    snaive = seasonal_naive(values, origins, Hz, season)
    actual = np.stack([values[o : o + Hz] for o in origins])
    return origins, predicted, naive, snaive, actual


def _rmse(a: Float64Array, b: Float64Array) -> float:
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

    def __init__(
        self,
        origins: list[int],
        predicted: Float64Array,
        naive: Float64Array,
        snaive: Float64Array,
        actual: Float64Array,
        history: History,
        season: int,
        best_epoch: int | None = None,
    ) -> None:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "rmse": self.rmse,
            "mae": self.mae,
            "naive_rmse": self.naive_rmse,
            "naive_mae": self.naive_mae,
            "seasonal_naive_rmse": self.snaive_rmse,
            "seasonal_naive_mae": self.snaive_mae,
            "season": self.season,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
        }


def check_sizes(
    n: int,
    *,
    window: int,
    horizon: int,
    test_size: int,
    val_size: int,
    season: int = 1,
    where: str = "train_forecaster",
    source: str = "the series",
    names: dict[str, str] | None = None,
) -> None:
    """Raise ValueError unless a series of ``n`` values fits the window and the tails.

    Training needs at least 2 windows before the validation tail; the tails must each hold
    a whole horizon; the seasonal-naive forecast needs one season before the test tail.
    ``names`` maps argument names to how the caller spells them (``--test-size``).
    """
    pre = f"{where}: " if where else ""  # the CLI adds its own "eigenlstm train: error:"
    nm = {k: k for k in ("window", "horizon", "test_size", "val_size")}
    nm.update(names or {})
    if test_size < horizon:
        raise ValueError(
            f"{pre}{nm['test_size']} must be >= {nm['horizon']} = {horizon}, got {test_size}"
        )
    if val_size and val_size < horizon:
        raise ValueError(
            f"{pre}{nm['val_size']} must be 0 or >= {nm['horizon']} = {horizon}, got {val_size}"
        )
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


def train_forecaster(
    series: Any,
    *,
    window: int | None = None,
    horizon: int = 1,
    hidden: int = 32,
    layers: int = 1,
    epochs: int = 300,
    lr: float = 1e-2,
    batch_size: int = 16,
    test_size: int = 24,
    val_size: int | None = None,
    patience: int = 20,
    season: int | None = None,
    seed: int | None = 0,
    progress: bool = True,
    column: str | None = None,
    columns: Sequence[str] | None = None,
    distributed: str | None = None,
) -> tuple[LSTMModel, ForecastReport]:
    """Train an ``LSTMModel`` to forecast ``series`` and score it on the held-out test tail.

    The series is split in time: training windows, then a validation tail of ``val_size``
    values that picks the epoch to keep (early stopping with the best weights restored), then
    a test tail of ``test_size`` values, never seen before scoring.

    Parameters
    ----------
    series : eigenlstm.data.Series, pandas Series or DataFrame, or array_like of shape (n,)
        ``eigenlstm.data.read_series`` reads one from a CSV file, ``load_dataset`` a bundled
        one.
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
    distributed : {None, "mpi"}, optional
        Train data-parallel over the ranks of an ``mpiexec`` job (``Trainer.fit``).

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
    >>> from eigenlstm.data import load_dataset
    >>> from eigenlstm.forecast import train_forecaster, forecast
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
    check_sizes(
        n,
        window=window,
        horizon=horizon,
        test_size=test_size,
        val_size=val_size,
        season=season,
        where=where,
        source=series.source,
    )
    if patience < 0:
        raise ValueError(f"{where}: patience must be >= 0, got {patience}")
    v = series.inputs
    n_test0 = n - test_size  # first value of the test tail
    n_val0 = n_test0 - val_size  # first value of the validation tail
    train_origins = range(window + 1, n_val0 - horizon + 1)
    val_origins = range(n_val0, n_test0 - horizon + 1)
    sc = Scaling.fit(v[:n_val0])
    z = sc.transform(v)
    x, y = make_windows(z, window, horizon, train_origins)
    model = LSTMModel(v.shape[1], hidden, horizon, num_layers=layers, seed=seed)
    model.metadata = {
        "task": "forecast",
        "window": window,
        "horizon": horizon,
        "test_size": test_size,
        "val_size": val_size,
        "scaling": sc.to_dict(),
        "column": series.column,
        "columns": series.columns,
        "frequency": series.frequency,
        "season": season,
        "source": os.path.basename(series.source),
        "dataset": series.dataset,
        "last_date": None if series.dates is None else str(series.dates[-1]),
    }
    callbacks: list[Callback] = []
    validation = None
    stop = None
    if val_size:
        validation = make_windows(z, window, horizon, val_origins)
        stop = EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        callbacks.append(stop)
    history = Trainer(model).fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer="adam",
        lr_schedule=None if val_size else "cosine",
        clip_grad_norm=1.0,
        seed=seed,
        progress=progress,
        validation_data=validation,
        callbacks=callbacks,
        distributed=distributed,
    )
    best = None if stop is None or stop.best_epoch is None else stop.best_epoch + 1
    report = ForecastReport(*holdout_forecasts(model, v, n_test0, n, season), history, season, best)
    return model, report


def tick_label_overlaps(fig: Any) -> list[tuple[str, str]]:
    """Pairs of neighbouring x tick labels whose rendered boxes overlap (empty: all legible).

    ``fig`` is a matplotlib Figure; it is drawn to measure the labels as rendered, on every
    axes, visible non-empty labels only. ``plot_report`` returns this for its figure.
    """
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


def plot_report(
    series: Series, report: ForecastReport, path: str, title: str = ""
) -> list[tuple[str, str]]:
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
    fig, (ax, ax_loss) = plt.subplots(
        2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [2, 1]}
    )
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
    ax.plot(
        t[idx],
        fc,
        color="tab:red",
        lw=1.8,
        marker="o",
        ms=3,
        label=f"LSTM forecast (RMSE {report.rmse:.4g})",
    )
    ax.plot(
        t[idx],
        nv,
        color="tab:blue",
        lw=1.2,
        ls="--",
        label=f"naive last value (RMSE {report.naive_rmse:.4g})",
    )
    if report.season > 1:
        ax.plot(
            t[idx],
            sn,
            color="tab:purple",
            lw=1.2,
            ls=":",
            label=f"seasonal naive, {report.season} steps back (RMSE {report.snaive_rmse:.4g})",
        )
    ax.set_ylabel(series.column)
    freq = f"{FREQUENCIES[series.frequency][0]} " if series.frequency else ""
    ax.set_title(
        title
        or f"{series.column}: {Hz}-step forecasts of the last {n - start} {freq}values (held out)"
    )
    ax.legend(loc="upper left", fontsize=9)
    hist = report.history.history
    loss = hist.get("loss", [])
    ax_loss.plot(np.arange(1, len(loss) + 1), loss, color="tab:green", label="training")
    if hist.get("val_loss"):
        ax_loss.plot(
            np.arange(1, len(hist["val_loss"]) + 1),
            hist["val_loss"],
            color="tab:orange",
            label="validation",
        )
    if report.best_epoch:
        ax_loss.axvline(report.best_epoch, color="grey", ls=":", lw=1)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (MSE, scaled)")
    ax_loss.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    overlaps = tick_label_overlaps(fig)
    plt.close(fig)
    return overlaps
