"""The core needs NumPy alone; the command line's plot and progress bar are the [cli] extra,
distributed training the [mpi] extra."""

import importlib.metadata
import importlib.util
import re
import sys

import numpy as np
import pytest

import eigenlstm as el
from eigenlstm.cli import main


def test_the_installed_package_requires_numpy_alone_at_run_time():
    requires = importlib.metadata.requires("eigenlstm") or []
    core = [r for r in requires if "extra ==" not in r]
    assert [re.split(r"[<>=!~ ;]", r)[0] for r in core] == ["numpy"]
    cli = [r for r in requires if re.search(r"extra\s*==\s*['\"]cli['\"]", r)]
    assert sorted(re.split(r"[<>=!~ ;]", r)[0] for r in cli) == ["matplotlib", "tqdm"]


@pytest.mark.parametrize("module, flag", [("matplotlib", "--no-plot"), ("tqdm", "--no-progress")])
def test_train_without_the_cli_extra_says_what_to_install_before_training(
    module, flag, monkeypatch, tmp_path, capsys
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path), "--epochs", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{module} not installed: pip install 'eigenlstm[cli]', or pass {flag}" in err
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_fit_with_progress_but_without_tqdm_warns_and_trains(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3, 2)), rng.standard_normal(16)
    trainer = el.Trainer(el.LSTMModel(2, 4, 1, seed=0))
    with pytest.warns(
        RuntimeWarning, match=r"progress=True needs tqdm \(pip install 'eigenlstm\[cli\]'\)"
    ):
        history = trainer.fit(x, y, epochs=2, progress=True, seed=0)
    assert len(history.history["loss"]) == 2


def test_the_mpi_extra_is_mpi4py_on_mpich():
    requires = importlib.metadata.requires("eigenlstm") or []
    mpi = [r for r in requires if re.search(r"extra\s*==\s*['\"]mpi['\"]", r)]
    assert sorted(re.split(r"[<>=!~ ;]", r)[0] for r in mpi) == ["mpi4py", "mpich"]


def test_distributed_training_without_mpi4py_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 2)), rng.standard_normal(8)
    model = el.LSTMModel(2, 4, 1, seed=0)
    before = model.state_dict()
    trainer = el.Trainer(model)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'eigenlstm\[mpi\]'"):
        trainer.fit(x, y, progress=False, distributed="mpi")
    assert trainer.history is None
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())
    assert main(["train", "--distributed", "mpi"]) == 2
    assert "pip install 'eigenlstm[mpi]'" in capsys.readouterr().err


def test_distributed_names_what_it_accepts():
    trainer = el.Trainer(el.LSTMModel(2, 4, 1, seed=0))
    with pytest.raises(ValueError, match=r"distributed must be None or 'mpi', got 'nccl'"):
        trainer.fit(np.zeros((4, 3, 2)), np.zeros(4), progress=False, distributed="nccl")
