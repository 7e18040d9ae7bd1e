"""The package as users get it: the installed back ends, and the installed C++ library.

- The installed package ships libeigenlstm.so with its generic back end beside it (that each
  back end the CPU runs loads from there and agrees with the reference is
  tests/test_isa_levels.py; tools/build_wheel.sh runs both in a fresh venv).
- A ten-line CMake consumer (tests/consumer) finds the library installed by
  `cmake --install` with find_package(eigenlstm CONFIG), links eigenlstm::core, runs a forward
  and matches the reference. It installs the optimized build that tests/test_cpp.py tests.
"""

import pathlib

import numpy as np
import pytest

import eigenlstm as el
from cmake_build import ROOT, run
from eigenlstm import _core
from reference import reference_forward

PACKAGE_DIR = pathlib.Path(el.__file__).resolve().parent


def test_the_package_ships_a_generic_back_end_next_to_its_library():
    assert (PACKAGE_DIR / "libeigenlstm.so").is_file()
    assert (PACKAGE_DIR / "libeigenlstm_generic.so").is_file()
    assert "generic" in _core.isa_available()


def read_consumer_output(stdout):
    """{name: values} from the consumer's "name v0 v1 ..." lines (numbers as float64 arrays)."""
    out = {}
    for line in stdout.splitlines():
        name, *values = line.split()
        out[name] = values[0] if name in ("isa", "library") else np.array(values, dtype=np.float64)
    return out


@pytest.mark.slow  # the engine's CMake build (shared with test_cpp.py)
def test_a_cmake_consumer_links_the_installed_library_and_matches_the_reference(
    engine_release_build, tmp_path
):
    prefix = tmp_path / "prefix"
    run(["cmake", "--install", engine_release_build, "--prefix", prefix])
    assert (prefix / "include" / "eigenlstm" / "lstm.hpp").is_file()

    app_build = tmp_path / "consumer"
    run(
        [
            "cmake",
            "-S",
            ROOT / "tests" / "consumer",
            "-B",
            app_build,
            "-G",
            "Ninja",
            f"-DCMAKE_PREFIX_PATH={prefix}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
    )
    run(["cmake", "--build", app_build])
    got = read_consumer_output(run([app_build / "app"], cwd=tmp_path).stdout)

    # The back end is loaded from the installed library directory, not from the build tree.
    library = pathlib.Path(got["library"]).resolve()
    assert library.name == f"libeigenlstm_{got['isa']}.so"
    assert library.parent.parent == prefix.resolve()
    assert (library.parent / "libeigenlstm.so").is_file()

    # The consumer's sizes: T=5, B=2, I=3, H=4 (tests/consumer/main.cpp).
    T, B, I, H = 5, 2, 3, 4
    params = {k: got[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")}
    params["weight_ih_l0"] = params["weight_ih_l0"].reshape(4 * H, I)
    params["weight_hh_l0"] = params["weight_hh_l0"].reshape(4 * H, H)
    x = got["x"].reshape(T, B, I)
    zeros = np.zeros((1, B, H))
    ref_y, ref_h, ref_c = reference_forward(
        params, x, zeros, zeros, num_layers=1, bidirectional=False, proj_size=0
    )[:3]
    # float32 engine against the float64 reference: the parity tests' float32 tolerance.
    for name, ref in (("y", ref_y), ("h_n", ref_h), ("c_n", ref_c)):
        ours = got[name].reshape(ref.shape)
        assert np.linalg.norm(ours - ref) <= 1e-5 * np.linalg.norm(ref), name
