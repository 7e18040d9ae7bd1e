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


def test_readme_python_blocks_run_in_order_as_written(tmp_path, monkeypatch):
    # Every ```python block of the README, in order, in one namespace (a later block may use
    # what an earlier one made, as a reader would), in a scratch folder. The training blocks
    # use data they do not define: a small learnable task stands in for it.
    text = README.read_text(encoding="utf-8")
    sections = {
        title: python_blocks(readme_section(title))
        for title in ("Using it", "Serving", "Training", "Moving models in and out")
    }
    assert [len(b) for b in sections.values()] == [2, 2, 5, 1]
    assert len(python_blocks(text)) == 10  # a new block gets a place in this test
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 8, 1)).astype(np.float32)
    y = x.sum(axis=1)
    ns = {
        "x_train": x[:64],
        "y_train": y[:64],
        "x_val": x[64:80],
        "y_val": y[64:80],
        "x_test": x[80:],
        "y_test": y[80:],
    }
    monkeypatch.chdir(tmp_path)

    def run(block):
        exec(compile(block, str(README), "exec"), ns)

    run(sections["Using it"][0])
    assert ns["output"].shape == (5, 7, 20) and ns["dx"].shape == (5, 7, 10)
    run(sections["Using it"][1])  # the cell variants, on the same x
    assert ns["output"].shape == (5, 7, 20) and ns["state"] == ns["cell"].dropout_state
    assert ns["cell"].layer_norm and ns["cell"].zoneout == (0.15, 0.05)
    # The streams block serves 8 clients: its inputs stand in for what they send.
    ns.update(
        x_step=rng.standard_normal((8, 10)),
        x_chunk=rng.standard_normal((8, 3, 10)),
        active=np.array([1, 0, 1, 1, 0, 1, 1, 1]),
        buf=np.empty((8, 2), np.float32),
    )
    run(sections["Serving"][0])
    assert ns["y"] is ns["buf"] and ns["h"].shape == (1, 8, 20) and ns["c"].shape == (1, 8, 20)
    run(sections["Serving"][1])
    assert ns["y"].shape == (4, 2) and ns["y"].dtype == np.float32
    assert isinstance(ns["q"], el.nn.QuantizedLSTMModel) and ns["stream"].batch_size == 8
    assert el.load(tmp_path / "model-int8.npz").precision == "int8"
    assert ns["kernels"] == el.config()["quantized_kernels"]
    np.testing.assert_allclose(ns["y"], ns["model"].predict(ns["x"]), atol=0.05)

    # The fifth, the MPI example, runs as the ranks of an mpiexec job: tests/test_distributed.py.
    torch_loop, trainer_block, bptt_block, tbptt_block, _ = sections["Training"]
    run(torch_loop)
    # The loop trained: five Adam steps on the whole set lower the loss of the first step.
    first, _ = el.mse_loss(el.LSTMModel(1, 32, 1, seed=0)(x[:64]), y[:64])
    assert ns["loss"] < first
    run(trainer_block)
    files = ["best.npz", "model-int8.npz", "model.npz", "run.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert isinstance(ns["model"], el.LSTMModel) and isinstance(ns["trainer"], el.Trainer)
    epochs = len(el.Trainer.load(tmp_path / "run.npz").history.epoch)
    assert 1 <= epochs <= 50
    assert ns["history"].epoch == list(range(epochs + 10))
    assert ns["y_pred"].shape == (16, 1)

    run(bptt_block)  # makes its own long sequences
    assert ns["dx_long"].shape == ns["x_long"].shape
    assert 0 < ns["kept"] < 0.05 * 2000 * 16 * (64 + 6 * 64) * 4  # under 5% of full storage
    assert ns["model"].lstm.bptt_memory == "sqrt"

    saved = ns["model"].predict(x[80:])
    saved_model = ns["model"]
    run(tbptt_block)  # makes its own text
    loss = ns["history"].history["loss"]
    assert len(loss) == 20 and loss[-1] < loss[0] / 2
    assert ns["x_text"].shape[1] == 64 and ns["y_text"].shape == ns["x_text"].shape[:2]
    assert ns["h"].shape == ns["c"].shape == (1, 4, 64) and ns["trainer"].carried_state is None
    ns["model"] = saved_model  # the next section exports the trainer block's model

    run(sections["Moving models in and out"][0])
    assert {"model.onnx", "lstm.onnx", "model.keras"} <= {p.name for p in tmp_path.iterdir()}
    # ONNX then Keras and back: the same model.
    np.testing.assert_allclose(ns["model"].predict(x[80:]), saved, rtol=1e-5, atol=1e-6)
