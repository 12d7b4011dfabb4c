"""Tiny randomly initialised Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints built from the real
transformers classes, with their real processors and video processors and a small
byte-level BPE tokenizer built here the way Qwen's own is (nothing is downloaded).

Every family sees 8 px patches merged 2x2, and the test frames (40 x 48 px) are resized to
32 x 48 px, so each temporal patch of 2 frames becomes a 2 x 3 grid of 6 visual tokens.
The grid is deliberately not square, so a row/column mix-up would show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tiny import CORPUS

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_CORPUS = [
    *CORPUS,
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
    "<0.2 seconds><1.2 seconds><2.2 seconds><3.2 seconds><0.8 seconds><1.8 seconds><2.8 seconds>",
]
# The Qwen2-VL / Qwen2.5-VL / Qwen3-VL chat templates reduced to what vlmflow renders: the
# video is ``<|vision_start|><|video_pad|><|vision_end|>`` inside the user turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PATCH = 8
MERGE = 2
# frames of 40 x 48 px resize to 32 x 48 (a multiple of PATCH * MERGE) under this budget
PIXELS = {"shortest_edge": 16 * 16, "longest_edge": 32 * 48}


def build_qwen_tokenizer():
    """A small byte-level BPE ``Qwen2Tokenizer`` (Qwen's pre-tokenizer) with Qwen's special tokens."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(QWEN_CORPUS * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    qwen = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    qwen.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    return qwen


def _text(family: str, tok: Any, layers: int) -> dict[str, Any]:
    text: dict[str, Any] = dict(
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    if family == "qwen3_vl":
        # head_dim 16 -> 8 rotary frequencies split over (t, h, w), interleaved as in Qwen3-VL
        text.update(
            head_dim=16,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        )
    else:
        text.update(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        )
    return text


def _vision(family: str) -> dict[str, Any]:
    common = dict(depth=2, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2)
    if family == "qwen2_vl":
        return dict(common, embed_dim=32, hidden_size=64, mlp_ratio=2)
    if family == "qwen2_5_vl":
        return dict(
            common,
            hidden_size=32,
            out_hidden_size=64,
            intermediate_size=64,
            window_size=2 * PATCH * MERGE,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
    # Qwen3-VL: deepstack features from both vision layers are added after text layers 0 and 1
    return dict(
        common,
        hidden_size=32,
        out_hidden_size=64,
        intermediate_size=64,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
    )


def build_qwen_vl(family: str, path: Path, *, layers: int = 3, seed: int = 0) -> Path:
    """Save a tiny ``family`` (``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``) checkpoint with
    its real processor to ``path`` and return it."""
    import transformers as tf

    classes = {
        "qwen2_vl": (
            "Qwen2VLConfig",
            "Qwen2VLForConditionalGeneration",
            "Qwen2VLProcessor",
            "Qwen2VLVideoProcessor",
            "Qwen2VLImageProcessor",
        ),
        "qwen2_5_vl": (
            "Qwen2_5_VLConfig",
            "Qwen2_5_VLForConditionalGeneration",
            "Qwen2_5_VLProcessor",
            "Qwen2VLVideoProcessor",
            "Qwen2VLImageProcessor",
        ),
        "qwen3_vl": (
            "Qwen3VLConfig",
            "Qwen3VLForConditionalGeneration",
            "Qwen3VLProcessor",
            "Qwen3VLVideoProcessor",
            "Qwen2VLImageProcessor",
        ),
    }
    config_cls, model_cls, proc_cls, video_cls, image_cls = (getattr(tf, n) for n in classes[family])
    tok = build_qwen_tokenizer()
    sizes = dict(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2)
    # Qwen3-VL budgets pixels over the whole clip (frames x H x W): up to 8 frames of 32 x 48
    video_size = (
        {"shortest_edge": 16 * 16, "longest_edge": 8 * 32 * 48} if family == "qwen3_vl" else dict(PIXELS)
    )
    processor = proc_cls(
        image_processor=image_cls(size=dict(PIXELS), **sizes),
        video_processor=video_cls(size=video_size, cap_pixels_per_frame=False, **sizes),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    ids = {
        name: tok.convert_tokens_to_ids(t)
        for name, t in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    config = config_cls(text_config=_text(family, tok, layers), vision_config=_vision(family), **ids)
    torch.manual_seed(seed)
    model = model_cls(config)
    # random init gives near-uniform answers; scale the head so probabilities move visibly
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
