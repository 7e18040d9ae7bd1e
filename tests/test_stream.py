"""Streams: stateful inference one step or one chunk at a time (LSTM.stream, LSTMModel.stream),
and LSTMModel's state= / return_state=.

A stream split any way gives the outputs and final state of one call over the whole sequence,
bitwise at a given thread count; reset(rows) touches only those rows; out= writes in place and a
steady-state step allocates no array (the C++ side is counted by tests/cpp/test_no_alloc.cpp).
"""

import itertools
import threading
import tracemalloc

import numpy as np
import pytest

import eigenlstm as el

I, H, P, N, T = 5, 19, 7, 3, 12  # H = 19: a ragged last gate block in both dtypes
DTYPES = [np.float32, np.float64]
ANOTHER_THREAD = "this stream is being used by another thread"

# Every configuration the parity tests cover that can stream (a stream is unidirectional).
CONFIGS = {
    f"L{L}-{'bf' if bf else 'tm'}-{'P' if proj else 'noP'}-{'bias' if bias else 'nobias'}": dict(
        num_layers=L, batch_first=bf, proj_size=P if proj else 0, bias=bias
    )
    for L, bf, proj, bias in itertools.product((1, 2), (False, True), (False, True), (True, False))
}


def make_lstm(name, dtype, seed=0):
    return el.LSTM(I, H, dtype=dtype, seed=seed, **CONFIGS[name]).eval()


def chunk(x, t0, t1, batch_first):
    return x[:, t0:t1] if batch_first else x[t0:t1]


def join(parts, batch_first):
    return np.concatenate(parts, axis=1 if batch_first else 0)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    saved = el.get_num_threads()
    el.set_num_threads(request.param)
    yield request.param
    el.set_num_threads(saved)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_steps_and_chunks_equal_one_call_bitwise(name, dtype, threads):
    lstm = make_lstm(name, dtype)
    bf = lstm.batch_first
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, T, I) if bf else (T, N, I)).astype(dtype)
    L = lstm.num_layers
    h0 = rng.standard_normal((L, N, lstm.output_size)).astype(dtype)
    c0 = rng.standard_normal((L, N, H)).astype(dtype)
    want, (h_n, c_n) = lstm(x, (h0, c0))
    for bounds in ([0, T], [0, 1, 5, 6, 12], list(range(T + 1))):
        stream = lstm.stream(N)
        stream.state = (h0, c0)
        parts = [stream(chunk(x, a, b, bf)) for a, b in zip(bounds, bounds[1:])]
        assert np.array_equal(join(parts, bf), want), bounds
        assert np.array_equal(stream.state[0], h_n) and np.array_equal(stream.state[1], c_n)
    stream = lstm.stream(N)  # one step (N, I) per call, from zeros
    steps = np.stack([stream(x[:, t] if bf else x[t]) for t in range(T)], axis=1 if bf else 0)
    assert np.array_equal(steps, lstm(x)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_a_stream_equals_one_call_bitwise_where_their_thread_plans_differ(dtype, threads):
    # At two threads the whole sequence (2^23 multiply-adds) gives each thread two batch rows
    # for all steps, one step (2^17) splits the hidden units between the threads, and the
    # input projections of a step and of the sequence cut rows into register blocks
    # differently (cpp/src/engine/plan.hpp): each value must still be summed the same way.
    lstm = el.LSTM(64, 64, num_layers=2, dtype=dtype, seed=1).eval()
    x = np.random.default_rng(10).standard_normal((100, 4, 64)).astype(dtype)
    want, (h_n, c_n) = lstm(x)
    stream = lstm.stream(4)
    parts = [stream(x[t : t + 1]) for t in range(7)] + [stream(x[7:50]), stream(x[50:])]
    assert np.array_equal(np.concatenate(parts), want)
    assert np.array_equal(stream.state[0], h_n) and np.array_equal(stream.state[1], c_n)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_a_model_stream_is_the_head_at_every_step_of_one_lstm_call(dtype, threads):
    model = el.LSTMModel(I, H, 4, num_layers=2, dtype=dtype, seed=0).eval()
    x = np.random.default_rng(2).standard_normal((N, T, I)).astype(dtype)
    out, _ = model.lstm(x)
    want = out @ model.fc.weight.T + model.fc.bias  # (N, T, O)
    stream = model.stream(N)
    parts = [stream(x[:, :5]), stream(x[:, 5]), stream(x[:, 6:])]
    got = np.concatenate([parts[0], parts[1][:, None], parts[2]], axis=1)
    np.testing.assert_allclose(got, want, rtol=10 * np.finfo(dtype).eps, atol=0)
    # the last step's output is what forward gives for the whole sequence
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got[:, -1], model(x), rtol=tol, atol=tol)


