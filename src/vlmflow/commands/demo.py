"""`vlmflow demo`: the main job on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import VlmflowError
from .common import (
    Device,
    Quiet,
    fail,
    options,
    print_result,
)


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("vlmflow-demo"),
    samples: Annotated[int, typer.Option("--samples", "-n", help="held-out synthetic samples per task")] = 16,
    window: Annotated[int, typer.Option(help="layers blocked around each sweep layer")] = 3,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """The main job on the embedded model: every analysis on a held-out synthetic
    temporal benchmark, with figures, an HTML report and a summary."""
    from ..analyses.information_flow import InformationFlow
    from ..analyses.targets import PAPER_TARGETS
    from ..api import run

    try:
        analyses = [InformationFlow(targets=PAPER_TARGETS, window=window, sample_mode="correct")]
        opts = options("demo", f"synthetic:{samples}", None, None, 0, device, None, "paper", 8, "sdpa", quiet)
        result = run(opts, analyses, out)
    except VlmflowError as exc:
        fail(exc)
    print_result(result)
    flow = result.report.get("flow")
    if flow is not None and not flow.empty:
        cf = flow[flow["condition"] == "cross-frame"]
        typer.echo("cross-frame knockout: layers (1-based window centre) where it hurts most")
        for task, d in cf.groupby("task"):
            worst = d.nsmallest(2, "rel_pred_mean")
            where = ", ".join(f"L{int(r.layer) + 1}: {r.rel_pred_mean:+.1f}%" for r in worst.itertuples())
            typer.echo(f"  {task:18s} {where}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
