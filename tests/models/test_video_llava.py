"""The Video-LLaVA adapter: conformance, the per-frame CLS token, drift guards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures.conformance import (
    check_layout_truth,
    input_embeddings,
    perturb_group,
)
from tests.fixtures.tiny import make_sample
from vlmflow.models import load_model

FAMILY = "video_llava"


def test_changing_frame_t_changes_exactly_its_span(adapter) -> None:
    """Each frame's span is its CLS token then its 4x4 grid; new pixels for frame t change
    exactly those 17 rows. (The shared check asks for the grid rows alone, which the CLS
    token, also computed from the frame, cannot satisfy; that is asserted below.)"""
    sample = make_sample(seed=1)
    base, layout = input_embeddings(adapter, sample)
    assert layout.frame_token_offsets == (1,) * 4 and layout.frame_grids == ((4, 4),) * 4
    for t, span in enumerate(layout.frames):
        changed, _ = input_embeddings(adapter, sample.with_frames(perturb_group(sample.frames, t, 1)))
        rows = set(torch.nonzero((changed - base).abs().amax(-1) > 0).flatten().tolist())
        assert rows == set(range(span.start, span.end)), f"frame {t}: rows {sorted(rows)} vs span {span}"
        assert len(span) == 1 + 16
    with pytest.raises(AssertionError, match="not exactly its grid"):
        check_layout_truth(adapter, sample)


def test_groups_hold_the_expected_text(adapter) -> None:
    sample = make_sample()
    prepared = adapter.prepare(sample)
    ids = prepared.inputs["input_ids"][0].tolist()
    text = lambda g: adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve(g)])  # noqa: E731
    assert text("question_no_options") == sample.question
    assert text("true_option") == "(C) Put down the cup."
    assert text("last") == "("
    assert prepared.prompt.endswith("(D) Took the box. \nOnly give the best option. ASSISTANT:Best option:(")
    vid = adapter.model.config.video_token_id
    assert [ids[i] for i in prepared.layout.resolve("video")] == [vid] * (4 * 17)


def test_chat_template_prompt_locates_the_same_groups(path: Path) -> None:
    adapter = load_model(str(path), prompt_style="chat")
    prepared = adapter.prepare(make_sample())
    ids = prepared.inputs["input_ids"][0].tolist()
    true = adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve("true_option")])
    assert true == "(C) Put down the cup."


def test_drift_guard_transformers_paths(adapter) -> None:
    """The transformers names the adapter relies on; an upstream rename fails here."""
    from transformers import VideoLlavaForConditionalGeneration, VideoLlavaProcessor
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = adapter.model
    assert isinstance(model, VideoLlavaForConditionalGeneration)
    assert isinstance(adapter.processor, VideoLlavaProcessor)
    assert all(isinstance(x, LlamaDecoderLayer) for x in model.model.language_model.layers)
    for name in ("video_token_id", "vision_config", "text_config"):
        assert hasattr(model.config, name), name
    for name in ("video_token", "patch_size", "num_additional_image_tokens"):
        assert hasattr(adapter.processor, name), name
    # the video path keeps the CLS token: (32/8)^2 + 1 tokens a frame
    pixels = {"pixel_values_videos": torch.zeros(1, 2, 3, 32, 32)}
    assert adapter.processor.replace_video_token(pixels, 0) == "<video>" * (2 * 17)
    with torch.inference_mode():
        feats = model.model.get_video_features(
            torch.zeros(1, 2, 3, 32, 32), vision_feature_layer=-1
        ).pooler_output
    assert feats.shape[:2] == (2, 17)
