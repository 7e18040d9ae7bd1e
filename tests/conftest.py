"""Fixtures shared by the test modules that use torch.nn.LSTM as a witness."""

import pytest


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


def pytest_terminal_summary(terminalreporter):
    """List the instruction-set levels the engine was tested at (tests/test_isa_levels.py)."""
    import eigenlstm

    try:
        lines = [f"{eigenlstm.config()['isa']}: the whole suite, in this process"]
    except ValueError as exc:  # a bad EIGENLSTM_MAX_ISA: the tests said so already
        lines = [f"none: {exc}"]
    for report in terminalreporter.stats.get("passed", []):
        lines += [value for name, value in report.user_properties if name == "isa_level"]
    terminalreporter.write_sep("-", "eigenlstm instruction-set levels tested")
    for line in lines:
        terminalreporter.write_line(line)
