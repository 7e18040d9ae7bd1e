"""The house rules, checked on every run: the import contract (layers, no cycles).

The contract lives in pyproject.toml ([tool.importlinter]); `lint-imports` reads it. The
package is analysed where it is imported from, so the check covers what the tests run.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

import eigenlstm

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_import_contract_layers_and_no_cycles_hold():
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(eigenlstm.__file__).parents[1]))
    run = subprocess.run(["lint-imports", "--config", str(ROOT / "pyproject.toml"),
                          "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_import_contract_catches_an_upward_import(tmp_path):
    # The contract is only worth its green if it turns red: copy the package, add one upward
    # import (nn -> training) and check that lint-imports fails naming it.
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter not installed")
    pkg = pathlib.Path(eigenlstm.__file__).parent
    copy = tmp_path / "eigenlstm"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (copy / "nn" / "linear.py").write_text(
        (copy / "nn" / "linear.py").read_text() + "\nfrom ..training import Trainer  # noqa\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = subprocess.run(["lint-imports", "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "eigenlstm.nn is not allowed to import eigenlstm.training" in run.stdout, run.stdout
