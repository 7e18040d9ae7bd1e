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

import io
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from .linear import Linear
from .lstm import LSTM
from .model import LSTMModel

__all__ = ["export", "load"]

# Row-block permutations between torch's gate order (i, f, g, o) and ONNX's (i, o, f, c).
_TORCH_TO_ONNX = (0, 3, 1, 2)
_ONNX_TO_TORCH = (0, 2, 3, 1)

#: Opset written when ``opset`` is None: ONNX Runtime and every maintained converter read it.
DEFAULT_OPSET = 17
#: Oldest opset ``export`` writes: it uses Squeeze/Unsqueeze with axes as an input (opset 13).
MIN_EXPORT_OPSET = 13


def _import_onnx(where: str):
    try:
        import onnx  # absolute import: the top-level onnx package, not this module
    except ImportError:
        raise ImportError(f"{where} needs the onnx package: pip install 'eigenlstm[onnx]'") from None
    return onnx


def _gate_blocks(w: np.ndarray, order) -> np.ndarray:
    """Reorder the four equal row blocks (gates) of ``w`` (shape (4H, ...) or (4H,))."""
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
            self.helper.make_node(op_type, list(inputs), outs, **attrs))
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


def _lstm_op_layer(b: _Builder, sd, l: int, lstm: LSTM, x: str, seq: Optional[str], h0, c0):
    """One layer as the ONNX LSTM operator; returns (y (T, N, D*H), h_n (D, N, H), c_n)."""
    D, H = lstm.num_directions, lstm.hidden_size
    sfx = ["", "_reverse"][:D]
    W = np.stack([_gate_blocks(sd[f"weight_ih_l{l}{s}"], _TORCH_TO_ONNX) for s in sfx])
    R = np.stack([_gate_blocks(sd[f"weight_hh_l{l}{s}"], _TORCH_TO_ONNX) for s in sfx])
    inputs = [x, b.const(W, f"W_l{l}"), b.const(R, f"R_l{l}")]
    if lstm.bias:  # B = [Wb; Rb]: ONNX adds both halves, as torch adds b_ih and b_hh
        B = np.stack([np.concatenate([_gate_blocks(sd[f"bias_ih_l{l}{s}"], _TORCH_TO_ONNX),
                                      _gate_blocks(sd[f"bias_hh_l{l}{s}"], _TORCH_TO_ONNX)])
                      for s in sfx])
        inputs.append(b.const(B, f"B_l{l}"))
    else:
        inputs.append("")
    inputs.append(seq or "")
    if h0 is not None:  # rows l*D .. l*D+D-1 of torch's (D*L, N, H) states belong to layer l
        rows = (b.ints([l * D]), b.ints([(l + 1) * D]), b.ints([0]))
        inputs += [b.op("Slice", (h0,) + rows), b.op("Slice", (c0,) + rows)]
    y, y_h, y_c = b.op("LSTM", inputs, n_out=3, hidden_size=H,
                       direction="bidirectional" if D == 2 else "forward")
    # Y is (T, D, N, H); the next layer and torch's output want (T, N, D*H).
    if D == 1:
        y = b.op("Squeeze", [y, b.ints([1])])
    else:
        y = b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])])
    return y, y_h, y_c


def _scan_body(b: _Builder, H: int, P: int, Rt: str, Whr: str, masked: bool):
    """The step of a projected LSTM as a Scan body: (h, c, pre_t[, m_t]) -> (h, c, y_t).

    pre_t = x_t W_ih^T + b_ih + b_hh is computed for all steps before the loop (one MatMul);
    the body adds the recurrent term and applies the cell, in torch's gate order i, f, g, o:
        gates = pre_t + h W_hh^T;  i, f, g, o = split(gates)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = (sigmoid(o) * tanh(c')) W_hr^T
    With lengths, m_t = (t < length) per row: a row past its length keeps its state and
    outputs zeros, which is what pack_padded_sequence gives (and the reverse direction, read
    from the end, then starts at the last valid step).
    """
    helper, elem = b.helper, b.elem
    nodes: list = []
    inputs = [helper.make_tensor_value_info("h_prev", elem, None),
              helper.make_tensor_value_info("c_prev", elem, None),
              helper.make_tensor_value_info("pre_t", elem, None)]
    if masked:
        inputs.append(helper.make_tensor_value_info("m_t", b.onnx.TensorProto.BOOL, None))
    gates = b.op("Add", ["pre_t", b.op("MatMul", ["h_prev", Rt], nodes=nodes)], nodes=nodes)
    split = b.ints([H, H, H, H], "split")
    gi, gf, gg, go = b.op("Split", [gates, split], n_out=4, nodes=nodes, axis=1)
    i = b.op("Sigmoid", [gi], nodes=nodes)
    f = b.op("Sigmoid", [gf], nodes=nodes)
    g = b.op("Tanh", [gg], nodes=nodes)
    o = b.op("Sigmoid", [go], nodes=nodes)
    c_new = b.op("Add", [b.op("Mul", [f, "c_prev"], nodes=nodes), b.op("Mul", [i, g], nodes=nodes)],
                 nodes=nodes)
    h_new = b.op("MatMul", [b.op("Mul", [o, b.op("Tanh", [c_new], nodes=nodes)], nodes=nodes), Whr],
                 nodes=nodes)
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
    return b.op("Slice", [v, b.ints([-1]), b.ints([np.iinfo(np.int64).min]), b.ints([0]), b.ints([-1])])


