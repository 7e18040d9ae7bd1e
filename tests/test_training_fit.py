"""Tests of ``Trainer.fit`` / ``evaluate``, ``LSTMModel.predict``, callbacks and the examples.

Learnable tasks: the sum of a sequence (regression), the sign of the sum (classification) and
scikit-learn's digits; plus every bad-input branch and a diverging run.
"""
# Sizes: N samples, L time steps, I input size.

import importlib.util
import pathlib

import numpy as np
import pytest

import eigenlstm as el

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def sum_task(N=256, L=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, L, 1)).astype(np.float32)
    return x, x.sum(axis=1)


def sign_task(N=256, L=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, L, 2)).astype(np.float32)
    return x, (x.sum(axis=(1, 2)) > 0).astype(np.int64)


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- learning ------------------------------------------------------------------------------
def test_loss_falls_tenfold_when_learning_the_sum_of_a_sequence():
    x, y = sum_task()
    trainer = el.Trainer(el.LSTMModel(1, 16, 1, seed=0))
    history = trainer.fit(x, y, epochs=20, lr=1e-2, progress=False, seed=0)
    assert history is trainer.history
    loss = history.history["loss"]
    assert len(loss) == 20
    assert loss[-1] < loss[0] / 10


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_by_name_reduces_the_loss(optimizer):
    x, y = sum_task(N=128)
    trainer = el.Trainer(el.LSTMModel(1, 8, 1, seed=1))
    lr = 5e-2 if optimizer == "sgd" else 1e-2
    loss = trainer.fit(x, y, epochs=8, lr=lr, optimizer=optimizer, progress=False, seed=0).history[
        "loss"
    ]
    assert loss[-1] < loss[0]
    assert type(trainer.optimizer).__name__.lower() == optimizer


def test_cross_entropy_training_reports_val_loss_and_val_accuracy():
    x, y = sign_task()
    trainer = el.Trainer(el.LSTMModel(2, 16, 2, seed=0))
    history = trainer.fit(
        x[:200],
        y[:200],
        epochs=15,
        loss="cross_entropy",
        lr=1e-2,
        validation_data=(x[200:], y[200:]),
        progress=False,
        seed=0,
    )
    assert sorted(history.history) == ["loss", "val_accuracy", "val_loss"]
    assert history.history["val_accuracy"][-1] > 0.85
    metrics = trainer.evaluate(x[200:], y[200:])
    assert metrics["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-9)
    assert metrics["accuracy"] == history.history["val_accuracy"][-1]


def test_history_has_only_loss_without_validation_data_and_val_loss_with_mse_validation():
    x, y = sum_task(N=64)
    trainer = el.Trainer(el.LSTMModel(1, 4, 1, seed=0))
    assert list(trainer.fit(x, y, epochs=2, progress=False).history) == ["loss"]
    h = trainer.fit(x, y, epochs=2, validation_data=(x[:8], y[:8]), progress=False)
    assert sorted(h.history) == ["loss", "val_loss"]


def test_training_with_the_same_seeds_is_bitwise_reproducible():
    x, y = sum_task(N=96)
    runs = []
    for _ in range(2):
        model = el.LSTMModel(1, 8, 1, num_layers=2, dropout=0.2, seed=4)
        el.Trainer(model).fit(x, y, epochs=3, batch_size=16, lr=1e-2, progress=False, seed=9)
        runs.append(model.state_dict())
    for k in runs[0]:
        assert np.array_equal(runs[0][k], runs[1][k]), k


def test_fit_with_lengths_learns_from_right_padded_sequences():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8, 1)).astype(np.float32)
    lengths = rng.integers(1, 9, 200)
    for n, n_valid in enumerate(lengths):
        x[n, n_valid:] = 0.0
    y = x.sum(axis=1)
    model = el.LSTMModel(1, 16, 1, seed=0)
    loss = (
        el.Trainer(model)
        .fit(x, y, epochs=15, lr=1e-2, lengths=lengths, progress=False, seed=0)
        .history["loss"]
    )
    assert loss[-1] < loss[0] / 5
    assert model.predict(x, lengths=lengths).shape == (200, 1)


