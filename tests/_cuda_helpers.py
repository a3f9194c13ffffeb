"""Helpers of the CUDA tests: count the host synchronisations that CUDA reports."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def synchronisations(run: Callable[[], object]) -> int:
    """How many times ``run()`` made the host wait for the GPU, as CUDA's sync debug mode
    reports it (reads of values, copies between the host and the device)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(warning.message) for warning in caught)
