"""Head-level cuts (``Cut(..., heads=...)``): exact on every family's tiny model under sdpa
and eager attention, grouped-query attention cuts query heads, plans stay serialisable."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from head_conformance import check_head_cuts_match_plain
from tiny import build_llava_next_video, make_sample
from tiny_families import build_internvl, build_llava_onevision, build_video_llava, build_videollama3
from tiny_pllava import build_llava_next, build_mini_internvl, build_pllava
from tiny_qwen import build_qwen_vl
from vlmflow.cuts import Cut, Plan, compile_plan
from vlmflow.errors import PlanError
from vlmflow.layout import Span, TokenLayout
from vlmflow.models import load_model

BUILDERS: dict[str, tuple[Callable[[Path], Path], int]] = {
    "llava_next_video": (build_llava_next_video, 4),
    "llava_onevision": (build_llava_onevision, 4),
    "internvl": (build_internvl, 4),
    "videollama3": (build_videollama3, 4),
    "video_llava": (build_video_llava, 8),
    "pllava": (build_pllava, 4),
    "llava_image_baseline": (build_llava_next, 8),
    "mini_internvl": (build_mini_internvl, 4),
    "qwen2_vl": (lambda p: build_qwen_vl("qwen2_vl", p), 8),
    "qwen2_5_vl": (lambda p: build_qwen_vl("qwen2_5_vl", p), 8),
    "qwen3_vl": (lambda p: build_qwen_vl("qwen3_vl", p), 8),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_head_cuts_equal_plain_masked_forward(family: str, tmp_path: Path) -> None:
    build, frames = BUILDERS[family]
    path = build(tmp_path / family)
    for impl in ("sdpa", "eager"):
        adapter = load_model(str(path), attn_implementation=impl)
        assert adapter.attn_implementation() == impl
        check_head_cuts_match_plain(adapter, make_sample(seed=3, frames=frames))


def test_grouped_query_attention_cuts_query_heads_not_kv_heads(tiny_llava, sample) -> None:
    """The tiny Llama has 4 query heads over 2 key/value heads: heads 0 and 1 share one.
    Cutting head 0 differs from cutting head 1 and from cutting both (their shared kv head);
    the effect of cutting a query head shows only in that head's attention output."""
    from vlmflow.engine import Engine

    prepared = tiny_llava.prepare(sample)
    lm = tiny_llava.language_model()
    cfg = lm.layers[0].self_attn.config
    assert cfg.num_attention_heads == 4 and cfg.num_key_value_heads == 2
    engine = Engine(lm, prepared.inputs, prepared.layout)
    plans = [Plan(str(h), (Cut("video", "last", (0,), h),)) for h in [(0,), (1,), (0, 1)]]
    a, b, both = engine.evaluate(plans)
    assert (a - b).abs().max() > 1e-6 and (a - both).abs().max() > 1e-6 and (b - both).abs().max() > 1e-6

    # per-head attention outputs of layer 0 at the last position: only head 0 changes
    outs: list[torch.Tensor] = []
    o_proj = lm.layers[0].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda m, a: outs.append(a[0][0, -1].detach().clone()))
    try:
        from vlmflow.engine import masked_forward

        masked_forward(lm, prepared.inputs, None)
        masked_forward(lm, prepared.inputs, engine.compile(plans[0]))
    finally:
        handle.remove()
    head_dim = outs[0].shape[-1] // 4
    changed = (outs[0] - outs[1]).abs().reshape(4, head_dim).amax(-1)
    assert changed[0] > 1e-6 and bool((changed[1:] == 0).all()), changed


def _layout() -> TokenLayout:
    return TokenLayout(
        length=12,
        system=Span(0, 2),
        video=Span(2, 6),
        frames=(Span(2, 4), Span(4, 6)),
        frame_grids=((1, 2), (1, 2)),
        question=Span(6, 10),
        question_no_options=Span(6, 8),
        options=(Span(8, 9), Span(9, 10)),
        answer=0,
    )


def test_head_cut_plans_round_trip_through_json() -> None:
    plan = Plan("p", (Cut("video", "last", (3, 1), (17, 3)), Cut("question", "last", (2,))))
    back = Plan.from_dict(json.loads(plan.to_json()))
    assert back == plan and back.cuts[0].heads == (3, 17) and back.cuts[1].heads is None
    assert "heads" not in plan.cuts[1].to_dict()  # whole-layer cuts serialise as before


def test_compiled_head_cuts_are_per_head_only_where_needed() -> None:
    layout = _layout()
    plan = Plan("p", (Cut("video", "last", (0, 1), (1,)), Cut("question", "last", (1, 2))))
    compiled = compile_plan(plan, layout, num_layers=3, num_heads=4)
    assert compiled.blocked[0].shape == (4, 12, 12) and compiled.blocked[2].shape == (12, 12)
    m = compiled.blocked[1]
    video = layout.resolve("video")
    assert m[1, 11, video].all() and not m[0, 11, video].any() and not m[2, 11, video].any()
    assert all(m[h, 11, layout.resolve("question")].all() for h in range(4))
    every = compile_plan(Plan("e", (Cut("video", "last", (0,), (0, 1, 2, 3)),)), layout, 3, 4)
    assert every.blocked[0].shape == (12, 12)  # every head alike collapses to one matrix
    assert compiled.first_query == 11


def test_head_cut_errors_are_specific() -> None:
    layout = _layout()
    plan = Plan("p", (Cut("video", "last", (0,), (4,)),))
    with pytest.raises(PlanError, match="head 4 is outside 0..3"):
        compile_plan(plan, layout, 3, 4)
    with pytest.raises(PlanError, match="number of heads is unknown"):
        compile_plan(plan, layout, 3)
    with pytest.raises(PlanError, match="heads must be non-empty"):
        Cut("video", "last", (0,), ())
    dead = Plan("d", (Cut("all", "all", (0,), (2,)),))
    with pytest.raises(PlanError, match="no key to attend to"):
        compile_plan(dead, layout, 3, 4)
    assert np.array_equal(
        compile_plan(Plan("x", (Cut("video", "last", (0,)),)), layout, 3).blocked[0],
        compile_plan(Plan("x", (Cut("video", "last", (0,), (0, 1, 2, 3)),)), layout, 3, 4).blocked[0],
    )


def test_generation_under_a_head_level_plan_starts_where_the_engine_says(tiny_llava, sample) -> None:
    from vlmflow.engine import Engine
    from vlmflow.generation import generate_with_plan

    prepared = tiny_llava.prepare(sample)
    engine = Engine(tiny_llava.language_model(), prepared.inputs, prepared.layout)
    plan = engine.compile(
        Plan("h", (Cut("question", "last", (0, 1, 2), (1, 2)), Cut("video", "last", (0, 1)))),
    )
    assert plan.blocked[0].ndim == 3
    gen = generate_with_plan(tiny_llava.model, engine.lm, prepared.inputs, plan, max_new_tokens=4)
    assert (gen.first_probs - engine.evaluate([plan])[0].softmax(-1)).abs().max() < 1e-5
    assert len(gen.token_ids) == 4
