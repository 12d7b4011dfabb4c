"""Shared fixtures: tiny random models saved to disk and loaded through the user's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.catalog import TinyModels
from tests.fixtures.tiny import make_sample
from vlmflow.sample import Sample


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models are dominated by per-op overhead; one thread per test process avoids
    oversubscribing the cores when tests start subprocesses (distributed runs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llava_path(tiny_models: TinyModels) -> Path:
    return tiny_models.path("llava_next_video")


@pytest.fixture(scope="session")
def tiny_llava(tiny_models: TinyModels):
    return tiny_models.adapter("llava_next_video")


@pytest.fixture
def sample() -> Sample:
    return make_sample()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Every family's tiny model, built and loaded on first use (see ``fixtures/catalog.py``)."""
    return TinyModels(tmp_path_factory.mktemp("families"))
