"""PLLaVA-style VideoLLMs: the paper's LLaVA-NeXT-7B/13B-Video-FT checkpoints.

Architecture (REFERENCE_NOTES §3.1): a CLIP ViT tower read at ``vision_feature_layer``
(-2) without its CLS token gives an ``h x w`` patch grid per frame; the LLaVA projector
(``linear_1 -> GELU -> linear_2``) maps every patch into the LLM embedding space; then
the frames of one video are rearranged to ``(d, T, h, w)`` and **3-D average pooled**
(``nn.AdaptiveAvgPool3d(pooling_shape)``, ``(8, 12, 12)`` for the paper's models) and
flattened in ``(t, h, w)`` row-major order. The prompt holds a single ``<image>``
placeholder that stands for all ``t * h' * w'`` pooled embeddings, with no separators
between frames and plain 1-D positions over the expanded sequence.

Transformers has no PLLaVA class. :class:`PllavaForConditionalGeneration` is HF's own
``LlavaForConditionalGeneration`` (CLIP tower, LLaVA projector, Llama decoder, head; so
the decoder sits at ``model.model.language_model`` as in every HF family) with PLLaVA's
pooling and placeholder merge in ``forward``. Checkpoints keep PLLaVA's key layout
(``vision_tower.vision_model.*``, ``multi_modal_projector.linear_{1,2}.*``,
``language_model.model.*``, ``language_model.lm_head.weight``); :data:`KEY_MAPPING`
renames them on load through ``from_pretrained(key_mapping=...)``, and also accepts
the layouts that later transformers versions save.

PLLaVA's ``config.json`` says ``model_type`` ``"llava"`` (map-the-flow) or ``"pllava"``
(magic-research); :func:`is_pllava_config` recognises it by its ``pooling_shape`` /
``use_pooling`` fields or its ``architectures`` entry, so plain LLaVA checkpoints
(also ``"llava"``) are not claimed.

The processor (:class:`PllavaProcessor`) reproduces PLLaVA's: a long/short-edge resize
of the whole video, then the CLIP image processor (shortest-edge resize, centre crop,
CLIP mean/std), and a tokenizer. Unlike PLLaVA's, it writes the placeholder out as one
``<image>`` token per pooled embedding (as HF ``LlavaProcessor`` does), so the token ids
the engine sees line up one-to-one with the positions the decoder layers see.

Modelling code (:mod:`.modeling_pllava`), processor (:mod:`.processing_pllava`) and adapter
(:mod:`.adapter`) live apart, in transformers' per-family style.
"""

from __future__ import annotations

from typing import Any

from .adapter import PllavaAdapter
from .modeling_pllava import (
    KEY_MAPPING,
    PLLAVA_FIELDS,
    PLLAVA_MODEL_TYPES,
    check_pooling_shape,
    is_pllava_config,
    load_pooled_llava,
    model_class,
    patch_grid,
    pllava_config,
    read_config_dict,
)
from .processing_pllava import (
    LONG_EDGE_CAP,
    PROCESSOR_FILE,
    PllavaProcessor,
    clip_image_processor,
    expand_run,
)

__all__ = [
    "KEY_MAPPING",
    "LONG_EDGE_CAP",
    "PLLAVA_FIELDS",
    "PLLAVA_MODEL_TYPES",
    "PROCESSOR_FILE",
    "PllavaAdapter",
    "PllavaProcessor",
    "check_pooling_shape",
    "patch_grid",
    "clip_image_processor",
    "expand_run",
    "is_pllava_config",
    "load_pooled_llava",
    "model_class",
    "pllava_config",
    "read_config_dict",
]


def __getattr__(name: str) -> Any:
    if name == "PllavaForConditionalGeneration":
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
