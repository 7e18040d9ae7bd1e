"""Runtime dispatch: every instruction-set level this CPU can run is tested, EIGENLSTM_MAX_ISA
caps the level with a clear error for a bad value, and no code outside ISA-named objects uses
vector registers wider than the baseline's.

The engine holds one back end per level (libeigenlstm_generic.so, _avx2, _avx512); the best one
the CPU supports runs the rest of the test suite in this process. Here each other level runs
the parity, gradient-check, determinism and stream suites in a subprocess with EIGENLSTM_MAX_ISA set,
and every level, the one in use included, is held to the float64 reference at 1e-12 (float64)
and 1e-5 (float32), norm-wise relative. The levels that ran are listed at the end of the pytest
summary (conftest.py).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import textwrap

import pytest

import eigenlstm as el
from eigenlstm import _core
from fresh_python import run_python

PACKAGE = pathlib.Path(el.__file__).resolve().parent
LEVELS = _core.isa_available()  # what this CPU and this build can run, low to high
IN_PROCESS = _core.isa()  # the level the rest of this pytest process runs at
VALID = "generic, avx2, avx512, avx512_vnni, avx512_bf16, avx512_amx, native"


# ---- selection and its control ---------------------------------------------------------------


def test_the_level_in_use_is_the_best_this_cpu_and_build_can_run():
    assert LEVELS[0] == "generic"
    assert IN_PROCESS in LEVELS
    if "EIGENLSTM_MAX_ISA" not in os.environ:
        assert IN_PROCESS == LEVELS[-1]
    cfg = el.config()
    assert cfg["isa"] == IN_PROCESS and cfg["isa_available"] == LEVELS
    assert pathlib.Path(cfg["library"]).name == f"libeigenlstm_{IN_PROCESS}.so"


@pytest.mark.parametrize("level", LEVELS)
def test_eigenlstm_max_isa_selects_that_level(level):
    proc = run_python(["-c", "import eigenlstm as el, json; print(json.dumps(el.config()))"], level)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["isa"] == level
    # loaded from the directory of libeigenlstm.so in the installed package, where the front
    # end looks (a wheel repaired by auditwheel must keep the back ends there)
    library = pathlib.Path(cfg["library"])
    assert library.name == f"libeigenlstm_{level}.so" and library.resolve().parent == PACKAGE
    assert cfg["isa_available"] == LEVELS  # the cap limits the choice, not what the CPU has


def test_a_cap_above_the_cpu_is_a_ceiling_not_a_demand():
    proc = run_python(["-c", "import eigenlstm as el; print(el.config()['isa'])"], "native")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == LEVELS[-1]


@pytest.mark.parametrize("value", ["foo", "AVX2", "avx-512", " generic"])
def test_an_unknown_eigenlstm_max_isa_is_a_clear_error_never_a_crash(value):
    code = textwrap.dedent("""
        import eigenlstm as el
        for call in (el.config, lambda: el.LSTM(3, 4), lambda: el.set_num_threads(1)):
            try:
                call()
            except ValueError as exc:
                print(exc)
            else:
                raise SystemExit("no error")
    """)
    proc = run_python(["-c", code], value)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line == f"EIGENLSTM_MAX_ISA must be one of {VALID}, got '{value}'"


def test_the_command_line_reports_version_and_level():
    proc = run_python(["-m", "eigenlstm", "--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        f"eigenlstm {el.__version__} (isa {LEVELS[-1]}; available {', '.join(LEVELS)};"
    )
    bad = run_python(["-m", "eigenlstm", "--version"], "foo")
    assert bad.returncode == 2
    assert "EIGENLSTM_MAX_ISA must be one of" in bad.stderr and "Traceback" not in bad.stderr


def test_show_config_prints_every_field(capsys):
    el.show_config()
    out = capsys.readouterr().out
    cfg = el.config()
    assert out.startswith("eigenlstm\n")
    for key in (
        "version",
        "isa",
        "machine",
        "compiler",
        "eigen",
        "openmp",
        "num_threads",
        "flush_denormal",
        "library",
    ):
        assert re.search(rf"^  {key} +\S", out, re.M), key
    assert cfg["compiler"] in out and cfg["library"] in out and cfg["version"] in out
    assert isinstance(cfg["openmp"], int) and isinstance(cfg["num_threads"], int)


# ---- every level against the witnesses ------------------------------------------------------

# Norm-wise relative error against the float64 reference, for every level alike. float64: the
# levels differ from the reference only in summation order (vector width, FMA, blocking), a few
# ulps (~1e-15) per operation through the depth of the test cases; 1e-12 still catches any
# wrong term. float32: see RTOL in test_lstm_parity.py.
LEVEL_RTOL = {"float32": 1e-5, "float64": 1e-12}

REFERENCE_CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np
    import eigenlstm as el
    import test_lstm_parity as p

    def err(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), p.TINY))

    worst = {}
    for name in p.BIG_CONFIGS:
        for dtype in (np.float32, np.float64):
            case = p.rounded(p.big_case(name), dtype)
            ref = p.run_reference(case)
            for threads in (1, 2):
                el.set_num_threads(threads)
                ours = p.run_ours(case, dtype)
                errs = [err(ours[k], ref[k]) for k in ("output", "h_n", "c_n", "dx", "dh0", "dc0")]
                errs += [err(ours["grads"][k], ref["grads"][k]) for k in ref["grads"]]
                key = np.dtype(dtype).name
                worst[key] = max(worst.get(key, 0.0), max(errs))
    print(json.dumps({"isa": el.config()["isa"], "worst": worst}))
""")


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_agrees_with_the_float64_reference(level, record_property):
    proc = run_python(["-c", REFERENCE_CHECK], level)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["isa"] == level
    for dtype, rtol in LEVEL_RTOL.items():
        assert result["worst"][dtype] <= rtol, f"{level} {dtype}: {result['worst'][dtype]:.3g}"
    record_property(
        "isa_level",
        f"{level}: reference f32 {result['worst']['float32']:.1e}, "
        f"f64 {result['worst']['float64']:.1e}",
    )


