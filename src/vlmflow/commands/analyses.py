"""One command per analysis unit (`vlmflow flow`, `answer-prob`, `logit-lens`, ...), built
from the analyses' registry: each command's options are its analysis's declared options
(:meth:`~vlmflow.analyses.base.Analysis.cli_options`) plus the shared run options."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import print_result, run_command


def _parameter(opt: Any) -> inspect.Parameter:
    """A typer option from an analysis's ``CliOption``: repeatable when ``cli`` is ``list``,
    or when ``cli`` is unset and the default a tuple; a tuple field with ``cli=str`` (say
    ``--query-words first,up``) is one comma-separated string that its ``parse`` splits."""
    repeatable = opt.cli is list or (opt.cli is None and isinstance(opt.default, tuple))
    if repeatable:
        kind: Any = list[str] | None
    elif opt.cli is not None:
        kind = opt.cli | None
    else:
        kind = type(opt.default)
    default = opt.default if isinstance(opt.default, (str, int, float, bool)) and not repeatable else None
    return inspect.Parameter(
        opt.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, typer.Option(*opt.flags, help=opt.help)],
    )


def command_for(cls: Any) -> Any:
    """The typer command of analysis class ``cls``."""

    def command(options: Any, out: Path | None, **values: Any) -> None:
        result = cls.run_cli(options, out or Path("vlmflow-out") / cls.name, **values)
        print_result(result, cls.terminal(result.report))

    own = [_parameter(opt) for opt in cls.cli_options()]
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("options", inspect.Parameter.KEYWORD_ONLY), *own]
    )
    command.__name__ = cls.name.replace("-", "_")
    command.__doc__ = (cls.__doc__ or cls.name).split("\n\n")[0]  # the first paragraph
    return run_command(command)


def register(app: typer.Typer) -> None:
    from ..analyses.base import ordered

    for cls in ordered():
        if cls.command:
            app.command(cls.name)(command_for(cls))
