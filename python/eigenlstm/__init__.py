"""eigenlstm: a fast CPU LSTM with torch.nn.LSTM's interface, for NumPy.

The math runs in a C++17 Eigen engine (``eigenlstm._core``); this package holds the modules,
their validation, the functional single-layer API and the training loop.
"""

from . import functional
from ._core import get_num_threads, set_num_threads
from .lstm import LSTM
from .module import Module
from .runtime import config, get_flush_denormal, set_flush_denormal, show_config

__all__ = [
    "LSTM", "Module", "functional", "get_num_threads", "set_num_threads",
    "config", "show_config", "set_flush_denormal", "get_flush_denormal",
]
__version__ = "0.1.0"

# Training layer: layers on top of the LSTM, losses, optimizers, the fit loop and checkpoints.
from . import losses, nn, optim
from .callbacks import Callback, EarlyStopping, History
from .checkpoint import load, save
from .linear import Linear
from .losses import cross_entropy, mse_loss
from .model import LSTMModel
from .optim import SGD, Adam, AdamW, CosineAnnealingLR, StepLR, clip_grad_norm

__all__ += [
    "Linear", "LSTMModel", "History", "Callback", "EarlyStopping", "save", "load",
    "losses", "nn", "optim", "mse_loss", "cross_entropy",
    "SGD", "Adam", "AdamW", "clip_grad_norm", "StepLR", "CosineAnnealingLR",
]

# Reliability: a callback that checkpoints at epoch ends (composes with fit(resume=True)).
from .callbacks import ModelCheckpoint

__all__ += ["ModelCheckpoint"]

# Interop: Keras-style stacks, and moving models in and out (ONNX, Keras). The onnx and h5py
# packages are imported only when a function needs them.
from . import keras, onnx
from .sequential import Sequential

__all__ += ["Sequential", "keras", "onnx"]
