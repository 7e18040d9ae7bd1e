"""Runs the C++ engine tests through ctest, in the optimized build shared with
tests/test_packaging.py (the `engine_release_build` fixture: one CMake build per session).

ctest runs test_engine once per ISA level this CPU can run, and tests/cpp/test_no_alloc.cpp,
which counts every heap allocation of the process with its own malloc and operator new (glibc
only). The AddressSanitizer + UndefinedBehaviorSanitizer build of the same tests is a second
compile of the engine: .ci/run does it, with clang, so that this suite builds the engine once.
"""

import platform

import pytest

from cmake_build import run
from eigenlstm import _core

pytestmark = pytest.mark.slow  # a CMake build of the engine, its tests and every back end


def test_cpp_engine_tests_pass_under_ctest(engine_release_build):
    proc = run(["ctest", "--output-on-failure"], cwd=engine_release_build)
    assert "100% tests passed" in proc.stdout
    # every level this CPU runs really ran (ctest lists "Test #k: engine_<level> ... Passed")
    for level in _core.isa_available():
        assert any(
            f"engine_{level} " in line and "Passed" in line for line in proc.stdout.splitlines()
        ), f"engine_{level} did not pass"
    if platform.libc_ver()[0] == "glibc":
        assert "no_alloc_after_warmup" in proc.stdout, "the allocation-counting test did not run"
