"""What this process runs on: the engine's instruction-set level, its build, and process-wide
settings (threads, denormal flushing).

The C++ engine holds one back end per instruction-set level (``generic``, ``avx2``,
``avx512``) and loads the best one that the CPU and the operating system support when it is
first used; within it, the int8 and bfloat16 kernels of ``quantize`` also use AVX512_VNNI,
AVX512_BF16 and AMX where the CPU has them. The environment variable ``EIGENLSTM_MAX_ISA``
caps the level and those features (generic < avx2 < avx512 < avx512_vnni < avx512_bf16 <
avx512_amx < native), as oneDNN's ``ONEDNN_MAX_CPU_ISA`` does; it is read once per process.
"""

from __future__ import annotations

import platform
import sys
from typing import Any, TextIO

from . import _core
from ._version import __version__

__all__ = ["config", "show_config", "set_flush_denormal", "get_flush_denormal"]


def config() -> dict[str, Any]:
    """The engine's build and the level it runs at, as a dict.

    Returns
    -------
    dict
        ``version``: eigenlstm's version; ``isa``: the instruction-set level in use;
        ``isa_available``: the levels this CPU and this build can run, low to high;
        ``isa_features``: the features beyond the level in use (``avx512_vnni``,
        ``avx512_bf16``, ``avx512_amx``); ``quantized_kernels``: the kernel each ``quantize`` dtype runs;
        ``compiler``, ``eigen``, ``simd`` (Eigen's instruction sets) and ``openmp`` (the
        ``_OPENMP`` date, 0 without OpenMP) of the back end in use; ``library``: its file;
        ``num_threads``; ``flush_denormal``; ``machine``: the CPU architecture.

    Raises
    ------
    ValueError
        If ``EIGENLSTM_MAX_ISA`` holds an unknown level (the message names the valid ones).

    Examples
    --------
    >>> import eigenlstm as el
    >>> cfg = el.config()
    >>> cfg["isa"] in cfg["isa_available"]
    True
    """
    build = _core.build_info()
    return {
        "version": __version__,
        "isa": build["isa"],
        "isa_available": list(_core.isa_available()),
        "isa_features": list(_core.isa_features()),
        "quantized_kernels": {p: _core.quantized_kernel(p) for p in ("int8", "bfloat16")},
        "compiler": build["compiler"],
        "eigen": build["eigen"],
        "simd": build["simd"],
        "openmp": build["openmp"],
        "library": build["library"],
        "num_threads": _core.get_num_threads(),
        "flush_denormal": _core.get_flush_denormal(),
        "machine": platform.machine(),
    }


def show_config(file: TextIO | None = None) -> None:
    """Print :func:`config` readably, as ``numpy.show_config()`` does.

    Parameters
    ----------
    file : text stream, optional
        Where to print (``sys.stdout`` when None).
    """
    cfg = config()
    out = sys.stdout if file is None else file
    openmp = f"yes ({cfg['openmp']})" if cfg["openmp"] else "no"
    rows = [
        ("version", cfg["version"]),
        (
            "isa",
            f"{cfg['isa']} (available: {', '.join(cfg['isa_available'])}; "
            "cap with EIGENLSTM_MAX_ISA)",
        ),
        ("isa_features", ", ".join(cfg["isa_features"]) or "none"),
        (
            "quantized",
            ", ".join(f"{p}: {k}" for p, k in cfg["quantized_kernels"].items()),
        ),
        ("machine", cfg["machine"]),
        ("compiler", cfg["compiler"]),
        ("eigen", f"{cfg['eigen']} ({cfg['simd']})"),
        ("openmp", openmp),
        ("num_threads", cfg["num_threads"]),
        ("flush_denormal", cfg["flush_denormal"]),
        ("library", cfg["library"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("eigenlstm", file=out)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=out)


def set_flush_denormal(mode: bool) -> bool:
    """Flush subnormal numbers to zero in the engine's arithmetic, like
    ``torch.set_flush_denormal``.

    Subnormal values (below about 1.2e-38 in float32) take a slow microcode path on x86: a
    layer whose states decay towards zero can run many times slower. With the mode on, every
    compute thread sets the CPU's flush-to-zero and denormals-are-zero bits for the duration
    of each engine call (the caller's own mode is left untouched). Off by default, which keeps
    IEEE results. Process-wide.

    Parameters
    ----------
    mode : bool
        True to flush, False for IEEE subnormals.

    Returns
    -------
    bool
        True if this CPU supports the mode (x86-64); False otherwise, and nothing changes.

    Raises
    ------
    TypeError
        If ``mode`` is not a bool.
    """
    if not isinstance(mode, bool):
        raise TypeError(f"set_flush_denormal: mode must be a bool, got {type(mode).__name__}")
    return _core.set_flush_denormal(mode)


def get_flush_denormal() -> bool:
    """Whether :func:`set_flush_denormal` is on."""
    return _core.get_flush_denormal()
