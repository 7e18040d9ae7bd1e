"""Tests of checkpoints: round trip, bitwise-exact resume, atomic writes and bad files.

The resume witness is the same run without interruption: 4 epochs straight must equal
2 epochs + save + load + 2 epochs, bit for bit, with dropout, shuffling, a schedule and Adam.
"""

import json
import os
import zipfile

import numpy as np
import pytest

import checkpoint_file
import eigenlstm as el
from checkpoint_file import assert_load_refuses
from eigenlstm.io import checkpoint
from training_task import FIT, new_model, task


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k


@pytest.fixture
def trained(tmp_path):
    """A trainer after 2 epochs, and the checkpoint of its model and run."""
    x, y = task()
    trainer = el.Trainer(new_model())
    trainer.fit(x, y, epochs=2, seed=3, **FIT)
    path = tmp_path / "model.npz"
    trainer.save(path, metadata={"note": "two epochs"})
    return trainer, path


# ---- round trip and resume ---------------------------------------------------------------------
def test_load_returns_the_same_config_weights_metadata_and_predictions(trained):
    trainer, path = trained
    model = trainer.model
    loaded = el.load(path)
    assert type(loaded) is el.LSTMModel
    assert loaded.config() == model.config()
    assert loaded.metadata == {"note": "two epochs"}
    assert_same_weights(loaded, model)
    x, _ = task(N=5, seed=1)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.lstm.dropout_state == model.lstm.dropout_state


def test_trainer_load_returns_the_model_and_the_run_of_a_trainer_save(trained):
    trainer, path = trained
    loaded = el.Trainer.load(path)
    assert isinstance(loaded, el.Trainer) and loaded.epoch == 2
    assert loaded.model.metadata == {"note": "two epochs"}
    assert_same_weights(loaded.model, trainer.model)
    assert loaded.history.history == trainer.history.history
    assert loaded.history.epoch == trainer.history.epoch == [0, 1]
    assert (
        loaded.optimizer.state_dict()["step_count"] == trainer.optimizer.state_dict()["step_count"]
    )
    assert type(loaded.optimizer) is type(trainer.optimizer)
    assert type(loaded.scheduler) is type(trainer.scheduler)
    assert loaded.scheduler.state_dict() == trainer.scheduler.state_dict()


def test_io_load_with_training_returns_the_model_and_the_run_state(trained):
    trainer, path = trained
    model, run = el.io.load(path, with_training=True)
    assert_same_weights(model, trainer.model)
    expected = trainer.state_dict()
    assert run["epoch"] == expected["epoch"] == 2
    assert run["history"] == expected["history"]
    assert run["settings"] == expected["settings"]
    assert run["optimizer"]["step_count"] == expected["optimizer"]["step_count"]
    assert sorted(run["optimizer"]["state"]) == sorted(expected["optimizer"]["state"])
    for buffer, named in expected["optimizer"]["state"].items():
        for name, value in named.items():
            assert np.array_equal(run["optimizer"]["state"][buffer][name], value), (buffer, name)


def test_resume_after_save_and_load_is_bitwise_identical_to_training_straight_through(tmp_path):
    x, y = task()
    straight = el.Trainer(new_model())
    h_straight = straight.fit(x, y, epochs=4, seed=3, **FIT)

    first = el.Trainer(new_model())
    first.fit(x, y, epochs=2, seed=3, **FIT)
    first.save(tmp_path / "half.npz")
    del first
    resumed = el.Trainer.load(tmp_path / "half.npz")
    h_resumed = resumed.fit(x, y, epochs=2, resume=True, **FIT)

    assert_same_weights(resumed.model, straight.model)
    assert h_resumed.history == h_straight.history
    assert h_resumed.epoch == [0, 1, 2, 3]
    assert resumed.optimizer.lr == straight.optimizer.lr
    assert resumed.model.lstm.dropout_state == straight.model.lstm.dropout_state
    for a, b in zip(resumed.optimizer.state, straight.optimizer.state):
        for key in a:
            assert np.array_equal(a[key], b[key]), key


def test_resume_in_the_same_process_equals_training_straight_through():
    x, y = task()
    straight = el.Trainer(new_model())
    straight.fit(x, y, epochs=3, seed=1, **FIT)
    parts = el.Trainer(new_model())
    parts.fit(x, y, epochs=1, seed=1, **FIT)
    parts.fit(x, y, epochs=2, resume=True, **FIT)
    assert_same_weights(parts.model, straight.model)


def test_optimizer_state_is_stored_under_torch_names_and_shapes(trained):
    _, path = trained
    with np.load(path) as z:
        files = set(z.files)
        assert z["optimizer/exp_avg/lstm.weight_ih_l0"].shape == (4 * 8, 3)
        assert z["optimizer/exp_avg_sq/fc.bias"].shape == (2,)
        meta = json.loads(str(z["meta"][()]))
    assert {"weights/lstm.weight_hh_l1", "weights/fc.weight"} <= files
    assert meta["format_version"] == checkpoint.MODEL_VERSIONS["LSTMModel"]
    assert meta["config"]["num_layers"] == 2 and meta["training"]["epoch"] == 2


