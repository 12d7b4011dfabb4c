"""`vlmflow eval`, `report` and `list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import VlmflowError
from .common import fail, print_result, run_command


@run_command
def eval_(options, out: Path | None) -> None:
    """Accuracy only: the model's answer letter for every sample, per task."""
    from ..api import run

    print_result(run(options, [], out or Path("vlmflow-out") / "eval"))


def report(run_dir: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """(Re)write the summaries, figures and the interactive, self-contained HTML report of
    a run from its records (all shards)."""
    from ..report import finalize, samples_text
    from ..rundir import RunDir

    try:
        result = finalize(RunDir(run_dir).require())  # under the folder's lock, like merge
    except VlmflowError as exc:
        fail(exc)
    sections = ", ".join(s.key for s in result.get("sections", [])) or "accuracy only"
    typer.echo(f"{result['records']} records ({sections}) -> {result.get('report', run_dir)}")
    if "samples" in result:  # counted from the records (the manifest's may be stale)
        typer.echo(f"samples: {samples_text(result['samples'])}")


def list_(what: Annotated[str, typer.Argument(help="models, datasets, analyses or targets")]) -> None:
    """Show what is registered: model families, datasets, analyses or knockout targets."""
    if what == "models":
        from ..models import MODELS

        for name in MODELS:
            cls = MODELS.get(name)
            types = ", ".join(cls.model_types) or "(matched by config)"
            typer.echo(f"{name:22s} model types: {types}; supports: {cls.supports}")
        return
    if what == "datasets":
        from ..data import DATASETS as registry
    elif what == "analyses":
        from ..analyses.base import ANALYSES, ordered

        helps = ANALYSES.describe()
        for cls in ordered():  # in report order; one without a command says which runs it
            via = "" if cls.command else f" (via {cls.via or 'another command'})"
            typer.echo(f"{cls.name:30s} {helps[cls.name]}{via}")
        return
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
