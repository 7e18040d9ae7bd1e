"""Where each parameter tensor lives in an engine's flat buffers: the offset arithmetic, once.

The engine (``eigenlstm._core``) keeps its parameters and gradients in flat 1-D buffers in
torch's layout and says where each tensor starts (``param_offset``) and what shape it has
(``param_shape``); this module turns that into a slice. Callers own the buffers and copies.
"""

from __future__ import annotations

import math

__all__ = ["tensor_slice"]


def tensor_slice(engine, kind: str, layer: int, direction: int) -> tuple[slice, tuple[int, ...]]:
    """Where one tensor lives in a flat buffer of ``engine``, and its shape.

    Parameters
    ----------
    engine : eigenlstm._core.EngineF32 or EngineF64
    kind : {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"}
    layer : int
        In ``[0, num_layers)``.
    direction : int
        0 forward, 1 reverse (bidirectional only).

    Returns
    -------
    span : slice
        ``flat[span]`` holds the tensor's values, row-major, for ``engine.params``,
        ``engine.grads`` or any 1-D array of ``engine.num_params`` elements laid out like them.
    shape : tuple of int
        torch's shape of the tensor: ``(4H, I)``, ``(4H, H_out)``, ``(4H,)`` or ``(P, H)``.
        ``flat[span].reshape(shape)`` is the tensor, a view of ``flat``.

    Raises
    ------
    ValueError
        From the engine, if this LSTM has no such kind, layer or direction.
    """
    shape = tuple(int(n) for n in engine.param_shape(kind, layer))
    offset = int(engine.param_offset(kind, layer, direction))
    return slice(offset, offset + math.prod(shape)), shape
