"""Gradient clipping by global norm, as ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .._validation import check_float
from .optimizer import make_slots, resolve_params

__all__ = ["clip_grad_norm_", "clip_grad_norm"]


def clip_grad_norm_(
    module_or_params, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    r"""Scale all gradients so that their joint norm is at most ``max_norm``, in place.

    Like ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients as one vector
    and every gradient is multiplied by :math:`\min(1, \text{max\_norm} / (\text{norm} + 10^{-6}))`.

    Parameters
    ----------
    module_or_params : Module, or iterable of parameters or of (ndarray, ndarray) pairs
        Whose gradients to clip.
    max_norm : float
        The largest allowed norm.
    norm_type : float, default 2.0
        The p of the p-norm; ``inf`` for the largest absolute value.
    error_if_nonfinite : bool, default False
        Raise instead of clipping when the norm is NaN or infinite.

    Returns
    -------
    float
        The total norm of the gradients before clipping.

    Raises
    ------
    RuntimeError
        If ``error_if_nonfinite`` and the norm is not finite.
    ValueError
        If ``max_norm`` is negative or ``norm_type`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.optim import clip_grad_norm_
    >>> p, g = np.zeros(2), np.array([3.0, 4.0])
    >>> clip_grad_norm_([(p, g)], 1.0)
    5.0
    >>> np.round(g, 6).tolist()
    [0.6, 0.8]
    """
    where = "clip_grad_norm_"
    # One array per module that keeps its parameters in one buffer (see optimizer.Slot).
    grads = [slot.grad for slot in make_slots(resolve_params(where, module_or_params))]
    max_norm = check_float(where, "max_norm", max_norm)
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"{where}: norm_type must be > 0 (or inf), got {norm_type}")
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        # Sums, not np.linalg.norm: that calls BLAS dot, whose threads stall on a busy machine.
        def pnorm(v: np.ndarray) -> float:
            v = np.abs(v.astype(np.float64, copy=False))
            return (
                float(np.sqrt(np.sum(v * v)))
                if norm_type == 2
                else float(np.sum(v**norm_type) ** (1.0 / norm_type))
            )

        total = pnorm(np.array([pnorm(g.ravel()) for g in grads]))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"{where}: the total norm of order {norm_type} of the gradients is {total}; "
            "pass error_if_nonfinite=False to clip anyway"
        )
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef < 1.0 or not math.isfinite(total):
        for g in grads:
            g *= coef
    return total


def clip_grad_norm(
    module_or_params, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Deprecated alias of :func:`clip_grad_norm_` (torch's name), kept for one release."""
    warnings.warn(
        "eigenlstm.clip_grad_norm is deprecated; use clip_grad_norm_ (torch's name)",
        DeprecationWarning,
        stacklevel=2,
    )
    return clip_grad_norm_(module_or_params, max_norm, norm_type, error_if_nonfinite)