def test_progress_bar_shows_epoch_loss_and_sequences_per_second(capsys):
    x, y = sum_task(N=64)
    el.Trainer(el.LSTMModel(1, 4, 1, seed=0)).fit(x, y, epochs=2, batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err
    assert "loss=" in err
    assert "seq/s" in err


def test_progress_false_prints_nothing(capsys):
    x, y = sum_task(N=32)
    el.Trainer(el.LSTMModel(1, 4, 1, seed=0)).fit(x, y, epochs=1, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ---- predict / evaluate --------------------------------------------------------------------
def test_predict_in_batches_equals_predict_at_once_and_restores_training_mode():
    x, _ = sum_task(N=10)
    model = el.LSTMModel(1, 6, 3, seed=0)
    whole = model.predict(x)
    parts = model.predict(x, batch_size=3)
    assert whole.shape == (10, 3)
    np.testing.assert_allclose(parts, whole, rtol=1e-6, atol=1e-7)
    assert model.training


def test_predict_uses_no_dropout_so_it_is_deterministic():
    x, _ = sum_task(N=4)
    model = el.LSTMModel(1, 6, 1, num_layers=2, dropout=0.5, seed=0)
    assert np.array_equal(model.predict(x), model.predict(x))


def test_evaluate_defaults_to_the_loss_of_the_last_fit():
    x, y = sign_task(N=64)
    trainer = el.Trainer(el.LSTMModel(2, 4, 2, seed=0))
    trainer.fit(x, y, epochs=1, loss="cross_entropy", progress=False)
    assert sorted(trainer.evaluate(x, y)) == ["accuracy", "loss"]
    assert sorted(el.Trainer(el.LSTMModel(2, 4, 2)).evaluate(x, np.zeros((64, 2)))) == ["loss"]


# ---- callbacks ----------------------------------------------------------------------------
def test_early_stopping_stops_when_val_loss_stops_improving_and_restores_the_best_weights():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 5, 1)).astype(np.float32)
    y = rng.standard_normal((32, 1))  # noise: the model can only overfit
    xv = rng.standard_normal((32, 5, 1)).astype(np.float32)
    yv = rng.standard_normal((32, 1))
    trainer = el.Trainer(el.LSTMModel(1, 32, 1, seed=0))
    stop = el.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    history = trainer.fit(
        x,
        y,
        epochs=200,
        batch_size=8,
        lr=3e-2,
        validation_data=(xv, yv),
        callbacks=[stop],
        progress=False,
        seed=0,
    )
    val = history.history["val_loss"]
    assert len(val) < 200
    assert stop.stopped_epoch == len(val) - 1
    assert history.stop_reason.startswith("early stopping: val_loss did not improve for 3 epochs")
    assert min(val) == val[stop.best_epoch]
    assert trainer.stop_training and trainer.stop_reason == history.stop_reason
    assert trainer.evaluate(xv, yv)["loss"] == pytest.approx(min(val), rel=1e-9)


def test_early_stopping_on_a_missing_metric_says_to_pass_validation_data():
    x, y = sum_task(N=16)
    trainer = el.Trainer(el.LSTMModel(1, 4, 1))
    with pytest.raises(
        ValueError,
        match=r"^EarlyStopping: monitor must be one of the epoch metrics \['loss'\]; pass validation_data to fit, got 'val_loss'$",
    ):
        trainer.fit(x, y, epochs=2, callbacks=[el.EarlyStopping()], progress=False)


def test_custom_callback_hooks_are_called_in_order():
    calls = []

    class Recorder(el.Callback):
        def on_train_begin(self, logs=None):
            calls.append("begin")

        def on_epoch_end(self, epoch, logs=None):
            calls.append(f"epoch {epoch} {sorted(logs)}")

        def on_train_end(self, logs=None):
            calls.append("end")

    x, y = sum_task(N=16)
    el.Trainer(el.LSTMModel(1, 4, 1)).fit(x, y, epochs=2, callbacks=[Recorder()], progress=False)
    assert calls == ["begin", "epoch 0 ['loss']", "epoch 1 ['loss']", "end"]


