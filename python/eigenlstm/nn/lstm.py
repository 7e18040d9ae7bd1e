"""``eigenlstm.LSTM``: torch.nn.LSTM's interface over the C++ engine, for NumPy arrays.

This file validates arguments and handles layouts (batch_first, unbatched input); the math,
the caches and the threads live in the engine (cpp/src), reached through ``eigenlstm._core``.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np

from .. import _core
from .._layout import tensor_slice
from .._validation import (
    LAYER_NORM_KINDS,
    VARIANT_DEFAULTS,
    as_real_array,
    check_keys,
    check_lengths,
    check_pair,
    check_positive_int,
    check_seed,
    check_shape,
    check_variants,
    engine_variants,
    resolve_dtype,
)
from .module import Module
from .parameter import Parameter
from .stream import Stream, check_streamable

__all__ = [
    "LSTM",
    "param_names",
    "run_forward",
    "check_head",
    "check_sizes",
    "variant_options",
    "describe",
]

_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_peephole")


def param_names(
    num_layers: int,
    bidirectional: bool,
    proj_size: int,
    bias: bool,
    peepholes: bool = False,
    layer_norm: bool = False,
):
    """Yield ``(key, kind, layer, direction)`` in torch.nn.LSTM's state_dict order, each
    layer's and direction's ``weight_peephole`` (with ``peepholes``) and layer norms (with
    ``layer_norm``) after its torch tensors."""
    kinds = _KINDS + (LAYER_NORM_KINDS if layer_norm else ())
    for layer in range(num_layers):
        for direction in range(2 if bidirectional else 1):
            suffix = "_reverse" if direction else ""
            for kind in kinds:
                if kind.startswith("bias") and not bias:
                    continue
                if kind == "weight_hr" and proj_size == 0:
                    continue
                if kind == "weight_peephole" and not peepholes:
                    continue
                yield f"{kind}_l{layer}{suffix}", kind, layer, direction


def check_sizes(where: str, input_size, hidden_size, num_layers, proj_size) -> tuple:
    """``(input_size, hidden_size, num_layers, proj_size)`` as ints, by torch.nn.LSTM's rules."""
    sizes = (
        check_positive_int(where, "input_size", input_size),
        check_positive_int(where, "hidden_size", hidden_size),
        check_positive_int(where, "num_layers", num_layers),
        check_positive_int(where, "proj_size", proj_size, minimum=0),
    )
    if sizes[3] >= sizes[1]:
        raise ValueError(f"{where}: proj_size must be < hidden_size={sizes[1]}, got {sizes[3]}")
    return sizes


def variant_options(module) -> dict:
    """The cell-variant keywords of an LSTM-like module that differ from their defaults
    (``{}`` for a plain LSTM), as its constructor takes them."""
    return {
        name: getattr(module, name, default)
        for name, default in VARIANT_DEFAULTS.items()
        if getattr(module, name, default) != default
    }


def describe(module, last: str) -> str:
    """``Name(I, H, <options that differ from torch's defaults>, last)`` of an LSTM-like module."""
    extra = "".join(
        f", {k}={v!r}"
        for k, v, default in (
            ("num_layers", module.num_layers, 1),
            ("bias", module.bias, True),
            ("batch_first", module.batch_first, False),
            ("dropout", module.dropout, 0.0),
            ("bidirectional", module.bidirectional, False),
            ("proj_size", module.proj_size, 0),
            ("reverse", getattr(module, "reverse", False), False),
        )
        if v != default
    )
    extra += "".join(f", {k}={v!r}" for k, v in variant_options(module).items())
    return f"{type(module).__name__}({module.input_size}, {module.hidden_size}{extra}, {last})"


