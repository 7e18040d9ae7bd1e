"""Tests of the ``eigenlstm`` command line: train and predict end to end, and its error messages.

``python -m eigenlstm train`` runs in a subprocess on the embedded airline data (in a tmp dir);
the error branches run ``eigenlstm.cli.main`` in-process.
"""

import importlib.metadata
import importlib.resources
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import eigenlstm as el
from eigenlstm.cli import main
from eigenlstm.data import CSVError, read_series

AIRLINE = str(importlib.resources.files("eigenlstm").joinpath("data", "airline_passengers.csv"))


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "eigenlstm", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One `python -m eigenlstm train` on the embedded data: (completed process, out dir)."""
    tmp = tmp_path_factory.mktemp("cli")
    proc = run("train", "--out", "out", cwd=tmp)  # the defaults, as in the README
    return proc, tmp / "out"


def held_out_errors(stdout):
    """{'LSTM': (rmse, mae), 'naive': (rmse, mae)} parsed from the train report."""
    rows = re.findall(
        r"^\s+(LSTM|naive|seasonal naive) .*?([\d.e+]+)\s+([\d.e+]+)\s*$", stdout, flags=re.M
    )
    return {name: (float(rmse), float(mae)) for name, rmse, mae in rows}


def test_the_airline_csv_ships_as_package_data_with_its_144_values():
    resource = importlib.resources.files("eigenlstm").joinpath("data", "airline_passengers.csv")
    text = resource.read_text()
    assert text.startswith("# Monthly international airline passengers")
    assert "Box" in text and "Jenkins" in text
    series = read_series(str(resource))
    assert len(series) == 144 and series.values.sum() == 40363
    assert (series.values[0], series.values[-1], series.values.max()) == (112, 432, 622)
    assert series.labels[0] == "1949-01" and series.labels[-1] == "1960-12"


def test_the_console_script_is_declared_and_answers_help():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("eigenlstm") == "eigenlstm.cli:main"
    exe = shutil.which("eigenlstm")
    assert exe is not None
    proc = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in (
        "--data",
        "--column",
        "--window",
        "--horizon",
        "--hidden",
        "--layers",
        "--epochs",
        "--lr",
        "--out",
        "--seed",
    ):
        assert option in proc.stdout


def test_train_on_the_embedded_data_beats_the_naive_last_value_forecast(trained_run):
    proc, _ = trained_run
    assert proc.returncode == 0, proc.stderr
    errors = held_out_errors(proc.stdout)
    assert set(errors) == {"LSTM", "naive", "seasonal naive"}
    for baseline in ("naive", "seasonal naive"):
        assert errors["LSTM"][0] < 0.6 * errors[baseline][0]  # RMSE
        assert errors["LSTM"][1] < 0.6 * errors[baseline][1]  # MAE
    assert "held-out error on the last 24 values" in proc.stdout
    assert "validating on the next 28, testing on the last 24" in proc.stdout
    assert "overlap" not in proc.stderr  # the PNG's date tick labels are legible


def test_train_shows_a_progress_bar_with_loss_and_sequences_per_second(trained_run):
    proc, _ = trained_run
    assert "seq/s" in proc.stderr and "loss=" in proc.stderr and "val_loss=" in proc.stderr
    assert re.search(r"epoch \d+/300", proc.stderr)


def test_train_writes_a_loadable_checkpoint_a_png_and_metrics(trained_run):
    proc, out = trained_run
    assert (out / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rmse"] < metrics["naive_rmse"]
    assert metrics["rmse"] < metrics["seasonal_naive_rmse"] and metrics["season"] == 12
    assert len(metrics["loss"]) == len(metrics["val_loss"]) == metrics["epochs_run"]
    assert metrics["val_loss"][metrics["best_epoch"] - 1] == min(metrics["val_loss"])
    assert metrics["epochs_run"] < 300  # early stopping ended it
    model = el.load(out / "model.npz")
    meta = model.metadata
    assert (meta["window"], meta["column"], meta["frequency"], meta["dataset"]) == (
        12,
        "Passengers",
        "M",
        "airline",
    )
    assert set(meta["scaling"]) == {"log", "mean", "std"}
    assert model.metadata["holdout"]["rmse"] == pytest.approx(metrics["rmse"])


def test_predict_from_the_checkpoint_forecasts_the_months_after_the_data(trained_run):
    _, out = trained_run
    proc = run("predict", "--model", str(out / "model.npz"), "--steps", "3", cwd=out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "step,forecast"
    assert [line.split(",")[0] for line in lines[1:]] == ["1961-01", "1961-02", "1961-03"]
    values = np.array([float(line.split(",")[1]) for line in lines[1:]])
    assert np.all((values > 300) & (values < 700))


def test_predict_on_another_csv_column_named_with_column_writes_the_forecast_file(
    trained_run, tmp_path, capsys
):
    _, out = trained_run
    csv = tmp_path / "short.csv"
    csv.write_text(
        "month,value\n"
        + "".join(
            f"{2000 + i // 12}-{i % 12 + 1:02d},{100 + 10 * np.sin(i / 2):.3f}\n" for i in range(30)
        )
    )
    assert (
        main(
            [
                "predict",
                "--model",
                str(out / "model.npz"),
                "--data",
                str(csv),
                "--column",
                "value",
                "--output",
                str(tmp_path / "f.csv"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[1].startswith("2002-07,")
    assert (tmp_path / "f.csv").read_text().startswith("step,forecast\n2002-07,")


def test_train_on_a_user_csv_column_runs_and_writes_to_out(tmp_path, capsys):
    csv = tmp_path / "waves.csv"
    t = np.arange(120)
    rows = "".join(f"{i},{50 + 0.2 * i + 10 * np.sin(2 * np.pi * i / 12):.4f},1\n" for i in t)
    csv.write_text("# a trend plus a 12-step season\nday,level,other\n" + rows)
    status = main(
        [
            "train",
            "--data",
            str(csv),
            "--column",
            "level",
            "--epochs",
            "30",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--no-plot",
        ]
    )
    assert status == 0
    assert "120 values of 'level'" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.npz").exists()


def test_a_diverging_run_exits_1_and_keeps_the_previous_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--out", out, "--epochs", "2", "--no-progress", "--no-plot"]) == 0
    before = (tmp_path / "run" / "model.npz").read_bytes()
    status = main(["train", "--out", out, "--epochs", "2", "--lr", "1e30", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1
    assert "training stopped" in err and "no checkpoint written (any previous one is kept)" in err
    assert (tmp_path / "run" / "model.npz").read_bytes() == before


def test_a_diverging_run_is_reported_once_not_also_as_a_python_warning(tmp_path, recwarn):
    status = main(
        [
            "train",
            "--out",
            str(tmp_path),
            "--epochs",
            "2",
            "--lr",
            "1e30",
            "--no-progress",
            "--no-plot",
        ]
    )
    assert status == 1
    assert [str(w.message) for w in recwarn if w.category is RuntimeWarning] == []


# ---- bad input ----------------------------------------------------------------------------
def error_of(argv, capsys):
    """Run the CLI on `argv`: it must exit with status 2 (an input error); returns its stderr."""
    status = main(argv)
    assert status == 2
    return capsys.readouterr().err


def test_train_with_a_missing_csv_names_the_file(tmp_path, capsys):
    err = error_of(["train", "--data", str(tmp_path / "nope.csv")], capsys)
    assert re.search(r"eigenlstm train: error: .*nope\.csv: cannot read the file", err)


def test_train_with_an_unparsable_value_names_the_file_line_and_column(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("# comment\nmonth,y\n1,10\n2,abc\n3,12\n")
    err = error_of(["train", "--data", str(csv), "--column", "y"], capsys)
    assert f"{csv}:4: column 'y' has 'abc', which is not a number" in err


def test_train_with_an_empty_value_says_so(tmp_path, capsys):
    csv = tmp_path / "hole.csv"
    csv.write_text("month,y\n1,10\n2,\n")
    err = error_of(["train", "--data", str(csv), "--column", "y"], capsys)
    assert f"{csv}:3: column 'y' has an empty value" in err


def test_train_with_a_missing_column_lists_the_columns(tmp_path, capsys):
    csv = tmp_path / "cols.csv"
    csv.write_text("month,y\n1,10\n")
    err = error_of(["train", "--data", str(csv), "--column", "sales"], capsys)
    assert f"{csv}:1: no column 'sales' (the target); the columns are ['month', 'y']" in err


def test_train_with_a_ragged_row_names_the_line(tmp_path, capsys):
    csv = tmp_path / "ragged.csv"
    csv.write_text("month,y\n1,10\n2,11,99\n")
    err = error_of(["train", "--data", str(csv), "--column", "y"], capsys)
    assert f"{csv}:3: expected 2 fields as in the header" in err


def test_train_with_a_binary_file_says_it_is_not_text(tmp_path, capsys):
    csv = tmp_path / "binary.csv"
    csv.write_bytes(b"\xff\xfe\x00\x81garbage")
    err = error_of(["train", "--data", str(csv)], capsys)
    assert f"{csv}:1: not a UTF-8 text file (invalid start byte: byte 0xff" in err


def test_train_on_a_series_too_short_for_the_window_explains_the_need(tmp_path, capsys):
    csv = tmp_path / "short.csv"
    csv.write_text("y\n" + "".join(f"{i + 1}\n" for i in range(20)))
    err = error_of(["train", "--data", str(csv)], capsys)
    assert err == (
        f"eigenlstm train: error: {csv} has 20 values; with --window=12, "
        "--horizon=1, --val-size=24 and --test-size=24 it needs at least 63 values\n"
    )


def test_train_with_a_non_positive_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--window", "0"])
    assert exit_info.value.code == 2
    assert "--window must be >= 1, got 0" in capsys.readouterr().err


def test_predict_with_a_checkpoint_that_is_not_a_forecaster_says_so(tmp_path, capsys):
    path = tmp_path / "plain.npz"
    el.save(el.LSTMModel(1, 4, 1, seed=0), path)
    err = error_of(["predict", "--model", str(path)], capsys)
    assert "needs a checkpoint written by `eigenlstm train`" in err


def test_predict_with_a_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04broken")
    err = error_of(["predict", "--model", str(path)], capsys)
    assert f"{path} is not a valid eigenlstm checkpoint" in err


def test_read_series_without_rows_raises_csv_error(tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text("# only a comment\n")
    with pytest.raises(CSVError, match="no data rows"):
        read_series(csv)


# ---- never a silent wrong forecast --------------------------------------------------------
def sales_csv(path, n=None, hole_at=None, units="units"):
    """A weekly sales file laid out as users keep them: date, units, store (text).

    The units are the bundled weekly US gasoline series (real data) in thousand barrels.
    """
    gas = read_series(
        importlib.resources.files("eigenlstm").joinpath("data", "us_gasoline_weekly.csv")
    )
    n = len(gas) if n is None else n
    rows = []
    for i in range(n):
        value = "" if i == hole_at else str(round(1000 * gas.values[i]))
        rows.append(f"{gas.labels[i]},{value},north\n")
    path.write_text(f"date,{units},store\n" + "".join(rows))
    return path


@pytest.fixture(scope="module")
def sales_run(tmp_path_factory):
    """`eigenlstm train --data sales.csv` with nothing else: (status, stdout, stderr, dir)."""
    tmp = tmp_path_factory.mktemp("sales")
    csv = sales_csv(tmp / "sales.csv")
    proc = run("train", "--data", str(csv), "--no-progress", "--out", "run", cwd=tmp)
    return proc, tmp


def test_the_weekly_sales_scenario_with_defaults_beats_naive_and_seasonal_naive(sales_run):
    proc, tmp = sales_run
    assert proc.returncode == 0, proc.stderr
    assert "314 weekly values of 'units'" in proc.stdout  # the only numeric column
    assert "window 52" in proc.stdout  # a whole season by default
    errors = held_out_errors(proc.stdout)
    assert "seasonal naive (52 steps back)" in proc.stdout
    assert errors["LSTM"][0] < errors["seasonal naive"][0]
    assert errors["LSTM"][0] < errors["naive"][0]
    assert "overlap" not in proc.stderr
    meta = el.load(tmp / "run" / "model.npz").metadata
    assert (meta["column"], meta["frequency"], meta["season"], meta["dataset"]) == (
        "units",
        "W",
        52,
        None,
    )


def test_predict_refuses_a_file_whose_trained_column_has_a_hole(sales_run, tmp_path, capsys):
    _, tmp = sales_run
    csv = sales_csv(tmp_path / "later.csv", n=80, hole_at=70)
    err = error_of(
        ["predict", "--model", str(tmp / "run" / "model.npz"), "--data", str(csv)], capsys
    )
    assert (
        err
        == f"eigenlstm predict: error: {csv}:72: column 'units' has an empty value, which is not a number\n"
    )
    assert capsys.readouterr().out == ""


def test_predict_refuses_a_file_without_the_trained_column_naming_file_column_and_columns(
    trained_run, tmp_path, capsys
):
    _, out = trained_run
    csv = tmp_path / "prices.csv"
    csv.write_text("month,price\n" + "".join(f"1990-{m:02d},{10 + m}\n" for m in range(1, 13)))
    err = error_of(["predict", "--model", str(out / "model.npz"), "--data", str(csv)], capsys)
    assert err == (
        f"eigenlstm predict: error: {csv}:1: no column 'Passengers' (the target); "
        "the columns are ['month', 'price']\n"
    )


def test_predict_without_data_needs_a_model_trained_on_a_bundled_series(sales_run, capsys):
    _, tmp = sales_run
    ckpt = tmp / "run" / "model.npz"
    err = error_of(["predict", "--model", str(ckpt)], capsys)
    assert err == (
        f"eigenlstm predict: error: --data is required: {ckpt} was trained on "
        "'sales.csv', not on a bundled data set; give the series to forecast from\n"
    )


def test_predict_refuses_data_of_another_frequency(sales_run, capsys):
    _, tmp = sales_run
    err = error_of(
        [
            "predict",
            "--model",
            str(tmp / "run" / "model.npz"),
            "--data",
            AIRLINE,
            "--column",
            "Passengers",
        ],
        capsys,
    )
    assert err == (
        f"eigenlstm predict: error: {AIRLINE}: the model was trained on weekly data; "
        "this file has monthly dates\n"
    )


def test_predict_past_the_validated_horizon_warns_with_that_horizon(trained_run):
    _, out = trained_run
    proc = run("predict", "--model", str(out / "model.npz"), "--steps", "30", cwd=out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        "eigenlstm predict: warning: the model was validated on 1-step "
        "forecasts; the 29 values after step 1 are forecasts fed back as "
        "inputs, with errors that grow unchecked\n"
    )
    assert len(proc.stdout.splitlines()) == 31


def test_predict_within_the_horizon_does_not_warn(trained_run):
    _, out = trained_run
    proc = run("predict", "--model", str(out / "model.npz"), cwd=out)
    assert proc.returncode == 0 and proc.stderr == ""


def test_csv_dates_out_of_step_are_an_error_naming_line_and_column(tmp_path, capsys):
    csv = tmp_path / "gap.csv"
    weeks = [str(np.datetime64("2020-01-03") + 7 * i) for i in range(80) if i != 40]
    csv.write_text("week,units\n" + "".join(f"{w},{100 + i}\n" for i, w in enumerate(weeks)))
    err = error_of(["train", "--data", str(csv)], capsys)
    assert (
        f"{csv}:42: column 'week' has '2020-10-16' after '2020-10-02' (line 41); weekly "
        "data needs 2020-10-09 there"
    ) in err
    assert capsys.readouterr().out == ""


def test_a_malformed_date_is_an_error_naming_line_and_column(tmp_path, capsys):
    csv = tmp_path / "baddate.csv"
    csv.write_text("month,y\n2020-01,1\n2020-02,2\nFeb 2020,3\n")
    err = error_of(["train", "--data", str(csv)], capsys)
    assert (
        f"{csv}:4: column 'month' has 'Feb 2020', which is not a date like the rows above it" in err
    )


# ---- rough edges ----------------------------------------------------------------------------
def test_train_without_column_uses_the_only_numeric_column_and_skips_text(tmp_path):
    csv = sales_csv(tmp_path / "s.csv", n=120)
    series = read_series(csv)
    assert series.column == "units" and series.frequency == "W"
    assert str(series.dates[0]) == "2011-01-21"


def test_train_without_column_lists_the_numeric_columns_when_there_are_several(tmp_path, capsys):
    csv = tmp_path / "two.csv"
    csv.write_text(
        "date,units,price,store\n"
        + "".join(f"2020-01-{d:02d},{d},{d / 2},x\n" for d in range(1, 31))
    )
    err = error_of(["train", "--data", str(csv)], capsys)
    assert err == (
        f"eigenlstm train: error: {csv}: numeric columns ['units', 'price']; choose "
        "the one to forecast with --column (or column= in Python)\n"
    )
    assert capsys.readouterr().out == ""


def test_a_semicolon_separated_file_is_sniffed(tmp_path):
    csv = tmp_path / "semi.csv"
    csv.write_text("date;units;store\n" + "".join(f"2020-01-{d:02d};{d};x\n" for d in range(1, 31)))
    series = read_series(csv)
    assert series.column == "units" and series.values[-1] == 30 and series.frequency == "D"


def test_the_delimiter_can_be_given(tmp_path, capsys):
    csv = tmp_path / "pipes.csv"
    csv.write_text("date|units\n" + "".join(f"2020-01-{d:02d}|{d}\n" for d in range(1, 31)))
    assert read_series(csv, delimiter="|").values.sum() == 465
    err = error_of(["train", "--data", str(csv), "--delimiter", ";"], capsys)
    assert f"{csv}: no numeric column among ['date|units']" in err


def test_errors_name_the_command_never_a_private_function(tmp_path, capsys):
    short = tmp_path / "short.csv"
    short.write_text("y\n" + "".join(f"{i + 1}\n" for i in range(80)))
    for argv in (
        ["train", "--data", str(short), "--test-size", "70"],
        ["train", "--data", str(short), "--horizon", "30", "--test-size", "24"],
        ["train", "--dataset", "nope"],
    ):
        err = error_of(argv, capsys)
        assert err.startswith("eigenlstm train: error: ")
        assert not re.search(
            r"\b(train_forecaster|check_sizes|make_optimizer|get_loss|_read)\b", err
        )


def test_a_ten_row_file_prints_nothing_before_its_error(tmp_path, capsys):
    csv = tmp_path / "ten.csv"
    csv.write_text("date,units\n" + "".join(f"2020-01-{d:02d},{d}\n" for d in range(1, 11)))
    status = main(["train", "--data", str(csv)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    # the message, without the file's path (pytest's tmp_path may itself contain "-14")
    message = captured.err.replace(str(csv), "ten.csv")
    assert "ten.csv has 10 values" in message and "-14" not in message


def test_predict_help_names_the_header_that_predict_prints(trained_run):
    _, out = trained_run
    help_text = run("predict", "--help", cwd=out).stdout
    promised = re.findall(r"`([a-z]+,[a-z]+)`", " ".join(help_text.split()))
    printed = run("predict", "--model", str(out / "model.npz"), cwd=out).stdout.splitlines()[0]
    assert promised == [printed]


# ---- bundled data sets and several input columns ------------------------------------------
def test_train_dataset_list_names_every_bundled_series(capsys):
    assert main(["train", "--dataset", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("airline", "gasoline", "births", "usmacro"):
        assert re.search(rf"^  {name} ", out, flags=re.M)
    assert "--columns realgdp,realinv,realdpi" in out


def test_train_dataset_with_columns_and_target_trains_a_multivariate_model(tmp_path, capsys):
    status = main(
        [
            "train",
            "--dataset",
            "usmacro",
            "--columns",
            "realgdp,realinv",
            "--target",
            "realcons",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--no-plot",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "values of 'realcons' with inputs ['realgdp', 'realinv']" in out
    model = el.load(tmp_path / "model.npz")
    assert model.input_size == 3
    assert model.metadata["columns"] == ["realcons", "realgdp", "realinv"]
    assert main(["predict", "--model", str(tmp_path / "model.npz")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("2009-10,")
    err = error_of(["predict", "--model", str(tmp_path / "model.npz"), "--steps", "2"], capsys)
    assert "steps must be <= the horizon 1 for a model that reads input columns" in err
