"""``eigenlstm.LSTMModel``: the seed's model (batch-first LSTM, then Linear on the last step,
or on every step with ``many_to_many=True``).

Forward, backward and batched prediction of the composite; the layers are lstm.py and
linear.py. Training it is ``eigenlstm.Trainer``'s job (training/), saving it ``eigenlstm.save``'s
(io/).
"""
# Sizes: N batch, L time steps, I input size, H hidden size, D directions, O output size.

from __future__ import annotations

import numpy as np

from .._validation import (
    as_real_array,
    check_lengths,
    check_pair,
    check_positive_int,
    check_seed,
    check_shape,
    resolve_dtype,
)
from .linear import Linear
from .lstm import LSTM, variant_options
from .module import Module, eval_in_batches
from .stream import Stream, check_streamable

__all__ = ["LSTMModel"]


class LSTMModel(Module):
    r"""A batch-first LSTM followed by a Linear layer on the last time step (the seed's model),
    or on every step (``many_to_many=True``).

    Parameters
    ----------
    input_size : int
        Features per time step, ``I``.
    hidden_size : int
        LSTM hidden size, ``H``.
    output_size : int
        Outputs per sequence (per step with ``many_to_many``), ``O`` (regression targets or
        class logits).
    num_layers : int, default 1
        Stacked LSTM layers.
    dropout : float, default 0.0, keyword-only
        Dropout between LSTM layers in training mode (as torch.nn.LSTM's ``dropout``).
    bidirectional : bool, default False, keyword-only
        Bidirectional LSTM; the Linear layer then takes ``2H`` features.
    many_to_many : bool, default False, keyword-only
        Apply the Linear layer to the output of every step, giving ``(N, L, O)``: a per-step
        model (a language model, a sequence tagger), the one ``Trainer.fit(..., tbptt=k)``
        trains. False keeps the seed's head on the last step, ``(N, O)``.
    cifg, peepholes, cell_clip, recurrent_dropout, weight_drop, zoneout, layer_norm : keyword-only
        Cell variants of the LSTM, as :class:`~eigenlstm.nn.LSTM`'s (``proj_clip`` needs a
        projection, which this model does not have).
    dtype : {np.float32, np.float64}, keyword-only
    seed : int, optional, keyword-only
        Seeds the initial weights and the dropout stream (fresh entropy when None).

    Attributes
    ----------
    lstm : LSTM
        ``LSTM(I, H, num_layers, batch_first=True, ...)``.
    fc : Linear
        ``Linear(D*H, O)``.
    metadata : dict
        Free-form JSON-ready data saved with checkpoints (the CLI keeps its scaling there).

    Notes
    -----
    .. math::
        \text{out} = \mathrm{LSTM}(x), \qquad y = \text{out}[:, \ell - 1, :]\, W^T + b

    where :math:`\ell = L` without ``lengths``, and :math:`\ell = \text{lengths}[n]` (the
    sequence's last valid step) with them. For a bidirectional LSTM this is torch's
    ``out[:, -1, :]`` (resp. the padded output at index ``length-1`` after
    ``pack_padded_sequence``/``pad_packed_sequence``): the forward half has read the whole
    sequence and the reverse half only its last step, exactly as the seed's model behaves.

    With ``many_to_many=True`` the head reads every step,

    .. math::
        y[:, t, :] = \text{out}[:, t, :]\, W^T + b, \qquad t = 0, \dots, L - 1,

    as ``fc(out)`` on torch's ``nn.LSTM`` output does; past a sequence's length the LSTM's
    output is 0 (``pad_packed_sequence``), so ``y`` there is the bias ``b``: losses read only
    the valid steps (:func:`~eigenlstm.nn.losses.sequence_loss`).

    ``state_dict()`` keys are those of the seed's PyTorch ``LSTMModel`` (``lstm.weight_ih_l0``,
    ..., ``fc.weight``, ``fc.bias``), so weights load both ways with ``load_state_dict``.

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> model = el.LSTMModel(input_size=10, hidden_size=20, output_size=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((5, 7, 10))
    >>> model(x).shape
    (5, 2)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        num_layers: int = 1,
        *,
        dropout: float = 0.0,
        bidirectional: bool = False,
        many_to_many: bool = False,
        cifg: bool = False,
        peepholes: bool = False,
        cell_clip: float | None = None,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        layer_norm: bool = False,
        dtype=np.float32,
        seed: int | None = None,
    ) -> None:
        where = "LSTMModel"
        self.input_size = check_positive_int(where, "input_size", input_size)
        self.hidden_size = check_positive_int(where, "hidden_size", hidden_size)
        self.output_size = check_positive_int(where, "output_size", output_size)
        self.num_layers = check_positive_int(where, "num_layers", num_layers)
        self.dtype = resolve_dtype(where, dtype)
        self.seed = check_seed(where, seed)
        if not isinstance(many_to_many, (bool, np.bool_)):
            raise TypeError(
                f"{where}: many_to_many must be a bool, got {type(many_to_many).__name__} "
                f"{many_to_many!r}"
            )
        self.many_to_many = bool(many_to_many)
        lstm_seed, fc_seed = (
            int(s >> np.uint64(1))
            for s in np.random.SeedSequence(self.seed).generate_state(2, np.uint64)
        )
        self.training = True
        self.lstm = LSTM(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            batch_first=True,
            dropout=dropout,
            bidirectional=bidirectional,
            cifg=cifg,
            peepholes=peepholes,
            cell_clip=cell_clip,
            recurrent_dropout=recurrent_dropout,
            weight_drop=weight_drop,
            zoneout=zoneout,
            layer_norm=layer_norm,
            dtype=self.dtype,
            seed=lstm_seed,
        )
        D = 2 if self.lstm.bidirectional else 1
        self.fc = Linear(D * self.hidden_size, self.output_size, dtype=self.dtype, seed=fc_seed)
        self.metadata: dict = {}
        # (N, L, last-step index) of the last training-mode forward; the index is None for a
        # per-step head, whose gradient is the whole (N, L, O)
        self._last: tuple[int, int, int | np.ndarray | None] | None = None

    @property
    def dropout(self) -> float:
        return self.lstm.dropout

    @property
    def bidirectional(self) -> bool:
        return self.lstm.bidirectional

    def config(self) -> dict:
        """The constructor arguments, JSON-ready; ``LSTMModel(**config)`` rebuilds the model.
        The cell variants and ``many_to_many`` appear only when set, so a plain model's config
        is what releases before them wrote and read."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "output_size": self.output_size,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "bidirectional": self.bidirectional,
            **({"many_to_many": True} if self.many_to_many else {}),
            **variant_options(self.lstm),
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        head = "  many_to_many=True\n" if self.many_to_many else ""
        return f"LSTMModel(\n  (lstm): {self.lstm!r}\n  (fc): {self.fc!r}\n{head})"

    def children(self) -> list[Module]:
        return [self.lstm, self.fc]

    def _named_children(self):
        return [("lstm", self.lstm), ("fc", self.fc)]

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Copies of the accumulated gradients, keyed like ``state_dict()``."""
        out = {f"lstm.{k}": v for k, v in self.lstm.grads.items()}
        out.update({f"fc.{k}": v for k, v in self.fc.grads.items()})
        return out

    # ---- compute ---------------------------------------------------------------------------
    def _check_x(self, where: str, x, name: str = "x") -> np.ndarray:
        x = as_real_array(where, name, x, self.dtype)
        shape = x.shape
        if len(shape) != 3 or shape[2] != self.input_size:
            raise ValueError(
                f"{where}: {name} must have shape (N, L, {self.input_size}) (batch, steps, input_size), "
                f"got {shape}"
            )
        if shape[1] == 0:
            raise ValueError(
                f"{where}: {name} must have at least one time step (the output is read at the "
                f"last step), got shape {shape}"
            )
        return x

    def _check_lengths(self, where: str, lengths, x_shape: tuple) -> np.ndarray:
        """``lengths`` for x of shape (N, L, I): in [1, L] for a head on the last valid step,
        in [0, L] for a per-step head, which reads no last step (an empty sequence keeps its
        state)."""
        N, L = x_shape[:2]
        return check_lengths(where, "lengths", lengths, N, L, minimum=0 if self.many_to_many else 1)

    def _check_state(self, where: str, state, N: int):
        """``state`` as the LSTM's (h0, c0): shapes (D*num_layers, N, H), the model's dtype."""
        check_pair(where, "state", "(h0, c0)", state)
        D = 2 if self.bidirectional else 1
        shape = (D * self.num_layers, N, self.hidden_size)
        pair = []
        for name, value in zip(("h0", "c0"), state):
            value = as_real_array(where, name, value, self.dtype)
            check_shape(where, name, value, shape)
            pair.append(value)
        return pair[0], pair[1]

    def forward(self, x, *, lengths=None, state=None, return_state: bool = False):
        """Map sequences to one output row each (one per step with ``many_to_many``).

        Parameters
        ----------
        x : array_like of shape (N, L, I)
        lengths : array_like of int of shape (N,), optional
            Valid steps of each right-padded sequence, in [1, L]; the output is taken at
            step ``lengths[n] - 1`` (see Notes of the class). In [0, L] with
            ``many_to_many``: a sequence of length 0 has no valid step and keeps ``state``.
        state : tuple (h0, c0), optional
            The LSTM's initial state, each of shape (D*num_layers, N, H) (zeros when omitted),
            for sequences that continue earlier ones (see also :meth:`stream`).
        return_state : bool, default False
            Also return the LSTM's final state.

        Returns
        -------
        y : ndarray of shape (N, O), or (N, L, O) with ``many_to_many``
        (h_n, c_n) : tuple of ndarray of shape (D*num_layers, N, H)
            Only with ``return_state=True``: the state after each sequence's last valid step.

        Raises
        ------
        ValueError
            On a wrong shape of ``x``, ``lengths`` or ``state``, no time steps (L = 0), or a
            length outside [1, L] ([0, L] with ``many_to_many``).
        TypeError
            On non-real ``x`` or ``state``, or non-integer ``lengths``.
        """
        where = "LSTMModel.forward"
        x = self._check_x(where, x)
        if lengths is not None:
            lengths = self._check_lengths(where, lengths, x.shape)
        if state is not None:
            state = self._check_state(where, state, x.shape[0])
        stateless = state is None and not return_state
        if not self.training and stateless and not self.many_to_many:
            self._last = None
            return self._forward_last(x, lengths)
        N, L, _ = x.shape
        out, final = self.lstm(x, state, lengths=lengths)
        if self.many_to_many:
            y = self.fc(out)  # Linear acts on the last axis: every step, (N, L, O)
            last = None
        else:
            y = self.fc(self._last_step(out, lengths))
            last = L - 1 if lengths is None else lengths - 1
        self._last = (N, L, last) if self.training else None
        return (y, final) if return_state else y

    def _forward_last(self, x, lengths):
        """Evaluation from zero states to the outputs: one engine call, no (N, L, D*H) output."""
        return self.lstm.forward_last(x, self.fc.weight, self.fc.bias, lengths=lengths)

    @staticmethod
    def _last_step(out: np.ndarray, lengths) -> np.ndarray:
        """``out[n, lengths[n] - 1]`` of an (N, L, F) output (the last step without lengths)."""
        if lengths is None:  # the common case: a view, no gather
            return out[:, -1, :]
        return out[np.arange(out.shape[0]), lengths - 1, :]

    def backward(self, d_y) -> np.ndarray:
        """Backpropagate ``d_y`` through the last training-mode forward.

        Parameters
        ----------
        d_y : array_like of shape (N, O), or (N, L, O) with ``many_to_many``
            Gradient of the loss with respect to the output.

        Returns
        -------
        dx : ndarray of shape (N, L, I)

        Raises
        ------
        RuntimeError
            If there was no training-mode forward since the last backward.
        ValueError
            If ``d_y`` has the wrong shape.

        Notes
        -----
        Parameter gradients are *added* into the layers' gradients (call ``zero_grad()``).
        No gradient flows into the initial ``state`` of the forward: a state passed in is a
        constant (truncated backpropagation through time carries states this way).
        """
        if self._last is None:
            raise RuntimeError(
                "LSTMModel.backward: no training-mode forward to differentiate; call the model "
                "in training mode (model.train()) before each backward"
            )
        N, L, idx = self._last
        d_head = self.fc.backward(d_y)
        if idx is None:
            d_out = d_head  # forward: y[:, t] = out[:, t] W^T + b at every step
        else:
            d_out = np.zeros((N, L, d_head.shape[1]), dtype=self.dtype)
            if isinstance(idx, int):
                d_out[:, idx, :] = d_head  # forward: last = out[:, L-1, :]
            else:
                d_out[np.arange(N), idx, :] = d_head  # forward: last = out[n, idx[n], :]
        dx, _ = self.lstm.backward(d_out)
        self._last = None
        return dx

    def predict(
        self,
        x,
        batch_size: int | None = None,
        *,
        lengths=None,
        state=None,
        return_state: bool = False,
    ):
        """Outputs for ``x`` in evaluation mode (no dropout, nothing kept for backward).

        Parameters
        ----------
        x : array_like of shape (N, L, I)
        batch_size : int, optional
            Sequences per forward call (all at once when None).
        lengths : array_like of int of shape (N,), optional
            As for :meth:`forward`.
        state : tuple (h0, c0), optional
            The LSTM's initial state, each of shape (D*num_layers, N, H) (zeros when omitted).
        return_state : bool, default False
            Also return the final state, ``(h_n, c_n)`` of the same shapes.

        Returns
        -------
        ndarray of shape (N, O) ((N, L, O) with ``many_to_many``), and ``(h_n, c_n)`` with
        ``return_state=True``

        Raises
        ------
        ValueError
            On a wrong shape of ``x``, ``lengths`` or ``state``.

        Examples
        --------
        >>> import numpy as np, eigenlstm as el
        >>> model = el.LSTMModel(3, 8, 2, seed=0)
        >>> model.predict(np.zeros((100, 5, 3)), batch_size=32).shape
        (100, 2)
        >>> y, (h_n, c_n) = model.predict(np.zeros((4, 5, 3)), return_state=True)
        >>> h_n.shape
        (1, 4, 8)
        """
        where = "LSTMModel.predict"
        x = self._check_x(where, x)
        N, L, _ = x.shape
        if lengths is not None:
            lengths = self._check_lengths(where, lengths, x.shape)
        bs = N if batch_size is None else check_positive_int(where, "batch_size", batch_size)
        pair = None if state is None else self._check_state(where, state, N)
        parts = eval_in_batches(self, x, bs, lengths, state=pair, return_state=return_state)
        outputs = parts if pair is None and not return_state else [y for y, _ in parts]
        per_sample = (L, self.output_size) if self.many_to_many else (self.output_size,)
        y = np.concatenate(outputs) if parts else np.zeros((0,) + per_sample, self.dtype)
        if not return_state:
            return y
        D = 2 if self.bidirectional else 1
        empty = np.zeros((D * self.num_layers, 0, self.hidden_size), self.dtype)
        h_n = np.concatenate([h for _, (h, _) in parts], axis=1) if parts else empty
        c_n = np.concatenate([c for _, (_, c) in parts], axis=1) if parts else empty.copy()
        return y, (h_n, c_n)

    def stream(self, batch_size: int) -> Stream:
        """A :class:`~eigenlstm.nn.Stream` of ``batch_size`` rows: the LSTM with the head
        applied at every step, its state kept between calls.

        ``stream(x)`` takes one step (N, I) and returns (N, O), or a chunk (N, T, I) and
        returns (N, T, O): what ``forward`` would give for sequences ending at each step.

        Raises
        ------
        ValueError
            For a bidirectional model (its reverse direction reads each sequence from its
            end), or a bad ``batch_size``.

        Examples
        --------
        >>> import numpy as np, eigenlstm as el
        >>> model = el.LSTMModel(3, 8, 2, seed=0).eval()
        >>> x = np.random.default_rng(0).standard_normal((4, 6, 3))
        >>> stream = model.stream(batch_size=4)
        >>> ys = [stream(x[:, t]) for t in range(6)]
        >>> bool(np.allclose(ys[-1], model(x), rtol=1e-6, atol=1e-6))
        True
        """
        batch_size = check_streamable("LSTMModel.stream", batch_size, self.bidirectional)
        return self.lstm.stream(batch_size, head=self.fc)
