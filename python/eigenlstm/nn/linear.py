"""``eigenlstm.Linear``: torch.nn.Linear's interface (y = x W^T + b) in NumPy.

Forward, backward and parameters for the dense layer that sits on top of the LSTM; it is small
enough that NumPy's matmul is the whole engine. Optimizers and the training loop live elsewhere.
"""
# Sizes: N rows of the (flattened) batch, I in_features, O out_features.

from __future__ import annotations

import math

import numpy as np

from .._validation import (
    as_real_array,
    check_keys,
    check_positive_int,
    check_seed,
    check_shape,
    resolve_dtype,
)
from .module import Module
from .parameter import Parameter

__all__ = ["Linear"]


class Linear(Module):
    r"""A fully connected layer with the interface and initialisation of ``torch.nn.Linear``.

    Parameters
    ----------
    in_features : int
        Size ``I`` of each input row.
    out_features : int
        Size ``O`` of each output row.
    bias : bool, default True
        Whether to learn an additive bias ``b``.
    dtype : {np.float32, np.float64}, keyword-only
        Parameter and compute dtype; inputs are converted to it.
    seed : int, optional, keyword-only
        Seeds the initial weights (fresh entropy when None).

    Attributes
    ----------
    weight : ndarray of shape (O, I)
    bias : ndarray of shape (O,) or None
    grads : dict of ndarray
        Copies of the accumulated gradients, keyed like ``state_dict()``.

    Notes
    -----
    Forward and backward, for ``x`` of shape (..., I) flattened to (N, I):

    .. math::
        y = x W^T + b, \qquad
        dx = dy\, W, \qquad dW \mathrel{+}= dy^T x, \qquad db \mathrel{+}= \textstyle\sum_n dy_n

    Initialisation is torch's: ``kaiming_uniform_(a=sqrt(5))`` for the weight, which is
    :math:`U(-1/\sqrt{I}, 1/\sqrt{I})`, and the same bound for the bias.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> fc = el.Linear(20, 2, seed=0)
    >>> y = fc(np.ones((5, 20), dtype=np.float32))
    >>> y.shape
    (5, 2)
    >>> dx = fc.backward(np.ones_like(y))
    >>> dx.shape, fc.grads["weight"].shape
    ((5, 20), (2, 20))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype=np.float32,
        seed: int | None = None,
    ) -> None:
        where = "Linear"
        self.in_features = check_positive_int(where, "in_features", in_features)
        self.out_features = check_positive_int(where, "out_features", out_features)
        self.dtype = resolve_dtype(where, dtype)
        self.training = True
        rng = np.random.default_rng(check_seed(where, seed))
        # torch: kaiming_uniform_(a=sqrt(5)) -> gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in)
        # = 1/sqrt(fan_in); the bias uses the same bound.
        bound = 1.0 / math.sqrt(self.in_features)
        # The parameters, and plain views of the same memory for the arithmetic (no subclass
        # dispatch on the hot path).
        w = rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(self.dtype)
        self._w, self._dw = w, np.zeros_like(w)
        self.weight = Parameter(self._w, self._dw, self)
        self.bias: Parameter | None = None
        self._b: np.ndarray | None = None
        self._db: np.ndarray | None = None
        if bias:
            b = rng.uniform(-bound, bound, (self.out_features,)).astype(self.dtype)
            self._b, self._db = b, np.zeros_like(b)
            self.bias = Parameter(self._b, self._db, self)
        self._x = None  # input of the last training-mode forward, flattened to (N, I)

    def __repr__(self) -> str:
        return (
            f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.dtype.name})"
        )

    # ---- parameters --------------------------------------------------------------------------
    def named_parameters(self, prefix: str = ""):
        """``(name, Parameter)``: ``weight``, then ``bias`` if there is one, as torch's."""
        yield prefix + "weight", self.weight
        if self.bias is not None:
            yield prefix + "bias", self.bias

    def params_updated(self) -> None:
        """Nothing is derived from the parameters, so there is nothing to refresh."""

    def zero_grad(self) -> None:
        self._dw.fill(0)
        if self._db is not None:
            self._db.fill(0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, keyed ``weight`` and ``bias`` as in torch."""
        return {name: np.array(p, copy=True) for name, p in self.named_parameters()}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Copies of the accumulated gradients, keyed like ``state_dict()``."""
        return {name: np.array(p.grad, copy=True) for name, p in self.named_parameters()}

    def _prepare_load(self, state: dict, where: str, prefix: str):
        shapes = {"weight": self.weight.shape}
        if self.bias is not None:
            shapes["bias"] = self.bias.shape
        check_keys(where, state, shapes, prefix)
        values = {}
        for name, shape in shapes.items():
            value = as_real_array(where, prefix + name, state[name], self.dtype)
            check_shape(where, prefix + name, value, shape)
            values[name] = np.array(value, dtype=self.dtype, copy=True)

        def commit():
            # In place: optimizers hold references to these arrays.
            self._w[...] = values["weight"]
            if self._b is not None:
                self._b[...] = values["bias"]

        return commit

    # ---- compute ---------------------------------------------------------------------------
    def forward(self, x):
        """Apply ``y = x W^T + b``.

        Parameters
        ----------
        x : array_like of shape (..., I)
            Real dtypes are converted to the layer's dtype.

        Returns
        -------
        y : ndarray of shape (..., O)

        Raises
        ------
        ValueError
            If the last axis of ``x`` is not ``in_features`` long.
        TypeError
            If ``x`` does not hold real numbers.
        """
        where = "Linear.forward"
        x = as_real_array(where, "x", x, self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{where}: x must have shape (..., {self.in_features}) (in_features), got {x.shape}"
            )
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self._w.T
        if self._b is not None:
            y += self._b
        self._x = (np.array(x2, copy=True), x.shape) if self.training else None
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, d_y):
        """Backpropagate through the last training-mode forward.

        Parameters
        ----------
        d_y : array_like of shape (..., O)
            Gradient of the loss with respect to that forward's output.

        Returns
        -------
        dx : ndarray, the shape of that forward's ``x``

        Notes
        -----
        Parameter gradients are *added* into ``grads``; the saved input is consumed.

        Raises
        ------
        RuntimeError
            If there was no training-mode forward since the last backward.
        ValueError
            If ``d_y`` does not have the output's shape.
        """
        where = "Linear.backward"
        if self._x is None:
            raise RuntimeError(
                f"{where}: no training-mode forward to differentiate; call forward in "
                "training mode (fc.train()) before each backward"
            )
        x2, x_shape = self._x
        dy = as_real_array(where, "d_y", d_y, self.dtype)
        check_shape(where, "d_y", dy, x_shape[:-1] + (self.out_features,))
        dy2 = dy.reshape(-1, self.out_features)
        self._dw += dy2.T @ x2
        if self._db is not None:
            self._db += dy2.sum(axis=0)
        self._x = None
        return (dy2 @ self._w).reshape(x_shape)
