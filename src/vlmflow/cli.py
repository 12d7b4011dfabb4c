"""The ``vlmflow`` command line: a thin typer layer over :mod:`vlmflow.api`."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterable
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from .commands import register_all
from .errors import Terminated
from .store import STOP_SIGNALS

_NB_HYPHEN = "\u2011"
_ClickContext = TyperCommand.context_class  # click's Context as typer uses it (typer may vendor click)


class _HelpFormatter(_ClickContext.formatter_class):  # type: ignore[misc,name-defined]
    """click's help formatter, except that it wraps lines at spaces only: names such as
    ``llava-next-7b-video-ft`` or ``--screen-control`` in help text stay whole."""

    def write_dl(self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2) -> None:
        super().write_dl([(term, text.replace("-", _NB_HYPHEN)) for term, text in rows], col_max, col_spacing)

    def write_text(self, text: str) -> None:
        super().write_text(text.replace("-", _NB_HYPHEN))

    def getvalue(self) -> str:
        return super().getvalue().replace(_NB_HYPHEN, "-")


class _Context(_ClickContext):  # type: ignore[misc,valid-type]
    formatter_class = _HelpFormatter


class _Group(TyperGroup):
    context_class = _Context


class _Command(TyperCommand):
    context_class = _Context

    def get_short_help_str(self, limit: int = 45) -> str:
        """The command's summary in ``vlmflow --help``: its help's whole first sentence
        (wrapped by the formatter), not one cut to the terminal width with '...'."""
        return super().get_short_help_str(limit=10_000)


app = typer.Typer(
    cls=_Group,
    help=(
        "Map how information flows inside Video LLMs: attention knockout between frames, "
        "question, options and the last token, layer by layer.\n\n"
        "M (--model) is a local checkpoint folder, a hub id, 'demo' (the embedded SmolLM2 demo "
        "model) or 'tiny' (the 8-layer test model). "
        "D (--data) is NAME:PATH for a benchmark on disk (jsonl:/data/qa.jsonl, "
        "tvbench:/data/TVBench) or 'synthetic[:N[:fixed]]' for the built-in synthetic benchmark."
    ),
    no_args_is_help=True,
    add_completion=False,
    # click's plain help, as wide as the terminal: typer's rich table cut long option names
    # (--screen-exact-…) and words at 80 columns
    rich_markup_mode=None,
    context_settings={"max_content_width": 1000},
    pretty_exceptions_enable=False,
)


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning as the command line says it: ``warning: <message>``, without Python's
    ``file.py:299: UserWarning:`` prefix and the source line."""
    return f"warning: {message}\n"


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of unexpected errors")] = False,
) -> None:
    from .commands.common import DEBUG

    DEBUG["traceback"] = debug
    if not debug:  # for this command only (the library, imported, keeps Python's format)
        python_format = warnings.formatwarning
        warnings.formatwarning = _format_warning
        ctx.call_on_close(lambda: setattr(warnings, "formatwarning", python_format))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


register_all(app)
for _info in app.registered_commands:
    _info.cls = _Command


_stopped_by: list[int] = []  # the signal that stopped the run (SIGINT or SIGTERM), once one came


def _on_stop_signal(signum: int, frame: object) -> None:
    """The first SIGINT or SIGTERM stops the run: ``KeyboardInterrupt`` (as without us) or
    :class:`~vlmflow.errors.Terminated`; a later one is ignored, so that a second Ctrl-C
    (or torchrun's SIGTERM after the terminal's SIGINT) cannot cut short the recording of
    what finished (the manifest's ``stopped`` and ``samples``) or the exit; SIGKILL still
    ends it at once."""
    if _stopped_by:
        os.write(2, b"vlmflow: already stopping, recording what finished (kill -9 ends it at once)\n")
        return
    _stopped_by.append(signum)
    if signum == signal.SIGTERM:
        raise Terminated()
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as without us


# store.deferred_signals hands it only the first signal held back (the run stops on that one)
_on_stop_signal.stops_run = True  # type: ignore[attr-defined]


def main() -> None:
    """The ``vlmflow`` entry point: typer's, except that Ctrl-C exits with 130 (128 + SIGINT,
    what shells expect) and SIGTERM with 143 (128 + SIGTERM), each after the run has
    recorded what finished (see :func:`vlmflow.api.run`), and an unexpected error from any
    command ends in one ``error:`` line (the traceback with ``--debug``) and exit status 2.
    A second signal while the run stops is ignored (:func:`_on_stop_signal`). A signal that
    the process inherited as ignored stays ignored."""
    from .commands.common import fail_unexpected

    # a signal ignored by whoever started us (SIGINT in a background job of a shell without
    # job control, nohup-like launchers) stays ignored, as for any POSIX program
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
            signal.signal(signum, _on_stop_signal)
    try:
        app()
    except SystemExit as exc:
        if _stopped_by and exc.code in (1, 130):  # click's Abort, or typer's 130 for any signal
            sys.exit(128 + _stopped_by[0])
        raise
    except Exception as exc:
        try:
            fail_unexpected(exc)
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None


if __name__ == "__main__":
    main()