def test_a_callback_is_given_the_trainer_and_its_model_and_can_stop_the_run():
    class StopAfterTwo(el.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.trainer.stop_training = True

    x, y = sum_task(N=16)
    trainer = el.Trainer(el.LSTMModel(1, 4, 1))
    cb = StopAfterTwo()
    history = trainer.fit(x, y, epochs=10, callbacks=[cb], progress=False)
    assert cb.trainer is trainer and cb.model is trainer.model
    assert history.epoch == [0, 1] and trainer.epoch == 2
    assert trainer.stop_training and history.stop_reason == "stopped by a callback"


# ---- divergence -----------------------------------------------------------------------------
def test_divergence_stops_training_with_a_warning_and_restores_the_last_completed_epoch():
    x, y = sum_task(N=64)
    settings = dict(optimizer="sgd", lr=1e30, progress=False, seed=0)
    trainer = el.Trainer(el.LSTMModel(1, 8, 1, seed=0))
    with pytest.warns(
        RuntimeWarning,
        match=r"Trainer.fit: the (loss is (nan|inf)|weights became NaN or infinite).* training stopped and the weights were restored",
    ):
        history = trainer.fit(x, 1e3 * y, epochs=5, **settings)
    completed = len(history.epoch)
    assert completed < 5
    assert "training stopped" in history.stop_reason
    assert trainer.stop_training and trainer.stop_reason == history.stop_reason
    reference = el.LSTMModel(1, 8, 1, seed=0)
    if completed:
        el.Trainer(reference).fit(x, 1e3 * y, epochs=completed, **settings)
    for k, v in trainer.model.state_dict().items():
        assert np.isfinite(v).all() and np.array_equal(v, reference.state_dict()[k]), k


def test_nan_target_stops_training_at_the_first_batch_without_changing_the_weights():
    x, y = sum_task(N=32)
    y[3] = np.nan
    model = el.LSTMModel(1, 4, 1, seed=0)
    before = model.state_dict()
    with pytest.warns(RuntimeWarning, match="the loss is nan at epoch 1, batch 1"):
        history = el.Trainer(model).fit(x, y, epochs=3, progress=False, shuffle=False)
    assert history.history == {}
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k]), k


# ---- bad input --------------------------------------------------------------------------------
def assert_fit_refuses(model, match, x, y, **fit):
    """A new Trainer of `model`: fit(x, y, **fit) raises ValueError matching `match`, leaves the
    model's weights as they were and starts no run."""
    trainer = el.Trainer(model)
    before = trainer.model.state_dict()
    with pytest.raises(ValueError, match=match):
        trainer.fit(x, y, progress=False, **fit)
    assert trainer.history is None and trainer.optimizer is None and trainer.epoch == 0
    for k, v in trainer.model.state_dict().items():
        assert np.array_equal(v, before[k]), k


def test_fit_with_x_and_y_of_different_lengths_names_both_counts():
    x, y = sum_task(N=20)
    assert_fit_refuses(
        el.LSTMModel(1, 4, 1),
        "Trainer.fit: x and y must have the same number of samples, got 20 in x and 19 in y",
        x,
        y[:19],
    )


def test_fit_with_targets_of_the_wrong_width_names_the_expected_shape():
    x, y = sum_task(N=20)
    assert_fit_refuses(
        el.LSTMModel(1, 4, 2),
        r"Trainer.fit: y must have shape \(20, 2\) \(samples, outputs\), got \(20, 1\)",
        x,
        y,
    )


def test_fit_with_the_wrong_input_size_names_the_expected_shape():
    # x is checked by the model's own forward: its message, with the shape of the x given.
    x, y = sum_task(N=20)
    assert_fit_refuses(
        el.LSTMModel(3, 4, 1),
        r"^Trainer.fit: x of shape \(20, 8, 1\) does not fit the model \(checked on 1 of its samples\): LSTMModel.forward: x must have shape \(N, L, 3\) \(batch, steps, input_size\), got \(1, 8, 1\)$",
        x,
        y,
    )


def test_fit_with_validation_inputs_of_the_wrong_size_names_x_val():
    x, y = sum_task(N=20)
    assert_fit_refuses(
        el.LSTMModel(1, 4, 1),
        r"^Trainer.fit: x_val of shape \(5, 8, 2\) does not fit the model \(checked on 1 of its samples\): LSTMModel.forward: x must have shape \(N, L, 1\) \(batch, steps, input_size\), got \(1, 8, 2\)$",
        x,
        y,
        validation_data=(np.zeros((5, 8, 2)), y[:5]),
    )


