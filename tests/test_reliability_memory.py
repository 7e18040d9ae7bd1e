"""Memory behaviour of eigenlstm.LSTM: no growth over many calls, MemoryError (never a crash)
when a size cannot be allocated, and a module that still works after such a failure.

Resident memory is read from /proc/self/statm (Linux). Sizes that must fail are chosen above
2**47 bytes, the user address space of x86-64 Linux, so the allocation fails at once under any
overcommit policy instead of being granted lazily and OOM-killing the machine later.
"""
# Sizes: T time steps, N batch, I input size, H hidden size, P projection size.

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import eigenlstm as el

if not os.path.exists("/proc/self/statm"):  # pragma: no cover - CI runs on Linux
    pytest.skip("needs /proc/self/statm (Linux) to read resident memory", allow_module_level=True)

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20
# A per-call leak of an output of the calls below (y: up to 32*16*24*4 bytes = 48 KB, the
# training cache and eval scratch several times that) grows memory by tens of MB over 1000
# calls; allocator noise after warm-up is well under 1 MB.
GROWTH_BOUND = 10 * MB
ADDRESS_SPACE = 2**47  # bytes


@pytest.fixture(autouse=True, scope="module")
def one_engine_thread():
    """Run these tests on one engine thread: memory behaviour does not depend on the thread
    count, and on a loaded CI machine the OpenMP wake-ups of tiny parallel GEMMs would
    dominate 1000 iterations. Restores the setting afterwards."""
    saved = el.get_num_threads()
    el.set_num_threads(1)
    yield
    el.set_num_threads(saved)


def resident_bytes():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def virtual_bytes():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * PAGE


def growth_over(step, iterations, warmup=100, measure=resident_bytes):
    for i in range(warmup):
        step(i)
    before = measure()
    for i in range(iterations):
        step(i)
    return measure() - before


def small_module():
    # Unidirectional: a bidirectional call runs its two directions on two OpenMP threads even
    # with one engine thread (see test_reliability_concurrency); the buffers are the same.
    return el.LSTM(8, 32, num_layers=2, proj_size=24, seed=0)


def test_training_forward_and_backward_do_not_grow_resident_memory_over_1000_iterations():
    lstm = small_module()
    rng = np.random.default_rng(0)
    # Varying T and N: the training cache only ever grows to the largest (T, N) and is reused.
    inputs = [
        rng.standard_normal((int(T), 16, 8)).astype(np.float32) for T in rng.integers(1, 33, 16)
    ]
    inputs[0] = rng.standard_normal((32, 16, 8)).astype(np.float32)  # the largest comes first
    h0 = rng.standard_normal((2, 16, 24)).astype(np.float32)
    c0 = rng.standard_normal((2, 16, 32)).astype(np.float32)
    lengths = [rng.integers(0, x.shape[0] + 1, 16) for x in inputs]

    def step(i):
        x = inputs[i % len(inputs)]
        y, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths[i % len(inputs)])
        lstm.backward(np.ones_like(y), (np.ones_like(h_n), None))
        if i % 10 == 0:
            _ = lstm.grads  # copies of every gradient
            lstm.zero_grad()
            lstm.params_updated()

    grew = growth_over(step, 1000)
    assert grew < GROWTH_BOUND, f"resident memory grew by {grew / MB:.1f} MB over 1000 iterations"


def test_eval_forward_does_not_grow_resident_memory_over_1000_iterations():
    lstm = small_module().eval()
    rng = np.random.default_rng(1)
    # Sizes vary, the largest first: the eval buffers, reused by every call, must not grow.
    inputs = [
        rng.standard_normal((int(T), int(N), 8)).astype(np.float32)
        for T, N in zip(rng.integers(1, 33, 16), rng.integers(1, 17, 16))
    ]
    inputs[0] = rng.standard_normal((32, 16, 8)).astype(np.float32)

    def step(i):
        lstm(inputs[i % len(inputs)])

    grew = growth_over(step, 1000)
    assert grew < GROWTH_BOUND, f"resident memory grew by {grew / MB:.1f} MB over 1000 iterations"


