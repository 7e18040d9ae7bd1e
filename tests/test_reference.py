"""Tests of the float64 NumPy reference itself (tests/reference.py).

Witnesses: torch.nn.LSTM (forward and autograd, float64, packed sequences for lengths; a stack
of single-layer torch LSTMs for explicit dropout masks) and central finite differences.
"""
# Sizes: T time steps, B batch, I input size, H hidden size, P projection size,
# Hout = P if P > 0 else H, D directions, L layers, G = 4H gate rows.

import itertools

import numpy as np
import pytest
import torch  # a hard import on purpose: the torch witness must never be silently skipped
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from compare import ARRAYS, finite_difference, reference_results, torch_results
from reference import init_params, param_names, reference_backward, reference_forward

T, B, I, H = 5, 3, 4, 3
RTOL, ATOL = 1e-10, 1e-12  # float64 vs float64: only summation order differs
LENGTHS = {"full": None, "ragged": [5, 1, 3], "short": [3, 2, 1]}  # "short": max(lengths) < T


def assert_close(actual, expected, name):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=name)


def make_case(seed, num_layers, bidirectional, proj_size, bias, lengths, batch=B, dropout=False):
    """Random params, inputs, output gradients and (optionally) scaled dropout masks."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    Hout = proj_size if proj_size > 0 else H
    case = {
        "cfg": {"num_layers": num_layers, "bidirectional": bidirectional, "proj_size": proj_size},
        "bias": bias,
        "params": init_params(rng, I, H, num_layers, bidirectional, proj_size, bias),
        "x": rng.standard_normal((T, batch, I)),
        "h0": rng.standard_normal((D * num_layers, batch, Hout)),
        "c0": rng.standard_normal((D * num_layers, batch, H)),
        "lengths": None if lengths is None else np.asarray(lengths),
        "d_output": rng.standard_normal((T, batch, D * Hout)),
        "dh_n": rng.standard_normal((D * num_layers, batch, Hout)),
        "dc_n": rng.standard_normal((D * num_layers, batch, H)),
        "masks": None,
    }
    if dropout:
        p = 0.4
        case["masks"] = [
            (rng.random((T, batch, D * Hout)) >= p) / (1 - p) for _ in range(num_layers - 1)
        ]
    return case


def run_reference(case):
    return reference_results(case, dropout_masks=case["masks"])


def run_torch_module(lstm, x, h0, c0, lengths):
    """Run one torch LSTM module on time-major x, packing when lengths are given."""
    if lengths is None:
        return lstm(x, (h0, c0))
    packed = pack_padded_sequence(x, torch.as_tensor(lengths), enforce_sorted=False)
    out, (h_n, c_n) = lstm(packed, (h0, c0))
    out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    return out, (h_n, c_n)


def run_torch(case):
    """Forward + autograd through torch.nn.LSTM, or through a stack of 1-layer LSTMs with the masks."""
    cfg = case["cfg"]
    L, D, P = cfg["num_layers"], 2 if cfg["bidirectional"] else 1, cfg["proj_size"]
    Hout = P if P > 0 else H
    x, h0, c0 = (torch.tensor(case[k], requires_grad=True) for k in ("x", "h0", "c0"))

    def lstm_from(params, input_size, num_layers):
        lstm = torch.nn.LSTM(
            input_size,
            H,
            num_layers=num_layers,
            bias=case["bias"],
            bidirectional=cfg["bidirectional"],
            proj_size=P,
        ).double()
        lstm.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=True)
        return lstm

    if case["masks"] is None:
        lstm = lstm_from(case["params"], I, L)
        out, (h_n, c_n) = run_torch_module(lstm, x, h0, c0, case["lengths"])
        grad_sources = [(lstm, lambda name: name)]
    else:
        layer_input, hs, cs, grad_sources = x, [], [], []
        for layer in range(L):
            tag = f"_l{layer}"
            layer_params = {k.replace(tag, "_l0"): v for k, v in case["params"].items() if tag in k}
            lstm = lstm_from(layer_params, I if layer == 0 else D * Hout, 1)
            out, (h_l, c_l) = run_torch_module(
                lstm,
                layer_input,
                h0[layer * D : (layer + 1) * D],
                c0[layer * D : (layer + 1) * D],
                case["lengths"],
            )
            hs.append(h_l)
            cs.append(c_l)
            grad_sources.append((lstm, lambda name, tag=tag: name.replace("_l0", tag)))
            if layer < L - 1:
                layer_input = out * torch.tensor(case["masks"][layer])
        h_n, c_n = torch.cat(hs), torch.cat(cs)
    return torch_results(
        (x, h0, c0),
        (out, h_n, c_n),
        (torch.tensor(case[k]) for k in ("d_output", "dh_n", "dc_n")),
        ((rename(name), p) for lstm, rename in grad_sources for name, p in lstm.named_parameters()),
    )


def assert_forward_matches(ours, theirs):
    for name in ("output", "h_n", "c_n"):
        assert_close(ours[name], theirs[name], name)


def assert_backward_matches(ours, theirs):
    for name in ("dx", "dh0", "dc0"):
        assert_close(ours[name], theirs[name], name)
    assert ours["grads"].keys() == theirs["grads"].keys()
    for name in theirs["grads"]:
        assert_close(ours["grads"][name], theirs["grads"][name], name)


GRID = list(itertools.product([1, 2, 3], [False, True], [0, 2], [True, False], list(LENGTHS)))
GRID_IDS = [
    f"L{L}-{'bi' if bi else 'uni'}-P{P}-{'bias' if b else 'nobias'}-{n}" for L, bi, P, b, n in GRID
]
DROPOUT_GRID = list(itertools.product([2, 3], [False, True], [0, 2], ["full", "ragged", "short"]))
DROPOUT_IDS = [f"L{L}-{'bi' if bi else 'uni'}-P{P}-{n}" for L, bi, P, n in DROPOUT_GRID]


@pytest.fixture(scope="module")
def grid_results():
    """Reference and torch results for every grid case, computed once and shared by the tests."""
    results = {}
    for seed, (L, bi, P, bias, lengths) in enumerate(GRID):
        case = make_case(seed, L, bi, P, bias, LENGTHS[lengths])
        results[(L, bi, P, bias, lengths)] = (run_reference(case), run_torch(case))
    return results


@pytest.mark.parametrize("config", GRID, ids=GRID_IDS)
def test_forward_matches_torch_lstm_float64(grid_results, config):
    ours, theirs = grid_results[config]
    assert_forward_matches(ours, theirs)


@pytest.mark.parametrize("config", GRID, ids=GRID_IDS)
def test_backward_matches_torch_autograd_float64(grid_results, config):
    ours, theirs = grid_results[config]
    assert_backward_matches(ours, theirs)


@pytest.mark.parametrize("config", DROPOUT_GRID, ids=DROPOUT_IDS)
def test_dropout_masks_match_a_stack_of_single_layer_torch_lstms(config):
    L, bi, P, lengths = config
    case = make_case(
        1000 + DROPOUT_GRID.index(config), L, bi, P, True, LENGTHS[lengths], dropout=True
    )
    ours, theirs = run_reference(case), run_torch(case)
    assert_forward_matches(ours, theirs)
    assert_backward_matches(ours, theirs)


def test_stack_of_single_layer_torch_lstms_matches_multi_layer_torch_lstm():
    # Validates the dropout witness itself: with all-ones masks it must equal torch.nn.LSTM.
    case = make_case(7, 3, True, 2, True, LENGTHS["ragged"])
    plain = run_torch(case)
    case["masks"] = [np.ones_like(case["d_output"]) for _ in range(2)]
    stacked = run_torch(case)
    assert_forward_matches(stacked, plain)
    assert_backward_matches(stacked, plain)


def test_torch_refuses_zero_lengths_in_pack_padded_sequence():
    with pytest.raises(RuntimeError, match="greater than 0"):
        pack_padded_sequence(torch.zeros(T, 2, I), torch.tensor([T, 0]), enforce_sorted=False)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_zero_length_sequence_passes_its_initial_state_through(bidirectional):
    # torch cannot pack a zero length, so the other sequences are checked against torch run on
    # the batch without it, and the empty one against what a no-op must do.
    lengths = [4, 0, 2, T]
    case = make_case(11, 2, bidirectional, 2, True, lengths, batch=4, dropout=True)
    ours = run_reference(case)
    keep = [0, 2, 3]
    reduced = dict(
        case,
        lengths=np.asarray(lengths)[keep],
        masks=[m[:, keep] for m in case["masks"]],
        **{k: case[k][:, keep] for k in ("x", "h0", "c0", "d_output", "dh_n", "dc_n")},
    )
    theirs = run_torch(reduced)
    for name in ARRAYS:
        assert_close(ours[name][:, keep], theirs[name], name)
    for name in theirs["grads"]:
        assert_close(ours["grads"][name], theirs["grads"][name], name)
    assert np.all(ours["output"][:, 1] == 0)
    assert np.array_equal(ours["h_n"][:, 1], case["h0"][:, 1])
    assert np.array_equal(ours["c_n"][:, 1], case["c0"][:, 1])
    assert np.all(ours["dx"][:, 1] == 0)
    assert np.array_equal(ours["dh0"][:, 1], case["dh_n"][:, 1])
    assert np.array_equal(ours["dc0"][:, 1], case["dc_n"][:, 1])


def test_d_output_past_each_length_is_ignored():
    case = make_case(3, 2, True, 2, True, LENGTHS["short"], dropout=True)
    garbage = run_reference(case)
    past = np.arange(T)[:, None] >= case["lengths"][None, :]
    case["d_output"] = np.where(past[:, :, None], 0.0, case["d_output"])
    clean = run_reference(case)
    for name in ("dx", "dh0", "dc0"):
        assert np.array_equal(garbage[name], clean[name])
    for name in clean["grads"]:
        assert np.array_equal(garbage["grads"][name], clean["grads"][name])


def test_lengths_all_equal_to_T_match_no_lengths():
    case = make_case(5, 2, True, 0, True, None)
    unpacked = run_reference(case)
    case["lengths"] = np.full(B, T)
    packed = run_reference(case)
    for name in ARRAYS:
        assert np.array_equal(unpacked[name], packed[name])


@pytest.mark.parametrize("config", [(1, False, 0, True), (2, True, 2, False), (3, True, 2, True)])
def test_init_params_has_torch_state_dict_keys_shapes_and_bounds(config):
    L, bi, P, bias = config
    params = init_params(np.random.default_rng(0), I, H, L, bi, P, bias)
    lstm = torch.nn.LSTM(I, H, num_layers=L, bias=bias, bidirectional=bi, proj_size=P)
    expected = {k: tuple(v.shape) for k, v in lstm.state_dict().items()}
    assert list(params) == list(expected) == param_names(L, bi, P, bias)
    assert {k: v.shape for k, v in params.items()} == expected
    assert all(v.dtype == np.float64 and np.abs(v).max() <= 1 / np.sqrt(H) for v in params.values())


# Finite differences: small sizes so every entry of every array can be perturbed.
FD_CONFIGS = {
    "L2-bi-P2-bias-lengths-dropout": dict(
        num_layers=2, bidirectional=True, proj_size=2, bias=True, lengths=[3, 0, 2], dropout=True
    ),
    "L2-uni-P0-nobias-dropout": dict(
        num_layers=2, bidirectional=False, proj_size=0, bias=False, lengths=None, dropout=True
    ),
    "L1-bi-P0-bias-lengths": dict(
        num_layers=1, bidirectional=True, proj_size=0, bias=True, lengths=[2, 3, 1], dropout=False
    ),
    "L2-uni-P1-bias-lengths": dict(
        num_layers=2, bidirectional=False, proj_size=1, bias=True, lengths=[1, 3, 3], dropout=False
    ),
}


@pytest.mark.parametrize("name", list(FD_CONFIGS))
def test_backward_matches_finite_differences_float64(name):
    c = FD_CONFIGS[name]
    rng = np.random.default_rng(42)
    T_fd, B_fd, I_fd, H_fd = 3, 3, 2, 3
    L, bi, P = c["num_layers"], c["bidirectional"], c["proj_size"]
    D = 2 if bi else 1
    Hout = P if P > 0 else H_fd
    params = init_params(rng, I_fd, H_fd, L, bi, P, c["bias"])
    x = rng.standard_normal((T_fd, B_fd, I_fd))
    h0 = rng.standard_normal((D * L, B_fd, Hout))
    c0 = rng.standard_normal((D * L, B_fd, H_fd))
    masks = (
        [(rng.random((T_fd, B_fd, D * Hout)) >= 0.3) / 0.7 for _ in range(L - 1)]
        if c["dropout"]
        else None
    )
    d_output = rng.standard_normal((T_fd, B_fd, D * Hout))
    dh_n = rng.standard_normal((D * L, B_fd, Hout))
    dc_n = rng.standard_normal((D * L, B_fd, H_fd))
    kwargs = dict(
        num_layers=L, bidirectional=bi, proj_size=P, lengths=c["lengths"], dropout_masks=masks
    )

    def loss():
        out, h_n, c_n, _ = reference_forward(params, x, h0, c0, **kwargs)
        return np.sum(out * d_output) + np.sum(h_n * dh_n) + np.sum(c_n * dc_n)

    _, _, _, cache = reference_forward(params, x, h0, c0, **kwargs)
    dx, dh0, dc0, dparams = reference_backward(cache, d_output, dh_n, dc_n)
    arrays = {"x": (x, dx), "h0": (h0, dh0), "c0": (c0, dc0)}
    arrays.update({k: (params[k], dparams[k]) for k in params})
    for key, (array, analytic) in arrays.items():
        np.testing.assert_allclose(
            analytic, finite_difference(loss, array), rtol=1e-6, atol=1e-8, err_msg=key
        )
