"""``Parameter``: a module's weight array, with its gradient and the module it belongs to.

An ndarray (a view of the module's storage: for ``LSTM`` the engine's flat buffer, in torch's
layout), so NumPy code reads it directly; ``grad`` is the matching view of the gradient
buffer, as torch's ``.grad``.

A module may derive state from its parameters (the LSTM engine packs its weights for the
GEMMs), so a write it is not told of would leave it computing with the old values. The view is
therefore read-only to NumPy, and the writes a NumPy user makes go through this class, which
tells the owner: item assignment (``p[...] = x``), ``fill`` and in-place ufuncs (``p += x``,
``np.clip(p, -1, 1, out=p)``, ``np.add.at(p, i, x)``). Any other write (``np.copyto``, a write
through a slice ``p[0]`` or a reshape) raises NumPy's read-only error instead of going unseen.
Optimizers (optim/) update many parameters at once through ``writable()`` and then call
``owner.params_updated()`` once.
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
        the GEMMs). Item assignment, ``fill`` and in-place ufuncs write the values and call
        ``owner.params_updated()``; other writes raise (the array is read-only to NumPy).
        Results of arithmetic on a parameter are plain ndarrays.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> lstm = el.LSTM(3, 4, seed=0)
    >>> name, p = next(iter(lstm.named_parameters()))
    >>> name, p.shape, p.grad.shape, p.owner is lstm
    ('weight_ih_l0', (16, 3), (16, 3), True)
    >>> type(p * 2) is np.ndarray
    True
    >>> p[0, 0] = 0.5       # seen by the engine: the next forward uses it
    >>> p *= 2
    >>> float(lstm.state_dict()["weight_ih_l0"][0, 0])
    1.0
    >>> np.copyto(p, 0.0)
    Traceback (most recent call last):
        ...
    ValueError: assignment destination is read-only
    """

    grad: np.ndarray | None
    owner: Any
    _values: np.ndarray | None  # a writable plain view of the same memory

    def __new__(cls, value: np.ndarray, grad: np.ndarray, owner: Any) -> Parameter:
        if value.shape != grad.shape or value.dtype != grad.dtype:
            raise ValueError(
                f"Parameter: grad must have the value's shape {value.shape} and dtype "
                f"{value.dtype}, got {grad.shape} and {grad.dtype}"
            )
        if not value.flags.writeable:
            raise ValueError("Parameter: value must be a writable array, got a read-only one")
        obj = value.view(cls)
        obj.flags.writeable = False
        obj.grad = grad
        obj.owner = owner
        obj._values = value.view(np.ndarray)  # noqa: SLF001 (the object this constructs)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        # Views that NumPy makes of a parameter (reshape, transpose) are not parameters of
        # their own: no gradient of their shape exists, and they stay read-only.
        self.grad = None
        self.owner = None
        self._values = None

    def writable(self) -> np.ndarray:
        """A writable plain view of the values, for updates of many parameters at once.

        Writes through it are not seen by the owner until ``owner.params_updated()``; an
        optimizer calls that once per step, after every update.
        """
        if self._values is None:
            raise ValueError("Parameter.writable: this view of a parameter is read-only")
        return self._values

    def __getitem__(self, key: Any) -> Any:
        # p[0] is a plain, read-only view of the values.
        return self.view(np.ndarray)[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._values is None:  # a derived view: read-only, NumPy raises its error
            super().__setitem__(key, value)
            return
        self._values[key] = value
        self.owner.params_updated()

    def fill(self, value: Any) -> None:
        self[...] = value

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # Arithmetic runs on plain arrays and gives plain arrays (p * 2 is a value, not a
        # parameter). An output that is a parameter (p += x, out=p), or the operand that
        # ufunc.at modifies, is written through its writable view, and its owner told.
        plain = [x.view(np.ndarray) if isinstance(x, Parameter) else x for x in inputs]
        written: list[Parameter] = []

        def target(x: Any) -> Any:
            if not isinstance(x, Parameter):
                return x
            if x.grad is None:  # a derived view: read-only, NumPy raises its error
                return x.view(np.ndarray)
            written.append(x)
            return x.writable()

        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(target(o) for o in out)
        if method == "at":
            plain[0] = target(inputs[0])
        result = getattr(ufunc, method)(*plain, **kwargs)
        for p in written:
            p.owner.params_updated()
        if out is not None:  # NumPy returns the output arrays: the parameters themselves
            return out[0] if len(out) == 1 else out
        return result

    def copy(self, order: Any = "C") -> np.ndarray:
        # A copy belongs to no module: a plain array of the values (as copy.copy gives).
        return np.array(self, copy=True, order=order)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # The same for functions that are not ufuncs (np.dot, np.round): plain arrays.
        result = array.view(np.ndarray)
        return result[()] if return_scalar else result

    # Copies and pickles are plain arrays of the values: a copy belongs to no module.
    def __reduce__(self):
        return np.array(self, copy=True).__reduce__()

    def __copy__(self) -> np.ndarray:
        return np.array(self, copy=True)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> np.ndarray:
        return np.array(self, copy=True)
