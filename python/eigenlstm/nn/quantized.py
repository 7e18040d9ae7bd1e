"""Reduced-precision inference: ``quantize(module, dtype)`` and the modules it returns.

``QuantizedLSTM``, ``QuantizedLinear`` and ``QuantizedLSTMModel`` have the call, ``stream`` and
``predict`` of ``LSTM``, ``Linear`` and ``LSTMModel``, compute in float32, and store their
weights in int8 or bfloat16; the products run in the engine's reduced-precision kernels
(cpp/src/engine/quantized.hpp). They cannot train: quantize a trained float model.
"""
# Sizes: N batch, T steps, I input size, H hidden size, H_out output size of the LSTM,
# G = 4H gate rows, O outputs of the head.

from __future__ import annotations

import numpy as np

from .. import _core
from .._validation import (
    check_keys,
    check_positive_int,
    check_shape,
    check_variants,
    engine_variants,
)
from .linear import Linear
from .lstm import (
    LSTM,
    check_head,
    check_sizes,
    describe,
    param_names,
    run_forward,
    variant_options,
)
from .model import LSTMModel
from .module import Module
from .stream import Stream

__all__ = [
    "PRECISIONS",
    "refuse_quantized",
    "QuantizedLSTM",
    "QuantizedLinear",
    "QuantizedLSTMModel",
    "quantize",
    "quantize_weight",
    "bfloat16_to_float32",
]

PRECISIONS = ("int8", "bfloat16")
# The storage of a weight tensor in each precision.
_STORAGE = {"int8": np.dtype(np.int8), "bfloat16": np.dtype(np.uint16)}


def _check_precision(where: str, precision, name: str = "precision") -> str:
    if not isinstance(precision, str):
        raise TypeError(
            f"{where}: {name} must be one of {PRECISIONS}, got {type(precision).__name__} "
            f"{precision!r}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: {name} must be one of {PRECISIONS}, got {precision!r}")
    return precision


def quantize_weight(name: str, w, precision: str) -> dict[str, np.ndarray]:
    """A 2-D float weight in ``precision``: ``{name: values}`` plus ``{name + "_scale": scale}``
    for int8.

    int8 is symmetric per output row: ``scale = max|w_row| / 127`` (1 for a zero row) and
    ``values = round(w / scale)`` in [-127, 127], round half to even. bfloat16 keeps the upper
    16 bits of each float32, rounded to nearest even (``values`` holds those bits as uint16).

    Raises
    ------
    ValueError
        If ``w`` holds a NaN or an infinity (it has no int8 value; for bfloat16 the model is
        refused too, as ``save`` refuses it).
    """
    w = np.asarray(w)
    if not np.isfinite(w).all():
        raise ValueError(f"quantize: {name} holds NaN or infinite values; quantize a finite model")
    if precision == "bfloat16":
        bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> 16
        return {name: rounded.astype(np.uint16)}
    w64 = w.astype(np.float64)
    scale = (np.abs(w64).max(axis=1) / 127).astype(np.float32)
    scale[scale == 0] = 1
    q = np.clip(np.rint(w64 / scale[:, None].astype(np.float64)), -127, 127).astype(np.int8)
    return {name: q, name + "_scale": scale}


def inference_variants(lstm) -> dict:
    """The cell variants of ``lstm`` that act in evaluation (its ``variant_options`` without
    the training regularizers ``recurrent_dropout`` and ``weight_drop``).

    Raises
    ------
    ValueError
        For a layer-normalised LSTM: reduced precision has no layer norm kernels.
    """
    if getattr(lstm, "layer_norm", False):
        raise ValueError(
            "quantize: an LSTM with layer_norm=True cannot be quantized (reduced precision "
            "has no layer norm kernels); run it in float32"
        )
    return {
        k: v
        for k, v in variant_options(lstm).items()
        if k not in ("recurrent_dropout", "weight_drop")
    }


def _is_product_weight(name: str) -> bool:
    """Is the tensor ``name`` (``<prefix>weight...``) a matrix that a product multiplies, and
    so stored in reduced precision? Peephole weights scale the cell state elementwise and stay
    float32, as biases do."""
    key = name.rpartition(".")[2]
    return key.startswith("weight") and not key.startswith("weight_peephole")


def _quantized_state(state: dict, precision: str) -> dict[str, np.ndarray]:
    """A float module's state_dict as its quantized twin stores it: each product weight through
    :func:`quantize_weight`, everything else float32."""
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if _is_product_weight(name):
            out.update(quantize_weight(name, value, precision))
        else:
            out[name] = np.asarray(value, dtype=np.float32)
    return out