def _scan_layer(b: _Builder, sd, l: int, lstm: LSTM, x: str, mask: Optional[str], h0, c0, batch):
    """One projected layer as one Scan per direction; returns (y (T, N, D*P), h_n, c_n)."""
    D, H, P = lstm.num_directions, lstm.hidden_size, lstm.proj_size
    ys, hs, cs = [], [], []
    for d, s in enumerate(["", "_reverse"][:D]):
        pre = b.op("MatMul", [x, b.const(sd[f"weight_ih_l{l}{s}"].T, f"Wt_l{l}{s}")])
        if lstm.bias:
            pre = b.op("Add", [pre, b.const(sd[f"bias_ih_l{l}{s}"] + sd[f"bias_hh_l{l}{s}"], f"b_l{l}{s}")])
        if h0 is not None:
            row = l * D + d
            rows = (b.ints([row]), b.ints([row + 1]), b.ints([0]))
            h_init = b.op("Squeeze", [b.op("Slice", (h0,) + rows), b.ints([0])])
            c_init = b.op("Squeeze", [b.op("Slice", (c0,) + rows), b.ints([0])])
        else:
            zero = b.onnx.numpy_helper.from_array(np.zeros(1, b.dtype))
            h_init = b.op("ConstantOfShape", [b.op("Concat", [batch, b.ints([P])], axis=0)], value=zero)
            c_init = b.op("ConstantOfShape", [b.op("Concat", [batch, b.ints([H])], axis=0)], value=zero)
        body = _scan_body(b, H, P, b.const(sd[f"weight_hh_l{l}{s}"].T, f"Rt_l{l}{s}"),
                          b.const(sd[f"weight_hr_l{l}{s}"].T, f"Whr_l{l}{s}"), mask is not None)
        scans = [pre] + ([mask] if mask is not None else [])
        # Reverse direction: flip time before the loop and flip y back after it, so that y
        # lines up with the forward direction's. (Scan's own scan_input_directions would do
        # the same, but onnx.reference does not implement it, and it is the float64 oracle.)
        if d:
            scans = [_flip_time(b, v) for v in scans]
        h_n, c_n, y = b.op("Scan", [h_init, c_init] + scans, n_out=3, body=body,
                           num_scan_inputs=len(scans))
        if d:
            y = _flip_time(b, y)
        ys.append(y)
        hs.append(b.op("Unsqueeze", [h_n, b.ints([0])]))
        cs.append(b.op("Unsqueeze", [c_n, b.ints([0])]))
    if D == 1:
        return ys[0], hs[0], cs[0]
    return b.op("Concat", ys, axis=2), b.op("Concat", hs, axis=0), b.op("Concat", cs, axis=0)


