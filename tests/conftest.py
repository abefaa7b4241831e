"""Shared pytest fixtures and options (``--device``, ``--dtype``) for the showerformer suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Wide, plain console output for CLI tests, so that rich tables and long paths do not wrap.
os.environ["COLUMNS"] = "250"
os.environ.setdefault("NO_COLOR", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for model tests (cpu, cuda)")
    parser.addoption("--dtype", default="float32", help="torch dtype for model tests")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--device"))


@pytest.fixture(scope="session")
def dtype(request: pytest.FixtureRequest):
    import torch

    return getattr(torch, str(request.config.getoption("--dtype")))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``../shared`` folder beside the repository (real Geant4 files, binning XMLs)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the reference files (binning XMLs, Geant4 samples) "
                    "live outside the repository")
    return SHARED


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (small models run faster and reproducibly)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
