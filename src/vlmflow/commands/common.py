"""Options and helpers shared by the command modules."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
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


# Set by the ``--paper`` / ``--correctness`` wrapper around a command for the run it starts.
_RUN_CHOICES: ContextVar[dict[str, Any] | None] = ContextVar("vlmflow_run_choices", default=None)


def options(model, data, task, samples, seed, device, dtype, prompt, num_frames, attn, quiet, **extra):
    from ..api import Options

    choices = _RUN_CHOICES.get() or {}
    if choices.get("paper"):
        extra = {**extra, "paper": True}
    return Options(
        correctness=choices.get("correctness", "ids"),
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


Paper = Annotated[
    bool,
    typer.Option(
        "--paper",
        help="the paper's choices for every option left at its default (docs/paper-parity.md)",
    ),
]
Correctness = Annotated[
    str,
    typer.Option(
        help="what counts as correct: ids (the letter's token id) or text (the paper's decoded string)"
    ),
]


def with_paper(command: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a command) with ``--paper`` and ``--correctness`` added: ``--paper`` applies
    :data:`vlmflow.paper.PAPER_OPTIONS` to the options not given on the command line."""
    from ..paper import apply_paper

    sig = inspect.signature(func, eval_str=True)  # typer reads a set __signature__ as is

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        paper = kwargs.pop("paper", False)
        ctx = kwargs.pop("ctx", None)
        if paper:
            explicit = {
                k
                for k in kwargs
                if ctx is not None and getattr(ctx.get_parameter_source(k), "name", "DEFAULT") != "DEFAULT"
            }
            kwargs = apply_paper(command, kwargs, explicit)
        correctness = kwargs.pop("correctness", "ids")
        token = _RUN_CHOICES.set({"paper": paper, "correctness": correctness})
        try:
            return func(**kwargs)
        finally:
            _RUN_CHOICES.reset(token)

    added = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        inspect.Parameter(
            "correctness", inspect.Parameter.KEYWORD_ONLY, default="ids", annotation=Correctness
        ),
        inspect.Parameter("paper", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Paper),
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]
    wrapper.__signature__ = sig.replace(parameters=params + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **getattr(func, "__annotations__", {}),
        "ctx": typer.Context,
        "correctness": Correctness,
        "paper": Paper,
    }
    return wrapper


def add_paper_preset(app: typer.Typer) -> None:
    """Give every analysis command of ``app`` (those in ``PAPER_OPTIONS``) ``--paper``."""
    from ..paper import PAPER_OPTIONS

    for info in app.registered_commands:
        name = info.name or (info.callback.__name__.strip("_").replace("_", "-") if info.callback else "")
        if info.callback is not None and name in PAPER_OPTIONS:
            info.callback = with_paper(name, info.callback)


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
