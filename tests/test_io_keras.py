"""eigenlstm.io.keras (el.keras): Keras models load with Keras's own predictions, in .keras and
legacy .h5 files; what eigenlstm writes, keras.saving.load_model opens with the same predictions.

Keras runs on its torch backend (no TensorFlow); the witness is Keras's ``model.predict``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import warnings  # noqa: E402
import zipfile  # noqa: E402

import keras  # noqa: E402  a hard import: the Keras witness must never be silently skipped
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import eigenlstm as el  # noqa: E402
from eigenlstm.io import keras as elkeras  # noqa: E402

L = keras.layers
I = 3
# Float32: Keras and eigenlstm round differently (matmul order, their sigmoid/tanh); over at
# most three layers and 6 steps the outputs agree to ~1e-7. 1e-5 leaves a margin while a wrong
# gate, transpose or bias shows up at >= 1e-2.
ATOL = 1e-5

ARCHITECTURES = {
    # Exactly the seed's model: loads as an LSTMModel (which el.Trainer trains).
    "lstm_dense": (lambda: [L.LSTM(8), L.Dense(2)], el.LSTMModel),
    "stacked_lstms_of_two_sizes": (
        lambda: [L.LSTM(8, return_sequences=True), L.LSTM(5), L.Dense(3)],
        el.Sequential,
    ),
    "bidirectional_last_state": (lambda: [L.Bidirectional(L.LSTM(6)), L.Dense(2)], el.Sequential),
    "sequence_output": (lambda: [L.LSTM(7, return_sequences=True), L.Dense(2)], el.Sequential),
    "bidirectional_sequences_no_bias_two_dense": (
        lambda: [
            L.Bidirectional(L.LSTM(4, return_sequences=True)),
            L.LSTM(5, use_bias=False),
            L.Dense(4, use_bias=False),
            L.Dense(1),
        ],
        el.Sequential,
    ),
}


def _keras_model(layers, dtype="float32", seed=0):
    model = keras.Sequential([keras.Input((None, I), dtype=dtype)] + layers)
    # Keras initialises biases to zero (and the forget bias to one): draw every weight at random
    # so that a bias mapped to the wrong gate or left out cannot go unnoticed.
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.uniform(-0.5, 0.5, tuple(w.shape)).astype(dtype))
    return model


def _save(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 "legacy"
        model.save(path)


def _x(dtype=np.float32, N=4, T=6, seed=1):
    return np.random.default_rng(seed).standard_normal((N, T, I)).astype(dtype)


@pytest.mark.parametrize("fmt", ("keras", "h5"))
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_load_predicts_what_keras_predicts_and_save_reopens_in_keras(arch, fmt, tmp_path):
    make, cls = ARCHITECTURES[arch]
    model = _keras_model(make())
    path = tmp_path / f"model.{fmt}"
    _save(model, path)
    ours = elkeras.load(path)
    assert type(ours) is cls
    for x in (_x(), _x(N=1, T=2, seed=2)):
        want = model.predict(x, verbose=0)
        got = ours.predict(x)
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) <= ATOL
    # ... and back: Keras opens what eigenlstm writes and predicts the same.
    out = tmp_path / "back.keras"
    elkeras.save(ours, out)
    reopened = keras.saving.load_model(out)
    x = _x(seed=3)
    assert np.max(np.abs(reopened.predict(x, verbose=0) - ours.predict(x))) <= ATOL


def test_load_reads_a_linear_functional_model(tmp_path):
    inp = keras.Input((None, I))
    out = L.Dense(2)(L.LSTM(5)(L.LSTM(6, return_sequences=True)(inp)))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(4)
    for w in model.weights:
        w.assign(rng.uniform(-0.5, 0.5, tuple(w.shape)).astype("float32"))
    for fmt in ("keras", "h5"):
        _save(model, tmp_path / f"f.{fmt}")
        ours = elkeras.load(tmp_path / f"f.{fmt}")
        x = _x()
        assert np.max(np.abs(ours.predict(x) - model.predict(x, verbose=0))) <= ATOL


def test_float64_model_loads_as_float64_and_matches_keras_float64_call(tmp_path):
    # The witness is a direct call, model(x): Keras's predict() converts its input to floatx
    # (float32) first. Dense is left out: on the torch backend Keras's float64 Dense differs
    # from x @ kernel + bias by ~1e-7, which would hide a float64 error of ours.
    f64 = {"dtype": "float64"}
    model = _keras_model(
        [L.Bidirectional(L.LSTM(4, return_sequences=True, **f64), **f64), L.LSTM(3, **f64)],
        dtype="float64",
    )
    _save(model, tmp_path / "m.keras")
    ours = elkeras.load(tmp_path / "m.keras")
    assert ours.dtype == np.float64
    x = _x(np.float64)
    want = np.asarray(keras.ops.convert_to_numpy(model(x)))
    # float64 throughout: only the summation order differs, a few ulps.
    assert np.max(np.abs(ours.predict(x) - want)) <= 1e-12


def test_save_writes_eigenlstm_models_that_keras_opens(tmp_path):
    x = _x()
    stacked = el.LSTMModel(I, 6, 2, num_layers=2, seed=0)
    seq = el.Sequential(
        [
            el.LSTM(I, 5, num_layers=2, batch_first=True, bidirectional=True, seed=1),
            el.Linear(10, 4, seed=2),
            el.LSTM(4, 3, batch_first=True, bias=False, seed=3),
            el.Linear(3, 2, bias=False, seed=4),
        ],
        return_sequences=[True, False],
    )
    for k, model in enumerate((stacked, seq)):
        path = tmp_path / f"m{k}.keras"
        elkeras.save(model, path)
        reopened = keras.saving.load_model(path)
        assert np.max(np.abs(reopened.predict(x, verbose=0) - model.predict(x))) <= ATOL
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_recurrent_dropout_goes_to_keras_and_back(tmp_path):
    """Keras's recurrent_dropout is eigenlstm's (one mask on h_{t-1} per sequence and unit for
    a whole call, training only): save writes it into the layer config, load reads it."""
    x = _x()
    for k, model in enumerate(
        (
            el.LSTMModel(I, 6, 2, num_layers=2, recurrent_dropout=0.25, seed=0),
            el.Sequential(
                [
                    el.LSTM(I, 5, batch_first=True, bidirectional=True, recurrent_dropout=0.4),
                    el.Linear(10, 2, seed=2),
                ],
                return_sequences=[False],
            ),
        )
    ):
        path = tmp_path / f"m{k}.keras"
        elkeras.save(model, path)
        reopened = keras.saving.load_model(path)
        rnn = [
            layer
            for layer in reopened.layers
            if "lstm" in layer.name or "bidirectional" in layer.name
        ]
        cells = [getattr(layer, "forward_layer", layer).cell for layer in rnn]
        want = 0.25 if k == 0 else 0.4
        assert [c.recurrent_dropout for c in cells] == [want] * len(cells)
        assert np.max(np.abs(reopened.predict(x, verbose=0) - model.predict(x))) <= ATOL
        back = elkeras.load(path)
        lstms = [back.lstm] if k == 0 else [back.layers[0]]
        assert [m.recurrent_dropout for m in lstms] == [want]


def test_input_dropout_is_left_out_with_a_warning_and_predictions_match(tmp_path):
    model = _keras_model([L.LSTM(5, dropout=0.3, return_sequences=True), L.LSTM(4), L.Dense(2)])
    _save(model, tmp_path / "d.keras")
    with pytest.warns(UserWarning, match=r"layer 'lstm.*' \(LSTM\) has input dropout=0.3") as w:
        ours = elkeras.load(tmp_path / "d.keras")
    assert len(w) == 1  # the layer without dropout says nothing
    x = _x()
    assert np.max(np.abs(ours.predict(x) - model.predict(x, verbose=0))) <= ATOL


def test_load_needs_neither_keras_nor_tensorflow(tmp_path):
    make, _ = ARCHITECTURES["bidirectional_sequences_no_bias_two_dense"]
    model = _keras_model(make())
    x = _x()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", model.predict(x, verbose=0))
    for fmt in ("keras", "h5"):
        _save(model, tmp_path / f"m.{fmt}")
    # A fresh interpreter in which importing keras or tensorflow fails.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["keras"] = None
        sys.modules["tensorflow"] = None
        import numpy as np
        from eigenlstm.io import keras as elkeras
        x, want = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "want.npy")!r})
        for fmt in ("keras", "h5"):
            got = elkeras.load({str(tmp_path)!r} + "/m." + fmt).predict(x)
            print("error", fmt, float(np.max(np.abs(got - want))))
        print("keras loaded:", any(m == "keras" or m.startswith("keras.") for m, v in sys.modules.items()
                                   if v is not None))
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split("\n")
    errs = [float(line.split()[2]) for line in lines if line.startswith("error ")]
    assert len(errs) == 2 and max(errs) <= ATOL
    assert "keras loaded: False" in lines


@pytest.mark.parametrize(
    "layers, match",
    [
        (
            lambda: [L.LSTM(4, activation="relu"), L.Dense(1)],
            r"layer 'lstm\w*' \(LSTM\): activation must be 'tanh', got 'relu'",
        ),
        (
            lambda: [L.LSTM(4, recurrent_activation="hard_sigmoid"), L.Dense(1)],
            "recurrent_activation must be 'sigmoid'",
        ),
        (
            lambda: [L.LSTM(4, go_backwards=True), L.Dense(1)],
            "go_backwards must be False, got True",
        ),
        (
            lambda: [L.LSTM(4), L.Dense(1, activation="softmax")],
            r"\(Dense\): activation must be 'linear', got 'softmax'",
        ),
        (
            lambda: [L.GRU(4), L.Dense(1)],
            r"\(GRU\): only LSTM, Bidirectional\(LSTM\) and Dense layers are read",
        ),
        (
            lambda: [L.Bidirectional(L.LSTM(4), merge_mode="sum"), L.Dense(1)],
            "merge_mode must be 'concat', got 'sum'",
        ),
    ],
)
def test_load_refuses_layers_and_options_by_name(layers, match, tmp_path):
    model = _keras_model(layers())
    _save(model, tmp_path / "m.keras")
    with pytest.raises(ValueError, match=match):
        elkeras.load(tmp_path / "m.keras")


def test_load_refuses_files_that_are_not_keras_models(tmp_path):
    bad = tmp_path / "notes.keras"
    bad.write_text("not a model")
    with pytest.raises(ValueError, match="must be a .keras archive or a legacy .h5 file"):
        elkeras.load(bad)
    z = tmp_path / "other.keras"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("config.json", json.dumps({}))
    with pytest.raises(
        ValueError, match=r"not a .keras archive \(config.json and model.weights.h5\)"
    ):
        elkeras.load(z)


def test_save_refuses_what_keras_cannot_express(tmp_path):
    path = tmp_path / "m.keras"
    with pytest.raises(ValueError, match="a bidirectional LSTMModel cannot be written"):
        elkeras.save(el.LSTMModel(I, 4, 1, bidirectional=True, seed=0), path)
    proj = el.Sequential([el.LSTM(I, 4, batch_first=True, proj_size=2, seed=0)], [False])
    with pytest.raises(ValueError, match="an LSTM with proj_size=2 cannot be written"):
        elkeras.save(proj, path)
    for options in (
        {"peepholes": True},
        {"cell_clip": 1.0},
        {"zoneout": 0.1},
        {"weight_drop": 0.2},
    ):
        name = next(iter(options))
        with pytest.raises(ValueError, match=f"an LSTM with {name}=.* cannot be written"):
            elkeras.save(el.Sequential([el.LSTM(I, 4, batch_first=True, **options)], [False]), path)
    with pytest.raises(
        TypeError, match="model must be an eigenlstm LSTMModel or Sequential, got LSTM"
    ):
        elkeras.save(el.LSTM(I, 4, seed=0), path)
    assert not path.exists()


def test_keras_to_onnx_example_loads_fine_tunes_and_serves_in_onnxruntime(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "keras_to_onnx.py"
    spec = importlib.util.spec_from_file_location("keras_to_onnx", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(tmp_path, keras_epochs=3, finetune_epochs=5, verbose=False)
    assert result["keras_err"] <= ATOL
    assert result["ort_err"] <= ATOL
    # Fine-tuning on the shifted wave must at least halve the held-out error.
    assert result["loss_after"] < 0.5 * result["loss_before"]
    assert {p.name for p in tmp_path.iterdir()} == {"forecaster.keras", "forecaster.onnx"}


def test_a_per_step_lstm_model_is_written_as_a_sequence_lstm_and_a_dense_on_every_step(tmp_path):
    ours = el.LSTMModel(I, 5, 3, num_layers=2, many_to_many=True, seed=0)
    elkeras.save(ours, tmp_path / "m.keras")
    reopened = keras.saving.load_model(tmp_path / "m.keras")
    x = _x(seed=5)
    want = ours.eval().predict(x)
    assert want.shape == (4, 6, 3)
    assert np.max(np.abs(reopened.predict(x, verbose=0) - want)) <= ATOL
    back = elkeras.load(tmp_path / "m.keras")  # read back as the stack it is
    assert type(back) is el.Sequential and back.return_sequences == [True, True]
    assert np.max(np.abs(back.predict(x) - want)) <= ATOL
