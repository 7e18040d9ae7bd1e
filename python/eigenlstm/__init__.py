"""eigenlstm: a fast CPU LSTM with torch.nn.LSTM's interface, for NumPy.

The math runs in a C++17 Eigen engine (``eigenlstm._core``). The package is layered, each
layer importing only those below it (the contract is in pyproject.toml, checked by
import-linter):

- ``cli``: the ``eigenlstm`` command (train and forecast on a CSV series);
- ``forecast``: the forecasting job the command runs;
- ``training``: ``Trainer`` (the fit loop for any module), callbacks, History;
- ``io``: checkpoints, ONNX and Keras;
- ``nn`` (modules and losses), ``optim`` (optimizers, schedules, clipping), ``data``
  (bundled series, CSV reading, windows);
- ``functional`` (one LSTM layer on weights you own), ``runtime`` (build and CPU facts);
- ``_validation`` and ``_core``.
"""

from . import data, functional, io, nn, optim, training
from ._core import get_num_threads, set_num_threads
from ._version import __version__
from .io import keras, load, onnx, save
from .nn import (
    LSTM,
    Linear,
    LSTMModel,
    Module,
    Sequential,
    cross_entropy,
    losses,
    mse_loss,
    quantize,
    sequence_loss,
)
from .optim import SGD, Adam, AdamW, CosineAnnealingLR, StepLR, clip_grad_norm, clip_grad_norm_
from .runtime import config, get_flush_denormal, set_flush_denormal, show_config
from .training import Callback, EarlyStopping, History, ModelCheckpoint, ResetStates, Trainer

__all__ = [
    "__version__",
    # modules and the functional API
    "LSTM",
    "Linear",
    "LSTMModel",
    "Sequential",
    "Module",
    "functional",
    "nn",
    "quantize",
    # training
    "Trainer",
    "History",
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "ResetStates",
    "training",
    "losses",
    "mse_loss",
    "cross_entropy",
    "sequence_loss",
    "optim",
    "SGD",
    "Adam",
    "AdamW",
    "StepLR",
    "CosineAnnealingLR",
    "clip_grad_norm_",
    "clip_grad_norm",
    # files
    "save",
    "load",
    "io",
    "onnx",
    "keras",
    # data
    "data",
    # runtime
    "get_num_threads",
    "set_num_threads",
    "config",
    "show_config",
    "set_flush_denormal",
    "get_flush_denormal",
]
