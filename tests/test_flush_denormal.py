"""el.set_flush_denormal: subnormal numbers flushed to zero in every compute thread while on,
exact IEEE arithmetic while off (the default), and the caller's own floating-point mode never
changed.

The model makes every state subnormal: all weights are zero and the cell-gate bias is
b = 1e-39, below float32's smallest normal number (1.18e-38). With IEEE arithmetic
  i = f = o = sigmoid(0) = 1/2,  g = tanh(b) ~ b,  c_t = c_prev/2 + b/2,  h_t = tanh(c_t)/2,
all subnormal and nonzero. Flushing reads b as zero (DAZ), so g, c and h are exactly zero.
"""

import platform

import numpy as np
import pytest

import eigenlstm as el

X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
TINY = np.float32(1e-39)
assert 0 < TINY < np.finfo(np.float32).tiny  # subnormal


@pytest.fixture
def restore_modes():
    threads, flush = el.get_num_threads(), el.get_flush_denormal()
    yield
    el.set_num_threads(threads)
    el.set_flush_denormal(flush)


def subnormal_module(bidirectional):
    lstm = el.LSTM(2, 3, bidirectional=bidirectional, seed=0)
    state = {k: np.zeros_like(v) for k, v in lstm.state_dict().items()}
    for k in state:
        if k.startswith("bias_ih"):
            state[k][6:9] = TINY  # the g block of [i, f, g, o]
    lstm.load_state_dict(state)
    return lstm.eval()


def test_flushing_is_off_by_default_and_the_setter_checks_its_argument(restore_modes):
    assert el.get_flush_denormal() is False
    assert el.config()["flush_denormal"] is False
    with pytest.raises(TypeError, match="mode must be a bool, got int"):
        el.set_flush_denormal(1)
    assert el.get_flush_denormal() is False


@pytest.mark.skipif(not X86, reason="flush-to-zero is an x86 mode (MXCSR)")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_subnormal_states_are_kept_when_off_and_flushed_in_every_thread_when_on(
    threads, bidirectional, restore_modes
):
    el.set_num_threads(threads)  # bidirectional at 2 threads: one OpenMP thread per direction
    lstm = subnormal_module(bidirectional)
    x = np.zeros((6, 4, 2), np.float32)

    assert el.set_flush_denormal(False) is True
    y, (h_n, c_n) = lstm(x)
    assert np.all(c_n > 0) and np.all(c_n < np.finfo(np.float32).tiny)
    assert np.all(y > 0) and np.all(y < np.finfo(np.float32).tiny)
    # c_t = c_prev/2 + b/2 from c_0 = 0: c_6 = b (1 - 2**-6), to subnormal precision
    np.testing.assert_allclose(c_n, float(TINY) * (1 - 2.0**-6), rtol=1e-3)

    assert el.set_flush_denormal(True) is True
    assert el.get_flush_denormal() is True
    y, (h_n, c_n) = lstm(x)
    assert not y.any() and not h_n.any() and not c_n.any()

    # The calling thread's mode was restored after the call: NumPy still sees subnormals.
    assert np.multiply(np.array([TINY]), np.float32(1))[0] == TINY

    el.set_flush_denormal(False)
    y_again, _ = lstm(x)
    assert np.all(y_again > 0)


@pytest.mark.skipif(X86, reason="the setter reports no support only off x86")
def test_elsewhere_the_setter_reports_no_support_and_stays_off(restore_modes):
    assert el.set_flush_denormal(True) is False
    assert el.get_flush_denormal() is False
