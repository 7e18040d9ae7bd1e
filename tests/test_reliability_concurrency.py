"""Thread safety of eigenlstm.LSTM when driven from several Python threads.

What the bindings promise (cpp/bindings/module.cpp): independent modules share nothing; one
module's eval-mode forward calls share a reader lock and touch no member; training-mode
forward/backward and parameter writes take the lock alone and refuse, with a RuntimeError
naming "another thread", instead of waiting; the GIL is released around compute. Every result
here is compared bitwise with a serial run: the engine is deterministic for a fixed thread count,
so any difference means one thread's data leaked into another's.
"""
# Sizes: T time steps, N batch, I input size, H hidden size.

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import eigenlstm as el

ANOTHER_THREAD = "being used by another thread"

# Two of the modules are big enough that a step is split across a team of engine threads
# (N*4H*Hout >= 2^16, see plan_team in cpp/src/engine/plan.hpp), with every feature that has per-module state: dropout stream, projection, lengths, layouts.
MODULES = (
    dict(I=8, H=64, num_layers=2, bidirectional=True, dropout=0.3, dtype=np.float32, N=16, T=12),
    dict(I=5, H=48, num_layers=1, proj_size=20, dtype=np.float64, N=16, T=10, ragged=True),
    dict(I=16, H=64, num_layers=2, batch_first=True, dtype=np.float32, N=16, T=12),
    dict(
        I=3,
        H=37,
        num_layers=3,
        bidirectional=True,
        proj_size=11,
        dropout=0.5,
        dtype=np.float64,
        N=12,
        T=8,
        ragged=True,
    ),
)
ITERATIONS = 4


def make_module(spec, seed):
    kw = {k: v for k, v in spec.items() if k not in ("I", "H", "N", "T", "ragged")}
    return el.LSTM(spec["I"], spec["H"], seed=seed, **kw)


def training_job(spec, seed):
    """ITERATIONS training forward+backward passes on a fresh module; every array produced."""
    lstm = make_module(spec, seed)
    rng = np.random.default_rng(seed)
    T, N, I = spec["T"], spec["N"], spec["I"]
    results = []
    for _ in range(ITERATIONS):
        x = rng.standard_normal((N, T, I) if spec.get("batch_first") else (T, N, I))
        lengths = rng.integers(0, T + 1, N) if spec.get("ragged") else None
        y, (h_n, c_n) = lstm(x, lengths=lengths)
        dx, (dh0, dc0) = lstm.backward(
            rng.standard_normal(y.shape), (rng.standard_normal(h_n.shape), None)
        )
        results += [y, h_n, c_n, dx, dh0, dc0]
    results += list(lstm.grads.values()) + list(lstm.state_dict().values())
    results.append(np.array(lstm.dropout_state, dtype=np.uint64))
    return results


