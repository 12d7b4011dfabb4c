"""The VideoLLaMA3 adapter: conformance, ``Time t s:`` frame spans, token compression, drift guards."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from tests.fixtures.tiny import make_sample
from vlmflow.models import load_model

FAMILY = "videollama3"


def test_frame_spans_hold_separator_timestamp_and_grid(adapter) -> None:
    """40x48 frames fit the paper's budget as they are: 10x12 patches merged 2x2 -> a 5x6
    grid per frame, after ``Time t.0s:`` and (from the second frame on) the ``,`` separator."""
    prepared = adapter.prepare(make_sample())
    layout = prepared.layout
    ids = prepared.inputs["input_ids"][0].tolist()
    vid = adapter.model.config.video_token_id
    for t, span in enumerate(layout.frames):
        text = adapter.tokenizer.decode(ids[span.start : span.end])
        assert text == ("," if t else "") + f"Time {t}.0s:" + "<|video_pad|>" * 30, text
        start = span.start + layout.frame_token_offsets[t]
        assert ids[start : start + 30] == [vid] * 30 and start + 30 == span.end
    assert layout.frame_grids == ((5, 6),) * 4
    assert layout.frames[0].start == layout.video.start and layout.frames[-1].end == layout.video.end
    assert all(a.end == b.start for a, b in zip(layout.frames, layout.frames[1:], strict=False))


def test_token_compression_gives_per_frame_counts_from_the_processor(path: Path) -> None:
    """With compression on, static patches are dropped: frame spans follow the processor's
    own per-frame counts (not an even split) and a compressed frame's grid is ``(1, n)``.
    (The processor's own budget: 40x48 frames become 16x24 px, a 2x3 grid.)"""
    adapter = load_model(str(path), token_compression=True, max_visual_tokens=None)
    sample = make_sample(seed=5)
    frames = sample.frames.copy()
    frames[1] = frames[0]
    frames[1, :, :24] = 255 - frames[1, :, :24]  # frame 1 changes only on its left half
    frames[2] = frames[1]  # frame 2 does not change at all: the processor keeps 1 token
    prepared = adapter.prepare(sample.with_frames(frames))
    layout = prepared.layout
    ids = prepared.inputs["input_ids"][0].tolist()
    vid = adapter.model.config.video_token_id
    counts = [sum(ids[i] == vid for i in range(s.start, s.end)) for s in layout.frames]
    mask = prepared.inputs["video_compression_mask"].view(4, 6).sum(-1).tolist()
    assert counts == mask
    assert counts[0] == 6 and counts[2] == 1 and 1 < counts[1] < 6
    assert layout.frame_grids[0] == (2, 3) and layout.frame_grids[1] == (1, counts[1])
    # and the model still accepts the prepared input
    with torch.inference_mode():
        logits = adapter.model(**prepared.inputs, logits_to_keep=1).logits
    assert torch.isfinite(logits).all()


def test_paper_style_is_the_native_template_without_system_turn(path: Path, adapter) -> None:
    """The paper ran VideoLLaMA3 with its chat template, no system turn, its own instruction
    and no answer prefix, sampling frames evenly with both ends; the LLaVA template stays
    available as ``mvbench``."""
    from vlmflow.models.videollama3 import PAPER_INSTRUCTION

    sample = make_sample()
    prompt = adapter.prepare(sample).prompt
    block = (
        "Question: "
        + sample.question
        + "\nOptions:\n"
        + "\n".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(sample.options))
    )
    assert prompt.startswith("<|im_start|>user\n") and "system" not in prompt
    assert block + "\n" + PAPER_INSTRUCTION + "<|im_end|>" in prompt
    assert adapter.frame_policy == "linspace"
    mvbench = load_model(str(path), prompt_style="mvbench")
    prepared = mvbench.prepare(sample)
    assert prepared.prompt.endswith("ASSISTANT:Best option:(") and mvbench.frame_policy == "segment_middle"


def test_paper_prompt_uses_the_papers_visual_token_budget(adapter) -> None:
    """The paper sets max_tokens = 1152 merged tokens shared by the frames (<= 144 a frame at
    8 frames); the processor's own budget (here 2048 px / (4 px * 2)^2 = 32 tokens) gave 4 a
    frame. ``mvbench`` / ``chat`` and ``max_visual_tokens=None`` keep the processor's."""
    rng = np.random.default_rng(0)
    sample = make_sample(frames=8).with_frames(rng.integers(0, 255, (8, 224, 224, 3), dtype=np.uint8))

    def per_frame(a) -> set[int]:
        return {h * w for h, w in a.prepare(sample).layout.frame_grids}

    assert adapter.visual_token_budget == 1152 and per_frame(adapter) == {144}  # 12 x 12
    mvbench = copy.copy(adapter)
    mvbench.prompt_style = "mvbench"
    assert mvbench.visual_token_budget is None and per_frame(mvbench) == {4}
    own = copy.copy(adapter)
    own.max_visual_tokens = None
    assert per_frame(own) == {4}


def test_chat_template_prompt_locates_the_same_groups(path: Path) -> None:
    adapter = load_model(str(path), prompt_style="chat")
    prepared = adapter.prepare(make_sample())
    ids = prepared.inputs["input_ids"][0].tolist()
    true = adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve("true_option")])
    assert true.strip() == "(C) Put down the cup."
    assert len(prepared.layout.frames) == 4


