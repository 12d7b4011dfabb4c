"""The LLaVA-OneVision adapter: conformance, the trailing newline token, drift guards."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.fixtures.tiny import make_sample
from vlmflow.engine import Engine
from vlmflow.models import load_model

FAMILY = "llava_onevision"


def test_trailing_newline_token_is_video_but_no_frame(adapter) -> None:
    """The run is T*n + 1 tokens of the video id; the last one is the image_newline
    embedding, which no frame's pixels change."""
    prepared = adapter.prepare(make_sample())
    layout = prepared.layout
    ids = prepared.inputs["input_ids"][0]
    vid = adapter.model.config.video_token_id
    assert int((ids == vid).sum()) == len(layout.video) == 4 * 2 * 2 + 1
    assert layout.frames[0].start == layout.video.start
    assert layout.frames[-1].end == layout.video.end - 1
    newline = layout.video.end - 1
    assert all(newline not in range(f.start, f.end) for f in layout.frames)
    engine = Engine(adapter.language_model(), prepared.inputs, layout)
    emb = engine.hidden_states[0][0, newline]
    torch.testing.assert_close(emb, adapter.model.model.image_newline.to(emb.dtype), rtol=0, atol=0)


def test_groups_hold_the_expected_text(adapter) -> None:
    sample = make_sample()
    prepared = adapter.prepare(sample)
    ids = prepared.inputs["input_ids"][0].tolist()
    text = lambda g: adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve(g)])  # noqa: E731
    # byte-level BPE merges "?\n" and ".\n" into one token, so the line break comes along
    assert text("question_no_options").strip() == sample.question
    assert text("true_option").strip() == "(C) Put down the cup."
    assert text("last").endswith("(")
    letters = adapter.tokenizer.convert_ids_to_tokens(list(prepared.option_ids))
    assert letters == ["A", "B", "C", "D"]


def test_chat_template_prompt_locates_the_same_groups(path: Path) -> None:
    adapter = load_model(str(path), prompt_style="chat")
    prepared = adapter.prepare(make_sample())
    ids = prepared.inputs["input_ids"][0].tolist()
    assert prepared.prompt.startswith("<|im_start|>system\n")
    true = adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve("true_option")])
    assert true.strip() == "(C) Put down the cup."
    assert len(prepared.layout.frames) == 4


def test_drift_guard_transformers_paths(adapter) -> None:
    """The transformers names the adapter relies on; an upstream rename fails here."""
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    model = adapter.model
    assert isinstance(model, LlavaOnevisionForConditionalGeneration)
    assert isinstance(adapter.processor, LlavaOnevisionProcessor)
    assert all(isinstance(x, Qwen2DecoderLayer) for x in model.model.language_model.layers)
    # the pooling and the single appended newline the layout assumes
    assert hasattr(LlavaOnevisionModel, "apply_pooling") and hasattr(model.model, "image_newline")
    for name in ("video_token_id", "vision_config", "text_config"):
        assert hasattr(model.config, name), name
    for name in ("image_size", "patch_size"):
        assert hasattr(model.config.vision_config, name), name
    for name in ("video_token", "num_image_tokens", "replace_video_token"):
        assert hasattr(adapter.processor, name), name
    # the processor still counts T * ceil(sqrt(n)/2)^2 + 1 video tokens
    pixels = {"pixel_values_videos": torch.zeros(1, 3, 3, 32, 32)}
    assert adapter.processor.replace_video_token(pixels, 0) == "<video>" * (3 * 4 + 1)
