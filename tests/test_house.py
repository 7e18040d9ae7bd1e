"""The house rules, checked on every run: the import contract (layers, no cycles), ruff (lint
and format), mypy, and every docstring example of the package.

The rules live in pyproject.toml; .pre-commit-config.yaml runs the same tools before a commit.
"""

import doctest
import importlib
import importlib.util
import os
import pathlib
import pkgutil
import shutil
import subprocess

import pytest

import eigenlstm

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "python"


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (it comes with pip install '.[test]')")
    return path


def _lint_imports(package_parent):
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    return subprocess.run(
        [_tool("lint-imports"), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_import_contract_layers_and_no_cycles_hold():
    run = _lint_imports(SOURCE)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_import_contract_catches_an_upward_import(tmp_path):
    # The contract is only worth its green if it turns red: copy the package, add one upward
    # import (nn -> training) and check that lint-imports fails naming it.
    copy = tmp_path / "eigenlstm"
    shutil.copytree(
        SOURCE / "eigenlstm", copy, ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    linear = copy / "nn" / "linear.py"
    linear.write_text(linear.read_text() + "\nfrom ..training import Trainer  # noqa\n")
    run = _lint_imports(tmp_path)
    assert run.returncode != 0
    assert "eigenlstm.nn is not allowed to import eigenlstm.training" in run.stdout, run.stdout


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
    run = subprocess.run(
        [_tool("ruff"), *args, "python", "tests", "bench", "examples", "tools"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_on_the_package():
    run = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _modules():
    # Python modules only: the compiled engine's libraries sit in the package folder too.
    for info in pkgutil.walk_packages(eigenlstm.__path__, "eigenlstm."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and str(spec.origin).endswith(".py") and "__main__" not in info.name:
            yield info.name


@pytest.mark.parametrize("name", ["eigenlstm", *sorted(_modules())])
def test_docstring_examples(name, tmp_path, monkeypatch):
    # The installed package's examples, in a scratch folder (some write files).
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=True,
        verbose=False,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
