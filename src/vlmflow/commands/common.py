"""What the command modules share: the run options, collected once into an ``Options``.

:func:`run_command` turns ``fn(options, out, **own)`` into a typer command whose options
are ``fn``'s own plus the shared run options (``--model``, ``--data``, ``--task``, ...);
typer fills them, and ``fn`` receives one :class:`~vlmflow.api.Options` built by keyword.
A ``VlmflowError`` from ``fn`` exits with its message.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import VlmflowError

KW = inspect.Parameter.KEYWORD_ONLY


def _shared(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, KW, default=default, annotation=annotation)


Device = Annotated[str, typer.Option(help="torch device, e.g. cpu, cuda, cuda:1")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _choices(helps: dict[str, str]) -> str:
    """``'a' (what a is), 'b' (what b is)`` from a registry's name -> help."""
    return ", ".join(f"'{name}' ({text})" for name, text in helps.items())


def _model_help() -> str:
    from ..models import EMBEDDED_MODELS

    return f"checkpoint path, hub id, or {_choices(EMBEDDED_MODELS)}"


def _prompt_help() -> str:
    from ..prompt import PROMPT_STYLE_HELP

    return _choices(PROMPT_STYLE_HELP)


MODEL = _shared("model", Annotated[str, typer.Option("--model", "-m", help=_model_help())])
DATA = _shared(
    "data", Annotated[str, typer.Option("--data", "-d", help="NAME:PATH or 'synthetic[:N[:fixed]]'")]
)
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
        Annotated[
            Path | None,
            typer.Option(
                "--out", "-o", help="run folder (resumed if it exists; default ./vlmflow-out/COMMAND)"
            ),
        ],
        None,
    ),
    _shared("device", Device, "cpu"),
    _shared(
        "dtype",
        Annotated[
            str | None,
            typer.Option(
                help="float32, bfloat16 or float16 (default: float32 on CPU, the checkpoint's on GPU); "
                "in bfloat16, knockout effects below ~0.01 in log p are rounding noise and can "
                "change sign against float32"
            ),
        ],
        None,
    ),
    _shared(
        "prompt",
        Annotated[str, typer.Option(help=_prompt_help())],
        "paper",
    ),
    _shared(
        "num_frames",
        Annotated[
            int,
            typer.Option(
                "--num-frames",
                help="frames decoded per video; samples that bring their own frames (synthetic) "
                "use them as given, with a warning when the count differs",
            ),
        ],
        8,
    ),
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
    _shared(
        "correctness",
        Annotated[
            str,
            typer.Option(
                help="what counts as correct: ids (the letter's token id) or text "
                "(the paper's decoded string)"
            ),
        ],
        "ids",
    ),
    _shared(
        "retry_failed",
        Annotated[
            bool,
            typer.Option(
                "--retry-failed/--no-retry-failed",
                help="on resume, analyse again the samples that failed before (default) "
                "or keep their failures",
            ),
        ],
        True,
    ),
    _shared(
        "max_batch_tokens",
        Annotated[
            int | None,
            typer.Option(
                "--max-batch-tokens",
                help="positions the engine recomputes in one pass of packed knockout plans "
                "(default: the input's length, at least 64: the memory of one forward pass); lower "
                "it if a run stops out of memory; each plan still gets a pass of its own, so below "
                "one plan's recomputed positions it saves no more; it changes results only by floating-point "
                "rounding (up to ~1e-6 in probabilities in float32, ~1e-4 in bfloat16)",
            ),
        ],
        None,
    ),
    _shared("quiet", Quiet, False),
]

