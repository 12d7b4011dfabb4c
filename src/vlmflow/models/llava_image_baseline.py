"""The paper's ImageLLM baseline: a LLaVA-NeXT image model reading video the PLLaVA way.

The paper's LLaVA-NeXT-7B/13B-Video-FT models are ``llava-hf/llava-v1.6-vicuna-{7,13}b-hf``
fine-tuned on video with PLLaVA's pooling. Its image-LLM comparison runs the base model
on the same frames, pooled the same way, with no video fine-tuning, so that the
``cross-frame`` curves of a VideoLLM and of its image base can be compared.

This adapter loads a HF ``llava_next`` checkpoint's CLIP tower, projector and language
model into :class:`~vlmflow.models.pllava.PllavaForConditionalGeneration` (its
``image_newline`` is unused: no AnyRes tiling), pools ``(8, g/2, g/2)`` for a ``g x g``
patch grid ((8, 12, 12) at 336 px, as the fine-tuned models), and prepares inputs with
PLLaVA's processor built from the checkpoint's own tokenizer and CLIP preprocessing
settings. Everything after loading is the PLLaVA adapter's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import MODELS
from .pllava import (
    PllavaAdapter,
    PllavaProcessor,
    check_pooling_shape,
    load_pooled_llava,
    patch_grid,
    read_config_dict,
)

BASELINE_FRAMES = 8  # the fine-tuned models' temporal pooling


def baseline_pooling(config: Any) -> tuple[int, int, int]:
    """PLLaVA's pooling for a patch grid of the tower: 8 frame groups, half the grid."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return (BASELINE_FRAMES, max(1, side // 2), max(1, side // 2))


def baseline_config(path: str, pooling_shape: Sequence[int] | None = None) -> Any:
    """A ``LlavaConfig`` with PLLaVA pooling from a ``llava_next`` checkpoint's config."""
    from transformers import LlavaConfig, LlavaNextConfig

    nx = LlavaNextConfig.from_pretrained(path)
    shape = check_pooling_shape(pooling_shape or baseline_pooling(nx), path, patch_grid(nx))
    return LlavaConfig(
        vision_config=nx.vision_config,
        text_config=nx.text_config,
        image_token_index=nx.image_token_index,
        projector_hidden_act=nx.projector_hidden_act,
        vision_feature_select_strategy=nx.vision_feature_select_strategy,
        vision_feature_layer=nx.vision_feature_layer,
        multimodal_projector_bias=nx.multimodal_projector_bias,
        tie_word_embeddings=nx.tie_word_embeddings,
        pooling_shape=list(shape),
        num_frames=shape[0],
    )


@MODELS.register(
    "llava_image_baseline", "LLaVA-NeXT image model (llava-v1.6) on PLLaVA-pooled frames (ImageLLM baseline)"
)
class LlavaImageBaselineAdapter(PllavaAdapter):
    """HF ``llava_next`` checkpoints as the paper's ImageLLM baseline (PLLaVA pooling)."""

    family = "llava_image_baseline"
    model_types = ("llava_next",)

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return False  # claimed by model_type

    @classmethod
    def load_model(
        cls, path: str, *, pooling_shape: Sequence[int] | None = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        config = baseline_config(path, pooling_shape)
        model, _ = load_pooled_llava(path, config, **kwargs)
        raw = read_config_dict(path)
        processor = PllavaProcessor.from_pretrained(path, pooling_shape=model.pooling_shape, config=raw)
        return model, processor
