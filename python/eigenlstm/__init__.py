"""eigenlstm: a fast CPU LSTM with torch.nn.LSTM's interface, for NumPy.

The math runs in a C++17 Eigen engine (``eigenlstm._core``); this package holds the modules,
their validation, the functional single-layer API and the training loop.
"""

from . import functional
from ._core import get_num_threads, set_num_threads
from .lstm import LSTM
from .module import Module

__all__ = ["LSTM", "Module", "functional", "get_num_threads", "set_num_threads"]
__version__ = "0.1.0"
