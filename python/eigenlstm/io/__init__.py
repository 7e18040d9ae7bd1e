"""``eigenlstm.io``: models in and out of files.

``save``/``load`` (checkpoint.py) write and read eigenlstm's own ``.npz`` checkpoints;
``onnx`` and ``keras`` export to and import from those formats, each verified against its
framework's runtime by the tests.
"""

from . import keras, onnx
from .checkpoint import FORMAT_VERSION, load, save

__all__ = ["save", "load", "FORMAT_VERSION", "onnx", "keras"]