# Set by the ``--paper`` wrapper around a command for the run it starts (``Options.paper``:
# recorded in the manifest's session, no part of the configuration).
_PAPER: ContextVar[bool] = ContextVar("vlmflow_paper", default=False)
# The options ``--paper`` set (not given on the command line): name -> value.
_PRESET: ContextVar[dict[str, Any]] = ContextVar("vlmflow_paper_preset", default={})  # noqa: B039


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
        try:
            options = Options(  # checks its values: a bad one exits with its message
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
                correctness=shared["correctness"],
                progress=not shared["quiet"],
                retry_failed=shared["retry_failed"],
                max_batch_tokens=shared["max_batch_tokens"],
                paper=_PAPER.get(),
            )
            fn(options=options, out=shared["out"], **values)
        except VlmflowError as exc:
            fail(_from_preset(exc))
        except (KeyboardInterrupt, typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # anything unexpected: one line and what to do, not a traceback
            fail_unexpected(exc)

    command.__signature__ = inspect.Signature([MODEL, DATA, *own, *SHARED])  # type: ignore[attr-defined]
    command.__name__ = fn.__name__
    command.__doc__ = fn.__doc__
    return command


Paper = Annotated[
    bool,
    typer.Option(
        "--paper",
        help="the paper's choices for every option left at its default (docs/paper-parity.md)",
    ),
]


def with_paper(command: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a command from :func:`run_command`, with its normal signature) with
    ``--paper`` added: it applies :data:`vlmflow.paper.PAPER_OPTIONS` to the options not
    given on the command line; options given explicitly win."""
    from ..paper import apply_paper, paper_notes

    sig = inspect.signature(func, eval_str=True)

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
            given = kwargs
            kwargs = apply_paper(command, kwargs, explicit)
            for line in paper_notes(command, given, explicit):
                typer.echo(line, err=True)
            preset = {k: v for k, v in kwargs.items() if k not in explicit and given[k] != v}
        token, preset_token = _PAPER.set(bool(paper)), _PRESET.set(preset if paper else {})
        try:
            return func(**kwargs)
        finally:
            _PAPER.reset(token)
            _PRESET.reset(preset_token)

    added = [
        inspect.Parameter("ctx", KW, annotation=typer.Context),
        inspect.Parameter("paper", KW, default=False, annotation=Paper),
    ]
    params = [p.replace(kind=KW) for p in sig.parameters.values()]
    wrapper.__signature__ = sig.replace(parameters=params + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**getattr(func, "__annotations__", {}), "ctx": typer.Context, "paper": Paper}
    return wrapper


def add_paper_preset(app: typer.Typer) -> None:
    """Give every analysis command of ``app`` (those in ``PAPER_OPTIONS``) ``--paper``."""
    from ..paper import PAPER_OPTIONS

    for info in app.registered_commands:
        name = info.name or (info.callback.__name__.strip("_").replace("_", "-") if info.callback else "")
        if info.callback is not None and name in PAPER_OPTIONS:
            info.callback = with_paper(name, info.callback)


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


def _from_preset(exc: VlmflowError) -> VlmflowError:
    """``exc`` saying so when the option it names was set by ``--paper``, not typed."""
    name = getattr(exc, "option", None)
    if name not in _PRESET.get():
        return exc
    flag = "--" + name.replace("_", "-")
    return type(exc)(
        f"{exc}. {flag} {_PRESET.get()[name]} comes from --paper's preset (the paper's choice for "
        f"its own models); pass {flag} to override it"
    )


def fail(exc: VlmflowError) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def print_result(result: Any, lines: list[str] = ()) -> None:  # type: ignore[assignment]
    """The run's counts and folder, accuracy per task, the report's path, then ``lines``.
    A run with no sample done (every one failed, now or kept from before under
    ``--no-retry-failed``) exits with status 1; some failures give a warning.
    Under torchrun only rank 0 prints (every rank's ``summary`` is the whole group's)."""
    if getattr(result, "rank", 0) != 0:
        return
    s = result.summary
    typer.echo(
        f"done: {s.done} samples, {len(s.failed)} failed, {s.skipped} already done{s.earlier_failures()} "
        f"({s.seconds:.1f}s) -> {result.out}"
    )
    acc = result.report.get("accuracy")
    if acc is not None and not acc.empty:
        typer.echo(acc.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="n/a"))
    if "report" in result.report:
        typer.echo(f"report: {result.report['report']}")
    for line in lines:
        typer.echo(line)
    if s.all_failed and not s.kept_failed:
        typer.secho(
            f"error: all {len(s.failed)} samples failed (first: {next(iter(s.failed.values()))}); "
            f"see {result.out} and rerun with --debug -v for tracebacks",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)
    if s.all_failed:  # their failures kept from before (--no-retry-failed): nothing computed
        now = f" and {len(s.failed)} failed in this session" if s.failed else ""
        typer.secho(
            f"error: all {s.kept_failed + len(s.failed)} samples failed: {s.kept_failed} failed before "
            f"and were kept (--no-retry-failed){now}; no sample has results. Their errors are in "
            f"{result.out}'s records; rerun without --no-retry-failed to try them again",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)
    if s.failed:
        typer.secho(f"warning: {len(s.failed)} samples failed; their errors are in the records", err=True)
