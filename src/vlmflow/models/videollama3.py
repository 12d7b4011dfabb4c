"""Adapter for Hugging Face ``VideoLlama3ForConditionalGeneration`` (transformers-native).

The processor resizes every frame to a multiple of ``patch * merge`` (28 at real size)
within a pixel budget shared by the frames, and expands the video placeholder into
``Time {t:.1f}s:`` + the frame's video tokens, frames joined by ``,``. A frame's tokens
are its ``(h/m) x (w/m)`` merged patch grid (``video_grid_thw`` / ``video_merge_sizes``).

Token compression (the processor's ``use_token_compression``) drops patches that barely
change from the previous frame, so per-frame counts vary and a frame's tokens no longer
form its grid; it also makes frame ``t``'s tokens depend on frame ``t-1``'s pixels. The
paper turns it off ("DO NOT REMOVE", REFERENCE_NOTES §3.3) and so does this adapter by
default (``token_compression=False``). With it on, spans still follow the processor's own
per-frame counts and a compressed frame's grid is reported as ``(1, n)``.

Timestamps: decoded samples carry no frame times, so frames are stamped at 1 fps
(``Time 0.0s:``, ``Time 1.0s:``, ...). Frame ``t``'s span runs from the comma before it
(none for the first frame) through its last video token; the grid starts after the stamp.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import PromptError
from .base import MODELS, Adapter
from .frames import Grid, ReplacementAdapter
from .processors import load_processor


@MODELS.register("videollama3", "VideoLLaMA3 (HF VideoLlama3ForConditionalGeneration)")
class VideoLlama3Adapter(ReplacementAdapter):
    family = "videollama3"
    model_types = ("video_llama_3",)
    supports = Adapter.supports + " (frame = timestamp + grid; token compression off by default)"
    frame_separator = ","  # VideoLlama3Processor.replace_video_token joins the frames with it

    def __init__(self, model: Any, processor: Any, *, token_compression: bool = False, **kwargs: Any) -> None:
        super().__init__(model, processor, **kwargs)
        self.token_compression = token_compression

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        from transformers import (
            VideoLlama3ForConditionalGeneration,
            VideoLlama3Processor,
            VideoLlama3VideoProcessor,
        )

        model = VideoLlama3ForConditionalGeneration.from_pretrained(path, **kwargs)
        processor = load_processor(VideoLlama3Processor, VideoLlama3VideoProcessor, path)
        return model, processor

    def processor_kwargs(self, frames: np.ndarray) -> dict[str, Any]:
        t = len(frames)
        metadata = {"total_num_frames": t, "fps": 1.0, "frames_indices": list(range(t))}
        return {"video_metadata": [metadata], "use_token_compression": self.token_compression}

    @property
    def media_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    def frame_grids(self, inputs: dict[str, Any], pieces: Sequence[str]) -> list[tuple[Grid, int]]:
        thw = inputs["video_grid_thw"]  # (1, 3): frames, patch rows, patch cols
        merge = int(inputs["video_merge_sizes"][0])
        if thw.shape[0] != 1:
            raise PromptError(f"{self.model_id}: expected one video, the processor made {thw.shape[0]}")
        t, ph, pw = (int(x) for x in thw[0])
        grid = (ph // merge, pw // merge)
        token = self.processor.video_token
        counts = [p.count(token) for p in pieces]
        if len(pieces) != t or any(not 0 < c <= grid[0] * grid[1] for c in counts):
            raise PromptError(
                f"{self.model_id}: {t} frames of {grid[0]}x{grid[1]} tokens but the processor wrote "
                f"frames with {counts} tokens"
            )
        mask = inputs.get("video_compression_mask")
        if mask is not None and int(mask.sum()) != sum(counts):
            raise PromptError(
                f"{self.model_id}: the compression mask keeps {int(mask.sum())} tokens, "
                f"the prompt has {sum(counts)}"
            )
        return [((grid if c == grid[0] * grid[1] else (1, c)), c) for c in counts]
