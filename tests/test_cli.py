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
from eigenlstm.forecast import CSVError, read_series

TRAIN_EPOCHS = "60"  # fewer than the default 150 and still far below the naive error


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "eigenlstm", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One `python -m eigenlstm train` on the embedded data: (completed process, out dir)."""
    tmp = tmp_path_factory.mktemp("cli")
    proc = run("train", "--out", "out", "--epochs", TRAIN_EPOCHS, "--seed", "0", cwd=tmp)
    return proc, tmp / "out"


def held_out_errors(stdout):
    """{'LSTM': (rmse, mae), 'naive': (rmse, mae)} parsed from the train report."""
    rows = re.findall(r"^\s+(LSTM|naive) .*?([\d.]+)\s+([\d.]+)\s*$", stdout, flags=re.M)
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
    for option in ("--data", "--column", "--window", "--horizon", "--hidden", "--layers",
                   "--epochs", "--lr", "--out", "--seed"):
        assert option in proc.stdout


def test_train_on_the_embedded_data_beats_the_naive_last_value_forecast(trained_run):
    proc, _ = trained_run
    assert proc.returncode == 0, proc.stderr
    errors = held_out_errors(proc.stdout)
    assert set(errors) == {"LSTM", "naive"}
    assert errors["LSTM"][0] < 0.6 * errors["naive"][0]     # RMSE
    assert errors["LSTM"][1] < 0.6 * errors["naive"][1]     # MAE
    assert "held-out error on the last 24 values" in proc.stdout


def test_train_shows_a_progress_bar_with_loss_and_sequences_per_second(trained_run):
    proc, _ = trained_run
    assert "seq/s" in proc.stderr and "loss=" in proc.stderr
    assert f"epoch {TRAIN_EPOCHS}/{TRAIN_EPOCHS}" in proc.stderr


def test_train_writes_a_loadable_checkpoint_a_png_and_metrics(trained_run):
    proc, out = trained_run
    assert (out / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rmse"] < metrics["naive_rmse"]
    assert len(metrics["loss"]) == int(TRAIN_EPOCHS)
    model = el.load(out / "model.npz")
    assert model.metadata["window"] == 12 and model.metadata["column"] == "Passengers"
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


def test_predict_on_another_csv_writes_the_forecast_file(trained_run, tmp_path, capsys):
    _, out = trained_run
    csv = tmp_path / "short.csv"
    csv.write_text("t,value\n" + "".join(f"{i},{100 + 10 * np.sin(i / 2):.3f}\n" for i in range(30)))
    assert main(["predict", "--model", str(out / "model.npz"), "--data", str(csv),
                 "--output", str(tmp_path / "f.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("t+1,")
    assert (tmp_path / "f.csv").read_text().startswith("step,forecast\nt+1,")


def test_train_on_a_user_csv_column_runs_and_writes_to_out(tmp_path, capsys):
    csv = tmp_path / "waves.csv"
    t = np.arange(120)
    rows = "".join(f"{i},{50 + 0.2 * i + 10 * np.sin(2 * np.pi * i / 12):.4f},1\n" for i in t)
    csv.write_text("# a trend plus a 12-step season\nday,level,other\n" + rows)
    status = main(["train", "--data", str(csv), "--column", "level", "--epochs", "30",
                   "--out", str(tmp_path / "run"), "--no-progress", "--no-plot"])
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


# ---- bad input ----------------------------------------------------------------------------
def error_of(argv, capsys):
    status = main(argv)
    return status, capsys.readouterr().err


def test_train_with_a_missing_csv_names_the_file(tmp_path, capsys):
    status, err = error_of(["train", "--data", str(tmp_path / "nope.csv")], capsys)
    assert status == 2
    assert re.search(r"eigenlstm train: error: .*nope\.csv: cannot read the file", err)


def test_train_with_an_unparsable_value_names_the_file_line_and_column(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("# comment\nmonth,y\n1,10\n2,abc\n3,12\n")
    status, err = error_of(["train", "--data", str(csv)], capsys)
    assert status == 2
    assert f"{csv}:4: column 'y' has 'abc', which is not a number" in err


def test_train_with_an_empty_value_says_so(tmp_path, capsys):
    csv = tmp_path / "hole.csv"
    csv.write_text("month,y\n1,10\n2,\n")
    assert f"{csv}:3: column 'y' has an empty value" in error_of(["train", "--data", str(csv)], capsys)[1]


def test_train_with_a_missing_column_lists_the_columns(tmp_path, capsys):
    csv = tmp_path / "cols.csv"
    csv.write_text("month,y\n1,10\n")
    status, err = error_of(["train", "--data", str(csv), "--column", "sales"], capsys)
    assert status == 2
    assert f"{csv}: no column 'sales'; the columns are ['month', 'y']" in err


def test_train_with_a_ragged_row_names_the_line(tmp_path, capsys):
    csv = tmp_path / "ragged.csv"
    csv.write_text("month,y\n1,10\n2,11,99\n")
    assert f"{csv}:3: expected 2 fields as in the header" in error_of(["train", "--data", str(csv)], capsys)[1]


def test_train_with_a_binary_file_says_it_is_not_text(tmp_path, capsys):
    csv = tmp_path / "binary.csv"
    csv.write_bytes(b"\xff\xfe\x00\x81garbage")
    assert f"{csv}: not a UTF-8 text file" in error_of(["train", "--data", str(csv)], capsys)[1]


def test_train_on_a_series_too_short_for_the_window_explains_the_need(tmp_path, capsys):
    csv = tmp_path / "short.csv"
    csv.write_text("y\n" + "".join(f"{i + 1}\n" for i in range(20)))
    status, err = error_of(["train", "--data", str(csv)], capsys)
    assert status == 2
    assert "has 20 values; with window=12, horizon=1 and test_size=24" in err


def test_train_with_a_non_positive_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--window", "0"])
    assert exit_info.value.code == 2
    assert "--window must be >= 1, got 0" in capsys.readouterr().err


def test_predict_with_a_checkpoint_that_is_not_a_forecaster_says_so(tmp_path, capsys):
    path = tmp_path / "plain.npz"
    el.LSTMModel(1, 4, 1, seed=0).save(path)
    status, err = error_of(["predict", "--model", str(path)], capsys)
    assert status == 2
    assert "needs a checkpoint written by `eigenlstm train`" in err


def test_predict_with_a_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04broken")
    status, err = error_of(["predict", "--model", str(path)], capsys)
    assert status == 2
    assert f"{path} is not a valid eigenlstm checkpoint" in err


def test_read_series_without_rows_raises_csv_error(tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text("# only a comment\n")
    with pytest.raises(CSVError, match="no data rows"):
        read_series(csv)
