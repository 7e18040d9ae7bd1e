"""``Trainer.fit(distributed="mpi")`` as the ranks of one MPI job.

Run with ``mpiexec -n 2 python -m pytest tests/dist`` (and ``-n 3``, which shards unevenly);
tests/test_distributed.py launches both. Every rank runs every test and meets the others in
the same collectives, so each assertion is on values every rank holds (gathered first): a
test that failed on one rank only would leave the others waiting.
"""

import zlib

import numpy as np
import pytest
from mpi4py import MPI

import eigenlstm as el
from eigenlstm.training import trainer as trainer_module

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_rank():
    before = el.get_num_threads()
    el.set_num_threads(1)
    yield
    el.set_num_threads(before)


def flat(model) -> np.ndarray:
    return np.concatenate([np.ravel(p) for p in model.parameters()])


def crc(model) -> int:
    return zlib.crc32(flat(model).view(np.uint8))


def problem(N, dtype, *, seed=0, T=7, I=3, O=2, classes=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, I)).astype(dtype)
    y = rng.integers(0, O, N) if classes else rng.standard_normal((N, O)).astype(dtype)
    lengths = rng.integers(1, T + 1, N)
    return x, y, lengths


def make_model(dtype, *, layers=1, bidirectional=False, dropout=0.0):
    return el.LSTMModel(
        3, 12, 2, num_layers=layers, bidirectional=bidirectional, dropout=dropout,
        dtype=dtype, seed=1,
    )


def relative(a, b) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


