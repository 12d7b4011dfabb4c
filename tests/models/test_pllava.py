"""PLLaVA (the paper's LLaVA-NeXT-*-Video-FT) and its ImageLLM baseline (llava-v1.6 with
PLLaVA pooling): conformance, the PLLaVA key layout, pooling against a hand-written
reference, the single-placeholder input, the processor, dispatch and drift guards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.conformance import check_layout_truth
from tests.fixtures.pllava import build_llava_next, build_pllava, one_thread, pllava_key  # noqa: F401
from tests.fixtures.tiny import make_sample
from vlmflow.errors import PromptError
from vlmflow.models import claimed_by, load_model
from vlmflow.models.llava_image_baseline import LlavaImageBaselineAdapter, baseline_config
from vlmflow.models.pllava import PllavaAdapter, PllavaProcessor, is_pllava_config, load_pooled_llava

PLLAVA_PREFIXES = (
    "vision_tower.vision_model.",
    "multi_modal_projector.linear_1.",
    "multi_modal_projector.linear_2.",
    "language_model.model.embed_tokens.",
    "language_model.model.layers.",
    "language_model.model.norm.",
    "language_model.lm_head.weight",
)


@pytest.fixture(scope="module")
def pllava_path(tiny_models) -> Path:
    return tiny_models.path("pllava")


@pytest.fixture(scope="module")
def baseline_path(tiny_models) -> Path:
    return tiny_models.path("llava_image_baseline")


@pytest.fixture(scope="module")
def pllava(tiny_models):
    return tiny_models.adapter("pllava")


@pytest.fixture(scope="module")
def baseline(tiny_models):
    return tiny_models.adapter("llava_image_baseline")


# ---------------------------------------------------------------------- layout
def test_pllava_fuses_frames_when_there_are_more_than_pooled_groups(pllava) -> None:
    sample = make_sample(seed=1, frames=8)  # 8 frames pooled to 4 groups of 2 frames
    assert pllava.prepare(sample).layout.frames_per_group == 2
    check_layout_truth(pllava, sample)


def test_paper_geometry_144_tokens_per_frame(tmp_path: Path) -> None:
    """336 px frames, 14 px patches, pooling (8, 12, 12): 8 x 144 = 1152 video tokens, and a
    480x854 video is pre-resized to 359x638 before the CLIP resize and crop (PLLaVA's rule)."""
    path = build_pllava(
        tmp_path / "paper", layers=2, pooling_shape=(8, 12, 12), num_frames=8, image_size=336, patch_size=14
    )
    adapter = load_model(str(path))
    frames = np.random.default_rng(0).integers(0, 255, (8, 480, 854, 3), dtype=np.uint8)
    sample = make_sample().with_frames(frames)
    layout = adapter.prepare(sample).layout
    assert len(layout.video) == 1152 and [len(f) for f in layout.frames] == [144] * 8
    assert layout.frame_grids == ((12, 12),) * 8
    assert adapter.processor.resize_long_short([list(frames[:1])])[0][0].shape == (359, 638, 3)
    check_layout_truth(adapter, sample)


def test_groups_hold_the_expected_text(pllava) -> None:
    sample = make_sample()
    prepared = pllava.prepare(sample)
    ids = prepared.inputs["input_ids"][0].tolist()
    text = lambda g: pllava.tokenizer.decode([ids[i] for i in prepared.layout.resolve(g)])  # noqa: E731
    assert prepared.prompt.count("<image>") == 1
    assert " USER: <image>\n USER: Question:" in prepared.prompt
    assert prepared.prompt.endswith("(D) Took the box. \nOnly give the best option. ASSISTANT:Best option:(")
    assert text("true_option") == "(C) Put down the cup."
    assert text("question_no_options") == sample.question
    assert text("last") == "("
    video = prepared.layout.resolve("video")
    assert len(video) == 4 * 2 * 2 and all(ids[i] == pllava.processor.image_token_id for i in video)


# ---------------------------------------------------------------------- loading
def test_checkpoint_in_pllava_key_layout_loads_every_weight(pllava_path: Path) -> None:
    from safetensors.torch import load_file

    stored = load_file(str(pllava_path / "model.safetensors"))
    assert all(k.startswith(PLLAVA_PREFIXES) for k in stored), "the fixture is not in PLLaVA's layout"
    raw = json.loads((pllava_path / "config.json").read_text())
    from vlmflow.models.pllava import pllava_config

    model, info = load_pooled_llava(str(pllava_path), pllava_config(raw))
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    params = {pllava_key(k): v for k, v in model.state_dict().items()}
    assert params.keys() == stored.keys()
    assert all(torch.equal(params[k], stored[k]) for k in stored)
    assert model.pooling_shape == (4, 2, 2) and model.config.num_frames == 4


def test_baseline_reads_the_llava_next_weights(baseline_path: Path, baseline) -> None:
    from transformers import LlavaNextForConditionalGeneration

    assert isinstance(baseline, LlavaImageBaselineAdapter)
    model, info = load_pooled_llava(str(baseline_path), baseline_config(str(baseline_path)))
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ref = LlavaNextForConditionalGeneration.from_pretrained(str(baseline_path)).state_dict()
    ours = model.state_dict()
    assert set(ref) - set(ours) == {"model.image_newline"}
    assert all(torch.equal(ours[k], ref[k]) for k in ours)
    assert baseline.model.pooling_shape == (8, 2, 2)  # (8, grid/2, grid/2) like the fine-tuned models


def test_dispatch_claims_pllava_configs_only(pllava_path: Path, baseline_path: Path, tmp_path: Path) -> None:
    assert claimed_by(str(pllava_path)) is PllavaAdapter
    assert claimed_by(str(baseline_path)) is None  # llava_next: claimed by model_type instead
    assert not is_pllava_config({"model_type": "llava", "image_token_index": 32000})  # plain LLaVA
    assert is_pllava_config({"model_type": "llava", "architectures": ["PllavaForConditionalGeneration"]})
    # magic-research's PLLaVA writes model_type "pllava", which transformers does not know
    copy = tmp_path / "pllava_type"
    shutil.copytree(pllava_path, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "model_type": "pllava"}))
    assert isinstance(load_model(str(copy)), PllavaAdapter)