def test_reset_rows_zeroes_those_rows_and_leaves_the_others_bitwise():
    lstm = make_lstm("L2-tm-P-bias", np.float32)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    stream = lstm.stream(N)
    stream(x[:6])
    h, c = stream.state
    for rows in ([1], np.array([0, 2]), np.array([False, True, False]), -1):
        stream.state = (h, c)
        stream.reset(rows=rows)
        picked = np.zeros(N, bool)
        picked[rows] = True
        h2, c2 = stream.state
        assert not h2[:, picked].any() and not c2[:, picked].any()
        assert np.array_equal(h2[:, ~picked], h[:, ~picked])
        assert np.array_equal(c2[:, ~picked], c[:, ~picked])
    # a reset row then runs as a new sequence; the others continue theirs
    stream.state = (h, c)
    stream.reset(rows=[1])
    y = stream(x[6:])
    full, _ = lstm(x)
    fresh, _ = lstm(x[6:, 1:2])
    assert np.array_equal(y[:, [0, 2]], full[6:, [0, 2]])
    assert np.array_equal(y[:, 1:2], fresh)
    stream.reset()
    assert not any(a.any() for a in stream.state)


def test_a_row_past_its_length_keeps_its_state_so_idle_clients_wait():
    lstm = make_lstm("L1-tm-noP-bias", np.float64)
    x = np.random.default_rng(4).standard_normal((T, N, I))
    stream = lstm.stream(N)
    stream(x[:4])
    before = stream.state
    y = stream(x[4:5], lengths=[1, 0, 1])  # row 1 sends nothing this step
    assert not y[0, 1].any()
    assert np.array_equal(stream.state[0][:, 1], before[0][:, 1])
    assert np.array_equal(stream.state[1][:, 1], before[1][:, 1])
    want, _ = lstm(x[:5])
    assert np.array_equal(y[0, [0, 2]], want[4, [0, 2]])


