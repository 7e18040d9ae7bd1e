"""Type stubs of ``eigenlstm._core``, the compiled engine (cpp/bindings/module.cpp).

EngineF32 and EngineF64 have the same methods; arrays are float32 resp. float64 (lengths
int64). Input arrays of another real dtype are converted (integer lengths only); complex,
string and object arrays are a TypeError. Shapes use T time, B batch, I input size, H hidden size, H_out (= proj_size or H),
D directions, L layers, O outputs of a linear layer.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[np.floating]

class _Engine:
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        bidirectional: bool,
        proj_size: int,
        dropout: float,
        reverse: bool,
        seed: int,
        **variants: bool | float,
    ) -> None:
        """Cell variants as keywords: cifg, peepholes, layer_norm (bool), cell_clip, proj_clip,
        recurrent_dropout, weight_drop, zoneout_c, zoneout_h (0 for off)."""
    @property
    def num_params(self) -> int: ...
    @property
    def params(self) -> _Array:
        """Writable view of the flat parameter buffer, in torch layout (``param_offset``)."""
    @property
    def grads(self) -> _Array:
        """Writable view of the flat gradient buffer, laid out like ``params``."""
    @property
    def rng_state(self) -> tuple[int, int]: ...
    @property
    def has_cache(self) -> bool: ...
    def set_bptt_memory(self, policy: str, bytes: int) -> None:
        """What training forwards keep for backward: 'full', 'sqrt' or 'bytes' (a budget)."""
    @property
    def cache_bytes(self) -> int:
        """Bytes the last training forward's cache holds (0: none)."""
    @property
    def cache_segment(self) -> int:
        """Steps per segment of that cache (T: full storage; 0: none)."""
    def params_updated(self) -> None: ...
    def zero_grad(self) -> None: ...
    def has_param(self, kind: str) -> bool: ...
    def param_shape(self, kind: str, layer: int) -> list[int]: ...
    def param_offset(self, kind: str, layer: int, direction: int) -> int:
        """Element offset of one tensor in ``params``, ``grads`` or a buffer laid out like them:
        ``flat[offset:offset + size].reshape(param_shape(kind, layer))`` is the torch tensor."""
    def load_flat(self, flat: npt.ArrayLike) -> None: ...
    def set_rng_state(self, seed: int, counter: int) -> None: ...
    def forward(
        self,
        x: npt.ArrayLike,
        h0: npt.ArrayLike | None,
        c0: npt.ArrayLike | None,
        lengths: npt.ArrayLike | None,
        training: bool,
    ) -> tuple[_Array, _Array, _Array]:
        """x [T, B, I] -> (y [T, B, D*H_out], h_n [D*L, B, H_out], c_n [D*L, B, H])."""
    def forward_into(
        self,
        x: npt.ArrayLike,
        h0: npt.ArrayLike | None,
        c0: npt.ArrayLike | None,
        lengths: npt.ArrayLike | None,
        y: _Array,
        h_n: _Array,
        c_n: _Array,
    ) -> None:
        """Evaluation-mode forward into the caller's C-contiguous arrays y, h_n and c_n, which
        overlap neither each other nor the inputs (a stream's step)."""
    def forward_last(
        self,
        x: npt.ArrayLike,
        lengths: npt.ArrayLike | None,
        weight: npt.ArrayLike,
        bias: npt.ArrayLike | None,
        batch_first: bool,
    ) -> _Array:
        """Eval forward, then out [B, O] = y[last step] @ weight.T + bias."""
    def backward(
        self, d_output: npt.ArrayLike, dh_n: npt.ArrayLike | None, dc_n: npt.ArrayLike | None
    ) -> tuple[_Array, _Array, _Array]:
        """-> (dx [T, B, I], dh0, dc0); parameter gradients are added into grads."""

class EngineF32(_Engine): ...
class EngineF64(_Engine): ...

class QuantizedEngine:
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        bidirectional: bool,
        proj_size: int,
        precision: str,
        tensors: dict[str, _Array],
        **variants: bool | float,
    ) -> None:
        """A reduced-precision ('int8' or 'bfloat16') LSTM from torch-named tensors: weights
        (int8, or bfloat16 bits as uint16), int8 scales '<weight>_scale', float32 biases and
        peephole weights."""
    def forward(
        self,
        x: npt.ArrayLike,
        h0: npt.ArrayLike | None,
        c0: npt.ArrayLike | None,
        lengths: npt.ArrayLike | None,
    ) -> tuple[_Array, _Array, _Array]:
        """x [T, B, I] -> (y [T, B, D*H_out], h_n [D*L, B, H_out], c_n [D*L, B, H])."""
    def forward_into(
        self,
        x: npt.ArrayLike,
        h0: npt.ArrayLike | None,
        c0: npt.ArrayLike | None,
        lengths: npt.ArrayLike | None,
        y: _Array,
        h_n: _Array,
        c_n: _Array,
    ) -> None:
        """Forward into the caller's arrays, as _Engine.forward_into."""

class QuantizedLinear:
    def __init__(
        self, in_features: int, out_features: int, precision: str, tensors: dict[str, _Array]
    ) -> None:
        """y = x W^T + b from tensors 'weight' (and 'weight_scale' for int8) and 'bias'."""
    def forward_into(self, x: npt.ArrayLike, y: _Array) -> None:
        """y [M, O] = x [M, I] W^T + b, into the caller's C-contiguous float32 y."""

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_flush_denormal(on: bool) -> bool: ...
def get_flush_denormal() -> bool: ...
def isa() -> str:
    """The instruction-set level of the back end in use."""

def isa_available() -> list[str]:
    """The levels this CPU and this build can run, low to high."""

def isa_features() -> list[str]:
    """The features beyond the level that the reduced-precision kernels use."""

def quantized_kernel(precision: str) -> str:
    """The kernel that 'int8' or 'bfloat16' runs on this CPU."""

def build_info() -> dict[str, Any]:
    """The back end in use: isa, compiler, eigen, simd, openmp, library."""

def _fail_next_parallel_region(armed: bool) -> None:
    """Test hook: armed, the next multi-threaded parallel region fails with std::bad_alloc
    (MemoryError); False disarms."""

gate_block_float32: int
gate_block_float64: int
