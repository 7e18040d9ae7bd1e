"""Every array argument of the compiled engine (eigenlstm._core) either converts correctly or is
refused with TypeError / ValueError: never read as garbage.

Each entry point of EngineF32 and EngineF64 that takes arrays (forward, forward_last, backward,
load_flat) is fed, argument by argument, the other float dtype, float16, integers, a
non-contiguous view, a Fortran-ordered array, a read-only array, a complex array and a
zero-size array. An input that NumPy can convert without losing its meaning gives exactly the
result of the same values passed as C-contiguous arrays of the engine's dtype. Every array
argument is an input, except the outputs of ``forward_into`` (a stream's step): those must
already be writable C-contiguous arrays of the engine's dtype that overlap no other argument,
and are refused otherwise; elsewhere the engine writes only into the arrays it returns and into
its own buffers (``params``, ``grads``).
"""
# Sizes: T time steps, B batch, I input size, H hidden size, D directions, L layers, O outputs.

import numpy as np
import pytest

from eigenlstm import _core

T, B, I, H, L, D, O = 5, 3, 4, 6, 2, 2, 2
ENGINES = {np.float32: _core.EngineF32, np.float64: _core.EngineF64}
DTYPES = list(ENGINES)
IDS = ["f32", "f64"]


def make_engine(dtype):
    e = ENGINES[dtype](I, H, L, True, True, 0, 0.0, False, 7)
    rng = np.random.default_rng(0)
    e.params[:] = rng.uniform(-0.4, 0.4, e.num_params).astype(dtype)
    e.params_updated()
    return e


