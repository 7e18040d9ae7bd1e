"""Reliability of training: Ctrl-C during fit, ModelCheckpoint, interrupted saves, bad files.

The witness for "a consistent state" is the uninterrupted run: a trainer interrupted during
epoch k must hold exactly what a checkpoint saved (``Trainer.save``) at the end of epoch k-1 of
the straight run holds (weights, optimizer, schedule, RNG, dropout stream, history), and
resuming it must end bit for bit where the straight run ends. Checkpoint files are compared
entry by entry.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import eigenlstm as el
from checkpoint_file import assert_load_refuses, contents, sign
from checkpoint_file import write as write_checkpoint
from eigenlstm.io import checkpoint

TESTS = pathlib.Path(__file__).resolve().parent


# the task and model (the child process of the SIGINT test reaches them through this module)
import training_task  # noqa: E402
from training_task import new_model, task  # noqa: E402

# Every piece of training state is in play (training_task.FIT), and seeded shuffling.
FIT = dict(training_task.FIT, seed=3)
BATCHES = 5  # 80 samples / 16


# ---- comparing states through checkpoints -----------------------------------------------------
def assert_same_checkpoint(a, b):
    meta_a, arrays_a = contents(a)
    meta_b, arrays_b = contents(b)
    assert meta_a == meta_b
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        assert np.array_equal(arrays_a[k], arrays_b[k]), k


def assert_trainer_state_is(trainer, reference_path, tmp_path):
    """The trainer's model and run, saved, equal the reference checkpoint entry by entry."""
    here = tmp_path / "state_of_trainer.npz"
    trainer.save(here)
    assert_same_checkpoint(here, reference_path)
    here.unlink()


class Recorder(el.Callback):
    """Saves the run at the start of fit (``e0.npz``) and after each epoch (``e{k}.npz``)."""

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)

    def on_train_begin(self, logs=None):
        self.trainer.save(self.folder / "e0.npz")

    def on_epoch_end(self, epoch, logs=None):
        self.trainer.save(self.folder / f"e{epoch + 1}.npz")


