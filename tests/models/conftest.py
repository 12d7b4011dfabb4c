"""A family's test module names its family (``FAMILY = "internvl"``) and gets its tiny
checkpoint (``path``) and loaded adapter (``adapter``), built once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def path(request: pytest.FixtureRequest, tiny_models: Any) -> Path:
    return tiny_models.path(request.module.FAMILY)


@pytest.fixture(scope="module")
def adapter(request: pytest.FixtureRequest, tiny_models: Any) -> Any:
    return tiny_models.adapter(request.module.FAMILY)