def test_an_untrained_model_saves_and_loads_without_training_state(tmp_path, trained):
    model = el.LSTMModel(2, 3, 1, dtype=np.float64, seed=0)
    el.save(model, tmp_path / "fresh.npz")
    loaded = el.load(tmp_path / "fresh.npz")
    assert loaded.dtype == np.float64
    assert_same_weights(loaded, model)
    assert el.io.load(tmp_path / "fresh.npz", with_training=True)[1] is None
    assert el.Trainer.load(tmp_path / "fresh.npz").optimizer is None
    # el.save writes the model only, even the model of a trained run
    trainer, _ = trained
    el.save(trainer.model, tmp_path / "model_only.npz")
    assert el.io.load(tmp_path / "model_only.npz", with_training=True)[1] is None


def test_an_untrained_trainer_saves_its_model_without_training_state(tmp_path):
    trainer = el.Trainer(el.LSTMModel(2, 3, 1, seed=0))
    trainer.save(tmp_path / "fresh.npz")
    loaded = el.Trainer.load(tmp_path / "fresh.npz")
    assert loaded.optimizer is None and loaded.history is None and loaded.epoch == 0
    assert_same_weights(loaded.model, trainer.model)


# ---- atomic writes ----------------------------------------------------------------------------
def test_a_failure_during_save_leaves_the_previous_file_intact_and_no_temp_file(
    trained, monkeypatch
):
    trainer, path = trained
    before = path.read_bytes()

    def crash_midway(f, array, *args, **kwargs):  # in the first array's data
        f.write(b"\x93NUMPY partial data")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np.lib.format, "write_array", crash_midway)
    trainer.fit(*task(), epochs=1, resume=True, **FIT)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    with pytest.raises(OSError, match="disk full"):
        el.save(trainer.model, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["model.npz"]
    assert el.Trainer.load(path).history.epoch == [0, 1]


def test_save_refuses_nan_weights_and_keeps_the_good_checkpoint(trained):
    trainer, path = trained
    model = trainer.model
    before = path.read_bytes()
    state = model.state_dict()
    state["fc.weight"][0, 0] = np.nan
    model.load_state_dict(state)
    with pytest.raises(
        ValueError,
        match=r"eigenlstm.save: refusing to write .*model.npz: weights \['fc.weight'\] hold NaN",
    ):
        trainer.save(path)
    with pytest.raises(
        ValueError,
        match=r"eigenlstm.save: refusing to write .*model.npz: weights \['fc.weight'\] hold NaN",
    ):
        el.save(model, path)
    assert path.read_bytes() == before


# ---- bad files --------------------------------------------------------------------------------
def test_loading_a_truncated_checkpoint_raises_value_error_naming_the_file(trained):
    _, path = trained
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_load_refuses(path, r"is not a valid eigenlstm checkpoint \(corrupted or truncated")


def test_loading_a_checkpoint_with_flipped_bytes_raises_value_error_naming_the_file(trained):
    _, path = trained
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("weights/lstm.weight_ih_l0.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside the array bytes: the CRC no longer matches
    path.write_bytes(bytes(data))
    assert_load_refuses(path, "is not a valid eigenlstm checkpoint")


@pytest.mark.parametrize("content", [b"", b"hello, not a zip file\n"])
def test_loading_an_empty_or_foreign_file_raises_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    assert_load_refuses(path, "is not a valid eigenlstm checkpoint")


def test_loading_an_npz_without_a_header_says_it_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="it has no 'meta' entry"):
        el.load(path)


def rewrite_meta(path, signed=True, **changes):
    """Rewrite the header of a checkpoint; with ``signed``, with a valid checksum."""
    meta, arrays = checkpoint_file.contents(path)
    meta.update(changes)
    checkpoint_file.write(path, meta, arrays, signed=signed)


# A newer version may check its contents differently: without this version's checksum too, the
# useful message is "upgrade", not "corrupted".
@pytest.mark.parametrize("signed", [True, False], ids=["with_checksum", "without_checksum"])
def test_loading_a_checkpoint_from_a_newer_format_version_asks_to_upgrade(trained, signed):
    _, path = trained
    new, current = checkpoint.FORMAT_VERSION + 1, checkpoint.FORMAT_VERSION
    rewrite_meta(path, signed=signed, format_version=new)
    assert_load_refuses(
        path,
        rf"has checkpoint format version {new}, newer than version {current} that this eigenlstm reads; upgrade eigenlstm",
    )


def test_loading_a_checkpoint_with_inconsistent_weights_names_the_file_and_the_key(trained):
    _, path = trained
    rewrite_meta(path, config=dict(new_model().config(), hidden_size=9))
    assert_load_refuses(
        path,
        r"is not a valid eigenlstm checkpoint \(inconsistent contents: .*lstm.weight_ih_l0 must have shape",
    )


def test_loading_a_missing_file_raises_file_not_found_naming_it(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="eigenlstm.load: no such checkpoint file: .*nope.npz"
    ):
        el.load(tmp_path / "nope.npz")
