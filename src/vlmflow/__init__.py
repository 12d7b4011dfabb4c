"""vlmflow: map how information flows inside Video Large Language Models."""

from __future__ import annotations

__version__ = "0.1.0"

from .cuts import Cut, Plan, compile_plan, window_layers
from .engine import Engine, LanguageModel
from .errors import VlmflowError
from .layout import Span, TokenLayout
from .sample import Sample

__all__ = [
    "Cut",
    "Engine",
    "LanguageModel",
    "Plan",
    "Sample",
    "Span",
    "TokenLayout",
    "VlmflowError",
    "compile_plan",
    "window_layers",
    "__version__",
]