def export(module, f, *, initial_state: bool = False, lengths: bool = False,
           opset: Optional[int] = None) -> None:
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
        sequence, as the ``lengths=`` argument of ``forward``.
    opset : int, optional, keyword-only
        ONNX opset of the default domain, in [13, newest known to the onnx package];
        default 17.

    Notes
    -----
    An ``LSTM`` graph maps ``"input"`` ((T, N, I), or (N, T, I) if batch_first) to ``"output"``,
    ``"h_n"``, ``"c_n"`` with torch's shapes; an ``LSTMModel`` graph maps ``"input"`` (N, T, I)
    to ``"output"`` (N, O). Batch and time are dynamic.

    Layers without projection are ONNX ``LSTM`` nodes (layout 0: ONNX Runtime implements no
    other), with ``Transpose``/``Squeeze``/``Reshape`` glue. ONNX's LSTM has no projection, so
    layers with ``proj_size > 0`` are a ``Scan`` over time of MatMul/Sigmoid/Tanh ops, one per
    direction (see ``_scan_body``). ONNX Runtime's LSTM kernel is float32 only; float64
    graphs are valid ONNX and run in ``onnx.reference.ReferenceEvaluator``.

    Raises
    ------
    TypeError
        If ``module`` is not an LSTM or LSTMModel, or ``opset`` is not an int.
    ValueError
        If ``opset`` is out of range, or ``initial_state=True`` for an LSTMModel.
    ImportError
        If the onnx package is missing.

    Examples
    --------
    >>> import io, eigenlstm as el, eigenlstm.onnx
    >>> buf = io.BytesIO()
    >>> el.onnx.export(el.LSTMModel(3, 8, 1, seed=0), buf)
    >>> len(buf.getvalue()) > 0
    True
    """
    where = "eigenlstm.onnx.export"
    if isinstance(module, LSTMModel):
        lstm, fc = module.lstm, module.fc
        if initial_state:
            raise ValueError(f"{where}: initial_state must be False for an LSTMModel (its graph "
                             "starts from zeros, as its forward does), got True")
    elif isinstance(module, LSTM):
        lstm, fc = module, None
    else:
        raise TypeError(f"{where}: module must be an eigenlstm LSTM or LSTMModel, got {type(module).__name__}")
    onnx = _import_onnx(where)
    opset = _check_opset(where, onnx, opset)
    helper, TP = onnx.helper, onnx.TensorProto
    b = _Builder(onnx, lstm.dtype)
    sd = lstm.state_dict()
    D, L, H, Hout, I = (lstm.num_directions, lstm.num_layers, lstm.hidden_size, lstm.output_size,
                        lstm.input_size)

    x_dims = ["batch", "time", I] if lstm.batch_first else ["time", "batch", I]
    graph_inputs = [helper.make_tensor_value_info("input", b.elem, x_dims)]
    x = b.op("Transpose", ["input"], perm=[1, 0, 2]) if lstm.batch_first else "input"  # (T, N, I)
    h0 = c0 = None
    if initial_state:
        graph_inputs += [helper.make_tensor_value_info("h0", b.elem, [D * L, "batch", Hout]),
                         helper.make_tensor_value_info("c0", b.elem, [D * L, "batch", H])]
        h0, c0 = "h0", "c0"
    seq = mask = None
    if lengths:
        graph_inputs.append(helper.make_tensor_value_info("lengths", TP.INT64, ["batch"]))
        if lstm.proj_size == 0:
            seq = b.op("Cast", ["lengths"], to=TP.INT32)  # ONNX LSTM's sequence_lens is int32
        else:  # mask[t, n, 0] = t < lengths[n], for the Scan body
            T = b.op("Gather", [b.op("Shape", [x]), b.const(0, "zero", np.int64)], axis=0)
            t = b.op("Range", [b.const(0, "zero", np.int64), T, b.const(1, "one", np.int64)])
            less = b.op("Less", [b.op("Unsqueeze", [t, b.ints([1])]),
                                 b.op("Unsqueeze", ["lengths", b.ints([0])])])
            mask = b.op("Unsqueeze", [less, b.ints([2])])
    batch = b.op("Slice", [b.op("Shape", [x]), b.ints([1]), b.ints([2])]) if lstm.proj_size else None

    hs, cs = [], []
    for l in range(L):
        if lstm.proj_size == 0:
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
        out_dims = (["batch", "time", D * Hout] if lstm.batch_first else ["time", "batch", D * Hout])
        graph_outputs = [helper.make_tensor_value_info("output", b.elem, out_dims),
                         helper.make_tensor_value_info("h_n", b.elem, [D * L, "batch", Hout]),
                         helper.make_tensor_value_info("c_n", b.elem, [D * L, "batch", H])]
    else:
        if lengths:  # y[n] = out[n, lengths[n] - 1]: GatherND with one index per batch row
            idx = b.op("Unsqueeze", [b.op("Sub", ["lengths", b.const(1, "one", np.int64)]), b.ints([1])])
            last = b.op("GatherND", [b.op("Transpose", [x], perm=[1, 0, 2]), idx], batch_dims=1)
        else:  # out[:, -1, :] of the batch-first output is step -1 of x (T, N, D*H)
            last = b.op("Gather", [x, b.const(-1, "last", np.int64)], axis=0)
        inputs = [last, b.const(fc.weight, "fc_weight")]
        if fc.bias is not None:
            inputs.append(b.const(fc.bias, "fc_bias"))
        b.op("Gemm", inputs, out=["output"], transB=1)  # y = last W^T + b
        graph_outputs = [helper.make_tensor_value_info("output", b.elem, ["batch", fc.out_features])]

    graph = helper.make_graph(b.nodes, "eigenlstm", graph_inputs, graph_outputs, b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="eigenlstm",
                              ir_version=helper.find_min_ir_version_for(opsets))
    data = model.SerializeToString()
    if hasattr(f, "write"):
        f.write(data)
    else:
        with open(os.fspath(f), "wb") as fh:
            fh.write(data)