def test_fit_with_labels_out_of_range_names_the_label_and_class_count():
    x, y = sign_task(N=20)
    y[5] = 7
    assert_fit_refuses(
        el.LSTMModel(2, 4, 2),
        r"Trainer.fit: y must be class indices in \[0, 2\) for 2 classes, got 7",
        x,
        y,
        loss="cross_entropy",
    )


def test_fit_with_mismatched_validation_data_names_x_val_and_y_val():
    x, y = sum_task(N=20)
    trainer = el.Trainer(el.LSTMModel(1, 4, 1))
    with pytest.raises(
        ValueError,
        match="Trainer.fit: x_val and y_val must have the same number of samples, got 5 in x_val and 4 in y_val",
    ):
        trainer.fit(x, y, validation_data=(x[:5], y[:4]), progress=False)
    assert trainer.history is None


def test_fit_with_lengths_of_the_wrong_count_names_the_expected_shape():
    x, y = sum_task(N=20)
    trainer = el.Trainer(el.LSTMModel(1, 4, 1))
    with pytest.raises(
        ValueError, match=r"Trainer.fit: lengths must have shape \(20,\).*, got \(19,\)"
    ):
        trainer.fit(x, y, lengths=np.ones(19, dtype=int), progress=False)
    assert trainer.history is None


@pytest.mark.parametrize("bad", [0, 9])
def test_fit_with_a_length_out_of_range_gives_the_models_range(bad):
    # The range is the model's: an LSTMModel reads each sequence's last step, so 1 to L.
    x, y = sum_task(N=20)
    lengths = np.full(20, 5)
    lengths[7] = bad
    assert_fit_refuses(
        el.LSTMModel(1, 4, 1, seed=0),
        rf"^Trainer.fit: x of shape \(20, 8, 1\) with lengths does not fit the model \(checked on 2 of its samples\): LSTMModel.forward: lengths must be in \[1, 8\] \(each sequence needs a last step\), got {bad}$",
        x,
        y,
        lengths=lengths,
    )


def test_fit_with_an_unknown_loss_or_bad_epochs_raises():
    x, y = sum_task(N=20)
    trainer = el.Trainer(el.LSTMModel(1, 4, 1))
    with pytest.raises(
        ValueError, match=r"^Trainer.fit: loss must be one of \['cross_entropy', 'mse'\]"
    ):
        trainer.fit(x, y, loss="hinge", progress=False)
    with pytest.raises(ValueError, match="Trainer.fit: epochs must be >= 0, got -1"):
        trainer.fit(x, y, epochs=-1, progress=False)


def test_fit_errors_name_fit_not_the_helpers_it_calls():
    x, y = sum_task(N=20)
    trainer = el.Trainer(el.LSTMModel(1, 4, 1))
    with pytest.raises(
        ValueError, match=r"^Trainer.fit: optimizer must be one of \['adam', 'adamw', 'sgd'\]"
    ):
        trainer.fit(x, y, optimizer="adagrad", progress=False)
    with pytest.raises(ValueError, match=r"^Trainer.fit: lr_schedule must be one of"):
        trainer.fit(x, y, lr_schedule="linear", progress=False)
    with pytest.raises(ValueError, match=r"^Trainer.evaluate: loss must be one of"):
        trainer.evaluate(x, y, loss="hinge")


def test_a_trainer_refuses_an_object_that_is_not_a_module_naming_what_it_lacks():
    with pytest.raises(
        TypeError, match=r"^Trainer: model must be a module .*; got list, which lacks \['train', "
    ):
        el.Trainer([1, 2])


def test_resume_without_a_previous_run_explains_what_is_missing():
    x, y = sum_task(N=20)
    with pytest.raises(ValueError, match="resume=True but this trainer has no run to resume"):
        el.Trainer(el.LSTMModel(1, 4, 1)).fit(x, y, resume=True, progress=False)


