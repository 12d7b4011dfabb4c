"""Mini-InternVL's modelling code from transformers components: the HF config from the
original ``config.json``, ``MiniInternVLForConditionalGeneration`` (HF
``InternVLForConditionalGeneration`` loading original weights, with ``ps_version``) and
loading. See the package docstring for the correspondence of the parts."""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from ...errors import UnsupportedModelError
from ..base import NO_HUB_KERNELS

log = logging.getLogger(__name__)

CLASS_NAME = "MiniInternVLForConditionalGeneration"

# original InternVL-Chat names -> HF InternVL names; applied in order, each may chain
RENAMES: tuple[tuple[str, str], ...] = (
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "model.vision_tower.embeddings.position_embeddings"),
    (
        r"^vision_model\.embeddings\.patch_embedding\.",
        "model.vision_tower.embeddings.patch_embeddings.projection.",
    ),
    (r"^vision_model\.encoder\.layers\.", "model.vision_tower.encoder.layer."),
    (r"^(model\.vision_tower\.encoder\.layer\.\d+)\.norm1\.", r"\1.layernorm_before."),
    (r"^(model\.vision_tower\.encoder\.layer\.\d+)\.norm2\.", r"\1.layernorm_after."),
    (r"^(model\.vision_tower\.encoder\.layer\.\d+)\.ls1$", r"\1.lambda_1"),
    (r"^(model\.vision_tower\.encoder\.layer\.\d+)\.ls2$", r"\1.lambda_2"),
    (r"^(model\.vision_tower\.encoder\.layer\.\d+)\.attn\.proj\.", r"\1.attention.projection_layer."),
    (r"^(model\.vision_tower\.encoder\.layer\.\d+)\.attn\.", r"\1.attention."),
)
QKV_SOURCE = "attention.qkv"  # after RENAMES; fused [q; k; v] along dim 0 (weight and bias)
QKV_TARGETS = ("attention.q_proj", "attention.k_proj", "attention.v_proj")


def is_mini_internvl_config(config: dict[str, Any]) -> bool:
    """An original-format InternVL-Chat ``config.json`` with a Phi-3 language model."""
    if config.get("model_type") != "internvl_chat":
        return False
    llm = config.get("llm_config") or {}
    return llm.get("model_type") == "phi3" or "Phi3ForCausalLM" in (llm.get("architectures") or [])


def image_size_of(raw: dict[str, Any]) -> int:
    return int(raw.get("force_image_size") or (raw.get("vision_config") or {}).get("image_size", 448))


def hf_config(raw: dict[str, Any], image_token_id: int) -> Any:
    """An ``InternVLConfig`` (vision + Phi-3) from an InternVL-Chat ``config.json`` dict.

    Missing InternViT fields take ``InternVisionConfig``'s defaults (RMSNorm, qk norm, no
    qkv bias: the 6B's), missing ``ps_version`` is ``'v1'``, as in InternVL's own config.
    """
    from transformers import InternVLConfig, InternVLVisionConfig, Phi3Config

    v = raw.get("vision_config") or {}
    size = image_size_of(raw)
    vision = InternVLVisionConfig(
        hidden_size=v.get("hidden_size", 3200),
        intermediate_size=v.get("intermediate_size", 12800),
        num_hidden_layers=v.get("num_hidden_layers", 48),
        num_attention_heads=v.get("num_attention_heads", 25),
        num_channels=v.get("num_channels", 3),
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 14),
        hidden_act=v.get("hidden_act", "gelu"),
        layer_norm_eps=v.get("layer_norm_eps", 1e-6),
        norm_type=v.get("norm_type", "rms_norm"),
        attention_bias=v.get("qkv_bias", False),
        use_qk_norm=v.get("qk_normalization", True),
        layer_scale_init_value=v.get("initializer_factor", 0.1),
        use_absolute_position_embeddings=True,
        use_mean_pooling=True,  # InternViT has no norm after the last layer
    )
    llm = {
        k: val for k, val in (raw.get("llm_config") or {}).items() if k not in ("auto_map", "_name_or_path")
    }
    rope = llm.get("rope_scaling")
    if isinstance(rope, dict) and rope.get("type") == "su":
        # transformers 5.24 maps "su" to "longrope" but then misses original_max_position_embeddings
        llm["rope_scaling"] = {**rope, "type": "longrope"}
    text = Phi3Config(**llm)
    ratio = float(raw.get("downsample_ratio", 0.5))
    side = int(size // int(v.get("patch_size", 14)) * ratio)
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=side * side,
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=int(raw.get("select_layer", -1)),
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
    )
    config.ps_version = raw.get("ps_version", "v1")
    config.force_image_size = size
    return config


@functools.cache
def model_class() -> type:
    """``MiniInternVLForConditionalGeneration``: HF ``InternVLForConditionalGeneration`` that
    loads original InternVL-Chat weights (renames + the fused ``qkv`` split) and honours
    ``ps_version``. Defined (and its conversion registered) on first use."""
    from transformers import InternVLForConditionalGeneration
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import Chunk, WeightConverter, WeightRenaming

    mapping = [WeightRenaming(source_patterns=a, target_patterns=b) for a, b in RENAMES]
    mapping.append(
        WeightConverter(
            source_patterns=QKV_SOURCE, target_patterns=list(QKV_TARGETS), operations=[Chunk(dim=0)]
        )
    )
    register_checkpoint_conversion_mapping(CLASS_NAME, mapping, overwrite=True)

    def __init__(self: Any, config: Any) -> None:
        InternVLForConditionalGeneration.__init__(self, config)
        if getattr(config, "ps_version", "v2") == "v1":
            shuffle = self.model.pixel_shuffle  # v2; v1 leaves the output grid transposed

            def pixel_shuffle_v1(features: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
                return shuffle(features, scale_factor=scale_factor).transpose(1, 2).contiguous()

            self.model.pixel_shuffle = pixel_shuffle_v1

    return type(
        CLASS_NAME, (InternVLForConditionalGeneration,), {"__init__": __init__, "__module__": __name__}
    )


def load_mini_internvl(
    path: str, config: Any, *, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa"
) -> tuple[Any, dict[str, Any]]:
    """Load original InternVL-Chat weights into :func:`model_class`; missing weights are an error."""
    model, info = model_class().from_pretrained(
        path,
        config=config,
        dtype=dtype,
        attn_implementation=attn_implementation,
        output_loading_info=True,
        **NO_HUB_KERNELS,
    )
    if info["missing_keys"] or info.get("mismatched_keys"):
        raise UnsupportedModelError(
            f"{path}: weights missing from the checkpoint: {sorted(info['missing_keys'])[:5]}, "
            f"mismatched: {sorted(info.get('mismatched_keys') or ())[:5]}; is it an InternVL-Chat checkpoint?"
        )
    if info["unexpected_keys"]:
        log.warning("%s: checkpoint weights not used, e.g. %s", path, sorted(info["unexpected_keys"])[:3])
    return model, info
