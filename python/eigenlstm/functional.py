"""Functional API: one LSTM layer in one direction, for callers who own their weight arrays.

Weights are given in torch.nn.LSTM's layout on every call and are copied into a new engine for
that call only; ``eigenlstm.LSTM`` is the faster choice when weights persist.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._layout import tensor_slice
from ._validation import (
    LAYER_NORM_KINDS,
    as_array,
    as_real_array,
    check_keys,
    check_lengths,
    check_pair,
    check_positive_int,
    check_shape,
    check_variants,
    engine_variants,
)

__all__ = ["LayerContext", "lstm_layer_forward", "lstm_layer_backward"]


class LayerContext:
    """What ``lstm_layer_backward`` needs from ``lstm_layer_forward``.

    Attributes
    ----------
    engine : the engine that ran the forward (its cache is what backward differentiates)
    names : tuple of str
        The weight names the gradients are returned under.
    out_shape, state_shapes : tuple
        The shapes ``d_output`` and ``(dh_n, dc_n)`` must have.
    consumed : bool
        True once ``lstm_layer_backward`` used it (a context is good for one backward).
    """

    def __init__(self, engine, names, out_shape, state_shapes) -> None:
        self.engine = engine
        self.names = names
        self.out_shape = out_shape
        self.state_shapes = state_shapes
        self.consumed = False


def _weights_dtype(w) -> np.dtype:
    dt = as_array("lstm_layer_forward", "weight_ih", w).dtype
    return dt if dt in (np.float32, np.float64) else np.dtype(np.float64)


def lstm_layer_forward(
    x,
    h0,
    c0,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    weight_hr=None,
    *,
    cifg: bool = False,
    weight_peephole=None,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
    recurrent_dropout: float = 0.0,
    weight_drop: float = 0.0,
    zoneout: float | tuple[float, float] = 0.0,
    layer_norm: dict | None = None,
    dropout_state: tuple[int, int] = (0, 0),
    lengths=None,
    reverse: bool = False,
    training: bool = True,
):
    r"""Run one LSTM layer in one direction over a time-major batch.

    Parameters
    ----------
    x : array_like of shape (T, B, I)
    h0 : array_like of shape (B, H_out)
    c0 : array_like of shape (B, H)
    weight_ih : array_like of shape (4H, I)
        Gate rows in torch's order i, f, g, o (as ``torch.nn.LSTM.weight_ih_l0``).
    weight_hh : array_like of shape (4H, H_out)
    bias_ih, bias_hh : array_like of shape (4H,), optional
        Both or neither.
    weight_hr : array_like of shape (P, H), optional
        Projection; then ``H_out = P``, else ``H_out = H``.
    cifg : bool, default False, keyword-only
        Coupled input-forget gate (``eigenlstm.LSTM(cifg=True)``): the weights and biases
        have 3H gate rows (i, g, o) instead of 4H.
    weight_peephole : array_like of shape (3, H), optional, keyword-only
        Peephole weights, rows ``w_ci, w_cf, w_co`` (``eigenlstm.LSTM(peepholes=True)``).
    cell_clip, proj_clip : float, optional, keyword-only
        Clip the cell state, or the projection (needs ``weight_hr``), as ``eigenlstm.LSTM``.
    recurrent_dropout, weight_drop, zoneout : keyword-only
        As ``eigenlstm.LSTM``'s; the dropouts act with ``training=True`` only, zoneout by its
        masks with ``training=True`` and by its expectation otherwise.
    layer_norm : dict, optional, keyword-only
        The layer norms' gains and shifts (``eigenlstm.LSTM(layer_norm=True)``), keyed
        ``layer_norm_ih_weight``, ``layer_norm_ih_bias``, ``layer_norm_hh_weight``,
        ``layer_norm_hh_bias`` (shape ``(G,)`` each, ``G`` the gate rows of ``weight_ih``),
        ``layer_norm_c_weight`` and ``layer_norm_c_bias`` (shape ``(H,)``).
    dropout_state : (int, int), default (0, 0), keyword-only
        The (seed, counter) of the dropout stream the masks of a training call come from, as
        ``eigenlstm.LSTM.dropout_state``: the same state draws the same masks.
    lengths : array_like of int of shape (B,), optional
        Valid steps per sequence, as in ``eigenlstm.LSTM.forward``.
    reverse : bool, default False
        Run backwards in time (the reverse direction of a bidirectional layer).
    training : bool, default True
        Keep what ``lstm_layer_backward`` needs in the returned context.

    Returns
    -------
    y : ndarray of shape (T, B, H_out)
    (h_n, c_n) : tuple of ndarray of shapes (B, H_out) and (B, H)
    ctx : LayerContext or None
        Pass to ``lstm_layer_backward`` (None when ``training`` is False).

    Notes
    -----
    Per step: ``i, f, g, o = s(.), s(.), tanh(.), s(.)`` of ``W_ih x_t + b_ih + W_hh h + b_hh``;
    ``c_t = f*c_{t-1} + i*g``; ``h_t = o*tanh(c_t)`` (times ``W_hr^T`` with projection). The
    cell variants change this as documented on ``eigenlstm.LSTM``.
    The dtype is that of ``weight_ih`` (float32 or float64; anything else computes in float64).

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.functional import lstm_layer_forward, lstm_layer_backward
    >>> rng = np.random.default_rng(0)
    >>> T, B, I, H = 5, 3, 4, 6
    >>> w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    >>> x = rng.standard_normal((T, B, I))
    >>> h0, c0 = np.zeros((B, H)), np.zeros((B, H))
    >>> y, (h_n, c_n), ctx = lstm_layer_forward(x, h0, c0, w_ih, w_hh)
    >>> dx, (dh0, dc0), grads = lstm_layer_backward(ctx, np.ones_like(y))
    >>> sorted(grads), grads["weight_ih"].shape
    (['weight_hh', 'weight_ih'], (24, 4))
    """
    where = "lstm_layer_forward"
    dtype = _weights_dtype(weight_ih)
    w_ih = as_real_array(where, "weight_ih", weight_ih, dtype)
    w_hh = as_real_array(where, "weight_hh", weight_hh, dtype)
    if not isinstance(cifg, (bool, np.bool_)):
        raise TypeError(f"{where}: cifg must be a bool, got {type(cifg).__name__} {cifg!r}")
    NG = 3 if cifg else 4  # gate blocks
    if w_ih.ndim != 2 or w_ih.shape[0] % NG or w_ih.shape[0] == 0:
        raise ValueError(
            f"{where}: weight_ih must have shape ({NG}H, I) with H >= 1, got {w_ih.shape}"
        )
    G, I = w_ih.shape
    H = G // NG
    P = 0
    if weight_hr is not None:
        w_hr = as_real_array(where, "weight_hr", weight_hr, dtype)
        if w_hr.ndim != 2 or w_hr.shape[1] != H:
            raise ValueError(f"{where}: weight_hr must have shape (P, {H}), got {w_hr.shape}")
        P = w_hr.shape[0]
    Hout = P if P else H
    check_shape(where, "weight_hh", w_hh, (G, Hout))
    if (bias_ih is None) != (bias_hh is None):
        given = "bias_ih" if bias_hh is None else "bias_hh"
        raise ValueError(
            f"{where}: bias_ih and bias_hh must be given together or not at all, got {given} only"
        )
    x = as_real_array(where, "x", x, dtype)
    if x.ndim != 3 or x.shape[2] != I:
        raise ValueError(f"{where}: x must have shape (T, B, {I}), got {x.shape}")
    T, B, _ = x.shape
    h0 = as_real_array(where, "h0", h0, dtype)
    c0 = as_real_array(where, "c0", c0, dtype)
    check_shape(where, "h0", h0, (B, Hout))
    check_shape(where, "c0", c0, (B, H))
    if lengths is not None:
        lengths = check_lengths(where, "lengths", lengths, B, T)
    variants = check_variants(
        where,
        P,
        cifg=cifg,
        peepholes=weight_peephole is not None,
        cell_clip=cell_clip,
        proj_clip=proj_clip,
        recurrent_dropout=recurrent_dropout,
        weight_drop=weight_drop,
        zoneout=zoneout,
        layer_norm=layer_norm is not None,
    )
    norms = {}
    if layer_norm is not None:
        if not isinstance(layer_norm, dict):
            raise TypeError(
                f"{where}: layer_norm must be a dict of the layer norms' tensors or None, got "
                f"{type(layer_norm).__name__}"
            )
        shapes = {k: ((H,) if "_c_" in k else (G,)) for k in LAYER_NORM_KINDS}
        check_keys(where, layer_norm, shapes, "layer_norm.")
        for k, shape in shapes.items():
            norms[k] = as_real_array(where, f"layer_norm[{k!r}]", layer_norm[k], dtype)
            check_shape(where, f"layer_norm[{k!r}]", norms[k], shape)
    check_pair(where, "dropout_state", "(seed, counter)", dropout_state)
    seed, counter = (
        check_positive_int(where, n, v, minimum=0)
        for n, v in zip(("dropout_state[0]", "dropout_state[1]"), dropout_state)
    )

    bias = bias_ih is not None
    engine_cls = _core.EngineF32 if dtype == np.float32 else _core.EngineF64
    engine = engine_cls(
        I,
        H,
        1,
        bias,
        False,
        P,
        0.0,
        bool(reverse),
        0,
        **engine_variants(variants),
    )
    tensors = {"weight_ih": w_ih, "weight_hh": w_hh}
    if bias:
        tensors["bias_ih"] = as_real_array(where, "bias_ih", bias_ih, dtype)
        tensors["bias_hh"] = as_real_array(where, "bias_hh", bias_hh, dtype)
        check_shape(where, "bias_ih", tensors["bias_ih"], (G,))
        check_shape(where, "bias_hh", tensors["bias_hh"], (G,))
    if P:
        tensors["weight_hr"] = w_hr
    if variants["peepholes"]:
        tensors["weight_peephole"] = as_real_array(where, "weight_peephole", weight_peephole, dtype)
        check_shape(where, "weight_peephole", tensors["weight_peephole"], (3, H))
    tensors.update(norms)
    flat = np.zeros(engine.num_params, dtype=dtype)
    for name, value in tensors.items():
        span, _ = tensor_slice(engine, name, 0, 0)
        flat[span] = value.reshape(-1)
    engine.load_flat(flat)
    engine.set_rng_state(seed, counter)

    y, h_n, c_n = engine.forward(
        np.ascontiguousarray(x),
        np.ascontiguousarray(h0[None]),
        np.ascontiguousarray(c0[None]),
        lengths,
        bool(training),
    )
    ctx = LayerContext(engine, tuple(tensors), y.shape, ((B, Hout), (B, H))) if training else None
    return y, (h_n[0], c_n[0]), ctx


def lstm_layer_backward(
    ctx: LayerContext, d_output, d_state: tuple | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """Backpropagate through one ``lstm_layer_forward`` call.

    Parameters
    ----------
    ctx : LayerContext
        From ``lstm_layer_forward(..., training=True)``; usable once.
    d_output : array_like of shape (T, B, H_out)
        Gradient with respect to ``y``; ignored past each length.
    d_state : tuple (dh_n, dc_n), optional
        Shapes (B, H_out) and (B, H); either may be None.

    Returns
    -------
    dx : ndarray of shape (T, B, I)
    (dh0, dc0) : tuple of ndarray of shapes (B, H_out) and (B, H)
    grads : dict of ndarray
        Gradients of the weights passed to forward, keyed weight_ih, weight_hh, bias_ih,
        bias_hh, weight_hr, weight_peephole and the six ``layer_norm`` keys (those that were
        given), in torch layout.

    Raises
    ------
    RuntimeError
        If ``ctx`` was already used.
    """
    where = "lstm_layer_backward"
    if not isinstance(ctx, LayerContext):
        raise TypeError(
            f"{where}: ctx must be the LayerContext from lstm_layer_forward, got {type(ctx).__name__}"
        )
    if ctx.consumed:
        raise RuntimeError(f"{where}: this context was already used; run lstm_layer_forward again")
    engine = ctx.engine
    dtype = engine.params.dtype
    dy = as_real_array(where, "d_output", d_output, dtype)
    check_shape(where, "d_output", dy, ctx.out_shape)
    dh_n = dc_n = None
    if d_state is not None:
        if d_state[0] is not None:
            dh_n = as_real_array(where, "dh_n", d_state[0], dtype)
            check_shape(where, "dh_n", dh_n, ctx.state_shapes[0])
            dh_n = np.ascontiguousarray(dh_n[None])
        if d_state[1] is not None:
            dc_n = as_real_array(where, "dc_n", d_state[1], dtype)
            check_shape(where, "dc_n", dc_n, ctx.state_shapes[1])
            dc_n = np.ascontiguousarray(dc_n[None])
    dx, dh0, dc0 = engine.backward(np.ascontiguousarray(dy), dh_n, dc_n)
    ctx.consumed = True
    dflat = engine.grads
    grads: dict[str, np.ndarray] = {}
    for name in ctx.names:
        span, shape = tensor_slice(engine, name, 0, 0)
        grads[name] = dflat[span].reshape(shape).copy()
    return dx, (dh0[0], dc0[0]), grads
