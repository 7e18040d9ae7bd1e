"""Run Python code in a fresh interpreter, from tests/, optionally at a capped instruction-set
level (EIGENLSTM_MAX_ISA), for what one process cannot do twice: choose the engine's back end."""

import os
import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parent


def run_python(args, level=None, **kw):
    """Run ``python *args`` from tests/ (with EIGENLSTM_MAX_ISA=level if given)."""
    env = dict(os.environ)
    env.pop("EIGENLSTM_MAX_ISA", None)
    if level is not None:
        env["EIGENLSTM_MAX_ISA"] = level
    return subprocess.run(
        [sys.executable, *args],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        **kw,
    )