def run_forward(module, where: str, x, state, lengths, engine_forward):
    """The argument handling of an LSTM's forward around one engine call.

    ``module`` has an LSTM's sizes (``input_size``, ``hidden_size``, ``output_size``,
    ``num_layers``, ``num_directions``, ``batch_first``, ``dtype``); ``engine_forward(x, h0,
    c0, lengths)`` takes the checked, time-major, C-contiguous arrays (None where absent) and
    returns ``(y, h_n, c_n)``. Returns ``(output, (h_n, c_n), batched, T, N)``.
    """
    x = as_real_array(where, "x", x, module.dtype)
    if x.ndim not in (2, 3):
        raise ValueError(
            f"{where}: x must be 3-D (batched) or 2-D (unbatched), got {x.ndim}-D with shape {x.shape}"
        )
    batched = x.ndim == 3
    if not batched:
        x = x[:, None, :]
    elif module.batch_first:
        x = x.transpose(1, 0, 2)
    T, N, I = x.shape
    if I != module.input_size:
        raise ValueError(f"{where}: x must have {module.input_size} features (input_size), got {I}")
    DL = module.num_directions * module.num_layers
    h0 = c0 = None
    if state is not None:
        check_pair(where, "state", "(h0, c0)", state)
        h_shape = (DL, N, module.output_size) if batched else (DL, module.output_size)
        c_shape = (DL, N, module.hidden_size) if batched else (DL, module.hidden_size)
        h0 = as_real_array(where, "h0", state[0], module.dtype)
        c0 = as_real_array(where, "c0", state[1], module.dtype)
        check_shape(where, "h0", h0, h_shape)
        check_shape(where, "c0", c0, c_shape)
        h0 = np.ascontiguousarray(h0.reshape(DL, N, module.output_size))
        c0 = np.ascontiguousarray(c0.reshape(DL, N, module.hidden_size))
    if lengths is not None:
        if not batched:
            raise ValueError(f"{where}: x must be 3-D (batched) when lengths are given, got 2-D")
        lengths = check_lengths(where, "lengths", lengths, N, T)
    y, h_n, c_n = engine_forward(np.ascontiguousarray(x), h0, c0, lengths)
    if not batched:
        return y[:, 0, :], (h_n[:, 0, :], c_n[:, 0, :]), batched, T, N
    if module.batch_first:
        y = y.transpose(1, 0, 2)
    return y, (h_n, c_n), batched, T, N


def check_head(where: str, module, batch_size, head) -> int:
    """``batch_size`` for a stream of ``module`` (an LSTM), whose ``head``, if any, must take
    its H_out features in its dtype."""
    batch_size = check_streamable(
        where, batch_size, module.bidirectional, getattr(module, "reverse", False)
    )
    if head is not None and (
        getattr(head, "in_features", None) != module.output_size
        or getattr(head, "dtype", None) != module.dtype
    ):
        raise ValueError(
            f"{where}: head must be a Linear({module.output_size}, O) of dtype "
            f"{module.dtype.name}, got {head!r}"
        )
    return batch_size


def _initial_value(name: str, shape: tuple, rng: np.random.Generator, k: float) -> np.ndarray:
    """The initial value of parameter ``name``: a layer norm's gain 1 or shift 0, else a
    draw from U(-k, k)."""
    if name.startswith("layer_norm_"):
        return np.full(shape, 1.0 if "_weight_" in name else 0.0)
    return rng.uniform(-k, k, shape)


