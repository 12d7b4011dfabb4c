"""Shared fixtures: tiny random models saved to disk and loaded through the user's path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_llava_next_video, make_sample  # noqa: E402
from vlmflow.sample import Sample  # noqa: E402,F401


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
def tiny_llava_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llava_next_video(tmp_path_factory.mktemp("models") / "llava_next_video")


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_path: Path):
    from vlmflow.models import load_model

    return load_model(str(tiny_llava_path))


@pytest.fixture
def sample() -> Sample:
    return make_sample()
