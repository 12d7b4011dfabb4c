"""The LLaVA-NeXT-Video adapter: layout truth, prompt, golden snapshot, drift guards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import make_sample
from vlmflow.engine import Engine
from vlmflow.errors import PromptError
from vlmflow.models import load_model
from vlmflow.sample import Sample

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("VLMFLOW_UPDATE_GOLDEN") == "1"


def embeddings(adapter, sample: Sample) -> torch.Tensor:
    prepared = adapter.prepare(sample)
    engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
    return engine.hidden_states[0][0], prepared.layout


@pytest.mark.parametrize("t", range(4))
def test_changing_frame_t_changes_exactly_its_span(tiny_llava, t: int) -> None:
    sample = make_sample(seed=1)
    base, layout = embeddings(tiny_llava, sample)
    frames = sample.frames.copy()
    frames[t] = 255 - frames[t]
    changed, _ = embeddings(tiny_llava, sample.with_frames(frames))
    rows = torch.nonzero((changed - base).abs().amax(-1) > 0).flatten().tolist()
    span = layout.frames[t]
    assert rows and set(rows) == set(range(span.start, span.end)), (
        f"frame {t}: changed rows {rows[:3]}..{rows[-3:]} but its span is {span}"
    )


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


def test_golden_prompt_and_layout(tiny_llava) -> None:
    """Snapshot of the prompt and layout; regenerate only on purpose with
    VLMFLOW_UPDATE_GOLDEN=1."""
    prepared = tiny_llava.prepare(make_sample())
    got = {
        "prompt": prepared.prompt,
        "layout": prepared.layout.to_dict(),
        "option_ids": list(prepared.option_ids),
    }
    path = GOLDEN / "llava_next_video.json"
    if UPDATE or not path.exists():
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert json.loads(path.read_text()) == json.loads(json.dumps(got))


def test_flash_or_flex_attention_is_switched_to_sdpa_for_knockout(tiny_llava_path, caplog) -> None:
    adapter = load_model(str(tiny_llava_path), attn_implementation="flex_attention")
    assert adapter.attn_implementation() == "flex_attention"
    adapter.ensure_maskable()
    assert adapter.attn_implementation() == "sdpa"
    assert "switching" in caplog.text


def test_sample_without_options_is_a_clear_error(tiny_llava) -> None:
    sample = Sample(id="open-1", question="What happens?", frames=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(PromptError, match="open-1"):
        tiny_llava.prepare(sample)


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
