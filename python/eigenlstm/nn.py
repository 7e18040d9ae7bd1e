"""``eigenlstm.nn``: the layers under torch.nn's names, so ``import eigenlstm.nn as nn`` ports code.

Only re-exports (Module, LSTM, Linear, LSTMModel); the layers live in module.py, lstm.py,
linear.py and model.py.
"""

from .linear import Linear
from .lstm import LSTM
from .model import LSTMModel
from .module import Module

__all__ = ["Module", "LSTM", "Linear", "LSTMModel"]
