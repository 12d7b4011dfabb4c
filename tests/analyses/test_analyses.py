"""The paper's other analyses on the tiny model: answer probability, logit lens, effective
pathways (+ search), attention maps and open-ended knockout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.tiny import make_sample
from vlmflow.analyses.answer_probability import AnswerProbability
from vlmflow.analyses.attention_maps import AttentionMaps
from vlmflow.analyses.base import read_answer
from vlmflow.analyses.logit_lens import LogitLens
from vlmflow.analyses.pathways import PRESETS, PathwaySpec, evaluate_pathway, search_pathway
from vlmflow.cuts import Cut, Plan, RandomCut, compile_plan
from vlmflow.engine import Engine, masked_forward
from vlmflow.errors import PlanError
from vlmflow.generation import generate_with_plan
from vlmflow.probe import Probe
from vlmflow.sample import Sample


@pytest.fixture(scope="module")
def setup(tiny_llava):
    prepared = tiny_llava.prepare(make_sample(seed=5))
    engine = Engine(tiny_llava.language_model(), prepared.inputs, prepared.layout)
    base = read_answer(tiny_llava, prepared, engine.baseline_logits())
    with torch.inference_mode():
        logits = tiny_llava.model(**prepared.inputs).logits[0].float()
    return tiny_llava, prepared, engine, base, logits


def test_answer_prob_at_the_last_layer_is_the_models_output(setup) -> None:
    adapter, prepared, engine, base, logits = setup
    rows = AnswerProbability(sample_mode="all").records(Probe(adapter, prepared))
    assert [r["layer"] for r in rows] == list(range(engine.lm.num_layers))
    want = logits[-1].softmax(-1)[list(prepared.option_ids)]
    got = torch.tensor(rows[-1]["option_probs"])
    assert (got - want).abs().max() < 1e-5
    assert rows[-1]["p_true"] == pytest.approx(float(want[prepared.sample.answer]), abs=1e-5)
    raw = AnswerProbability(norm=False, sample_mode="all").records(Probe(adapter, prepared))
    assert raw[-1]["option_probs"] == pytest.approx(rows[-1]["option_probs"], abs=1e-6)
    assert raw[0]["option_probs"] != pytest.approx(rows[0]["option_probs"], abs=1e-6)


def test_the_overtake_line_numbers_layers_from_0_as_the_layers_option_and_the_csv() -> None:
    """The terminal's overtake line names the layer as ``--layers``, the records and
    ``summary/answer-prob.csv`` do (0-based, said so); it used to print ``L24`` for layer 23."""
    import pandas as pd

    rows = [
        {"task": t, "layer": layer, "p_true": p, "p_false_max": 0.5, "p_false_mean": 0.3, "n": 2}
        for t, first in (("object_count", 23), ("static_attribute", None))
        for layer, p in ((k, 0.9 if first is not None and k >= first else 0.1) for k in range(30))
    ]
    lines = AnswerProbability.terminal({"summaries": {"answer-prob": pd.DataFrame(rows)}})
    assert lines == [
        "true option overtakes the false ones from (0-based, as --layers): "
        "object_count: layer 23, static_attribute: never"
    ]


def test_unembed_lens_at_the_last_layer_is_the_models_logits(setup) -> None:
    adapter, prepared, engine, base, logits = setup
    lens = LogitLens(topk=3, sample_mode="all")
    rows = lens.records(Probe(adapter, prepared))
    assert [r["layer"] for r in rows] == list(range(-1, engine.lm.num_layers))
    video = prepared.layout.resolve("video")
    top = logits[video].argmax(-1).tolist()
    assert rows[-1]["top1"] == [adapter.tokenizer.decode([t]).strip() for t in top]
    assert len(rows[0]["topk"][0]) == 3 and rows[0]["n_video"] == len(video)


def test_embed_lens_projects_onto_the_input_embeddings_normed_only_at_the_last_layer(setup) -> None:
    adapter, prepared, engine, base, _ = setup
    rows = LogitLens(projection="embed", topk=1, sample_mode="all").records(Probe(adapter, prepared))
    emb = engine.lm.embed_tokens.weight
    video = prepared.layout.resolve("video")
    for stream in (0, 2, engine.lm.num_layers):
        h = engine.hidden_states[stream][0, video]
        if stream == engine.lm.num_layers:  # the paper's hook reads the final norm's output
            h = engine.lm.norm(h)
        want = [adapter.tokenizer.decode([t]).strip() for t in (h @ emb.T).argmax(-1).tolist()]
        assert rows[stream]["top1"] == want and rows[stream]["layer"] == stream - 1
    unembed = LogitLens(topk=1, sample_mode="all").records(Probe(adapter, prepared))
    assert any(a["top1"] != b["top1"] for a, b in zip(rows, unembed, strict=True))


def test_keyword_hits_count_first_subtokens(setup) -> None:
    adapter, prepared, engine, base, _ = setup
    rows = LogitLens(topk=1, sample_mode="all", spatial=("the",), temporal=("Question",)).records(
        Probe(adapter, prepared)
    )
    for r in rows:
        assert r["spatial_hits"] == sum(1 for w in r["top1"] if w == "the")


def test_a_pathway_that_keeps_everything_equals_the_baseline(setup) -> None:
    adapter, prepared, engine, base, _ = setup
    n = engine.lm.num_layers
    keep_all = PathwaySpec(
        "all", n, {e: (0, n - 1) for e in ("cross_frame", "video_to_question", "question_to_last")}
    )
    rows = evaluate_pathway(Probe(adapter, prepared), keep_all, seeds=(), strict=False)
    pathway = next(r for r in rows if r["condition"] == "pathway")
    assert pathway["suppressed_fraction"] == 0.0 and pathway["p_gt"] == pytest.approx(base.p_gt, abs=1e-7)


def test_paper_preset_scales_and_suppresses_edges(setup) -> None:
    adapter, prepared, engine, base, _ = setup
    spec = PRESETS["llava-next-7b-video-ft"].scaled(engine.lm.num_layers)
    rows = evaluate_pathway(Probe(adapter, prepared), spec, seeds=(0, 1), strict=True)
    by = {(r["condition"], r["seed"]): r for r in rows}
    frac = by[("pathway", None)]["suppressed_fraction"]
    assert 0 < frac < by[("strict", None)]["suppressed_fraction"] < 1
    assert abs(by[("random", 0)]["suppressed_fraction"] - frac) < 0.01


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.35])
def test_random_blocking_hits_the_requested_fraction(setup, fraction: float) -> None:
    _, prepared, engine, _, _ = setup
    n = engine.lm.num_layers
    compiled = compile_plan(Plan("r", (RandomCut(fraction, 3, tuple(range(n))),)), prepared.layout, n)
    assert abs(compiled.suppressed_fraction() - fraction) < 0.01
    start = prepared.layout.video.start
    for m in compiled.blocked.values():
        assert not m[:start].any() and not m[:, :start].any()  # the system prompt is never touched
    again = compile_plan(Plan("r", (RandomCut(fraction, 3, tuple(range(n))),)), prepared.layout, n)
    assert all(np.array_equal(again.blocked[i], compiled.blocked[i]) for i in compiled.blocked)


def test_random_blocking_beyond_the_region_blocks_all_of_it_with_a_warning(setup) -> None:
    """More pairs than lie from the first video token on: all of them are blocked (the
    paper's ``randperm(...)[:N]``), and the warning says how many were asked and there."""
    _, prepared, engine, _, _ = setup
    layout = prepared.layout
    with pytest.warns(UserWarning, match="only"):
        compiled = compile_plan(Plan("r", (RandomCut(0.9, 0, (0,)),)), layout, engine.lm.num_layers)
    start, n = int(layout.resolve("video")[0]), layout.length
    m = compiled.blocked[0]
    assert m.sum() == (n - start) * (n - start + 1) // 2 and m[start:, start:].sum() == m.sum()


def test_attention_rows_sum_to_one_and_blocked_pairs_are_zero(setup) -> None:
    adapter, prepared, engine, _, _ = setup
    layout = prepared.layout
    plan = compile_plan(Plan("v-/->last", (Cut("video", "last", (1, 2)),)), layout, engine.lm.num_layers)
    logits, reads = masked_forward(
        engine.lm,
        prepared.inputs,
        plan,
        read_attention=(0, 2),
        queries={"last": layout.resolve("last"), "question": layout.resolve("question")},
    )
    assert set(reads) == {0, 2}
    for layer in (0, 2):
        for w in reads[layer].values():
            assert float(w.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(reads[2]["last"][layout.resolve("video")].abs().max()) == 0.0
    assert float(reads[0]["last"][layout.resolve("video")].sum()) > 0
    # reading attention does not change the answer
    assert (logits.softmax(-1) - engine.evaluate([plan])[0].softmax(-1)).abs().max() < 1e-5
    # and only the read layers ran eagerly
    assert adapter.attn_implementation() == "sdpa"


def test_attention_maps_analysis_records(setup) -> None:
    adapter, prepared, engine, base, _ = setup
    rows = AttentionMaps(layers=(0, 3), sample_mode="all").records(Probe(adapter, prepared))
    assert {r["condition"] for r in rows} == {"baseline", "cross-frame"}
    assert {r["query"] for r in rows} == {"last", "question"}
    for r in rows:
        assert r["row_sum"] == pytest.approx(1.0, abs=1e-5)
        assert len(r["frame_mass"]) == prepared.layout.num_frames
        assert sum(r["frame_mass"]) == pytest.approx(r["video_mass"], abs=1e-6)


def test_a_one_frame_sample_keeps_its_baseline_map_and_notes_the_comparison_does_not_apply(
    tiny_llava,
) -> None:
    """Under the default ``compare="cross-frame"`` a 1-frame sample failed entirely
    ("cross-frame needs at least 2 frame groups") and lost its baseline map."""
    prepared = tiny_llava.prepare(make_sample(frames=1))
    assert prepared.layout.num_frames == 1
    rows = AttentionMaps(layers=(0,), sample_mode="all").records(Probe(tiny_llava, prepared))
    assert {r["condition"] for r in rows} == {"baseline"}
    assert {r["query"] for r in rows} == {"last", "question"}
    assert {r["note"] for r in rows} == {
        "the cross-frame comparison does not apply to a 1-frame sample: baseline only"
    }
    with pytest.raises(PlanError, match="unknown group|frame"):  # other plan errors still stop the sample
        AttentionMaps(layers=(0,), compare="frame:9->last", sample_mode="all").records(
            Probe(tiny_llava, tiny_llava.prepare(make_sample(frames=4)))
        )


def test_word_options_given_as_a_string_are_split_at_commas_as_on_the_command_line() -> None:
    """``AttentionMaps(query_words="white")`` became the letters ('w', 'h', 'i', 't', 'e') and
    ``LogitLens(spatial="red,blue")`` the characters of the string."""
    assert AttentionMaps(query_words="white").query_words == ("white",)
    assert AttentionMaps(query_words="first, up").query_words == ("first", "up")
    assert AttentionMaps(query_words=["first", "up"]).query_words == ("first", "up")
    lens = LogitLens(spatial="red,blue", temporal="up")
    assert lens.spatial == ("red", "blue") and lens.temporal == ("up",)
    assert LogitLens(spatial=("red",)).spatial == ("red",)


def test_generation_with_an_empty_plan_equals_plain_greedy_generation(setup) -> None:
    adapter, prepared, engine, _, _ = setup
    ours = generate_with_plan(adapter.model, engine.lm, prepared.inputs, None, max_new_tokens=6)
    with torch.inference_mode():
        plain = adapter.model.generate(**prepared.inputs, max_new_tokens=6, do_sample=False)
    assert list(ours.token_ids) == plain[0, prepared.inputs["input_ids"].shape[1] :].tolist()
    empty = compile_plan(Plan("empty"), prepared.layout, engine.lm.num_layers)
    assert (
        generate_with_plan(adapter.model, engine.lm, prepared.inputs, empty, max_new_tokens=6).token_ids
        == ours.token_ids
    )


def test_generation_under_a_plan_starts_where_the_engine_says(setup) -> None:
    adapter, prepared, engine, _, _ = setup
    plan = compile_plan(
        Plan("q", (Cut("question", "last", (0, 1, 2, 3)), Cut("video", "last", (0, 1)))),
        prepared.layout,
        engine.lm.num_layers,
    )
    gen = generate_with_plan(adapter.model, engine.lm, prepared.inputs, plan, max_new_tokens=4)
    assert (gen.first_probs - engine.evaluate([plan])[0].softmax(-1)).abs().max() < 1e-5
    assert len(gen.token_ids) == 4


def test_open_ended_samples_get_the_paper_prompt(tiny_llava) -> None:
    s = Sample(
        id="oe",
        question="What is happening in the video?",
        answer_text="A cup moves.",
        frames=make_sample().frames,
    )
    prepared = tiny_llava.prepare(s)
    assert prepared.prompt.endswith("USER: What is happening in the video? ASSISTANT:")
    assert prepared.option_ids == () and prepared.layout.options == ()


def test_pathway_search_finds_ranges_within_tolerance(tiny_llava) -> None:
    probes = [Probe(tiny_llava, tiny_llava.prepare(make_sample(seed=s, sid=f"c{s}"))) for s in range(3)]
    result = search_pathway(probes, tiny_llava.num_layers, tolerance=0.0, step=2)
    assert result.calib_accuracy >= result.base_accuracy
    assert result.suppressed > 0 and result.trace


def test_analysis_options_take_the_forms_the_probe_takes(setup) -> None:
    """``InformationFlow(targets="cross-frame")`` used to sweep the targets 'c', 'r', ...,
    and ``layers="1-2"`` or ``layers=2`` crashed at run time with a TypeError. Each
    analysis stores the normalised form (so the manifest does) and runs on it."""
    from vlmflow.analyses.information_flow import InformationFlow
    from vlmflow.analyses.open_ended import OpenEnded
    from vlmflow.analyses.screened_flow import ScreenedFlow

    adapter, prepared, *_ = setup
    for cls in (InformationFlow, ScreenedFlow):
        loose = cls(targets="cross-frame", layers="2,1", custom="video->last", window=1)
        strict = cls(targets=("cross-frame",), layers=(1, 2), custom=("video->last",), window=1)
        assert loose.config() == strict.config() and loose.config()["layers"] == (1, 2)
        assert cls(layers=2).layers == (2,) and cls(layers=range(1, 3)).layers == (1, 2)
    assert OpenEnded(targets="vqrl-to-qrl", layers=3).config()["targets"] == ("vqrl-to-qrl",)
    maps = AttentionMaps(layers="0,3", compare_layers=1, queries="last")
    assert (maps.layers, maps.compare_layers, maps.queries) == ((0, 3), (1,), ("last",))
    assert LogitLens(spatial="left, right").spatial == ("left", "right")
    with pytest.raises(PlanError, match="layers must be integers"):
        InformationFlow(layers=1.5)
    with pytest.raises(PlanError, match="targets must be a name"):
        InformationFlow(targets=[1])
    flow = InformationFlow(targets="cross-frame", layers=2, window=1, sample_mode="all")
    rows = flow.records(Probe(adapter, prepared))
    assert {(r["target"], r["layer"]) for r in rows} == {("cross-frame", 2)}
