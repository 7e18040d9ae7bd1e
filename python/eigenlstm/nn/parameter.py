"""``Parameter``: a module's weight array, with its gradient and the module it belongs to.

An ndarray (a view of the module's storage: for ``LSTM`` the engine's flat buffer, in torch's
layout), so NumPy code reads and writes it directly; ``grad`` is the matching view of the
gradient buffer, as torch's ``.grad``. Optimizers live in optim/ and only read these three
attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Parameter"]


class Parameter(np.ndarray):
    """A parameter array of a module: the values, ``grad`` and ``owner``.

    Attributes
    ----------
    grad : ndarray, same shape
        The accumulated gradient: ``backward`` adds into it, ``zero_grad`` clears it.
    owner : Module
        The module that derives state from this parameter (the engine packs its weights for
        the GEMMs). After changing the values in place, call ``owner.params_updated()``;
        optimizers and ``load_state_dict`` do. Results of arithmetic on a parameter are plain
        ndarrays.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> lstm = el.LSTM(3, 4, seed=0)
    >>> name, p = next(iter(lstm.named_parameters()))
    >>> name, p.shape, p.grad.shape, p.owner is lstm
    ('weight_ih_l0', (16, 3), (16, 3), True)
    >>> type(p * 2) is np.ndarray
    True
    """

    grad: np.ndarray | None
    owner: Any

    def __new__(cls, value: np.ndarray, grad: np.ndarray, owner: Any) -> Parameter:
        if value.shape != grad.shape or value.dtype != grad.dtype:
            raise ValueError(
                f"Parameter: grad must have the value's shape {value.shape} and dtype "
                f"{value.dtype}, got {grad.shape} and {grad.dtype}"
            )
        obj = value.view(cls)
        obj.grad = grad
        obj.owner = owner
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        # Views that NumPy makes of a parameter (reshape, transpose) are not parameters of
        # their own: no gradient of their shape exists.
        self.grad = None
        self.owner = None

    def __getitem__(self, key: Any) -> Any:
        # p[0] is a plain view of the values (writing through it still writes the parameter).
        return self.view(np.ndarray)[key]

    def copy(self, order: Any = "C") -> np.ndarray:
        # A copy belongs to no module: a plain array of the values (as copy.copy gives).
        return np.array(self, copy=True, order=order)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # Arithmetic gives plain arrays (p * 2 is a value, not a parameter); in-place
        # operations still write into the parameter's memory.
        result = array.view(np.ndarray)
        return result[()] if return_scalar else result

    # Copies and pickles are plain arrays of the values: a copy belongs to no module.
    def __reduce__(self):
        return np.array(self, copy=True).__reduce__()

    def __copy__(self) -> np.ndarray:
        return np.array(self, copy=True)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> np.ndarray:
        return np.array(self, copy=True)