# ---------------------------------------------------------------------- the model
@torch.inference_mode()
def test_pooled_features_match_a_hand_written_reference(pllava) -> None:
    model, cfg = pllava.model, pllava.model.config
    pixels = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hidden = model.model.vision_tower(pixels[0], output_hidden_states=True).hidden_states[-2][:, 1:]
    proj = model.model.multi_modal_projector
    x = proj.linear_2(torch.nn.functional.gelu(proj.linear_1(hidden)))  # (T, 16, d)
    assert cfg.vision_feature_layer == -2 and cfg.projector_hidden_act == "gelu"
    x = x.view(4, 2, 2, 2, 2, -1).mean(dim=(2, 4))  # 4x4 patches -> 2x2 blocks (t, h', w', d)
    want = x.reshape(1, 4 * 2 * 2, -1)  # (t, h, w) row-major
    got = model.get_video_features(pixels)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


@torch.inference_mode()
def test_single_placeholder_input_gives_the_same_logits(pllava) -> None:
    """PLLaVA's own input (one <image> token) is spliced out into the same sequence."""
    inputs = pllava.prepare(make_sample(seed=2)).inputs
    ids, image_id = inputs["input_ids"], pllava.processor.image_token_id
    run = torch.nonzero(ids[0] == image_id).flatten()
    short = torch.cat([ids[:, : int(run[0]) + 1], ids[:, int(run[-1]) + 1 :]], dim=1)
    mask = torch.ones_like(short)
    want = pllava.model(**inputs).logits
    got = pllava.model(input_ids=short, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    flat = inputs["pixel_values"].flatten(0, 1)  # (B*T, C, H, W) is accepted too
    got_flat = pllava.model(input_ids=ids, pixel_values=flat, logits_to_keep=1).logits
    assert torch.allclose(got_flat[0, -1], want[0, -1], atol=1e-5)


@torch.inference_mode()
def test_greedy_generation_runs(pllava) -> None:
    inputs = pllava.prepare(make_sample(seed=2)).inputs
    out = pllava.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    first = pllava.model(**inputs, logits_to_keep=1).logits[0, -1].argmax()
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3 and out[0, inputs["input_ids"].shape[1]] == first


def test_frame_counts_that_do_not_split_into_groups_are_a_clear_error(pllava) -> None:
    with pytest.raises(PromptError, match="pooled frame groups"):
        pllava.prepare(make_sample(frames=6))
    with pytest.raises(PromptError, match="pooled frame groups"):
        pllava.prepare(make_sample(frames=2))  # PLLaVA would repeat frames (and drop the last)


def test_chat_prompt_is_refused(pllava_path: Path) -> None:
    adapter = load_model(str(pllava_path), prompt_style="chat")
    with pytest.raises(PromptError, match="no chat template"):
        adapter.prepare(make_sample())


# ---------------------------------------------------------------------- the processor
def test_processor_saves_and_loads(pllava, tmp_path: Path) -> None:
    pllava.processor.save_pretrained(tmp_path)
    again = PllavaProcessor.from_pretrained(str(tmp_path))
    assert again.pooling_shape == pllava.processor.pooling_shape and again.image_token == "<image>"
    frames = make_sample().frames
    a = pllava.processor(text="x <image>\n y", videos=[list(frames)])
    b = again(text="x <image>\n y", videos=[list(frames)])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert a["pixel_values"].shape == (1, 4, 3, 32, 32)


def test_long_short_resize_follows_pllava(pllava) -> None:
    proc = pllava.processor  # CLIP resolution 32 px
    wide = np.zeros((700, 1400, 3), np.uint8)
    (out,) = proc.resize_long_short([[wide]])
    assert out[0].shape == (320, 640, 3)  # long edge capped at 640
    square = np.zeros((100, 100, 3), np.uint8)
    pano = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    a, b = proc.resize_long_short([[square], [pano]])
    assert a[0].shape == (100, 100, 3)
    # the batch takes the squarest aspect; PLLaVA cuts from a quarter of the excess
    assert np.array_equal(b[0], pano[:, 25:125])


# ---------------------------------------------------------------------- drift guard
def test_drift_guard_transformers_paths(pllava, baseline) -> None:
    """The transformers names the PLLaVA adapters rely on; an upstream rename fails here."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        PretrainedConfig,
    )
    from transformers.image_transforms import get_resize_output_image_size, resize  # noqa: F401
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

    for adapter in (pllava, baseline):
        model = adapter.model
        assert isinstance(model, LlavaForConditionalGeneration)
        assert isinstance(model.model.vision_tower, CLIPVisionModel)
        assert all(isinstance(x, LlamaDecoderLayer) for x in model.model.language_model.layers)
        proj = model.model.multi_modal_projector
        assert isinstance(proj.linear_1, torch.nn.Linear) and isinstance(proj.linear_2, torch.nn.Linear)
        assert isinstance(adapter.processor.image_processor, CLIPImageProcessorPil)
        assert isinstance(model.config, LlavaConfig)
    for name in (
        "image_token_index",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "projector_hidden_act",
        "multimodal_projector_bias",
        "vision_config",
        "text_config",
    ):
        assert hasattr(LlavaConfig(), name) and hasattr(LlavaNextConfig(), name), name
    assert "cache" in LlavaCausalLMOutputWithPast.__dataclass_fields__
    assert callable(PretrainedConfig.get_config_dict)
    # CLIPVisionModel keeps one hidden state per layer plus the embeddings (layer -2 = penultimate)
    out = pllava.model.model.vision_tower(torch.zeros(1, 3, 32, 32), output_hidden_states=True)
    assert len(out.hidden_states) == pllava.model.config.vision_config.num_hidden_layers + 1


def test_a_config_without_pooling_shape_warns_and_the_option_chooses(
    pllava_path: Path, tmp_path: Path, caplog
) -> None:
    """A PLLaVA config without ``pooling_shape`` pooled silently to PllavaConfig's
    (8, 16, 16), though the paper's models pool to (8, 12, 12): the load now says so, naming
    the fallback and the option, and ``pooling_shape=(t, h, w)`` chooses (model and
    processor alike)."""
    import logging

    path = Path(shutil.copytree(pllava_path, tmp_path / "no-pooling"))
    config = json.loads((path / "config.json").read_text())
    assert config.pop("pooling_shape") == [4, 2, 2]
    (path / "config.json").write_text(json.dumps(config))
    (path / "pllava_processor.json").unlink(missing_ok=True)
    assert is_pllava_config(config)
    from vlmflow.errors import UnsupportedModelError

    # the fallback pools to 16 x 16, more than this tiny tower's 4 x 4 patch grid: refused
    # (test_a_pooling_shape_beyond_the_patch_grid_or_not_whole_is_refused), after the warning
    with caplog.at_level(logging.WARNING, logger="vlmflow.models.pllava"):
        with pytest.raises(UnsupportedModelError, match=r"\[8, 16, 16\] pools to 16x16 tokens a frame"):
            load_model(str(path), progress=False)
    said = [r.getMessage() for r in caplog.records if "pooling_shape" in r.getMessage()]
    assert len(said) == 1 and str(path) in said[0], said
    assert "no pooling_shape" in said[0] and "(8, 16, 16)" in said[0] and "pooling_shape=(t, h, w)" in said[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlmflow.models.pllava"):
        chosen = load_model(str(path), progress=False, pooling_shape=(4, 2, 2))
    assert not [r for r in caplog.records if "pooling_shape" in r.getMessage()]
    assert chosen.model.pooling_shape == tuple(chosen.processor.pooling_shape) == (4, 2, 2)
    assert chosen.prepare(make_sample(frames=4)).layout.frame_grids == ((2, 2),) * 4
    assert "pooling_shape" in PllavaAdapter.options()


def test_a_resume_with_another_pooling_is_refused(pllava_path: Path, pllava, baseline) -> None:
    """``pooling_shape`` changes the visual tokens, so it is part of the recorded input
    processing (PLLaVA and its image baseline): a resume with another pooling was accepted
    and mixed two inputs in one run. The default records the checkpoint's pooling, as the
    code used before."""
    from vlmflow.api import refuse_other_computed_in
    from vlmflow.errors import RunError

    class Options:
        model = "pllava"

    class Folder:
        path = "runs/pllava"

    assert pllava.processing()["pooling_shape"] == [4, 2, 2]  # the fixture's config
    assert baseline.processing()["pooling_shape"] == [8, 2, 2]
    other = load_model(str(pllava_path), progress=False, pooling_shape=(4, 1, 1))
    before = {"computed_in": refuse_other_computed_in(Folder(), pllava, Options(), manifest={})}
    with pytest.raises(RunError, match=r"pooling_shape \[4, 2, 2\] -> \[4, 1, 1\]"):
        refuse_other_computed_in(Folder(), other, Options(), manifest=before)


@pytest.mark.parametrize(
    ("shape", "said"),
    [
        ((4, 8, 8), r"pools to 8x8 tokens a frame, more than the vision tower's 4x4 patch grid"),
        ((4, 2, 5), r"pools to 2x5 tokens a frame, more than the vision tower's 4x4 patch grid"),
        ((4.7, 2, 2), r"pooling_shape \(4\.7, 2, 2\) is not three integers"),
        ((4, 2.5, 2), r"is not three integers"),
        ((True, 2, 2), r"is not three integers"),
        ((4, 2), r"is not three integers"),
    ],
)
def test_a_pooling_shape_beyond_the_patch_grid_or_not_whole_is_refused(
    pllava_path: Path, baseline_path: Path, shape, said: str
) -> None:
    """Adaptive pooling to more tokens than the patch grid holds repeats patches (4x4 grid,
    (4, 8, 8): 64 tokens a frame, each patch 4 times) and a fraction was truncated
    ((4.7, 2, 2) ran as (4, 2, 2)): both are one-line errors naming the option."""
    from vlmflow.errors import UnsupportedModelError

    for path in (pllava_path, baseline_path):
        with pytest.raises(UnsupportedModelError, match=said) as caught:
            load_model(str(path), progress=False, pooling_shape=shape)
        assert "pooling_shape" in str(caught.value) and "\n" not in str(caught.value)
    whole = load_model(str(pllava_path), progress=False, pooling_shape=(4.0, 4, 4))
    assert whole.model.pooling_shape == (4, 4, 4)
