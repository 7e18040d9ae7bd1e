"""Configure, build and install this repository's CMake project from the tests.

Shared by tests/test_cpp.py (ctest) and tests/test_packaging.py (a C++ consumer of the installed
library), so that one optimized build serves both (the `engine_release_build` fixture in
conftest.py).
"""

import pathlib
import subprocess
import sys

__all__ = ["ROOT", "build_engine", "run"]

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    """Run `cmd`; fail the test with the tail of its output unless it exits 0."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def build_engine(build):
    """Configure and build the engine (Release, every ISA level) with its C++ tests (Ninja,
    2 jobs) into `build` (created); returns `build`."""
    run(
        [
            "cmake",
            "-S",
            ROOT,
            "-B",
            build,
            "-G",
            "Ninja",
            "-DEIGENLSTM_BUILD_TESTS=ON",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
    )
    run(["cmake", "--build", build, "-j", "2"])
    return build
