"""Adapter for Hugging Face ``LlavaNextVideoForConditionalGeneration``.

The processor expands one ``<video>`` placeholder into ``T * h * w`` video tokens, one
contiguous run with frame ``t`` at ``[s + t*n, s + (t+1)*n)``; ``h x w`` is the CLIP patch
grid after the model's spatial pooling (stride ``spatial_pool_stride``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import PromptError
from ..layout import Span
from ..prompt import PromptText
from .base import MODELS, NO_HUB_KERNELS, Adapter, VideoTokens, contiguous_run
from .processors import load_processor

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def square_frame_processor(
    tokenizer: Any, *, image_size: int, patch_size: int, chat_template: str | None = None
) -> Any:
    """The real ``LlavaNextVideoProcessor`` for ``image_size`` x ``image_size`` frames with CLIP
    normalisation, as the embedded models (``tiny``, ``demo``) ship it: each frame is
    ``(image_size / patch_size) ** 2`` patches before the model's spatial pooling."""
    from transformers import LlavaNextImageProcessor, LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor

    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    norm = dict(image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size=size, crop_size=crop, **norm),
        image_processor=LlavaNextImageProcessor(
            size=size, crop_size=crop, image_grid_pinpoints=[[image_size, image_size]], **norm
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=chat_template,
    )


def square_frame_config(
    tokenizer: Any,
    text_config: Any,
    vision: dict[str, int],
    *,
    image_size: int,
    patch_size: int,
    pool_stride: int,
    tie_word_embeddings: bool = True,
) -> Any:
    """The ``LlavaNextVideoConfig`` of the embedded models: a CLIP tower (``vision``: its
    sizes) on square ``image_size`` frames, average-pooled by ``pool_stride``, over
    ``text_config``; the ``<video>``/``<image>`` ids come from ``tokenizer``."""
    from transformers import CLIPVisionConfig, LlavaNextVideoConfig

    tower = CLIPVisionConfig(
        **vision, image_size=image_size, patch_size=patch_size, projection_dim=vision["hidden_size"]
    )
    return LlavaNextVideoConfig(
        vision_config=tower,
        text_config=text_config,
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[[image_size, image_size]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        spatial_pool_stride=pool_stride,
        spatial_pool_mode="average",
        tie_word_embeddings=tie_word_embeddings,
    )


@MODELS.register("llava_next_video", "LLaVA-NeXT-Video (HF LlavaNextVideoForConditionalGeneration)")
class LlavaNextVideoAdapter(Adapter):
    family = "llava_next_video"
    model_types = ("llava_next_video",)

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        from transformers import (
            LlavaNextVideoForConditionalGeneration,
            LlavaNextVideoProcessor,
            LlavaNextVideoVideoProcessor,
        )

        model = LlavaNextVideoForConditionalGeneration.from_pretrained(path, **kwargs, **NO_HUB_KERNELS)
        processor = load_processor(LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor, path)
        return model, processor

    @property
    def video_placeholder(self) -> str:
        return self.processor.video_token

    def expand_placeholder(self, prompt: PromptText, input_ids: torch.Tensor) -> tuple[str, int]:
        n = int((input_ids[0] == self.model.config.video_token_id).sum())
        tok = prompt.placeholder
        at = prompt.placeholder_at
        return prompt.text[:at] + tok * n + prompt.text[at + len(tok) :], (n - 1) * len(tok)

    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        cfg = self.model.config
        video = contiguous_run(input_ids, cfg.video_token_id, "video")
        pixels = inputs["pixel_values_videos"]  # (1, T, C, H, W)
        t, (height, width) = pixels.shape[1], pixels.shape[-2:]
        patch, stride = cfg.vision_config.patch_size, cfg.spatial_pool_stride
        h, w = (height // patch) // stride, (width // patch) // stride
        n = h * w
        if len(video) != t * n:
            raise PromptError(
                f"{len(video)} video tokens for {t} frames of {h}x{w}; the processor and the "
                "model disagree on tokens per frame"
            )
        frames = tuple(Span(video.start + i * n, video.start + (i + 1) * n) for i in range(t))
        return VideoTokens(video, frames, ((h, w),) * t)
