"""Data: benchmark loaders, the synthetic benchmark, frame sampling and video decoding.

``load_dataset("tvbench:/data/TVBench")`` (or ``tomato:``, ``mvbench:``, ``videomme:``,
``longvideobench:``, ``vcgbench:``, ``jsonl:...``, ``synthetic``; docs/datasets.md) gives
:class:`~vlmflow.sample.Sample` objects; ``load_frames`` decodes a video's sampled frames.
Importing this package registers the built-in loaders in :data:`DATASETS`; it imports
neither PyAV nor PIL (they are imported when a video is first decoded).
"""

from __future__ import annotations

from . import (  # noqa: F401  (register the built-in loaders)
    jsonl,
    longvideobench,
    mvbench,
    open_ended_variants,
    synthetic,
    tomato,
    tvbench,
    vcgbench,
    videomme,
)
from .registry import DATASETS, load_dataset
from .video import load_frames, load_sample_frames, sample_indices, write_video

__all__ = [
    "DATASETS",
    "load_dataset",
    "load_frames",
    "load_sample_frames",
    "sample_indices",
    "write_video",
]