class LSTM(Module):
    r"""A multi-layer LSTM with the interface and semantics of ``torch.nn.LSTM``.

    Parameters
    ----------
    input_size : int
        Features of the input, ``I``.
    hidden_size : int
        Features of the cell state, ``H``.
    num_layers : int, default 1
        Stacked layers, ``L``.
    bias : bool, default True
        Whether the layers have the biases ``b_ih`` and ``b_hh``.
    batch_first : bool, default False
        Input and output are ``(N, T, features)`` instead of ``(T, N, features)``.
        States are ``(D*L, N, H_out)`` either way.
    dropout : float, default 0.0
        Dropout probability on the outputs of every layer but the last, in training mode.
    bidirectional : bool, default False
        Add a reverse-time direction (``D = 2``), concatenated on the feature axis.
    proj_size : int, default 0
        If > 0, project the hidden state to ``P = proj_size`` features (``H_out = P``).
    reverse : bool, default False, keyword-only
        Run every layer backwards in time, from each sequence's last valid step to its first
        (ONNX's ``direction="reverse"``; torch has no such LSTM): the layers of a
        bidirectional LSTM's reverse direction alone. The output stays in time order, and
        ``h_n``/``c_n`` are the states after step 0. Parameter names have no ``_reverse``
        suffix. Not with ``bidirectional``; a reverse LSTM cannot stream.
    cifg : bool, default False, keyword-only
        Coupled input-forget gate, ``f = 1 - i`` (TensorFlow's and NNAPI's CIFG LSTM): the
        gate blocks are (i, g, o), so ``weight_ih`` is ``(3H, I)``, ``weight_hh``
        ``(3H, H_out)`` and the biases ``(3H,)``.
    peepholes : bool, default False, keyword-only
        Add peephole connections from the cell state to the gates (ONNX's and TensorFlow's
        LSTM): a parameter ``weight_peephole_l{k}{suffix}`` of shape ``(3, H)``, rows
        ``w_ci, w_cf, w_co`` (with ``cifg``, ``w_cf`` is unused and its gradient zero).
    cell_clip : float, optional, keyword-only
        Clip the cell state to ``[-cell_clip, cell_clip]`` after each update (TensorFlow's
        ``LSTMCell(cell_clip=...)``). None: no clipping.
    proj_clip : float, optional, keyword-only
        Clip the projected hidden state to ``[-proj_clip, proj_clip]``; needs ``proj_size``.
    recurrent_dropout : float, default 0.0, keyword-only
        In training mode, ``h_{t-1}`` entering ``W_hh`` is ``h_{t-1} * m / (1 - p)`` with one
        Bernoulli mask ``m`` per sequence and unit, the same at every step of a call (Gal &
        Ghahramani 2016; Keras's ``recurrent_dropout``). In [0, 1).
    weight_drop : float, default 0.0, keyword-only
        In training mode, ``W_hh`` is ``W_hh * M / (1 - p)`` with one mask ``M`` per forward
        call, shared by the batch and every step (DropConnect, AWD-LSTM). In [0, 1).
    zoneout : float or (float, float), default 0.0, keyword-only
        Zoneout probabilities ``z`` (or ``(z_c, z_h)``) of the cell and hidden states (Krueger
        et al. 2017): in training, each element of ``c_t`` keeps its previous value with
        probability ``z_c`` at each step, ``c_t = m c_{t-1} + (1 - m) c~_t``, and likewise
        ``h_t`` (the output is the zoned-out ``h``); in evaluation ``c_t = z_c c_{t-1} + (1 -
        z_c) c~_t``, the expectation. In [0, 1].
    bptt_memory : None, "sqrt" or int, default None, keyword-only
        What a training-mode forward keeps for backward (memory-bounded backpropagation
        through time, Chen et al. 2016). None: every step's gates and states, about
        ``T*N*(I + 6H)`` values per layer (x, the four gates, h and c). ``"sqrt"``: the state
        entering each segment of ``K`` steps, ``K = ceil(sqrt(T))`` rounded up to a whole
        number of the engine's gradient chunks (``ceil(512/N)`` steps, a multiple of 16
        rows); backward recomputes each segment's forward from that state before
        backpropagating through it, about one more forward in all. An int: a budget in
        bytes: full storage if it fits, else the longest segments whose checkpoints and
        buffers fit (a training forward raises ValueError naming the smallest budget when
        none does). The gradients are the bits of full storage (for a given thread count) in
        every mode. Layers above the first keep their input; the first layer's is read again
        in backward, so the ``x`` of a training forward must not be changed in place before
        its backward. A setting of the module, not saved with the weights.
    layer_norm : bool, default False, keyword-only
        Layer-normalised LSTM (Ba et al. 2016): the gates' pre-activation is
        ``LN(W_ih x_t) + LN(W_hh h_{t-1}) + b_ih + b_hh``, each LN over all ``G`` gate features
        (``G = 4H``, ``3H`` with ``cifg``), and ``h_t = o * tanh(LN(c_t))`` over the ``H``
        units; ``c_t`` itself is carried unnormalised. Each LN is ``torch.nn.LayerNorm``'s
        (biased variance, eps 1e-5) with its own gain and shift:
        ``layer_norm_ih_weight_l{k}{suffix}``, ``layer_norm_ih_bias_…`` and the ``hh`` pair of
        shape ``(G,)`` in gate order, ``layer_norm_c_weight_…`` and ``layer_norm_c_bias_…`` of
        shape ``(H,)``; they start at 1 and 0.
    dtype : {np.float32, np.float64}, keyword-only
        Parameter and compute dtype; inputs are converted to it.
    seed : int, optional, keyword-only
        Seeds the initial weights and the dropout stream. The same seed gives the same
        weights and the same dropout masks.

    Notes
    -----
    For each layer and time step, in gate order i, f, g, o:

    .. math::
        i &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        h_t &= o \odot \tanh(c_t) \quad (\text{with projection: } h_t = W_{hr}(o \odot \tanh(c_t)))

    With ``peepholes``, :math:`w_{ci} \odot c_{t-1}` and :math:`w_{cf} \odot c_{t-1}` are added
    inside the sigmoids of i and f, and :math:`w_{co} \odot c_t` inside that of o, with
    :math:`c_t` computed (and clipped, with ``cell_clip``) before o. ``proj_clip`` clips
    :math:`W_{hr}(\cdot)`. Zoneout mixes the previous states into :math:`c_t` and
    :math:`h_t` after all of this (:math:`h_t` from the un-mixed :math:`c_t`). With
    ``layer_norm``, the peephole of o and the clip see the unnormalised :math:`c_t`.

    The random masks (``dropout``, ``recurrent_dropout``, ``weight_drop``, zoneout in
    training) come from the module's dropout stream: ``dropout_state`` and
    ``set_dropout_state`` replay them, and they do not depend on the thread count.

    Every parameter starts uniform in :math:`(-1/\sqrt{H}, 1/\sqrt{H})`, as in torch (the
    layer norms' gains at 1 and shifts at 0, as ``torch.nn.LayerNorm``'s).
    ``state_dict()`` keys and shapes are torch's, so weights move both ways unchanged.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> lstm = el.LSTM(10, 20, num_layers=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((7, 5, 10), dtype=np.float32)
    >>> output, (h_n, c_n) = lstm(x)
    >>> output.shape, h_n.shape, c_n.shape
    ((7, 5, 20), (2, 5, 20), (2, 5, 20))
    >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(output))
    >>> dx.shape
    (7, 5, 10)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        reverse: bool = False,
        cifg: bool = False,
        peepholes: bool = False,
        cell_clip: float | None = None,
        proj_clip: float | None = None,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        layer_norm: bool = False,
        bptt_memory: str | int | None = None,
        dtype=np.float32,
        seed: int | None = None,
    ) -> None:
        where = "LSTM"
        self.input_size, self.hidden_size, self.num_layers, self.proj_size = check_sizes(
            where, input_size, hidden_size, num_layers, proj_size
        )
        variants = check_variants(
            where,
            self.proj_size,
            cifg=cifg,
            peepholes=peepholes,
            cell_clip=cell_clip,
            proj_clip=proj_clip,
            recurrent_dropout=recurrent_dropout,
            weight_drop=weight_drop,
            zoneout=zoneout,
            layer_norm=layer_norm,
        )
        self.cifg: bool = variants["cifg"]
        self.peepholes: bool = variants["peepholes"]
        self.cell_clip: float | None = variants["cell_clip"]
        self.proj_clip: float | None = variants["proj_clip"]
        self.recurrent_dropout: float = variants["recurrent_dropout"]
        self.weight_drop: float = variants["weight_drop"]
        self.zoneout: float | tuple[float, float] = variants["zoneout"]
        self.layer_norm: bool = variants["layer_norm"]
        if isinstance(dropout, bool) or not isinstance(
            dropout, (int, float, np.floating, np.integer)
        ):
            raise TypeError(
                f"{where}: dropout must be a float, got {type(dropout).__name__} {dropout!r}"
            )
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"{where}: dropout must be in [0, 1], got {dropout}")
        if dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout applies between layers, so it has no effect with num_layers=1",
                UserWarning,
                stacklevel=2,
            )
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        if not isinstance(reverse, (bool, np.bool_)):
            raise TypeError(f"{where}: reverse must be a bool, got {type(reverse).__name__}")
        if reverse and self.bidirectional:
            raise ValueError(
                f"{where}: reverse=True runs the only direction backwards; a bidirectional LSTM "
                "already has a reverse direction (got bidirectional=True)"
            )
        self.reverse = bool(reverse)
        self.dtype = resolve_dtype(where, dtype)
        self.seed = check_seed(where, seed)
        self.training = True

        engine_cls = _core.EngineF32 if self.dtype == np.float32 else _core.EngineF64
        rng = np.random.default_rng(self.seed)
        self._engine = engine_cls(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.bidirectional,
            self.proj_size,
            self.dropout,
            self.reverse,
            int(rng.integers(0, 2**63)),
            **engine_variants(variants),
        )
        # The engine's flat buffers hold every tensor in torch's layout, so each parameter is
        # a view of them (made once: optimizers and users hold these objects).
        self._flat, self._grad_flat = self._engine.params, self._engine.grads
        shapes = self._shapes()
        self._params = {
            name: Parameter(
                self._flat[s].reshape(shapes[name]), self._grad_flat[s].reshape(shapes[name]), self
            )
            for name, s in self._slices().items()
        }
        # torch: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), drawn in state_dict order; the
        # layer norms' gains 1 and shifts 0 (torch.nn.LayerNorm's).
        k = 1.0 / math.sqrt(self.hidden_size)
        self.load_state_dict(
            {name: _initial_value(name, shape, rng, k) for name, shape in self._shapes().items()}
        )
        self._last = None  # layout of the last training-mode forward, for backward
        self._bptt_memory: str | int | None = None
        self.bptt_memory = bptt_memory

    # ---- memory-bounded backpropagation through time ---------------------------------------
    @property
    def bptt_memory(self) -> str | int | None:
        """What a training-mode forward keeps for backward: None (every step), ``"sqrt"`` or a
        byte budget (see the class's ``bptt_memory``). Settable; not saved with the weights."""
        return self._bptt_memory

    @bptt_memory.setter
    def bptt_memory(self, value: str | int | None) -> None:
        where = "LSTM.bptt_memory"
        if value is None:
            policy, budget = "full", 0
        elif isinstance(value, str):
            if value != "sqrt":
                raise ValueError(
                    f"{where}: bptt_memory must be None, 'sqrt' or a number of bytes > 0, "
                    f"got {value!r}"
                )
            policy, budget = "sqrt", 0
        elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            if not 0 < int(value) < 2**64:
                raise ValueError(
                    f"{where}: bptt_memory must be None, 'sqrt' or a number of bytes > 0, "
                    f"got {value}"
                )
            policy, budget, value = "bytes", int(value), int(value)
        else:
            raise TypeError(
                f"{where}: bptt_memory must be None, 'sqrt' or an int number of bytes, got "
                f"{type(value).__name__} {value!r}"
            )
        self._engine.set_bptt_memory(policy, budget)
        self._bptt_memory = value

    def cache_bytes(self) -> int:
        """Bytes the last training-mode forward keeps for backward (0 once backward consumed
        it, or before any): its activations with full storage; with ``bptt_memory``, the
        checkpoints, the inputs of the layers above the first and one segment's buffers. The
        caller's input is not counted: that forward keeps a reference to it instead of a copy."""
        return int(self._engine.cache_bytes)

    # ---- sizes -----------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """``H_out``: proj_size if > 0, else hidden_size."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _names(self):
        return param_names(
            self.num_layers,
            self.bidirectional,
            self.proj_size,
            self.bias,
            self.peepholes,
            self.layer_norm,
        )

    def _shapes(self) -> dict[str, tuple]:
        return {
            name: tuple(self._engine.param_shape(kind, layer))
            for name, kind, layer, _ in self._names()
        }

    def _slices(self) -> dict[str, slice]:
        """Where each tensor lives in a flat buffer: ``flat[s].reshape(shape)`` is it, a view."""
        return {
            name: tensor_slice(self._engine, kind, layer, d)[0]
            for name, kind, layer, d in self._names()
        }

    def __repr__(self) -> str:
        return describe(self, f"dtype={self.dtype.name}")

    # ---- parameters --------------------------------------------------------------------------
    def __getattr__(self, name: str):
        # torch's attribute names for the tensors: lstm.weight_ih_l0, ... (only called when
        # normal lookup fails, so it costs nothing elsewhere).
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def named_parameters(self, prefix: str = ""):
        """``(name, Parameter)`` in torch.nn.LSTM's state_dict order: views of the engine's buffers.

        Each parameter's ``grad`` is the matching view of the gradient buffer. Writes into a
        parameter (``p[...] = x``, ``p += x``) repack the engine's weights; other writes raise.
        """
        for name, p in self._params.items():
            yield prefix + name, p

    def flat_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """The engine's parameter and gradient buffers, of which every parameter is a view.

        1-D, in torch's layout with zero padding between tensors (``param_offset``); an
        optimizer given all of this module's parameters updates them as one array. After
        writing into the parameter buffer, call ``params_updated()``.
        """
        return self._flat, self._grad_flat

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, with torch.nn.LSTM's keys, shapes and order."""
        return {name: np.array(p, copy=True) for name, p in self._params.items()}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Copies of the accumulated gradients, keyed like ``state_dict()``.

        ``backward`` adds into the gradients; ``zero_grad()`` clears them. The dict is a
        snapshot (``named_parameters()`` gives the live ``grad`` views).
        """
        return {name: np.array(p.grad, copy=True) for name, p in self._params.items()}

    def unflatten(self, flat) -> dict[str, np.ndarray]:
        """Split a flat array laid out like ``flat_buffers()`` into torch-named tensors (copies).

        Raises
        ------
        ValueError
            If ``flat`` does not have the buffers' length.
        """
        flat = np.ascontiguousarray(flat, dtype=self.dtype)
        check_shape("LSTM.unflatten", "flat", flat, (self._engine.num_params,))
        shapes = self._shapes()
        return {name: flat[s].reshape(shapes[name]).copy() for name, s in self._slices().items()}

    def flatten(self, tensors) -> np.ndarray:
        """Inverse of ``unflatten``: torch-named tensors to one flat array (zero padding).

        Raises
        ------
        ValueError
            If a key is missing or a tensor has the wrong shape.
        """
        where = "LSTM.flatten"
        flat = np.zeros(self._engine.num_params, dtype=self.dtype)
        shapes = self._shapes()
        for name, s in self._slices().items():
            if name not in tensors:
                raise ValueError(f"{where}: missing key {name!r}")
            value = as_real_array(where, name, tensors[name], self.dtype)
            check_shape(where, name, value, shapes[name])
            flat[s] = value.reshape(-1)
        return flat

    def _prepare_load(self, state: dict, where: str, prefix: str):
        shapes = self._shapes()
        check_keys(where, state, shapes, prefix)
        flat = np.array(self._flat, copy=True)
        for name, s in self._slices().items():
            value = as_real_array(where, prefix + name, state[name], self.dtype)
            check_shape(where, prefix + name, value, shapes[name])
            flat[s] = value.reshape(-1)

        # Copied into the same buffer (the parameters are views of it) under the engine's lock,
        # with the repack: a load that overlaps a call is refused whole.
        return lambda: self._engine.load_flat(flat)

    def params_updated(self) -> None:
        self._engine.params_updated()

    def zero_grad(self) -> None:
        self._engine.zero_grad()

    @property
    def dropout_state(self) -> tuple[int, int]:
        """(seed, counter) of the dropout stream; restore with ``set_dropout_state``."""
        seed, counter = self._engine.rng_state
        return int(seed), int(counter)

    def set_dropout_state(self, state) -> None:
        self._prepare_extra_state({"dropout_state": state}, "LSTM.set_dropout_state")()

    def get_extra_state(self):
        """``{"dropout_state": [seed, counter]}``: where the dropout stream stands."""
        return {"dropout_state": list(self.dropout_state)}

    def _prepare_extra_state(self, state: dict, where: str):
        value = state.get("dropout_state")
        seed = counter = -1
        if isinstance(value, (tuple, list)) and len(value) == 2:
            with contextlib.suppress(TypeError, ValueError):
                seed, counter = int(value[0]), int(value[1])
        if not (0 <= seed < 2**64 and 0 <= counter < 2**64):
            raise ValueError(
                f"{where}: dropout_state must be a pair of uint64 (seed, counter), got {value!r}"
            )
        return lambda: self._engine.set_rng_state(seed, counter)

    # ---- compute ---------------------------------------------------------------------------
    def forward(self, x, state=None, *, lengths=None):
        """Run the LSTM over a batch of sequences.

        Parameters
        ----------
        x : array_like of shape (T, N, I), (N, T, I) if batch_first, or (T, I) unbatched
            The input sequences. Real dtypes are converted to the module dtype.
        state : tuple (h0, c0), optional
            ``h0`` of shape (D*L, N, H_out) and ``c0`` of shape (D*L, N, H) ((D*L, H_out) and
            (D*L, H) for unbatched input). Zeros when omitted.
        lengths : array_like of int of shape (N,), optional
            Valid steps of each right-padded sequence, in [0, T]. Same results as
            ``pack_padded_sequence(enforce_sorted=False)`` then ``pad_packed_sequence``:
            outputs past a length are 0 and the final state is the state at the last valid
            step (the reverse direction starts there). No sorting is needed.

        Returns
        -------
        output : ndarray of shape (T, N, D*H_out) ((N, T, D*H_out) if batch_first)
        (h_n, c_n) : tuple of ndarray of shapes (D*L, N, H_out) and (D*L, N, H)

        Raises
        ------
        ValueError
            On a wrong number of dimensions, feature size, state shape or bad lengths.
        TypeError
            On non-real dtypes, non-integer lengths, or a state that is not a pair.
        """
        training = self.training
        y, final, batched, T, N = run_forward(
            self,
            "LSTM.forward",
            x,
            state,
            lengths,
            lambda *args: self._engine.forward(*args, training),
        )
        if training:
            self._last = (batched, self.batch_first, T, N)
        return y, final

    def stream(self, batch_size: int, *, head=None) -> Stream:
        """A :class:`~eigenlstm.nn.Stream` of ``batch_size`` rows: stateful inference, one step
        or one chunk of steps per call, with the state kept between calls.

        Parameters
        ----------
        batch_size : int
            Rows of every call (independent sequences, e.g. one per client).
        head : Linear, optional, keyword-only
            Applied to the output at every step (``LSTMModel.stream`` passes its ``fc``).

        Raises
        ------
        ValueError
            For a bidirectional LSTM (its reverse direction reads each sequence from its
            end), or a head whose ``in_features`` is not H_out or whose dtype differs.
        """
        batch_size = check_head("LSTM.stream", self, batch_size, head)
        return Stream(self, lambda: self._engine, batch_size, head)

    def forward_last(self, x, weight, bias=None, *, lengths=None) -> np.ndarray:
        """Evaluation-mode forward from zero states, read through a linear layer at the last step.

        ``out[n] = y[n, last_n] @ weight.T + bias`` with ``last_n = lengths[n] - 1`` (``T - 1``
        without lengths), in one engine call that never builds the ``(T, N, D*H_out)`` output:
        the inference path of ``LSTMModel``, whose own checks run before it. This method
        leaves the checks to the engine (shapes and lengths are checked there before any
        memory is touched; errors name the argument, the expected and the given value).

        Parameters
        ----------
        x : ndarray of shape (T, N, I), or (N, T, I) if batch_first
        weight : ndarray of shape (O, D*H_out)
        bias : ndarray of shape (O,), optional
        lengths : ndarray of int64 of shape (N,), optional
            In [1, T].

        Returns
        -------
        ndarray of shape (N, O)
        """
        return self._engine.forward_last(x, lengths, weight, bias, self.batch_first)

    def backward(self, d_output, d_state=None):
        """Backpropagate through the last training-mode forward.

        Parameters
        ----------
        d_output : array_like, the shape of that forward's output
            Gradient of the loss with respect to the output. Ignored past each length.
        d_state : tuple (dh_n, dc_n), optional
            Gradients with respect to h_n and c_n; either may be None (zeros).

        Returns
        -------
        dx : ndarray, the shape of x
        (dh0, dc0) : tuple of ndarray, the shapes of h0 and c0

        Notes
        -----
        Parameter gradients are *added* into ``grads``. The forward cache is consumed: call
        forward (in training mode) again before the next backward.

        Raises
        ------
        RuntimeError
            If there was no training-mode forward since the last backward.
        ValueError, TypeError
            On gradients of the wrong shape or dtype.
        """
        where = "LSTM.backward"
        if self._last is None or not self._engine.has_cache:
            raise RuntimeError(
                f"{where}: no training-mode forward to differentiate; call forward in "
                "training mode (lstm.train()) before each backward"
            )
        batched, batch_first, T, N = self._last
        D, DL = self.num_directions, self.num_directions * self.num_layers
        out_shape = (T, N, D * self.output_size)
        if not batched:
            out_shape = (T, D * self.output_size)
        elif batch_first:
            out_shape = (N, T, D * self.output_size)
        dy = as_real_array(where, "d_output", d_output, self.dtype)
        check_shape(where, "d_output", dy, out_shape)
        if not batched:
            dy = dy[:, None, :]
        elif batch_first:
            dy = dy.transpose(1, 0, 2)
        dh_n = dc_n = None
        if d_state is not None:
            check_pair(where, "d_state", "(dh_n, dc_n)", d_state)
            h_shape = (DL, N, self.output_size) if batched else (DL, self.output_size)
            c_shape = (DL, N, self.hidden_size) if batched else (DL, self.hidden_size)
            if d_state[0] is not None:
                dh_n = as_real_array(where, "dh_n", d_state[0], self.dtype)
                check_shape(where, "dh_n", dh_n, h_shape)
                dh_n = np.ascontiguousarray(dh_n.reshape(DL, N, self.output_size))
            if d_state[1] is not None:
                dc_n = as_real_array(where, "dc_n", d_state[1], self.dtype)
                check_shape(where, "dc_n", dc_n, c_shape)
                dc_n = np.ascontiguousarray(dc_n.reshape(DL, N, self.hidden_size))
        dx, dh0, dc0 = self._engine.backward(np.ascontiguousarray(dy), dh_n, dc_n)
        self._last = None
        if not batched:
            return dx[:, 0, :], (dh0[:, 0, :], dc0[:, 0, :])
        if batch_first:
            dx = dx.transpose(1, 0, 2)
        return dx, (dh0, dc0)
