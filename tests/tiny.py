"""Tiny randomly initialised VideoLLMs built from the real transformers classes, with their
real processors and a small tokenizer built here (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from vlmflow.prompt import ANSWER_PROMPT, POST_PROMPT, SYSTEM_MVBENCH
from vlmflow.sample import Sample

CORPUS = [
    SYSTEM_MVBENCH,
    " USER: <video>\n USER: Question: What happened after the person took the food?\nOptions:\n",
    "(A) Ate the medicine.\n(B) Tidied up the blanket.\n(C) Put down the cup.\n(D) Took the box.",
    POST_PROMPT + " ASSISTANT:" + ANSWER_PROMPT,
    "Which direction does the red square move? left right up down green blue circle",
    "How many objects appear in the video? 1 2 3 4 From the red to the blue",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: "
    "{% for c in m['content'] %}{% if c['type'] == 'video' %}<video>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


def build_tokenizer():
    """A small SentencePiece-style (Metaspace BPE) tokenizer with ``<video>``/``<image>``."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok.decoder = decoders.Metaspace()
    alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789()?:.,!'/-\n")
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<video>", "<image>"],
        initial_alphabet=alphabet,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]})
    return fast


def clip_and_llama(layers: int, tok, image_size: int = 32, patch_size: int = 8) -> tuple:
    """The tiny CLIP vision config and Llama text config the Llama-based test models share."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return vision, text


def save_scaled(model, processor, path: Path) -> Path:
    """Save a random model whose output head is scaled up: random init gives near-uniform
    answers, and a larger head makes probabilities move visibly under a knockout."""
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_llava_next_video(path: Path, *, layers: int = 4, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny LlavaNextVideo checkpoint + processor to ``path`` and return it.

    Vision: CLIP, 32 px frames, 8 px patches (4x4 grid) pooled by 2 -> 2x2 = 4 tokens/frame.
    """
    from transformers import (
        LlavaNextImageProcessor,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
        LlavaNextVideoVideoProcessor,
    )

    tok = build_tokenizer()
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size=size, crop_size=crop),
        image_processor=LlavaNextImageProcessor(
            size=size, crop_size=crop, image_grid_pinpoints=[[image_size, image_size]]
        ),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
    )
    vision, text = clip_and_llama(layers, tok, image_size)
    config = LlavaNextVideoConfig(
        vision_config=vision,
        text_config=text,
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[[image_size, image_size]],
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return save_scaled(LlavaNextVideoForConditionalGeneration(config), processor, path)


def make_sample(seed: int = 0, frames: int = 4, answer: int = 2, sid: str = "s0") -> Sample:
    rng = np.random.default_rng(seed)
    return Sample(
        id=sid,
        question="What happened after the person took the food?",
        options=("Ate the medicine.", "Tidied up the blanket.", "Put down the cup.", "Took the box."),
        answer=answer,
        task="toy",
        frames=rng.integers(0, 255, (frames, 40, 48, 3), dtype=np.uint8),
    )