def refuse_quantized(where: str, module) -> None:
    """A TypeError for a quantized module where only float weights make sense (a file format
    that would store its int8 values as if they were the weights)."""
    if isinstance(module, (QuantizedLSTM, QuantizedLinear, QuantizedLSTMModel)):
        raise TypeError(
            f"{where}: module must hold float weights, got a {module.precision} "
            f"{type(module).__name__}; export the float model (and quantize after loading it)"
        )


def bfloat16_to_float32(bits) -> np.ndarray:
    """Float32 values of bfloat16 bit patterns (uint16): exact."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _inference_only(module, mode) -> None:
    if mode:
        raise RuntimeError(
            f"{type(module).__name__}: {module.precision} modules are inference-only and cannot "
            "train; train the float model and quantize it again"
        )


def _lstm_shapes(I, H, L, bias, bidirectional, P, peepholes, gates) -> dict:
    """el.LSTM's parameter shapes, in state_dict order (``gates`` blocks per unit: 4, or 3
    with cifg)."""
    D, Hout, G = (2 if bidirectional else 1), (P if P > 0 else H), gates * H
    shapes = {}
    for name, kind, layer, _ in param_names(L, bidirectional, P, bias, peepholes):
        shapes[name] = {
            "weight_ih": (G, I if layer == 0 else D * Hout),
            "weight_hh": (G, Hout),
            "bias_ih": (G,),
            "bias_hh": (G,),
            "weight_hr": (P, H),
            "weight_peephole": (3, H),
        }[kind]
    return shapes


def _expected_tensors(shapes: dict, precision: str) -> dict:
    """``{key: (shape, dtype)}`` of a quantized module's state_dict from its float module's
    weight and bias shapes."""
    out = {}
    for name, shape in shapes.items():
        if _is_product_weight(name):
            out[name] = (shape, _STORAGE[precision])
            if precision == "int8":
                out[name + "_scale"] = ((shape[0],), np.dtype(np.float32))
        else:
            out[name] = (shape, np.dtype(np.float32))
    return out


def _checked_tensors(where: str, state: dict, expected: dict, prefix: str) -> dict:
    """``state`` as exactly ``expected`` (keys, shapes, dtypes): real values to float32 (the
    modules' dtype), stored weights only from integers they hold unchanged (an int8 weight from
    any integer array within [-127, 127])."""
    check_keys(where, state, expected, prefix)
    out = {}
    for key, (shape, dtype) in expected.items():
        value = np.asarray(state[key])
        name = prefix + key
        if dtype.kind == "f":
            if value.dtype.kind not in "fiub":
                raise TypeError(f"{where}: {name} must hold real numbers, got dtype {value.dtype}")
            value = value.astype(np.float32)
        else:
            if value.dtype.kind not in "iu":
                raise TypeError(
                    f"{where}: {name} must be an integer array ({dtype.name}), got dtype "
                    f"{value.dtype}"
                )
            lo, hi = (-127, 127) if dtype == np.int8 else (0, 0xFFFF)
            if value.size and (value.min() < lo or value.max() > hi):
                bad = value[(value < lo) | (value > hi)].flat[0]
                raise ValueError(f"{where}: {name} must hold values in [{lo}, {hi}], got {bad}")
            value = value.astype(dtype)
        check_shape(where, name, value, shape)
        out[key] = np.ascontiguousarray(value)
    return out


class _QuantizedModule(Module):
    """What the quantized layers share: no trainable parameters, stored tensors checked and
    loaded all or nothing into a new engine object, and refusals to train."""

    precision: str
    _expected: dict  # {key: (shape, dtype)} of state_dict

    def _init_tensors(self, where: str, shapes: dict) -> None:
        """Expect the stored tensors of a float module with these weight and bias shapes, and
        load zero weights (unit scales)."""
        self._expected = _expected_tensors(shapes, self.precision)
        zeros = {
            key: (np.ones if key.endswith("_scale") else np.zeros)(shape, dtype)
            for key, (shape, dtype) in self._expected.items()
        }
        self._tensors, self._engine = self._build(zeros, where, "")

    def _build(self, tensors: dict, where: str, prefix: str):
        """``(tensors, engine)``: the checked tensors of a state dict and an engine object
        made from them."""
        raise NotImplementedError

    def train(self, mode: bool = True):
        _inference_only(self, mode)
        return self

    def named_parameters(self, prefix: str = ""):
        """Nothing: a quantized module has no trainable parameters."""
        return iter(())

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Empty: no parameters, no gradients."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the stored tensors: weights (int8, or bfloat16 bits as uint16), int8
        scales (``<weight>_scale``, float32) and biases (float32), in torch's key order."""
        return {k: v.copy() for k, v in self._tensors.items()}

    def _prepare_load(self, state: dict, where: str, prefix: str):
        built = self._build(state, where, prefix)

        def commit():
            self._tensors, self._engine = built

        return commit

    def get_extra_state(self) -> dict:
        return {}

    def _prepare_extra_state(self, state: dict, where: str):
        return lambda: None

    def backward(self, *args, **kwargs):
        raise RuntimeError(
            f"{type(self).__name__}.backward: a {self.precision} module is inference-only; "
            "differentiate the float model"
        )


