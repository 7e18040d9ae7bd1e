"""``eigenlstm.onnx``: export ``LSTM`` and ``LSTMModel`` to ONNX graphs, and load such graphs back.

Export writes the ONNX ``LSTM`` operator where it can express the module and a ``Scan`` loop of
standard ops where it cannot (projection); load reads chains of ONNX ``LSTM`` nodes with the glue
that exporters put around them (torch's included) and the ``Scan`` layers written here.
Needs the ``onnx`` package (``pip install "eigenlstm[onnx]"``); the modules are lstm.py, model.py.
"""
# Sizes: T time steps, N batch, I input size, H hidden size, P projection size,
# H_out = P if P > 0 else H, D directions, L layers, G = 4H gate rows, O outputs.
#
# Gate layouts (the whole difficulty of moving LSTM weights around):
#   torch / eigenlstm  weight_ih (G, I), weight_hh (G, H_out), rows in gate order i, f, g, o;
#                      two biases b_ih, b_hh (G,) that are simply added.
#   ONNX LSTM          W (D, G, I), R (D, G, H), rows in gate order i, o, f, c (c is torch's g);
#                      B (D, 2G) = [Wb; Rb], the input and recurrent biases one after another;
#                      P (D, 3H) peepholes in order i, o, f; no projection at all.
# So torch -> ONNX takes row blocks [0, 3, 1, 2] of each matrix and bias, and ONNX -> torch
# takes blocks [0, 2, 3, 1] (the inverse permutation).

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, cast

import numpy as np

from ..nn import LSTM, LSTMModel
from ..nn.quantized import refuse_quantized

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

__all__ = ["export", "load"]

# Row-block permutations between torch's gate order (i, f, g, o) and ONNX's (i, o, f, c).
_TORCH_TO_ONNX = (0, 3, 1, 2)
_ONNX_TO_TORCH = (0, 2, 3, 1)

#: Opset written when ``opset`` is None: ONNX Runtime and every maintained converter read it.
DEFAULT_OPSET = 17
#: Oldest opset ``export`` writes: it uses Squeeze/Unsqueeze with axes as an input (opset 13).
MIN_EXPORT_OPSET = 13


def _import_onnx(where: str) -> Any:
    try:
        import onnx  # absolute import: the top-level onnx package, not this module
    except ImportError:
        raise ImportError(
            f"{where} needs the onnx package: pip install 'eigenlstm[onnx]'"
        ) from None
    return onnx


def _gate_blocks(w: np.ndarray, order) -> np.ndarray:
    """The four equal row blocks (gates) of ``w`` (shape (4H, ...) or (4H,)) in ``order``
    (a block left out of ``order`` is dropped)."""
    blocks = np.split(w, 4, axis=0)
    return np.concatenate([blocks[k] for k in order], axis=0)


# ==== export =================================================================================
class _Builder:
    """Collects nodes and initializers of one ONNX graph, with unique value names."""

    def __init__(self, onnx, dtype: np.dtype) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.dtype = dtype
        self.elem = onnx.TensorProto.FLOAT if dtype == np.float32 else onnx.TensorProto.DOUBLE
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value, stem: str = "const", dtype=None) -> str:
        arr = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.name(stem)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def ints(self, values, stem: str = "ints") -> str:
        return self.const(np.asarray(values, dtype=np.int64), stem, np.int64)

    def op(self, op_type: str, inputs, n_out: int = 1, out=None, nodes=None, **attrs):
        outs = list(out) if out is not None else [self.name(op_type.lower()) for _ in range(n_out)]
        (self.nodes if nodes is None else nodes).append(
            self.helper.make_node(op_type, list(inputs), outs, **attrs)
        )
        return outs[0] if len(outs) == 1 else outs


def _check_opset(where: str, onnx, opset) -> int:
    if opset is None:
        return DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"{where}: opset must be an int, got {type(opset).__name__} {opset!r}")
    if not MIN_EXPORT_OPSET <= opset <= newest:
        raise ValueError(f"{where}: opset must be in [{MIN_EXPORT_OPSET}, {newest}], got {opset}")
    return int(opset)


def _onnx_gates(lstm: LSTM, w: np.ndarray) -> np.ndarray:
    """A weight or bias of ``lstm`` with its gate blocks in ONNX's order (i, o, f, c). A
    coupled-gate LSTM has no f block (f = 1 - i): ONNX's input_forget=1 ignores it, and it is
    written as zeros."""
    if not lstm.cifg:
        return _gate_blocks(w, _TORCH_TO_ONNX)
    i, g, o = np.split(w, 3, axis=0)
    return np.concatenate([i, o, np.zeros_like(i), g], axis=0)


def _lstm_op_layer(b: _Builder, sd, l: int, lstm: LSTM, x: str, seq: str | None, h0, c0):
    """One layer as the ONNX LSTM operator; returns (y (T, N, D*H), h_n (D, N, H), c_n)."""
    D, H = lstm.num_directions, lstm.hidden_size
    sfx = ["", "_reverse"][:D]
    W = np.stack([_onnx_gates(lstm, sd[f"weight_ih_l{l}{s}"]) for s in sfx])
    R = np.stack([_onnx_gates(lstm, sd[f"weight_hh_l{l}{s}"]) for s in sfx])
    inputs = [x, b.const(W, f"W_l{l}"), b.const(R, f"R_l{l}")]
    if lstm.bias:  # B = [Wb; Rb]: ONNX adds both halves, as torch adds b_ih and b_hh
        B = np.stack(
            [
                np.concatenate(
                    [
                        _onnx_gates(lstm, sd[f"bias_ih_l{l}{s}"]),
                        _onnx_gates(lstm, sd[f"bias_hh_l{l}{s}"]),
                    ]
                )
                for s in sfx
            ]
        )
        inputs.append(b.const(B, f"B_l{l}"))
    else:
        inputs.append("")
    inputs.append(seq or "")
    if h0 is not None:  # rows l*D .. l*D+D-1 of torch's (D*L, N, H) states belong to layer l
        rows = (b.ints([l * D]), b.ints([(l + 1) * D]), b.ints([0]))
        inputs += [b.op("Slice", (h0,) + rows), b.op("Slice", (c0,) + rows)]
    if lstm.peepholes:  # P (D, 3H): ONNX orders the peepholes i, o, f; ours are rows i, f, o
        inputs += [""] * (7 - len(inputs))
        P = np.stack([sd[f"weight_peephole_l{l}{s}"][[0, 2, 1]].reshape(-1) for s in sfx])
        inputs.append(b.const(P, f"P_l{l}"))
    y, y_h, y_c = b.op(
        "LSTM",
        inputs,
        n_out=3,
        hidden_size=H,
        direction="bidirectional" if D == 2 else "reverse" if lstm.reverse else "forward",
        **({"input_forget": 1} if lstm.cifg else {}),
    )
    # Y is (T, D, N, H); the next layer and torch's output want (T, N, D*H).
    if D == 1:
        y = b.op("Squeeze", [y, b.ints([1])])
    else:
        y = b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])])
    return y, y_h, y_c


# LayerNormalization's attributes: torch's eps, over the last axis. (The default stash_type,
# float32, is kept for float64 graphs too: onnx.reference, the float64 witness, implements no
# other; it computes in the input's precision.)
_LN_ATTRS: dict[str, Any] = {"axis": -1, "epsilon": 1e-5}


@dataclasses.dataclass
class _StepVariants:
    """The cell variants of one direction's Scan step: names of outer-graph constants (the
    step reads them from the enclosing graph), or None for a variant that is off."""

    cifg: bool = False
    peepholes: tuple[str, str, str] | None = None  # w_ci, w_cf, w_co, each (H,)
    cell_clip: tuple[str, str] | None = None  # Clip's min and max
    proj_clip: tuple[str, str] | None = None
    ln_hh: tuple[str, str] | None = None  # LayerNormalization's scale and bias, (G,)
    ln_c: tuple[str, str] | None = None  # (H,)
    zoneout: tuple[str, str] | None = None  # z and 1 - z, for c; for h:
    zoneout_h: tuple[str, str] | None = None


def _scan_body(
    b: _Builder,
    H: int,
    P: int,
    Rt: str,
    Whr: str | None,
    masked: bool,
    v: _StepVariants | None = None,
):
    """The step of an LSTM as a Scan body: (h, c, pre_t[, m_t]) -> (h, c, y_t).

    pre_t = x_t W_ih^T + b_ih + b_hh is computed for all steps before the loop (one MatMul);
    the body adds the recurrent term and applies the cell, in torch's gate order i, f, g, o:
        gates = pre_t + h W_hh^T;  i, f, g, o = split(gates)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = (sigmoid(o) * tanh(c')) W_hr^T
    (h' = sigmoid(o) * tanh(c') without a projection, Whr None). The cell variants ``v``
    change it as eigenlstm.LSTM documents, in evaluation: coupled gates (i, g, o; f = 1 - i),
    peepholes, the clips (Clip), the layer norms of h W_hh^T and of c (LayerNormalization,
    opset 17) and zoneout's expectation z*previous + (1 - z)*new.
    With lengths, m_t = (t < length) per row: a row past its length keeps its state and
    outputs zeros, which is what pack_padded_sequence gives (and the reverse direction, read
    from the end, then starts at the last valid step).
    """
    v = v or _StepVariants()
    helper, elem = b.helper, b.elem
    nodes: list = []

    def op(op_type, inputs, **kw):
        return b.op(op_type, inputs, nodes=nodes, **kw)

    def layer_norm(x, scale_bias):
        return op("LayerNormalization", [x, *scale_bias], **_LN_ATTRS)

    inputs = [
        helper.make_tensor_value_info("h_prev", elem, None),
        helper.make_tensor_value_info("c_prev", elem, None),
        helper.make_tensor_value_info("pre_t", elem, None),
    ]
    if masked:
        inputs.append(helper.make_tensor_value_info("m_t", b.onnx.TensorProto.BOOL, None))
    rec = op("MatMul", ["h_prev", Rt])
    if v.ln_hh:
        rec = layer_norm(rec, v.ln_hh)
    gates = op("Add", ["pre_t", rec])
    NG = 3 if v.cifg else 4
    split = b.ints([H] * NG, "split")
    blocks = op("Split", [gates, split], n_out=NG, axis=1)
    gi, gg, go = (blocks[0], blocks[1], blocks[2]) if v.cifg else (blocks[0], blocks[2], blocks[3])
    gf = None if v.cifg else blocks[1]
    if v.peepholes:
        gi = op("Add", [gi, op("Mul", [v.peepholes[0], "c_prev"])])
        if gf is not None:
            gf = op("Add", [gf, op("Mul", [v.peepholes[1], "c_prev"])])
    i = op("Sigmoid", [gi])
    f = op("Sub", [b.const(1.0, "one"), i]) if gf is None else op("Sigmoid", [gf])
    g = op("Tanh", [gg])
    if not v.peepholes:
        o = op("Sigmoid", [go])
    c_new = op("Add", [op("Mul", [f, "c_prev"]), op("Mul", [i, g])])
    if v.cell_clip:
        c_new = op("Clip", [c_new, *v.cell_clip])
    if v.peepholes:
        o = op("Sigmoid", [op("Add", [go, op("Mul", [v.peepholes[2], c_new])])])
    h_new = op("Mul", [o, op("Tanh", [layer_norm(c_new, v.ln_c) if v.ln_c else c_new])])
    if Whr is not None:
        h_new = op("MatMul", [h_new, Whr])
    if v.proj_clip:
        h_new = op("Clip", [h_new, *v.proj_clip])
    for z, name in ((v.zoneout, "c"), (v.zoneout_h, "h")):
        if z:
            prev, new = ("c_prev", c_new) if name == "c" else ("h_prev", h_new)
            mixed = op("Add", [op("Mul", [z[0], prev]), op("Mul", [z[1], new])])
            if name == "c":
                c_new = mixed
            else:
                h_new = mixed
    if masked:
        b.op("Where", ["m_t", h_new, "h_prev"], out=["h_out"], nodes=nodes)
        b.op("Where", ["m_t", c_new, "c_prev"], out=["c_out"], nodes=nodes)
        b.op("Where", ["m_t", h_new, b.const(0.0, "zero")], out=["y_t"], nodes=nodes)
    else:
        b.op("Identity", [h_new], out=["h_out"], nodes=nodes)
        b.op("Identity", [c_new], out=["c_out"], nodes=nodes)
        b.op("Identity", [h_new], out=["y_t"], nodes=nodes)
    outputs = [helper.make_tensor_value_info(n, elem, None) for n in ("h_out", "c_out", "y_t")]
    return helper.make_graph(nodes, b.name("lstm_step"), inputs, outputs)


