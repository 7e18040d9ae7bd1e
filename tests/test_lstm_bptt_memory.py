"""Memory-bounded BPTT: ``el.LSTM(bptt_memory="sqrt" | <bytes>)`` against full storage.

The witness is the same module with ``bptt_memory=None``: outputs, final states, dx, dh0, dc0
and every parameter gradient must be the same bits, for each option parity covers. A segment
is at least one gradient chunk of about 512 rows (``ceil(512/N)`` steps, a multiple of 16
rows), so the short sequences run with N = 512, where a chunk is one step.
"""

import gc

import numpy as np
import pytest

import eigenlstm as el

I, H = 5, 8

CONFIGS = {
    "plain": dict(),
    "two layers, bidirectional, dropout": dict(num_layers=2, bidirectional=True, dropout=0.3),
    "projection": dict(proj_size=3),
    "reverse, cifg, cell clip": dict(reverse=True, cifg=True, cell_clip=0.5),
    "peepholes, zoneout, recurrent dropout, weight drop": dict(
        peepholes=True, zoneout=(0.2, 0.1), recurrent_dropout=0.3, weight_drop=0.2
    ),
    "layer norm, bidirectional, projection": dict(
        layer_norm=True, bidirectional=True, proj_size=4, num_layers=2
    ),
}

# (T, N): T = 1 and 2 have nothing to split (sqrt gives segments of T steps: full storage);
# at N = 512 a chunk is one step, so T = 7 splits in segments of 3; T = 100 at N = 64
# (chunks of 8 steps) and T = 1000 at N = 16 (chunks of 32 steps).
SIZES = [(1, 512), (2, 512), (7, 512), (100, 64), (1000, 16)]


def run(lstm, x, lengths, dy, state=None, d_state=None):
    """Everything a training step gives, and the cache's segment length and bytes."""
    y, (h_n, c_n) = lstm(x, state, lengths=lengths)
    segment, kept = lstm._engine.cache_segment, lstm.cache_bytes()
    dx, (dh0, dc0) = lstm.backward(dy, d_state)
    grads = {name: p.grad.copy() for name, p in lstm.named_parameters()}
    return dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, **grads), segment, kept


def problem(T, N, D, Hout, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N, I)).astype(dtype)
    lengths = rng.integers(0, T + 1, N)
    lengths[0] = T
    dy = rng.standard_normal((T, N, D * Hout)).astype(dtype)
    return x, lengths, dy


def assert_same_bits(got, want):
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name], err_msg=name, strict=True)


@pytest.mark.parametrize("T, N", SIZES)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_are_the_bits_of_full_storage(config, T, N, dtype):
    kw = CONFIGS[config]
    make = lambda memory: el.LSTM(I, H, dtype=dtype, seed=3, bptt_memory=memory, **kw)  # noqa: E731
    full_lstm = make(None)
    x, lengths, dy = problem(T, N, full_lstm.num_directions, full_lstm.output_size, dtype)
    rng = np.random.default_rng(1)
    DL = full_lstm.num_directions * full_lstm.num_layers
    state = (
        rng.standard_normal((DL, N, full_lstm.output_size)).astype(dtype),
        rng.standard_normal((DL, N, H)).astype(dtype),
    )
    d_state = tuple(rng.standard_normal(s.shape).astype(dtype) for s in state)
    want, full_segment, full_bytes = run(full_lstm, x, lengths, dy, state, d_state)
    assert full_segment == T

    got, segment, kept = run(make("sqrt"), x, lengths, dy, state, d_state)
    assert_same_bits(got, want)
    if T < 7:  # ceil(sqrt(T)) = T: nothing to split
        assert segment == T
        return
    assert segment < T and kept < full_bytes

    # A budget below full storage: the engine picks the longest segments that fit. (For
    # T = 2, two checkpoints and a segment's buffers take more than full storage.)
    got, segment, kept = run(make(full_bytes - 1), x, lengths, dy, state, d_state)
    assert_same_bits(got, want)
    assert segment < T and kept <= full_bytes - 1


