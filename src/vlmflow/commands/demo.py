"""`vlmflow demo`: the main job on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import VlmflowError
from .common import Device, Quiet, fail, print_result


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("vlmflow-demo"),
    samples: Annotated[int, typer.Option("--samples", "-n", help="held-out synthetic samples per task")] = 16,
    window: Annotated[int, typer.Option(help="layers blocked around each sweep layer")] = 3,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """The main job on the embedded model: every analysis on a held-out synthetic temporal
    benchmark, with figures, an HTML report and a terminal summary."""
    from ..demo import run_demo, summary_lines

    try:
        result = run_demo(out, samples=samples, window=window, device=device, progress=not quiet)
    except VlmflowError as exc:
        fail(exc)
    print_result(result, summary_lines(result.report))


def register(app: typer.Typer) -> None:
    app.command()(demo)
