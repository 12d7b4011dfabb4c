"""The tiny test model (``load_model("tiny")``): a tiny LLaVA-NeXT-Video trained on the
synthetic benchmark with fixed option order; it was the demo model before SmolLM2.

``vlmflow demo --model tiny`` and ``load_model("tiny")`` read the checkpoint saved in
:data:`TINY_DIR` (``models/tiny_model/``), a plain Hugging Face
``LlavaNextVideoForConditionalGeneration`` folder with its real ``LlavaNextVideoProcessor``,
so the demo runs through exactly the code path of a real checkpoint. This module builds the
untrained model and its tokenizer; ``scripts/train_tiny_model.py`` trains and saves it
(see ``docs/tiny_model.md``).

The tokenizer is word-level over a closed vocabulary: every word of the paper's prompt
(:mod:`vlmflow.prompt`) and of the synthetic benchmark (:func:`vlmflow.data.synthetic.vocabulary`),
the letters A-Z, digits and punctuation. Words carry a SentencePiece-style ``▁`` marker when
a space precedes them, and newlines are tokens of their own, so decoding reproduces the
text exactly and the token offsets cover the characters they came from. Punctuation is
always a token of its own: ``Best option:(`` ends in the token ``(`` and the option letter
that follows it is one more token.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from ..prompt import ANSWER_PROMPT, POST_PROMPT, SYSTEM_MVBENCH

TINY_DIR = Path(__file__).parent / "tiny_model"

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<video>", "<image>")
SPACE = "\u2581"  # the SentencePiece space marker

# Words of the prompt templates (paper template and the chat template below).
TEMPLATE_TEXT = (
    " USER: <video>\n USER: Question: \nOptions:\n(A) (B) (C) (D) (E) \n"
    + POST_PROMPT
    + " ASSISTANT:"
    + ANSWER_PROMPT
    + " SYSTEM: ASSISTANT: Answer: Best option: ("
)

# A minimal chat template so the ``chat`` prompt style renders with this vocabulary too
# (the model is trained on the paper template only).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: "
    "{% for c in m['content'] %}{% if c['type'] == 'video' %}<video>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)

# Architecture (see docs/tiny_model.md).
IMAGE_SIZE = 64
PATCH_SIZE = 8
POOL_STRIDE = 2  # 8x8 patches -> 4x4 = 16 video tokens per frame
NUM_FRAMES = 8
VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )


def demo_vocabulary() -> list[str]:
    """The word-level vocabulary (without the special tokens), in a fixed order."""
    from ..data.synthetic import vocabulary

    words: set[str] = set()
    words.update(string.ascii_uppercase)
    words.update(string.ascii_lowercase)
    words.update(string.digits)
    words.update(string.punctuation)
    words.update(vocabulary())
    texts = [SYSTEM_MVBENCH, POST_PROMPT, ANSWER_PROMPT, TEMPLATE_TEXT]
    for text in texts:
        for special in SPECIAL_TOKENS:
            text = text.replace(special, " ")
        words.update(text.split())
    pre = _pre_tokenizer()
    pieces: set[str] = {SPACE, "\n"}
    for w in words:  # each word bare (after punctuation or a newline) and after a space
        for text in ("(" + w, "( " + w):
            pieces.update(p for p, _ in pre.pre_tokenize_str(text))
    return sorted(pieces)


def build_demo_tokenizer() -> Any:
    """The demo model's word-level fast tokenizer (BOS ``<s>`` added, exact offsets)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    # a text that starts with a newline pre-tokenises it as "▁\n" (kept last: ids stay stable)
    for piece in [*demo_vocabulary(), SPACE + "\n"]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="first", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]})
    return fast


def build_demo_processor(tokenizer: Any | None = None) -> Any:
    """The real ``LlavaNextVideoProcessor`` for 64x64 frames with the demo tokenizer."""
    from .llava_next_video import square_frame_processor

    tok = tokenizer if tokenizer is not None else build_demo_tokenizer()
    return square_frame_processor(
        tok, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, chat_template=CHAT_TEMPLATE
    )


def build_demo_model(seed: int = 0, *, tie: bool = True, **text_overrides: Any) -> tuple[Any, Any]:
    """An untrained demo ``(model, processor)``: tiny CLIP tower + small Llama, float32.

    ``tie`` ties the output head to the input embeddings; ``text_overrides`` change the
    Llama config (``hidden_size``, ``num_hidden_layers``, ...).
    """
    import torch
    from transformers import LlamaConfig, LlavaNextVideoForConditionalGeneration

    from .llava_next_video import square_frame_config

    processor = build_demo_processor()
    tok = processor.tokenizer
    text = LlamaConfig(
        **{**TEXT, **text_overrides},
        vocab_size=len(tok),
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie,
    )
    config = square_frame_config(
        tok,
        text,
        VISION,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        pool_stride=POOL_STRIDE,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = LlavaNextVideoForConditionalGeneration(config)
    return model, processor