# ---- the same weights as one process ---------------------------------------------------------
# 80 samples in batches of 16 for 4 epochs: 20 steps. With 3 ranks a batch splits 6, 5, 5.
CONFIGS = {
    "one layer": dict(layers=1),
    "two layers, bidirectional, lengths": dict(layers=2, bidirectional=True, lengths=True),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_sgd_matches_one_process(config, dtype, tol):
    opts = dict(CONFIGS[config])
    use_lengths = opts.pop("lengths", False)
    x, y, lengths = problem(80, dtype)
    fit = dict(epochs=4, batch_size=16, optimizer="sgd", lr=0.1, seed=3, progress=False)
    if use_lengths:
        fit["lengths"] = lengths
    alone = make_model(dtype, **opts)
    h_alone = el.Trainer(alone).fit(x, y, **fit)
    ranks = make_model(dtype, **opts)
    h_ranks = el.Trainer(ranks).fit(x, y, distributed="mpi", **fit)
    errors = COMM.allgather(relative(flat(ranks), flat(alone)))
    assert max(errors) <= tol, errors
    np.testing.assert_allclose(h_ranks.history["loss"], h_alone.history["loss"], rtol=tol * 10)
    assert len(set(COMM.allgather(crc(ranks)))) == 1


def test_adam_matches_one_process():
    # Adam divides by sqrt(v) + eps: where a gradient is near zero, reduction-order noise in
    # it moves the update by up to lr, not by the noise. Measured on this problem after 20
    # steps in float32: 8e-8 relative with 2 or 3 ranks, against 1e-8 with SGD (and 4.4e-7
    # for a 2-layer bidirectional model, against 5e-9).
    x, y, _ = problem(80, np.float32)
    fit = dict(epochs=4, batch_size=16, optimizer="adam", lr=1e-2, seed=3, progress=False)
    alone, ranks = make_model(np.float32), make_model(np.float32)
    el.Trainer(alone).fit(x, y, **fit)
    el.Trainer(ranks).fit(x, y, distributed="mpi", **fit)
    errors = COMM.allgather(relative(flat(ranks), flat(alone)))
    assert max(errors) <= 1e-6, errors


def test_weights_bitwise_equal_across_ranks_at_every_step():
    class Gather(el.Callback):
        def __init__(self):
            self.steps = []

        def on_batch_end(self, batch, logs=None):
            self.steps.append(COMM.allgather(crc(self.trainer.model)))

    x, y, lengths = problem(50, np.float32)
    gather = Gather()
    model = make_model(np.float32, layers=2, dropout=0.3)
    el.Trainer(model).fit(
        x, y, epochs=2, batch_size=8, lengths=lengths, seed=0, progress=False,
        callbacks=[gather], distributed="mpi",
    )
    assert len(gather.steps) == 2 * 7
    assert all(len(set(step)) == 1 for step in gather.steps), gather.steps


class Streams(el.Callback):
    """The dropout stream of every batch, as this rank's model holds it."""

    def __init__(self):
        self.seen = []

    def on_batch_end(self, batch, logs):
        self.seen.append(self.trainer.model.get_extra_state()["lstm.dropout_state"])


@pytest.mark.parametrize("N", [32, 25])  # 25: the last batch of 1 leaves some ranks none
def test_each_rank_draws_its_own_dropout_masks_and_ends_on_rank_0s_stream(N):
    x, y, _ = problem(N, np.float32)
    model = make_model(np.float32, layers=2, dropout=0.5)
    seed0 = model.get_extra_state()["lstm.dropout_state"][0]
    streams = Streams()
    el.Trainer(model).fit(
        x, y, epochs=1, batch_size=8, progress=False, callbacks=[streams], distributed="mpi"
    )
    during = COMM.allgather(streams.seen)
    assert [seed for seed, _ in during[0]] == [seed0] * 4  # rank 0 keeps the model's stream
    for b in range(4):  # one stream per rank, each at the same counter: one per forward
        assert len({rank[b][0] for rank in during}) == SIZE, during
        assert {rank[b][1] for rank in during} == {b + 1}, during
    # After fit every rank holds rank 0's stream, so a checkpoint saved by any rank resumes
    # as one process would.
    after = COMM.allgather(model.get_extra_state())
    assert after == [{"lstm.dropout_state": [seed0, 4]}] * SIZE, after


@pytest.mark.parametrize("N", [13, 5])
def test_uneven_last_batch(N):
    # 13 in batches of 4: the last batch has 1 sample, so with 2 or 3 ranks some ranks have
    # none (they add zero); 5: one full batch and one of a single sample.
    x, y, lengths = problem(N, np.float64)
    fit = dict(epochs=3, batch_size=4, optimizer="sgd", lr=0.05, seed=5, progress=False)
    alone, ranks = make_model(np.float64), make_model(np.float64)
    h_alone = el.Trainer(alone).fit(x, y, lengths=lengths, **fit)
    h_ranks = el.Trainer(ranks).fit(x, y, lengths=lengths, distributed="mpi", **fit)
    errors = COMM.allgather(relative(flat(ranks), flat(alone)))
    assert max(errors) <= 1e-12, errors
    np.testing.assert_allclose(h_ranks.history["loss"], h_alone.history["loss"], rtol=1e-12)


def test_validation_metrics_are_averaged_over_every_sample():
    x, y, _ = problem(40, np.float64, classes=True)
    xv, yv, _ = problem(11, np.float64, seed=9, classes=True)
    fit = dict(
        epochs=3, batch_size=8, loss="cross_entropy", optimizer="sgd", lr=0.1, seed=2,
        progress=False, validation_data=(xv, yv),
    )
    h_alone = el.Trainer(make_model(np.float64)).fit(x, y, **fit)
    h_ranks = el.Trainer(make_model(np.float64)).fit(x, y, distributed="mpi", **fit)
    np.testing.assert_allclose(h_ranks.history["val_loss"], h_alone.history["val_loss"], rtol=1e-12)
    assert h_ranks.history["val_accuracy"] == h_alone.history["val_accuracy"]
    assert COMM.allgather(h_ranks.history) == [h_ranks.history] * SIZE


def test_a_per_step_model_with_lengths_matches_one_process():
    # Per-step outputs: a rank's share of a batch is its share of the valid steps, which
    # lengths make unequal across samples (some have none).
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((20, 7, 3)), rng.integers(0, 2, (20, 7))
    lengths = rng.integers(0, 8, 20)
    fit = dict(
        epochs=2, batch_size=8, loss="cross_entropy", optimizer="sgd", lr=0.1, seed=3,
        progress=False, lengths=lengths, validation_data=(x[:9], y[:9], lengths[:9]),
    )
    alone, ranks = (
        el.LSTMModel(3, 12, 2, many_to_many=True, dtype=np.float64, seed=1) for _ in range(2)
    )
    h_alone = el.Trainer(alone).fit(x, y, **fit)
    h_ranks = el.Trainer(ranks).fit(x, y, distributed="mpi", **fit)
    errors = COMM.allgather(relative(flat(ranks), flat(alone)))
    assert max(errors) <= 1e-12, errors
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(h_ranks.history[key], h_alone.history[key], rtol=1e-12)
    assert h_ranks.history["val_accuracy"] == h_alone.history["val_accuracy"]


def test_tbptt_and_stateful_are_refused_on_every_rank():
    x, y = np.zeros((8, 6, 3)), np.zeros((8, 6), np.int64)
    model = el.LSTMModel(3, 4, 2, many_to_many=True, seed=0)
    for carry in ({"tbptt": 2}, {"stateful": True, "shuffle": False}):
        with pytest.raises(ValueError, match="are not supported with distributed='mpi'"):
            el.Trainer(model).fit(
                x, y, loss="cross_entropy", batch_size=4, progress=False, distributed="mpi",
                **carry,
            )


# ---- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_and_resume_are_bitwise_an_uninterrupted_run(tmp_path, monkeypatch):
    path = str(COMM.bcast(tmp_path / "run.npz" if RANK == 0 else None))
    x, y, lengths = problem(48, np.float32)
    fit = dict(batch_size=8, lengths=lengths, lr=1e-2, seed=4, progress=False, distributed="mpi")

    straight = make_model(np.float32, layers=2, dropout=0.2)
    el.Trainer(straight).fit(x, y, epochs=4, **fit)

    writes = []
    real_save = trainer_module._io.save
    monkeypatch.setattr(
        trainer_module._io, "save", lambda *a, **k: (writes.append(1), real_save(*a, **k))
    )
    first = el.Trainer(make_model(np.float32, layers=2, dropout=0.2))
    first.fit(x, y, epochs=2, callbacks=[el.ModelCheckpoint(path)], **fit)
    assert COMM.allgather(len(writes)) == [2] + [0] * (SIZE - 1)  # rank 0 wrote, each epoch

    resumed = el.Trainer.load(path)  # every rank reads rank 0's file
    h = resumed.fit(x, y, epochs=2, resume=True, **fit)
    assert h.epoch == [0, 1, 2, 3]
    same = COMM.allgather(bool(np.array_equal(flat(resumed.model), flat(straight))))
    assert all(same), same


# ---- errors ----------------------------------------------------------------------------------
def test_a_data_error_raises_on_every_rank_and_is_printed_once():
    x, y, _ = problem(20, np.float32)
    model = make_model(np.float32)
    before = flat(model).copy()
    trainer = el.Trainer(model)
    with pytest.raises(ValueError, match="same number of samples") as info:
        trainer.fit(x, y[:15], progress=False, distributed="mpi")
    # Rank 0's exception is printed; the others carry the mark that keeps them quiet.
    marks = COMM.allgather(getattr(info.value, "_eigenlstm_reported_by_rank", None))
    assert marks == [None] + [0] * (SIZE - 1)
    assert trainer.history is None and np.array_equal(flat(model), before)


@pytest.mark.skipif(SIZE < 2, reason="needs a second rank to fail alone")
def test_an_error_on_one_rank_stops_every_rank_before_training():
    x, y, _ = problem(20, np.float32)
    if RANK == 1:
        x = x[:, :, :2]  # rank 1 alone has data of the wrong width
    model = make_model(np.float32)
    before = flat(model).copy()
    trainer = el.Trainer(model)
    with pytest.raises(ValueError) as info:
        trainer.fit(x, y, progress=False, distributed="mpi")
    messages = COMM.allgather(str(info.value))
    assert all("does not fit the model" in m for m in messages), messages
    assert [m.startswith("rank 1: ") for m in messages] == [r != 1 for r in range(SIZE)]
    assert trainer.history is None and np.array_equal(flat(model), before)


def test_only_rank_0_shows_progress(capsys):
    pytest.importorskip("tqdm")
    x, y, _ = problem(16, np.float32)
    el.Trainer(make_model(np.float32)).fit(x, y, epochs=1, batch_size=8, distributed="mpi")
    shown = COMM.allgather("epoch 1/1" in capsys.readouterr().err)
    assert shown == [True] + [False] * (SIZE - 1)


class StopOn(el.Callback):
    """Asks training to stop at the end of ``epoch``, on ``rank`` only."""

    def __init__(self, rank, epoch):
        self.rank, self.epoch = rank, epoch

    def on_epoch_end(self, epoch, logs):
        if RANK == self.rank and epoch == self.epoch:
            self.trainer.stop_training = True
            self.trainer.stop_reason = f"asked by rank {RANK}"


def test_a_callback_that_stops_one_rank_stops_every_rank():
    x, y, _ = problem(24, np.float32)
    model = make_model(np.float32)
    trainer = el.Trainer(model)
    h = trainer.fit(
        x, y, epochs=5, batch_size=8, progress=False, callbacks=[StopOn(SIZE - 1, 1)],
        distributed="mpi",
    )
    said = COMM.allgather((h.epoch, h.stop_reason, trainer.stop_training, crc(model)))
    assert said == [([0, 1], f"asked by rank {SIZE - 1}", True, said[0][3])] * SIZE, said


class FailsToBegin(el.Callback):
    def on_train_begin(self, logs):
        if RANK == SIZE - 1:
            raise RuntimeError("no room for the log file")


def test_a_callback_that_fails_to_begin_on_one_rank_fails_every_rank():
    x, y, _ = problem(16, np.float32)
    model = make_model(np.float32)
    before = flat(model).copy()
    with pytest.raises(RuntimeError, match="no room for the log file") as info:
        el.Trainer(model).fit(
            x, y, epochs=1, batch_size=8, progress=False, callbacks=[FailsToBegin()],
            distributed="mpi",
        )
    marks = COMM.allgather(getattr(info.value, "_eigenlstm_reported_by_rank", None))
    assert marks == [SIZE - 1] * (SIZE - 1) + [None]  # printed once, by the rank that failed
    assert COMM.allgather(bool(np.array_equal(flat(model), before))) == [True] * SIZE


def test_a_checkpoint_that_cannot_be_written_fails_every_rank_alike(tmp_path):
    path = str(COMM.bcast(tmp_path / "missing" / "run.npz" if RANK == 0 else None))
    x, y, _ = problem(16, np.float32)
    model = make_model(np.float32)
    before = flat(model).copy()
    trainer = el.Trainer(model)
    with pytest.raises(OSError) as info:
        trainer.fit(
            x, y, epochs=2, batch_size=8, progress=False,
            callbacks=[el.ModelCheckpoint(path)], distributed="mpi",
        )
    # Rank 0 met the error; every rank raised it (no abort), and it was printed once.
    marks = COMM.allgather(getattr(info.value, "_eigenlstm_reported_by_rank", None))
    assert marks == [None] + [0] * (SIZE - 1)
    # The first epoch completed before its checkpoint failed: every rank rolled back to it.
    said = COMM.allgather((trainer.epoch, crc(model), str(info.value)))
    assert said == [said[0]] * SIZE and said[0][0] == 1, said
    assert not np.array_equal(flat(model), before)