def test_a_huge_hidden_size_raises_memory_error_and_the_interpreter_carries_on():
    # H = 2**22: 4H*(H + I + 2) float32 parameters are 2**48 bytes > the address space.
    assert 4 * 4 * 2**22 * 2**22 > ADDRESS_SPACE
    for dtype in (np.float32, np.float64):
        with pytest.raises(MemoryError):
            el.LSTM(10, 2**22, dtype=dtype)
    with pytest.raises(MemoryError):
        el.LSTM(2**46, 10)  # weight_ih alone is 2**46 * 40 floats
    lstm = el.LSTM(10, 20, seed=0)
    y, _ = lstm(np.ones((3, 2, 10), np.float32))
    assert y.shape == (3, 2, 20) and np.all(np.isfinite(y))


def test_failed_constructions_free_what_they_allocated():
    # Before failing on the parameters, the engine builds a 4H-entry gate permutation (128 MB
    # for H = 2**22): ten leaked ones would be > 1 GB resident.
    def step(i):
        with pytest.raises(MemoryError):
            el.LSTM(10, 2**22)

    grew = growth_over(step, 10, warmup=1)
    assert grew < GROWTH_BOUND, f"resident memory grew by {grew / MB:.1f} MB over 10 failures"


@pytest.fixture(scope="module")
def wide_projected_module():
    """I = 1, H = 2**18, P = 1: small parameters (~1 M) but 4H = 2**20 gate values per row."""
    return el.LSTM(1, 2**18, proj_size=1, seed=0)


# T*N = 2**26 rows: x and y are 256 MB of untouched (virtual) memory, but the gate workspace is
# 2**26 * 2**20 float32 = 2**48 bytes, beyond the address space: the engine's own allocation
# fails, not NumPy's.
HUGE_T = 2**26


@pytest.mark.parametrize("training", [False, True], ids=["eval", "training"])
def test_a_forward_whose_workspace_cannot_be_allocated_raises_memory_error_and_changes_nothing(
    wide_projected_module, training
):
    lstm = wide_projected_module
    assert HUGE_T * 4 * 2**18 * 4 > ADDRESS_SPACE
    rng = np.random.default_rng(2)
    x_small = rng.standard_normal((3, 2, 1)).astype(np.float32)
    lstm.train()
    y_before, (h_before, c_before) = lstm(x_small)
    dx_before, _ = lstm.backward(np.ones_like(y_before))
    params_before = lstm.state_dict()
    lstm(x_small)  # a cache for the backward below

    lstm.train(training)
    with pytest.raises(MemoryError):
        lstm(np.zeros((HUGE_T, 1, 1), np.float32))

    # A later backward either refuses (the cache was dropped) or differentiates the earlier
    # forward exactly; it never reads a half-allocated cache.
    lstm.train()
    try:
        dx_after, _ = lstm.backward(np.ones_like(y_before))
    except RuntimeError as e:
        assert "forward" in str(e)
    else:
        assert np.array_equal(dx_after, dx_before)
    for k, v in lstm.state_dict().items():
        assert np.array_equal(v, params_before[k]), f"a failed forward changed {k}"
    for mode in (True, False):
        lstm.train(mode)
        y, (h_n, c_n) = lstm(x_small)
        assert np.array_equal(y, y_before) and np.array_equal(h_n, h_before)
        assert np.array_equal(c_n, c_before)
    lstm.train()
    lstm(x_small)
    dx, _ = lstm.backward(np.ones_like(y_before))
    assert np.array_equal(dx, dx_before)


def test_repeated_failing_forwards_do_not_leak_their_output_buffers(wide_projected_module):
    # Each failing call first allocates y (256 MB, untouched, so only virtual): measure virtual
    # size, where 50 leaked outputs would be 12.5 GB.
    lstm = wide_projected_module.eval()
    x = np.zeros((HUGE_T, 1, 1), np.float32)

    def step(i):
        with pytest.raises(MemoryError):
            lstm(x)

    grew = growth_over(step, 50, warmup=2, measure=virtual_bytes)
    assert grew < 1024 * MB, f"virtual memory grew by {grew / MB:.0f} MB over 50 failures"


