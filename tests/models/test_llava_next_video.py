"""The LLaVA-NeXT-Video adapter: layout truth, prompt, golden snapshot, drift guards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.fixtures.tiny import make_sample
from vlmflow.errors import PromptError
from vlmflow.models import load_model

GOLDEN = Path(__file__).parents[1] / "golden"
UPDATE = os.environ.get("VLMFLOW_UPDATE_GOLDEN") == "1"


def test_groups_hold_the_expected_text(tiny_llava) -> None:
    sample = make_sample()
    prepared = tiny_llava.prepare(sample)
    ids = prepared.inputs["input_ids"][0].tolist()
    text = lambda g: tiny_llava.tokenizer.decode([ids[i] for i in prepared.layout.resolve(g)])  # noqa: E731
    assert text("question_no_options") == sample.question
    assert text("true_option") == "(C) Put down the cup."
    assert text("question").startswith("Question: What") and text("question").endswith("(D) Took the box.")
    assert text("last") == "("
    assert prepared.prompt.endswith("(D) Took the box. \nOnly give the best option. ASSISTANT:Best option:(")
    vid = tiny_llava.model.config.video_token_id
    assert all(ids[i] == vid for i in prepared.layout.resolve("video"))
    assert len(prepared.layout.resolve("video")) == 4 * 4  # 4 frames x (32/8/2)^2
    letters = tiny_llava.tokenizer.convert_ids_to_tokens(list(prepared.option_ids))
    assert [x.lstrip("\u2581") for x in letters] == ["A", "B", "C", "D"]


def test_chat_template_prompt_locates_the_same_groups(tiny_llava_path) -> None:
    adapter = load_model(str(tiny_llava_path), prompt_style="chat")
    prepared = adapter.prepare(make_sample())
    ids = prepared.inputs["input_ids"][0].tolist()
    assert (
        adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve("true_option")])
        == "(C) Put down the cup."
    )
    assert prepared.prompt.rstrip().endswith("Best option:(")


def test_chat_template_that_rewrites_options_is_a_clear_error(tiny_llava_path) -> None:
    adapter = load_model(str(tiny_llava_path), prompt_style="chat")
    adapter.processor.chat_template = (
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<video>"
        "{% else %}{{ c['text'] | upper }}{% endif %}{% endfor %}{% endfor %}"
    )
    with pytest.raises(PromptError, match="s0.*not found"):
        adapter.prepare(make_sample())


def test_drift_guard_transformers_paths(tiny_llava) -> None:
    """The transformers names the adapter and engine rely on; an upstream rename fails here."""
    from transformers import LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor
    from transformers.cache_utils import Cache, DynamicCache
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = tiny_llava.model
    assert isinstance(model, LlavaNextVideoForConditionalGeneration)
    assert isinstance(tiny_llava.processor, LlavaNextVideoProcessor)
    assert all(isinstance(x, LlamaDecoderLayer) for x in model.model.language_model.layers)
    for name in ("video_token_id", "spatial_pool_stride", "vision_config", "text_config"):
        assert hasattr(model.config, name), name
    assert hasattr(tiny_llava.processor, "video_token")
    assert issubclass(DynamicCache, Cache)
    cache = DynamicCache(config=model.config.text_config)
    k = torch.zeros(1, 2, 3, 16)
    cache.update(k, k, 0)
    assert cache.layers[0].keys.shape == (1, 2, 3, 16)


def test_a_chat_template_that_cannot_render_video_is_a_prompt_error(tiny_llava_path) -> None:
    """A text-only chat template (SmolLM2's concatenates ``message['content']`` as a string)
    used to escape as a raw Jinja ``TypeError``; it is a ``PromptError`` naming the cause
    and the way out."""
    adapter = load_model(str(tiny_llava_path), prompt_style="chat")
    adapter.processor.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    )
    with pytest.raises(PromptError, match=r"cannot render.*TypeError.*--prompt paper"):
        adapter.build_prompt(make_sample())
