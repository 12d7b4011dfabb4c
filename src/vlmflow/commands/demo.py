"""`vlmflow demo`: the main job on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    Device,
    Quiet,
    run_and_report,
)


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("vlmflow-demo"),
    samples: Annotated[int, typer.Option("--samples", "-n", help="held-out synthetic samples per task")] = 16,
    window: Annotated[int, typer.Option(help="layers blocked around each sweep layer")] = 3,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """The main job on the embedded model: every analysis on a held-out synthetic temporal
    benchmark, with figures, an HTML report and a terminal summary."""
    from ..analyses.answer_probability import AnswerProbability
    from ..analyses.attention_maps import AttentionMaps
    from ..analyses.information_flow import InformationFlow
    from ..analyses.logit_lens import LogitLens
    from ..analyses.pathways import PRESETS, Pathways
    from ..analyses.targets import PAPER_TARGETS

    result = run_and_report(
        lambda: [
            InformationFlow(targets=PAPER_TARGETS, window=window, sample_mode="correct"),
            AnswerProbability(sample_mode="all"),
            LogitLens(words="synthetic", topk=3, sample_mode="correct", overlays=2),
            AttentionMaps(compare="cross-frame", sample_mode="correct", overlays=2),
            Pathways(spec=PRESETS["llava-next-7b-video-ft"], seeds=(0, 1, 2)),
        ],
        out,
        "demo",
        f"synthetic:{samples}:fixed",
        None,
        None,
        0,
        device,
        None,
        "paper",
        8,
        "sdpa",
        quiet,
    )
    summarize_demo(result.report)


def summarize_demo(report: dict) -> None:
    """Per task: where cutting cross-frame attention hurts most, and where the true option
    overtakes the false ones; the pathway table."""
    from ..analyses.answer_probability import overtake_layers

    flow = report.get("flow")
    if flow is not None and not flow.empty:
        cf = flow[flow["condition"] == "cross-frame"]
        typer.echo("cross-frame knockout: window centres (1-based) where it hurts most")
        for task, d in cf.groupby("task"):
            worst = d.nsmallest(2, "rel_pred_mean")
            where = ", ".join(f"L{int(r.layer) + 1}: {r.rel_pred_mean:+.1f}%" for r in worst.itertuples())
            typer.echo(f"  {task:18s} {where}")
    summaries = report.get("summaries", {})
    ap = summaries.get("answer-prob")
    if ap is not None and not ap.empty:
        over = overtake_layers(ap)
        text = ", ".join(f"{t}: L{v + 1}" if v is not None else f"{t}: never" for t, v in over.items())
        typer.echo(f"true option overtakes the false ones from: {text}")
    table = summaries.get("pathways")
    if table is not None and not getattr(table, "empty", True):
        typer.echo("effective pathways (paper's 7B ranges scaled to the demo model):")
        typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def register(app: typer.Typer) -> None:
    app.command()(demo)
