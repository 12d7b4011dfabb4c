"""`vlmflow eval`, `report` and `list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import VlmflowError
from .common import (
    Attn,
    Data,
    Device,
    Dtype,
    Frames,
    Model,
    Out,
    Prompt,
    Quiet,
    Samples,
    Seed,
    Tasks,
    fail,
    run_and_report,
)


def eval_(
    model: Model,
    data: Data,
    task: Tasks = None,
    samples: Samples = None,
    seed: Seed = 0,
    out: Out = None,
    device: Device = "cpu",
    dtype: Dtype = None,
    prompt: Prompt = "paper",
    num_frames: Frames = 8,
    attn: Attn = "sdpa",
    quiet: Quiet = False,
) -> None:
    """Accuracy only: the model's answer letter for every sample, per task."""
    run_and_report(
        list,
        out or Path("vlmflow-out") / "eval",
        model,
        data,
        task,
        samples,
        seed,
        device,
        dtype,
        prompt,
        num_frames,
        attn,
        quiet,
    )


def report(run_dir: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """(Re)write the summaries, figures and the interactive, self-contained HTML report of
    a run from its records (all shards)."""
    from ..report import finalize

    if not (run_dir / "records").is_dir():
        fail(VlmflowError(f"{run_dir} is not a run folder (no records/)"))
    result = finalize(run_dir)
    sections = ", ".join(s.key for s in result.get("sections", [])) or "accuracy only"
    typer.echo(f"{result['records']} records ({sections}) -> {result.get('report', run_dir)}")


def list_(what: Annotated[str, typer.Argument(help="models, datasets, analyses or targets")]) -> None:
    """Show what is registered: model families, datasets, analyses or knockout targets."""
    if what == "models":
        from ..models import MODELS

        for name in MODELS:
            cls = MODELS.get(name)
            typer.echo(f"{name:22s} model types: {', '.join(cls.model_types)}; supports: {cls.supports}")
        return
    if what == "datasets":
        from ..data import DATASETS as registry
    elif what == "analyses":
        from ..analyses import load_all
        from ..analyses.base import ANALYSES as registry

        load_all()
    elif what == "targets":
        from ..analyses.targets import TARGETS as registry
    else:
        fail(VlmflowError(f"cannot list {what!r}; choose models, datasets, analyses or targets"))
    for name, text in registry.describe().items():
        typer.echo(f"{name:30s} {text}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
    app.command()(report)
    app.command("list")(list_)