def canonical_args(dtype):
    """Valid arguments of every entry point, as C-contiguous arrays of the engine's dtype."""
    rng = np.random.default_rng(1)

    def arr(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return {
        "forward": dict(
            x=arr(T, B, I),
            h0=arr(D * L, B, H),
            c0=arr(D * L, B, H),
            lengths=np.array([5, 2, 4], np.int64),
        ),
        "forward_last": dict(
            x=arr(B, T, I), lengths=np.array([5, 2, 4], np.int64), weight=arr(O, D * H), bias=arr(O)
        ),
        "backward": dict(d_output=arr(T, B, D * H), dh_n=arr(D * L, B, H), dc_n=arr(D * L, B, H)),
        "load_flat": dict(flat=None),  # the engine's params reversed, filled in by with_flat()
    }


def call(engine, name, args):
    """Run one entry point; returns its arrays (the state it changed included)."""
    if name == "forward":
        return engine.forward(args["x"], args["h0"], args["c0"], args["lengths"], True)
    if name == "forward_last":
        return (
            engine.forward_last(args["x"], args["lengths"], args["weight"], args["bias"], True),
        )
    if name == "backward":
        engine.zero_grad()
        engine.forward(*canonical_args(engine.params.dtype.type)["forward"].values(), True)
        return engine.backward(args["d_output"], args["dh_n"], args["dc_n"]) + (
            engine.grads.copy(),
        )
    if name == "load_flat":
        engine.load_flat(args["flat"])
        return (engine.params.copy(),)
    raise AssertionError(name)


def with_flat(engine, name, args):
    if name == "load_flat" and args["flat"] is None:
        args = dict(args, flat=engine.params[::-1].copy())
    return args


def variants(a, dtype):
    """(variant id, array, the values the engine must see, or None: must be refused)."""
    other = np.float64 if dtype == np.float32 else np.float32
    integer = a.dtype.kind in "iu"
    out = []
    if integer:
        out += [
            ("int32", a.astype(np.int32), a),
            ("uint16", a.astype(np.uint16), a),
            ("float64", a.astype(np.float64), None),
            ("float32", a.astype(np.float32), None),
        ]
    else:
        out += [
            ("other-float", a.astype(other), a.astype(other).astype(dtype)),
            ("float16", a.astype(np.float16), a.astype(np.float16).astype(dtype)),
            ("int", np.round(a * 3).astype(np.int64), np.round(a * 3).astype(dtype)),
            ("complex", a.astype(np.complex128), None),
        ]
    wide = np.repeat(a, 2, axis=-1)[..., ::2]
    assert not wide.flags.c_contiguous or a.size <= 1
    readonly = a.copy()
    readonly.flags.writeable = False
    out += [
        ("non-contiguous", wide, a),
        ("fortran", np.asfortranarray(a), a),
        ("read-only", readonly, a),
    ]
    return out


CASES = [(n, arg) for n, d in canonical_args(np.float32).items() for arg in d]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name,arg", CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_every_input_array_converts_correctly_or_is_refused(name, arg, dtype):
    engine = make_engine(dtype)
    base = with_flat(engine, name, canonical_args(dtype)[name])
    for vid, value, seen in variants(base[arg], dtype):
        engine = make_engine(dtype)
        if seen is None:
            with pytest.raises(TypeError, match="dtype"):
                call(engine, name, dict(base, **{arg: value}))
            continue
        got = call(engine, name, dict(base, **{arg: value}))
        want = call(make_engine(dtype), name, dict(base, **{arg: np.ascontiguousarray(seen)}))
        for g, w in zip(got, want):
            assert g.dtype == dtype, (vid, g.dtype)
            assert np.array_equal(g, w), f"{name}({arg}={vid}) differs from the converted values"


# forward's x with zero steps is valid (the next test); every other zero-size argument has a
# wrong shape.
ZERO_SIZE_CASES = [c for c in CASES if c != ("forward", "x")]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name,arg", ZERO_SIZE_CASES, ids=[f"{n}-{a}" for n, a in ZERO_SIZE_CASES])
def test_a_zero_size_array_of_the_wrong_shape_is_a_value_error_naming_it(name, arg, dtype):
    engine = make_engine(dtype)
    base = with_flat(engine, name, canonical_args(dtype)[name])
    empty = np.empty((0,) + base[arg].shape[1:], base[arg].dtype)
    with pytest.raises(ValueError, match="must have shape"):
        call(engine, name, dict(base, **{arg: empty}))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_zero_steps_and_zero_batch_rows_are_valid_and_pass_the_state_through(dtype):
    args = canonical_args(dtype)["forward"]
    y, h_n, c_n = make_engine(dtype).forward(args["x"][:0], args["h0"], args["c0"], None, False)
    assert y.shape == (0, B, D * H)
    assert np.array_equal(h_n, args["h0"]) and np.array_equal(c_n, args["c0"])
    y, h_n, c_n = make_engine(dtype).forward(
        args["x"][:, :0], args["h0"][:, :0], args["c0"][:, :0], None, False
    )
    assert y.shape == (T, 0, D * H) and h_n.shape == (D * L, 0, H) and c_n.shape == h_n.shape


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize(
    "shape", [(1, -1), (2, -1), (-2,), (0,)], ids=["2-D", "2-D-wide", "one-short", "zero-size"]
)
def test_load_flat_refuses_a_buffer_of_the_wrong_shape_and_changes_nothing(shape, dtype):
    engine = make_engine(dtype)
    before = engine.params.copy()
    n = engine.num_params
    flat = np.zeros(tuple({-1: n, -2: n - 1}.get(s, s) for s in shape), dtype)
    with pytest.raises(ValueError, match=rf"load_flat: flat must have shape \({n},\)"):
        engine.load_flat(flat)
    with pytest.raises(TypeError, match="dtype"):
        engine.load_flat(np.zeros(n, np.complex128))
    assert np.array_equal(engine.params, before)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize(
    "bias, args, message",
    [
        (
            True,
            ("weight_xx", 0, 0),
            r"param_offset: kind must be one of 'weight_ih', 'weight_hh', 'bias_ih', 'bias_hh', "
            r"'weight_hr', 'weight_peephole', 'layer_norm_ih_weight', 'layer_norm_ih_bias', "
            r"'layer_norm_hh_weight', 'layer_norm_hh_bias', 'layer_norm_c_weight', "
            r"'layer_norm_c_bias', got 'weight_xx'",
        ),
        (True, ("weight_hr", 0, 0), r"param_offset: this LSTM has no weight_hr \(proj_size is 0\)"),
        (
            True,
            ("layer_norm_c_bias", 0, 0),
            r"param_offset: this LSTM has no layer_norm_c_bias \(layer_norm is false\)",
        ),
        (
            True,
            ("weight_peephole", 0, 0),
            r"param_offset: this LSTM has no weight_peephole \(peepholes is false\)",
        ),
        (False, ("bias_ih", 0, 0), r"param_offset: this LSTM has no bias_ih \(bias is false\)"),
        (True, ("weight_ih", 2, 0), r"param_offset: layer must be in \[0, 2\), got 2"),
        (True, ("weight_ih", -1, 0), r"param_offset: layer must be in \[0, 2\), got -1"),
        (True, ("bias_hh", 1, 2), r"param_offset: direction must be in \[0, 2\), got 2"),
        (True, ("bias_hh", 1, -1), r"param_offset: direction must be in \[0, 2\), got -1"),
    ],
    ids=[
        "kind",
        "no-proj",
        "no-layer-norm",
        "no-peepholes",
        "no-bias",
        "layer",
        "layer<0",
        "direction",
        "direction<0",
    ],
)
def test_param_offset_refuses_a_bad_kind_layer_or_direction_naming_it(bias, args, message, dtype):
    engine = ENGINES[dtype](I, H, L, bias, True, 0, 0.0, False, 7)
    with pytest.raises(ValueError, match=message):
        engine.param_offset(*args)


# ---- forward_into: the outputs are the caller's arrays ------------------------------------------


def into_args(dtype):
    """forward_into's arguments: the inputs of forward and output arrays of the right shapes."""
    args = dict(canonical_args(dtype)["forward"])
    args.update(
        y=np.empty((T, B, D * H), dtype),
        h_n=np.empty((D * L, B, H), dtype),
        c_n=np.empty_like(args["c0"]),
    )
    return args


def call_into(engine, a):
    engine.forward_into(a["x"], a["h0"], a["c0"], a["lengths"], a["y"], a["h_n"], a["c_n"])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_forward_into_writes_what_an_eval_forward_returns(dtype):
    engine, a = make_engine(dtype), into_args(dtype)
    call_into(engine, a)
    want = engine.forward(a["x"], a["h0"], a["c0"], a["lengths"], False)
    for got, expected in zip((a["y"], a["h_n"], a["c_n"]), want):
        assert np.array_equal(got, expected)


def _overlapping(a):
    a["h_n"] = a["h0"]  # the state read and the state written


def _y_over_x(a):
    a["x"] = a["y"].reshape(-1)[: T * B * I].reshape(T, B, I)


@pytest.mark.parametrize(
    "change, kind, message",
    [
        (
            lambda a: a.update(y=a["y"].astype(np.float16)),
            TypeError,
            "incompatible function arguments",
        ),
        (
            lambda a: a.update(y=np.asfortranarray(a["y"])),
            TypeError,
            "incompatible function arguments",
        ),
        (
            lambda a: a.update(c_n=np.empty((D * L, 1, H), a["c_n"].dtype)),
            ValueError,
            r"forward_into: c_n must have shape \(4, 3, 6\), got \(4, 1, 6\)",
        ),
        (
            lambda a: a["y"].setflags(write=False),
            ValueError,
            "forward_into: y must be a writable array, got a read-only one",
        ),
        (_overlapping, ValueError, "forward_into: h_n must not share memory with h0"),
        (_y_over_x, ValueError, "forward_into: y must not share memory with x"),
    ],
    ids=["float16", "fortran", "shape", "read-only", "h_n is h0", "y under x"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_forward_into_refuses_outputs_it_cannot_write_safely(change, kind, message, dtype):
    engine, a = make_engine(dtype), into_args(dtype)
    for k in ("y", "h_n", "c_n"):
        a[k].fill(np.nan)
    change(a)
    before = {k: np.array(a[k], copy=True) for k in a if k != "lengths"}
    with pytest.raises(kind, match=message):
        call_into(engine, a)
    for k, v in before.items():  # refused before anything was written
        assert np.array_equal(a[k], v, equal_nan=True), k
