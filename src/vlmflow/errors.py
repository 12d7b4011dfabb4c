"""The one exception hierarchy of vlmflow.

Every error a user can cause (bad data, an unsupported model, an impossible cut) is a
``VlmflowError``; messages name the sample or model and say what to do.
"""

from __future__ import annotations


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
