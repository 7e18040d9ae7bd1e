"""The ``eigenlstm`` command line: ``eigenlstm train`` and ``eigenlstm predict``.

Argument parsing, messages and files only; the forecasting itself (data, scaling, training,
scoring, plotting) is in forecast.py. Also reached as ``python -m eigenlstm``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from typing import List, Optional

__all__ = ["main", "build_parser"]

_EMBEDDED = "embedded airline passengers 1949-1960 (Box & Jenkins series G)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``eigenlstm`` command (subcommands ``train``, ``predict``)."""
    parser = argparse.ArgumentParser(
        prog="eigenlstm",
        description="Train and use LSTM forecasters on the eigenlstm C++ engine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,predict}")
    sub.required = True

    tr = sub.add_parser(
        "train", help="train a forecaster on a CSV column (default: the embedded airline data)",
        description="Train an LSTM forecaster, score it on the held-out tail against a naive "
                    "last-value forecast, and write a checkpoint and a PNG to --out.",
    )
    tr.add_argument("--data", metavar="CSV", help="CSV file with a header row (default: the "
                    "embedded monthly airline passengers, 1949-1960)")
    tr.add_argument("--column", help="column to forecast (default: the last column)")
    tr.add_argument("--window", type=int, default=12, help="past steps the model reads (default 12)")
    tr.add_argument("--horizon", type=int, default=1,
                    help="steps forecast at once (default 1)")
    tr.add_argument("--test-size", type=int, default=24,
                    help="values held out at the end of the series (default 24)")
    tr.add_argument("--hidden", type=int, default=32, help="LSTM hidden size (default 32)")
    tr.add_argument("--layers", type=int, default=1, help="LSTM layers (default 1)")
    tr.add_argument("--epochs", type=int, default=150, help="training epochs (default 150)")
    tr.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    tr.add_argument("--batch-size", type=int, default=16, help="windows per batch (default 16)")
    tr.add_argument("--out", help="output folder (default: runs/airline, or runs/<CSV name>)")
    tr.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tr.add_argument("--threads", type=int, default=0,
                    help="engine threads (default 0: the engine's default, all usable cores)")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tr.add_argument("--no-plot", action="store_true", help="do not write the PNG")

    pr = sub.add_parser(
        "predict", help="forecast the values after the end of a series from a checkpoint",
        description="Load a checkpoint written by `eigenlstm train` and forecast the values "
                    "that follow the series in --data; prints CSV (label,forecast).",
    )
    pr.add_argument("--model", required=True, metavar="CKPT", help="checkpoint (.npz) from train")
    pr.add_argument("--data", metavar="CSV", help="the observed series (default: embedded data)")
    pr.add_argument("--column", help="column to read (default: the one the model was trained on)")
    pr.add_argument("--steps", type=int, help="values to forecast (default: the model's horizon)")
    pr.add_argument("--output", metavar="CSV", help="also write the forecast to this CSV file")
    return parser


