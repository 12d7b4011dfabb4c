"""`vlmflow merge`: merge the record shards of a multi-process run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import VlmflowError
from .common import fail


def merge(run_dir: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """Merge the shards of a run whose ranks ended separately: recount its samples from
    every shard into the manifest and rewrite records.parquet, summaries, figures and
    the HTML report. (A torchrun / accelerate run does this itself when all ranks finish.)"""
    from ..rundir import RunDir

    try:
        result = RunDir(run_dir).merge()
    except VlmflowError as exc:
        fail(exc)
    shards = ", ".join(f"{name}: {n} units" for name, n in result["shards"].items()) or "no finished units"
    s = result["samples"]
    missing = f", {s['missing']} not yet analysed (re-run the command to finish)" if s.get("missing") else ""
    typer.echo(f"merged {len(result['shards'])} shard(s) ({shards})")
    typer.echo(f"samples: {s['done']} done, {s['failed']} failed{missing}")
    typer.echo(f"{result['records']} records -> {result.get('report', run_dir)}")


def register(app: typer.Typer) -> None:
    app.command()(merge)
