"""Options and helpers shared by the command modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import VlmflowError

Model = Annotated[str, typer.Option("--model", "-m", help="checkpoint path, hub id, or 'demo'")]
Data = Annotated[str, typer.Option("--data", "-d", help="NAME:PATH or 'synthetic'")]
Tasks = Annotated[list[str] | None, typer.Option("--task", help="task name or paper task id (repeatable)")]
Samples = Annotated[int | None, typer.Option("--samples", "-n", help="at most N samples per task")]
Seed = Annotated[int, typer.Option(help="seed for subsampling and synthetic data")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="run folder (resumed if it exists)")]
Device = Annotated[str, typer.Option(help="torch device, e.g. cpu, cuda, cuda:1")]
Dtype = Annotated[
    str | None,
    typer.Option(help="float32, bfloat16 or float16 (default: float32 on CPU, the checkpoint's on GPU)"),
]
Prompt = Annotated[
    str, typer.Option(help="'paper' (the paper's template) or 'chat' (the model's chat template)")
]
Frames = Annotated[int, typer.Option("--num-frames", help="frames sampled per video")]
Attn = Annotated[
    str, typer.Option(help="attention implementation: sdpa or eager (flash is switched to sdpa for knockout)")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def options(model, data, task, samples, seed, device, dtype, prompt, num_frames, attn, quiet, **extra):
    from ..api import Options

    return Options(
        model=model,
        data=data,
        tasks=tuple(task or ()),
        samples=samples,
        seed=seed,
        device=device,
        dtype=dtype,
        prompt=prompt,
        num_frames=num_frames,
        attn=attn,
        progress=not quiet,
        extra=extra,
    )


def run_and_report(analyses: Callable[[], list], out: Path, *shared: Any) -> Any:
    """Build ``analyses()``, run them into ``out`` with the shared options (``shared``: the
    positional arguments of :func:`options`) and print the result. A ``VlmflowError``, from
    the arguments or from the run, exits with its message."""
    from ..api import run

    try:
        opts = options(*shared)
        result = run(opts, analyses(), out)
    except VlmflowError as exc:
        fail(exc)
    except (KeyboardInterrupt, typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # anything unexpected: one line and what to do, not a traceback
        fail_unexpected(exc)
    print_result(result)
    s = result.summary
    if s.failed and not s.done and not s.skipped:
        typer.secho(
            f"error: all {len(s.failed)} samples failed (first: {next(iter(s.failed.values()))}); "
            f"see {result.out} and rerun with --debug -v for tracebacks",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)
    if s.failed:
        typer.secho(f"warning: {len(s.failed)} samples failed; their errors are in the records", err=True)
    return result


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)`` (0-based); see :func:`vlmflow.cuts.parse_layers`."""
    from ..cuts import parse_layers as parse

    try:
        return parse(text)
    except VlmflowError as exc:
        raise typer.BadParameter(str(exc)) from None


DEBUG = {"traceback": False}  # set by the CLI's --debug


def fail_unexpected(exc: BaseException) -> None:
    """An error vlmflow did not anticipate: one ``error:`` line (the traceback with --debug)."""
    if DEBUG["traceback"]:
        raise exc
    typer.secho(
        f"error: {type(exc).__name__}: {exc}\n"
        "this is unexpected: rerun with --debug for the traceback and report it with the command line",
        fg=typer.colors.RED,
        err=True,
    )
    raise typer.Exit(2)


def fail(exc: VlmflowError) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def print_result(result) -> None:
    s = result.summary
    typer.echo(
        f"done: {s.done} samples, {len(s.failed)} failed, {s.skipped} already done "
        f"({s.seconds:.1f}s) -> {result.out}"
    )
    acc = result.report.get("accuracy")
    if acc is not None and not acc.empty:
        typer.echo(acc.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if "report" in result.report:
        typer.echo(f"report: {result.report['report']}")
