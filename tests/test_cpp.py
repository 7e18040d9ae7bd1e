"""Builds the C++ engine tests with CMake and runs them through ctest.

Two builds: the optimized one (shared with tests/test_packaging.py through the
`engine_release_build` fixture), and one under AddressSanitizer + UndefinedBehaviorSanitizer.
Each ctest run includes the EIGEN_RUNTIME_NO_MALLOC check of the time loops.
"""

import os

import pytest

from cmake_build import build_engine, run


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