def _flip_time(b: _Builder, v: str) -> str:
    """``v[::-1]`` along axis 0: Slice from -1 down past the start with step -1."""
    return b.op(
        "Slice", [v, b.ints([-1]), b.ints([np.iinfo(np.int64).min]), b.ints([0]), b.ints([-1])]
    )


def _step_variants(b: _Builder, sd, sfx: str, lstm: LSTM) -> _StepVariants:
    """The constants of the cell variants of one layer and direction (``sfx``: "_l0",
    "_l0_reverse", ...) for its Scan step."""
    H, v = lstm.hidden_size, _StepVariants(cifg=lstm.cifg)
    if lstm.peepholes:
        w = sd["weight_peephole" + sfx]
        # (with cifg, w_cf has no gate to act on and is not written)
        w_cf = "" if lstm.cifg else b.const(w[1], "w_cf")
        v.peepholes = (b.const(w[0], "w_ci"), w_cf, b.const(w[2], "w_co"))
    for name in ("cell_clip", "proj_clip"):
        clip = getattr(lstm, name)
        if clip is not None:
            setattr(v, name, (b.const(-clip, "clip_min"), b.const(clip, "clip_max")))
    if lstm.layer_norm:
        v.ln_hh = (
            b.const(sd["layer_norm_hh_weight" + sfx], "ln_hh_scale"),
            b.const(sd["layer_norm_hh_bias" + sfx], "ln_hh_bias"),
        )
        v.ln_c = (
            b.const(sd["layer_norm_c_weight" + sfx].reshape(H), "ln_c_scale"),
            b.const(sd["layer_norm_c_bias" + sfx].reshape(H), "ln_c_bias"),
        )
    z = lstm.zoneout if isinstance(lstm.zoneout, tuple) else (lstm.zoneout,) * 2
    if z[0]:
        v.zoneout = (b.const(z[0], "zoneout_c"), b.const(1.0 - z[0], "keep_c"))
    if z[1]:
        v.zoneout_h = (b.const(z[1], "zoneout_h"), b.const(1.0 - z[1], "keep_h"))
    return v


def _scan_layer(b: _Builder, sd, l: int, lstm: LSTM, x: str, mask: str | None, h0, c0, batch):
    """One layer as one Scan per direction (projection, and the cell variants the LSTM
    operator lacks); returns (y (T, N, D*H_out), h_n, c_n)."""
    D, H, P = lstm.num_directions, lstm.hidden_size, lstm.proj_size
    Hout = lstm.output_size
    ys, hs, cs = [], [], []
    for d, s in enumerate(["", "_reverse"][:D]):
        pre = b.op("MatMul", [x, b.const(sd[f"weight_ih_l{l}{s}"].T, f"Wt_l{l}{s}")])
        if lstm.layer_norm:  # LN(x W_ih^T) + b_ih + b_hh
            pre = b.op(
                "LayerNormalization",
                [
                    pre,
                    b.const(sd[f"layer_norm_ih_weight_l{l}{s}"], f"ln_ih_scale_l{l}{s}"),
                    b.const(sd[f"layer_norm_ih_bias_l{l}{s}"], f"ln_ih_bias_l{l}{s}"),
                ],
                **_LN_ATTRS,
            )
        if lstm.bias:
            pre = b.op(
                "Add", [pre, b.const(sd[f"bias_ih_l{l}{s}"] + sd[f"bias_hh_l{l}{s}"], f"b_l{l}{s}")]
            )
        if h0 is not None:
            row = l * D + d
            rows = (b.ints([row]), b.ints([row + 1]), b.ints([0]))
            h_init = b.op("Squeeze", [b.op("Slice", (h0,) + rows), b.ints([0])])
            c_init = b.op("Squeeze", [b.op("Slice", (c0,) + rows), b.ints([0])])
        else:
            zero = b.onnx.numpy_helper.from_array(np.zeros(1, b.dtype))
            h_init = b.op(
                "ConstantOfShape", [b.op("Concat", [batch, b.ints([Hout])], axis=0)], value=zero
            )
            c_init = b.op(
                "ConstantOfShape", [b.op("Concat", [batch, b.ints([H])], axis=0)], value=zero
            )
        body = _scan_body(
            b,
            H,
            P,
            b.const(sd[f"weight_hh_l{l}{s}"].T, f"Rt_l{l}{s}"),
            b.const(sd[f"weight_hr_l{l}{s}"].T, f"Whr_l{l}{s}") if P else None,
            mask is not None,
            _step_variants(b, sd, f"_l{l}{s}", lstm),
        )
        scans = [pre] + ([mask] if mask is not None else [])
        # Reverse direction (or a reverse LSTM's only one): flip time before the loop and flip
        # y back after it, so that y is in time order. (Scan's own scan_input_directions would
        # do the same, but onnx.reference does not implement it, and it is the float64 oracle.)
        rev = d == 1 or lstm.reverse
        if rev:
            scans = [_flip_time(b, v) for v in scans]
        h_n, c_n, y = b.op(
            "Scan", [h_init, c_init] + scans, n_out=3, body=body, num_scan_inputs=len(scans)
        )
        if rev:
            y = _flip_time(b, y)
        ys.append(y)
        hs.append(b.op("Unsqueeze", [h_n, b.ints([0])]))
        cs.append(b.op("Unsqueeze", [c_n, b.ints([0])]))
    if D == 1:
        return ys[0], hs[0], cs[0]
    return b.op("Concat", ys, axis=2), b.op("Concat", hs, axis=0), b.op("Concat", cs, axis=0)


