"""The checks every model family's adapter must pass, over the table of families
(``fixtures/catalog.py``) on each family's tiny model:

- dispatch: loading the checkpoint picks the family's adapter;
- layout truth: changing frame group t's pixels changes exactly its grid of input embeddings;
- the engine equals a plain full forward with the same masks for all four paper targets,
  and the attribution pass fused with its baseline forward equals the rerun pass,
  and for head-level cuts under sdpa and eager attention;
- golden prompt and layout snapshots (regenerate on purpose with ``VLMFLOW_UPDATE_GOLDEN=1``);
- drift guards: the transformers classes the family relies on, and every part the
  adapter's module names point at (layers, norm, head, embeddings, attention module);
- attention that ignores masks (flash, flex) is switched to sdpa for knockout.

What is particular to one family stays in its own file beside this one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.fixtures.catalog import FAMILIES, resolve
from tests.fixtures.conformance import (
    check_engine_matches_plain,
    check_fused_attribution,
    check_golden,
    check_layout_truth,
    input_embeddings,
)
from tests.fixtures.head_conformance import check_head_cuts_match_plain
from vlmflow.errors import PromptError
from vlmflow.models import load_model

NAMES = list(FAMILIES)
# the families whose processor has a transformers video processor (its config may sample)
VIDEO_PROCESSOR = [
    "llava_next_video",
    "llava_onevision",
    "video_llava",
    "internvl",
    "videollama3",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: extra intra-op threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", NAMES)
def test_the_checkpoint_dispatches_to_its_adapter(tiny_models, name: str) -> None:
    adapter = tiny_models.adapter(name)
    assert type(adapter) is resolve(FAMILIES[name].adapter)
    assert adapter.attn_implementation() == "sdpa"


@pytest.mark.parametrize("name", [n for n in NAMES if FAMILIES[n].grid_layout_truth])
def test_changing_frame_group_t_changes_exactly_its_tokens(tiny_models, name: str) -> None:
    check_layout_truth(tiny_models.adapter(name), FAMILIES[name].sample(seed=1))


@pytest.mark.parametrize("name", NAMES)
def test_engine_matches_plain_masked_forward(tiny_models, name: str) -> None:
    check_engine_matches_plain(tiny_models.adapter(name), FAMILIES[name].sample(seed=3))


@pytest.mark.parametrize("name", NAMES)
def test_head_cuts_equal_plain_masked_forward(tiny_models, name: str) -> None:
    """Head-level cuts are exact under sdpa and under eager attention."""
    for impl in ("sdpa", "eager"):
        adapter = load_model(str(tiny_models.path(name)), attn_implementation=impl)
        assert adapter.attn_implementation() == impl
        check_head_cuts_match_plain(adapter, FAMILIES[name].sample(seed=3))


@pytest.mark.parametrize("name", NAMES)
def test_fused_attribution_equals_the_rerun_pass(tiny_models, name: str) -> None:
    """The attribution pass fused with the baseline forward estimates what the pass rerun
    from the stored baseline does, every layer and from layer 1 on, and leaves the engine
    as a plain baseline run would; under a memory bound the same, with the graph kept only
    for the top layers that fit in it."""
    adapter, sample = tiny_models.adapter(name), FAMILIES[name].sample(seed=3)
    full = check_fused_attribution(adapter, sample)
    check_fused_attribution(adapter, sample, layers=(1, 2))
    # under a memory bound: the graph of the top layers that fit, the layers below rerun
    top = check_fused_attribution(adapter, sample, max_graph_mb=0.0)
    assert top.graph_layers == (full.graph_layers[-1],)
    half = check_fused_attribution(adapter, sample, max_graph_mb=full.graph_mb / 2)
    assert 0 < len(half.graph_layers) < len(full.graph_layers)
    assert half.graph_mb <= full.graph_mb / 2 * 1.5, (half.graph_mb, full.graph_mb)


@pytest.mark.parametrize("name", NAMES)
def test_golden_prompt_and_layout(tiny_models, name: str) -> None:
    check_golden(tiny_models.adapter(name), FAMILIES[name].sample(), FAMILIES[name].golden or name)


@pytest.mark.parametrize("name", NAMES)
def test_named_groups_hold_their_text(tiny_models, name: str) -> None:
    """Question, true option, last token and option letters are where the layout says
    (byte-level BPE may carry a line break along, hence the strip)."""
    adapter, sample = tiny_models.adapter(name), FAMILIES[name].sample()
    prepared = adapter.prepare(sample)
    ids = prepared.inputs["input_ids"][0].tolist()
    text = lambda g: adapter.tokenizer.decode([ids[i] for i in prepared.layout.resolve(g)])  # noqa: E731
    assert text("question_no_options").strip() == sample.question
    assert text("true_option").strip() == "(C) Put down the cup."
    if name == "videollama3":  # the paper's VideoLLaMA3 prompt: no answer prefix
        assert text("last") == "\n" and prepared.prompt.endswith("<|im_start|>assistant\n")
    else:
        assert text("last").endswith("(")
    letters = adapter.tokenizer.convert_ids_to_tokens(list(prepared.option_ids))
    assert [x.lstrip("\u2581") for x in letters] == ["A", "B", "C", "D"]


@pytest.mark.parametrize("name", NAMES)
def test_drift_guard_module_names_and_classes(tiny_models, name: str) -> None:
    """The adapter's named parts exist with the transformers classes it relies on; an
    upstream rename fails here instead of silently measuring nothing."""
    family, adapter = FAMILIES[name], tiny_models.adapter(name)
    assert isinstance(adapter.model, resolve(family.model_class))
    layers = adapter.module("layers")
    assert len(layers) == adapter.num_layers > 0
    assert all(isinstance(x, resolve(family.layer_class)) for x in layers)
    for part in ("norm", "lm_head", "embed"):
        assert isinstance(adapter.module(part), torch.nn.Module), part
    lm = adapter.language_model()
    assert lm.attention_module(0) is getattr(layers[0], adapter.modules.attention)
    assert lm.attention_module(0).config._attn_implementation == "sdpa"
    assert adapter.module("embed").weight.shape[1] == adapter.module("lm_head").weight.shape[1]


@pytest.mark.parametrize("name", NAMES)
def test_attention_that_ignores_masks_is_switched_to_sdpa(tiny_models, name: str, caplog) -> None:
    how, path = FAMILIES[name].flash, str(tiny_models.path(name))
    if how == "flex":
        adapter = load_model(path, attn_implementation="flex_attention")
    elif how == "text":  # the vision tower has no flex kernel: only the language model gets one
        adapter = load_model(
            path, attn_implementation={"": "sdpa", "vision_config": "sdpa", "text_config": "flex_attention"}
        )
    else:  # flash needs CUDA; mark the configs as a flash load leaves them (all dispatch reads)
        adapter = load_model(path)
        adapter.model.config._attn_implementation = "flash_attention_2"
    assert adapter.attn_implementation() != "sdpa"
    adapter.ensure_maskable()
    assert adapter.attn_implementation() == "sdpa"
    assert "switching" in caplog.text


@pytest.mark.parametrize("name", NAMES)
def test_models_load_without_hub_kernels(tiny_models, name: str, monkeypatch) -> None:
    """transformers 5.25 kernelizes loaded models by default (hub kernels for RMSNorm,
    activations and rotary on an accelerator) and again at every train()/eval() switch;
    a model vlmflow loads is not kernelized, then or later, so it keeps its own layers."""
    import transformers.modeling_utils as modeling_utils

    model = tiny_models.adapter(name).model
    if not hasattr(model, "use_kernels"):
        pytest.skip("this transformers has no hub kernels")
    assert model.use_kernels is False
    calls: list[object] = []
    monkeypatch.setattr(modeling_utils, "kernelize", lambda *a, **k: calls.append(a), raising=False)
    model.train()
    model.eval()
    assert calls == [] and model.use_kernels is False and not model.training


def sampling_copy(src: Path, dest: Path, num_frames: int = 2) -> Path:
    """A copy of the checkpoint at ``src`` whose video processor config samples
    ``num_frames`` frames itself (``do_sample_frames: true``, as transformers recommends
    new checkpoints set it)."""
    shutil.copytree(src, dest)
    config = dest / "processor_config.json"
    raw = json.loads(config.read_text())
    raw["video_processor"].update(do_sample_frames=True, num_frames=num_frames, fps=None)
    config.write_text(json.dumps(raw))
    return dest


@pytest.mark.parametrize("name", VIDEO_PROCESSOR)
def test_a_video_processor_config_that_samples_frames_leaves_ours_as_given(
    tiny_models, name: str, tmp_path: Path
) -> None:
    """vlmflow chose the frames: a checkpoint whose video config says do_sample_frames
    (num_frames=2) still gets one frame group per input frame (per temporal patch for
    Qwen-VL), and changing input frame t changes tokens of frame t's group only."""
    adapter = load_model(str(sampling_copy(tiny_models.path(name), tmp_path / name)), progress=False)
    sample = FAMILIES[name].sample(seed=1)
    given = len(sample.frames)
    base, layout = input_embeddings(adapter, sample)
    assert layout.num_frames * layout.frames_per_group == given, (layout.num_frames, layout.frames_per_group)
    assert adapter.prepare(sample).num_frames == given
    for f in range(given):
        frames = sample.frames.copy()
        frames[f] = 255 - frames[f]
        changed, _ = input_embeddings(adapter, sample.with_frames(frames))
        rows = torch.nonzero((changed - base).abs().amax(-1) > 0).flatten().tolist()
        span = layout.frames[f // layout.frames_per_group]
        assert rows and span.start <= rows[0] and rows[-1] < span.end, (
            f"input frame {f}: changed rows {rows[:3]}..{rows[-3:]} outside its group's span {span}"
        )


def test_a_processor_that_drops_frames_is_an_error_naming_the_sample(tiny_models, monkeypatch) -> None:
    """Whatever makes the processor's input hold other frames than those given (here: a
    processor that keeps every other frame) is a PromptError naming the sample and both
    counts, not a layout whose frame:t is some other frame."""
    adapter = load_model(str(tiny_models.path("llava_next_video")), progress=False)
    real = adapter.process
    monkeypatch.setattr(adapter, "process", lambda text, frames: real(text, frames[::2]))
    sample = FAMILIES["llava_next_video"].sample()
    with pytest.raises(PromptError, match=re.escape(f"sample {sample.id!r}: 4 frames") + ".* 2 frame group"):
        adapter.prepare(sample)
