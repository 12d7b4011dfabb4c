"""Adapter for Hugging Face ``VideoLlavaForConditionalGeneration``.

The processor expands one ``<video>`` placeholder into one run of video tokens. Unlike the
image path, the video path keeps the CLIP CLS token: each frame contributes
``num_additional_image_tokens`` (1) CLS token followed by its ``(H/p) x (W/p)`` patch grid
(1 + 16 x 16 = 257 at real size, 8 frames -> 2056). So frame ``t`` is
``[s + t*n, s + (t+1)*n)`` with ``n = 1 + h*w`` and its grid starts one token in.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import MODELS, NO_HUB_KERNELS, Adapter, VideoTokens, contiguous_run
from .frames import stacked_frames
from .llava_next_video import LlavaNextVideoAdapter
from .processors import load_processor


@MODELS.register("video_llava", "Video-LLaVA (HF VideoLlavaForConditionalGeneration)")
class VideoLlavaAdapter(LlavaNextVideoAdapter):
    family = "video_llava"
    model_types = ("video_llava",)
    supports = Adapter.supports + " (frame = CLS token + patch grid)"

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        from transformers import (
            VideoLlavaForConditionalGeneration,
            VideoLlavaProcessor,
            VideoLlavaVideoProcessor,
        )

        model = VideoLlavaForConditionalGeneration.from_pretrained(path, **kwargs, **NO_HUB_KERNELS)
        processor = load_processor(VideoLlavaProcessor, VideoLlavaVideoProcessor, path)
        return model, processor

    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        video = contiguous_run(input_ids, self.model.config.video_token_id, "video")
        pixels = inputs["pixel_values_videos"]  # (1, T, C, H, W)
        t, (height, width) = pixels.shape[1], pixels.shape[-2:]
        patch = self.processor.patch_size
        grid = (height // patch, width // patch)
        # VideoLlavaModel.get_video_features keeps every vision-tower token of a frame: the
        # processor's extra (CLS) tokens come first, then the patch grid
        return stacked_frames(video, t, grid, lead=self.processor.num_additional_image_tokens)
