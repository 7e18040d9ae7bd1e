"""The ``eigenlstm`` command line: ``eigenlstm train`` and ``eigenlstm predict``.

Argument parsing, messages and files only: reading the series is eigenlstm.data's, the
forecasting itself (scaling, training, scoring, plotting) eigenlstm.forecast's. Also reached as
``python -m eigenlstm``. Every check runs before anything is printed, and every error names
the command (``eigenlstm train:``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import warnings
from typing import Literal

import numpy as np
import numpy.typing as npt

from .. import data
from .. import forecast as fc
from .._core import get_num_threads, set_num_threads
from ..io import load, save
from ..runtime import config
from ..training.distributed import connect

__all__ = ["main", "build_parser"]


def _columns(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    return names


class _VersionAction(argparse.Action):
    """``--version``: the version and the engine's level, read only when asked for (loading the
    engine's back end is then the point, not a cost of every command)."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            cfg = config()
        except ValueError as exc:  # a bad EIGENLSTM_MAX_ISA
            parser.exit(2, f"eigenlstm: error: {exc}\n")
        print(
            f"eigenlstm {cfg['version']} (isa {cfg['isa']}; available "
            f"{', '.join(cfg['isa_available'])}; {cfg['compiler']}, Eigen {cfg['eigen']})"
        )
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``eigenlstm`` command (subcommands ``train``, ``predict``)."""
    parser = argparse.ArgumentParser(
        prog="eigenlstm",
        description="Train and use LSTM forecasters on the eigenlstm C++ engine.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="show the version and the instruction-set level in use, then exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,predict}")
    sub.required = True
    names = ", ".join(sorted(data.DATASETS))

    tr = sub.add_parser(
        "train",
        help="train a forecaster on a CSV column (default: the bundled airline data)",
        description="Train an LSTM forecaster: training windows, then a validation tail that "
        "stops training early and keeps the best weights, then a test tail scored "
        "against naive and seasonal-naive forecasts. Writes a checkpoint, "
        "metrics.json and a PNG to --out.",
    )
    src = tr.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        metavar="CSV",
        help="CSV file with a header row (default: the "
        "bundled monthly airline passengers, 1949-1960)",
    )
    src.add_argument(
        "--dataset",
        metavar="NAME",
        help=f"a bundled series: {names}; '--dataset list' describes them",
    )
    tr.add_argument(
        "--column",
        "--target",
        dest="column",
        metavar="NAME",
        help="column to forecast (default: the only numeric column)",
    )
    tr.add_argument(
        "--columns",
        type=_columns,
        metavar="A,B,C",
        help="more input columns the model reads besides the target's own past",
    )
    tr.add_argument(
        "--delimiter", metavar="CHAR", help="field delimiter (default: detected among , ; tab |)"
    )
    tr.add_argument(
        "--window",
        type=int,
        help="past steps the model reads (default 12, or the season if longer: 52 for weekly data)",
    )
    tr.add_argument("--horizon", type=int, default=1, help="steps forecast at once (default 1)")
    tr.add_argument(
        "--test-size",
        type=int,
        default=24,
        help="values held out at the end and scored (default 24)",
    )
    tr.add_argument(
        "--val-size",
        type=int,
        help="values before the test tail that choose "
        "when to stop (default: a fifth of the series, at least --test-size; 0: no "
        "validation, train all --epochs)",
    )
    tr.add_argument(
        "--patience",
        type=int,
        default=20,
        help="epochs without a better validation loss before stopping (default 20)",
    )
    tr.add_argument(
        "--season",
        type=int,
        help="steps in a season for the seasonal-naive "
        "baseline (default from the dates: daily 7, weekly 52, monthly 12, "
        "quarterly 4, otherwise 1)",
    )
    tr.add_argument("--hidden", type=int, default=32, help="LSTM hidden size (default 32)")
    tr.add_argument("--layers", type=int, default=1, help="LSTM layers (default 1)")
    tr.add_argument(
        "--epochs",
        type=int,
        default=300,
        help="most training epochs; early stopping usually ends sooner (default 300)",
    )
    tr.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    tr.add_argument("--batch-size", type=int, default=16, help="windows per batch (default 16)")
    tr.add_argument("--out", help="output folder (default: runs/<data set or CSV name>)")
    tr.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tr.add_argument(
        "--threads",
        type=int,
        default=0,
        help="engine threads (default 0: the engine's default, all usable cores)",
    )
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tr.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    tr.add_argument(
        "--distributed",
        choices=["mpi"],
        help="train data-parallel over the ranks of `mpiexec -n P eigenlstm train` (needs "
        "eigenlstm[mpi]); rank 0 prints and writes the files. The default when the command "
        "is one of several ranks that mpiexec started",
    )

    pr = sub.add_parser(
        "predict",
        help="forecast the values after the end of a series from a checkpoint",
        description="Load a checkpoint written by `eigenlstm train` and forecast the values "
        "that follow the series in --data. Prints CSV with the header "
        "`step,forecast`: step is the date of each forecast value, or t+1, t+2, ... "
        "when the data has no dates.",
    )
    psrc = pr.add_mutually_exclusive_group()
    pr.add_argument("--model", required=True, metavar="CKPT", help="checkpoint (.npz) from train")
    psrc.add_argument(
        "--data",
        metavar="CSV",
        help="the observed series (required unless the model was trained on a bundled data set)",
    )
    psrc.add_argument("--dataset", metavar="NAME", help=f"a bundled series: {names}")
    pr.add_argument(
        "--column",
        "--target",
        dest="column",
        metavar="NAME",
        help="column to read (default: the one the model was trained on)",
    )
    pr.add_argument(
        "--delimiter", metavar="CHAR", help="field delimiter (default: detected among , ; tab |)"
    )
    pr.add_argument("--steps", type=int, help="values to forecast (default: the model's horizon)")
    pr.add_argument("--output", metavar="CSV", help="also write the forecast to this CSV file")
    return parser


def _positive(parser, name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        parser.error(f"--{name} must be >= {minimum}, got {value}")


def _format_dates(dates, like: str) -> list[str]:
    """ISO dates written the way ``like`` (a label from the file) is: YYYY-MM, YYYY, slashes."""
    unit: Literal["Y", "M", "D"] = "Y" if len(like) == 4 else "M" if len(like) <= 7 else "D"
    days: npt.NDArray[np.datetime64] = np.asarray(dates, dtype="datetime64[D]")
    text = np.datetime_as_string(days, unit=unit)
    return [str(d).replace("-", "/") if "/" in like else str(d) for d in text]


def _list_datasets() -> int:
    print("bundled data sets (eigenlstm train --dataset NAME):")
    for name in sorted(data.DATASETS):
        spec = data.DATASETS[name]
        cols = f" --columns {','.join(spec['columns'])}" if spec["columns"] else ""
        print(f"  {name:10s} {spec['about']}; target {spec['target']}{cols}")
    return 0


def _read(args, columns=None, column=None):
    """The series named by --data or --dataset (default: the airline data set)."""
    if args.data is None:
        name = args.dataset or "airline"
        if name not in data.DATASETS:
            raise ValueError(
                f"--dataset must be one of {sorted(data.DATASETS)} (or list), got {name!r}"
            )
        spec = data.DATASETS[name]
        series = data.read_series(
            data.dataset_path(name),
            column or spec["target"],
            columns=spec["columns"] if columns is None else columns,
            delimiter=args.delimiter,
        )
        series.dataset = name
        return series
    return data.read_series(args.data, column, columns=columns, delimiter=args.delimiter)


def _train(args, parser) -> int:
    if args.dataset == "list":
        return _list_datasets()
    for name in (
        "horizon",
        "hidden",
        "layers",
        "batch_size",
        "test_size",
        "epochs",
        "window",
        "season",
    ):
        _positive(parser, name.replace("_", "-"), getattr(args, name))
    for name in ("threads", "val_size", "patience"):
        _positive(parser, name.replace("_", "-"), getattr(args, name), minimum=0)
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    # Before any training: the plot and the progress bar need the eigenlstm[cli] extra.
    missing = [
        m
        for m, wanted in (("matplotlib", not args.no_plot), ("tqdm", not args.no_progress))
        if wanted and importlib.util.find_spec(m) is None
    ]
    if missing:
        flags = " and ".join(
            {"matplotlib": "--no-plot", "tqdm": "--no-progress"}[m] for m in missing
        )
        parser.error(
            f"{' and '.join(missing)} not installed: pip install 'eigenlstm[cli]', or pass {flags}"
        )
    if args.threads:
        before = get_num_threads()
        set_num_threads(args.threads)
        try:
            return _train_with(args)
        finally:
            set_num_threads(before)  # main() may run in-process: leave the engine as found
    return _train_with(args)


def _hint(report, args, window: int) -> str:
    """The one change most likely to help a model that lost to a baseline."""
    season = report.season
    better = "seasonal-naive" if report.snaive_rmse < report.naive_rmse else "naive"
    if report.best_epoch is not None and report.best_epoch == report.epochs_run == args.epochs:
        return (
            f"the validation loss was still falling at the last epoch: try more --epochs "
            f"(now {args.epochs})"
        )
    if better == "seasonal-naive" and window < season:
        return (
            f"the seasonal-naive forecast wins and the window ({window}) is shorter than "
            f"the season ({season}): try --window {season}"
        )
    if report.best_epoch is not None and report.best_epoch <= 5:
        return (
            f"the validation loss was lowest at epoch {report.best_epoch}: the model fits "
            "noise almost at once; try a smaller --hidden or --lr, or a longer series"
        )
    if report.best_epoch is None:
        return "there was no validation tail to stop early: try --val-size with --patience"
    return (
        "the best epoch was chosen on the validation tail and still lost: try a smaller "
        "--hidden, another --window, or a longer series"
    )


def _series_and_sizes(args):
    """The series, season, window and validation size of a train command, all checked."""
    series = _read(args, columns=args.columns, column=args.column)
    season = series.season if args.season is None else args.season
    window = fc.default_window(season) if args.window is None else args.window
    val_size = (
        fc.default_val_size(len(series), args.test_size) if args.val_size is None else args.val_size
    )
    fc.check_sizes(
        len(series),
        window=window,
        horizon=args.horizon,
        test_size=args.test_size,
        val_size=val_size,
        season=season,
        where="",
        source=series.source,
        names={
            "window": "--window",
            "horizon": "--horizon",
            "test_size": "--test-size",
            "val_size": "--val-size",
        },
    )
    return series, season, window, val_size


def _train_with(args) -> int:
    group = args.group
    if group is None:
        series, season, window, val_size = _series_and_sizes(args)
    else:  # every rank reads the data; one that cannot stops them all, reported once
        error = None
        try:
            series, season, window, val_size = _series_and_sizes(args)
        except (ValueError, OSError) as exc:
            error = exc
        group.agree(error)
    n, nt = len(series), args.test_size
    stem = series.dataset or os.path.splitext(os.path.basename(series.source))[0]
    out = args.out or os.path.join("runs", stem)
    freq = f"{data.FREQUENCIES[series.frequency][0]} " if series.frequency else ""
    inputs = f" with inputs {series.columns[1:]}" if len(series.columns) > 1 else ""
    print(f"eigenlstm train: {n} {freq}values of {series.column!r}{inputs} from {series.about()}")
    nv = n - nt - val_size
    print(
        f"  training on the first {nv}, validating on the next {val_size}, testing on the "
        f"last {nt}; window {window}, horizon {args.horizon}, LSTM {args.layers}x{args.hidden}, "
        f"at most {args.epochs} epochs" + (f", patience {args.patience}" if val_size else "")
    )
    if group is not None:
        print(f"  data-parallel over {group.size} MPI ranks, each on a shard of every batch")
    with warnings.catch_warnings():
        # A diverging run is reported below, once, with what it means for the checkpoint.
        warnings.filterwarnings("ignore", message="Trainer.fit:", category=RuntimeWarning)
        model, report = fc.train_forecaster(
            series,
            window=window,
            horizon=args.horizon,
            hidden=args.hidden,
            layers=args.layers,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            test_size=nt,
            val_size=val_size,
            patience=args.patience,
            season=season,
            seed=args.seed,
            progress=not args.no_progress,
            distributed=args.distributed,
        )
    stop = report.history.stop_reason
    if stop and "early stopping" not in stop:
        print(f"eigenlstm train: {stop}", file=sys.stderr)
        print("eigenlstm train: no checkpoint written (any previous one is kept)", file=sys.stderr)
        return 1
    if group is not None and group.rank != 0:
        return 0  # rank 0 scores, prints and writes: the weights are the same on every rank
    if report.best_epoch is not None:
        print(
            f"  kept the weights of epoch {report.best_epoch} (lowest validation loss; "
            f"{report.epochs_run} epochs run)"
        )
    span = f"{len(report.origins)} origins"
    print(f"\nheld-out error on the last {nt} values ({args.horizon}-step forecasts from {span}):")
    print(f"  {'':34s}{'RMSE':>10s}{'MAE':>10s}")
    print(f"  {'LSTM':34s}{report.rmse:10.4g}{report.mae:10.4g}")
    print(f"  {'naive (last value)':34s}{report.naive_rmse:10.4g}{report.naive_mae:10.4g}")
    if season > 1:
        label = f"seasonal naive ({season} steps back)"
        print(f"  {label:34s}{report.snaive_rmse:10.4g}{report.snaive_mae:10.4g}")
    best = min(report.naive_rmse, report.snaive_rmse)
    if report.rmse < best:
        gain = 100 * (1 - report.rmse / best)
        print(f"  the LSTM beats both baselines: RMSE {gain:.0f}% lower than the better one")
    else:
        lost = "the naive" if report.naive_rmse <= report.snaive_rmse else "the seasonal-naive"
        print(
            f"eigenlstm train: the LSTM does NOT beat {lost} forecast: "
            f"{_hint(report, args, window)}",
            file=sys.stderr,
        )
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "model.npz")
    model.metadata["holdout"] = report.to_dict()
    save(model, ckpt)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(
            dict(
                report.to_dict(),
                loss=report.history.history["loss"],
                val_loss=report.history.history.get("val_loss", []),
            ),
            f,
            indent=1,
        )
    wrote = [ckpt, os.path.join(out, "metrics.json")]
    if not args.no_plot:
        png = os.path.join(out, "forecast.png")
        overlaps = fc.plot_report(series, report, png)
        if overlaps:
            print(
                f"eigenlstm train: warning: tick labels overlap in {png}: {overlaps}",
                file=sys.stderr,
            )
        wrote.append(png)
    print("wrote " + ", ".join(wrote))
    where = f" --data {args.data}" if args.data else ""
    print(f"forecast with: eigenlstm predict --model {ckpt}{where}")
    return 0


def _predict(args, parser) -> int:
    _positive(parser, "steps", args.steps)
    model = load(args.model)
    meta = model.metadata
    if meta.get("task") != "forecast":
        raise ValueError(
            f"{args.model} holds an LSTMModel without forecasting metadata; `eigenlstm predict` "
            "needs a checkpoint written by `eigenlstm train`"
        )
    columns = list(meta.get("columns") or [meta["column"]])
    if args.data is None and args.dataset is None:
        if not meta.get("dataset"):
            raise ValueError(
                f"--data is required: {args.model} was trained on {meta.get('source')!r}, not "
                "on a bundled data set; give the series to forecast from"
            )
        args.dataset = meta["dataset"]
    column = args.column or meta["column"]
    series = _read(args, columns=columns[1:], column=column)
    trained = meta.get("frequency")
    if trained and series.frequency != trained:
        name = data.FREQUENCIES[trained][0]
        got = (
            f"{data.FREQUENCIES[series.frequency][0]} dates"
            if series.frequency
            else "no dates to check that against"
        )
        raise ValueError(
            f"{series.source}: the model was trained on {name} data; this file has {got}"
        )
    steps = args.steps or int(meta["horizon"])
    values = fc.forecast(model, series.inputs, steps)
    horizon = int(meta["horizon"])
    if steps > horizon:
        print(
            f"eigenlstm predict: warning: the model was validated on {horizon}-step forecasts; "
            f"the {steps - horizon} values after step {horizon} are forecasts fed back as "
            "inputs, with errors that grow unchecked",
            file=sys.stderr,
        )
    if series.dates is not None:
        labels = _format_dates(
            data.next_dates(series.dates, series.frequency, steps), series.labels[-1]
        )
    else:
        labels = [f"t+{k}" for k in range(1, steps + 1)]
    lines = ["step,forecast"] + [f"{lab},{v:.6g}" for lab, v in zip(labels, values)]
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


def _launched_ranks() -> int:
    """How many ranks the MPI launcher that started this process started (MPICH's and Open
    MPI's variables); 1 when none did."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        with contextlib.suppress(KeyError, ValueError):
            return int(os.environ[name])
    return 1


def main(argv: list[str] | None = None) -> int:
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
    argv = sys.argv[1:] if argv is None else list(argv)
    group = None
    asked = any(a == "--distributed" or a.startswith("--distributed=") for a in argv)
    if asked or _launched_ranks() > 1:
        # Before parsing, so that only rank 0 prints what parsing says (every rank gets the
        # same arguments, so every rank says the same).
        try:
            group = connect("eigenlstm train", "mpi")
        except ModuleNotFoundError as exc:
            print(f"eigenlstm: error: {exc}", file=sys.stderr)
            return 2
    with contextlib.ExitStack() as stack:
        if group is not None and group.rank != 0:  # the other ranks work silently
            sink = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(contextlib.redirect_stderr(sink))
        parser = build_parser()
        args = parser.parse_args(argv)
        args.group = group
        if group is not None and args.command == "train":
            args.distributed = "mpi"  # under mpiexec, the ranks share the work
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
