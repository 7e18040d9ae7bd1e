"""Configure, build and install this repository's CMake project from the tests.

Shared by tests/test_cpp.py (ctest in an optimized and a sanitized build) and
tests/test_packaging.py (a C++ consumer of the installed library), so that one optimized
build serves both (the `engine_release_build` fixture in conftest.py).
"""

import pathlib
import subprocess
import sys

from eigenlstm import _core

__all__ = ["ROOT", "build_engine", "run"]

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    """Run `cmd`; fail the test with the tail of its output unless it exits 0."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def build_engine(build, *, sanitize):
    """Configure and build the engine with its C++ tests (Ninja, 2 jobs) into `build`.

    Parameters
    ----------
    build : pathlib.Path
        Build directory (created).
    sanitize : bool
        AddressSanitizer + UndefinedBehaviorSanitizer (RelWithDebInfo) instead of Release, with
        the back end of the level in use only (a sanitized Eigen build is slow to compile).

    Returns
    -------
    build : pathlib.Path
    """
    run([
        "cmake", "-S", ROOT, "-B", build, "-G", "Ninja",
        "-DEIGENLSTM_BUILD_TESTS=ON",
        f"-DEIGENLSTM_SANITIZE={'ON' if sanitize else 'OFF'}",
        f"-DCMAKE_BUILD_TYPE={'RelWithDebInfo' if sanitize else 'Release'}",
        f"-DPython_EXECUTABLE={sys.executable}",
        *([f"-DEIGENLSTM_ISA_LEVELS={_core.isa()}"] if sanitize else []),
    ])
    run(["cmake", "--build", build, "-j", "2"])
    return build
