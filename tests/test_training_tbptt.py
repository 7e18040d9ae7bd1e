"""Truncated BPTT and stateful training: ``Trainer.fit(..., tbptt=k, stateful=True)`` with a
per-step ``LSTMModel(..., many_to_many=True)``, and ``sequence_loss``.

Witnesses: the float64 NumPy LSTM of tests/reference.py driven by a hand-written chunked loop
(cross-entropy, SGD), torch (a per-step ``nn.LSTM`` + ``nn.Linear`` trained with ``detach()``
between chunks), full forwards and streams for the carried state, and full BPTT itself for
``tbptt >= L``. Then every bad argument, checkpoints, rollback and the char-LM example.
"""
# Sizes: N samples, L time steps, I input size, H hidden size, O outputs (classes), k chunk.

import io

import numpy as np
import pytest
import torch  # a hard import on purpose: the torch witness must never be silently skipped
import torch.nn as tnn

import eigenlstm as el
from reference import reference_backward, reference_forward
from test_training_fit import load_example

N, L, I, H, O = 6, 11, 3, 5, 4


def data(seed=0, N=N, L=L, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, L, I)).astype(dtype)
    y = rng.integers(0, O, (N, L))
    return x, y


def model(dtype=np.float64, seed=1, **kw):
    return el.LSTMModel(I, H, O, many_to_many=True, dtype=dtype, seed=seed, **kw)


class Spy(el.LSTMModel):
    """A per-step LSTMModel that records every training-mode call: the chunk it saw, the
    state it started from and the weights it ran with."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = []

    def forward(self, x, *, lengths=None, state=None, return_state=False):
        if self.training:
            self.calls.append(
                {
                    "x": np.array(x),
                    "lengths": None if lengths is None else np.array(lengths),
                    "state": None if state is None else (state[0].copy(), state[1].copy()),
                    "weights": self.state_dict(),
                }
            )
        return super().forward(x, lengths=lengths, state=state, return_state=return_state)


def spy(dtype=np.float64, **kw):
    return Spy(I, H, O, many_to_many=True, dtype=dtype, seed=1, **kw)


def same_state(a, b):
    """Whether two state dicts hold the same arrays, bit for bit."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def same_weights(a, b):
    return same_state(a.state_dict(), b.state_dict())


def torch_pair(m):
    """torch's per-step model with ``m``'s weights: nn.LSTM (batch first) and nn.Linear."""
    lstm = tnn.LSTM(I, H, batch_first=True).double()
    fc = tnn.Linear(H, O).double()
    sd = {k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()}
    lstm.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("lstm.")})
    fc.load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("fc.")})
    return lstm, fc


SGD = dict(optimizer="sgd", lr=0.5, progress=False, seed=0, loss="cross_entropy")


# ---- the per-step model ----------------------------------------------------------------------
def test_a_per_step_model_applies_the_head_at_every_step_and_the_bias_past_a_length():
    m = model().eval()
    x, _ = data()
    lengths = np.array([11, 4, 0, 7, 1, 11])
    y, (h_n, c_n) = m(x, lengths=lengths, return_state=True)
    out, (h_ref, c_ref) = m.lstm(x, lengths=lengths)
    assert y.shape == (N, L, O)
    np.testing.assert_array_equal(y, out @ m.fc.weight.T + m.fc.bias)
    np.testing.assert_array_equal(y[1, 4:], np.broadcast_to(m.fc.bias, (L - 4, O)))
    assert np.array_equal(h_n, h_ref) and np.array_equal(c_n, c_ref)
    assert m.predict(x, batch_size=4, lengths=lengths).shape == (N, L, O)
    assert m.predict(x[:0]).shape == (0, L, O)
    # a stream applies the same head at every step
    steps = m.stream(batch_size=N)(x)
    np.testing.assert_allclose(steps, m(x), rtol=1e-12, atol=1e-12)


