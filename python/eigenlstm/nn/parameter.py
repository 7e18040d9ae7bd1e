"""``Parameter``: a module's weight array, with its gradient and the module it belongs to.

An ndarray (a view of the module's storage: for ``LSTM`` the engine's flat buffer, in torch's
layout), so NumPy code reads it directly; ``grad`` is the matching view of the gradient
buffer, as torch's ``.grad``.

A module may derive state from its parameters (the LSTM engine packs its weights for the
GEMMs), so a write it is not told of would leave it computing with the old values. The view is
therefore read-only to NumPy, and the writes a NumPy user makes go through this class, which
tells the owner: item assignment (``p[...] = x``), ``fill`` and in-place ufuncs (``p += x``,
``np.clip(p, -1, 1, out=p)``, ``np.add.at(p, i, x)``), also on a part of it (``p[0] += 1``). If
the write or the telling fails, the old values are put back. Any other write (``np.copyto``,
a reshape's or a transpose's) raises NumPy's read-only error instead of going unseen.
Optimizers (optim/) update many parameters at once through ``writable()`` and then call
``owner.params_updated()`` once. ``torch.from_numpy(p)`` warns that the array is not writable:
pass ``p.copy()``, or the module's ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable
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

        Raises
        ------
        ValueError
            For a view NumPy derived from a parameter (a reshape, a transpose): read-only.
        """
        if self._values is None:
            raise ValueError("Parameter.writable: this view of a parameter is read-only")
        return self._values

    def __getitem__(self, key: Any) -> Any:
        # A basic index gives a read-only view that writes like its parameter (p[0] += 1,
        # p[0][...] = w); an index that copies (p[[0, 2]]) gives a plain array.
        item = self.view(np.ndarray)[key]
        if self._values is None or not isinstance(item, np.ndarray):
            return item
        if not np.may_share_memory(item, self._values):
            return item
        part = item.view(Parameter)
        part.owner = self.owner
        part._values = self._values[key]  # noqa: SLF001 (a view this class makes)
        return part

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._values is None:  # a derived view: read-only, NumPy raises its error
            super().__setitem__(key, value)
            return
        values = self._values
        _write_through([self], lambda: values.__setitem__(key, value))

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
            try:
                values = x.writable()
            except ValueError:  # a derived view: read-only, NumPy raises its error
                return x.view(np.ndarray)
            written.append(x)
            return values

        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(target(o) for o in out)
        if method == "at":
            plain[0] = target(inputs[0])
        result = _write_through(written, lambda: getattr(ufunc, method)(*plain, **kwargs))
        if out is None:
            return result
        # NumPy returns the output arrays: the parameters themselves, and its own results
        # where out held None.
        results = result if isinstance(result, tuple) else (result,)
        given = tuple(r if o is None else o for o, r in zip(out, results))
        return given[0] if len(given) == 1 else given

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


def _write_through(params: list[Parameter], write: Callable[[], Any]) -> Any:
    """Run ``write`` (which writes into the parameters' writable views), then tell their
    modules. If either fails (a floating-point error raised by ``np.errstate``, a module in use
    by another thread), the old values are put back: a parameter never holds values that its
    module does not compute with."""
    if not params:
        return write()
    saved = [p.writable().copy() for p in params]
    owners = list({id(p.owner): p.owner for p in params}.values())
    told = []
    try:
        result = write()
        for owner in owners:
            owner.params_updated()
            told.append(owner)
    except BaseException:
        for p, old in zip(params, saved):
            p.writable()[...] = old
        for owner in told:
            owner.params_updated()
        raise
    return result