def test_flash_or_flex_attention_is_switched_to_sdpa_for_knockout(path: Path, adapter, caplog) -> None:
    """VideoLLaMA3's vision tower has no flex kernel, so only the language model gets one
    (per-sub-config attention, as a user loading it with flash-attention for the LLM would)."""
    attn = {"": "sdpa", "vision_config": "sdpa", "text_config": "flex_attention"}
    switched = load_model(str(path), attn_implementation=attn)
    assert switched.attn_implementation() == "flex_attention"
    switched.ensure_maskable()
    assert switched.attn_implementation() == "sdpa"
    assert "switching" in caplog.text
    sample = make_sample()
    a, b = switched.prepare(sample), adapter.prepare(sample)
    with torch.inference_mode():
        got = switched.model(**a.inputs, logits_to_keep=1).logits
        want = adapter.model(**b.inputs, logits_to_keep=1).logits
    torch.testing.assert_close(got, want)


def test_drift_guard_transformers_paths(adapter) -> None:
    """The transformers names the adapter relies on; an upstream rename fails here."""
    from transformers import VideoLlama3ForConditionalGeneration, VideoLlama3Processor
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.processing_utils import ProcessingKwargs

    model = adapter.model
    assert isinstance(model, VideoLlama3ForConditionalGeneration)
    assert isinstance(adapter.processor, VideoLlama3Processor)
    assert all(isinstance(x, Qwen2DecoderLayer) for x in model.model.language_model.layers)
    assert hasattr(model.config, "video_token_id")
    assert hasattr(adapter.processor, "video_token")
    assert hasattr(adapter.processor.video_processor, "use_token_compression")
    assert "return_text_replacement_offsets" in ProcessingKwargs.__annotations__
    inputs = adapter.process("x " + adapter.processor.video_token, np.zeros((2, 16, 16, 3), np.uint8))
    for name in ("video_grid_thw", "video_merge_sizes", "video_compression_mask"):
        assert name in inputs, name
    assert adapter.expansion().replacement == "Time 0.0s:" + "<|video_pad|>" * 4 + ",Time 1.0s:" + (
        "<|video_pad|>" * 4
    )


def test_paper_frame_sampling_survives_model_probe_and_run_options(adapter, tmp_path: Path) -> None:
    """``Model.probe`` and a run's options configure a copy of the adapter; under ``paper``
    it must keep VideoLLaMA3's ``linspace`` (first and last frame), not fall back to the
    other families' segment midpoints. 30 frames, 4 decoded -> ``np.linspace(0, 29, 4,
    dtype=int)`` = frames 0, 9, 19, 29 (the paper's call)."""
    from PIL import Image

    import vlmflow

    folder = tmp_path / "vid30"
    folder.mkdir()
    for i in range(30):
        Image.fromarray(np.full((40, 48, 3), i * 8, np.uint8)).save(folder / f"{i:04d}.png")
    model = vlmflow.Model(adapter)

    def used(**kw) -> list[int]:
        probe = model.probe(video=str(folder), question="What?", options=["a", "b"], num_frames=4, **kw)
        return [int(f[0, 0, 0]) // 8 for f in probe.prepared.frames]

    assert used() == [0, 9, 19, 29]
    assert used(prompt="mvbench") == [3, 10, 17, 25]  # segment midpoints
    assert used(frame_policy="segment_middle") == [3, 10, 17, 25]
    assert model.configured(prompt="paper").frame_policy == "linspace"
    # what a run configures (and records as the manifest's frame_policy)
    options = vlmflow.Options(model="unused", data="synthetic:1:fixed")
    assert options.configure(model).frame_policy == "linspace"


def test_answer_prob_paper_norm_is_the_family_setting(adapter) -> None:
    """``answer-prob --paper`` (``norm="paper"``): the paper's VideoLLaMA3 code norms every
    intermediate layer, so the probabilities equal those read from the model's own hidden
    states through the final norm and the output head; an explicit ``norm`` still wins."""
    from vlmflow.analyses.answer_probability import AnswerProbability
    from vlmflow.probe import Probe

    assert adapter.paper_final_norm is True
    prepared = adapter.prepare(make_sample())
    lm = Probe(adapter, prepared).engine.lm
    with torch.inference_mode():
        hs = adapter.model(**prepared.inputs, output_hidden_states=True).hidden_states
        n = lm.num_layers
        states = torch.stack([lm.norm(hs[i + 1][0, -1]) for i in range(n - 1)] + [hs[n][0, -1]])
        want = lm.lm_head(states).float().softmax(-1)[:, list(prepared.option_ids)].numpy()
    got = {}
    for norm in ("paper", True, False):
        rows = AnswerProbability(norm=norm, sample_mode="all").records(Probe(adapter, prepared))
        got[norm] = np.array([r["option_probs"] for r in rows])
        assert {r["norm"] for r in rows} == {norm if norm != "paper" else True}
    assert np.allclose(got["paper"], want, atol=1e-5)
    assert np.array_equal(got["paper"], got[True])
    assert not np.allclose(got[False][:-1], want[:-1], atol=1e-5)


def test_the_visual_token_budget_is_part_of_what_a_run_folder_keeps(adapter) -> None:
    """A folder started under one budget must not resume under another (api._check_computed_in
    compares ``Adapter.processing()``): the paper prompt's 1152, other prompts' the processor's."""
    import vlmflow

    model = vlmflow.Model(adapter)
    assert model.configured(prompt="paper").processing() == {
        "frame_policy": "linspace",
        "visual_token_budget": 1152,
    }
    assert model.configured(prompt="mvbench").processing()["visual_token_budget"] is None
