"""Distributed training as users start it: ``mpiexec -n P`` jobs, each in a subprocess.

tests/dist holds the tests that run inside the ranks (equality with one process, bitwise
equality across ranks, checkpoints, errors); this file launches that suite with 2 and 3 ranks,
and checks what only the job as a whole shows: a rank that raises or is killed ends the job
in bounded time with a message, errors are printed once, and ``eigenlstm train --distributed
mpi`` works under ``mpiexec``. The MPI is the ``eigenlstm[mpi]`` extra's (MPICH), which the
test extra installs.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import eigenlstm as el
from test_docs import python_blocks, readme_section

TESTS = Path(__file__).resolve().parent
LIMIT = 60  # seconds a failing job may take to end; it takes about one


def mpiexec() -> str:
    found = Path(sys.executable).with_name("mpiexec")
    path = str(found) if found.exists() else shutil.which("mpiexec")
    assert path, "no mpiexec next to this Python or on PATH: pip install '.[test]' (or '.[mpi]')"
    return path


def launch(ranks: int, *args, cwd=None, timeout=LIMIT):
    """Run ``mpiexec -n ranks args``; returns (returncode, stdout, stderr, seconds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            [mpiexec(), "-n", str(ranks), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the job did not end within {timeout} s: {exc.stderr}") from None
    return done.returncode, done.stdout, done.stderr, time.monotonic() - t0


def script(tmp_path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text(
        textwrap.dedent(
            """
            import os, signal, sys
            import numpy as np
            import eigenlstm as el
            from mpi4py import MPI

            RANK = MPI.COMM_WORLD.Get_rank()
            el.set_num_threads(1)
            rng = np.random.default_rng(0)
            x, y = rng.standard_normal((40, 5, 3)), rng.standard_normal((40, 2))
            model = el.LSTMModel(3, 8, 2, seed=0)
            """
        )
        + textwrap.dedent(body)
    )
    return path


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_rank_suite_passes(ranks):
    code, out, err, _ = launch(
        ranks,
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        TESTS / "dist",
        cwd=TESTS.parent,
        timeout=240,  # the suite takes seconds; a rank left waiting is a hang
    )
    assert code == 0, out[-4000:] + err[-4000:]
    assert out.count(" passed") == ranks, out[-4000:]


def test_a_rank_that_raises_stops_the_job_and_says_which(tmp_path):
    job = script(
        tmp_path,
        """
        class Boom(el.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if RANK == 1 and epoch == 2:
                    raise RuntimeError("boom in a callback")

        el.Trainer(model).fit(x, y, epochs=50, progress=False, callbacks=[Boom()],
                              distributed="mpi")
        """,
    )
    code, out, err, seconds = launch(2, sys.executable, job)
    assert code != 0
    assert seconds < LIMIT
    said = "rank 1 of 2 failed, stopping every rank: RuntimeError: boom in a callback"
    assert said in err, (code, out[-2000:], err[-2000:])


def test_a_killed_rank_ends_the_job(tmp_path):
    job = script(
        tmp_path,
        """
        class Kill(el.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if RANK == 1 and epoch == 2:
                    os.kill(os.getpid(), signal.SIGKILL)

        el.Trainer(model).fit(x, y, epochs=50, progress=False, callbacks=[Kill()],
                              distributed="mpi")
        """,
    )
    code, out, err, seconds = launch(2, sys.executable, job)
    assert code != 0
    assert seconds < LIMIT
    assert "signal 9" in out + err  # mpiexec names the signal that ended the rank


def test_a_data_error_is_printed_once(tmp_path):
    job = script(tmp_path, 'el.Trainer(model).fit(x, y[:30], progress=False, distributed="mpi")\n')
    code, _, err, _ = launch(3, sys.executable, job)
    assert code != 0
    assert err.count("x and y must have the same number of samples") == 1, err


@pytest.mark.parametrize("flag", [[], ["--distributed", "mpi"]], ids=["implied", "explicit"])
def test_the_command_line_trains_under_mpiexec(tmp_path, flag):
    # README: `mpiexec -n 2 eigenlstm train`; under mpiexec the ranks share the work.
    out_dir = tmp_path / "run"
    code, out, err, _ = launch(
        2,
        sys.executable,
        "-m",
        "eigenlstm",
        "train",
        *flag,
        "--epochs",
        "4",
        "--no-plot",
        "--no-progress",
        "--out",
        out_dir,
        timeout=300,
    )
    assert code == 0, err
    assert out.count("eigenlstm train: 144 monthly values") == 1, out  # rank 0 alone prints
    assert out.count("data-parallel over 2 MPI ranks") == 1, out
    assert out.count("wrote ") == 1, out
    model = el.load(out_dir / "model.npz")
    assert model.metadata["task"] == "forecast"


def test_a_command_line_error_is_printed_once():
    code, _, err, _ = launch(
        2, sys.executable, "-m", "eigenlstm", "train", "--distributed", "mpi", "--epochs", "0"
    )
    assert code == 2
    assert err.count("--epochs must be >= 1, got 0") == 1, err


def test_the_readme_example_runs_under_mpiexec(tmp_path):
    (block,) = [b for b in python_blocks(readme_section("Training")) if "mpiexec" in b]
    job = tmp_path / "train.py"
    job.write_text(
        "import numpy as np\nimport eigenlstm as el\n"
        "x = np.random.default_rng(0).standard_normal((96, 8, 1)).astype(np.float32)\n"
        "y = x.sum(axis=1)\n" + block
    )
    code, _, err, _ = launch(2, sys.executable, job, cwd=tmp_path, timeout=300)
    assert code == 0, err
    trainer = el.Trainer.load(tmp_path / "run.npz")
    assert trainer.history.epoch == list(range(20))
