"""Builds the C++ engine tests with CMake and runs them through ctest.

Two builds: the optimized one with every ISA level's back end, whose tests ctest runs once per
level this CPU can run, and one under AddressSanitizer + UndefinedBehaviorSanitizer with the
back end of the level in use only (a sanitized Eigen build is slow to compile). The optimized
one also runs tests/cpp/test_no_alloc.cpp, which counts every heap allocation of the process
with its own malloc and operator new (glibc only), and so cannot run under the sanitizers,
whose runtime owns malloc.
"""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from eigenlstm import _core

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.parametrize("sanitize", [False, True], ids=["release", "asan-ubsan"])
def test_cpp_engine_tests_pass_under_ctest(tmp_path, sanitize):
    build = tmp_path / "build"
    run([
        "cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
        "-DEIGENLSTM_BUILD_TESTS=ON",
        f"-DEIGENLSTM_SANITIZE={'ON' if sanitize else 'OFF'}",
        f"-DCMAKE_BUILD_TYPE={'RelWithDebInfo' if sanitize else 'Release'}",
        f"-DPython_EXECUTABLE={sys.executable}",
        *([f"-DEIGENLSTM_ISA_LEVELS={_core.isa()}"] if sanitize else []),
    ])
    run(["cmake", "--build", str(build), "-j", "2"])
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
