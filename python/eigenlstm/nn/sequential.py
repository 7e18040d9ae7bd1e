"""``eigenlstm.Sequential``: batch-first LSTM and Linear layers applied one after another.

The container that Keras models of ``LSTM``, ``Bidirectional(LSTM)`` and ``Dense`` layers load
into (see keras.py); inference only. The layers themselves are lstm.py and linear.py.
"""
# Sizes: N batch, T time steps, I input size, D directions, H_out LSTM output size, O outputs.

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._validation import as_real_array, check_positive_int
from .linear import Linear
from .lstm import LSTM
from .module import Module, eval_in_batches

__all__ = ["Sequential"]


class Sequential(Module):
    r"""A stack of batch-first ``LSTM`` and ``Linear`` layers, as Keras's ``Sequential`` runs them.

    Parameters
    ----------
    layers : sequence of LSTM or Linear
        Applied in order. Every LSTM must be ``batch_first=True`` and all must share a dtype.
    return_sequences : sequence of bool, optional
        One flag per LSTM, in order (Keras's ``return_sequences``). True: the LSTM passes on its
        whole output, ``(N, T, D*H_out)``. False: it passes on the final hidden state of its
        last layer, both directions concatenated, ``(N, D*H_out)``. Default: True for all.

    Notes
    -----
    With ``return_sequences=False`` a unidirectional LSTM gives its output at the last step;
    a bidirectional one gives the forward direction's last step and the reverse direction's
    *first* step (its final state, after reading the whole sequence backwards), which is what
    ``keras.layers.Bidirectional(LSTM(...))`` returns. ``el.LSTMModel`` instead takes both halves
    at the last step, as torch code written ``out[:, -1, :]`` does.

    A Linear layer acts on the last axis, so after a sequence it is applied at every step.

    ``state_dict()`` keys are those of ``torch.nn.Sequential``: ``"0.weight_ih_l0"``,
    ``"1.weight"``, ...

    Examples
    --------
    >>> import numpy as np, eigenlstm as el
    >>> model = el.Sequential([el.LSTM(3, 8, batch_first=True, seed=0), el.Linear(8, 2, seed=1)],
    ...                       return_sequences=[False])
    >>> model.predict(np.zeros((4, 5, 3))).shape
    (4, 2)
    """

    def __init__(
        self, layers: Sequence[Module], return_sequences: Sequence[bool] | None = None
    ) -> None:
        where = "Sequential"
        given = list(layers)
        if not given:
            raise ValueError(f"{where}: layers must hold at least one layer, got none")
        for k, layer in enumerate(given):
            if not isinstance(layer, (LSTM, Linear)):
                raise TypeError(
                    f"{where}: layers[{k}] must be an LSTM or a Linear, got {type(layer).__name__}"
                )
        checked: list[LSTM | Linear] = [g for g in given if isinstance(g, (LSTM, Linear))]
        layers = checked
        n_lstm = 0
        for k, layer in enumerate(layers):
            if isinstance(layer, LSTM):
                n_lstm += 1
                if not layer.batch_first:
                    raise ValueError(
                        f"{where}: layers[{k}] must be an LSTM with batch_first=True, got batch_first=False"
                    )
            if layer.dtype != layers[0].dtype:
                raise TypeError(
                    f"{where}: layers[{k}] must have dtype {layers[0].dtype}, got {layer.dtype}"
                )
        flags = [True] * n_lstm if return_sequences is None else [bool(v) for v in return_sequences]
        if len(flags) != n_lstm:
            raise ValueError(
                f"{where}: return_sequences must have one flag per LSTM ({n_lstm}), got {len(flags)}"
            )
        # Sizes must chain: each layer's input is the previous layer's output features.
        features = None
        for k, layer in enumerate(layers):
            size = layer.input_size if isinstance(layer, LSTM) else layer.in_features
            if features is not None and size != features:
                raise ValueError(
                    f"{where}: layers[{k}] must take {features} input features, got {size}"
                )
            features = (
                layer.num_directions * layer.output_size
                if isinstance(layer, LSTM)
                else layer.out_features
            )
        self.layers: list[LSTM | Linear] = layers
        self.return_sequences: list[bool] = flags
        self.dtype = layers[0].dtype
        self.input_size = (
            layers[0].input_size if isinstance(layers[0], LSTM) else layers[0].in_features
        )
        self.output_size = features
        self.training = True

    def __repr__(self) -> str:
        lines = []
        flags = iter(self.return_sequences)
        for k, layer in enumerate(self.layers):
            extra = f"  return_sequences={next(flags)}" if isinstance(layer, LSTM) else ""
            lines.append(f"  ({k}): {layer!r}{extra}")
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    def children(self) -> list[Module]:
        return list(self.layers)

    def _named_children(self):
        return [(str(k), layer) for k, layer in enumerate(self.layers)]

    def forward(self, x) -> np.ndarray:
        """Apply the layers in order.

        Parameters
        ----------
        x : array_like of shape (N, T, I)

        Returns
        -------
        ndarray of shape (N, T, O) if the last LSTM returns sequences, else (N, O)

        Raises
        ------
        ValueError
            If ``x`` is not 3-D with ``I`` features, or a Linear layer comes before the first
            LSTM and ``x`` is not what it accepts.
        TypeError
            If ``x`` does not hold real numbers.
        """
        where = "Sequential.forward"
        x = as_real_array(where, "x", x, self.dtype)
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"{where}: x must have shape (N, T, {self.input_size}), got {x.shape}")
        flags = iter(self.return_sequences)
        for layer in self.layers:
            if isinstance(layer, LSTM):
                out, (h_n, _) = layer(x)
                if next(flags):
                    x = out
                else:
                    # h_n is (D*L, N, H_out), layer-major: the last D rows are the last layer's
                    # directions, concatenated on the feature axis as Keras does: (N, D*H_out).
                    D = layer.num_directions
                    x = np.ascontiguousarray(h_n[-D:].transpose(1, 0, 2)).reshape(h_n.shape[1], -1)
            else:
                x = layer(x)
        return x

    def predict(self, x, batch_size: int | None = None) -> np.ndarray:
        """Outputs for ``x`` in evaluation mode, ``batch_size`` sequences at a time.

        Parameters
        ----------
        x : array_like of shape (N, T, I)
        batch_size : int, optional
            Sequences per forward call (all at once when None).

        Returns
        -------
        ndarray of shape (N, O) or (N, T, O)
        """
        where = "Sequential.predict"
        x = as_real_array(where, "x", x, self.dtype)
        if x.ndim != 3:
            raise ValueError(f"{where}: x must have shape (N, T, {self.input_size}), got {x.shape}")
        N = x.shape[0]
        bs = N if batch_size is None else check_positive_int(where, "batch_size", batch_size)
        parts = eval_in_batches(self, x, bs)
        if parts:
            return np.concatenate(parts)
        return self.forward(x)  # N = 0: the forward gives the empty output of the right shape
