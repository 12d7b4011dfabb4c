"""The InternVL adapter: conformance, ``FrameN: <img>...</img>`` frame spans, drift guards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.fixtures.tiny import make_sample
from vlmflow.errors import PromptError
from vlmflow.models import load_model

FAMILY = "internvl"


def test_frame_spans_hold_label_tags_and_context_tokens(adapter) -> None:
    """Frame t = (newline before it) + ``Frame{t+1}: <img>`` + 4 context tokens + ``</img>``;
    the frames tile the video span with nothing left over."""
    prepared = adapter.prepare(make_sample())
    layout = prepared.layout
    ids = prepared.inputs["input_ids"][0].tolist()
    tok = adapter.tokenizer
    for t, span in enumerate(layout.frames):
        text = tok.decode(ids[span.start : span.end])
        want = f"Frame{t + 1}: <img>" + "<IMG_CONTEXT>" * 4 + "</img>"
        assert text.strip() == want, text
        assert text.startswith("\n") == (t > 0)
        grid = ids[span.start + layout.frame_token_offsets[t] :][:4]
        assert grid == [adapter.model.config.image_token_id] * 4
    assert layout.frames[0].start == layout.video.start and layout.frames[-1].end == layout.video.end
    assert all(a.end == b.start for a, b in zip(layout.frames, layout.frames[1:], strict=False))
    assert layout.frame_grids == ((2, 2),) * 4


def test_chat_template_prompt_locates_the_same_groups(path: Path) -> None:
    adapter = load_model(str(path), prompt_style="chat")
    prepared = adapter.prepare(make_sample(frames=3))
    ids = prepared.inputs["input_ids"][0].tolist()
    true = adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve("true_option")])
    assert true.strip() == "(C) Put down the cup."
    assert len(prepared.layout.frames) == 3


def test_expansion_must_come_from_the_processed_prompt(adapter) -> None:
    """The frame text is the processor's own replacement; a stale one is refused."""
    adapter.prepare(make_sample())
    prompt = adapter.build_prompt(make_sample(sid="other"))
    other = replace(prompt, text=prompt.text + " ")
    with pytest.raises(PromptError, match="no processor expansion"):
        adapter.expand_placeholder(other, torch.zeros(1, 1, dtype=torch.long))


def test_drift_guard_transformers_paths(adapter) -> None:
    """The transformers names the adapter relies on; an upstream rename fails here."""
    from transformers import InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.processing_utils import ProcessingKwargs

    model = adapter.model
    assert isinstance(model, InternVLForConditionalGeneration)
    assert isinstance(adapter.processor, InternVLProcessor)
    assert all(isinstance(x, Qwen2DecoderLayer) for x in model.model.language_model.layers)
    for name in ("image_token_id", "image_seq_length", "downsample_ratio", "vision_config"):
        assert hasattr(model.config, name), name
    assert hasattr(model.config.vision_config, "patch_size")
    for name in ("video_token", "image_token", "image_seq_length", "start_image_token", "end_image_token"):
        assert hasattr(adapter.processor, name), name
    assert "return_text_replacement_offsets" in ProcessingKwargs.__annotations__
    # the frame lines the layout parses
    line = adapter.processor.replace_video_token({"pixel_values_videos": [torch.zeros(2, 3, 32, 32)]}, 0)
    assert line == "\n".join(f"Frame{i}: <img>" + "<IMG_CONTEXT>" * 4 + "</img>" for i in (1, 2))