@pytest.mark.parametrize("module", ["LSTM", "LSTMModel"])
def test_out_receives_the_result_and_a_steady_step_allocates_no_array(module):
    dtype, B, F = np.float32, 32, 256
    if module == "LSTM":
        net = el.LSTM(F, F, num_layers=2, dtype=dtype, seed=0).eval()
    else:
        net = el.LSTMModel(F, F, F, num_layers=2, dtype=dtype, seed=0).eval()
    stream, reference = net.stream(B), net.stream(B)
    xs = np.random.default_rng(5).standard_normal((8, B, F)).astype(dtype)
    out = np.empty((B, F), dtype)
    for x in xs[:4]:  # warm up: the engine's buffers reach their size
        assert stream(x, out=out) is out
        assert np.array_equal(out, reference(x))
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for x in xs[4:]:
            stream(x, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Every array a step could make (a copy of x, a hidden state, an output) is B*F*4 = 32 KiB;
    # what a step may allocate are Python's and NumPy's per-call objects (a few KiB).
    assert peak - start < 16384, f"a step allocated {peak - start} bytes"
    for x in xs[4:]:
        want = reference(x)
    assert np.array_equal(out, want)


def test_bad_input_is_refused_by_name_and_changes_nothing():
    lstm = make_lstm("L2-bf-noP-bias", np.float32)
    stream = lstm.stream(N)
    stream(np.ones((N, 3, I)))
    h, c = stream.state
    bad_calls = [
        (lambda: stream(np.ones((N + 1, I))), ValueError, r"Stream: x must have shape \(3, 5\)"),
        (lambda: stream(np.ones((N, 2, I + 1))), ValueError, r"\(N, T, 5\) with N = 3"),
        (lambda: stream(np.ones(I)), ValueError, "x must be 2-D .* got 1-D"),
        (lambda: stream(np.ones((N, I)) + 1j), TypeError, "x must hold real numbers"),
        (
            lambda: stream(np.ones((N, I)), out=np.empty((N, H), np.float64)),
            TypeError,
            "out must have dtype float32, got float64",
        ),
        (
            lambda: stream(np.ones((N, I)), out=np.empty((N, H + 1), np.float32)),
            ValueError,
            r"out must have shape \(3, 19\)",
        ),
        (
            lambda: stream(np.ones((N, I)), out=np.empty((H, N), np.float32).T),
            ValueError,
            "out must be a C-contiguous writable array",
        ),
        (
            lambda: stream(np.ones((N, 2, I)), lengths=[1, 2, 3]),
            ValueError,
            r"lengths must be in \[0, 2\]",
        ),
        (lambda: stream.reset(rows=[3]), ValueError, r"rows must be in \[-3, 3\), got 3"),
        (lambda: stream.reset(rows=[True, False]), ValueError, r"rows must have shape \(3,\)"),
        (lambda: stream.reset(rows=[0.5]), TypeError, "rows must be integers or a boolean mask"),
        (
            lambda: setattr(stream, "state", (h,)),
            TypeError,
            r"Stream.state: state must be a tuple \(h, c\), got a tuple of length 1",
        ),
        (
            lambda: setattr(stream, "state", (h[:, :1], c)),
            ValueError,
            r"Stream.state: h must have shape \(2, 3, 19\), got \(2, 1, 19\)",
        ),
    ]
    for call, kind, message in bad_calls:
        with pytest.raises(kind, match=message):
            call()
        assert np.array_equal(stream.state[0], h) and np.array_equal(stream.state[1], c)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: el.LSTM(I, H, bidirectional=True).stream(2),
            "LSTM.stream: the LSTM must run forward in time to stream .* got bidirectional=True",
        ),
        (
            lambda: el.LSTMModel(I, H, 2, bidirectional=True).stream(2),
            "LSTMModel.stream: the LSTM must run forward in time",
        ),
        (lambda: el.LSTM(I, H).stream(0), r"LSTM.stream: batch_size must be >= 1, got 0"),
        (lambda: el.LSTM(I, H).stream(2, head=el.Linear(H + 1, 2)), r"head must be a Linear\(19"),
    ],
)
def test_a_stream_that_cannot_be_made_is_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_stream_used_by_two_threads_at_once_is_refused_and_keeps_its_state():
    lstm = el.LSTM(8, 64, seed=5).eval()
    rng = np.random.default_rng(6)
    x_long = rng.standard_normal((3000, 4, 8)).astype(np.float32)
    x_step = rng.standard_normal((4, 8)).astype(np.float32)
    want, (h_n, _) = lstm(x_long)
    for _ in range(20):  # bounded: the overlap depends on scheduling
        stream = lstm.stream(4)
        result, entered, refused = {}, threading.Event(), []

        def long_chunk(stream=stream, result=result, entered=entered):
            entered.set()
            result["y"] = stream(x_long)

        thread = threading.Thread(target=long_chunk)
        thread.start()
        entered.wait()
        succeeded = False
        while thread.is_alive():
            try:
                stream(x_step)
                succeeded = True  # ran before the long chunk took the stream: try again
                break
            except RuntimeError as e:
                refused.append(str(e))
        thread.join()
        if refused and not succeeded:
            break
    assert refused and all(ANOTHER_THREAD in m for m in refused)
    assert np.array_equal(result["y"], want) and np.array_equal(stream.state[0], h_n)


