"""The engine against the plain approach: a full forward of the whole model with the mask."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tests.fixtures.catalog import FAMILIES
from vlmflow.analyses.targets import PAPER_TARGETS, sweep, target_curves
from vlmflow.cuts import WINDOW_STYLES, Cut, Plan
from vlmflow.engine import Engine, LanguageModel, full_forward_logits
from vlmflow.errors import PlanError, UnsupportedModelError
from vlmflow.generation import generate_with_plan
from vlmflow.models import load_model

TOL = 1e-5  # fp32; suffix recompute and packing reorder float sums (~1e-7 seen)


def engine_for(adapter, sample, **kw) -> tuple[Engine, object]:
    prepared = adapter.prepare(sample)
    engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout, **kw)
    engine.run_baseline()
    return engine, prepared


def assert_matches_plain(adapter, engine: Engine, prepared, plans: list[Plan]) -> None:
    got = engine.evaluate(plans).softmax(-1)
    lm = adapter.language_model()
    want = torch.stack([full_forward_logits(lm, prepared.inputs, engine.compile(p)) for p in plans]).softmax(
        -1
    )
    diff = (got - want).abs().max().item()
    assert diff < TOL, f"engine differs from the plain masked forward by {diff:.2e} (tolerance {TOL})"


def test_baseline_equals_the_model_output(tiny_llava, sample) -> None:
    engine, prepared = engine_for(tiny_llava, sample)
    with torch.inference_mode():
        ref = tiny_llava.model(**prepared.inputs).logits[0, -1].float()
    assert (engine.baseline_logits().softmax(-1) - ref.softmax(-1)).abs().max() < TOL


def test_a_plan_that_cuts_nothing_equals_the_baseline(tiny_llava, sample) -> None:
    engine, _ = engine_for(tiny_llava, sample)
    anticausal = Plan("anticausal", (Cut("last", "video", (0, 1, 2, 3)),))  # cuts no causal edge
    out = engine.evaluate([Plan("empty"), anticausal])
    assert torch.equal(out[0], engine.baseline_logits())
    assert torch.equal(out[1], engine.baseline_logits())


@pytest.mark.parametrize("style", WINDOW_STYLES)
def test_engine_equals_plain_forward_for_every_target(tiny_llava, sample, style: str) -> None:
    engine, prepared = engine_for(tiny_llava, sample)
    n = engine.lm.num_layers
    plans = []
    for _target, name, edges in target_curves(PAPER_TARGETS, prepared.layout):
        plans += [p.plan for p in sweep([(name, edges)], n, window=3, style=style)]
    assert_matches_plain(tiny_llava, engine, prepared, plans)
    # and the cuts change the answer distribution, or the test would prove nothing
    assert (engine.evaluate(plans).softmax(-1) - engine.baseline_logits().softmax(-1)).abs().max() > 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_engine_equals_plain_forward_for_random_cuts(tiny_llava, sample, seed: int) -> None:
    rng = np.random.default_rng(seed)
    engine, prepared = engine_for(tiny_llava, sample, max_batch_tokens=int(rng.integers(1, 200)))
    groups = [
        "system",
        "video",
        "frame:0",
        "frame:2",
        "frames:<3",
        "question",
        "question_no_options",
        "true_option",
        "false_options",
        "last",
        "template",
        "options",
    ]
    plans = []
    for i in range(12):
        cuts = tuple(
            Cut(
                str(rng.choice(groups)),
                str(rng.choice(groups)),
                tuple(int(x) for x in rng.choice(4, int(rng.integers(1, 5)), replace=False)),
            )
            for _ in range(int(rng.integers(1, 4)))
        )
        plan = Plan(f"r{i}", cuts)
        try:
            engine.compile(plan)
        except PlanError:
            continue
        plans.append(plan)
    assert plans
    assert_matches_plain(tiny_llava, engine, prepared, plans)


def test_engine_equals_plain_forward_under_eager_attention(tiny_llava_path, sample) -> None:
    adapter = load_model(str(tiny_llava_path), attn_implementation="eager")
    assert adapter.attn_implementation() == "eager"
    engine, prepared = engine_for(adapter, sample)
    plans = [
        p.plan
        for _t, name, e in target_curves(PAPER_TARGETS, prepared.layout)
        for p in sweep([(name, e)], engine.lm.num_layers, window=3)
    ]
    assert_matches_plain(adapter, engine, prepared, plans)


def test_packing_budget_does_not_change_results(tiny_llava, sample) -> None:
    big, prepared = engine_for(tiny_llava, sample)
    small, _ = engine_for(tiny_llava, sample, max_batch_tokens=1)
    plans = [
        p.plan
        for _t, name, e in target_curves(["vql-to-ql"], prepared.layout)
        for p in sweep([(name, e)], big.lm.num_layers, window=1)
    ]
    assert (big.evaluate(plans) - small.evaluate(plans)).abs().max() < 1e-4


def test_engine_refuses_attention_that_ignores_masks(tiny_llava, sample) -> None:
    prepared = tiny_llava.prepare(sample)
    lm = tiny_llava.language_model()
    flash = LanguageModel(
        lm.forward, lm.layers, lm.norm, lm.lm_head, lm.embed_tokens, lambda: "flash_attention_2", lm.attention
    )
    with pytest.raises(UnsupportedModelError, match="ignores custom masks"):
        Engine(flash, prepared.inputs, prepared.layout).run_baseline()


def test_evaluating_no_plans_gives_an_empty_batch_of_logits(tiny_llava, sample) -> None:
    engine, _ = engine_for(tiny_llava, sample)
    out = engine.evaluate([])
    vocab = engine.baseline_logits().shape[-1]
    assert out.shape == (0, vocab)
    normal = engine.evaluate([Plan("empty")])
    assert out.dtype == normal.dtype and out.device == normal.device


def test_evaluate_refuses_what_is_not_a_list_of_plans_in_one_line(tiny_llava, sample) -> None:
    """``evaluate(["video->last"])`` raised AttributeError in compile_plan and
    ``evaluate(plan)`` a TypeError: each is now a PlanError naming what was given."""
    engine, _ = engine_for(tiny_llava, sample)
    plan = Plan("v", (Cut("video", "last", (1,)),))
    for given, said in (
        (["video->last"], "evaluate takes Plan or CompiledPlan items, not str 'video->last' (text plans go"),
        (plan, "evaluate takes a list of plans, not one Plan: give [plan]"),
        (engine.compile(plan), "evaluate takes a list of plans, not one CompiledPlan: give [plan]"),
        ("video->last", "evaluate takes a list of plans, not str 'video->last'"),
        ([plan, 3], "evaluate takes Plan or CompiledPlan items, not int 3"),
    ):
        with pytest.raises(PlanError, match=re.escape(said)):
            engine.evaluate(given)
    assert engine.evaluate((plan,)).shape[0] == 1  # any sequence of plans


def test_a_plan_compiled_for_another_input_is_refused(tiny_llava) -> None:
    from tests.fixtures.tiny import make_sample

    a, prepared_a = engine_for(tiny_llava, make_sample(answer=2))
    b, prepared_b = engine_for(tiny_llava, make_sample(answer=0, seed=1))
    assert prepared_a.layout.length == prepared_b.layout.length  # same length, other layout
    assert prepared_a.layout != prepared_b.layout
    plan = Plan("true-to-last", (Cut("true_option", "last", (0, 1, 2, 3)),))
    with pytest.raises(PlanError, match=r"plan 'true-to-last' was compiled for another input.*answer"):
        b.evaluate([a.compile(plan)])
    # its own compilation, and one of an input with the same layout, are accepted
    assert torch.equal(b.evaluate([b.compile(plan)]), b.evaluate([plan]))
    same, _ = engine_for(tiny_llava, make_sample(answer=0, seed=1))
    assert torch.equal(same.evaluate([b.compile(plan)]), b.evaluate([plan]))


def _sliding_window_model(tiny_models, tmp_path, window: int):
    """The tiny LLaVA-OneVision (Qwen2 text model) with every layer on a sliding window."""
    import json
    import shutil

    path = tmp_path / f"window{window}"
    shutil.copytree(tiny_models.path("llava_onevision"), path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"].update(use_sliding_window=True, sliding_window=window, max_window_layers=0)
    config["text_config"].pop("layer_types", None)  # derived again from the settings above
    (path / "config.json").write_text(json.dumps(config))
    return load_model(str(path))


def test_a_sliding_window_shorter_than_the_input_is_refused_by_name(tiny_models, tmp_path) -> None:
    adapter = _sliding_window_model(tiny_models, tmp_path, 16)
    prepared = adapter.prepare(FAMILIES["llava_onevision"].sample())
    assert prepared.layout.length > 16
    engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
    plan = Plan("q", (Cut("question", "last", (1,)),))
    with pytest.raises(UnsupportedModelError, match=r"sliding window of 16 tokens.*sliding_window=16"):
        engine.evaluate([plan])
    # the plain masked forward would replace the windowed mask by a full one: refused too
    compiled, lm = engine.compile(plan), adapter.language_model()
    with pytest.raises(UnsupportedModelError, match="sliding_window=16"):
        full_forward_logits(lm, prepared.inputs, compiled)
    with pytest.raises(UnsupportedModelError, match="sliding_window=16"):  # and so does generation's
        generate_with_plan(adapter.model, lm, prepared.inputs, compiled, max_new_tokens=2)


def test_a_sliding_window_longer_than_the_input_changes_nothing(tiny_models, tmp_path) -> None:
    adapter = _sliding_window_model(tiny_models, tmp_path, 262144)  # as Phi-3-128k ships
    prepared = adapter.prepare(FAMILIES["llava_onevision"].sample())
    engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
    plans = [Plan("q", (Cut("question", "last", (1,)),)), Plan("v", (Cut("video", "question", (0, 1)),))]
    assert_matches_plain(adapter, engine, prepared, plans)
