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