def export(
    module, f, *, initial_state: bool = False, lengths: bool = False, opset: int | None = None
) -> None:
    """Write an ``LSTM`` or ``LSTMModel`` as an ONNX model (inference, no dropout).

    Parameters
    ----------
    module : LSTM or LSTMModel
    f : str, os.PathLike or binary file object
        Where to write the serialized ModelProto.
    initial_state : bool, default False, keyword-only
        LSTM only: add the inputs ``"h0"`` (D*L, N, H_out) and ``"c0"`` (D*L, N, H); without
        them the graph starts from zeros.
    lengths : bool, default False, keyword-only
        Add the input ``"lengths"``, int64 of shape (N,): the valid steps of each right-padded
        sequence, as the ``lengths=`` argument of ``forward``. Give lengths >= 1: for a
        length of 0 ONNX Runtime's LSTM returns zero final states, where eigenlstm (and the
        Scan graphs of projected layers) return the initial state.
    opset : int, optional, keyword-only
        ONNX opset of the default domain, in [13, newest known to the onnx package];
        default 17.

    Notes
    -----
    An ``LSTM`` graph maps ``"input"`` ((T, N, I), or (N, T, I) if batch_first) to ``"output"``,
    ``"h_n"``, ``"c_n"`` with torch's shapes; an ``LSTMModel`` graph maps ``"input"`` (N, T, I)
    to ``"output"`` (N, O). Batch and time are dynamic.

    Layers are ONNX ``LSTM`` nodes (layout 0: ONNX Runtime implements no other), with
    ``Transpose``/``Squeeze``/``Reshape`` glue; peepholes are their input ``P`` and a coupled
    input-forget gate (``cifg``) their ``input_forget=1``. ONNX's LSTM has no projection,
    state clipping, zoneout or layer norm, so an LSTM with ``proj_size > 0``, ``cell_clip``,
    ``proj_clip``, ``zoneout`` or ``layer_norm`` is a ``Scan`` over time of standard ops per
    layer and direction (see ``_scan_body``; zoneout as its evaluation-mode expectation,
    layer norm as ``LayerNormalization``, opset 17). The training regularizers (dropout,
    recurrent dropout, weight drop) are not part of an inference graph. ONNX Runtime's LSTM
    kernel is float32 only; float64 graphs are valid ONNX and run in
    ``onnx.reference.ReferenceEvaluator``.

    Raises
    ------
    TypeError
        If ``module`` is not an LSTM or LSTMModel, or ``opset`` is not an int.
    ValueError
        If ``opset`` is out of range, or ``initial_state=True`` for an LSTMModel.
    NotImplementedError
        For ``layer_norm=True`` with an opset below 17 (no LayerNormalization there).
    ImportError
        If the onnx package is missing.

    Examples
    --------
    >>> import io, eigenlstm as el
    >>> buf = io.BytesIO()
    >>> el.onnx.export(el.LSTMModel(3, 8, 1, seed=0), buf)
    >>> len(buf.getvalue()) > 0
    True
    """
    where = "eigenlstm.onnx.export"
    refuse_quantized(where, module)
    if isinstance(module, LSTMModel):
        lstm, fc = module.lstm, module.fc
        if module.many_to_many:
            raise ValueError(
                f"{where}: module must be an LSTMModel with its head on the last step (the "
                "graph reads the last step), got many_to_many=True; export module.lstm and "
                "apply module.fc to every step of its output"
            )
        if initial_state:
            raise ValueError(
                f"{where}: initial_state must be False for an LSTMModel (its graph "
                "starts from zeros, as its forward does), got True"
            )
    elif isinstance(module, LSTM):
        lstm, fc = module, None
    else:
        raise TypeError(
            f"{where}: module must be an eigenlstm LSTM or LSTMModel, got {type(module).__name__}"
        )
    onnx = _import_onnx(where)
    opset = _check_opset(where, onnx, opset)
    if lstm.layer_norm and opset < 17:
        raise NotImplementedError(
            f"{where}: an LSTM with layer_norm=True needs opset >= 17 (LayerNormalization), "
            f"got opset={opset}"
        )
    # The LSTM operator where it expresses the cell (its P is our peepholes, input_forget our
    # cifg); a Scan of standard ops for the rest: projection, clips, zoneout, layer norm.
    scan = bool(
        lstm.proj_size
        or lstm.cell_clip is not None
        or lstm.proj_clip is not None
        or lstm.zoneout
        or lstm.layer_norm
    )
    helper, TP = onnx.helper, onnx.TensorProto
    b = _Builder(onnx, lstm.dtype)
    sd = lstm.state_dict()
    D, L, H, Hout, I = (
        lstm.num_directions,
        lstm.num_layers,
        lstm.hidden_size,
        lstm.output_size,
        lstm.input_size,
    )

    x_dims = ["batch", "time", I] if lstm.batch_first else ["time", "batch", I]
    graph_inputs = [helper.make_tensor_value_info("input", b.elem, x_dims)]
    x = b.op("Transpose", ["input"], perm=[1, 0, 2]) if lstm.batch_first else "input"  # (T, N, I)
    h0 = c0 = None
    if initial_state:
        graph_inputs += [
            helper.make_tensor_value_info("h0", b.elem, [D * L, "batch", Hout]),
            helper.make_tensor_value_info("c0", b.elem, [D * L, "batch", H]),
        ]
        h0, c0 = "h0", "c0"
    seq = mask = None
    if lengths:
        graph_inputs.append(helper.make_tensor_value_info("lengths", TP.INT64, ["batch"]))
        if not scan:
            seq = b.op("Cast", ["lengths"], to=TP.INT32)  # ONNX LSTM's sequence_lens is int32
        else:  # mask[t, n, 0] = t < lengths[n], for the Scan body
            T = b.op("Gather", [b.op("Shape", [x]), b.const(0, "zero", np.int64)], axis=0)
            t = b.op("Range", [b.const(0, "zero", np.int64), T, b.const(1, "one", np.int64)])
            less = b.op(
                "Less",
                [b.op("Unsqueeze", [t, b.ints([1])]), b.op("Unsqueeze", ["lengths", b.ints([0])])],
            )
            mask = b.op("Unsqueeze", [less, b.ints([2])])
    batch = b.op("Slice", [b.op("Shape", [x]), b.ints([1]), b.ints([2])]) if scan else None

    hs, cs = [], []
    for l in range(L):
        if not scan:
            x, y_h, y_c = _lstm_op_layer(b, sd, l, lstm, x, seq, h0, c0)
        else:
            x, y_h, y_c = _scan_layer(b, sd, l, lstm, x, mask, h0, c0, batch)
        hs.append(y_h)
        cs.append(y_c)

    if fc is None:
        if lstm.batch_first:
            b.op("Transpose", [x], perm=[1, 0, 2], out=["output"])
        else:
            b.op("Identity", [x], out=["output"])
        b.op("Concat", hs, axis=0, out=["h_n"])
        b.op("Concat", cs, axis=0, out=["c_n"])
        out_dims = ["batch", "time", D * Hout] if lstm.batch_first else ["time", "batch", D * Hout]
        graph_outputs = [
            helper.make_tensor_value_info("output", b.elem, out_dims),
            helper.make_tensor_value_info("h_n", b.elem, [D * L, "batch", Hout]),
            helper.make_tensor_value_info("c_n", b.elem, [D * L, "batch", H]),
        ]
    else:
        if lengths:  # y[n] = out[n, lengths[n] - 1]: GatherND with one index per batch row
            idx = b.op(
                "Unsqueeze", [b.op("Sub", ["lengths", b.const(1, "one", np.int64)]), b.ints([1])]
            )
            last = b.op("GatherND", [b.op("Transpose", [x], perm=[1, 0, 2]), idx], batch_dims=1)
        else:  # out[:, -1, :] of the batch-first output is step -1 of x (T, N, D*H)
            last = b.op("Gather", [x, b.const(-1, "last", np.int64)], axis=0)
        inputs = [last, b.const(fc.weight, "fc_weight")]
        if fc.bias is not None:
            inputs.append(b.const(fc.bias, "fc_bias"))
        b.op("Gemm", inputs, out=["output"], transB=1)  # y = last W^T + b
        graph_outputs = [
            helper.make_tensor_value_info("output", b.elem, ["batch", fc.out_features])
        ]

    graph = helper.make_graph(b.nodes, "eigenlstm", graph_inputs, graph_outputs, b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="eigenlstm",
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    data = model.SerializeToString()
    if hasattr(f, "write"):
        f.write(data)
    else:
        with open(os.fspath(f), "wb") as fh:
            fh.write(data)


# ==== load ===================================================================================
# The loader interprets the graph abstractly: every value gets a kind that says what it holds
# ("const" array, "sym" shape entries, all-"zeros" state, a "seq" of a layer's outputs with
# labelled axes, a layer's "final" states, ...). Each recognised op maps kinds to kinds and
# checks its attributes; anything else stops the load with a ValueError naming the node.
# Axis labels: the graph input is ("a0", "a1", "F"); an LSTM node names its time and batch
# axes after its input's, so a Transpose anywhere is tracked and checked at the end.


# Identity semantics (eq=False) for the three classes below: values are told apart with ``is``
# and id(), and their fields hold arrays.
@dataclasses.dataclass(eq=False, repr=False)
class _V:
    """An abstract value: ``kind`` plus the fields that kind uses (the others keep their defaults)."""

    kind: str
    value: np.ndarray | None = None  # const: the array
    name: str | None = None  # lengths, seq, state: the graph input it is
    axes: tuple[str, ...] = ()  # seq, state, final, last: one label per axis
    layer: _Layer | None = None  # seq, last: the layer that writes it (None: the graph input)
    lo: int = 0  # state: first row of the graph input it reads
    hi: int | None = None  # state: end row, None when the input's first dimension is dynamic
    raw_dims: list[int | None] | None = None  # state: the graph input's dims, while unsliced
    squeezed: bool = False  # state: the row axis is squeezed away
    items: tuple[str | int, ...] = ()  # sym: the shape entries (axis labels or constants)
    scalar: bool = False  # sym: one entry as a 0-D value
    seq: _V | None = None  # seq_last: the sequence a last step is sliced from
    axis: int = 0  # seq_last: the sliced axis
    half: _Half | None = None  # scan_h, scan_y, final_half: the Scan direction
    which: str | None = None  # scan_h, final, final_half: "h" or "c"
    layers: tuple[_Layer, ...] = ()  # final: the layers whose states are concatenated
    label: str | int | None = None  # time_range: the time axis's shape entry
    flipped: bool = False  # pre, mask, scan_y: in reversed time order
    ln: tuple[np.ndarray, np.ndarray] | None = None  # pre: LayerNormalization's scale, bias
    by_lengths: bool = False  # last: selected at step lengths - 1 (not at -1)
    last: _V | None = None  # head: the last-step value it reads
    weight: np.ndarray | None = None  # head: (O, F), torch's Linear weight
    bias: np.ndarray | None = None  # head: (O,); pre: the summed (4H,) bias
    src: _V | None = None  # pre: the sequence it projects
    w_t: np.ndarray | None = None  # pre: W_ih^T (I, 4H)

    def __repr__(self) -> str:
        return f"<{self.kind}>"

    def replace(self, **changes: Any) -> _V:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(eq=False)
class _Layer:
    """One LSTM layer as found in the graph (D directions), in torch's layout."""

    where: NodeProto  # node that defines it, for error messages
    D: int
    H: int
    P: int
    # per direction: dict weight_ih, weight_hh, bias_ih, bias_hh[, weight_hr]
    weights: list[dict[str, np.ndarray]]
    src: _V  # the "seq" value it reads
    seq: str | None  # None, or "lengths" when it honours the graph's lengths
    init: list[tuple[_V, _V, int]] | None  # None (zeros), or per direction (h, c) "state" values
    has_bias: bool
    H_out: int = 0  # width of one direction's output: P if P > 0 else H
    layout: int = 0  # the ONNX LSTM layout attribute (0 for a Scan layer)
    reverse: bool = False  # one direction, run backwards in time (eigenlstm.LSTM's reverse)
    # the cell variants, as eigenlstm.LSTM's keyword arguments; an LSTM node has at most
    # peepholes (its P: weights[d] then holds weight_peephole) and cifg (input_forget=1)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class _Half:
    """One direction of a Scan layer, until its partner direction (if any) is found."""

    d: int  # 0 forward, 1 reverse
    H: int
    P: int
    weights: dict[str, np.ndarray]  # weight_ih, weight_hh, weight_hr[, bias_ih, bias_hh]
    src: _V  # the "seq" value it reads
    seq: str | None  # None, or "lengths" when it honours the graph's lengths
    init: list[_V | None]  # the (h, c) "state" values, or None for zeros
    node: NodeProto  # the Scan node
    has_bias: bool
    options: dict[str, Any]  # the cell variants: eigenlstm.LSTM's keyword arguments


class _LoadError(ValueError):
    pass


def _option_value(v) -> float:
    """A scalar constant of the graph as an option's value: the shortest decimal that rounds
    to it in its dtype (a float32 graph's 0.4 is read as 0.4, not 0.4000000059604645; the
    engine rounds it to float32 again)."""
    return float(str(np.asarray(v)[()]))


def _layer_options(layer: _Layer) -> dict[str, Any]:
    """The cell variants of a layer read from the graph, every option present (eigenlstm.LSTM's
    keyword arguments; zoneout as a (z_c, z_h) pair)."""
    options: dict[str, Any] = {
        "cifg": False,
        "peepholes": False,
        "cell_clip": None,
        "proj_clip": None,
        "layer_norm": False,
        "zoneout": (0.0, 0.0),
    }
    options.update(layer.options)
    return options


_INT64_MIN = int(np.iinfo(np.int64).min)


class _Interpreter:
    def __init__(self, onnx: Any, model: ModelProto, opset: int) -> None:
        self.onnx = onnx
        self.model = model
        self.time_axis: str | None = None  # "a0" or "a1", fixed by the first LSTM node
        self.graph = model.graph
        self.opset = opset  # of the default domain, checked by load
        self.env: dict[str, _V] = {}
        self.halves: dict[int, _Layer] = {}  # id of a _Half -> its one-direction layer
        self.pairs: dict[tuple[int, int], _Layer] = {}  # ids of two _Halves -> their layer

    # ---- helpers ---------------------------------------------------------------------------
    def fail(self, node: NodeProto, msg: str) -> NoReturn:
        raise _LoadError(
            f"eigenlstm.onnx.load: node {node.name or node.output[0]!r} ({node.op_type}): {msg}"
        )

    def check_required_inputs(self, node: NodeProto) -> None:
        """Fail unless every input that the op's schema (at the graph's opset) requires is
        named: an empty name marks an omitted optional input only."""
        defs = self.onnx.defs
        try:
            schema = defs.get_schema(node.op_type, self.opset, "")
        except defs.SchemaError:  # an unknown op: refused by name where it is run
            return
        single = defs.OpSchema.FormalParameterOption.Single
        for i, formal in enumerate(schema.inputs):
            given = node.input[i] if i < len(node.input) else ""
            if formal.option == single and not given:
                self.fail(node, f"input {i} ({formal.name}) is required, got none")

    def attrs(self, node: NodeProto) -> dict[str, Any]:
        get = self.onnx.helper.get_attribute_value
        out = {}
        for a in node.attribute:
            v = get(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        return out

    def const(self, node: NodeProto, name: str, what: str) -> np.ndarray:
        v = self.env[name]
        value = v.value if v.kind == "const" else None
        if value is None:
            self.fail(node, f"{what} must be a constant, got a {v.kind} value")
        return value

    def ints_arg(self, node, attrs, key: str, index: int, default=None):
        """Read an int list given as an attribute (old opsets) or as input ``index`` (new)."""
        if key in attrs:
            return [int(v) for v in attrs[key]]
        if len(node.input) > index and node.input[index]:
            return [int(v) for v in np.atleast_1d(self.const(node, node.input[index], key))]
        return default

    def fold(self, node: NodeProto) -> list[np.ndarray]:
        """Evaluate a node whose inputs are all constants with onnx's reference runtime."""
        from onnx.reference import ReferenceEvaluator

        feeds = {n: self.env[n].value for n in node.input if n}
        ref = ReferenceEvaluator(node, opsets={"": self.opset})
        # run returns a dict only for intermediate=True; its annotation does not say so.
        return cast("list[np.ndarray]", ref.run(None, feeds))

    # ---- the walk --------------------------------------------------------------------------
    def run(self) -> list[_V]:
        g = self.graph
        numpy_helper = self.onnx.numpy_helper
        for init in g.initializer:
            self.env[init.name] = _V("const", value=numpy_helper.to_array(init))
        inits = set(self.env)
        inputs = [i for i in g.input if i.name not in inits]
        self.inputs = inputs
        elem = self.onnx.TensorProto
        data_seen = False
        for i in inputs:
            t = i.type.tensor_type
            rank = len(t.shape.dim)
            if t.elem_type in (elem.INT32, elem.INT64) and rank == 1:
                self.env[i.name] = _V("lengths", name=i.name)
            elif t.elem_type in (elem.FLOAT, elem.DOUBLE) and rank == 3 and not data_seen:
                self.env[i.name] = _V("seq", axes=("a0", "a1", "F"), layer=None, name=i.name)
                data_seen = True
            elif t.elem_type in (elem.FLOAT, elem.DOUBLE) and rank == 3:
                dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
                self.env[i.name] = _V(
                    "state", name=i.name, lo=0, hi=dims[0], axes=("S", "a?", "H"), raw_dims=dims
                )
            else:
                raise _LoadError(
                    f"eigenlstm.onnx.load: graph input {i.name!r} must be the (3-D float) "
                    f"sequence, a 3-D float initial state or 1-D integer lengths, got element "
                    f"type {elem.DataType.Name(t.elem_type)} of rank {rank}"
                )
        if not data_seen:
            raise _LoadError("eigenlstm.onnx.load: the graph has no 3-D float input (the sequence)")
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, f"domain must be the default ONNX domain, got {node.domain!r}")
            handler = getattr(self, f"op_{node.op_type}", None)
            self.check_required_inputs(node)
            missing = [n for n in node.input if n and n not in self.env]
            if missing:
                self.fail(node, f"reads {missing[0]!r}, which no earlier node or input defines")
            ins = [self.env[n] if n else None for n in node.input]
            if (
                node.op_type in _FOLDABLE
                and ins
                and all(v is None or v.kind == "const" for v in ins)
            ):
                for name, value in zip(node.output, self.fold(node)):
                    self.env[name] = _V("const", value=np.asarray(value))
                continue
            if node.op_type == "Constant":
                self.env[node.output[0]] = _V("const", value=np.asarray(self.fold(node)[0]))
                continue
            if handler is None:
                self.fail(
                    node,
                    "this op is outside the pattern eigenlstm reads (chained LSTM "
                    "layers, their glue, a last-step selection and a Gemm or MatMul+Add head)",
                )
            outs = handler(node, ins, self.attrs(node))
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for name, v in zip(node.output, outs):
                if name:
                    self.env[name] = v
        return [self.env[o.name] for o in g.output]

    # ---- ops on shapes and constants --------------------------------------------------------
    def op_Identity(self, node, ins, a):
        return ins[0]

    def op_Shape(self, node, ins, a):
        v = ins[0]
        if v.kind != "seq":
            self.fail(node, f"Shape is read only of the sequence, got a {v.kind} value")
        return _V("sym", items=tuple(v.axes), scalar=False)

    def op_Cast(self, node, ins, a):
        v = ins[0]
        if v.kind in ("sym", "lengths", "zeros"):
            return v
        self.fail(node, f"Cast is read only of shapes and lengths, got a {v.kind} value")

    def op_Gather(self, node, ins, a):
        v, idx = ins
        axis = int(a.get("axis", 0))
        if idx.kind != "const":
            self.fail(node, "indices must be a constant")
        if v.kind == "sym":
            sel = [v.items[int(i)] for i in np.atleast_1d(idx.value)]
            return _V("sym", items=tuple(sel), scalar=idx.value.ndim == 0)
        if v.kind in ("seq",) and idx.value.ndim == 0:
            return self._last_step(node, v, axis, int(idx.value))
        self.fail(
            node, f"Gather must select the last time step of a layer output, got a {v.kind} value"
        )

    def _last_step(self, node, v, axis, index):
        v = self.as_seq(node, v)
        axis = axis % len(v.axes)
        if v.layer is None or v.axes[axis] != self.time_label(node):
            self.fail(node, "only the time axis of an LSTM output may be indexed")
        if index != -1:
            self.fail(
                node, f"the time index must be -1 (the last step, for any length), got {index}"
            )
        return _V(
            "last",
            axes=tuple(x for k, x in enumerate(v.axes) if k != axis),
            layer=v.layer,
            by_lengths=False,
        )

    def op_Unsqueeze(self, node, ins, a):
        v = ins[0]
        axes = self.ints_arg(node, a, "axes", 1)
        if v.kind == "sym" and v.scalar and axes == [0]:
            return _V("sym", items=v.items, scalar=False)
        if v.kind == "zeros":
            return v
        if v.kind == "seq_last" and axes == [v.axis]:
            return v.seq
        if v.kind == "scan_h" and axes == [0]:
            return _V("final_half", half=v.half, which=v.which)
        if v.kind == "lengths" and axes == [0]:
            return _V("lengths_row")
        if v.kind == "lengths_m1" and axes in ([1], [-1]):
            return _V("lengths_idx")
        if v.kind == "time_range" and axes == [1]:
            return _V("time_col")
        if v.kind == "mask2" and axes in ([2], [-1]):
            return _V("mask", flipped=False)
        self.fail(node, f"Unsqueeze with axes={axes} of a {v.kind} value is outside the pattern")

    def op_Squeeze(self, node, ins, a):
        v = ins[0]
        axes = self.ints_arg(node, a, "axes", 1)
        if v.kind == "zeros":
            return v
        if (
            v.kind == "seq_last"
            and axes is not None
            and len(axes) == 1
            and axes[0] % len(v.seq.axes) == v.axis
        ):
            return self._last_step(node, v.seq, v.axis, -1)
        if v.kind == "state" and axes == [0] and v.axes[0] == "S":
            return _V("state", name=v.name, lo=v.lo, hi=v.hi, axes=v.axes[1:], squeezed=True)
        if v.kind == "seq" and v.layer is not None and axes is not None and len(axes) == 1:
            ax = axes[0] % len(v.axes)
            if v.axes[ax] == "D" and v.layer.D == 1:
                rest = tuple(x for k, x in enumerate(v.axes) if k != ax)
                return _V("seq", axes=tuple("F" if x == "H" else x for x in rest), layer=v.layer)
        self.fail(
            node,
            f"Squeeze with axes={axes} of a {v.kind} value is outside the pattern "
            "(only a direction axis of size 1 may be squeezed)",
        )

    def op_Concat(self, node, ins, a):
        axis = int(a["axis"])
        kinds = {v.kind for v in ins}
        if kinds <= {"sym", "const"}:
            items = []
            for v in ins:
                items += (
                    list(v.items) if v.kind == "sym" else [int(x) for x in np.atleast_1d(v.value)]
                )
            return _V("sym", items=tuple(items), scalar=False)
        if kinds <= {"final", "final_half"} and axis == 0:
            return self._concat_finals(node, ins)
        if kinds == {"scan_y"} and len(ins) == 2 and axis in (2, -1):
            layer = self._pair(node, ins[0], ins[1])
            return _V(
                "seq",
                axes=(self.time_label(node, layer), self.batch_label(layer), "F"),
                layer=layer,
            )
        self.fail(node, f"Concat on axis {axis} of {sorted(kinds)} values is outside the pattern")

    def op_ConstantOfShape(self, node, ins, a):
        value = a.get("value")
        if value is not None and np.any(self.onnx.numpy_helper.to_array(value) != 0):
            self.fail(node, "only all-zero initial states are read")
        return _V("zeros")

    def op_Expand(self, node, ins, a):
        v = ins[0]
        if v.kind == "zeros" or (v.kind == "const" and not np.any(v.value)):
            return _V("zeros")
        self.fail(node, "only zeros may be expanded (an all-zero initial state)")

    def op_Slice(self, node, ins, a):
        v = ins[0]
        starts = self.ints_arg(node, a, "starts", 1)
        ends = self.ints_arg(node, a, "ends", 2)
        axes = self.ints_arg(node, a, "axes", 3, default=list(range(len(starts))))
        steps = self.ints_arg(node, a, "steps", 4, default=[1] * len(starts))
        if v.kind == "zeros":
            return v
        if v.kind == "sym" and axes == [0] and steps == [1]:
            return _V("sym", items=v.items[starts[0] : ends[0]], scalar=False)
        flip = axes == [0] and steps == [-1] and starts == [-1] and ends[0] <= -(2**31)
        if flip and v.kind in ("pre", "mask", "scan_y"):
            return v.replace(flipped=not v.flipped)
        if v.kind == "state" and axes == [0] and steps == [1] and v.axes[0] == "S":
            return _V(
                "state",
                name=v.name,
                lo=v.lo + starts[0],
                hi=v.lo + ends[0],
                axes=v.axes,
                raw_dims=None,
            )
        if (
            v.kind == "seq"
            and len(axes) == 1
            and steps == [1]
            and starts == [-1]
            and ends[0] >= 2**31 - 1
        ):
            ax = axes[0] % len(v.axes)
            return _V("seq_last", seq=v, axis=ax)
        self.fail(
            node,
            f"Slice (starts={starts}, ends={ends}, axes={axes}, steps={steps}) of a "
            f"{v.kind} value is outside the pattern",
        )

    def op_Transpose(self, node, ins, a):
        v = ins[0]
        perm = [int(p) for p in a["perm"]]
        if v.kind == "scan_y":
            v = self.as_seq(node, v)
        if v.kind in ("seq", "state", "final"):
            if len(perm) != len(v.axes):
                self.fail(node, f"perm={perm} does not match the rank {len(v.axes)} of its input")
            return v.replace(axes=tuple(v.axes[p] for p in perm))
        if v.kind == "zeros":
            return v
        self.fail(node, f"Transpose of a {v.kind} value is outside the pattern")

    def op_Reshape(self, node, ins, a):
        v, shape = ins
        if v.kind == "zeros":
            return v
        if shape.kind != "const":
            self.fail(node, "the shape must be a constant")
        shape = [int(s) for s in shape.value]
        if (
            v.kind == "seq"
            and v.layer is not None
            and len(v.axes) == 4
            and v.axes[2:] == ("D", "H")
            and shape[:2] == [0, 0]
            and shape[2] in (-1, v.layer.D * v.layer.H_out)
        ):
            return _V("seq", axes=v.axes[:2] + ("F",), layer=v.layer)
        self.fail(
            node,
            f"Reshape to {shape} of a {v.kind} value is outside the pattern (only "
            "merging the direction and hidden axes into features is)",
        )

    def op_Range(self, node, ins, a):
        start, limit, delta = ins
        if (
            start.kind == "const"
            and int(start.value) == 0
            and delta.kind == "const"
            and int(delta.value) == 1
            and limit.kind == "sym"
            and limit.scalar
        ):
            return _V("time_range", label=limit.items[0])
        self.fail(node, "only Range(0, T, 1) over the time steps is read")

    def op_Less(self, node, ins, a):
        x, y = ins
        if x.kind == "time_col" and y.kind == "lengths_row":
            return _V("mask2")
        self.fail(node, "only the mask step < lengths is read")

    def op_Sub(self, node, ins, a):
        x, y = ins
        if x.kind == "lengths" and y.kind == "const" and y.value.size == 1 and int(y.value) == 1:
            return _V("lengths_m1")
        self.fail(node, "only lengths - 1 is read")

    def op_GatherND(self, node, ins, a):
        v, idx = ins
        if int(a.get("batch_dims", 0)) == 1 and idx.kind == "lengths_idx":
            v = self.as_seq(node, v)
            if v.layer is not None and v.axes == (
                self.batch_label(v.layer),
                self.time_label(node),
                "F",
            ):
                return _V("last", axes=(v.axes[0], "F"), layer=v.layer, by_lengths=True)
        self.fail(node, "only GatherND of each sequence's step lengths - 1 is read")

    # ---- the head --------------------------------------------------------------------------
    def _head_input(self, node, v):
        if v.kind == "seq_last":
            self.fail(node, "a last-step Slice must be squeezed before the head")
        if v.kind != "last" or v.axes != (self.batch_label(v.layer), "F"):
            self.fail(
                node,
                f"the head must read the last step of the last LSTM layer (N, features), "
                f"got a {v.kind} value",
            )
        return v

    def op_Gemm(self, node, ins, a):
        last = self._head_input(node, ins[0])
        if int(a.get("transA", 0)):
            self.fail(node, "transA must be 0")
        w = self.const(node, node.input[1], "B (the weight)")
        w = w.T if int(a.get("transB", 0)) else w  # (F, O) -> torch's Linear weight (O, F)
        weight = float(a.get("alpha", 1.0)) * w.T
        bias = None
        if len(ins) > 2 and ins[2] is not None:
            c = self.const(node, node.input[2], "C (the bias)")
            bias = float(a.get("beta", 1.0)) * np.broadcast_to(c, (weight.shape[0],))
        return _V("head", last=last, weight=weight, bias=bias)

    def op_MatMul(self, node, ins, a):
        v, w = ins
        if w.kind != "const":
            self.fail(node, "the second input must be a constant weight")
        if v.kind == "last":
            self._head_input(node, v)
            return _V("head", last=v, weight=w.value.T, bias=None)
        if v.kind in ("seq", "scan_y"):
            v = self.as_seq(node, v)
            self._fix_axes(node, v.axes, 0)  # a Scan layer reads (T, N, features)
            return _V("pre", src=v, w_t=w.value, bias=None, flipped=False)
        self.fail(node, f"MatMul of a {v.kind} value is outside the pattern")

    def op_Add(self, node, ins, a):
        x, y = ins
        if x.kind == "const":
            x, y = y, x
        if y.kind == "const" and x.kind == "head" and x.bias is None:
            return _V(
                "head",
                last=x.last,
                weight=x.weight,
                bias=np.broadcast_to(y.value, (x.weight.shape[0],)),
            )
        if y.kind == "const" and x.kind == "pre" and x.bias is None and not x.flipped:
            return _V("pre", src=x.src, w_t=x.w_t, bias=y.value, flipped=False, ln=x.ln)
        self.fail(node, f"Add of {x.kind} and {y.kind} values is outside the pattern")

    def op_LayerNormalization(self, node, ins, a):
        # LN(x W_ih^T) of a layer-normalised LSTM's Scan layer, before its bias
        x, scale, bias = (list(ins) + [None] * 3)[:3]
        if (
            x.kind != "pre"
            or x.bias is not None
            or x.ln is not None
            or x.flipped
            or scale is None
            or scale.kind != "const"
            or bias is None
            or bias.kind != "const"
            or len(node.output) != 1
        ):
            self.fail(
                node,
                "only LayerNormalization(x W_ih^T, scale, bias) of a layer-normalised LSTM's "
                "input projection is read",
            )
        if int(a.get("axis", -1)) not in (-1, 2) or not np.isclose(
            float(a.get("epsilon", 1e-5)), 1e-5, rtol=1e-3
        ):
            self.fail(
                node,
                "attributes must normalise the last axis with epsilon 1e-5 (eigenlstm's), "
                f"got axis={a.get('axis', -1)}, epsilon={a.get('epsilon', 1e-5)}",
            )
        return x.replace(ln=(scale.value, bias.value))

    # ---- LSTM layers -----------------------------------------------------------------------
    def time_label(self, node, layer=None):
        if self.time_axis is None:
            self.fail(node, "a time axis is used before any LSTM node fixed it")
        return self.time_axis

    def batch_label(self, layer=None):
        return "a1" if self.time_axis == "a0" else "a0"

    def _fix_axes(self, node, x_axes, layout):
        t, n = (x_axes[0], x_axes[1]) if layout == 0 else (x_axes[1], x_axes[0])
        if x_axes[2] != "F" or {t, n} != {"a0", "a1"}:
            self.fail(node, f"X must be a sequence with features last, got axes {x_axes}")
        if self.time_axis is None:
            self.time_axis = t
        elif self.time_axis != t:
            self.fail(node, "X has time and batch swapped with respect to the first layer")
        return t, n

    def _init_state(self, node, v, D, layout, what):
        if v is None or v.kind == "zeros" or (v.kind == "const" and not np.any(v.value)):
            return None
        if v.kind != "state":
            self.fail(
                node, f"{what} must be zeros or a slice of a graph input, got a {v.kind} value"
            )
        want = ("S", "a?", "H") if layout == 0 else ("a?", "S", "H")
        if layout == 1 and v.raw_dims is not None and v.axes[0] == "S":
            # A graph input used as it is by a layout-1 node is (N, D, H): rows on axis 1.
            v = v.replace(axes=want, hi=v.raw_dims[1], raw_dims=None)
        if v.axes != want or (v.hi is not None and v.hi - v.lo != D):
            self.fail(node, f"{what} must be {D} consecutive rows of a (D*L, N, H) graph input")
        return v

    def op_LSTM(self, node, ins, a):
        for key in ("clip", "activation_alpha", "activation_beta"):
            if key in a:
                self.fail(
                    node,
                    f"attribute {key} is not supported (eigenlstm's cell has no {key}), got {a[key]}",
                )
        input_forget = int(a.get("input_forget", 0))
        if input_forget not in (0, 1):
            self.fail(node, f"attribute input_forget must be 0 or 1, got {input_forget}")
        direction = a.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            self.fail(
                node,
                f"attribute direction must be 'forward', 'reverse' or 'bidirectional', got "
                f"{direction!r}",
            )
        D = 2 if direction == "bidirectional" else 1
        acts = [s.lower() for s in a.get("activations", ["Sigmoid", "Tanh", "Tanh"] * D)]
        if acts != ["sigmoid", "tanh", "tanh"] * D:
            self.fail(
                node,
                f"attribute activations must be {['Sigmoid', 'Tanh', 'Tanh'] * D} "
                f"(the standard cell), got {a['activations']}",
            )
        layout = int(a.get("layout", 0))
        x = ins[0]
        if x.kind == "scan_y":
            x = self.as_seq(node, x)
        if x.kind != "seq":
            self.fail(
                node, f"X must be the sequence or a previous layer's output, got a {x.kind} value"
            )
        t, n = self._fix_axes(node, x.axes, layout)
        W = self.const(node, node.input[1], "W")
        R = self.const(node, node.input[2], "R")
        H = R.shape[-1]
        if "hidden_size" in a and int(a["hidden_size"]) != H:
            self.fail(
                node,
                f"attribute hidden_size must match R's last dimension {H}, got {a['hidden_size']}",
            )
        if W.shape[0] != D or R.shape != (D, 4 * H, H) or W.shape[1] != 4 * H:
            self.fail(
                node,
                f"W must be ({D}, {4 * H}, I) and R ({D}, {4 * H}, {H}), got {W.shape} and {R.shape}",
            )
        B = ins[3]
        B = None if B is None else self.const(node, node.input[3], "B")
        if B is not None and B.shape != (D, 8 * H):
            self.fail(node, f"B must have shape ({D}, {8 * H}), got {B.shape}")
        peepholes = None  # ONNX's P: per direction, (w_ci, w_co, w_cf)
        if len(ins) > 7 and ins[7] is not None:
            peepholes = self.const(node, node.input[7], "P")
            if peepholes.shape != (D, 3 * H):
                self.fail(node, f"P must have shape ({D}, {3 * H}), got {peepholes.shape}")
            if not np.any(peepholes):
                peepholes = None
        seq = ins[4] if len(ins) > 4 else None
        if seq is not None and seq.kind != "lengths":
            self.fail(
                node, f"sequence_lens must be the graph's lengths input, got a {seq.kind} value"
            )
        h0 = self._init_state(node, ins[5] if len(ins) > 5 else None, D, layout, "initial_h")
        c0 = self._init_state(node, ins[6] if len(ins) > 6 else None, D, layout, "initial_c")
        if (h0 is None) != (c0 is None):
            self.fail(node, "initial_h and initial_c must both be zeros or both be graph inputs")
        # torch's gate order i, f, g, o; with input_forget (f = 1 - i, its rows unused) the
        # coupled cell's blocks i, g, o
        order = (0, 3, 1) if input_forget else _ONNX_TO_TORCH
        weights = []
        for d in range(D):
            w = {
                "weight_ih": _gate_blocks(W[d], order),
                "weight_hh": _gate_blocks(R[d], order),
            }
            if B is not None:
                w["bias_ih"] = _gate_blocks(B[d, : 4 * H], order)
                w["bias_hh"] = _gate_blocks(B[d, 4 * H :], order)
            if peepholes is not None:  # ONNX's (i, o, f) rows to eigenlstm's (i, f, o)
                w["weight_peephole"] = peepholes[d].reshape(3, H)[[0, 2, 1]]
            weights.append(w)
        init = None if h0 is None else [(h0, c0, d) for d in range(D)]
        layer = _Layer(
            node,
            D,
            H,
            0,
            weights,
            x,
            None if seq is None else "lengths",
            init,
            B is not None,
            H_out=H,
            layout=layout,
            reverse=direction == "reverse",
            options={"cifg": bool(input_forget), "peepholes": peepholes is not None},
        )
        y_axes = (t, "D", n, "H") if layout == 0 else (n, t, "D", "H")
        f_axes = ("D", n, "H") if layout == 0 else (n, "D", "H")
        return [
            _V("seq", axes=y_axes, layer=layer),
            _V("final", which="h", layers=(layer,), axes=f_axes),
            _V("final", which="c", layers=(layer,), axes=f_axes),
        ]

    # ---- Scan layers (projection), as export writes them ------------------------------------
    def op_Scan(self, node, ins, a):
        n_scan = int(a["num_scan_inputs"])
        for key in (
            "scan_input_directions",
            "scan_output_directions",
            "scan_input_axes",
            "scan_output_axes",
        ):
            if key in a and any(int(v) for v in a[key]):
                self.fail(node, f"attribute {key} must be all zeros, got {list(a[key])}")
        if len(ins) != 2 + n_scan or n_scan not in (1, 2) or len(node.output) != 3:
            self.fail(
                node,
                "the Scan must carry (h, c), scan the pre-activations (and a mask) "
                "and output the steps",
            )
        h_init, c_init, pre = ins[:3]
        mask = ins[3] if n_scan == 2 else None
        if pre.kind != "pre" or (
            mask is not None and (mask.kind != "mask" or mask.flipped != pre.flipped)
        ):
            self.fail(node, "the scanned inputs must be x W_ih^T (+ b) and the lengths mask")
        Rt, Whr, found = self._match_body(node, a["body"], mask is not None)
        NG = 3 if found["cifg"] else 4
        H = Rt.shape[1] // NG
        P = 0 if Whr is None else Whr.shape[1]
        d = 1 if pre.flipped else 0
        inits = []
        for v, what in ((h_init, "the initial h"), (c_init, "the initial c")):
            if v.kind == "zeros" or (v.kind == "const" and not np.any(v.value)):
                inits.append(None)
            elif v.kind == "state" and v.squeezed and v.hi is not None and v.hi - v.lo == 1:
                inits.append(v)
            else:
                self.fail(
                    node, f"{what} must be zeros or one row of a graph input, got a {v.kind} value"
                )
        if (inits[0] is None) != (inits[1] is None):
            self.fail(node, "the initial h and c must both be zeros or both be graph inputs")
        w = {"weight_ih": pre.w_t.T, "weight_hh": Rt.T}
        if P:
            w["weight_hr"] = Whr.T
        if pre.bias is not None:  # one summed bias: all of it goes to b_ih, b_hh is zero
            w["bias_ih"] = np.broadcast_to(pre.bias, (NG * H,)).copy()
            w["bias_hh"] = np.zeros(NG * H, dtype=pre.bias.dtype)
        # the cell variants of this direction: eigenlstm.LSTM's options and tensors
        dt = Rt.dtype
        options = {
            "cifg": found["cifg"],
            "peepholes": any(k in found for k in ("w_ci", "w_cf", "w_co")),
            "cell_clip": found.get("cell_clip"),
            "proj_clip": found.get("proj_clip"),
            "layer_norm": "ln_hh" in found,
            "zoneout": (found.get("zoneout_c", 0.0), found.get("zoneout_h", 0.0)),
        }
        G = NG * H
        sizes = {"w_ci": H, "w_cf": H, "w_co": H, "ln_hh": G, "ln_c": H}
        for key, n in sizes.items():  # a constant the step broadcasts: one value or n
            for v in found[key] if key.startswith("ln_") and key in found else [found.get(key)]:
                if v is not None and np.shape(v) not in ((), (1,), (n,)):
                    self.fail(
                        node, f"the Scan body's {key} must have {n} values, got {np.shape(v)}"
                    )
        if pre.ln is not None and any(np.shape(v) not in ((), (1,), (G,)) for v in pre.ln):
            self.fail(node, f"the input's LayerNormalization must have {G} values")
        if options["peepholes"]:
            w["weight_peephole"] = np.stack(
                [np.broadcast_to(found.get(k, 0.0), (H,)) for k in ("w_ci", "w_cf", "w_co")]
            ).astype(dt)
        norms = (pre.ln is not None, "ln_hh" in found, "ln_c" in found)
        if any(norms) and not all(norms):
            self.fail(
                node,
                "a layer-normalised step normalises x W_ih^T, h W_hh^T and c, each with "
                "LayerNormalization; this one normalises only some of them",
            )
        if options["layer_norm"]:
            for part, (gain, shift) in (
                ("ih", pre.ln),
                ("hh", found["ln_hh"]),
                ("c", found["ln_c"]),
            ):
                n = H if part == "c" else NG * H
                w[f"layer_norm_{part}_weight"] = np.broadcast_to(gain, (n,)).astype(dt)
                w[f"layer_norm_{part}_bias"] = np.broadcast_to(shift, (n,)).astype(dt)
        half = _Half(
            d=d,
            H=H,
            P=P,
            weights=w,
            src=pre.src,
            seq="lengths" if mask is not None else None,
            init=inits,
            node=node,
            has_bias=pre.bias is not None,
            options=options,
        )
        return [
            _V("scan_h", half=half, which="h"),
            _V("scan_h", half=half, which="c"),
            _V("scan_y", half=half, flipped=pre.flipped),
        ]

    def _match_body(self, node, body, masked):
        """Check a Scan body against the step export writes (``_scan_body``); return (W_hh^T,
        W_hr^T or None, the cell variants found: ``_StepVariants``-like dict of arrays).

        Values get tags: ("var", k) for the body inputs, ("gate", k) for the gate blocks,
        ("c", stage) and ("h", stage) for the new states as each variant transforms them in
        the order export writes (c: 0 the update, 1 clipped, 2 zoned out; h: 0 o*tanh, 1
        projected, 2 clipped, 3 zoned out), and ("scaled", name) for a product with a
        constant, whose constant and operand are kept until an Add says which variant it is.
        """
        env: dict[str, tuple] = {}
        names = [i.name for i in body.input]
        if len(names) != (4 if masked else 3):
            self.fail(node, "the Scan body must take (h, c, pre_t[, m_t])")
        for n_, k in zip(names, ("h", "c", "pre", "m")):
            env[n_] = ("var", k)

        def val(name):
            if name in env:
                return env[name]
            outer = self.env.get(name)
            if outer is not None and outer.kind == "const":
                return ("const", outer.value)
            self.fail(
                node, f"the Scan body reads {name!r}, which is neither a body value nor a constant"
            )

        def off(what):
            self.fail(node, f"the Scan body's {what} is not part of the LSTM step export writes")

        get = self.onnx.helper.get_attribute_value
        Rt = Whr = None
        found: dict[str, Any] = {}
        scaled: dict[str, tuple[np.ndarray, tuple]] = {}  # ("scaled", name): (constant, operand)
        c_used: set[int] = set()  # stages of c that the output gate and h read
        produced: set[tuple] = set()  # each tag names one value: a second is a different step
        sources: dict[str, tuple] = {}  # what the gates' sum, each gate's activation and h's
        # tanh read: the variants' values, not the plain ones beside them
        for bn in body.node:
            if not bn.input or not bn.output:
                off(f"{bn.op_type} node")
            args = [val(i) for i in bn.input]
            keys = [("const",) if x[0] == "const" else x for x in args]  # hashable
            op = bn.op_type
            attrs = {x.name: get(x) for x in bn.attribute}
            out: tuple | None = None
            if op == "MatMul" and keys == [("var", "h"), ("const",)] and Rt is None:
                out, Rt = ("rec",), args[1][1]
            elif op == "MatMul" and keys == [("h", 0), ("const",)]:
                out, Whr = ("h", 1), args[1][1]
            elif op == "LayerNormalization" and len(keys) == 3 and keys[1:] == [("const",)] * 2:
                part = {("rec",): "ln_hh", ("c", 0): "ln_c", ("c", 1): "ln_c"}.get(keys[0])
                if part is None or part in found:
                    off("LayerNormalization")
                if int(attrs.get("axis", -1)) != -1 or not np.isclose(
                    float(attrs.get("epsilon", 1e-5)), 1e-5, rtol=1e-3
                ):
                    self.fail(
                        node,
                        "the Scan body's LayerNormalization must normalise the last axis "
                        f"with epsilon 1e-5 (eigenlstm's), got {attrs}",
                    )
                found[part] = (args[1][1], args[2][1])
                if part == "ln_c":
                    c_used.add(keys[0][1])
                out = ("rec_ln",) if part == "ln_hh" else ("c_ln",)
            elif op == "Add" and len(keys) == 2 and ("var", "pre") in keys:
                rec = keys[1] if keys[0] == ("var", "pre") else keys[0]
                if rec not in (("rec",), ("rec_ln",)):
                    off("Add")
                sources["gates"] = rec
                out = ("gates",)
            elif op == "Split" and keys[0] == ("gates",) and Rt is not None:
                NG = len(bn.output)
                sizes = attrs.get("split")
                if sizes is None and len(args) > 1:
                    sizes = [int(v) for v in args[1][1]] if keys[1] == ("const",) else None
                H = Rt.shape[1] // max(NG, 1)
                if (
                    int(attrs.get("axis", 0)) not in (1, -1)
                    or NG not in (3, 4)
                    or Rt.shape[1] != NG * H
                    or (sizes is not None and list(sizes) != [H] * NG)
                ):
                    self.fail(
                        node,
                        "the Scan body must split the gates in four blocks (i, f, g, o), or "
                        "three (i, g, o), of equal size on the last axis",
                    )
                if ("gate", 0) in produced:
                    off("second Split")
                found["cifg"] = NG == 3
                for k, o in zip((0, 2, 3) if NG == 3 else (0, 1, 2, 3), bn.output):
                    env[o] = ("gate", k)
                    produced.add(("gate", k))
                continue
            elif op == "Mul" and len(keys) == 2 and ("const",) in keys:
                const, other = (
                    (args[0][1], keys[1]) if keys[0] == ("const",) else (args[1][1], keys[0])
                )
                if other[0] not in ("var", "c", "h") or other == ("var", "pre"):
                    off("Mul by a constant")
                scaled[bn.output[0]] = (np.asarray(const), other)
                out = ("scaled", bn.output[0])
            elif op == "Add" and len(keys) == 2 and {k[0] for k in keys} >= {"scaled"}:
                out = self._match_scaled_add(node, keys, scaled, found, c_used)
            elif op in ("Sigmoid", "Tanh") and keys[0][0] in ("gate", "gate_peep"):
                sources[f"gate{keys[0][1]}"] = keys[0]
                out = (op, keys[0][1])
            elif (
                op == "Sub"
                and keys == [("const",), ("Sigmoid", 0)]
                and found.get("cifg")
                and np.all(args[0][1] == 1)
            ):
                out = ("Sigmoid", 1)  # f = 1 - i
            elif op == "Mul" and set(keys) == {("Sigmoid", 1), ("var", "c")}:
                out = ("fc",)
            elif op == "Mul" and set(keys) == {("Sigmoid", 0), ("Tanh", 2)}:
                out = ("ig",)
            elif op == "Add" and set(keys) == {("fc",), ("ig",)}:
                out = ("c", 0)
            elif op == "Clip" and len(keys) == 3 and keys[1:] == [("const",)] * 2:
                if np.ndim(args[1][1]) or np.ndim(args[2][1]):
                    off("Clip")
                lo, hi = _option_value(args[1][1]), _option_value(args[2][1])
                name = {("c", 0): "cell_clip", ("h", 1): "proj_clip"}.get(keys[0])
                if name is None or not (lo == -hi and hi > 0):
                    off("Clip")
                found[name] = hi
                out = ("c", 1) if name == "cell_clip" else ("h", 2)
            elif op == "Tanh" and keys[0] in (("c", 0), ("c", 1), ("c_ln",)):
                if keys[0][0] == "c":
                    c_used.add(keys[0][1])
                sources["tanh_c"] = keys[0]
                out = ("tanh_c",)
            elif op == "Mul" and set(keys) == {("Sigmoid", 3), ("tanh_c",)}:
                out = ("h", 0)
            elif op == "Where" and masked and keys[0] == ("var", "m") and len(keys) == 3:
                if keys[1][0] == "h" and keys[2] == ("var", "h"):
                    out = ("h_out", keys[1][1])
                elif keys[1][0] == "c" and keys[2] == ("var", "c"):
                    out = ("c_out", keys[1][1])
                elif keys[1][0] == "h" and keys[2] == ("const",) and not np.any(args[2][1]):
                    out = ("y_out", keys[1][1])
            elif op == "Identity" and not masked and keys[0][0] in ("h", "c"):
                out = keys[0]
            if out is None:
                off(f"{op} node")
            if op != "Identity":  # an output's alias is the one value it names
                if out in produced:
                    off(f"{op} node (it computes a value of the step a second time)")
                produced.add(out)
            env[bn.output[0]] = out
        # every consumer of the new c read it after the clip (if any), before zoneout; the
        # gates' sum, each gate and h's tanh read the layer norm's and peepholes' values
        peep = {0: "w_ci", 1: "w_cf", 3: "w_co"}
        if (
            Rt is None
            or c_used != {1 if "cell_clip" in found else 0}
            or sources.get("gates") != (("rec_ln",) if "ln_hh" in found else ("rec",))
            or (sources.get("tanh_c") == ("c_ln",)) != ("ln_c" in found)
            or any(
                (sources.get(f"gate{k}", ("gate",))[0] == "gate_peep") != (name in found)
                for k, name in peep.items()
            )
        ):
            self.fail(node, "the Scan body's cell is not the LSTM step export writes")
        h_pre = 2 if "proj_clip" in found else int(Whr is not None)  # h before zoneout
        c_pre = int("cell_clip" in found)
        if found.pop("_zoneout_h_of", h_pre) != h_pre or found.pop("_zoneout_c_of", c_pre) != c_pre:
            self.fail(node, "the Scan body's zoneout must mix in the finished new state")
        h_last = 3 if "zoneout_h" in found else h_pre
        c_last = 2 if "zoneout_c" in found else c_pre
        want = (
            [("h_out", h_last), ("c_out", c_last), ("y_out", h_last)]
            if masked
            else [("h", h_last), ("c", c_last), ("h", h_last)]
        )
        got = [env.get(o.name) for o in body.output]
        if got != want:
            self.fail(
                node, "the Scan body's outputs must be the new h, the new c and the step output"
            )
        return Rt, Whr, found

    def _match_scaled_add(self, node, keys, scaled, found, c_used):
        """The tag of an Add of a product with a constant (``_match_body``): a peephole term
        (a gate plus w * c, w of shape (H,)) or zoneout's expectation (z * previous + (1 - z)
        * new, z a scalar)."""
        a, b_ = keys
        if a[0] != "scaled":
            a, b_ = b_, a
        const, operand = scaled[a[1]]
        if b_[0] == "gate" and const.ndim == 1 and const.shape[0] > 0:
            wanted = {0: ("var", "c"), 1: ("var", "c"), 3: ("c",)}.get(b_[1])
            name = {0: "w_ci", 1: "w_cf", 3: "w_co"}.get(b_[1])
            if wanted is None or operand[: len(wanted)] != wanted or name in found:
                self.fail(node, "the Scan body's peephole term is not the one export writes")
            if operand[0] == "c":
                c_used.add(operand[1])
            found[name] = const
            return ("gate_peep", b_[1])
        if b_[0] == "scaled" and const.ndim == 0 and np.ndim(scaled[b_[1]][0]) == 0:
            const2, operand2 = scaled[b_[1]]
            for (z, prev), (keep, new) in (
                ((const, operand), (const2, operand2)),
                ((const2, operand2), (const, operand)),
            ):
                for state in ("c", "h"):
                    if (
                        prev == ("var", state)
                        and new[0] == state
                        and np.ndim(keep) == 0
                        and 0 <= float(z) <= 1
                        # z and 1 - z, each rounded to the graph's dtype
                        and abs(float(z) + float(keep) - 1) <= 2 * np.finfo(np.asarray(z).dtype).eps
                        and f"zoneout_{state}" not in found
                    ):
                        found[f"zoneout_{state}"] = _option_value(z)
                        found[f"_zoneout_{state}_of"] = new[1]  # the stage it mixes in
                        return (state, 2 if state == "c" else 3)
        self.fail(node, "the Scan body's Add of a scaled value is not part of the LSTM step")

    def _layer_of_halves(self, node, halves):
        h0 = halves[0]
        for h in halves:
            if (h.H, h.P, h.seq, h.src is h0.src, h.has_bias, h.options) != (
                h0.H,
                h0.P,
                h0.seq,
                True,
                h0.has_bias,
                h0.options,
            ):
                self.fail(
                    node,
                    "the two directions of a Scan layer must match in sizes, input, lengths "
                    "and cell variants",
                )
            if (h.init[0] is None) != (h0.init[0] is None):
                self.fail(
                    node, "the two directions must both start from zeros or both from graph inputs"
                )
        init = (
            None
            if h0.init[0] is None
            else [(h.init[0], h.init[1], d) for d, h in enumerate(halves)]
        )
        layer = _Layer(
            h0.node,
            len(halves),
            h0.H,
            h0.P,
            [h.weights for h in halves],
            h0.src,
            h0.seq,
            init,
            h0.has_bias,
            H_out=h0.P or h0.H,
            layout=0,
            reverse=len(halves) == 1 and h0.d == 1,  # a reverse Scan without its partner
            options=h0.options,
        )
        return layer

    def _single(self, node, half):
        key = id(half)
        if key not in self.halves:
            self.halves[key] = self._layer_of_halves(node, [half])
        return self.halves[key]

    def _pair(self, node, y0, y1):
        if y0.flipped or y1.flipped:
            self.fail(node, "a reverse Scan's output must be flipped back to time order")
        return self._pair_halves(node, y0.half, y1.half)

    def _pair_halves(self, node, h0, h1):
        if (h0.d, h1.d) != (0, 1):
            self.fail(
                node,
                "a bidirectional Scan layer must concatenate the forward then the "
                "reverse direction",
            )
        key = (id(h0), id(h1))
        if key not in self.pairs:
            self.pairs[key] = self._layer_of_halves(node, [h0, h1])
        return self.pairs[key]

    def as_seq(self, node, v):
        if v.kind == "scan_y":
            if v.flipped:
                self.fail(node, "a reverse Scan's output must be flipped back to time order")
            layer = self._single(node, v.half)
            return _V("seq", axes=(self.time_label(node), self.batch_label(), "F"), layer=layer)
        return v

    def _concat_finals(self, node, ins):
        layers, which, k = [], None, 0
        while k < len(ins):
            v = ins[k]
            if v.kind == "final_half":
                if (
                    v.half.d == 0
                    and k + 1 < len(ins)
                    and ins[k + 1].kind == "final_half"
                    and ins[k + 1].half.d == 1
                ):
                    layers.append(self._pair_halves(node, v.half, ins[k + 1].half))
                    k += 2
                else:
                    layers.append(self._single(node, v.half))
                    k += 1
                kind_which = v.which
            else:
                if v.axes[0] != "D":
                    self.fail(node, "final states must be concatenated on the direction axis")
                layers.extend(v.layers)
                kind_which = v.which
                k += 1
            if which not in (None, kind_which):
                self.fail(node, "h and c final states must not be mixed")
            which = kind_which
        return _V("final", which=which, layers=tuple(layers), axes=("D", self.batch_label(), "H"))


# Ops folded on constants (weights that an exporter left as Slice/Concat/Transpose of others).
_FOLDABLE = {
    "Identity",
    "Cast",
    "Transpose",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Slice",
    "Gather",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Split",
    "Range",
    "ConstantOfShape",
    "Expand",
    "Shape",
}

_MIN_LOAD_OPSET = 7


def _chain(out_layer: _Layer) -> list[_Layer]:
    """The layers that feed ``out_layer``, first to last."""
    layers = [out_layer]
    src_layer = out_layer.src.layer
    while src_layer is not None:
        layers.append(src_layer)
        src_layer = src_layer.src.layer
    return layers[::-1]


def _head_parts(v: _V) -> tuple[_V, np.ndarray, np.ndarray | None]:
    """(the last step it reads, weight (O, F), bias (O,) or None) of a "head" value."""
    if v.last is None or v.weight is None:  # op_Gemm, op_MatMul and op_Add set both
        raise _LoadError(f"eigenlstm.onnx.load: the head {v!r} lacks its input or its weight")
    return v.last, v.weight, v.bias


def _assemble(interp: _Interpreter, outputs: list[_V]) -> LSTM | LSTMModel:
    where = "eigenlstm.onnx.load"
    seqs = [v for v in outputs if v.kind in ("seq", "scan_y")]
    heads = [v for v in outputs if v.kind == "head"]
    if heads:
        if len(outputs) != 1:
            raise _LoadError(
                f"{where}: a graph with a head must have one output (N, O), got {len(outputs)}"
            )
        last_layer = _head_parts(heads[0])[0].layer
    elif seqs:
        seq = seqs[0] if seqs[0].kind == "seq" else interp.as_seq(interp.graph.node[-1], seqs[0])
        last_layer = seq.layer
    else:
        raise _LoadError(
            f"{where}: the graph's outputs must include the last layer's output "
            f"sequence or a head on its last step, got {[v.kind for v in outputs]}"
        )
    if last_layer is None:
        raise _LoadError(f"{where}: the graph's output is its input: there is no LSTM layer")
    layers = _chain(last_layer)
    first = layers[0]
    for k, layer in enumerate(layers):
        what = f"layer {k} ({layer.where.name or layer.where.op_type})"
        for attr in ("D", "H", "P"):
            if getattr(layer, attr) != getattr(first, attr):
                raise _LoadError(
                    f"{where}: {what} has {attr}={getattr(layer, attr)}, layer 0 has "
                    f"{getattr(first, attr)}: an eigenlstm LSTM has one size for all layers"
                )
        if layer.reverse != first.reverse:
            raise _LoadError(
                f"{where}: {what} runs {'backwards' if layer.reverse else 'forwards'} in time "
                f"and layer 0 {'backwards' if first.reverse else 'forwards'}: an eigenlstm LSTM "
                "runs all its layers in one direction"
            )
        if (layer.seq is None) != (first.seq is None):
            raise _LoadError(f"{where}: {what} and layer 0 disagree on using the lengths input")
        mine, theirs = _layer_options(layer), _layer_options(first)
        for key in mine:
            if key != "peepholes" and mine[key] != theirs[key]:
                raise _LoadError(
                    f"{where}: {what} has {key}={mine[key]!r}, layer 0 has "
                    f"{key}={theirs[key]!r}: an eigenlstm LSTM has one cell for all layers"
                )
        if (layer.init is None) != (first.init is None):
            raise _LoadError(f"{where}: {what} and layer 0 disagree on starting from zeros")
        if k and layer.src.axes != (interp.time_axis, interp.batch_label(), "F"):
            raise _LoadError(
                f"{where}: {what} must read the previous layer's (T, N, features) output"
            )
        if layer.init is not None:
            for h, c, d in layer.init:
                row = k * layer.D + d
                for v, name in ((h, "initial_h"), (c, "initial_c")):
                    lo = v.lo if v.squeezed else v.lo + d
                    if lo != row:
                        raise _LoadError(
                            f"{where}: {what}'s {name} must be row {row} of a "
                            f"(D*L, N, H) graph input, got row {lo}"
                        )
    D, H, P, L = first.D, first.H, first.P, len(layers)
    batch_first = interp.time_axis == "a1"
    dtype = np.dtype(first.weights[0]["weight_ih"].dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise _LoadError(f"{where}: weights must be float32 or float64, got {dtype}")
    bias = any(layer.has_bias for layer in layers)
    # peepholes in any layer make a peephole LSTM; a layer without them has zero weights
    variants = _layer_options(first)
    variants["peepholes"] = any("weight_peephole" in w for layer in layers for w in layer.weights)
    G = (3 if variants["cifg"] else 4) * H
    state = {}
    for l, layer in enumerate(layers):
        for d, w in enumerate(layer.weights):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            state.update({k + sfx: v for k, v in w.items()})
            if bias:
                state.setdefault("bias_ih" + sfx, np.zeros(G, dtype))
                state.setdefault("bias_hh" + sfx, np.zeros(G, dtype))
            if variants["peepholes"]:
                state.setdefault("weight_peephole" + sfx, np.zeros((3, H), dtype))
    I = state["weight_ih_l0"].shape[1]
    if heads:
        head_last, head_weight, head_bias = _head_parts(heads[0])
        if P:
            raise _LoadError(
                f"{where}: a head after a projected LSTM (proj_size={P}) is not an "
                "LSTMModel, which has no projection"
            )
        if first.init is not None:
            raise _LoadError(
                f"{where}: a model with a head must start from zero states, got "
                "initial states from graph inputs"
            )
        if first.reverse:
            raise _LoadError(
                f"{where}: a model with a head reads the last step of a forward LSTM; this "
                "one runs in reverse (load the LSTM alone, without the head)"
            )
        if not batch_first:
            raise _LoadError(f"{where}: a model with a head must take batch-first (N, T, I) input")
        if head_last.by_lengths != (first.seq is not None):
            raise _LoadError(
                f"{where}: the head must read step lengths - 1 exactly when the LSTM "
                "layers use the lengths input"
            )
        O = head_weight.shape[0]
        variants.pop("proj_clip")  # None: an LSTMModel has no projection
        model = LSTMModel(I, H, O, L, bidirectional=D == 2, dtype=dtype, seed=0, **variants)
        sd = {f"lstm.{k}": v for k, v in state.items()}
        if not bias:
            for key in list(model.lstm.state_dict()):
                if key.startswith("bias"):
                    sd["lstm." + key] = np.zeros(G, dtype)
        sd["fc.weight"] = head_weight
        sd["fc.bias"] = head_bias if head_bias is not None else np.zeros(O, dtype)
        model.load_state_dict(sd)
        model.eval()
        return model
    lstm = LSTM(
        I,
        H,
        L,
        bias=bias,
        batch_first=batch_first,
        bidirectional=D == 2,
        proj_size=P,
        reverse=first.reverse,
        dtype=dtype,
        seed=0,
        **variants,
    )
    out_axes = ("a0", "a1", "F")
    for v in outputs:
        if v.kind == "scan_y":
            v = interp.as_seq(interp.graph.node[-1], v)
        if v.kind == "seq":
            if v.layer is not last_layer or v.axes != out_axes:
                raise _LoadError(
                    f"{where}: an output sequence must be the last layer's, in the input's layout"
                )
        elif v.kind in ("final", "final_half"):
            # Layout 1 keeps states batch-first, (N, D*L, H); the module returns torch's layout.
            d_axis = 1 if first.layout == 1 else 0
            if v.kind == "final_half" or v.layers != tuple(layers) or v.axes[d_axis] != "D":
                raise _LoadError(
                    f"{where}: a state output must be all layers' final states, "
                    "(D*L, N, H), as torch's h_n and c_n"
                )
        else:
            raise _LoadError(
                f"{where}: a graph output holds a {v.kind} value, which an eigenlstm "
                "LSTM does not return"
            )
    lstm.load_state_dict(state)
    lstm.eval()
    return lstm


def load(f: str | os.PathLike[str] | bytes | bytearray | BinaryIO) -> LSTM | LSTMModel:
    """Read an ONNX model of chained LSTM layers into an eigenlstm ``LSTM`` or ``LSTMModel``.

    Parameters
    ----------
    f : str, os.PathLike, bytes or binary file object
        The serialized ModelProto.

    Returns
    -------
    LSTM or LSTMModel
        In eval mode. An ``LSTM`` when the graph outputs the last layer's sequence (and
        optionally all layers' final states, as ``h_n``/``c_n``); an ``LSTMModel`` when the last
        layer's last step (``out[:, -1, :]``, or step ``lengths - 1``) feeds a Gemm or MatMul+Add
        head and the graph's only output is that head's.

    Notes
    -----
    Read: ONNX ``LSTM`` nodes (opset 7 and newer; the op last changed in opset 22) with
    every direction (``reverse`` in all layers is an ``LSTM(reverse=True)``), ``B``, ``sequence_lens`` (from a 1-D integer graph
    input), ``initial_h``/``initial_c`` (zeros, or rows of 3-D graph inputs in torch's
    (D*L, N, H) order), peepholes ``P`` (an ``LSTM(peepholes=True)``; an all-zero ``P`` is
    none), ``input_forget=1`` (``cifg=True``; the forget gate's weights, which the operator
    ignores then, are dropped), ``layout`` 0 and 1; the glue exporters put around
    them (Transpose, Squeeze, Reshape, Slice, Concat, and Shape/Gather/ConstantOfShape
    building zero states); constant subgraphs of weights are folded.
    A layout-1 graph keeps its states batch-first, (N, D, H); the loaded module takes and
    returns torch's (D, N, H).
    The Scan layers that ``export`` writes (projection and the cell variants the LSTM operator
    lacks: clips, zoneout's evaluation expectation, layer norm) are read back too, by their
    exact pattern; an exported LSTM loads back with its options and weights (a Scan layer's
    two biases as one sum, in ``bias_ih``). The loaded
    module's ``forward(x, state=(h0, c0), lengths=...)`` takes the graph's inputs in that order.

    Refused with ``ValueError`` naming the node and the op or attribute: non-default
    ``activations``, ``clip``, layers of different sizes, directions or ``input_forget``, a
    head after reverse layers, and any op outside the pattern.

    Raises
    ------
    ValueError
        On a graph outside the pattern (nothing else happens: no module is returned).
    ImportError
        If the onnx package is missing.
    """
    where = "eigenlstm.onnx.load"
    onnx = _import_onnx(where)
    if isinstance(f, (bytes, bytearray)):
        model = onnx.load_model_from_string(bytes(f))
    elif hasattr(f, "read"):
        model = onnx.load_model_from_string(f.read())
    else:
        model = onnx.load_model(os.fspath(f))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not _MIN_LOAD_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(
            f"{where}: the default-domain opset must be in [{_MIN_LOAD_OPSET}, "
            f"{onnx.defs.onnx_opset_version()}], got {opset}"
        )
    interp = _Interpreter(onnx, model, opset)
    outputs = interp.run()
    return _assemble(interp, outputs)