class QuantizedLSTM(_QuantizedModule):
    """An inference-only LSTM with int8 or bfloat16 weights: ``quantize(lstm, dtype)`` makes one.

    The call, ``stream`` and sizes are :class:`~eigenlstm.nn.LSTM`'s; inputs are converted to
    float32 and the outputs are float32.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, bidirectional, proj_size
        As :class:`~eigenlstm.nn.LSTM`'s.
    cifg, peepholes, cell_clip, proj_clip, zoneout : keyword-only
        The cell variants that act in evaluation, as :class:`~eigenlstm.nn.LSTM`'s (zoneout
        mixes the states by its probabilities); peephole weights stay float32. The training
        regularizers (``dropout``, ``recurrent_dropout``, ``weight_drop``) do not apply.
    precision : {"int8", "bfloat16"}, keyword-only
        How the weights are stored and multiplied:

        - ``"int8"``: each weight row symmetric int8 with its own float32 scale; the inputs of
          every product (x, h) quantized per row at run time; int32 sums.
        - ``"bfloat16"``: weights and the inputs of every product rounded to bfloat16; float32
          sums.

        Gates, cell state, nonlinearities and biases are float32 in both.

    Notes
    -----
    Constructed directly, the weights are zero: load them with ``load_state_dict`` (the keys
    are torch's, with int8 scales under ``<weight>_scale``). ``named_parameters()`` yields
    nothing: there is nothing to train, and ``train()`` and ``backward`` raise
    ``RuntimeError``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        cifg: bool = False,
        peepholes: bool = False,
        cell_clip: float | None = None,
        proj_clip: float | None = None,
        zoneout: float | tuple[float, float] = 0.0,
        precision: str,
    ) -> None:
        where = "QuantizedLSTM"
        self.input_size, self.hidden_size, self.num_layers, self.proj_size = check_sizes(
            where, input_size, hidden_size, num_layers, proj_size
        )
        self._variants = check_variants(
            where,
            self.proj_size,
            cifg=cifg,
            peepholes=peepholes,
            cell_clip=cell_clip,
            proj_clip=proj_clip,
            zoneout=zoneout,
        )
        self.cifg: bool = self._variants["cifg"]
        self.peepholes: bool = self._variants["peepholes"]
        self.cell_clip: float | None = self._variants["cell_clip"]
        self.proj_clip: float | None = self._variants["proj_clip"]
        self.recurrent_dropout = self.weight_drop = 0.0  # training only
        self.zoneout: float | tuple[float, float] = self._variants["zoneout"]
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dropout = 0.0
        self.dtype = np.dtype(np.float32)
        self.precision = _check_precision(where, precision)
        self.training = False
        shapes = _lstm_shapes(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.bidirectional,
            self.proj_size,
            self.peepholes,
            3 if self.cifg else 4,
        )
        self._init_tensors(where, shapes)

    num_directions = LSTM.num_directions
    output_size = LSTM.output_size

    def __repr__(self) -> str:
        return describe(self, f"precision={self.precision!r}")

    @classmethod
    def from_float(cls, lstm: LSTM, precision: str) -> QuantizedLSTM:
        """The quantized twin of ``lstm`` (its weights quantized by :func:`quantize_weight`)."""
        if lstm.reverse:
            raise ValueError(
                "quantize: an LSTM with reverse=True has no reduced-precision engine; "
                "quantize a forward or bidirectional LSTM"
            )
        out = cls(
            lstm.input_size,
            lstm.hidden_size,
            lstm.num_layers,
            lstm.bias,
            lstm.batch_first,
            lstm.bidirectional,
            lstm.proj_size,
            **inference_variants(lstm),
            precision=precision,
        )
        out.load_state_dict(_quantized_state(lstm.state_dict(), precision))
        return out

    def _build(self, state: dict, where: str, prefix: str):
        tensors = _checked_tensors(where, state, self._expected, prefix)
        engine = _core.QuantizedEngine(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.bidirectional,
            self.proj_size,
            self.precision,
            tensors,
            **engine_variants(self._variants),
        )
        return tensors, engine

    # ---- compute -----------------------------------------------------------------------------
    def forward(self, x, state=None, *, lengths=None):
        """As :meth:`LSTM.forward <eigenlstm.nn.LSTM.forward>` in evaluation mode, in float32."""
        y, final, _, _, _ = run_forward(
            self, "QuantizedLSTM.forward", x, state, lengths, self._engine.forward
        )
        return y, final

    def stream(self, batch_size: int, *, head=None) -> Stream:
        """As :meth:`LSTM.stream <eigenlstm.nn.LSTM.stream>`; ``head`` a Linear or
        QuantizedLinear with float32 outputs."""
        batch_size = check_head("QuantizedLSTM.stream", self, batch_size, head)
        # the engine of each step: load_state_dict replaces it
        return Stream(self, lambda: self._engine, batch_size, head)


class QuantizedLinear(_QuantizedModule):
    """``y = x W^T + b`` with W in int8 or bfloat16 (see :class:`QuantizedLSTM`), float32 in
    and out: the head of a quantized :class:`QuantizedLSTMModel`.

    Constructed directly, the weights are zero; ``QuantizedLinear.from_float(linear, dtype)``
    quantizes a Linear.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, precision: str
    ) -> None:
        where = "QuantizedLinear"
        self.in_features = check_positive_int(where, "in_features", in_features)
        self.out_features = check_positive_int(where, "out_features", out_features)
        self.dtype = np.dtype(np.float32)
        self.precision = _check_precision(where, precision)
        self.training = False
        shapes: dict[str, tuple[int, ...]] = {"weight": (self.out_features, self.in_features)}
        if bias:
            shapes["bias"] = (self.out_features,)
        self._init_tensors(where, shapes)

    def __repr__(self) -> str:
        return (
            f"QuantizedLinear(in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={'bias' in self._expected}, precision={self.precision!r})"
        )

    @classmethod
    def from_float(cls, linear: Linear, precision: str) -> QuantizedLinear:
        out = cls(
            linear.in_features, linear.out_features, linear.bias is not None, precision=precision
        )
        out.load_state_dict(_quantized_state(linear.state_dict(), precision))
        return out

    @property
    def weight(self) -> np.ndarray:
        """The stored weight (int8 values, or bfloat16 bits as uint16), read-only."""
        w = self._tensors["weight"].view()
        w.flags.writeable = False
        return w

    @property
    def bias(self) -> np.ndarray | None:
        b = self._tensors.get("bias")
        if b is None:
            return None
        b = b.view()
        b.flags.writeable = False
        return b

    def _build(self, state: dict, where: str, prefix: str):
        tensors = _checked_tensors(where, state, self._expected, prefix)
        return tensors, _core.QuantizedLinear(
            self.in_features, self.out_features, self.precision, tensors
        )

    def forward(self, x) -> np.ndarray:
        """``x`` of shape (..., in_features) to (..., out_features), in float32."""
        where = "QuantizedLinear.forward"
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{where}: x must have shape (..., {self.in_features}), got {x.shape}")
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{where}: x must hold real numbers, got dtype {x.dtype}")
        rows = np.ascontiguousarray(x.reshape(-1, self.in_features), dtype=np.float32)
        y = np.empty((rows.shape[0], self.out_features), np.float32)
        self._engine.forward_into(rows, y)
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def forward_into(self, x: np.ndarray, y: np.ndarray) -> None:
        """``y[...] = x W^T + b`` for C-contiguous float32 ``x`` (M, in_features) and ``y``
        (M, out_features): a stream's head, allocating nothing."""
        self._engine.forward_into(x, y)