@pytest.mark.parametrize("threads", [1, 2])
def test_the_same_bits_at_each_thread_count(threads):
    before = el.get_num_threads()
    el.set_num_threads(threads)
    try:
        x, lengths, dy = problem(300, 32, 2, H, np.float32)
        kw = dict(dtype=np.float32, seed=5, bidirectional=True, num_layers=2)
        want, _, _ = run(el.LSTM(I, H, **kw), x, lengths, dy)
        got, segment, _ = run(el.LSTM(I, H, bptt_memory="sqrt", **kw), x, lengths, dy)
        assert segment < 300
        assert_same_bits(got, want)
    finally:
        el.set_num_threads(before)


def test_sqrt_keeps_a_few_percent_of_full_storage():
    # T = 1000, N = 16, I = H = 64: full storage keeps about T*N*(I + 6H) values (x, the four
    # gates, h and c); sqrt keeps
    # 32 checkpoints of (h, c) and one segment of 32 steps.
    T, N = 1000, 16
    x = np.random.default_rng(0).standard_normal((T, N, 64)).astype(np.float32)
    kept = {}
    for memory in (None, "sqrt"):
        lstm = el.LSTM(64, 64, seed=0, bptt_memory=memory)
        lstm(x)
        kept[memory] = lstm.cache_bytes()
        assert lstm._engine.cache_segment == (T if memory is None else 32)
    assert kept[None] >= T * N * (64 + 6 * 64) * 4
    assert kept["sqrt"] <= 0.05 * kept[None], kept


def test_segments_read_the_input_again_and_keep_it_alive():
    # A training forward with segments keeps the (converted) input for backward: here a
    # float64 array converted to float32, which nothing else holds once forward returns.
    T, N = 200, 64
    x, lengths, dy = problem(T, N, 1, H, np.float64)
    want, _, _ = run(el.LSTM(I, H, seed=2), x.astype(np.float32), lengths, dy.astype(np.float32))
    lstm = el.LSTM(I, H, seed=2, bptt_memory="sqrt")
    y, _ = lstm(x.tolist(), lengths=lengths)  # a list: converted to a temporary array
    gc.collect()
    np.empty_like(x)  # reuse freed memory, if any was freed
    dx, _ = lstm.backward(dy.astype(np.float32))
    np.testing.assert_array_equal(dx, want["dx"], strict=True)
    np.testing.assert_array_equal(lstm.weight_ih_l0.grad, want["weight_ih_l0"], strict=True)


def test_batch_first_and_a_model_train_the_same_weights():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 150, 3)).astype(np.float32)
    y = rng.standard_normal((64, 2)).astype(np.float32)
    weights = []
    for memory in (None, "sqrt"):
        model = el.LSTMModel(3, 16, 2, num_layers=2, seed=0)
        model.lstm.bptt_memory = memory
        el.Trainer(model).fit(x, y, epochs=2, batch_size=64, seed=0, progress=False)
        weights.append(np.concatenate([np.ravel(p) for p in model.parameters()]))
    np.testing.assert_array_equal(weights[1], weights[0], strict=True)


@pytest.mark.parametrize(
    "value, error, match",
    [
        (
            "half",
            ValueError,
            "bptt_memory must be None, 'sqrt' or a number of bytes > 0, got 'half'",
        ),
        (0, ValueError, "got 0"),
        (-5, ValueError, "got -5"),
        (True, TypeError, "got bool True"),
        (1.5e6, TypeError, "got float 1500000.0"),
    ],
)
def test_bad_settings_are_refused_and_change_nothing(value, error, match):
    lstm = el.LSTM(I, H, seed=0, bptt_memory="sqrt")
    with pytest.raises(error, match=match):
        lstm.bptt_memory = value
    with pytest.raises(error, match=match):
        el.LSTM(I, H, bptt_memory=value)
    assert lstm.bptt_memory == "sqrt"


def test_a_budget_too_small_says_the_smallest_and_changes_nothing():
    lstm = el.LSTM(I, H, seed=0, bptt_memory=1000)
    x, lengths, _ = problem(100, 64, 1, H, np.float32)
    stream = lstm.dropout_state
    with pytest.raises(
        ValueError,
        match=r"bptt_memory: .*T=100 steps and B=64 rows keeps at "
        r"least \d+ bytes \(segments of \d+ steps\), got a budget of 1000 bytes",
    ):
        lstm(x, lengths=lengths)
    assert lstm.cache_bytes() == 0 and lstm.dropout_state == stream
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        lstm.backward(np.zeros((100, 64, H), np.float32))
    lstm.eval()
    lstm(x, lengths=lengths)  # evaluation keeps nothing: any budget does