def assert_bitwise_equal(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, (
            f"array {i}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        )
        assert np.array_equal(g, w), f"array {i} differs from the serial run"


def run_in_threads(fns):
    """Run every fn in its own thread, released together; return their results in order.

    An exception in a thread is re-raised here, so no failure is lost.
    """
    start = threading.Barrier(len(fns))
    results = [None] * len(fns)
    errors = []

    def body(i, fn):
        try:
            start.wait()
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_independent_modules_trained_in_parallel_threads_match_a_serial_run_bitwise():
    seeds = [101 + i for i in range(len(MODULES))]
    serial = [training_job(spec, s) for spec, s in zip(MODULES, seeds)]
    for _ in range(2):  # two rounds: the OpenMP pools of finished threads are torn down between
        parallel = run_in_threads(
            [lambda spec=spec, s=s: training_job(spec, s) for spec, s in zip(MODULES, seeds)]
        )
        for got, want in zip(parallel, serial):
            assert_bitwise_equal(got, want)


def test_one_module_in_eval_mode_shared_by_many_threads_matches_a_serial_run_bitwise():
    # H = 128, P = 64: calls with N >= 8 split each step across a team of engine threads.
    lstm = el.LSTM(6, 128, num_layers=2, bidirectional=True, proj_size=64, seed=7).eval()
    rng = np.random.default_rng(0)
    # Different inputs, sizes and lengths per call, so a thread reading another's scratch shows.
    calls = []
    for k in range(24):
        T, N = 3 + k % 5, 1 + (k * 7) % 17
        calls.append(
            (
                rng.standard_normal((T, N, 6)),
                rng.standard_normal((4, N, 64)),
                rng.standard_normal((4, N, 128)),
                rng.integers(0, T + 1, N),
            )
        )

    def run(call):
        x, h0, c0, lengths = call
        y, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths)
        return [y, h_n, c_n]

    serial = [run(c) for c in calls]
    params_before = lstm.state_dict()
    n_threads, repeats = 8, 3

    def worker(t):
        # Each thread walks all calls from a different starting point, several times.
        return [run(calls[(t + j) % len(calls)]) for j in range(repeats * len(calls))]

    per_thread = run_in_threads([lambda t=t: worker(t) for t in range(n_threads)])
    for t, outs in enumerate(per_thread):
        for j, got in enumerate(outs):
            assert_bitwise_equal(got, serial[(t + j) % len(calls)])
    for k, v in lstm.state_dict().items():
        assert np.array_equal(v, params_before[k]), f"{k} changed during eval-mode forwards"


def overlap_with_long_training_forward(lstm, x_long, calls):
    """Start a training-mode forward over `x_long` in a thread; while it runs, make `calls`.

    The first call is repeated until it is refused (the long forward holds the lock) or the
    long forward ends; the others then run once each, most likely while the lock is still held.
    Returns ({name: "ok" or the RuntimeError}, {"value": result} or {"error": RuntimeError}).
    """
    long_result = {}
    entered = threading.Event()

    def long_forward():
        entered.set()
        try:
            long_result["value"] = lstm(x_long)
        except RuntimeError as e:  # refused: one of our calls held the lock at that moment
            long_result["error"] = e

    thread = threading.Thread(target=long_forward)
    thread.start()
    entered.wait()
    outcomes = {}
    (first_name, first), rest = calls[0], calls[1:]
    while thread.is_alive():
        try:
            first()
        except RuntimeError as e:
            outcomes[first_name] = e
            break
    for name, call in rest:
        try:
            call()
            outcomes[name] = "ok"
        except RuntimeError as e:
            outcomes[name] = e
    thread.join()
    return outcomes, long_result


def test_one_model_in_eval_mode_shared_by_many_threads_matches_a_serial_run_bitwise():
    # LSTMModel's eval forward runs in the module's buffers, or in its thread's while another
    # call holds them: threads that shared buffers would mix their sequences.
    model = el.LSTMModel(6, 20, 3, num_layers=2, bidirectional=True, seed=3).eval()
    rng = np.random.default_rng(1)
    calls = []
    for k in range(24):
        T, N = 2 + k % 6, 1 + (k * 5) % 13
        calls.append((rng.standard_normal((N, T, 6)), rng.integers(1, T + 1, N)))
    serial = [model(x, lengths=lengths) for x, lengths in calls]

    def worker(t):
        order = calls[t:] + calls[:t]
        return [model(x, lengths=lengths) for x, lengths in order * 3]

    for t, got in enumerate(run_in_threads([lambda t=t: worker(t) for t in range(8)])):
        want = (serial[t:] + serial[:t]) * 3
        assert_bitwise_equal(got, want)


def test_concurrent_training_calls_on_one_module_are_refused_and_corrupt_nothing():
    I, H = 8, 64
    lstm = el.LSTM(I, H, num_layers=2, seed=3)
    reference_module = el.LSTM(I, H, num_layers=2, seed=3)  # same weights, never shared
    rng = np.random.default_rng(1)
    x_small = rng.standard_normal((4, 3, I)).astype(np.float32)
    x_long = rng.standard_normal((4000, 16, I)).astype(np.float32)
    long_expected = reference_module(x_long)
    small_expected = reference_module(x_small)
    reference_module.backward(np.ones_like(small_expected[0]))
    grads_expected = reference_module.grads

    params_before = lstm.state_dict()
    replacement = {k: v + 1 for k, v in params_before.items()}
    calls = [
        ("training forward", lambda: lstm(x_small)),
        ("zero_grad", lstm.zero_grad),
        ("params_updated", lstm.params_updated),
        ("load_state_dict", lambda: lstm.load_state_dict(replacement)),
        ("set_dropout_state", lambda: lstm.set_dropout_state(lstm.dropout_state)),
    ]
    refused = {}
    for _ in range(20):  # bounded: an attempt fails to overlap only if scheduling is unlucky
        outcomes, long_result = overlap_with_long_training_forward(lstm, x_long, calls)
        # Whatever interleaving happened, nothing else than a clear refusal may come out...
        for name, outcome in outcomes.items():
            if outcome != "ok":
                assert ANOTHER_THREAD in str(outcome), f"{name}: unexpected message {outcome}"
                refused[name] = outcome
        if "error" in long_result:
            assert ANOTHER_THREAD in str(long_result["error"])
        else:
            # ...and a forward that ran while others were refused computed the right thing.
            y, (h_n, c_n) = long_result["value"]
            for got, want in zip((y, h_n, c_n), (long_expected[0], *long_expected[1])):
                assert np.array_equal(got, want)
        if outcomes.get("load_state_dict") == "ok":  # it ran after the long forward: undo it
            lstm.load_state_dict(params_before)
        if len(refused) == len(calls):
            break
    assert set(refused) == {name for name, _ in calls}, f"only {sorted(refused)} were refused"
    assert "training forward" in refused and ANOTHER_THREAD in str(refused["training forward"])

    # No corruption: the module still computes exactly what an untouched twin computes.
    for k, v in lstm.state_dict().items():
        assert np.array_equal(v, params_before[k]), f"a refused call changed {k}"
    lstm.zero_grad()
    y, (h_n, c_n) = lstm(x_small)
    for got, want in zip((y, h_n, c_n), (small_expected[0], *small_expected[1])):
        assert np.array_equal(got, want)
    lstm.backward(np.ones_like(y))
    for k, g in lstm.grads.items():
        assert np.array_equal(g, grads_expected[k]), f"grad {k} differs after refused calls"


def test_an_eval_forward_during_a_training_forward_waits_and_returns_the_right_result():
    lstm = el.LSTM(8, 64, seed=5)
    rng = np.random.default_rng(2)
    x_small = rng.standard_normal((5, 2, 8)).astype(np.float32)
    x_long = rng.standard_normal((3000, 16, 8)).astype(np.float32)
    expected = lstm.eval()(x_small)
    outs = []
    for _ in range(20):  # bounded retries: an attempt counts once the overlap is observed
        lstm.train()
        entered = threading.Event()
        thread = threading.Thread(target=lambda entered=entered: (entered.set(), lstm(x_long)))
        thread.start()
        entered.wait()
        overlapped = False
        while thread.is_alive() and not overlapped:
            try:
                lstm.zero_grad()  # a quick exclusive call: refused iff the forward holds the lock
            except RuntimeError as e:
                assert ANOTHER_THREAD in str(e)
                overlapped = True
        if overlapped:
            # The training forward held the lock a moment ago: this eval call (shared lock)
            # waits for it instead of being refused or reading its half-written cache.
            outs.append(lstm.eval()(x_small))
        thread.join()
        if overlapped:
            break
    assert outs, "no attempt overlapped the long training forward"
    y, (h_n, c_n) = outs[0]
    assert np.array_equal(y, expected[0])
    assert np.array_equal(h_n, expected[1][0]) and np.array_equal(c_n, expected[1][1])


@pytest.fixture
def one_engine_thread():
    saved = el.get_num_threads()
    el.set_num_threads(1)
    yield
    el.set_num_threads(saved)


def test_the_gil_is_released_while_a_forward_computes(one_engine_thread):
    """A Python thread keeps counting while the main thread is inside a long eval forward.

    Switching is made voluntary: the counter yields the GIL after every increment
    (time.sleep(0)) and the switch interval is long, so the main thread is never preempted
    between reading the counter and calling forward. If forward held the GIL the counter could
    not move during the call; with the GIL released it runs for the whole call. The control
    (sorting a list, C code that holds the GIL) shows the counter indeed stalls otherwise.
    """
    lstm = el.LSTM(32, 256, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((1000, 32, 32)).astype(np.float32)
    expected = lstm(x[:10])
    big_list = np.random.default_rng(1).permutation(1_000_000).tolist()

    count = [0]
    stop = threading.Event()
    started = threading.Event()

    def counter():
        started.set()
        while not stop.is_set():
            count[0] += 1
            time.sleep(0)  # releases the GIL: the main thread takes it whenever it wants it

    saved_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    thread = threading.Thread(target=counter)
    try:
        thread.start()
        started.wait()
        before = count[0]
        sorted(big_list)  # control: holds the GIL throughout
        during_control = count[0] - before
        before = count[0]
        y, _ = lstm(x)
        during_forward = count[0] - before
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(saved_interval)
    assert during_control <= 10, f"the counter moved {during_control} times while the GIL was held"
    assert during_forward >= 1000, f"the counter moved only {during_forward} times during forward"
    assert y.shape == (1000, 32, 256)
    # The first 10 steps depend only on the first 10 inputs.
    np.testing.assert_allclose(y[:10], expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_one_engine_thread_keeps_a_bidirectional_lstm_on_the_calling_thread():
    """set_num_threads(1) bounds the threads of every call (cpp/include/eigenlstm/lstm.hpp:
    "Number of threads the engine uses for one call"), bidirectional layers included.

    Users set 1 to run one process per core (data loaders, multiprocessing pools); extra
    threads there oversubscribe the machine. Counted in a fresh interpreter, where the OpenMP
    pool starts empty: any thread the engine starts stays in /proc/self/task afterwards.
    """
    script = textwrap.dedent("""
        import os
        import numpy as np, eigenlstm as el
        el.set_num_threads(1)
        threads = lambda: len(os.listdir("/proc/self/task"))
        x = np.ones((5, 3, 4), np.float32)
        uni = el.LSTM(4, 8, seed=0)
        y, _ = uni(x); uni.backward(np.ones_like(y))
        before = threads()
        bi = el.LSTM(4, 8, num_layers=2, bidirectional=True, seed=0)
        y, _ = bi(x); bi.backward(np.ones_like(y)); bi.eval()(x)
        print(before, threads())
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    before, after = map(int, proc.stdout.split())
    assert after == before, (
        f"a bidirectional call with 1 engine thread started {after - before} more"
    )
