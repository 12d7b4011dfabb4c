"""Adapter for Hugging Face ``LlavaOnevisionForConditionalGeneration``.

Like LLaVA-NeXT-Video, the processor expands one ``<video>`` placeholder into one run of
video tokens, but each frame's ``g x g`` patch grid (``g = image_size // patch_size``,
27 at real size) is bilinearly pooled to ``ceil(g/2) x ceil(g/2)`` (14 x 14 = 196), and
the run ends with **one extra token of the same id**: the learned ``image_newline``
embedding appended once per video. That token belongs to the ``video`` group but to no
frame, so frame ``t`` is ``[s + t*n, s + (t+1)*n)`` and the run has ``T*n + 1`` tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import PromptError
from .base import MODELS, NO_HUB_KERNELS, Adapter, VideoTokens, contiguous_run
from .frames import stacked_frames
from .llava_next_video import LlavaNextVideoAdapter
from .processors import load_processor


@MODELS.register("llava_onevision", "LLaVA-OneVision (HF LlavaOnevisionForConditionalGeneration)")
class LlavaOnevisionAdapter(LlavaNextVideoAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    supports = Adapter.supports + " (the trailing newline token is video but no frame)"

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        from transformers import (
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionProcessor,
            LlavaOnevisionVideoProcessor,
        )

        model = LlavaOnevisionForConditionalGeneration.from_pretrained(path, **kwargs, **NO_HUB_KERNELS)
        processor = load_processor(LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor, path)
        return model, processor

    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        cfg = self.model.config
        video = contiguous_run(input_ids, cfg.video_token_id, "video")
        t = inputs["pixel_values_videos"].shape[1]  # (1, T, C, H, W)
        # the model pools the vision tower's patch grid (LlavaOnevisionModel.apply_pooling) ...
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        pooled = math.ceil(side / 2)
        # ... and the processor counts from its own num_image_tokens: they must agree
        proc_side = math.ceil(int(math.sqrt(self.processor.num_image_tokens)) / 2)
        if proc_side != pooled:
            raise PromptError(
                f"{self.model_id}: the processor counts {proc_side}x{proc_side} video tokens a frame, "
                f"the model pools to {pooled}x{pooled}; check num_image_tokens in the processor config"
            )
        return stacked_frames(video, t, (pooled, pooled), trail=1)
