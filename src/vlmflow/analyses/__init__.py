"""Analyses: named families of plans and reads from the paper, each producing records."""

from __future__ import annotations

import importlib

MODULES = (
    "information_flow",
    "answer_probability",
    "logit_lens",
    "attention_maps",
    "pathways",
    "open_ended",
    "screened_flow",
)


def load_all() -> None:
    """Import every analysis module so the ``ANALYSES`` registry is complete."""
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
