"""`vlmflow demo`: the main job on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import VlmflowError
from .common import Device, Quiet, fail, print_result

DemoModel = Annotated[
    str, typer.Option("--model", "-m", help="'demo' (SmolLM2, shuffled options) or 'tiny' (test fixture)")
]


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("vlmflow-demo"),
    samples: Annotated[
        int | None,
        typer.Option("--samples", "-n", help="held-out synthetic samples per task (demo: 2, tiny: 16)"),
    ] = None,
    window: Annotated[
        int | None, typer.Option(help="layers blocked around each sweep layer (demo: 9, tiny: 3)")
    ] = None,
    model: DemoModel = "demo",
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """The main job on the embedded model: every analysis on a held-out synthetic temporal
    benchmark, with figures, an HTML report and a terminal summary; the effective pathways
    are searched on half of the samples and reported on the other half, beside random
    blocking of the same edge fraction (``OUT/pathways/``)."""
    from ..demo import pathway_lines, run_demo, summary_lines

    try:
        result, found = run_demo(
            out, model=model, samples=samples, window=window, device=device, progress=not quiet
        )
    except VlmflowError as exc:
        fail(exc)
    print_result(result, summary_lines(result.report))
    for line in pathway_lines(found.report):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command()(demo)