def test_a_per_step_model_backward_matches_torch_float64():
    m = model()
    x, _ = data()
    d_y = np.random.default_rng(3).standard_normal((N, L, O))
    h0 = np.random.default_rng(4).standard_normal((1, N, H))
    c0 = np.random.default_rng(5).standard_normal((1, N, H))
    y, (h_n, _) = m(x, state=(h0, c0), return_state=True)
    m.zero_grad()
    dx = m.backward(d_y)
    lstm, fc = torch_pair(m)
    tx = torch.from_numpy(x).requires_grad_()
    th0, tc0 = (torch.from_numpy(s).requires_grad_() for s in (h0, c0))
    out, (t_h, _) = lstm(tx, (th0, tc0))
    ty = fc(out)
    (ty * torch.from_numpy(d_y)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_n, t_h.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for key, grad in m.grads.items():
        module, name = key.split(".", 1)
        want = dict((lstm if module == "lstm" else fc).named_parameters())[name].grad
        np.testing.assert_allclose(grad, want.numpy(), rtol=1e-10, atol=1e-12, err_msg=key)


def test_a_per_step_model_round_trips_through_a_checkpoint_of_format_version_5(tmp_path):
    m = model()
    el.save(m, tmp_path / "m.npz")
    back = el.load(tmp_path / "m.npz")
    assert back.many_to_many and back.config() == m.config() and same_weights(back, m)
    assert "many_to_many" not in el.LSTMModel(I, H, O).config()
    with np.load(tmp_path / "m.npz") as z:
        assert '"format_version": 5' in str(z["meta"][()])
    assert "many_to_many=True" in repr(m)


def test_a_per_step_model_is_refused_where_only_a_last_step_head_can_go():
    m = model()
    with pytest.raises(TypeError, match=r"LSTMModel: many_to_many must be a bool, got str 'yes'"):
        el.LSTMModel(I, H, O, many_to_many="yes")
    with pytest.raises(
        ValueError,
        match=r"quantize: module must be an LSTMModel with its head on the last step .* got many_to_many=True",
    ):
        el.quantize(m, "int8")
    pytest.importorskip("onnx")
    buf = io.BytesIO()
    with pytest.raises(
        ValueError,
        match=r"eigenlstm.onnx.export: module must be an LSTMModel with its head on the last step .* got many_to_many=True",
    ):
        el.onnx.export(m, buf)
    assert buf.getvalue() == b""


# ---- sequence_loss ---------------------------------------------------------------------------
def test_sequence_loss_is_torchs_loss_over_the_valid_steps_and_zero_past_them():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((N, L, O))
    labels = rng.integers(0, O, (N, L))
    lengths = np.array([11, 4, 0, 7, 1, 11])
    value, grad, steps = el.sequence_loss(el.cross_entropy, logits, labels, lengths)
    valid = np.arange(L) < lengths[:, None]
    t = torch.from_numpy(logits).requires_grad_()
    want = tnn.CrossEntropyLoss()(t[torch.from_numpy(valid)], torch.from_numpy(labels[valid]))
    want.backward()
    assert steps == lengths.sum()
    np.testing.assert_allclose(value, want.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert not grad[~valid].any()
    # mse without lengths is mse_loss of the whole array
    target = rng.standard_normal((N, L, O))
    value, grad, steps = el.sequence_loss(el.mse_loss, logits, target)
    whole, whole_grad = el.mse_loss(logits, target)
    assert (value, steps) == (whole, N * L) and np.array_equal(grad, whole_grad)


def test_sequence_loss_names_what_does_not_fit():
    p = np.zeros((2, 3, 4))
    with pytest.raises(
        ValueError, match=r"sequence_loss: prediction must have shape \(N, L, C\), got \(3, 4\)"
    ):
        el.sequence_loss(el.mse_loss, p[0], p[0])
    with pytest.raises(
        ValueError,
        match=r"sequence_loss: target must have shape \(2, 3, \.\.\.\) \(samples, steps\), got \(2, 4\)",
    ):
        el.sequence_loss(el.cross_entropy, p, np.zeros((2, 4), np.int64))
    with pytest.raises(
        ValueError, match=r"sequence_loss: lengths must have shape \(2,\), got \(3,\)"
    ):
        el.sequence_loss(el.cross_entropy, p, np.zeros((2, 3), np.int64), np.ones(3, np.int64))


# ---- exactness -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [L, L + 5])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_tbptt_with_chunks_as_long_as_the_sequence_is_full_bptt_bitwise(k, use_lengths):
    x, y = data()
    kw = dict(epochs=3, batch_size=4, lr=1e-2, loss="cross_entropy", progress=False, seed=0)
    if use_lengths:
        kw["lengths"] = np.array([11, 4, 2, 7, 1, 11])
    kw["validation_data"] = (x[:3], y[:3])
    full, chunked = model(), model()
    h_full = el.Trainer(full).fit(x, y, **kw)
    h_chunked = el.Trainer(chunked).fit(x, y, tbptt=k, **kw)
    assert same_weights(full, chunked)
    assert h_full.history == h_chunked.history


@pytest.mark.parametrize("stateful", [False, True])
def test_tbptt_steps_match_torch_with_detach_between_chunks_float64(stateful):
    # Two batches of three sequences, chunks of 4, 4 and 3 steps: six SGD steps.
    x, y = data()
    k, bs, lr, clip = 4, 3, 0.3, 0.5
    m = model()
    lstm, fc = torch_pair(m)
    el.Trainer(m).fit(
        x,
        y,
        epochs=1,
        batch_size=bs,
        shuffle=False,
        tbptt=k,
        stateful=stateful,
        clip_grad_norm=clip,
        **dict(SGD, lr=lr),
    )
    params = list(lstm.parameters()) + list(fc.parameters())
    opt = torch.optim.SGD(params, lr=lr)
    state = None
    for b in range(0, N, bs):
        if not stateful:
            state = None
        xb, yb = torch.from_numpy(x[b : b + bs]), torch.from_numpy(y[b : b + bs])
        for t in range(0, L, k):
            out, state = lstm(xb[:, t : t + k], state)
            logits = fc(out)
            loss = tnn.CrossEntropyLoss()(logits.reshape(-1, O), yb[:, t : t + k].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            state = tuple(s.detach() for s in state)  # truncation: no gradient to the past
    for key, value in m.state_dict().items():
        module, name = key.split(".", 1)
        want = dict((lstm if module == "lstm" else fc).named_parameters())[name]
        np.testing.assert_allclose(
            value, want.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=key
        )


def numpy_chunked_epoch(weights, x, y, lengths, k, bs, lr):
    """One epoch of truncated BPTT written out in NumPy: the reference LSTM forward of each
    chunk from the carried state, the head at every step, the cross-entropy of the chunk's
    valid steps, its backward with no gradient into the carried state, one SGD step.
    Returns the weights and the epoch's loss (mean over every valid step)."""
    w = {key: v.copy() for key, v in weights.items()}
    total, count = 0.0, 0
    for b in range(0, len(x), bs):
        xb, yb, lb = x[b : b + bs], y[b : b + bs], lengths[b : b + bs]
        n = len(xb)
        h, c = np.zeros((1, n, H)), np.zeros((1, n, H))
        for t in range(0, L, k):
            u = min(t + k, L)
            lc = np.clip(lb - t, 0, u - t)
            valid = np.arange(u - t) < lc[:, None]  # (n, u - t)
            M = valid.sum()
            if M == 0:
                continue
            params = {key[5:]: v for key, v in w.items() if key.startswith("lstm.")}
            out, h_n, c_n, cache = reference_forward(
                params,
                xb[:, t:u].transpose(1, 0, 2),
                h,
                c,
                num_layers=1,
                bidirectional=False,
                proj_size=0,
                lengths=lc,
            )
            out = out.transpose(1, 0, 2)  # (n, u - t, H)
            z = out @ w["fc.weight"].T + w["fc.bias"]
            z = z - z.max(axis=-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
            labels = yb[:, t:u]
            picked = np.take_along_axis(logp, labels[..., None], -1)[..., 0]
            total += -picked[valid].sum()
            count += M
            dz = np.exp(logp)
            np.put_along_axis(
                dz, labels[..., None], np.take_along_axis(dz, labels[..., None], -1) - 1, -1
            )
            dz = dz * valid[..., None] / M  # d(mean over the valid steps) / dz
            d_out = dz @ w["fc.weight"]
            grads = {
                "fc.weight": dz.reshape(-1, O).T @ out.reshape(-1, H),
                "fc.bias": dz.sum(axis=(0, 1)),
            }
            _, _, _, dparams = reference_backward(
                cache, d_out.transpose(1, 0, 2)
            )  # dh_n = dc_n = 0
            grads.update({"lstm." + key: v for key, v in dparams.items()})
            for key in w:
                w[key] = w[key] - lr * grads[key]
            h, c = h_n, c_n  # carried as constants into the next chunk
    return w, total / count


def test_one_epoch_of_tbptt_with_lengths_matches_a_numpy_chunked_computation():
    x, y = data()
    lengths = np.array([11, 4, 0, 7, 1, 9])  # ends mid-chunk, at a boundary, and never starts
    m = model()
    want, want_loss = numpy_chunked_epoch(m.state_dict(), x, y, lengths, 4, 3, 0.5)
    h = el.Trainer(m).fit(
        x, y, epochs=1, batch_size=3, shuffle=False, tbptt=4, lengths=lengths, **SGD
    )
    for key, value in m.state_dict().items():
        np.testing.assert_allclose(value, want[key], rtol=1e-10, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(h.history["loss"][0], want_loss, rtol=1e-12)


def test_the_carried_state_is_the_full_forwards_and_the_streams_at_each_chunk_boundary():
    x, y = data()
    m = spy()
    el.Trainer(m).fit(x, y, epochs=1, batch_size=N, shuffle=False, tbptt=4, **SGD)
    assert [c["x"].shape[1] for c in m.calls] == [4, 4, 3] and m.calls[0]["state"] is None
    for j in (1, 2):  # chunk j starts from the state after steps [0, 4j) under chunk j-1's weights
        ref = model()
        ref.load_state_dict(m.calls[j - 1]["weights"])
        before = m.calls[j - 1]["state"]
        _, state = ref.eval()(x[:, 4 * (j - 1) : 4 * j], state=before, return_state=True)
        for got, want in zip(m.calls[j]["state"], state):
            np.testing.assert_array_equal(got, want)
    # the first boundary is also what a stream and a full forward over steps [0, 4) give
    ref = model()
    ref.load_state_dict(m.calls[0]["weights"])
    stream = ref.stream(batch_size=N)
    stream(x[:, :4])
    _, (h_full, c_full) = ref.eval()(x[:, :4], return_state=True)
    np.testing.assert_allclose(m.calls[1]["state"][0], stream.state[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(m.calls[1]["state"][1], stream.state[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(m.calls[1]["state"][0], h_full)
    np.testing.assert_array_equal(m.calls[1]["state"][1], c_full)


def test_a_sequence_that_ended_keeps_its_state_and_nothing_past_its_end_is_trained():
    x, y = data()
    lengths = np.array([11, 5, 11, 2, 11, 11])
    m = spy()
    el.Trainer(m).fit(x, y, epochs=1, batch_size=N, shuffle=False, tbptt=4, lengths=lengths, **SGD)
    # sequence 1 ends at step 5 (mid chunk 1), sequence 3 at step 2 (mid chunk 0)
    assert [list(c["lengths"]) for c in m.calls] == [
        [4, 4, 4, 2, 4, 4],
        [4, 1, 4, 0, 4, 4],
        [3, 0, 3, 0, 3, 3],
    ]
    s1, s2 = m.calls[1]["state"], m.calls[2]["state"]
    ref = model()
    ref.load_state_dict(m.calls[1]["weights"])
    _, end = ref.eval()(x[:, 4:8], lengths=[4, 1, 4, 0, 4, 4], state=s1, return_state=True)
    for got, want, before in zip(s2, end, s1):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got[:, 3], before[:, 3])  # sequence 3 stays ended
    # nothing past an end reaches the weights: other inputs and labels there change nothing
    x2, y2 = x.copy(), y.copy()
    for n, length in enumerate(lengths):
        x2[n, length:] = 1e3
        y2[n, length:] = (y2[n, length:] + 1) % O
    a, b = model(), model()
    kw = dict(epochs=2, batch_size=3, shuffle=False, tbptt=4, lengths=lengths, **SGD)
    el.Trainer(a).fit(x, y, **kw)
    el.Trainer(b).fit(x2, y2, **kw)
    assert same_weights(a, b)


def test_a_chunk_in_which_every_sequence_has_ended_takes_no_optimizer_step():
    x, y = data()
    lengths = np.full(N, 3)  # chunks [4, 8) and [8, 11) are past every end
    steps = []

    class Count(el.Callback):
        def on_batch_end(self, batch, logs=None):
            steps.append(batch)

    a, b = model(), model()
    el.Trainer(a).fit(
        x, y, epochs=1, batch_size=N, tbptt=4, lengths=lengths, callbacks=[Count()], **SGD
    )
    assert steps == [0]
    el.Trainer(b).fit(x[:, :4], y[:, :4], epochs=1, batch_size=N, lengths=lengths, **SGD)
    assert same_weights(a, b)


# ---- stateful --------------------------------------------------------------------------------
@pytest.mark.parametrize("tbptt", [None, 4])
def test_stateful_batches_start_from_the_final_state_of_the_batch_before_row_by_row(tbptt):
    x, y = data(N=9)
    m = spy()
    trainer = el.Trainer(m)
    trainer.fit(x, y, epochs=2, batch_size=3, shuffle=False, stateful=True, tbptt=tbptt, **SGD)
    per_batch = 1 if tbptt is None else 3
    calls = m.calls
    assert len(calls) == 2 * 3 * per_batch
    for i, call in enumerate(calls):
        if i % (3 * per_batch) == 0:
            assert call["state"] is None  # each epoch starts from zeros
            continue
        prev = calls[i - 1]
        ref = model()
        ref.load_state_dict(prev["weights"])
        _, want = ref.eval()(prev["x"], state=prev["state"], return_state=True)
        for got, w in zip(call["state"], want):
            np.testing.assert_array_equal(got, w)
    # after fit the trainer holds the last batch's final state
    last = calls[-1]
    ref = model()
    ref.load_state_dict(last["weights"])
    _, want = ref.eval()(last["x"], state=last["state"], return_state=True)
    for got, w in zip(trainer.carried_state, want):
        np.testing.assert_array_equal(got, w)


def test_a_stateful_run_matches_torch_carrying_the_state_across_batches_float64():
    # Keras's layout: sample i*B + r continues sample (i-1)*B + r; SGD, no truncation.
    x, y = data(N=6, L=5)
    m = model()
    lstm, fc = torch_pair(m)
    el.Trainer(m).fit(x, y, epochs=1, batch_size=2, shuffle=False, stateful=True, **SGD)
    params = list(lstm.parameters()) + list(fc.parameters())
    opt = torch.optim.SGD(params, lr=SGD["lr"])
    state = None
    for b in range(0, 6, 2):
        out, state = lstm(torch.from_numpy(x[b : b + 2]), state)
        loss = tnn.CrossEntropyLoss()(
            fc(out).reshape(-1, O), torch.from_numpy(y[b : b + 2]).reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = tuple(s.detach() for s in state)
    for key, value in m.state_dict().items():
        module, name = key.split(".", 1)
        want = dict((lstm if module == "lstm" else fc).named_parameters())[name]
        np.testing.assert_allclose(
            value, want.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=key
        )


def test_reset_states_and_the_reset_states_callback_zero_the_carried_state():
    x, y = data(N=6)
    m = spy()
    trainer = el.Trainer(m)
    assert trainer.carried_state is None
    trainer.reset_states()  # nothing to reset before fit
    kw = dict(batch_size=3, shuffle=False, stateful=True, reset_each_epoch=False, **SGD)
    trainer.fit(x, y, epochs=2, **kw)
    # without the per-epoch reset, epoch 2's first batch continues epoch 1's last
    assert m.calls[2]["state"] is not None
    assert trainer.carried_state is not None and trainer.carried_state[0].shape == (1, 3, H)
    trainer.carried_state[0][...] = 7.0  # a copy: the run's state is not written into
    assert not (trainer.carried_state[0] == 7.0).any()
    trainer.reset_states()
    assert trainer.carried_state is None
    m.calls.clear()
    trainer.fit(x, y, epochs=2, resume=True, **kw)
    assert m.calls[0]["state"] is None and m.calls[2]["state"] is not None
    m.calls.clear()
    trainer.fit(x, y, epochs=2, resume=True, callbacks=[el.ResetStates()], **kw)
    assert m.calls[0]["state"] is not None  # carried over from the last fit
    assert m.calls[2]["state"] is None  # the callback reset it at the end of the epoch before
    assert trainer.carried_state is None


# ---- bad arguments (with distributed="mpi": tests/dist, under mpiexec) -----------------------
BAD = [
    (dict(tbptt=0), ValueError, r"Trainer.fit: tbptt must be >= 1, got 0"),
    (dict(tbptt=2.5), TypeError, r"Trainer.fit: tbptt must be an int, got float 2.5"),
    (dict(tbptt=True), TypeError, r"Trainer.fit: tbptt must be an int, got bool True"),
    (dict(stateful=1), TypeError, r"Trainer.fit: stateful must be a bool, got int 1"),
    (
        dict(stateful=True, reset_each_epoch="no"),
        TypeError,
        r"reset_each_epoch must be a bool, got str 'no'",
    ),
    (
        dict(reset_each_epoch=False),
        ValueError,
        r"reset_each_epoch=False needs stateful=True .* got stateful=False",
    ),
    (
        dict(stateful=True, shuffle=True),
        ValueError,
        r"stateful=True needs shuffle=False .* got shuffle=True",
    ),
    (
        dict(stateful=True, batch_size=4),
        ValueError,
        r"stateful=True needs full batches, a number of samples that is a multiple of batch_size=4, got 6 \(a last batch of 2",
    ),
]


@pytest.mark.parametrize("kwargs, error, match", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_arguments_raise_naming_them_and_change_nothing(kwargs, error, match):
    x, y = data()
    m = model()
    trainer = el.Trainer(m)
    trainer.fit(x, y, epochs=1, batch_size=3, shuffle=False, stateful=True, tbptt=4, **SGD)
    before_weights, before_run = m.state_dict(), trainer.state_dict()
    kw = dict(dict(SGD, batch_size=3, shuffle=False), **kwargs)
    with pytest.raises(error, match=match):
        trainer.fit(x, y, epochs=1, **kw)
    after_run = trainer.state_dict()
    assert same_state(m.state_dict(), before_weights)
    assert after_run["carried_state"] == before_run["carried_state"]
    assert after_run["history"] == before_run["history"] and after_run["epoch"] == 1


def test_tbptt_for_a_model_without_an_output_at_every_step_is_refused_before_any_change():
    x, y = data()
    last = el.LSTMModel(I, H, O, dtype=np.float64, seed=1)
    before = last.state_dict()
    with pytest.raises(
        ValueError,
        match=r"Trainer.fit: tbptt needs a model with an output at every step, \(N, 11, O\) .* got tbptt=4 for a model whose output has shape \(6, 4\)",
    ):
        el.Trainer(last).fit(x, y[:, 0], tbptt=4, **SGD)
    two_way = model(bidirectional=True)
    with pytest.raises(
        ValueError,
        match=r"Trainer.fit: tbptt=4 needs a unidirectional model .* got bidirectional=True",
    ):
        el.Trainer(two_way).fit(x, y, tbptt=4, **SGD)
    with pytest.raises(
        ValueError, match=r"Trainer.fit: stateful=True needs a unidirectional model"
    ):
        el.Trainer(two_way).fit(x, y, stateful=True, batch_size=3, shuffle=False, **SGD)
    assert same_state(last.state_dict(), before)

    class NoState(el.nn.Module):  # a module whose forward takes no state
        def __init__(self):
            self.inner = model()

        def forward(self, x, *, lengths=None):
            return self.inner(x, lengths=lengths)

        def backward(self, d):
            return self.inner.backward(d)

    with pytest.raises(
        TypeError,
        match=r"Trainer.fit: stateful=True needs a model whose forward takes state= and return_state=True, as LSTMModel's does; NoState refused them",
    ):
        el.Trainer(NoState()).fit(x, y, stateful=True, batch_size=3, shuffle=False, **SGD)


def test_per_step_targets_of_the_wrong_shape_are_refused_naming_the_expected_shape():
    x, y = data()
    with pytest.raises(ValueError, match=r"Trainer.fit: y must have shape \(6, 11\), got \(6,\)"):
        el.Trainer(model()).fit(x, y[:, 0], **SGD)
    with pytest.raises(
        ValueError,
        match=r"Trainer.fit: y must have shape \(6, 11, 4\) \(samples, steps, outputs\), got \(6, 11, 2\)",
    ):
        el.Trainer(model()).fit(x, np.zeros((N, L, 2)), **dict(SGD, loss="mse"))
    # one output: (N, L) targets are (N, L, 1)
    one = el.LSTMModel(I, H, 1, many_to_many=True, dtype=np.float64, seed=1)
    h = el.Trainer(one).fit(x, x.sum(axis=2), epochs=1, tbptt=4, **dict(SGD, loss="mse"))
    assert np.isfinite(h.history["loss"][0])


def test_resuming_a_tbptt_or_stateful_run_needs_the_same_settings():
    x, y = data()
    trainer = el.Trainer(model())
    trainer.fit(x, y, epochs=1, batch_size=3, shuffle=False, stateful=True, tbptt=4, **SGD)
    kw = dict(SGD, batch_size=3, shuffle=False, resume=True, epochs=1)
    with pytest.raises(
        ValueError, match=r"resume=True continues a run that used tbptt=4, got tbptt=None"
    ):
        trainer.fit(x, y, stateful=True, **kw)
    with pytest.raises(
        ValueError, match=r"resume=True continues a run that used stateful=True, got stateful=False"
    ):
        trainer.fit(x, y, tbptt=4, **kw)


# ---- the run: validation, checkpoints, rollback ----------------------------------------------
def test_validation_of_a_per_step_model_averages_over_the_valid_steps():
    x, y = data()
    xv, yv = data(seed=7)
    lv = np.array([11, 3, 0, 5, 8, 1])
    trainer = el.Trainer(model())
    h = trainer.fit(x, y, epochs=1, tbptt=4, validation_data=(xv, yv, lv), **SGD)
    pred = trainer.model.predict(xv, lengths=lv)
    value, _, steps = el.sequence_loss(el.cross_entropy, pred, yv, lv)
    valid = np.arange(L) < lv[:, None]
    assert h.history["val_loss"] == [value]
    assert h.history["val_accuracy"] == [float((pred.argmax(-1) == yv)[valid].sum()) / steps]
    assert trainer.evaluate(xv, yv, lengths=lv) == {
        "loss": value,
        "accuracy": h.history["val_accuracy"][0],
    }


def test_checkpoint_and_resume_of_a_stateful_tbptt_run_are_bitwise_an_uninterrupted_run(tmp_path):
    x, y = data(N=9, dtype=np.float32)
    lengths = np.array([11, 11, 6, 11, 3, 11, 11, 9, 11])
    kw = dict(
        batch_size=3,
        shuffle=False,
        stateful=True,
        reset_each_epoch=False,
        tbptt=4,
        lengths=lengths,
        clip_grad_norm=1.0,
        validation_data=(x[:3], y[:3]),
        loss="cross_entropy",
        lr=1e-2,
        progress=False,
        seed=0,
    )
    straight = el.Trainer(model(np.float32, dropout=0.0, recurrent_dropout=0.2))
    straight.fit(x, y, epochs=4, **kw)

    first = el.Trainer(model(np.float32, dropout=0.0, recurrent_dropout=0.2))
    first.fit(x, y, epochs=2, callbacks=[el.ModelCheckpoint(tmp_path / "run.npz")], **kw)
    resumed = el.Trainer.load(tmp_path / "run.npz")
    assert resumed.carried_state is not None
    for a, b in zip(resumed.carried_state, first.carried_state):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    resumed.fit(x, y, epochs=2, resume=True, **kw)
    assert same_weights(resumed.model, straight.model)
    assert resumed.history.history == straight.history.history
    for a, b in zip(resumed.carried_state, straight.carried_state):
        assert np.array_equal(a, b)


def test_an_interrupted_stateful_run_rolls_back_its_carried_state_and_resumes_bitwise():
    x, y = data(N=9)
    kw = dict(batch_size=3, shuffle=False, stateful=True, reset_each_epoch=False, tbptt=4, **SGD)
    straight = el.Trainer(model())
    straight.fit(x, y, epochs=3, **kw)

    class Interrupt(el.Callback):
        def on_batch_end(self, batch, logs=None):
            if self.trainer.epoch == 2 and batch == 4:  # mid epoch 3, mid batch 2
                raise KeyboardInterrupt

    trainer = el.Trainer(model())
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, epochs=3, callbacks=[Interrupt()], **kw)
    assert trainer.epoch == 2
    reference = el.Trainer(model())
    reference.fit(x, y, epochs=2, **kw)
    for a, b in zip(trainer.carried_state, reference.carried_state):
        assert np.array_equal(a, b)  # the state of the end of epoch 2, not of mid epoch 3
    trainer.fit(x, y, epochs=1, resume=True, **kw)
    assert same_weights(trainer.model, straight.model)
    assert trainer.history.history == straight.history.history


# ---- the char-LM example ---------------------------------------------------------------------
def test_char_lm_stretches_are_contiguous_streams_that_batches_continue_row_by_row():
    char_lm = load_example("char_lm")
    text = char_lm.zen_text()
    (x, y), (xv, yv), vocab = char_lm.per_step_data(text)
    B, T = char_lm.STREAMS, char_lm.STRETCH
    assert x.shape[1:] == (T, len(vocab)) and y.shape == x.shape[:2] and len(x) % B == 0

    def chars(ids):
        return "".join(vocab[i] for i in ids)

    for r in range(B):  # stream r: the rows r, r + B, r + 2B, ... read on, labels one ahead
        ids = np.concatenate([x[i].argmax(axis=1) for i in range(r, len(x), B)])
        labels = np.concatenate([y[i] for i in range(r, len(x), B)])
        assert chars(ids) in text and chars(labels) == chars(ids)[1:] + chars(labels)[-1]
    cut = int(len(text) * 0.85)
    assert chars(xv[0].argmax(axis=1)) + chars(yv[0][-1:]) == text[cut:]


@pytest.mark.slow  # about 4 s alone, 10 s on a busy machine
def test_char_lm_tbptt_reaches_a_held_out_loss_within_5_percent_of_full_bptt():
    # The same budget of characters trained (12 epochs over the same stretches, so every
    # character is read as often by both): TBPTT over chunks of 8 with the state carried
    # through the streams, against full BPTT through each 32-character stretch from zeros.
    # "Reaches": the best held-out loss of the run's epochs, what EarlyStopping would keep
    # (the text is small, and both overfit it later).
    char_lm = load_example("char_lm")
    _, vocab, tbptt = char_lm.train_per_step(epochs=12, progress=False)
    _, _, full = char_lm.train_per_step(epochs=12, tbptt=None, progress=False)
    best_tbptt, best_full = min(tbptt.history["val_loss"]), min(full.history["val_loss"])
    assert best_full < np.log(len(vocab)) - 0.5  # both learned: uniform guessing is log V
    assert best_tbptt <= 1.05 * best_full, (best_tbptt, best_full)
    sample = char_lm.sample_stream(
        char_lm.train_per_step(epochs=1, progress=False)[0], vocab, "Beautiful is ", length=20
    )
    assert sample.startswith("Beautiful is ") and len(sample) == 33
