"""``eigenlstm.cli``: the ``eigenlstm`` command (``train`` and ``predict`` on a CSV series)."""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