# parity, gradcheck, determinism, memory-bounded BPTT, streams, reduced precision
SUITES = [
    "test_lstm_parity.py",
    "test_lstm_gradcheck.py",
    "test_lstm_variants.py",
    "test_lstm_bptt_memory.py",
    "test_stream.py",
    "test_quantized.py",
]


@pytest.mark.slow  # these test files again, in a subprocess per level
@pytest.mark.parametrize("level", [lv for lv in LEVELS if lv != IN_PROCESS])
def test_parity_gradcheck_and_determinism_suites_pass_at_every_other_level(level, record_property):
    """The level in use runs these suites in this process; each other level in a subprocess."""
    proc = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES], level)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0 and "failed" not in summary, summary
    record_property("isa_level", f"{level}: {', '.join(SUITES)} in a subprocess: {summary}")


# The features of the reduced-precision kernels this process uses (AVX512_VNNI, AVX512_BF16,
# AMX), and the caps that keep its back end but take them away, so that the kernels they
# replace run on this CPU too: "avx512" (none: the AVX2 int8 kernel and the bfloat16
# emulation), "avx512_vnni" (VNNI without BF16) when this process has both, and "avx512_bf16"
# (vpdpbusd and vdpbf16ps, not the tiles) when it has AMX.
FEATURES = el.config()["isa_features"]
FEATURE_CAPS = {"avx512": []} if FEATURES else {}
if {"avx512_vnni", "avx512_bf16"} <= set(FEATURES):
    FEATURE_CAPS["avx512_vnni"] = ["avx512_vnni"]
if "avx512_amx" in FEATURES:
    FEATURE_CAPS["avx512_bf16"] = ["avx512_vnni", "avx512_bf16"]


@pytest.mark.slow  # the quantized and stream suites again, in a subprocess per cap
@pytest.mark.parametrize("cap", list(FEATURE_CAPS))
def test_the_quantized_suite_passes_without_each_feature(cap, record_property):
    code = "import eigenlstm as el, json; print(json.dumps(el.config()['isa_features']))"
    features = run_python(["-c", code], cap)
    assert features.returncode == 0, features.stderr
    assert json.loads(features.stdout) == FEATURE_CAPS[cap]
    suites = ["test_quantized.py", "test_stream.py"]
    proc = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", *suites], cap)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    record_property("isa_level", f"{cap}: {', '.join(suites)} in a subprocess: {summary}")


# The AMX tiles compute vpdpbusd's int32 sums exactly, and the rest of an int8 forward is the
# same code of the same back end: with and without the tiles, the outputs are the same bits.
INT8_OUTPUTS = """
import hashlib, numpy as np, eigenlstm as el
rng = np.random.default_rng(0)
for I, H, L, B, T, P in [(256, 256, 1, 8, 40, 0), (10, 20, 2, 5, 7, 0), (33, 48, 2, 17, 9, 16),
                         (70, 64, 1, 1, 5, 0), (8, 40, 1, 33, 3, 0)]:
    lstm = el.quantize(el.LSTM(I, H, num_layers=L, proj_size=P, seed=1), "int8")
    y, (h, c) = lstm(rng.standard_normal((T, B, I)).astype(np.float32))
    print(hashlib.sha256(y.tobytes() + h.tobytes() + c.tobytes()).hexdigest())
"""


@pytest.mark.skipif("avx512_amx" not in FEATURES, reason="this CPU (or OS) has no AMX tiles")
def test_int8_outputs_are_the_same_bits_with_and_without_amx():
    with_tiles = run_python(["-c", INT8_OUTPUTS])
    without = run_python(["-c", INT8_OUTPUTS], "avx512_bf16")
    assert with_tiles.returncode == 0 and without.returncode == 0, (
        with_tiles.stderr + without.stderr
    )
    assert with_tiles.stdout.split() == without.stdout.split()


# ---- no wide vector code outside ISA-named objects ------------------------------------------

ISA_NAMES = ("avx2", "avx512", "native")


def wide_register_functions(path):
    """The functions of a shared object whose code uses ymm or zmm registers."""
    out = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found, current = set(), None
    for line in out.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            current = header.group(1)
        elif current and re.search(r"%[yz]mm\d", line):
            found.add(current)
    return found


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_no_function_outside_isa_named_code_uses_ymm_or_zmm():
    objects = sorted(PACKAGE.glob("*.so"))
    names = {p.name for p in objects}
    assert {f"libeigenlstm_{lv}.so" for lv in LEVELS} <= names and "libeigenlstm.so" in names
    offenders = {}
    checked_isa_objects = 0
    for path in objects:
        funcs = wide_register_functions(path)
        if any(f"_{isa}." in path.name for isa in ISA_NAMES):
            checked_isa_objects += bool(funcs)  # the ISA back ends must really use them
            continue
        bad = sorted(f for f in funcs if not any(f"{isa}::" in f for isa in ISA_NAMES))
        if bad:
            offenders[path.name] = bad[:10] + (
                [f"... {len(bad) - 10} more"] if len(bad) > 10 else []
            )
    assert not offenders, f"ymm/zmm used outside ISA-named code: {offenders}"
    if any(f"libeigenlstm_{isa}.so" in names for isa in ISA_NAMES):
        assert checked_isa_objects >= 1, "no ISA back end uses ymm or zmm: built without flags?"