def _positive(parser, name: str, value: int, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        parser.error(f"--{name} must be >= {minimum}, got {value}")


def _next_labels(labels: Optional[List[str]], steps: int) -> List[str]:
    """Labels for the forecast steps: the next months for YYYY-MM labels, else t+1, t+2, ..."""
    if labels:
        m = re.fullmatch(r"(\d{4})-(\d{1,2})", labels[-1])
        if m:
            y, mo = int(m.group(1)), int(m.group(2))
            out = []
            for _ in range(steps):
                y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
                out.append(f"{y}-{mo:02d}")
            return out
    return [f"t+{k}" for k in range(1, steps + 1)]


def _train(args, parser) -> int:
    from . import forecast as fc
    from ._core import get_num_threads, set_num_threads

    for name in ("window", "horizon", "hidden", "layers", "epochs", "batch_size", "test_size"):
        _positive(parser, name.replace("_", "-"), getattr(args, name))
    _positive(parser, "threads", args.threads, minimum=0)
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.threads:
        before = get_num_threads()
        set_num_threads(args.threads)
        try:
            return _train_with(args)
        finally:
            set_num_threads(before)  # main() may run in-process: leave the engine as found
    return _train_with(args)


def _train_with(args) -> int:
    from . import forecast as fc

    path = args.data or fc.default_data_path()
    series = fc.read_series(path, args.column)
    out = args.out or os.path.join(
        "runs", "airline" if args.data is None else os.path.splitext(os.path.basename(path))[0])
    n, nt = len(series), args.test_size
    source = _EMBEDDED if args.data is None else path
    print(f"eigenlstm train: {n} values of {series.column!r} from {source}")
    print(f"  training on the first {n - nt}, holding out the last {nt}; window {args.window}, "
          f"horizon {args.horizon}, LSTM {args.layers}x{args.hidden}, {args.epochs} epochs")
    with warnings.catch_warnings():
        # A diverging run is reported below, once, with what it means for the checkpoint.
        warnings.filterwarnings("ignore", message="LSTMModel.fit:", category=RuntimeWarning)
        model, report = fc.train_forecaster(
            series, window=args.window, horizon=args.horizon, hidden=args.hidden,
            layers=args.layers, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            test_size=nt, seed=args.seed, progress=not args.no_progress)
    stop = report.history.stop_reason
    if stop and "early stopping" not in stop:
        print(f"eigenlstm train: {stop}", file=sys.stderr)
        print("eigenlstm train: no checkpoint written (any previous one is kept)", file=sys.stderr)
        return 1
    span = f"{len(report.origins)} origins"
    print(f"\nheld-out error on the last {nt} values ({args.horizon}-step forecasts from {span}):")
    print(f"  {'':24s}{'RMSE':>10s}{'MAE':>10s}")
    print(f"  {'LSTM':24s}{report.rmse:10.2f}{report.mae:10.2f}")
    print(f"  {'naive (last value)':24s}{report.naive_rmse:10.2f}{report.naive_mae:10.2f}")
    if report.beats_naive:
        gain = 100 * (1 - report.rmse / report.naive_rmse)
        print(f"  the LSTM beats the naive forecast: RMSE {gain:.0f}% lower")
    else:
        print("  the LSTM does NOT beat the naive forecast: try more --epochs, another --window "
              "or --lr", file=sys.stderr)
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "model.npz")
    model.metadata["holdout"] = {"rmse": report.rmse, "mae": report.mae,
                                 "naive_rmse": report.naive_rmse, "naive_mae": report.naive_mae}
    model.save(ckpt)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(dict(model.metadata["holdout"], loss=report.history.history["loss"]), f, indent=1)
    wrote = [ckpt, os.path.join(out, "metrics.json")]
    if not args.no_plot:
        png = os.path.join(out, "forecast.png")
        fc.plot_report(series, report, png)
        wrote.append(png)
    print("wrote " + ", ".join(wrote))
    print(f"forecast with: eigenlstm predict --model {ckpt}"
          + (f" --data {args.data}" if args.data else ""))
    return 0


def _predict(args, parser) -> int:
    from . import forecast as fc
    from .checkpoint import load

    _positive(parser, "steps", args.steps)
    model = load(args.model)
    meta = model.metadata
    if meta.get("task") != "forecast":
        raise ValueError(
            f"{args.model} holds an LSTMModel without forecasting metadata; `eigenlstm predict` "
            "needs a checkpoint written by `eigenlstm train`"
        )
    path = args.data or fc.default_data_path()
    try:
        series = fc.read_series(path, args.column or meta.get("column"))
    except fc.CSVError:
        if args.column is not None:
            raise
        series = fc.read_series(path, None)  # the training column is not here: use the last
    values = fc.forecast(model, series.values, args.steps)
    labels = _next_labels(series.labels, len(values))
    lines = ["step,forecast"] + [f"{lab},{v:.6g}" for lab, v in zip(labels, values)]
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``eigenlstm`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (``sys.argv[1:]`` when None).

    Returns
    -------
    int
        0 on success, 1 if training diverged, 2 on bad arguments or unreadable data.

    Examples
    --------
    >>> from eigenlstm.cli import main
    >>> main(["train", "--out", "runs/airline", "--no-progress"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args, parser)
        return _predict(args, parser)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"eigenlstm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eigenlstm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
