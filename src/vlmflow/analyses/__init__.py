"""Analyses: named families of plans and reads from the paper, one unit (module) each.

Every module of this package that registers an analysis in
:data:`~vlmflow.analyses.base.ANALYSES` is found by :func:`load_all`; nothing else lists
them.
"""

from __future__ import annotations

import importlib
import pkgutil

_LOADED = False


def load_all() -> None:
    """Import every analysis module so the ``ANALYSES`` registry is complete."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in ("base", "targets"):
            importlib.import_module(f"{__name__}.{info.name}")
