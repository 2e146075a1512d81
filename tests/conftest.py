"""Shared helpers for the flowgmm_cli tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Put this folder on sys.path so the tests can import flowgmm_testutils, and the repository
# root so the package imports even without the editable install.
_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parent), str(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# The networks in these tests are tiny: one thread is faster than several, and a shared machine
# with more busy threads than cores slows multi-threaded torch down by an order of magnitude.
torch.set_num_threads(1)


@pytest.fixture
def float64():
    """Run the test with float64 as torch's default dtype, restoring the previous default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(previous)
