"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """Small per-step tensor operations run fastest, and steadiest on a shared machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
