"""Builds the C++ engine tests with CMake and runs them through ctest.

Two builds: the optimized one with every ISA level's back end (shared with
tests/test_packaging.py through the `engine_release_build` fixture), whose tests ctest runs
once per level this CPU can run, and one under AddressSanitizer + UndefinedBehaviorSanitizer
with the back end of the level in use only. The optimized one also runs
tests/cpp/test_no_alloc.cpp, which counts every heap allocation of the process with its own
malloc and operator new (glibc only), and so cannot run under the sanitizers, whose runtime
owns malloc.
"""

import os
import platform

import pytest

from cmake_build import build_engine, run
from eigenlstm import _core


@pytest.mark.parametrize("sanitize", [False, True], ids=["release", "asan-ubsan"])
def test_cpp_engine_tests_pass_under_ctest(request, tmp_path, sanitize):
    if sanitize:
        build = build_engine(tmp_path / "build", sanitize=True)
    else:
        build = request.getfixturevalue("engine_release_build")
    env = dict(os.environ)
    # leak checks stay on; OpenMP's thread pool lives until exit, which LeakSanitizer accepts
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    proc = run(["ctest", "--output-on-failure"], cwd=build, env=env)
    assert "100% tests passed" in proc.stdout
    # every level this CPU runs really ran (ctest lists "Test #k: engine_<level> ... Passed")
    for level in _core.isa_available() if not sanitize else [_core.isa()]:
        assert any(f"engine_{level} " in line and "Passed" in line
                   for line in proc.stdout.splitlines()), f"engine_{level} did not pass"
    if not sanitize and platform.libc_ver()[0] == "glibc":
        assert "no_alloc_after_warmup" in proc.stdout, "the allocation-counting test did not run"