def test_an_input_too_large_to_make_contiguous_raises_memory_error():
    lstm = el.LSTM(4, 8, seed=0)
    # A broadcast view of 2**44 * 4 float32 (2**48 bytes): the copy to a contiguous array fails.
    x = np.broadcast_to(np.zeros((1, 1, 4), np.float32), (2**22, 2**22, 4))
    for mode in (False, True):
        lstm.train(mode)
        with pytest.raises(MemoryError):
            lstm(x)
    y, _ = lstm(np.ones((2, 3, 4), np.float32))
    assert y.shape == (2, 3, 8)


# Sizes whose byte counts overflow a 64-bit size: the engine must still report MemoryError,
# as its size checks intend ("std::bad_alloc if the product cannot be a buffer size"), never an
# opaque std::vector error or a crash. Run in a child interpreter so a crash fails one test
# instead of killing the session.
EXTREME_SIZES = {
    "hidden_size=2**60": "el.LSTM(10, 2**60)",
    "hidden_size=2**62": "el.LSTM(10, 2**62)",
    "num_layers=2**61": "el.LSTM(10, 10, num_layers=2**61)",
}


@pytest.mark.parametrize("call", EXTREME_SIZES.values(), ids=EXTREME_SIZES.keys())
def test_a_size_whose_byte_count_overflows_raises_memory_error_without_crashing(call):
    script = textwrap.dedent(f"""
        import numpy as np, eigenlstm as el
        try:
            {call}
        except MemoryError:
            print("MemoryError")
        except BaseException as e:
            print(type(e).__name__, e)
        y, _ = el.LSTM(3, 4, seed=0)(np.ones((2, 1, 3), np.float32))
        print("alive", y.shape)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{call} crashed the interpreter (exit {proc.returncode})"
    assert proc.stdout.split("\n")[:2] == ["MemoryError", "alive (2, 1, 4)"], (
        proc.stdout + proc.stderr
    )


@pytest.mark.parametrize("call", ["eval", "training", "backward"])
def test_an_allocation_failure_inside_a_parallel_region_is_memory_error_and_the_module_still_works(
    call,
):
    """An exception must not leave an OpenMP region (the runtime would terminate the process):
    each thread catches, and the call rethrows after the region. A test hook makes one thread
    of the next multi-threaded region throw std::bad_alloc, as an allocation failure would."""
    from eigenlstm import _core

    el.set_num_threads(2)  # the module fixture restores the setting
    # Bidirectional: the two directions run as two one-thread teams, a parallel region.
    lstm = el.LSTM(16, 32, num_layers=2, bidirectional=True, seed=0)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 4, 16)).astype(np.float32)
    dy = rng.standard_normal((12, 4, 64)).astype(np.float32)
    lstm.train()
    y_ref, _ = lstm(x)
    dx_ref, _ = lstm.backward(dy)
    grads_ref = {k: v.copy() for k, v in lstm.grads.items()}
    lstm.zero_grad()
    lstm.eval()
    y_eval_ref, _ = lstm(x)

    lstm.train(call != "eval")
    if call == "backward":
        lstm(x)
    try:
        _core._fail_next_parallel_region(True)
        with pytest.raises(MemoryError):
            lstm.backward(dy) if call == "backward" else lstm(x)
    finally:
        _core._fail_next_parallel_region(False)

    # Nothing was accumulated, and the module computes exactly what it did before.
    assert all(not v.any() for v in lstm.grads.values())
    lstm.eval()
    y_eval, _ = lstm(x)
    assert np.array_equal(y_eval, y_eval_ref)
    lstm.train()
    y, _ = lstm(x)
    dx, _ = lstm.backward(dy)
    assert np.array_equal(y, y_ref) and np.array_equal(dx, dx_ref)
    for k, v in lstm.grads.items():
        assert np.array_equal(v, grads_ref[k]), k
