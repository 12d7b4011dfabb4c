"""The one exception hierarchy of vlmflow.

Every error a user can cause (bad data, an unsupported model, an impossible cut) is a
``VlmflowError``; messages name the sample or model and say what to do. A warning, by
contrast, never stops anything: :func:`say_warning` and :func:`warn` print one that a
filter turns into an error (``python -W error``) instead of raising it.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any


class VlmflowError(Exception):
    """Base class of every error vlmflow raises on purpose."""


class DataError(VlmflowError):
    """A benchmark file, annotation or video cannot be read or is malformed."""


class PromptError(VlmflowError):
    """A prompt cannot be built or a token group cannot be located in it."""


class UnsupportedModelError(VlmflowError):
    """The checkpoint's family has no adapter, or it cannot do what was asked."""


class PlanError(VlmflowError):
    """A cut or plan is malformed or cannot be applied to a sample's layout."""


class RunError(VlmflowError):
    """A run folder cannot be used (for example: resumed with another configuration)."""


class RunStopped(RunError):
    """A run stopped cleanly for a cause that is no sample's fault (a full disk, no memory
    left): every finished unit is kept, and the same command resumes once it is fixed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's preemption, torchrun stopping its ranks) as the
    CLI raises it: a ``KeyboardInterrupt``, so a run stops as on Ctrl-C (the unit being
    written is finished, the manifest records ``stopped`` and the counts), with its own
    reason and exit status (143)."""


def say_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    module: str | None = None,
    registry: dict[Any, Any] | None = None,
) -> None:
    """``warnings.warn_explicit`` with the filters in force, except that a filter making it
    an error (``-W error``) gets it printed (``warnings.showwarning``): said, never a refusal."""
    try:
        warnings.warn_explicit(message, category, filename, lineno, module, registry)
    except Warning:
        warnings.showwarning(message, category, filename, lineno)


def warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 1) -> None:
    """``warnings.warn(message, category, stacklevel)`` that never refuses (see
    :func:`say_warning`): for notes said outside a run's units, such as while a plan is built."""
    frame = sys._getframe(stacklevel)  # the frame warnings.warn would name
    names = frame.f_globals
    registry = names.setdefault("__warningregistry__", {})
    say_warning(message, category, frame.f_code.co_filename, frame.f_lineno, names.get("__name__"), registry)
