"""The Qwen2-VL, Qwen2.5-VL and Qwen3-VL adapters: layout truth per temporal patch, engine ==
plain masked forward, golden snapshots, prompts, attention switch and drift guards.

Each family is a tiny random checkpoint built from its real transformers classes and real
processor (``tiny_qwen.py``), saved, and loaded through ``vlmflow.models.load_model``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.fixtures.qwen import QWEN3_REPLACES_WHOLE_PLACEHOLDER, qwen_vl_utils_tokens
from tests.fixtures.tiny import make_sample
from vlmflow.analyses.targets import sweep, target_curves
from vlmflow.cuts import Cut, Plan
from vlmflow.engine import Engine, full_forward_logits, sliding_windows
from vlmflow.errors import UnsupportedModelError
from vlmflow.models import adapter_for, load_model
from vlmflow.probe import Model

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
FRAMES = 8  # -> 4 temporal patches of 2 x 3 tokens each
TOL = 1e-5  # fp32 probabilities, as in conformance.py


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: extra intra-op threads only spin (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def qwen_paths(tiny_models) -> dict[str, Path]:
    return {f: tiny_models.path(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def qwen_adapters(tiny_models) -> dict:
    return {f: tiny_models.adapter(f) for f in FAMILIES}


def sample(seed: int = 0):
    return make_sample(seed=seed, frames=FRAMES)


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_hold_the_expected_tokens(qwen_adapters, family: str) -> None:
    adapter = qwen_adapters[family]
    s = sample()
    prepared = adapter.prepare(s)
    layout, ids = prepared.layout, prepared.inputs["input_ids"][0].tolist()
    text = lambda g: adapter.tokenizer.decode([ids[i] for i in layout.resolve(g)])  # noqa: E731
    cfg = adapter.model.config
    pad, start, end = cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
    pad_tok, start_tok, end_tok = adapter.tokenizer.convert_ids_to_tokens([pad, start, end])

    assert layout.frames_per_group == 2 and layout.num_frames == FRAMES // 2
    assert layout.frame_grids == ((2, 3),) * layout.num_frames  # 32 x 48 px / 8 px / merge 2
    assert prepared.inputs["video_grid_thw"].tolist() == [[FRAMES // 2, 4, 6]]
    whole = family == "qwen3_vl" and QWEN3_REPLACES_WHOLE_PLACEHOLDER
    if whole:
        # the processor replaced the whole placeholder: no outer pair, only the per-patch ones,
        # and the first timestamp follows the prompt's "USER: " (" <" is one token, in frame 0)
        assert ids.count(start) == ids.count(end) == layout.num_frames
        assert adapter.tokenizer.decode(ids[: layout.video.start]).endswith(" USER:")
    else:
        # the outer wrapper written by the prompt is template, just outside ``video``
        assert ids[layout.video.start - 1] == start and ids[layout.video.end] == end
    assert layout.frames[0].start == layout.video.start and layout.frames[-1].end == layout.video.end
    for a, b in zip(layout.frames, layout.frames[1:], strict=False):
        assert a.end == b.start  # frame groups partition the video
    if family == "qwen3_vl":
        assert layout.frame_token_offsets == (7,) * layout.num_frames
        for t in range(layout.num_frames):
            want = f"<{t + 0.25:.1f} seconds>{start_tok}{pad_tok * 6}{end_tok}"  # frames at 2 fps
            assert text(f"frame:{t}") == (" " if whole and t == 0 else "") + want
    else:
        assert layout.frame_token_offsets == ()
        assert text("video") == pad_tok * 6 * layout.num_frames
    assert all(ids[i] == pad for t in range(layout.num_frames) for i in _grid(layout, t))
    assert text("question_no_options").strip() == s.question
    assert text("true_option").strip() == "(C) Put down the cup."
    assert text("last").endswith("(") and prepared.prompt.endswith("ASSISTANT:Best option:(")
    assert adapter.tokenizer.convert_ids_to_tokens(list(prepared.option_ids)) == ["A", "B", "C", "D"]
    if family == "qwen2_5_vl":
        # seconds per temporal patch stay Python floats, out of reach of a bf16 cast
        assert prepared.inputs["second_per_grid_ts"] == [1.0]


def _grid(layout, t: int) -> range:
    span, off = layout.frames[t], (layout.frame_token_offsets or (0,) * layout.num_frames)[t]
    h, w = layout.frame_grids[t]
    return range(span.start + off, span.start + off + h * w)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_prompt_locates_the_same_groups(qwen_paths, family: str) -> None:
    adapter = load_model(str(qwen_paths[family]), prompt_style="chat")
    prepared = adapter.prepare(sample())
    ids = prepared.inputs["input_ids"][0].tolist()
    decode = lambda g: adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve(g)])  # noqa: E731
    assert decode("true_option").strip() == "(C) Put down the cup."
    assert decode("system").startswith("Carefully watch the video")
    assert prepared.prompt.endswith("<|im_start|>assistant\nBest option:(")
    assert "user\n<|vision_start|><|video_pad|><|vision_end|>Question:" in prepared.prompt
    assert all(ids[i] == adapter.model.config.video_token_id for i in _grid(prepared.layout, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_single_frame_is_one_group_padded_with_its_copy(qwen_adapters, family: str) -> None:
    """One frame is one temporal patch of the frame and a copy of it (Qwen3-VL's processor
    refused it with transformers' ``t:1 must be larger than temporal_factor:2``)."""
    adapter = qwen_adapters[family]
    one = sample().with_frames(sample().frames[:1])
    probe = Model(adapter).probe(one)
    assert probe.layout.num_frames == 1 and probe.prepared.num_frames == 1
    assert probe.prepared.inputs["video_grid_thw"].tolist() == [[1, 4, 6]]
    twice = adapter.prepare(one.with_frames(np.repeat(one.frames, 2, axis=0)))
    torch.testing.assert_close(probe.prepared.inputs["input_ids"], twice.inputs["input_ids"])
    torch.testing.assert_close(
        probe.prepared.inputs["pixel_values_videos"], twice.inputs["pixel_values_videos"], rtol=0, atol=0
    )
    assert sorted(probe.answer.probabilities) == list(one.letters)  # the model ran on it


def test_frame_times_follow_frames_per_second(qwen_paths) -> None:
    """Frames are declared evenly spaced at ``frames_per_second``; Qwen3-VL writes the mean
    time of each temporal patch's two frames."""
    adapter = load_model(str(qwen_paths["qwen3_vl"]), frames_per_second=1.0)
    prepared = adapter.prepare(sample())
    ids = prepared.inputs["input_ids"][0].tolist()
    stamps = [
        adapter.tokenizer.decode(ids[f.start : f.start + prepared.layout.frame_token_offsets[t] - 1])
        for t, f in enumerate(prepared.layout.frames)
    ]
    lead = " " if QWEN3_REPLACES_WHOLE_PLACEHOLDER else ""  # see test_groups_hold_the_expected_tokens
    assert stamps == [lead + "<0.5 seconds>", "<2.5 seconds>", "<4.5 seconds>", "<6.5 seconds>"]


def test_a_resume_at_another_frames_per_second_is_refused(qwen_paths) -> None:
    """``frames_per_second`` changes Qwen3-VL's timestamp text (2 fps: ``<1.2 seconds>``,
    0.5 fps: ``<5.0 seconds>``) and Qwen2.5-VL's temporal positions, so it is part of the
    recorded input processing: a resume at another rate was accepted and mixed the two.
    The default records the rate the code used before (the processor's, 2 fps)."""
    from vlmflow.api import refuse_other_computed_in
    from vlmflow.errors import RunError

    class Options:
        model = "qwen3"

    class Folder:
        path = "runs/qwen3"

    for family in ("qwen2_5_vl", "qwen3_vl"):
        default = load_model(str(qwen_paths[family]))
        assert default.processing()["frames_per_second"] == 2.0
        slow = load_model(str(qwen_paths[family]), frames_per_second=0.5)
        # the folder the default started (an empty manifest would be one from before vlmflow
        # recorded the video budget, which Qwen3-VL refuses for that reason)
        dtype = str(default.dtype).removeprefix("torch.")
        before = {"computed_in": {"dtype": dtype, **default.processing()}}
        same = refuse_other_computed_in(Folder(), default, Options(), manifest=before)
        assert same == before["computed_in"]
        with pytest.raises(RunError, match=r"frames_per_second 2\.0 -> 0\.5"):
            refuse_other_computed_in(Folder(), slow, Options(), manifest=before)
    # Qwen2-VL's inputs do not depend on the rate: nothing to refuse
    assert "frames_per_second" not in load_model(str(qwen_paths["qwen2_vl"])).processing()


def test_qwen3_deepstack_is_replayed_by_the_engine(qwen_adapters) -> None:
    """Deepstack adds visual features to the residual stream after the first decoder layers,
    outside the layer modules: the engine must see exactly those additions and replay them."""
    adapter = qwen_adapters["qwen3_vl"]
    prepared = adapter.prepare(sample(3))
    layout, lm = prepared.layout, adapter.language_model()
    engine = Engine(lm, prepared.inputs, layout)
    engine.run_baseline()
    depth = len(adapter.model.config.vision_config.deepstack_visual_indexes)
    assert sorted(engine.deltas) == list(range(depth))
    grid = sorted(i for t in range(layout.num_frames) for i in _grid(layout, t))
    for delta in engine.deltas.values():
        assert torch.nonzero(delta[0].abs().amax(-1)).flatten().tolist() == grid
    # a cross-frame cut recomputes visual tokens through the deepstack layers
    ((_t, name, edges),) = target_curves(("cross-frame",), layout)
    plan = sweep([(name, edges)], lm.num_layers, window=1)[0].plan
    want = full_forward_logits(lm, prepared.inputs, engine.compile(plan)).softmax(-1)
    assert (engine.evaluate([plan])[0].softmax(-1) - want).abs().max().item() < TOL
    engine.deltas = {}
    unreplayed = (engine.evaluate([plan])[0].softmax(-1) - want).abs().max().item()
    assert unreplayed > 100 * TOL, "without the deepstack replay the check would prove nothing"


@pytest.mark.parametrize("family", FAMILIES)
def test_drift_guard_transformers_paths(qwen_adapters, family: str) -> None:
    """The transformers names and fields the adapter relies on; an upstream rename fails here."""
    import inspect

    import transformers
    from transformers.processing_utils import ProcessorMixin
    from transformers.video_utils import VideoMetadata

    adapter = qwen_adapters[family]
    cls = adapter_for(family)
    assert type(adapter) is cls
    model, processor = adapter.model, adapter.processor
    assert type(model) is getattr(transformers, cls.model_class)
    assert type(processor) is getattr(transformers, cls.processor_class)
    layer_module = {
        "qwen2_vl": "transformers.models.qwen2_vl.modeling_qwen2_vl",
        "qwen2_5_vl": "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
        "qwen3_vl": "transformers.models.qwen3_vl.modeling_qwen3_vl",
    }[family]
    lm = model.model.language_model
    assert all(type(x).__module__ == layer_module for x in lm.layers)
    assert lm.norm is not None and lm.embed_tokens is not None and model.lm_head is not None
    for name in (
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "vision_config",
        "text_config",
    ):
        assert hasattr(model.config, name), name
    assert hasattr(model.config.vision_config, "spatial_merge_size")
    assert (
        processor.video_processor.temporal_patch_size == model.config.vision_config.temporal_patch_size == 2
    )
    assert hasattr(processor, "video_token")
    # the processor's own placeholder expansion, and frames that vlmflow has already sampled
    assert "return_text_replacement_offsets" in inspect.getsource(ProcessorMixin.__call__)
    assert {"total_num_frames", "fps", "frames_indices"} <= set(VideoMetadata.__dataclass_fields__)
    assert hasattr(processor.video_processor, "do_sample_frames")
    # positions come from input_ids + mm_token_type_ids (pitfall 1: never stale rope_deltas)
    assert "mm_token_type_ids" in processor.model_input_names
    assert "mm_token_type_ids" in inspect.signature(model.forward).parameters
    if family == "qwen3_vl":
        assert hasattr(model.config.vision_config, "deepstack_visual_indexes")
        assert hasattr(lm, "_deepstack_process")
    if family == "qwen2_5_vl":
        assert "second_per_grid_ts" in processor.model_input_names


def _windowed(tiny_models, tmp_path: Path, family: str, window: int):
    """The tiny ``family`` checkpoint with every decoder layer on a sliding window of ``window``."""
    import json
    import shutil

    path = tmp_path / f"{family}-window{window}"
    shutil.copytree(tiny_models.path(family), path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"].update(use_sliding_window=True, sliding_window=window, max_window_layers=0)
    config["text_config"].pop("layer_types", None)  # derived again from the settings above
    (path / "config.json").write_text(json.dumps(config))
    return load_model(str(path))


@pytest.mark.parametrize("family", ("qwen2_vl", "qwen2_5_vl"))
def test_a_sliding_window_is_checked_against_the_input(tiny_models, tmp_path, family: str) -> None:
    """The shared check decides: a window at least as long as the input loads and knocks out
    exactly as the plain masked forward; a shorter one is refused by name at knockout."""
    long = _windowed(tiny_models, tmp_path, family, 262144)
    prepared = long.prepare(sample())
    lm = long.language_model()
    assert set(sliding_windows(lm).values()) == {262144}
    engine = Engine(lm, prepared.inputs, prepared.layout)
    plan = Plan("q", (Cut("question", "last", (0, 1)),))
    want = full_forward_logits(lm, prepared.inputs, engine.compile(plan)).softmax(-1)
    assert (engine.evaluate([plan])[0].softmax(-1) - want).abs().max().item() < TOL

    short = _windowed(tiny_models, tmp_path, family, 16)
    prepared = short.prepare(sample())
    assert prepared.layout.length > 16
    engine = Engine(short.language_model(), prepared.inputs, prepared.layout)
    with pytest.raises(UnsupportedModelError, match=r"sliding window of 16 tokens.*sliding_window=16"):
        engine.evaluate([plan])


def _hub_like_qwen3(tiny_models, tmp_path) -> tuple[Path, int, int]:
    """The tiny Qwen3-VL with the hub's video ``size`` scaled to its patch x merge: a
    whole-clip budget of 4 to 24,576 tokens' worth (Qwen3-VL-8B-Instruct's)."""
    import json
    import shutil

    factor = 8 * 2  # the fixture's patch x merge (the hub's is 16 x 2)
    path = Path(shutil.copytree(tiny_models.path("qwen3_vl"), tmp_path / "qwen3"))
    config = json.loads((path / "processor_config.json").read_text())
    assert "cap_pixels_per_frame" not in config["video_processor"]  # as the hub repositories
    clip = 24576 * factor * factor
    config["video_processor"]["size"] = {"shortest_edge": 4 * factor * factor, "longest_edge": clip}
    (path / "processor_config.json").write_text(json.dumps(config))
    return path, factor, clip


def _tokens_per_patch(adapter, frames: int, height: int, width: int) -> int:
    clip = np.zeros((frames, height, width, 3), dtype=np.uint8)
    inputs = adapter.process(adapter.video_placeholder + " hello", clip)
    t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
    assert t == math.ceil(frames / 2)
    return (h // 2) * (w // 2)


def test_qwen3_frames_get_the_reference_per_frame_cap(tiny_models, tmp_path) -> None:
    """Qwen3-VL repositories ship a video ``size`` that budgets the whole clip (24,576 tokens'
    worth for Qwen3-VL-8B-Instruct) and no ``cap_pixels_per_frame``. transformers 5.24 caps
    frames only when asked, so 8 frames of 540 x 960 here (1920 x 1080 at the hub models'
    32 px patch x merge) cost 2,040 tokens per temporal patch instead of qwen-vl-utils'
    720. The adapter asks (transformers' cap: at most 768 tokens and an even share of the
    clip budget a frame), and records the budget it runs with."""
    path, factor, clip = _hub_like_qwen3(tiny_models, tmp_path)
    adapter = load_model(str(path), progress=False)
    tokens = _tokens_per_patch(adapter, 8, 540, 960)
    assert tokens == qwen_vl_utils_tokens(540, 960, 8, factor) == 720
    assert adapter.processing()["video_budget"] == {
        "shortest_edge": 4 * factor * factor,
        "longest_edge": clip,
        "cap_pixels_per_frame": True,
        "max_video_tokens": 768,
    }


@pytest.mark.parametrize(
    ("frames", "height", "width", "default"),
    [(8, 540, 960, 720), (64, 540, 960, 364), (8, 90, 160, 60), (7, 540, 960, 720), (5, 90, 160, 60)],
)
def test_qwen3_per_frame_video_pixels_give_the_reference_budget(
    tiny_models, tmp_path, frames: int, height: int, width: int, default: int
) -> None:
    """``video_pixels=(min, max)`` bounds each frame for Qwen3-VL too, with qwen-vl-utils'
    total budget on top: (128, 768) tokens' worth reproduces qwen-vl-utils' frame sizes
    (a whole-clip bound before: 64 frames of 540 x 960 got 1 token per patch). The default
    keeps the repository's whole-clip ``size`` with transformers' per-frame cap, which
    differs beyond 32 frames (an even share of 24,576 tokens: 364 instead of 720) and
    below 128 tokens a frame (no upscaling: 60 instead of 144)."""
    path, factor, _ = _hub_like_qwen3(tiny_models, tmp_path)
    want = qwen_vl_utils_tokens(height, width, frames, factor)
    reference = load_model(str(path), progress=False, video_pixels=(128 * factor**2, 768 * factor**2))
    assert _tokens_per_patch(reference, frames, height, width) == want
    assert reference.processing()["video_budget"] == {
        "shortest_edge": 128 * factor**2,
        "longest_edge": 768 * factor**2,
        "per_frame": True,
        "total_pixels": 128000 * factor**2 * 0.9,
    }
    own = load_model(str(path), progress=False)
    assert _tokens_per_patch(own, frames, height, width) == default


@pytest.mark.parametrize("family", FAMILIES)
def test_the_video_budget_is_recorded(qwen_adapters, family: str) -> None:
    """A resume compares ``processing()`` with the folder's: the budget is in it, so a
    transformers whose defaults process the frames otherwise is refused, not mixed in."""
    budget = qwen_adapters[family].processing()["video_budget"]
    assert budget["cap_pixels_per_frame"] is True
    assert budget["longest_edge"] > budget["shortest_edge"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_folder_from_before_the_video_budget_was_recorded(qwen_adapters, family: str, tmp_path) -> None:
    """A folder whose ``computed_in`` has no ``video_budget`` was started before 293a870:
    Qwen3-VL's frames were then uncapped, so resuming it now (capped) is refused, naming the
    budget as it was and as now; Qwen2/2.5-VL's were capped as now, so theirs resumes and
    records the budget."""
    import json

    from vlmflow.api import _check_computed_in
    from vlmflow.errors import RunError
    from vlmflow.rundir import RunDir

    adapter = qwen_adapters[family]
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    computed_in = {"dtype": "float32", "frame_policy": adapter.processing()["frame_policy"]}
    run.write_manifest({"config": {"model": family}, "computed_in": computed_in})
    options = SimpleNamespace(model=family)
    if family != "qwen3_vl":
        _check_computed_in(run, adapter, options)
        recorded = json.loads(run.manifest_path.read_text())["computed_in"]
        assert recorded["video_budget"] == adapter.processing()["video_budget"]
        return
    with pytest.raises(RunError) as refused:
        _check_computed_in(run, adapter, options)
    said = str(refused.value)
    assert "processed otherwise (video_budget {" in said
    assert "'cap_pixels_per_frame': False" in said.split("->")[0]
    assert "'cap_pixels_per_frame': True" in said.split("->")[1]
    assert "(not recorded: as the vlmflow that started it processed)" in said
    assert "per-frame pixel cap since 293a870" in said and "write to a new --out" in said
    assert json.loads(run.manifest_path.read_text())["computed_in"] == computed_in


def test_an_adapter_on_a_user_loaded_model_turns_hub_kernels_off(qwen_paths) -> None:
    """transformers 5.25's ``from_pretrained`` turns hub kernels on by default; vlmflow's
    loaders ask for none (``NO_HUB_KERNELS``), but an adapter built on a model the user
    loaded kept them (``use_kernels`` True), so its numbers came from other kernels."""
    import transformers

    from vlmflow.models.qwen_vl import Qwen2VLAdapter

    path = str(qwen_paths["qwen2_vl"])
    model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(path)
    if not hasattr(model, "use_kernels"):
        pytest.skip("this transformers has no hub kernels (use_kernels)")
    if not model.use_kernels:  # transformers 5.24's default: turn them on as 5.25 does
        try:
            model.use_kernels = True
        except Exception as exc:  # the kernels package is missing
            pytest.skip(f"hub kernels cannot be turned on here: {exc}")
    assert model.use_kernels
    processor = load_model(path).processor
    adapter = Qwen2VLAdapter(model, processor)
    assert adapter.model.use_kernels is False
