"""The base class of eigenlstm's layers: mode, parameters and their gradients.

A module exposes its parameters as torch does: ``named_parameters()`` yields
:class:`~eigenlstm.nn.Parameter` arrays (with ``grad``) that optimizers update in place; after
an update the optimizer calls ``params_updated()`` so that the module can refresh anything
derived from its parameters (the engine's packed weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .parameter import Parameter

__all__ = ["Module", "eval_in_batches"]


class Module:
    """Base class with torch-like ``train``/``eval``/``zero_grad``/state-dict methods."""

    training: bool = True

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __init_subclass__(cls, **kwargs):
        # Calling a module runs its class's forward. A class that defines forward gets it as
        # __call__ itself, so a call is one Python frame, not two: the generic __call__ above
        # (for classes that define neither) costs 0.7 us, a twentieth of the seed model's
        # whole inference call (bench/README.md). Unlike torch, a forward assigned to an
        # instance is not what calling that instance runs.
        super().__init_subclass__(**kwargs)
        if "forward" not in cls.__dict__:
            return
        for k in cls.__mro__:  # a __call__ written by this class or a base wins
            if k is Module:
                break
            call = vars(k).get("__call__")
            if call is not None and call is not vars(k).get("forward"):
                return
        cls.__call__ = cls.forward

    # ---- mode ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (forward keeps what backward needs; dropout is active)."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode (the fast inference path: forward keeps nothing)."""
        return self.train(False)

    def children(self) -> list[Module]:
        """Direct sub-modules, in registration order."""
        return [v for v in vars(self).values() if isinstance(v, Module)]

    # ---- parameters --------------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """``(name, Parameter)`` pairs, named as ``state_dict()`` names them, as torch's.

        The parameters are the module's own arrays (not copies): ``p.grad`` is the gradient
        by the same name. Writes into them in place (``p[...] = x``, ``p += x``) reach the
        module; see :class:`~eigenlstm.nn.Parameter`.
        """
        for name, child in self._named_children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> Iterator[Parameter]:
        """The parameters, as torch's ``parameters()``: pass them to an optimizer.

        Examples
        --------
        >>> import eigenlstm as el
        >>> model = el.LSTMModel(3, 8, 1, seed=0)
        >>> opt = el.optim.Adam(model.parameters(), lr=1e-3)
        >>> [p.shape for p in model.parameters()]
        [(32, 3), (32, 8), (32,), (32,), (1, 8), (1,)]
        """
        for _, p in self.named_parameters():
            yield p

    def params_updated(self) -> None:
        """Tell the module its parameters' memory was written (through ``Parameter.writable()``
        or ``flat_buffers()``); a parameter's own writes call it themselves."""
        for child in self.children():
            child.params_updated()

    def zero_grad(self) -> None:
        """Set every gradient to zero (backward adds into gradients)."""
        for child in self.children():
            child.zero_grad()

    def state_dict(self) -> dict[str, np.ndarray]:
        """A dict of copies of the parameters, keyed as torch keys them."""
        out: dict[str, np.ndarray] = {}
        for name, child in self._named_children():
            for key, value in child.state_dict().items():
                out[f"{name}.{key}"] = value
        return out

    def load_state_dict(self, state_dict) -> None:
        """Replace the parameters from a dict with exactly the keys of ``state_dict()``.

        Values may be anything ``np.asarray`` accepts (torch tensors included) and are
        converted to the module's dtype. All or nothing: every key, shape and dtype is checked
        before anything is written, and a failure leaves the module unchanged.

        Raises
        ------
        ValueError
            On missing or unexpected keys, or a value of the wrong shape.
        TypeError
            On a value that does not hold real numbers.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(
                f"{type(self).__name__}.load_state_dict: state_dict must be a mapping, "
                f"got {type(state_dict).__name__}"
            )
        commit = self._prepare_load(dict(state_dict), f"{type(self).__name__}.load_state_dict", "")
        commit()

    def get_extra_state(self) -> dict[str, Any]:
        """State that is not a parameter (the dropout stream), JSON-ready, keyed like state_dict.

        Checkpoints and the trainer's rollback save it with the weights, so that a model
        restored from them draws the same dropout masks as the original would have.
        """
        out: dict[str, Any] = {}
        for name, child in self._named_children():
            for key, value in child.get_extra_state().items():
                out[f"{name}.{key}"] = value
        return out

    def set_extra_state(self, state) -> None:
        """Restore what ``get_extra_state()`` returned; all or nothing.

        Raises
        ------
        ValueError
            On missing or unexpected keys, or a value that does not fit.
        """
        where = f"{type(self).__name__}.set_extra_state"
        if not hasattr(state, "items"):
            raise TypeError(f"{where}: state must be a mapping, got {type(state).__name__}")
        expected = set(self.get_extra_state())
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(
                f"{where}: state must have keys {sorted(expected)}, got missing "
                f"{missing} and unexpected {extra}"
            )
        commits = [
            child._prepare_extra_state(  # noqa: SLF001 - a hook of this class
                {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}, where
            )
            for name, child in self._named_children()
        ]
        for commit in commits:
            commit()

    def _prepare_extra_state(self, state: dict, where: str):
        """Check ``state`` (keys relative to this module) and return a function that applies it."""
        commits = [
            child._prepare_extra_state(  # noqa: SLF001 - a hook of this class
                {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}, where
            )
            for name, child in self._named_children()
        ]

        def commit():
            for c in commits:
                c()

        return commit

    def _prepare_load(self, state: dict, where: str, prefix: str):
        """Check ``state`` (keys relative to ``prefix``) and return a function that applies it."""
        children = self._named_children()
        known = tuple(f"{name}." for name, _ in children)
        extra = sorted(prefix + k for k in state if not k.startswith(known))
        if extra:
            raise ValueError(f"{where}: unexpected keys {extra}")
        commits = []
        for name, child in children:
            sub = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            commits.append(child._prepare_load(sub, where, f"{prefix}{name}."))  # noqa: SLF001

        def commit():
            for c in commits:
                c()

        return commit

    def _named_children(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]


def eval_in_batches(
    module, x: np.ndarray, batch_size: int, lengths=None, state=None, return_state: bool = False
) -> list:
    """``module``'s evaluation-mode outputs for ``x``, ``batch_size`` samples per call.

    ``lengths`` (if given) is sliced with ``x`` and passed as ``lengths=``. With ``state``
    (a pair of arrays whose axis 1 is the batch, as an LSTM's ``(h0, c0)``, sliced with ``x``)
    or ``return_state``, each call gets ``state=`` and ``return_state=True`` and returns
    ``(y, (h_n, c_n))``. The module's mode is restored afterwards, whatever happens. Returns the
    outputs of the calls, in order (none for an empty ``x``): the predict methods and the
    trainer's evaluation share this loop.
    """
    N = x.shape[0]
    bs = max(batch_size, 1)
    was_training = module.training
    module.eval()
    try:
        outputs = []
        for i in range(0, N, bs):
            rows = slice(i, i + bs)
            kw: dict[str, Any] = {}
            if lengths is not None:
                kw["lengths"] = lengths[rows]
            if state is not None:
                kw["state"] = (state[0][:, rows], state[1][:, rows])
            if state is not None or return_state:
                kw["return_state"] = True
            outputs.append(module(x[rows], **kw))
        return outputs
    finally:
        module.train(was_training)
