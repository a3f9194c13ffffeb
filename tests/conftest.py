"""Fixtures shared by the test modules, and the settings every test runs under."""

import matplotlib
import pytest
import torch


def pytest_configure(config):
    """Draw figures off-screen: chosen once here, so that no test module changes it on import."""
    matplotlib.use("Agg")


@pytest.fixture
def single_thread():
    """Small per-step tensor operations run fastest, and steadiest on a shared machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def grading(monkeypatch):
    """Run the exercise checks as the instructor's grader does: hidden cases included."""
    from scorelab.checks import _core

    monkeypatch.setattr(_core, "GRADING", True)
