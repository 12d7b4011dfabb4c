"""What the command modules share: the run options, collected once into an ``Options``.

:func:`run_command` turns ``fn(options, out, **own)`` into a typer command whose options
are ``fn``'s own plus the shared run options (``--model``, ``--data``, ``--task``, ...);
typer fills them, and ``fn`` receives one :class:`~vlmflow.api.Options` built by keyword.
A ``VlmflowError`` from ``fn`` exits with its message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import VlmflowError

KW = inspect.Parameter.KEYWORD_ONLY


def _shared(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, KW, default=default, annotation=annotation)


Device = Annotated[str, typer.Option(help="torch device, e.g. cpu, cuda, cuda:1")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
MODEL = _shared(
    "model", Annotated[str, typer.Option("--model", "-m", help="checkpoint path, hub id, or 'demo'")]
)
DATA = _shared("data", Annotated[str, typer.Option("--data", "-d", help="NAME:PATH or 'synthetic'")])
SHARED = [
    _shared(
        "task",
        Annotated[list[str] | None, typer.Option("--task", help="task name or paper task id (repeatable)")],
        None,
    ),
    _shared(
        "samples",
        Annotated[int | None, typer.Option("--samples", "-n", help="at most N samples per task")],
        None,
    ),
    _shared("seed", Annotated[int, typer.Option(help="seed for subsampling and synthetic data")], 0),
    _shared(
        "out",
        Annotated[Path | None, typer.Option("--out", "-o", help="run folder (resumed if it exists)")],
        None,
    ),
    _shared("device", Device, "cpu"),
    _shared(
        "dtype",
        Annotated[
            str | None,
            typer.Option(
                help="float32, bfloat16 or float16 (default: float32 on CPU, the checkpoint's on GPU)"
            ),
        ],
        None,
    ),
    _shared(
        "prompt",
        Annotated[
            str, typer.Option(help="'paper' (the paper's template) or 'chat' (the model's chat template)")
        ],
        "paper",
    ),
    _shared("num_frames", Annotated[int, typer.Option("--num-frames", help="frames sampled per video")], 8),
    _shared(
        "attn",
        Annotated[
            str,
            typer.Option(
                help="attention implementation: sdpa or eager (flash is switched to sdpa for knockout)"
            ),
        ],
        "sdpa",
    ),
    _shared("quiet", Quiet, False),
]


def run_command(fn: Callable[..., Any]) -> Callable[..., None]:
    """A typer command from ``fn(options, out, **own)`` (see the module doc)."""
    own = [
        p.replace(kind=KW)
        for p in inspect.signature(fn).parameters.values()
        if p.name not in ("options", "out")
    ]
    names = [p.name for p in SHARED]

    def command(**values: Any) -> None:
        from ..api import Options

        shared = {name: values.pop(name) for name in names}
        options = Options(
            model=values.pop("model"),
            data=values.pop("data"),
            tasks=tuple(shared["task"] or ()),
            samples=shared["samples"],
            seed=shared["seed"],
            device=shared["device"],
            dtype=shared["dtype"],
            prompt=shared["prompt"],
            num_frames=shared["num_frames"],
            attn=shared["attn"],
            progress=not shared["quiet"],
        )
        try:
            fn(options=options, out=shared["out"], **values)
        except VlmflowError as exc:
            fail(exc)
        except (KeyboardInterrupt, typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # anything unexpected: one line and what to do, not a traceback
            fail_unexpected(exc)

    command.__signature__ = inspect.Signature([MODEL, DATA, *own, *SHARED])  # type: ignore[attr-defined]
    command.__name__ = fn.__name__
    command.__doc__ = fn.__doc__
    return command


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


def print_result(result: Any, lines: list[str] = ()) -> None:  # type: ignore[assignment]
    """The run's counts and folder, accuracy per task, the report's path, then ``lines``.
    A run whose every sample failed exits with status 1; some failures give a warning."""
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
    for line in lines:
        typer.echo(line)
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