class QuantizedLSTMModel(LSTMModel):
    """:class:`~eigenlstm.nn.LSTMModel` for inference in int8 or bfloat16: ``lstm`` is a
    :class:`QuantizedLSTM` and ``fc`` a :class:`QuantizedLinear`. ``quantize(model, dtype)``
    makes one; ``forward``, ``predict`` and ``stream`` work as the float model's, in float32.
    ``eigenlstm.save`` and ``eigenlstm.load`` keep it quantized.
    """

    # The float model's layers, replaced by their quantized counterparts (same calls).
    lstm: QuantizedLSTM  # type: ignore[assignment]
    fc: QuantizedLinear  # type: ignore[assignment]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        cifg: bool = False,
        peepholes: bool = False,
        cell_clip: float | None = None,
        zoneout: float | tuple[float, float] = 0.0,
        precision: str,
    ) -> None:
        where = "QuantizedLSTMModel"
        self.input_size = check_positive_int(where, "input_size", input_size)
        self.hidden_size = check_positive_int(where, "hidden_size", hidden_size)
        self.output_size = check_positive_int(where, "output_size", output_size)
        self.num_layers = check_positive_int(where, "num_layers", num_layers)
        self.precision = _check_precision(where, precision)
        self.dtype = np.dtype(np.float32)
        self.training = False
        self.lstm = QuantizedLSTM(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            batch_first=True,
            bidirectional=bool(bidirectional),
            cifg=cifg,
            peepholes=peepholes,
            cell_clip=cell_clip,
            zoneout=zoneout,
            precision=self.precision,
        )
        D = 2 if self.lstm.bidirectional else 1
        self.fc = QuantizedLinear(D * self.hidden_size, self.output_size, precision=self.precision)
        self.metadata: dict = {}
        self.many_to_many = False  # the head reads the last step (quantize refuses others)
        self._last = None

    @classmethod
    def from_float(cls, model: LSTMModel, precision: str) -> QuantizedLSTMModel:
        out = cls(
            model.input_size,
            model.hidden_size,
            model.output_size,
            model.num_layers,
            bidirectional=model.bidirectional,
            **inference_variants(model.lstm),
            precision=precision,
        )
        out.load_state_dict(_quantized_state(model.state_dict(), precision))
        out.metadata = dict(model.metadata)
        return out

    def config(self) -> dict:
        """The constructor arguments, JSON-ready."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "output_size": self.output_size,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            **variant_options(self.lstm),
            "precision": self.precision,
        }

    def __repr__(self) -> str:
        return f"QuantizedLSTMModel(\n  (lstm): {self.lstm!r}\n  (fc): {self.fc!r}\n)"

    def train(self, mode: bool = True) -> QuantizedLSTMModel:
        _inference_only(self, mode)
        return self

    def _forward_last(self, x, lengths):
        out, _ = self.lstm(x, lengths=lengths)
        return self.fc(self._last_step(out, lengths))

    def backward(self, d_y):
        raise RuntimeError(
            f"QuantizedLSTMModel.backward: a {self.precision} model is inference-only; "
            "differentiate the float model"
        )


def quantize(module, dtype: str):
    """An inference-only copy of ``module`` with its weights in ``dtype``.

    Parameters
    ----------
    module : LSTM, Linear or LSTMModel
        A trained float module (float32 or float64), left unchanged.
    dtype : {"int8", "bfloat16"}
        ``"int8"``: symmetric int8 weights per output row, activations quantized per row at
        run time (8 bits for the model's input, 7 for the states), int32 sums.
        ``"bfloat16"``: bfloat16 weights and activations, float32 sums. See
        ``eigenlstm.config()["quantized_kernels"]`` for the kernels this CPU runs.

    Returns
    -------
    QuantizedLSTM, QuantizedLinear or QuantizedLSTMModel
        With the module's call, ``stream`` and ``predict``, in float32.

    Raises
    ------
    TypeError
        If ``module`` is not one of the above, or ``dtype`` is not a string.
    ValueError
        If ``dtype`` is not one of the above, or the module has a weight that is NaN or
        infinite.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> model = el.LSTMModel(8, 32, 2, seed=0)
    >>> q = el.quantize(model, "int8")
    >>> x = np.random.default_rng(0).standard_normal((4, 10, 8))
    >>> bool(np.allclose(q.predict(x), model.eval().predict(x), atol=0.05))
    True
    """
    where = "quantize"
    precision = _check_precision(where, dtype, "dtype")
    if isinstance(module, (QuantizedLSTM, QuantizedLinear, QuantizedLSTMModel)):
        raise TypeError(f"{where}: module is already quantized ({module.precision})")
    if isinstance(module, LSTMModel):
        if module.many_to_many:
            raise ValueError(
                f"{where}: module must be an LSTMModel with its head on the last step (the "
                "quantized model reads the last step), got many_to_many=True; quantize "
                "module.lstm and module.fc separately"
            )
        return QuantizedLSTMModel.from_float(module, precision)
    if isinstance(module, LSTM):
        return QuantizedLSTM.from_float(module, precision)
    if isinstance(module, Linear):
        return QuantizedLinear.from_float(module, precision)
    raise TypeError(
        f"{where}: module must be an LSTM, Linear or LSTMModel, got {type(module).__name__}"
    )
