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
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from ..errors import PromptError, UnsupportedModelError
from ..layout import Span
from ..prompt import ANSWER_PROMPT, POST_PROMPT, PromptText, question_block
from ..sample import Sample
from .base import MODELS, Adapter, VideoTokens, contiguous_run
from .pllava import PllavaProcessor, expand_run, read_config_dict

log = logging.getLogger(__name__)

CLASS_NAME = "MiniInternVLForConditionalGeneration"
CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


def __getattr__(name: str) -> Any:
    if name == CLASS_NAME:
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_mini_internvl(
    path: str, config: Any, *, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa"
) -> tuple[Any, dict[str, Any]]:
    """Load original InternVL-Chat weights into :func:`model_class`; missing weights are an error."""
    model, info = model_class().from_pretrained(
        path, config=config, dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True
    )
    if info["missing_keys"] or info.get("mismatched_keys"):
        raise UnsupportedModelError(
            f"{path}: weights missing from the checkpoint: {sorted(info['missing_keys'])[:5]}, "
            f"mismatched: {sorted(info.get('mismatched_keys') or ())[:5]}; is it an InternVL-Chat checkpoint?"
        )
    if info["unexpected_keys"]:
        log.warning("%s: checkpoint weights not used, e.g. %s", path, sorted(info["unexpected_keys"])[:3])
    return model, info


def load_tokenizer(path: str, raw: dict[str, Any]) -> Any:
    """The checkpoint's tokenizer. ``config.json`` names remote code (``auto_map``) that the
    tokenizer does not need; handing AutoTokenizer the LLM's config keeps it from asking."""
    from transformers import AutoConfig, AutoTokenizer

    llm_type = (raw.get("llm_config") or {}).get("model_type", "phi3")
    return AutoTokenizer.from_pretrained(path, config=AutoConfig.for_model(llm_type), trust_remote_code=False)


def mini_internvl_processor(tokenizer: Any, raw: dict[str, Any], tokens_per_frame: int) -> PllavaProcessor:
    """The paper's processor for Mini-InternVL: PLLaVA's, at 448 px with ImageNet statistics
    (set in the paper's code, not read from the checkpoint's preprocessor file)."""
    from transformers import CLIPImageProcessorPil

    size = image_size_of(raw)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    return PllavaProcessor(
        image_processor, tokenizer, tokens_per_frame=tokens_per_frame, image_token=CONTEXT_TOKEN
    )


def phi3_prompt(sample: Sample, system: str) -> PromptText:
    """The paper's ``eval_mvbench_phi3`` conversation (REFERENCE_NOTES §2.2, §2.4):
    ``{system} <|user|>\\n<img><IMG_CONTEXT></img>\\n <|user|>\\n{question} \\nOnly give the
    best option. <|assistant|>\\nBest option:(`` (user turns end in a space, no ``<|end|>``)."""
    if not sample.options:
        raise PromptError(
            f"sample {sample.id!r}: the paper defines no open-ended prompt for Mini-InternVL (phi3 template)"
        )
    block, q_range, opts = question_block(sample)
    before = system + " <|user|>\n<img>"
    mid = CONTEXT_TOKEN + "</img>\n <|user|>\n"
    at = len(before) + len(mid)
    text = before + mid + block + " " + POST_PROMPT + " <|assistant|>\n" + ANSWER_PROMPT
    return PromptText(
        text=text,
        placeholder=CONTEXT_TOKEN,
        placeholder_at=len(before),
        system=(0, len(system.rstrip())),
        question=(at, at + len(block)),
        question_no_options=(at + q_range[0], at + q_range[1]),
        options=tuple((at + a, at + b) for a, b in opts),
    )


@MODELS.register(
    "mini_internvl", "Mini-InternVL-4B-Video-FT: original InternVL-Chat (InternViT + Phi-3) checkpoints"
)
class MiniInternVLAdapter(Adapter):
    """Adapter for original-format InternVL-Chat checkpoints with Phi-3 (the paper's
    Mini-InternVL-4B-Video-FT). Claimed through :meth:`matches` (``internvl_chat`` is not a
    transformers model type). Frame ``t`` is ``[s + t*n, s + (t+1)*n)`` with ``n = 256``
    (16 x 16 after pixel shuffle) at 448 px; any frame count works (no pooling)."""

    family = "mini_internvl"
    model_types = ()
    supports = Adapter.supports + " (claims internvl_chat configs with a Phi-3 LLM)"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return is_mini_internvl_config(config)

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        raw = read_config_dict(path)
        tokenizer = load_tokenizer(path, raw)
        config = hf_config(raw, tokenizer.convert_tokens_to_ids(CONTEXT_TOKEN))
        model, _ = load_mini_internvl(path, config, **kwargs)
        return model, mini_internvl_processor(tokenizer, raw, config.image_seq_length)

    @property
    def video_placeholder(self) -> str:
        return CONTEXT_TOKEN

    def build_prompt(self, sample: Sample) -> PromptText:
        if self.prompt_style == "paper":
            return phi3_prompt(sample, self.system_prompt)
        return super().build_prompt(sample)

    def process(self, text: str, frames: Any) -> dict[str, Any]:
        out = self.processor(text=text, videos=[list(frames)], return_tensors="pt")
        out["pixel_values"] = out["pixel_values"].flatten(0, 1)  # frames as images: (T, C, H, W)
        return out

    def expand_placeholder(self, prompt: PromptText, input_ids: torch.Tensor) -> tuple[str, int]:
        return expand_run(prompt, input_ids, self.processor.image_token_id)

    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        cfg = self.model.config
        t = int(inputs["pixel_values"].shape[0])
        patch = cfg.vision_config.patch_size
        patch = patch[-1] if isinstance(patch, (tuple, list)) else patch
        side = int(inputs["pixel_values"].shape[-1] // patch * cfg.downsample_ratio)
        n = side * side
        video = contiguous_run(input_ids, self.processor.image_token_id, "video")
        if len(video) != t * n:
            raise PromptError(f"{len(video)} <IMG_CONTEXT> tokens for {t} frames of {side}x{side}")
        frames = tuple(Span(video.start + i * n, video.start + (i + 1) * n) for i in range(t))
        return VideoTokens(video, frames, ((side, side),) * t)
