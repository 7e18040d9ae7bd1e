"""The runnable snippets of the docs stay correct: docs/backward.md (it asserts its own result)
and the README's Python examples of the API and of training."""

import pathlib
import re

import numpy as np

import eigenlstm as el

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "backward.md"
README = ROOT / "README.md"


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


def readme_section(title):
    """The text of README's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_backward_derivation_snippet_matches_finite_differences():
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 1
    exec(compile(blocks[0], str(DOC), "exec"), {})


def test_readme_using_it_example_runs_as_written():
    blocks = python_blocks(readme_section("Using it"))
    assert len(blocks) == 1
    ns = {}
    exec(compile(blocks[0], str(README), "exec"), ns)
    assert ns["output"].shape == (5, 7, 20) and ns["dx"].shape == (5, 7, 10)


def test_readme_training_example_runs_and_resumes_the_saved_run(tmp_path, monkeypatch):
    # The block uses data it does not define: give it a small learnable task.
    blocks = python_blocks(readme_section("Training"))
    assert len(blocks) == 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 8, 1)).astype(np.float32)
    y = x.sum(axis=1)
    ns = {"el": el, "np": np, "x_train": x[:64], "y_train": y[:64], "x_val": x[64:80],
          "y_val": y[64:80], "x_test": x[80:], "y_test": y[80:]}
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README), "exec"), ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "model.npz", "run.npz"]
    assert isinstance(ns["model"], el.LSTMModel) and isinstance(ns["trainer"], el.Trainer)
    first = len(el.Trainer.load(tmp_path / "run.npz").history.epoch)
    assert 1 <= first <= 50
    assert ns["history"].epoch == list(range(first + 10))
    assert ns["y_pred"].shape == (16, 1)
