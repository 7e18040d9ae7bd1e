"""The runnable snippet in docs/backward.md stays correct (it asserts its own result)."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "backward.md"


def test_backward_derivation_snippet_matches_finite_differences():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(DOC), "exec"), {})