# ---- LSTMModel: state= and return_state= -------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_model_continues_a_sequence_from_the_state_it_returned(bidirectional):
    model = el.LSTMModel(
        I, H, 2, num_layers=2, bidirectional=bidirectional, dtype=np.float64, seed=0
    ).eval()
    x = np.random.default_rng(7).standard_normal((N, T, I))
    y1, state = model(x[:, :5], return_state=True)
    y2, (h_n, c_n) = model(x[:, 5:], state=state, return_state=True)
    out, (h_full, c_full) = model.lstm(x[:, 5:], state)
    np.testing.assert_allclose(y2, out[:, -1] @ model.fc.weight.T + model.fc.bias, rtol=1e-12)
    assert np.array_equal(h_n, h_full) and np.array_equal(c_n, c_full)
    if not bidirectional:  # a unidirectional LSTM: the two halves are the whole sequence
        np.testing.assert_allclose(y2, model(x), rtol=1e-12)
    # predict in batches of 2 gives the same, state sliced along the batch
    y, (h, c) = model.predict(x[:, 5:], batch_size=2, state=state, return_state=True)
    np.testing.assert_allclose(y, y2, rtol=1e-12)
    assert np.array_equal(h, h_n) and np.array_equal(c, c_n)
    assert np.array_equal(model.predict(x, return_state=True)[1][0], model.lstm(x)[1][0])


def test_predict_from_a_state_returns_the_outputs_alone_unless_asked_for_the_state():
    model = el.LSTMModel(I, H, 2, dtype=np.float64, seed=0)
    x = np.random.default_rng(11).standard_normal((N, T, I))
    _, state = model.predict(x[:, :4], return_state=True)
    y = model.predict(x[:, 4:], batch_size=2, state=state)
    assert isinstance(y, np.ndarray) and y.shape == (N, 2)
    np.testing.assert_allclose(y, model.predict(x), rtol=1e-12)


def test_a_batch_first_chunk_with_a_head_and_lengths_writes_out_and_zeros_finished_rows():
    model = el.LSTMModel(I, H, 3, dtype=np.float64, seed=0).eval()
    x = np.random.default_rng(12).standard_normal((N, 4, I))
    lengths = np.array([4, 2, 0])
    stream = model.stream(N)
    out = np.full((N, 4, 3), np.nan)
    assert stream(x, lengths=lengths, out=out) is out
    full, _ = model.lstm(x)
    want = full @ model.fc.weight.T + model.fc.bias
    np.testing.assert_allclose(out[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(out[1, :2], want[1, :2], rtol=1e-12)
    assert not out[1, 2:].any() and not out[2].any()
    assert not stream.state[0][:, 2].any()  # row 2 took no step: still the zero state


def test_a_training_forward_from_a_state_backpropagates_as_from_zeros_would_with_that_state():
    model = el.LSTMModel(I, H, 2, dtype=np.float64, seed=0)
    x = np.random.default_rng(8).standard_normal((N, T, I))
    state = tuple(np.random.default_rng(9).standard_normal((2, 1, N, H)))
    y = model(x, state=state)
    dx = model.backward(np.ones_like(y))
    grads = model.grads
    twin = el.LSTMModel(I, H, 2, dtype=np.float64, seed=0)
    out, _ = twin.lstm(x, state)
    twin.fc(out[:, -1])
    d_out = np.zeros_like(out)
    d_out[:, -1] = twin.fc.backward(np.ones_like(y))
    dx_twin, _ = twin.lstm.backward(d_out)
    np.testing.assert_allclose(dx, dx_twin, rtol=1e-12)
    for k, g in twin.grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-12, err_msg=k)


def test_a_bad_state_is_refused_by_name():
    model = el.LSTMModel(I, H, 2, seed=0)
    x = np.ones((N, T, I))
    with pytest.raises(ValueError, match=r"LSTMModel.forward: c0 must have shape \(1, 3, 19\)"):
        model(x, state=(np.zeros((1, N, H)), np.zeros((1, N + 1, H))))
    with pytest.raises(
        TypeError, match=r"LSTMModel.predict: state must be a tuple \(h0, c0\), got ndarray"
    ):
        model.predict(x, state=np.zeros((1, N, H)))