def straight_run(folder, epochs, N=80):
    """Train without interruption; return the paths of the states at each epoch boundary."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = task(N)
    el.Trainer(new_model()).fit(x, y, epochs=epochs, callbacks=[Recorder(folder)], **FIT)
    return [folder / f"e{k}.npz" for k in range(epochs + 1)]


@pytest.fixture(scope="module")
def one_thread():
    # The child process uses one engine thread too, so the runs compare bit for bit.
    saved = el.get_num_threads()
    el.set_num_threads(1)
    yield
    el.set_num_threads(saved)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, one_thread):
    return straight_run(tmp_path_factory.mktemp("straight"), 4)


class Interrupt(el.Callback):
    """Raises ``exc`` from hook ``where`` at 0-based ``epoch`` (and ``batch`` for on_batch_end)."""

    def __init__(self, where, epoch, batch=None, exc=KeyboardInterrupt):
        self.where, self.epoch, self.batch, self.exc = where, epoch, batch, exc
        self.current = None

    def on_epoch_begin(self, epoch):
        self.current = epoch
        if self.where == "on_epoch_begin" and epoch == self.epoch:
            raise self.exc()

    def on_batch_end(self, batch, logs=None):
        if self.where == "on_batch_end" and (self.current, batch) == (self.epoch, self.batch):
            raise self.exc()

    def on_epoch_end(self, epoch, logs=None):
        if self.where == "on_epoch_end" and epoch == self.epoch:
            raise self.exc()


@pytest.fixture
def bars(monkeypatch):
    """Records every progress bar fit opens, and whether it was closed."""
    import tqdm.auto

    opened = []

    class RecordingBar(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.was_closed = False
            opened.append(self)

        def close(self):
            self.was_closed = True
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    return opened


# ---- Ctrl-C in a real process ---------------------------------------------------------------
# 800 samples: an epoch (50 batches, ~50 ms) takes longer than a save. A SIGINT sent as soon
# as the first file appears mostly lands in the end of that save (its fsync) or early in epoch
# 2; one sent 20 ms later lands mid-epoch (the engine, the optimizer step, clipping, ...).
CHILD_N = 800
# The child installs Python's own Ctrl-C handler first: a process started as a background job
# of a non-interactive shell (as some CI runners start the suite) inherits SIGINT ignored, and
# Python then leaves it ignored; the test is about what Ctrl-C does to a Python program.
CHILD = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
import sys
sys.path.insert(0, sys.argv[1])
import eigenlstm as el
import test_reliability_training as t
el.set_num_threads(1)
x, y = t.task(t.CHILD_N)
trainer = el.Trainer(t.new_model())
try:
    trainer.fit(x, y, epochs=100_000, callbacks=[el.ModelCheckpoint(sys.argv[2])], **t.FIT)
except KeyboardInterrupt:
    trainer.save(sys.argv[3])  # the rolled-back state, for the test to check
    raise
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.parametrize("delay", [0.0, 0.02], ids=["at_once", "20ms_later"])
def test_sigint_during_fit_ends_the_process_with_keyboard_interrupt_and_an_epoch_end_checkpoint(
    tmp_path, one_thread, delay
):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    run_dir.mkdir()
    out_dir.mkdir()
    ckpt, after = run_dir / "ckpt.npz", out_dir / "after.npz"
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(TESTS), str(ckpt), str(after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ckpt.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ckpt.exists(), (
            f"no checkpoint appeared; child stderr:\n{p.stderr.read() if p.poll() is not None else ''}"
        )
        time.sleep(delay)
        os.kill(p.pid, signal.SIGINT)
        _, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()

    # The process stopped as Python programs stop on Ctrl-C.
    assert p.returncode == -signal.SIGINT, stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    # No temp file left, whatever the SIGINT interrupted (possibly a save).
    assert sorted(os.listdir(run_dir)) == ["ckpt.npz"]

    saved = el.Trainer.load(ckpt)
    k = len(saved.history.epoch)
    rolled_back = el.Trainer.load(after)
    k_after = len(rolled_back.history.epoch)
    assert 1 <= k <= k_after  # the model is at the last completed epoch; the file at most there
    assert saved.history.epoch == list(range(k))
    reference = straight_run(tmp_path / "straight", k_after + 1, N=CHILD_N)
    assert_same_checkpoint(ckpt, reference[k])  # an epoch-end state, complete
    assert_same_checkpoint(after, reference[k_after])

    # And it resumes exactly.
    saved.fit(*task(CHILD_N), epochs=1, resume=True, **FIT)
    assert_trainer_state_is(saved, reference[k + 1], tmp_path)


# ---- Ctrl-C in process: roll back to the last completed epoch -------------------------------
@pytest.mark.parametrize(
    "where, epoch, batch, completed",
    [
        ("on_batch_end", 0, 1, 0),  # in the first epoch: back to the start of training
        ("on_epoch_begin", 2, None, 2),
        ("on_batch_end", 2, 2, 2),  # mid-epoch: the partial epoch 3 is undone
        ("on_epoch_end", 2, None, 3),  # after epoch 3 completed: it is kept
    ],
)
def test_keyboard_interrupt_from_a_callback_rolls_back_to_the_last_completed_epoch_and_resume_is_exact(
    tmp_path, straight, bars, where, epoch, batch, completed
):
    x, y = task()
    trainer = el.Trainer(new_model())
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            x, y, epochs=4, callbacks=[Interrupt(where, epoch, batch)], **dict(FIT, progress=True)
        )

    assert len(bars) == 1 and bars[0].was_closed
    assert_trainer_state_is(trainer, straight[completed], tmp_path)
    done = f"the end of epoch {completed}" if completed else "the start of training"
    assert trainer.stop_training
    assert trainer.stop_reason == (
        f"Trainer.fit: interrupted (KeyboardInterrupt) during epoch "
        f"{epoch + 1}; the model was rolled back to {done}"
    )
    assert np.isfinite(trainer.model.predict(x[:4])).all()

    history = trainer.fit(x, y, epochs=4 - completed, resume=True, **FIT)
    assert history.epoch == [0, 1, 2, 3]
    assert_trainer_state_is(trainer, straight[4], tmp_path)


def test_keyboard_interrupt_halfway_through_an_optimizer_step_leaves_no_partial_update(
    tmp_path, straight
):
    x, y = task()
    trainer = el.Trainer(new_model())
    opt = el.Adam(trainer.model, lr=FIT["lr"])
    update = opt._update

    def interrupted_update(i, param, grad):
        if opt.step_count == BATCHES + 3 and i == 1:  # epoch 2, batch 3: lstm weights moved, fc not
            raise KeyboardInterrupt
        update(i, param, grad)

    opt._update = interrupted_update
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, epochs=4, **dict(FIT, optimizer=opt))
    del opt._update
    assert trainer.optimizer is opt and opt.step_count == BATCHES
    assert_trainer_state_is(trainer, straight[1], tmp_path)
    trainer.fit(x, y, epochs=3, resume=True, **FIT)
    assert_trainer_state_is(trainer, straight[4], tmp_path)


def test_any_exception_inside_the_loop_rolls_back_the_same_way(tmp_path, straight):
    x, y = task()
    trainer = el.Trainer(new_model())
    with pytest.raises(ValueError):
        trainer.fit(
            x, y, epochs=4, callbacks=[Interrupt("on_batch_end", 2, 1, exc=ValueError)], **FIT
        )
    assert trainer.stop_reason == (
        "Trainer.fit: stopped by ValueError during epoch 3; the model "
        "was rolled back to the end of epoch 2"
    )
    assert_trainer_state_is(trainer, straight[2], tmp_path)


@pytest.fixture
def default_sigint_handler():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("first", [KeyboardInterrupt, RuntimeError])
def test_a_second_ctrl_c_during_the_rollback_is_held_until_the_model_is_whole(
    tmp_path, straight, default_sigint_handler, first
):
    x, y = task()
    model = new_model()
    trainer = el.Trainer(model)
    set_extra_state = model.set_extra_state
    calls = []

    def set_extra_state_with_ctrl_c(state):  # called by the rollback, after the weights
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs here
        set_extra_state(state)

    model.set_extra_state = set_extra_state_with_ctrl_c
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit(x, y, epochs=4, callbacks=[Interrupt("on_batch_end", 1, 2, exc=first)], **FIT)
    del model.set_extra_state
    assert calls == [1]  # the second Ctrl-C did arrive during the rollback
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if first is RuntimeError:  # the held Ctrl-C is raised, chained to the original error
        assert isinstance(info.value.__cause__, RuntimeError)
    assert_trainer_state_is(trainer, straight[1], tmp_path)


# ---- ModelCheckpoint --------------------------------------------------------------------------
def test_model_checkpoint_saves_every_epoch_and_the_file_resumes_exactly(tmp_path, straight):
    x, y = task()
    path = tmp_path / "run.npz"
    save = el.ModelCheckpoint(path)
    el.Trainer(new_model()).fit(x, y, epochs=3, callbacks=[save], **FIT)
    assert save.last_saved_epoch == 2
    assert_same_checkpoint(path, straight[3])

    resumed = el.Trainer.load(path)
    resumed.fit(x, y, epochs=1, resume=True, callbacks=[el.ModelCheckpoint(path)], **FIT)
    assert_same_checkpoint(path, straight[4])


def test_keyboard_interrupt_during_a_model_checkpoint_save_keeps_the_previous_file(
    tmp_path, straight, monkeypatch
):
    x, y = task()
    path = tmp_path / "run.npz"
    write_array = np.lib.format.write_array

    class InterruptTheThirdSave(el.Callback):  # runs just before ModelCheckpoint's hook
        armed = False

        def on_epoch_end(self, epoch, logs=None):
            self.armed = epoch == 2

    arm = InterruptTheThirdSave()

    def write_array_interrupted_in_the_third_save(f, array, *args, **kwargs):
        if arm.armed:
            f.write(b"\x93NUMPY partial data")
            raise KeyboardInterrupt
        write_array(f, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array_interrupted_in_the_third_save)
    trainer = el.Trainer(new_model())
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, epochs=4, callbacks=[arm, el.ModelCheckpoint(path)], **FIT)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]
    assert_same_checkpoint(path, straight[2])  # the save of epoch 3 never landed
    assert_trainer_state_is(trainer, straight[3], tmp_path)  # but epoch 3 had completed


def mark(model, value):
    model.metadata = {"mark": value}


def mark_of(path):
    return el.load(path).metadata.get("mark")


@pytest.mark.parametrize(
    "mode, values, saved",
    [
        ("min", [3.0, 2.0, 2.5, float("nan"), 1.0, 1.0], [0, 1, 4]),
        ("max", [0.5, 0.7, 0.6, float("nan"), 0.9, 0.9], [0, 1, 4]),
    ],
)
def test_model_checkpoint_with_save_best_only_saves_strict_improvements_only(
    tmp_path, mode, values, saved
):
    path = tmp_path / "best.npz"
    model = new_model()
    cb = el.ModelCheckpoint(path, monitor="val_metric", mode=mode, save_best_only=True)
    cb.set_trainer(el.Trainer(model))
    cb.on_train_begin({})
    written = []
    for epoch, value in enumerate(values):
        mark(model, epoch)
        cb.on_epoch_end(epoch, {"loss": 1.0, "val_metric": value})
        if path.exists() and mark_of(path) not in written:
            written.append(mark_of(path))
    assert written == saved
    assert cb.last_saved_epoch == saved[-1] and cb.best_epoch == saved[-1]
    assert cb.best == values[saved[-1]]


def test_model_checkpoint_on_resume_starts_from_the_best_value_in_the_history(tmp_path):
    x, y = task()
    xv, yv = task(N=16, seed=1)
    path = tmp_path / "best.npz"
    trainer = el.Trainer(new_model())
    h = trainer.fit(
        x,
        y,
        epochs=3,
        validation_data=(xv, yv),
        callbacks=[el.ModelCheckpoint(path, monitor="val_loss", save_best_only=True)],
        **FIT,
    )
    best = min(h.history["val_loss"])
    assert el.Trainer.load(path).history.history["val_loss"][-1] == best

    loaded = el.Trainer.load(path)
    cb = el.ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    cb.set_trainer(loaded)
    cb.on_train_begin({})
    assert cb.best == best and cb.best_epoch == h.history["val_loss"].index(best)
    before = path.read_bytes()
    mark(loaded.model, "worse")
    cb.on_epoch_end(len(loaded.history.epoch), {"loss": 1.0, "val_loss": best * 1.5})
    assert path.read_bytes() == before
    mark(loaded.model, "better")
    cb.on_epoch_end(len(loaded.history.epoch), {"loss": 1.0, "val_loss": best / 2})
    assert mark_of(path) == "better"

    # A fresh (not resumed) fit starts a new run: its first epoch is the best so far.
    fresh = el.ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    el.Trainer(new_model()).fit(x, y, epochs=1, validation_data=(xv, yv), callbacks=[fresh], **FIT)
    assert fresh.last_saved_epoch == 0 and len(el.Trainer.load(path).history.epoch) == 1


def test_model_checkpoint_never_writes_nan_weights_over_a_good_file(tmp_path):
    x, y = task()
    path = tmp_path / "run.npz"
    model = new_model()
    cb = el.ModelCheckpoint(path)
    el.Trainer(model).fit(x, y, epochs=1, callbacks=[cb], **FIT)
    before = path.read_bytes()
    state = model.state_dict()
    state["fc.bias"][0] = np.inf
    model.load_state_dict(state)
    with pytest.raises(
        ValueError,
        match=r"eigenlstm.save: refusing to write .*run.npz: weights \['fc.bias'\] hold NaN",
    ):
        cb.on_epoch_end(1, {"loss": 1.0})
    assert path.read_bytes() == before and cb.last_saved_epoch == 0


def test_a_diverging_run_with_model_checkpoint_keeps_the_last_finite_epoch_on_disk(
    tmp_path, straight
):
    class PoisonInEpoch3(el.Callback):
        def on_epoch_begin(self, epoch):
            self.epoch = epoch

        def on_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == (2, 0):
                state = self.model.state_dict()
                state["fc.bias"][:] = np.nan
                self.model.load_state_dict(state)

    x, y = task()
    path = tmp_path / "run.npz"
    trainer = el.Trainer(new_model())
    with pytest.warns(RuntimeWarning, match="the loss is nan at epoch 3, batch 2"):
        trainer.fit(x, y, epochs=4, callbacks=[PoisonInEpoch3(), el.ModelCheckpoint(path)], **FIT)
    assert_same_checkpoint(path, straight[2])


def test_model_checkpoint_validates_its_arguments_and_the_monitored_metric(tmp_path):
    with pytest.raises(
        TypeError, match="ModelCheckpoint: path must be a str or os.PathLike, got int"
    ):
        el.ModelCheckpoint(3)
    with pytest.raises(
        ValueError, match="ModelCheckpoint: mode must be 'min' or 'max', got 'auto'"
    ):
        el.ModelCheckpoint(tmp_path / "a.npz", monitor="val_loss", mode="auto")
    with pytest.raises(ValueError, match="ModelCheckpoint: save_best_only=True needs a monitor"):
        el.ModelCheckpoint(tmp_path / "a.npz", save_best_only=True)
    x, y = task(N=16)
    cb = el.ModelCheckpoint(tmp_path / "a.npz", monitor="val_loss", save_best_only=True)
    with pytest.raises(
        ValueError,
        match=r"^ModelCheckpoint: monitor must be one of the epoch metrics \['loss'\]; pass validation_data to fit, got 'val_loss'$",
    ):
        el.Trainer(new_model()).fit(x, y, epochs=1, callbacks=[cb], **FIT)
    assert not (tmp_path / "a.npz").exists()


# ---- saves interrupted at every step of the write ------------------------------------------
@pytest.fixture
def saved_run(tmp_path):
    trainer = el.Trainer(new_model())
    trainer.fit(*task(), epochs=1, **FIT)
    path = tmp_path / "model.npz"
    trainer.save(path)
    trainer.fit(*task(), epochs=1, resume=True, **FIT)  # the next save would differ
    return trainer, path


def _after_creating_the_temp_file(monkeypatch):
    def open_then_ctrl_c(*args, **kwargs):
        open(*args, **kwargs).close()  # created, then Ctrl-C before the name is used
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "open", open_then_ctrl_c, raising=False)


def _halfway_through_the_data(monkeypatch):
    def write_array_half(f, array, *args, **kwargs):
        f.write(b"\x93NUMPY" + bytes(1000))
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", write_array_half)


def _at_fsync(monkeypatch):
    def fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)


def _just_before_the_rename(monkeypatch):
    def replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", replace)


@pytest.mark.parametrize("save", ["trainer.save", "el.save"])
@pytest.mark.parametrize(
    "interrupt",
    [_after_creating_the_temp_file, _halfway_through_the_data, _at_fsync, _just_before_the_rename],
)
def test_keyboard_interrupt_during_a_save_leaves_the_previous_file_byte_for_byte_and_no_temp_file(
    saved_run, monkeypatch, interrupt, save
):
    trainer, path = saved_run
    before = path.read_bytes()
    interrupt(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        if save == "trainer.save":
            trainer.save(path)
        else:
            el.save(trainer.model, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["model.npz"]
    assert el.Trainer.load(path).history.epoch == [0]


def test_a_checkpoint_gets_the_permissions_of_an_ordinary_new_file(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "model.npz"
    el.save(new_model(), path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---- bad files not covered by test_training_checkpoint.py --------------------------------
@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "model.npz"
    trainer = el.Trainer(new_model())
    trainer.fit(*task(N=32), epochs=1, **FIT)
    trainer.save(path)
    return trainer, path


def test_every_truncation_and_byte_flip_gives_a_value_error_naming_the_file_or_the_same_model(
    good_file,
):
    _, path = good_file
    data = path.read_bytes()
    reference = contents(path)
    n = len(data)
    cuts = range(0, n, max(1, n // 97))
    flips = range(0, n, max(1, n // 211))
    damaged = [data[:k] for k in cuts] + [
        data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :] for i in flips
    ]
    intact = 0
    for blob in damaged:
        path.write_bytes(blob)
        try:
            loaded = el.Trainer.load(path)  # the model and the run: every entry is read
        except ValueError as exc:
            assert str(exc).startswith((f"eigenlstm.load: {path} ", f"Trainer.load: {path} ")), exc
            continue
        # Only bytes no check covers (zip timestamps, ...) may change: then nothing else did.
        intact += 1
        loaded.save(path)
        meta, arrays = contents(path)
        assert meta == reference[0]
        for k in arrays:
            assert np.array_equal(arrays[k], reference[1][k]), k
    assert intact < len(flips) // 4


def _central_directory_entry(data):
    return data.index(b"PK\x01\x02")


@pytest.mark.parametrize(
    "offset, value, what",
    [
        (8, 0x01, "encrypted"),  # general-purpose flag bit 0
        (10, 99, "compression method"),  # an unknown compression method
    ],
)
def test_a_damaged_zip_directory_entry_raises_value_error_naming_the_file(
    good_file, offset, value, what
):
    # Damaged and then signed (a writer that was wrong, not a disk): the zip's own error shows.
    _, path = good_file
    data = bytearray(path.read_bytes())
    at = _central_directory_entry(bytes(data)) + offset
    data[at] = value
    path.write_bytes(sign(bytes(data)))
    assert_load_refuses(
        path, rf"is not a valid eigenlstm checkpoint \(corrupted or truncated: .*{what}"
    )


def test_loading_a_plain_npy_array_raises_value_error_naming_the_file(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((2, 3)))
    assert_load_refuses(
        path,
        r"is not a valid eigenlstm checkpoint \(it holds a single .npy array of shape \(2, 3\), not an .npz archive\)",
    )


def test_loading_a_pickle_raises_value_error_naming_the_file(tmp_path):
    import pickle

    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    assert_load_refuses(
        path, r"is not a valid eigenlstm checkpoint \(corrupted or truncated: .*pickled"
    )


def test_a_newer_format_version_asks_to_upgrade_even_with_entries_this_version_cannot_read(
    good_file,
):
    _, path = good_file
    meta, arrays = contents(path)
    meta["format_version"] = checkpoint.FORMAT_VERSION + 1
    arrays["future/tokenizer"] = np.array([{"a": 1}], dtype=object)  # pickled: unreadable here
    write_checkpoint(path, meta, arrays)
    assert_load_refuses(
        path,
        rf"has checkpoint format version {checkpoint.FORMAT_VERSION + 1}, newer than version {checkpoint.FORMAT_VERSION} that this eigenlstm reads; upgrade eigenlstm",
    )
