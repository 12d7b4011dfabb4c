"""Every family loads and runs from the files its hub repository actually ships.

The folders (``published.py``) hold each repository's own file set written by hand — no
``save_pretrained`` round trip — with the compute shrunk but the real image sizes, pixel
limits, vocabulary sizes and special-token ids. Each is loaded the way a user would
(``load_model(path)``), prepared, and run through the engine, which must equal a plain
masked forward in fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures import published
from tests.fixtures.conformance import TOL
from tests.fixtures.qwen import qwen_vl_utils_tokens
from tests.fixtures.tiny import make_sample
from vlmflow.analyses.targets import PAPER_TARGETS, sweep, target_curves
from vlmflow.engine import Engine, full_forward_logits
from vlmflow.models import load_model
from vlmflow.models.base import default_dtype

# what each repository ships (besides the weights), and the video tokens per frame group
# at the real resolution: LLaVA-NeXT-Video 336/14 = 24, pooled by 2 -> 12 x 12; Video-LLaVA
# CLS + 16 x 16; InternVL 448/14 = 32, pixel shuffle 0.5 -> 16 x 16
COMMON = {
    "config.json",
    "preprocessor_config.json",
    "chat_template.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
FILES = {
    "llava_next_video": COMMON | {"processor_config.json"},
    "video_llava": COMMON | {"processor_config.json"},
    "qwen2_vl": COMMON,
    "qwen2_5_vl": COMMON,
    "internvl": COMMON | {"processor_config.json", "video_preprocessor_config.json"},
    "internvl_384": COMMON | {"processor_config.json", "video_preprocessor_config.json"},
}
PER_FRAME = {"llava_next_video": 144, "video_llava": 257, "internvl": 256, "internvl_384": 256}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    return {name: build(root / name) for name, build in published.BUILDERS.items()}


@pytest.fixture(scope="module")
def adapters(repos: dict[str, Path]) -> dict[str, object]:
    return {name: load_model(str(path)) for name, path in repos.items()}


def sample_of(frames: int, height: int = 48, width: int = 64, seed: int = 0):
    s = make_sample(seed=seed, frames=frames)
    rng = np.random.default_rng(seed)
    return s.with_frames(rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8))


def engine_matches_plain(adapter, prepared, plans_per_target: int = 1) -> float:
    """Largest probability difference between the engine and a plain masked forward over a
    few paper-target cuts (the first window of each target)."""
    lm = adapter.language_model()
    engine = Engine(lm, prepared.inputs, prepared.layout)
    plans = []
    for _t, name, edges in target_curves(PAPER_TARGETS, prepared.layout):
        plans += [p.plan for p in sweep([(name, edges)], lm.num_layers, window=1)][:plans_per_target]
    got = engine.evaluate(plans).softmax(-1)
    want = torch.stack([full_forward_logits(lm, prepared.inputs, engine.compile(p)) for p in plans]).softmax(
        -1
    )
    return (got - want).abs().max().item()


@pytest.mark.parametrize("name", list(FILES))
def test_folder_holds_only_the_published_files(repos, name) -> None:
    files = {p.name for p in repos[name].iterdir()} - {"model.safetensors"}
    assert files == FILES[name]


@pytest.mark.parametrize("name", list(FILES))
def test_cpu_default_dtype_is_float32(adapters, repos, name) -> None:
    import json

    assert json.loads((repos[name] / "config.json").read_text())["torch_dtype"] in ("bfloat16", "float16")
    assert adapters[name].dtype == torch.float32


def test_explicit_dtype_and_accelerator_default(repos) -> None:
    assert default_dtype(None, "cpu") == torch.float32
    assert default_dtype(None, "cuda:0") is None  # the checkpoint's own
    assert default_dtype("bf16", "cpu") == torch.bfloat16
    adapter = load_model(str(repos["qwen2_vl"]), dtype="bfloat16")
    assert adapter.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["llava_next_video", "video_llava", "internvl", "internvl_384"])
def test_fixed_token_families_run_at_8_frames(adapters, name) -> None:
    adapter = adapters[name]
    prepared = adapter.prepare(sample_of(8))
    layout = prepared.layout
    assert layout.num_frames == 8
    assert [len(f) for f in layout.frames][0] >= PER_FRAME[name]
    assert len(layout.video) >= 8 * PER_FRAME[name]
    grid_tokens = [h * w for h, w in layout.frame_grids]
    assert all(n + (name == "video_llava") == PER_FRAME[name] for n in grid_tokens)
    diff = engine_matches_plain(adapter, prepared)
    assert diff < TOL, f"{name}: engine differs from the plain forward by {diff:.2e}"


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_runs_at_8_frames_within_the_reference_budget(adapters, name) -> None:
    adapter = adapters[name]
    prepared = adapter.prepare(sample_of(8, 360, 640))
    layout = prepared.layout
    assert layout.num_frames == 4 and layout.frames_per_group == 2
    n = qwen_vl_utils_tokens(360, 640, 8)
    assert [h * w for h, w in layout.frame_grids] == [n] * 4
    assert len(layout.video) == 4 * n
    diff = engine_matches_plain(adapter, prepared)
    assert diff < TOL, f"{name}: engine differs from the plain forward by {diff:.2e}"


def test_qwen_1080p_frames_are_capped_like_the_reference(adapters) -> None:
    adapter = adapters["qwen2_vl"]
    frames = np.zeros((2, 1080, 1920, 3), dtype=np.uint8)
    inputs = adapter.process(adapter.video_placeholder + " hello", frames)
    t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
    assert (h // 2) * (w // 2) == qwen_vl_utils_tokens(1080, 1920, 2) <= 768  # native would be 2,691
    assert adapter.video_pixels == type(adapter).video_pixels_default
    adapter.video_pixels = None  # the user's choice: the repository's own (image) limits
    try:
        inputs = adapter.process(adapter.video_placeholder + " hello", frames)
    finally:
        adapter.video_pixels = type(adapter).video_pixels_default
    t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
    assert (h // 2) * (w // 2) > 2000


@pytest.mark.parametrize(
    "name, tokens",
    [
        ("llava_next_video", 144),
        ("video_llava", 257),
        ("qwen2_vl", None),
        ("qwen2_5_vl", None),
        ("internvl", 256),  # the 384 px variant differs only in its video config: 8 frames above
    ],
)
def test_32_frames_run_and_warn_past_the_trained_context(adapters, name, tokens, caplog) -> None:
    adapter = adapters[name]
    with caplog.at_level(logging.WARNING, logger="vlmflow.models.base"):
        prepared = adapter.prepare(sample_of(32))
    layout = prepared.layout
    per_group = tokens or qwen_vl_utils_tokens(48, 64, 32)
    groups = 16 if tokens is None else 32
    assert layout.num_frames == groups
    assert (
        sum(h * w for h, w in layout.frame_grids) + (groups if name == "video_llava" else 0)
        == groups * per_group
    )
    over = layout.length > adapter.context_length
    # 32 x 257 (Video-LLaVA) and 32 x 144 (LLaVA-NeXT-Video) + text > their 4,096 positions
    assert over == (name in ("video_llava", "llava_next_video"))
    warned = [r for r in caplog.records if "trained context" in r.getMessage()]
    assert bool(warned) == over
    lm = adapter.language_model()
    engine = Engine(lm, prepared.inputs, prepared.layout)
    plan = next(iter(sweep([next((n, e) for _t, n, e in target_curves(PAPER_TARGETS, layout))], 2, window=1)))
    got = engine.evaluate([plan.plan]).softmax(-1)[0]
    want = full_forward_logits(lm, prepared.inputs, engine.compile(plan.plan)).softmax(-1)
    assert (got - want).abs().max().item() < TOL


def strip_video_config(path: Path) -> Path:
    """Rewrite a transformers-5 save as an older hub repository: the image processor settings in
    ``preprocessor_config.json`` (naming the processor class) and no video processor config."""
    import json

    proc = json.loads((path / "processor_config.json").read_text())
    image = proc.pop("image_processor")
    proc.pop("video_processor")
    image["processor_class"] = proc.get("processor_class")
    (path / "preprocessor_config.json").write_text(json.dumps(image))
    (path / "processor_config.json").write_text(json.dumps(proc))
    (path / "video_preprocessor_config.json").unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("family", ["llava_onevision", "videollama3", "qwen3_vl"])
def test_every_family_builds_its_video_processor_from_image_settings(family, tmp_path) -> None:
    from tests.fixtures import families as tiny_families
    from tests.fixtures import qwen as tiny_qwen
    from vlmflow.models.processors import built_from_image_settings

    if family == "qwen3_vl":
        path = tiny_qwen.build_qwen_vl(family, tmp_path / family)
    else:
        path = getattr(tiny_families, f"build_{family}")(tmp_path / family)
    adapter = load_model(str(strip_video_config(path)))
    video = adapter.processor.video_processor
    assert built_from_image_settings(video) and "VideoProcessor" in type(video).__name__
    assert video.image_mean == adapter.processor.image_processor.image_mean
    prepared = adapter.prepare(sample_of(4))
    assert prepared.layout.num_frames >= 2
