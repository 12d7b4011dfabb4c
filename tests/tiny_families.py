"""Tiny randomly initialised LLaVA-OneVision, InternVL, VideoLLaMA3 and Video-LLaVA checkpoints.

Each builder uses the family's real transformers model, config and processor classes with a
small tokenizer trained here (nothing is downloaded), saves model and processor with
``save_pretrained`` and returns the folder, which tests load through
``vlmflow.models.load_model`` like a user would. Sizes: hidden 64, 2-4 decoder layers, a
2-layer vision tower and 32 px frames (16x24 px for VideoLLaMA3), so each frame yields 4
tokens (6 for VideoLLaMA3; 1 + 16 for Video-LLaVA, which keeps the CLS token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tiny import CHAT_TEMPLATE, CORPUS, build_tokenizer, clip_and_llama, save_scaled

# Qwen2's pre-tokenisation rule: the Qwen-based families (OneVision, InternVL3, VideoLLaMA3)
# tokenise like this, which decides how "(A", ":(" and "\n" split.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'video' %}{{ video_placeholder }}\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FAMILY_CORPUS = [
    *CORPUS,
    "<|im_start|>system\n<|im_start|>user\n<|im_start|>assistant\n",
    "Frame1: Frame2: Frame3: Frame4: Frame5: Frame6: Frame7: Frame8:\n",
    "Time 0.0s:,Time 1.0s:,Time 2.0s:,Time 3.0s:,Time 4.0s:\n",
]


def qwen_tokenizer(extra: list[str], **named: str):
    """A small byte-level BPE tokenizer with Qwen2's split rule, chat tags and ``extra`` tokens.

    ``named`` become model-specific special-token attributes (``tok.<name>``, ``tok.<name>_id``),
    the way InternVL's tokenizer exposes ``context_image_token`` and friends.
    """
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(FAMILY_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", **named
    )
    fast.add_special_tokens({"additional_special_tokens": extra})
    return fast


def _qwen2(tok: Any, layers: int):
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_llava_onevision(path: Path, *, layers: int = 3, seed: int = 0) -> Path:
    """LlavaOnevision: SigLIP 32 px / 8 px patches (4x4) pooled to ceil(4/2)^2 = 4 tokens a frame,
    plus the one trailing newline token per video."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        SiglipVisionConfig,
    )

    tok = qwen_tokenizer(["<image>", "<video>"])
    size = {"height": 32, "width": 32}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[32, 32]]),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tok,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=QWEN_CHAT_TEMPLATE.replace("{{ video_placeholder }}", "<video>"),
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=_qwen2(tok, layers),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[32, 32]],
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return save_scaled(LlavaOnevisionForConditionalGeneration(config), processor, path)


def build_internvl(path: Path, *, layers: int = 3, seed: int = 0) -> Path:
    """InternVL: InternViT 32 px / 8 px patches (4x4), pixel shuffle 0.5 -> 2x2 = 4 context tokens
    a frame; frames go in as images, the processor writes ``FrameN: <img>...</img>``."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
    )

    tok = qwen_tokenizer(
        ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    size = {"height": 32, "width": 32}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
        video_processor=InternVLVideoProcessor(size=size),
        tokenizer=tok,
        image_seq_length=4,
        chat_template=QWEN_CHAT_TEMPLATE.replace("{{ video_placeholder }}", "<video>"),
    )
    vision = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[32, 32],
        patch_size=[8, 8],
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=_qwen2(tok, layers),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        tie_word_embeddings=False,  # the head is scaled below; keep the embeddings as initialised
    )
    torch.manual_seed(seed)
    return save_scaled(InternVLForConditionalGeneration(config), processor, path)


def build_videollama3(path: Path, *, layers: int = 3, seed: int = 0) -> Path:
    """VideoLLaMA3: 4 px patches merged 2x2; 4 frames of 40x48 px are resized to 16x24 -> a 2x3
    grid of 6 tokens a frame (fewer where token compression drops static patches);
    ``Time t s:`` before each frame."""
    from transformers import (
        VideoLlama3Config,
        VideoLlama3ForConditionalGeneration,
        VideoLlama3ImageProcessor,
        VideoLlama3Processor,
        VideoLlama3VideoProcessor,
        VideoLlama3VisionConfig,
    )

    tok = qwen_tokenizer(["<|image_pad|>", "<|video_pad|>"])
    # the video processor divides longest_edge (the pixel budget) by the number of frames: with
    # 4 frames each gets 512 px, so 40x48 frames become 16x24 -> 4x6 patches -> 2x3 merged tokens
    budget = 512 * 4
    processor = VideoLlama3Processor(
        image_processor=VideoLlama3ImageProcessor(
            patch_size=4, merge_size=1, size={"shortest_edge": 64, "longest_edge": 512}
        ),
        video_processor=VideoLlama3VideoProcessor(
            patch_size=4, merge_size=2, size={"shortest_edge": 64, "longest_edge": budget}
        ),
        tokenizer=tok,
        chat_template=QWEN_CHAT_TEMPLATE.replace("{{ video_placeholder }}", "<|video_pad|>"),
    )
    vision = VideoLlama3VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=4
    )
    config = VideoLlama3Config(
        vision_config=vision,
        text_config=_qwen2(tok, layers),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
    )
    torch.manual_seed(seed)
    return save_scaled(VideoLlama3ForConditionalGeneration(config), processor, path)


def build_video_llava(path: Path, *, layers: int = 3, seed: int = 0) -> Path:
    """Video-LLaVA: CLIP 32 px / 8 px patches; each frame is its CLS token plus a 4x4 = 16 patch
    grid (the video path keeps CLS), Llama decoder with a SentencePiece-style tokenizer."""
    from transformers import (
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
        VideoLlavaProcessor,
        VideoLlavaVideoProcessor,
    )

    tok = build_tokenizer()
    size = {"shortest_edge": 32}
    crop = {"height": 32, "width": 32}
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size=size, crop_size=crop),
        video_processor=VideoLlavaVideoProcessor(size=size, crop_size=crop),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision, text = clip_and_llama(layers, tok)
    config = VideoLlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        image_seq_length=16,
        video_seq_length=4 * 17,
    )
    torch.manual_seed(seed)
    return save_scaled(VideoLlavaForConditionalGeneration(config), processor, path)
