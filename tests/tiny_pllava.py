"""Tiny random PLLaVA and LLaVA-NeXT (image) checkpoints for the PLLaVA-family tests.

The PLLaVA checkpoint is written the way the paper's checkpoints are laid out: a
``config.json`` with ``model_type`` ``"llava"`` and PLLaVA's pooling fields, weights in
a safetensors file under PLLaVA's key names, the CLIP image processor's
``preprocessor_config.json`` and the tokenizer, and no vlmflow-specific file. The
LLaVA-NeXT checkpoint is the transformers class saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tiny import build_tokenizer, clip_and_llama, save_scaled

IMAGE = 32  # px; 8 px patches -> a 4x4 patch grid per frame


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~20x faster than two
    competing with other processes. Import into a test module to use; restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pllava_key(name: str) -> str:
    """HF Llava module name -> the name PLLaVA's checkpoints store (REFERENCE_NOTES §3.1)."""
    name = re.sub(r"^model\.language_model\.", "language_model.model.", name)
    name = re.sub(r"^model\.vision_tower\.", "vision_tower.vision_model.", name)
    name = re.sub(r"^model\.multi_modal_projector\.", "multi_modal_projector.", name)
    return re.sub(r"^lm_head\.", "language_model.lm_head.", name)


def build_pllava(
    path: Path,
    *,
    layers: int = 4,
    seed: int = 0,
    pooling_shape: tuple[int, int, int] = (4, 2, 2),
    num_frames: int = 4,
    image_size: int = IMAGE,
    patch_size: int = 8,
) -> Path:
    """Save a tiny PLLaVA checkpoint in PLLaVA's own layout to ``path`` and return it.

    Default: 4 frames of 4x4 CLIP patches pooled (4, 2, 2) -> 4 frame groups of 2x2 = 16
    tokens. ``image_size=336, patch_size=14, pooling_shape=(8, 12, 12)`` gives the paper's
    geometry (24x24 patches, 144 tokens per frame group) with tiny layer widths.
    """
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessorPil, LlavaConfig

    from vlmflow.models.pllava import model_class

    tok = build_tokenizer()
    vision, text = clip_and_llama(layers, tok, image_size, patch_size)
    image_token = tok.convert_tokens_to_ids("<image>")
    fields = dict(pooling_shape=list(pooling_shape), num_frames=num_frames)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token, **fields)
    torch.manual_seed(seed)
    model = model_class()(config)
    with torch.no_grad():  # random init gives near-uniform answers; make probabilities move visibly
        model.lm_head.weight.mul_(20.0)
    path.mkdir(parents=True, exist_ok=True)
    weights = {pllava_key(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["PllavaForConditionalGeneration"],
        "model_type": "llava",
        "vision_config": {**vision.to_diff_dict(), "model_type": "clip_vision_model"},
        "text_config": {**text.to_diff_dict(), "model_type": "llama"},
        "ignore_index": -100,
        "image_token_index": image_token,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "vocab_size": len(tok),
        "pooling_method": "avg",
        "pooling_shape": list(pooling_shape),
        "frame_shape": [image_size // patch_size] * 2,
        "num_frames": num_frames,
        "use_pooling": True,
        "gradient_checkpointing": False,
        "pad_token_id": tok.pad_token_id,
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessorPil(size=size, crop_size=crop).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_llava_next(path: Path, *, layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny ``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor`` (the
    llava-v1.6 image model the paper's video models were fine-tuned from)."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = build_tokenizer()
    vision, text = clip_and_llama(layers, tok, IMAGE)
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[[IMAGE, IMAGE]],
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    size = {"shortest_edge": IMAGE}
    image_processor = LlavaNextImageProcessor(
        size=size, crop_size={"height": IMAGE, "width": IMAGE}, image_grid_pinpoints=[[IMAGE, IMAGE]]
    )
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8)
    return save_scaled(LlavaNextForConditionalGeneration(config), processor, path)


MINI_INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<|user|>", "<|assistant|>", "<|end|>"]


def internvl_key(name: str) -> str:
    """HF InternVL module name -> the original InternVL-Chat checkpoint name (q/k/v fused
    separately). The inverse of ``vlmflow.models.mini_internvl.RENAMES``, written out."""
    subs = [
        (r"^lm_head\.", "language_model.lm_head."),
        (r"^model\.language_model\.", "language_model.model."),
        (r"^model\.multi_modal_projector\.layer_norm\.", "mlp1.0."),
        (r"^model\.multi_modal_projector\.linear_1\.", "mlp1.1."),
        (r"^model\.multi_modal_projector\.linear_2\.", "mlp1.3."),
        (r"^model\.vision_tower\.embeddings\.cls_token$", "vision_model.embeddings.class_embedding"),
        (
            r"^model\.vision_tower\.embeddings\.position_embeddings$",
            "vision_model.embeddings.position_embedding",
        ),
        (
            r"^model\.vision_tower\.embeddings\.patch_embeddings\.projection\.",
            "vision_model.embeddings.patch_embedding.",
        ),
        (r"^model\.vision_tower\.encoder\.layer\.", "vision_model.encoder.layers."),
        (r"\.layernorm_before\.", ".norm1."),
        (r"\.layernorm_after\.", ".norm2."),
        (r"\.lambda_1$", ".ls1"),
        (r"\.lambda_2$", ".ls2"),
        (r"\.attention\.projection_layer\.", ".attn.proj."),
        (r"\.attention\.", ".attn."),
    ]
    for a, b in subs:
        name = re.sub(a, b, name)
    return name


def build_mini_internvl(path: Path, *, layers: int = 4, seed: int = 0, ps_version: str = "v2") -> Path:
    """Save a tiny Mini-InternVL checkpoint in the original InternVL-Chat layout (remote-code
    names, fused ``attn.qkv``, ``config.json`` with ``vision_config``/``llm_config``).

    32 px frames, 8 px patches (4x4) pixel-shuffled by 0.5 -> 2x2 = 4 tokens per frame; the
    Phi-3 config uses the legacy ``"su"`` rope scaling of Phi-3-mini-128k.
    """
    from safetensors.torch import save_file
    from transformers import InternVLConfig, InternVLVisionConfig, Phi3Config

    from vlmflow.models.mini_internvl import model_class

    tok = build_tokenizer()
    tok.add_special_tokens(
        {"additional_special_tokens": MINI_INTERNVL_TOKENS}, replace_extra_special_tokens=False
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE,
        patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu",
    )  # fmt: skip
    head_dim = 64 // 4
    llm = dict(
        architectures=["Phi3ForCausalLM"], model_type="phi3", hidden_size=64, intermediate_size=128,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
        max_position_embeddings=131072, original_max_position_embeddings=4096, rope_theta=10000.0,
        rope_scaling={"type": "su", "long_factor": [1.0 + i / 8 for i in range(head_dim // 2)],
                      "short_factor": [1.0 + i / 16 for i in range(head_dim // 2)]},
        sliding_window=262144, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    rope = dict(llm["rope_scaling"], type="longrope")
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            **vision,
            attention_bias=True,
            use_qk_norm=False,
            norm_type="layer_norm",
            use_absolute_position_embeddings=True,
            use_mean_pooling=True,
        ),  # fmt: skip
        text_config=Phi3Config(
            **{k: v for k, v in llm.items() if k != "architectures"} | {"rope_scaling": rope}
        ),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    config.ps_version = ps_version
    torch.manual_seed(seed)
    model = model_class()(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
        for p in model.parameters():  # constant inits (norms, layer scales) would hide swapped names
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                p.add_(torch.randn_like(p) * 0.05)
    weights: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor]] = {}
    for name, value in model.state_dict().items():
        m = re.match(r"^(.*\.attention)\.([qkv])_proj\.(weight|bias)$", name)
        if m:
            fused.setdefault(internvl_key(f"{m[1]}.qkv.{m[3]}"), []).append(value)
        else:
            weights[internvl_key(name)] = value.contiguous()
    weights.update({k: torch.cat(v).contiguous() for k, v in fused.items()})  # q, k, v in module order
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"},
        "vision_config": {
            **vision,
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "qkv_bias": True,
            "qk_normalization": False,
            "norm_type": "layer_norm",
            "use_flash_attn": False,
            "drop_path_rate": 0.0,
            "initializer_factor": 0.1,
            "num_channels": 3,
        },  # fmt: skip
        "llm_config": llm,
        "select_layer": -1,
        "downsample_ratio": 0.5,
        "ps_version": ps_version,
        "template": "phi3-chat",
        "force_image_size": IMAGE,
        "dynamic_image_size": False,
        "use_thumbnail": False,
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    tok.save_pretrained(path)
    return path
