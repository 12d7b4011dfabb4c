"""CLI subcommands, one module each; every module defines ``register(app)``.

New commands are added by dropping a module here: ``register_all`` finds them all, so
no shared file needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register_all(app: typer.Typer) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(app)
    from .common import add_paper_preset

    add_paper_preset(app)
