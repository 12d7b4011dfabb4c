"""Mini-InternVL-4B-Video-FT (the paper's InternVL model) from transformers components.

The paper's checkpoint is an original-format InternVL-Chat folder (``model_type``
``"internvl_chat"``, remote code): InternViT-300M-448px, pixel shuffle 0.5, the ``mlp1``
projector and Phi-3-mini, run PLLaVA-style (REFERENCE_NOTES §3.2): one 448 px tile per
frame (no dynamic tiling, no thumbnail), the CLS token dropped, each frame's 32 x 32
patches shuffled to 16 x 16 = 256 tokens, and a single ``<IMG_CONTEXT>`` in
``<img><IMG_CONTEXT></img>`` standing for all ``T * 256`` of them, frame after frame,
with plain 1-D positions.

No remote code is needed: every piece has a transformers counterpart, and HF
``InternVLForConditionalGeneration`` is exactly this forward when the prompt holds one
``<IMG_CONTEXT>`` per frame token and the frames are passed as images.

=========================  ==================================================================
original (remote code)     transformers 5
=========================  ==================================================================
InternViT-300M-448px       ``InternVLVisionModel`` (``norm_type``, ``attention_bias`` = qkv_bias,
                           ``use_qk_norm`` = qk_normalization, layer scale, absolute positions,
                           no final norm: ``use_mean_pooling=True``)
``pixel_shuffle`` v2       ``InternVLModel.pixel_shuffle`` (v1 = its grid transposed, patched here)
``mlp1`` (LN, FC, GELU,    ``InternVLMultiModalProjector`` (``layer_norm``, ``linear_1``, ``act``,
FC)                        ``linear_2``)
Phi-3 (remote copy)        ``Phi3ForCausalLM`` (same fused ``qkv_proj`` / ``gate_up_proj``)
=========================  ==================================================================

The weights need more than renaming: InternViT fuses ``attn.qkv``, which is split into
``q_proj`` / ``k_proj`` / ``v_proj`` while loading, through a conversion mapping registered
with transformers for this class (:data:`RENAMES`, :func:`model_class`). The processor is
PLLaVA's (:class:`~vlmflow.models.pllava.PllavaProcessor`: long/short-edge resize, then
CLIP resize and centre crop to 448 with ImageNet mean/std) without pooling.

Modelling code (:mod:`.modeling_mini_internvl`), processor (:mod:`.processing_mini_internvl`)
and adapter (:mod:`.adapter`) live apart, in transformers' per-family style.
"""

from __future__ import annotations

from typing import Any

from .adapter import MiniInternVLAdapter, phi3_open_ended_prompt, phi3_prompt
from .modeling_mini_internvl import (
    CLASS_NAME,
    QKV_SOURCE,
    QKV_TARGETS,
    RENAMES,
    hf_config,
    image_size_of,
    is_mini_internvl_config,
    load_mini_internvl,
    model_class,
)
from .processing_mini_internvl import (
    CONTEXT_TOKEN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_tokenizer,
    mini_internvl_processor,
)

__all__ = [
    "CLASS_NAME",
    "CONTEXT_TOKEN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "QKV_SOURCE",
    "QKV_TARGETS",
    "RENAMES",
    "MiniInternVLAdapter",
    "hf_config",
    "image_size_of",
    "is_mini_internvl_config",
    "load_mini_internvl",
    "load_tokenizer",
    "mini_internvl_processor",
    "model_class",
    "phi3_open_ended_prompt",
    "phi3_prompt",
]


def __getattr__(name: str) -> Any:
    if name == CLASS_NAME:
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
