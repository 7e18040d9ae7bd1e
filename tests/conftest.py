"""Fixtures shared by the test modules: the torch witness on one thread, one engine build."""

import os
from pathlib import Path

import pytest

from cmake_build import build_engine


def pytest_ignore_collect(collection_path, config):
    """tests/dist runs only as the ranks of an MPI job (``mpiexec -n 2 python -m pytest
    tests/dist``, which tests/test_distributed.py launches): its tests meet in collectives
    that one process alone cannot complete."""
    if collection_path == Path(__file__).parent / "dist":
        return not ("PMI_SIZE" in os.environ or "OMPI_COMM_WORLD_SIZE" in os.environ)
    return None


@pytest.fixture(scope="module")
def torch_single_threaded():
    """Run the torch witness on one thread, restoring torch's setting afterwards.

    torch's and eigenlstm's OpenMP teams share two cores; small torch calls slow down ~50x
    while another team spins. The witness's result does not depend on its thread count.
    """
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def engine_release_build(tmp_path_factory):
    """The engine and its C++ tests, built once per session with CMake (Release).

    Returns the build directory: tests/test_cpp.py runs ctest in it and tests/test_packaging.py
    installs it, so the two share one optimized build.
    """
    return build_engine(tmp_path_factory.mktemp("engine") / "build")


def pytest_terminal_summary(terminalreporter):
    """List the instruction-set levels the engine was tested at (tests/test_isa_levels.py)."""
    import eigenlstm

    try:
        cfg = eigenlstm.config()
        features = "".join(f" + {f}" for f in cfg["isa_features"])
        lines = [f"{cfg['isa']}{features}: the whole suite, in this process"]
    except ValueError as exc:  # a bad EIGENLSTM_MAX_ISA: the tests said so already
        lines = [f"none: {exc}"]
    for report in terminalreporter.stats.get("passed", []):
        lines += [value for name, value in report.user_properties if name == "isa_level"]
    terminalreporter.write_sep("-", "eigenlstm instruction-set levels tested")
    for line in lines:
        terminalreporter.write_line(line)