def test_resume_continues_the_same_trainers_run_and_a_new_trainer_has_none():
    x, y = sum_task(N=20)
    model = el.LSTMModel(1, 4, 1)
    trainer = el.Trainer(model)
    trainer.fit(x, y, epochs=1, batch_size=8, progress=False)
    history = trainer.fit(x, y, epochs=2, batch_size=8, resume=True, progress=False)
    assert history.epoch == [0, 1, 2] and trainer.epoch == 3
    with pytest.raises(ValueError, match="resume=True but this trainer has no run to resume"):
        el.Trainer(model).fit(x, y, epochs=1, batch_size=8, resume=True, progress=False)


def test_resume_with_another_batch_size_names_the_original_setting():
    x, y = sum_task(N=20)
    trainer = el.Trainer(el.LSTMModel(1, 4, 1))
    trainer.fit(x, y, epochs=1, batch_size=8, progress=False)
    with pytest.raises(
        ValueError, match="resume=True continues a run that used batch_size=8, got batch_size=4"
    ):
        trainer.fit(x, y, epochs=1, batch_size=4, resume=True, progress=False)
    assert trainer.epoch == 1


# ---- examples -----------------------------------------------------------------------------
def test_digits_example_reaches_more_than_90_percent_held_out_accuracy():
    digits = load_example("digits_classification")
    _, history, accuracy = digits.train(progress=False)
    assert accuracy > 0.90
    assert len(history.history["val_accuracy"]) >= 1


# Quantized (el.quantize, tests/test_quantized.py): trained models keep their accuracy.
def test_the_digits_classifier_loses_at_most_half_a_point_of_accuracy():
    digits = load_example("digits_classification")
    model, _, accuracy = digits.train(progress=False)
    _, x_test, _, y_test = digits.load()
    for precision in ("int8", "bfloat16"):
        predicted = el.quantize(model, precision).predict(x_test).argmax(axis=1)
        quantized = float(np.mean(predicted == y_test))
        assert quantized >= accuracy - 0.005, (precision, accuracy, quantized)


def test_the_airline_forecast_rmse_changes_by_at_most_3_percent():
    from eigenlstm import data, forecast

    series = data.load_dataset("airline")
    model, report = forecast.train_forecaster(series, progress=False)
    n = len(series)
    start = n - int(model.metadata["test_size"])
    for precision in ("int8", "bfloat16"):
        q = el.quantize(model, precision)
        _, predicted, _, _, actual = forecast.holdout_forecasts(
            q, series.inputs, start, n, report.season
        )
        rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
        assert abs(rmse / report.rmse - 1) <= 0.03, (precision, report.rmse, rmse)


def test_char_lm_example_decodes_the_zen_and_its_loss_falls():
    char_lm = load_example("char_lm")
    text = char_lm.zen_text()
    assert text.startswith("The Zen of Python, by Tim Peters")
    model, vocab, history = char_lm.train(epochs=3, progress=False)
    loss = history.history["loss"]
    assert loss[-1] < loss[0] < np.log(len(vocab)) + 0.5
    sample = char_lm.sample(model, vocab, "Beautiful is ", length=20)
    assert sample.startswith("Beautiful is ") and len(sample) == 33


def test_char_regularized_example_holds_out_the_end_of_the_text_and_learns():
    example = load_example("char_regularized")
    text = example.corpus()
    (x, y), (xv, yv), vocab = example.split(text)
    V, W = len(vocab), example.WINDOW
    assert x.shape[1:] == (W, V) and xv.shape == (len(yv), W, V)
    # the held-out labels are the text's last characters, which no training label reaches
    cut = int(len(text) * (1 - example.HELD_OUT))
    assert len(yv) == len(text) - cut
    assert "".join(vocab[i] for i in yv) == text[cut:]
    assert "".join(vocab[i] for i in x[-1].argmax(axis=1)) + vocab[y[-1]] in text[:cut]
    options = {"layer_norm": True, "zoneout": example.ZONEOUT}
    model, curve = example.train(options, ((x, y), (xv, yv)), vocab, epochs=1)
    assert model.lstm.layer_norm and model.lstm.zoneout == example.ZONEOUT
    # one epoch already beats guessing uniformly among the characters, on text it never saw
    assert len(curve) == 1 and curve[0] < np.log(V) - 1.0
