"""Adapter for Hugging Face ``InternVLForConditionalGeneration`` (InternVL 2.5 / 3 ``-hf``).

The model has no video path: the processor passes the frames as images (``pixel_values``
``(T, C, H, W)``, one tile per frame) and expands the ``<video>`` placeholder into lines
``FrameN: <img>`` + ``image_seq_length`` context tokens + ``</img>`` joined by ``\\n``. The
context tokens of a frame are its ``(g*r) x (g*r)`` grid after pixel shuffle (``g`` =
image size / patch size, ``r`` = ``downsample_ratio``; 16 x 16 = 256 at real size).

Frame ``t``'s span runs from the newline before its label (none for the first frame)
through its ``</img>``; the grid starts after ``FrameN: <img>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import PromptError
from .base import MODELS, NO_HUB_KERNELS, Adapter
from .frames import Grid, ReplacementAdapter
from .processors import load_processor


@MODELS.register("internvl", "InternVL 2.5/3 (HF InternVLForConditionalGeneration, frames as images)")
class InternVLAdapter(ReplacementAdapter):
    family = "internvl"
    model_types = ("internvl",)
    supports = Adapter.supports + " (frames as images; frame = FrameN: <img> grid </img>)"
    frame_separator = "\n"  # InternVLProcessor.replace_video_token joins the frame lines with it

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        from transformers import InternVLForConditionalGeneration, InternVLProcessor, InternVLVideoProcessor

        model = InternVLForConditionalGeneration.from_pretrained(path, **kwargs, **NO_HUB_KERNELS)
        processor = load_processor(InternVLProcessor, InternVLVideoProcessor, path)
        return model, processor

    def processor_kwargs(self, frames: Any) -> dict[str, Any]:
        """Frames resized to the vision tower's image size: a video processor config may carry
        another size (transformers writes its class default, 384 px, into derived checkpoints)
        and the model's token count per frame only holds at the tower's own size."""
        h, w = _pair(self.model.config.vision_config.image_size)
        return {"videos_kwargs": {"size": {"height": h, "width": w}}}

    @property
    def media_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def frame_grids(self, inputs: dict[str, Any], pieces: Sequence[str]) -> list[tuple[Grid, int]]:
        cfg = self.model.config
        pixels = inputs["pixel_values"]  # (T, C, H, W): one tile per frame
        ph, pw = _pair(cfg.vision_config.patch_size)
        h = int(pixels.shape[-2] // ph * cfg.downsample_ratio)
        w = int(pixels.shape[-1] // pw * cfg.downsample_ratio)
        n = self.processor.image_seq_length
        if h * w != n or cfg.image_seq_length != n:
            raise PromptError(
                f"{self.model_id}: frames of {tuple(pixels.shape[-2:])} px give {h}x{w} tokens after "
                f"pixel shuffle, the processor writes {n} (config: {cfg.image_seq_length})"
            )
        token = self.processor.image_token
        counts = [p.count(token) for p in pieces]
        if len(pieces) != pixels.shape[0] or any(c != n for c in counts):
            raise PromptError(
                f"{self.model_id}: {pixels.shape[0]} frames but the processor wrote frame lines with "
                f"{counts} context tokens"
            )
        return [((h, w), n) for _ in pieces]


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))
