"""The checkpoint format: its checksum catches every damaged byte, numpy still reads it, and
files of the previous format version (1, before the checksum) still load and resume."""

import pathlib

import numpy as np
import pytest

import eigenlstm as el
from checkpoint_file import DIGEST_LEN, assert_load_refuses, contents, write
from eigenlstm.io.checkpoint import MODEL_VERSIONS

DATA = pathlib.Path(__file__).parent / "data"
RNG = np.random.default_rng(0)
X = RNG.standard_normal((32, 5, 3))
Y = X.sum(axis=1)[:, :2]
# What tests/data/checkpoint_v1_*.npz were made from, with eigenlstm 0.1.0 (format version 1):
# the model saved untrained, and saved after two epochs of this run.
CONFIG = dict(input_size=3, hidden_size=6, output_size=2, num_layers=2, dropout=0.25, seed=0)
RUN = dict(batch_size=8, lr=1e-2, progress=False, seed=0, lr_schedule="cosine")


def _saved_run(path):
    trainer = el.Trainer(el.LSTMModel(**CONFIG))
    trainer.fit(X, Y, epochs=1, **RUN)
    trainer.save(path)
    return path.read_bytes()


@pytest.mark.slow  # one load per byte of the file
def test_every_single_byte_flip_of_a_checkpoint_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "run.npz"
    data = _saved_run(path)
    for i in range(len(data)):
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
        assert_load_refuses(path, "is not a valid eigenlstm checkpoint")


def test_a_checkpoint_without_its_checksum_is_refused(tmp_path):
    path = tmp_path / "run.npz"
    data = _saved_run(path)
    comment_start = len(data) - DIGEST_LEN
    # The same archive with an empty comment (what a zip tool that drops comments writes):
    # the two bytes before the comment hold its length.
    stripped = data[: comment_start - 2] + b"\0\0"
    path.write_bytes(stripped)
    assert set(np.load(path).files) >= {"meta"}  # a valid zip, for numpy
    assert_load_refuses(
        path,
        r"is not a valid eigenlstm checkpoint \(corrupted or truncated: its checksum is missing\)",
    )


def test_numpy_reads_a_checkpoint_as_any_npz(tmp_path):
    path = tmp_path / "model.npz"
    model = el.LSTMModel(**CONFIG)
    el.save(model, path)
    with np.load(path) as z:
        assert np.array_equal(
            z["weights/lstm.weight_ih_l0"], model.state_dict()["lstm.weight_ih_l0"]
        )
        # a float model is written as version 2, which releases before version 3 read
        assert f'"format_version": {MODEL_VERSIONS["LSTMModel"]}' in str(z["meta"][()])


def test_a_version_1_model_file_loads_with_its_weights_metadata_and_dropout_stream():
    model = el.load(DATA / "checkpoint_v1_model.npz")
    fresh = el.LSTMModel(**CONFIG)  # seeded: the weights the file was written with
    assert model.config() == fresh.config()
    for key, value in fresh.state_dict().items():
        assert np.array_equal(model.state_dict()[key], value), key
    assert model.get_extra_state() == fresh.get_extra_state()
    assert model.metadata == {"note": "written by format version 1"}


def _paths(meta, prefix=""):
    """Every key path of a nested dict: its layout without the values."""
    out = set()
    for key, value in meta.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _paths(value, f"{prefix}{key}.")
    return out


def test_a_version_1_training_file_loads_its_run_and_trains_on():
    path = DATA / "checkpoint_v1_trained.npz"
    meta, arrays = contents(path)
    resumed = el.Trainer.load(path)
    assert resumed.epoch == 2 and len(resumed.history.history["loss"]) == 2
    for key, value in resumed.model.state_dict().items():
        assert np.array_equal(value, arrays[f"weights/{key}"]), key
    for i, (name, _) in enumerate(resumed.model.named_parameters()):
        for buffer in ("exp_avg", "exp_avg_sq"):
            want = arrays[f"optimizer/{buffer}/{name}"]
            assert np.array_equal(resumed.optimizer.state[i][buffer], want), (buffer, name)
    stream = resumed.model.get_extra_state()["lstm.dropout_state"]
    assert [str(v) for v in stream] == meta["dropout_state"]  # the file keeps them as text
    resumed.fit(X, Y, epochs=1, resume=True, **RUN)
    assert resumed.epoch == 3 and len(resumed.history.history["loss"]) == 3


def test_a_version_1_training_run_resumes_bitwise_as_if_never_saved(tmp_path):
    # The file of the previous release holds two epochs computed by its kernels, which round
    # differently from today's at some sizes; the same run made now and written in version 1's
    # layout (the same entries and meta as that file, no checksum) resumes as if never saved.
    trainer = el.Trainer(el.LSTMModel(**CONFIG))
    trainer.fit(X, Y, epochs=2, **RUN)
    trainer.save(tmp_path / "v2.npz")
    meta, arrays = contents(tmp_path / "v2.npz")
    meta["format_version"] = 1
    old_meta, old_arrays = contents(DATA / "checkpoint_v1_trained.npz")
    assert _paths(meta) == _paths(old_meta) and set(arrays) == set(old_arrays)
    write(tmp_path / "v1.npz", meta, arrays, signed=False)

    resumed = el.Trainer.load(tmp_path / "v1.npz")
    resumed.fit(X, Y, epochs=2, resume=True, **RUN)
    trainer.fit(X, Y, epochs=2, resume=True, **RUN)  # the same run kept in memory
    for key, value in trainer.model.state_dict().items():
        assert np.array_equal(resumed.model.state_dict()[key], value), key
    assert resumed.history.history == trainer.history.history
