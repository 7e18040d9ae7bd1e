"""``eigenlstm.LSTMModel``: the seed's model (batch-first LSTM, then Linear on the last step).

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
    check_positive_int,
    check_seed,
    resolve_dtype,
)
from .linear import Linear
from .lstm import LSTM
from .module import Module, eval_in_batches

__all__ = ["LSTMModel"]


class LSTMModel(Module):
    r"""A batch-first LSTM followed by a Linear layer on the last time step (the seed's model).

    Parameters
    ----------
    input_size : int
        Features per time step, ``I``.
    hidden_size : int
        LSTM hidden size, ``H``.
    output_size : int
        Outputs per sequence, ``O`` (regression targets or class logits).
    num_layers : int, default 1
        Stacked LSTM layers.
    dropout : float, default 0.0, keyword-only
        Dropout between LSTM layers in training mode (as torch.nn.LSTM's ``dropout``).
    bidirectional : bool, default False, keyword-only
        Bidirectional LSTM; the Linear layer then takes ``2H`` features.
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
            dtype=self.dtype,
            seed=lstm_seed,
        )
        D = 2 if self.lstm.bidirectional else 1
        self.fc = Linear(D * self.hidden_size, self.output_size, dtype=self.dtype, seed=fc_seed)
        self.metadata: dict = {}
        # (N, L, last-step index) of the last training-mode forward
        self._last: tuple[int, int, int | np.ndarray] | None = None

    @property
    def dropout(self) -> float:
        return self.lstm.dropout

    @property
    def bidirectional(self) -> bool:
        return self.lstm.bidirectional

    def config(self) -> dict:
        """The constructor arguments, JSON-ready; ``LSTMModel(**config)`` rebuilds the model."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "output_size": self.output_size,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "bidirectional": self.bidirectional,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        return f"LSTMModel(\n  (lstm): {self.lstm!r}\n  (fc): {self.fc!r}\n)"

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

    def forward(self, x, *, lengths=None) -> np.ndarray:
        """Map sequences to one output row each.

        Parameters
        ----------
        x : array_like of shape (N, L, I)
        lengths : array_like of int of shape (N,), optional
            Valid steps of each right-padded sequence, in [1, L]; the output is taken at
            step ``lengths[n] - 1`` (see Notes of the class).

        Returns
        -------
        y : ndarray of shape (N, O)

        Raises
        ------
        ValueError
            On a wrong shape of ``x`` or ``lengths``, no time steps (L = 0), or a length
            outside [1, L].
        TypeError
            On non-real ``x`` or non-integer ``lengths``.
        """
        where = "LSTMModel.forward"
        x = self._check_x(where, x)
        if lengths is not None:
            lengths = check_lengths(where, "lengths", lengths, x.shape[0], x.shape[1], minimum=1)
        if not self.training:  # inference: one engine call, no (N, L, D*H) output array
            self._last = None
            return self.lstm.forward_last(x, self.fc.weight, self.fc.bias, lengths=lengths)
        N, L, _ = x.shape
        out, _ = self.lstm(x, lengths=lengths)
        if lengths is None:  # the common case: a view, no gather
            idx = L - 1
            last = out[:, -1, :]
        else:
            idx = lengths - 1
            last = out[np.arange(N), idx, :]
        y = self.fc(last)
        self._last = (N, L, idx)
        return y

    def backward(self, d_y) -> np.ndarray:
        """Backpropagate ``d_y`` through the last training-mode forward.

        Parameters
        ----------
        d_y : array_like of shape (N, O)
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
        """
        if self._last is None:
            raise RuntimeError(
                "LSTMModel.backward: no training-mode forward to differentiate; call the model "
                "in training mode (model.train()) before each backward"
            )
        N, L, idx = self._last
        d_last = self.fc.backward(d_y)
        d_out = np.zeros((N, L, d_last.shape[1]), dtype=self.dtype)
        if isinstance(idx, int):
            d_out[:, idx, :] = d_last  # forward: last = out[:, L-1, :]
        else:
            d_out[np.arange(N), idx, :] = d_last  # forward: last = out[n, idx[n], :]
        dx, _ = self.lstm.backward(d_out)
        self._last = None
        return dx

    def predict(self, x, batch_size: int | None = None, *, lengths=None) -> np.ndarray:
        """Outputs for ``x`` in evaluation mode (no dropout, nothing kept for backward).

        Parameters
        ----------
        x : array_like of shape (N, L, I)
        batch_size : int, optional
            Sequences per forward call (all at once when None).
        lengths : array_like of int of shape (N,), optional

        Returns
        -------
        ndarray of shape (N, O)

        Raises
        ------
        ValueError
            On a wrong shape of ``x`` or ``lengths``.

        Examples
        --------
        >>> import numpy as np, eigenlstm as el
        >>> model = el.LSTMModel(3, 8, 2, seed=0)
        >>> model.predict(np.zeros((100, 5, 3)), batch_size=32).shape
        (100, 2)
        """
        where = "LSTMModel.predict"
        x = self._check_x(where, x)
        N, L, _ = x.shape
        if lengths is not None:
            lengths = check_lengths(where, "lengths", lengths, N, L, minimum=1)
        bs = N if batch_size is None else check_positive_int(where, "batch_size", batch_size)
        parts = eval_in_batches(self, x, bs, lengths)
        return np.concatenate(parts) if parts else np.zeros((0, self.output_size), self.dtype)
