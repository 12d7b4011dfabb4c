"""Shared fixtures of the data tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the decoded-frame cache of every test inside its own temporary folder."""
    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path / "frame-cache"))
