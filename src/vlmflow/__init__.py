"""vlmflow: map how information flows inside Video Large Language Models.

The front door, two lines from a notebook (the sample here is a synthetic one; your own is
``model.probe(video="clip.mp4", question="...", options=["...", "..."], answer=0)``)::

    >>> import vlmflow
    >>> model = vlmflow.load("demo")                 # or a checkpoint folder / hub id
    >>> probe = model.probe(vlmflow.load_dataset("synthetic:1")[0])
    >>> probe.answer.letter in probe.sample.letters  # letter and option probabilities
    True
    >>> cut = probe.knockout("video->last", layers=range(10, 19))
    >>> lens = probe.lens(layers=range(model.num_layers))  # logit lens, every layer
    >>> df = probe.sweep("cross-frame", window=9)    # doctest: +SKIP
    >>> top = probe.screen("cross-frame", k=30)      # doctest: +SKIP

``sweep`` gives a tidy DataFrame (one row per layer); ``screen`` estimates every plan and
verifies the top 30 exactly.

Runs over a dataset into a run folder: :func:`run` with :class:`Options` and analyses
(:class:`InformationFlow`, :class:`ScreenedFlow`, :class:`AnswerProbability`, :class:`LogitLens`,
:class:`AttentionMaps`, :class:`Pathways`, :class:`OpenEnded`); :class:`RunDir` reads one.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .analyses.answer_probability import AnswerProbability
from .analyses.attention_maps import AttentionMaps
from .analyses.base import ANALYSES, Analysis, Answer
from .analyses.information_flow import InformationFlow
from .analyses.logit_lens import LogitLens
from .analyses.open_ended import OpenEnded
from .analyses.pathways import Pathways, PathwaySpec, search_and_evaluate
from .analyses.screened_flow import ScreenedFlow
from .api import Options, RunResult, merge, run
from .cuts import Cut, Plan, compile_plan, window_layers
from .data import load_dataset
from .engine import Engine, LanguageModel
from .errors import VlmflowError
from .layout import Span, TokenLayout
from .probe import Model, Probe, load
from .rundir import RunDir
from .sample import Sample

__all__ = [
    "ANALYSES",
    "Analysis",
    "Answer",
    "AnswerProbability",
    "AttentionMaps",
    "Cut",
    "Engine",
    "InformationFlow",
    "LanguageModel",
    "LogitLens",
    "Model",
    "OpenEnded",
    "Options",
    "PathwaySpec",
    "Pathways",
    "Plan",
    "Probe",
    "RunDir",
    "RunResult",
    "Sample",
    "ScreenedFlow",
    "Span",
    "TokenLayout",
    "VlmflowError",
    "compile_plan",
    "load",
    "load_dataset",
    "merge",
    "run",
    "search_and_evaluate",
    "window_layers",
    "__version__",
]
