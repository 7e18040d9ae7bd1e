"""``eigenlstm.nn``: the layers under torch.nn's names, so ``import eigenlstm.nn as nn`` ports code.

``Module`` (module.py) is the base of ``LSTM`` (lstm.py, over the C++ engine), ``Linear``
(linear.py), the seed's ``LSTMModel`` (model.py) and the Keras-style stack ``Sequential``
(sequential.py), with ``Stream`` (stream.py) for stateful inference and ``quantize``
(quantized.py) for int8 and bfloat16 inference; ``losses`` holds the loss functions, which
return the loss and its gradient.
"""

from . import losses
from .linear import Linear
from .losses import cross_entropy, mse_loss, sequence_loss
from .lstm import LSTM
from .model import LSTMModel
from .module import Module
from .parameter import Parameter
from .quantized import QuantizedLinear, QuantizedLSTM, QuantizedLSTMModel, quantize
from .sequential import Sequential
from .stream import Stream

__all__ = [
    "Module",
    "Parameter",
    "LSTM",
    "Linear",
    "LSTMModel",
    "Sequential",
    "Stream",
    "QuantizedLSTM",
    "QuantizedLinear",
    "QuantizedLSTMModel",
    "quantize",
    "losses",
    "mse_loss",
    "cross_entropy",
    "sequence_loss",
]
