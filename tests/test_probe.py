"""The front door (``vlmflow.load`` -> ``Model.probe`` -> ``Probe``) on the tiny model: every
read and cut agrees with an independent route (the model's own forward, a plain masked
forward, transformers' ``generate``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

import vlmflow
from tests.fixtures.tiny import make_sample
from vlmflow.analyses.targets import sweep, target_curves
from vlmflow.attribution import Attribution, attribute, plan_groups, relative_change
from vlmflow.cuts import Cut, Plan, compile_plan
from vlmflow.data import write_video
from vlmflow.engine import full_forward_logits
from vlmflow.errors import DataError, PlanError, PromptError, VlmflowError
from vlmflow.probe import Model
from vlmflow.screen import plan_cost

TOL = 1e-5  # fp32 probabilities, engine recompute vs full forward (see tests/conformance.py)


@pytest.fixture(scope="module")
def model(tiny_llava) -> Model:
    return Model(tiny_llava)


@pytest.fixture(scope="module")
def probe(model: Model) -> vlmflow.Probe:
    return model.probe(make_sample(seed=5))


@pytest.fixture(scope="module")
def logits(probe) -> torch.Tensor:
    """The model's own logits at every position, ``(N, vocab)``."""
    with torch.inference_mode():
        return probe.adapter.model(**probe.prepared.inputs).logits[0].float()


def test_the_public_names_are_one_import_away() -> None:
    for name in ("load", "Probe", "Cut", "Plan", "load_dataset", "InformationFlow", "Pathways", "RunDir"):
        assert name in vlmflow.__all__ and hasattr(vlmflow, name)


def test_load_reads_the_family_from_the_checkpoint(tiny_llava_path) -> None:
    model = vlmflow.load(str(tiny_llava_path))
    assert model.adapter.family == "llava_next_video" and model.num_layers == 4


def test_load_passes_the_familys_adapter_options_and_refuses_a_misspelt_one(tiny_llava_path) -> None:
    """The family docs' ``load_model(path, frames_per_second=...)`` options were a TypeError
    through ``vlmflow.load``."""
    from vlmflow.errors import UnsupportedModelError

    model = vlmflow.load(str(tiny_llava_path), num_frames=4, frame_policy="linspace")
    assert (model.adapter.num_frames, model.adapter.frame_policy) == (4, "linspace")
    with pytest.raises(UnsupportedModelError, match=r"no option 'num_frame' \(did you mean 'num_frames'\?\)"):
        vlmflow.load(str(tiny_llava_path), num_frame=4)


def test_answer_is_the_models_own_last_position_answer(probe, logits) -> None:
    want = logits[-1].softmax(-1)[list(probe.prepared.option_ids)]
    got = torch.tensor(list(probe.answer.probabilities.values()))
    assert (got - want).abs().max() < 1e-5
    assert list(probe.answer.probabilities) == ["A", "B", "C", "D"]
    assert probe.answer.letter == "ABCD"[int(want.argmax())] or probe.answer.letter is None


def test_groups_name_every_span_of_the_layout(probe) -> None:
    groups, layout = probe.groups, probe.layout
    assert [groups[f"frame:{t}"][0] for t in range(layout.num_frames)] == list(layout.frames)
    assert groups["option:C"] == [layout.options[2]] and groups["last"][0].start == layout.length - 1
    template = np.concatenate([s.positions() for s in groups["template"]])
    assert np.array_equal(template, layout.resolve("template"))


def test_knockout_equals_a_plain_masked_forward(probe) -> None:
    layers = range(1, 3)
    got = probe.knockout("video->last", layers=layers)
    plan = Plan("video->last", (Cut("video", "last", tuple(layers)),))
    want = full_forward_logits(probe.engine.lm, probe.prepared.inputs, probe.engine.compile(plan)).softmax(-1)
    assert abs(got.p_gt - float(want[probe.answer.gt_id])) < TOL
    both = probe.knockout([plan, "question->last"])
    assert len(both) == 2 and both[0].probabilities == pytest.approx(got.probabilities, abs=1e-7)
    with pytest.raises(PlanError):
        probe.knockout("nowhere->last")


def test_sweep_is_one_row_per_curve_and_layer_matching_the_masked_forward(probe) -> None:
    df = probe.sweep("vql-to-ql", window=3)
    assert len(df) == 4 * probe.num_layers and set(df["condition"]) == {
        "video->question",
        "video->last",
        "question->last",
        "last->last",
    }
    lm, layout = probe.engine.lm, probe.layout
    (_, name, edges) = target_curves(["vql-to-ql"], layout)[1]
    point = sweep([(name, edges)], lm.num_layers, window=3)[2]
    row = df[(df["condition"] == name) & (df["layer"] == 2)].iloc[0]
    want = full_forward_logits(lm, probe.prepared.inputs, compile_plan(point.plan, layout, lm.num_layers))
    assert row["p_pred_new"] == pytest.approx(float(want.softmax(-1)[probe.answer.pred_id]), abs=TOL)
    assert row["rel_pred"] == pytest.approx(
        (row["p_pred_new"] - row["p_pred_base"]) / row["p_pred_base"] * 100
    )


def test_resid_is_the_residual_stream_the_model_reads_out(probe, logits) -> None:
    lm, n = probe.engine.lm, probe.num_layers
    assert len(probe.resid) == n and probe.resid[0].shape == (probe.layout.length, 64)
    out = lm.lm_head(lm.norm(probe.resid[n - 1][-1:])).float()[0]
    assert (out.softmax(-1) - logits[-1].softmax(-1)).abs().max() < 1e-5
    with torch.inference_mode():
        embeds = probe.adapter.model.get_input_embeddings()(probe.prepared.inputs["input_ids"])[0]
    text = probe.layout.resolve("question")
    assert torch.equal(probe.resid[-1][text], embeds[text])  # -1: the embeddings
    with pytest.raises(IndexError):
        probe.resid[n]


def test_resid_slices_give_a_list_of_layers(probe) -> None:
    """``probe.resid[0:2]`` used to raise; a slice runs over layers 0..L-1 as over
    ``range(len(resid))``, and numpy integers index too."""
    n = probe.num_layers
    first_two = probe.resid[0:2]
    assert isinstance(first_two, list) and len(first_two) == 2
    assert torch.equal(first_two[0], probe.resid[0]) and torch.equal(first_two[1], probe.resid[1])
    assert [t.data_ptr() for t in probe.resid[-2:]] == [probe.resid[i].data_ptr() for i in (n - 2, n - 1)]
    assert len(probe.resid[::2]) == len(range(n)[::2]) and probe.resid[n:] == []
    assert torch.equal(probe.resid[np.int64(1)], probe.resid[1])
    with pytest.raises(TypeError, match="layer number or a slice"):
        probe.resid[1.0]


def test_answers_and_samples_print_as_one_short_line(probe) -> None:
    """``probe.answer`` used to print ``Baseline(probs=tensor([...vocabulary...]), ...)``, a
    knockout's answer was labelled ``Baseline`` too, and a ``Sample`` dumped its frames."""
    base, answer = repr(probe.answer), probe.answer
    said = answer.letter if answer.letter is not None else repr(answer.pred_token)  # a non-letter token
    assert base.startswith(f"Answer(baseline: {said}, p=") and "tensor" not in base
    assert all(f"{letter}: " in base for letter in probe.sample.letters) and len(base) < 200
    cut = probe.knockout("video->last", layers=[1])
    assert repr(cut).startswith("Answer(knockout 'video->last': ") and "Baseline" not in repr(cut)
    assert cut.plan == "video->last" and probe.answer.plan is None
    both = probe.knockout(["video->last", Cut("question", "last", (1,))], layers=None)
    assert [a.plan for a in both] == ["video->last", "question->last"]
    sample = probe.sample
    shown = repr(sample)
    assert sample.frames is not None and "x".join(map(str, sample.frames.shape)) + " uint8" in shown
    assert "array(" not in shown and len(shown) < 400 and shown.startswith(f"Sample(id={sample.id!r}")


def test_a_knockouts_answer_gives_the_sweeps_quantities(probe) -> None:
    """A knockout's ``p_pred`` is its own top token's probability: on the README sample a
    knockout that removes the baseline answer (sweep: p_pred_new 3.6e-08, rel_pred -100%,
    pred_new B) read p_pred 0.99995, and ``k.p_pred / probe.answer.p_pred - 1`` said 0%.
    The answer now carries the sweep's columns of the same knockout, named as they are."""
    import json
    import math

    base = probe.answer
    assert base.p_pred_new is None and base.rel_pred is None and base.base is None
    rows = probe.sweep(["cross-frame"], custom=["video->last"], window=1)
    close = {"rel_tol": 1e-5, "abs_tol": 1e-9}  # float32 logits: a sweep evaluates its plans batched
    for row in rows.itertuples():
        cut = probe.knockout(Plan.from_dict(json.loads(row.plan)))
        assert cut.base is base and cut.p_pred_base == base.p_pred == row.p_pred_base
        assert math.isclose(cut.p_pred_new, row.p_pred_new, **close)
        assert math.isclose(cut.rel_pred, row.rel_pred, rel_tol=1e-4, abs_tol=1e-4)
        assert cut.p_pred_new == float(cut.probs[base.pred_id])  # the baseline's answer, not its own
        assert (cut.pred_base, cut.pred_new) == (row.pred_base, row.pred_new)
        if base.gt_id is not None:
            assert math.isclose(cut.p_gt_new, row.p_gt_new, **close)
            assert math.isclose(cut.rel_gt, row.rel_gt, rel_tol=1e-4, abs_tol=1e-4)
            assert cut.p_gt_base == row.p_gt_base
    assert (rows["pred_new"] != rows["pred_base"]).any()  # some knockout changes the answer: p_pred differs
    shown = repr(cut)
    assert f"p(baseline {cut.pred_base})={cut.p_pred_new:.3g} ({cut.rel_pred:+.3g}%)" in shown


def test_a_plan_with_a_random_cut_runs_through_the_probe(probe) -> None:
    """The paper's random baseline as a Plan: every probe method crashed on it
    (AttributeError: 'RandomCut' object has no attribute 'src') while the engine evaluates it."""
    from vlmflow.cuts import RandomCut

    plan = Plan("random", (RandomCut(0.2, 0, (1, 2), sample=probe.sample.id), Cut("video", "last", (1,))))
    got = probe.knockout(plan)
    want = probe.engine.evaluate([plan])[0]
    assert torch.allclose(got.probs, probe.read(want).probs) and got.plan == "random"
    assert probe.attention(layers=[1], queries="last", plan=plan)[1]["last"].shape == (probe.layout.length,)
    for bad, said in (
        (RandomCut(0.2, 0, ()), "cut 'random 0.2 after video' blocks nothing: it names no layers"),
        (RandomCut(0.0, 0, (1,)), "blocks nothing: 0 of this input's"),
        (RandomCut(0.2, 0, (1,), start="option:Z"), "plan 'r': cut 'random 0.2 after option:Z': "),
    ):
        with pytest.raises(PlanError, match=re.escape(said)):
            probe.knockout(Plan("r", (bad,)))


def test_a_bare_random_cut_is_a_plan_of_one_as_a_bare_cut(probe) -> None:
    """``probe.knockout(Cut(...))`` wraps the cut into a plan; a bare ``RandomCut`` was
    refused ("a plan is 'SRC->DST' text, a Cut or a Plan")."""
    from vlmflow.cuts import RandomCut

    rc = RandomCut(0.2, 0, (1, 2), sample=probe.sample.id)
    got = probe.knockout(rc)
    want = probe.read(probe.engine.evaluate([Plan("r", (rc,))])[0])
    assert torch.allclose(got.probs, want.probs) and got.plan == "random 0.2 after video"
    assert len(probe.knockout([rc, "video->last"])) == 2
    with pytest.raises(PlanError, match="carries its own layers"):
        probe.knockout(rc, layers=[1])


def test_sweep_and_screen_take_one_custom_curve_as_text(probe) -> None:
    """``custom="video->last"`` was split into its characters ("cut 'v' must read SRC->DST");
    one text is one curve, as InformationFlow's options, and a non-text is one line."""
    one = probe.sweep([], custom="video->last", window=1, layers=[1])
    listed = probe.sweep([], custom=["video->last"], window=1, layers=[1])
    assert one["condition"].tolist() == ["video->last"] and one.equals(listed)
    screened = probe.screen([], custom="video->last", window=1, layers=[1, 2], k=1, control=0)
    assert set(screened["condition"]) == {"video->last"} and len(screened) == 2
    for call in (probe.sweep, probe.screen):
        with pytest.raises(PlanError, match="custom must be a name or a sequence of names, got 3"):
            call([], custom=3)


def test_knockout_refuses_a_dict_of_plans(probe) -> None:
    """``knockout({"video->last": [3]})`` iterated the dict's keys, blocked them in every layer
    and returned a list; a dict (or a set, unordered) is a one-line PlanError saying how to
    give layers."""
    for given in ({"video->last": [3]}, {"video->last"}):
        with pytest.raises(PlanError, match=r"takes a plan or a list of plans, not a (dict|set) .*layers="):
            probe.knockout(given)


def test_groups_list_every_named_group_the_errors_offer(probe) -> None:
    groups, layout = probe.groups, probe.layout
    for name in ("options", "true_option", "false_options", "all"):
        got = np.concatenate([s.positions() for s in groups[name]])
        assert np.array_equal(np.sort(got), layout.resolve(name)), name
    assert "response" not in groups  # a multiple-choice input has none


def test_without_a_ground_truth_false_options_is_refused_like_true_option(model) -> None:
    """``false_options`` silently meant every option when the answer was unknown, so
    ``knockout("false_options->last")`` cut them all; ``groups`` listed it too."""
    frames = make_sample().frames
    unknown = model.probe(frames=frames, question="q?", options=["a", "b", "c"])
    for group in ("true_option", "false_options"):
        with pytest.raises(PlanError, match="this sample has no ground-truth option"):
            unknown.knockout(f"{group}->last", layers=[1])
        assert group not in unknown.groups
    assert "options" in unknown.groups and "option:C" in unknown.groups


def test_lens_reads_layer_minus_one_as_the_embeddings_and_positions_as_given(probe) -> None:
    lens = probe.lens(layers=[-1], positions=3, k=2)
    assert lens.positions.tolist() == [3] and len(lens.to_frame()) == 2
    want = probe.lens(layers=[-1], positions=[3], k=2)
    assert torch.equal(lens.ids, want.ids)


def test_layers_as_text_mean_what_the_same_ints_mean_negative_ones_too(probe) -> None:
    """``layers="-1"`` (the embeddings in a lens, as ``layers=-1`` is) was refused as text
    ("cannot read '-1'") while the int worked; ``"-1,0-1"`` is ``[-1, 0, 1]``. Elsewhere a
    negative layer is refused for the same reason in either form."""
    for text, ints in (("-1", -1), ("-1,0-1", [-1, 0, 1]), (" -1 , 2", [-1, 2])):
        assert torch.equal(probe.lens(layers=text, k=2).ids, probe.lens(layers=ints, k=2).ids)
    for form in ("-1", -1):
        with pytest.raises(PlanError, match=r"attention: layers \[-1\] must be a non-empty subset"):
            probe.attention(layers=form)
    with pytest.raises(PlanError, match=r"lens: layers '-2-1': cannot read '-2-1'"):
        probe.lens(layers="-2-1")  # a range stays 0-based


def test_bad_lens_attention_generate_and_read_arguments_are_clear_errors(probe) -> None:
    n, L = probe.layout.length, probe.num_layers
    with pytest.raises(PlanError, match="unknown projection 'unembedding'"):
        probe.lens(layers=[0], projection="unembedding")  # was read silently as "embed"
    for bad in ([n], [-1], [], [1.5]):
        with pytest.raises(PlanError, match="lens: positions"):
            probe.lens(layers=[0], positions=bad)
    for bad in ([L], [-2], []):
        with pytest.raises(PlanError, match="lens: layers"):
            probe.lens(layers=bad)
    for k in (0, -1, 10**9):
        with pytest.raises(PlanError, match="lens: k must be"):
            probe.lens(layers=[0], k=k)
    for bad in ([-1], [L], []):  # -1 read layer L-1's weights, labelled -1
        with pytest.raises(PlanError, match="attention: layers"):
            probe.attention(layers=bad)
    with pytest.raises(PlanError, match=r"attention: positions\['mine'\]"):
        probe.attention(layers=[0], queries=[], positions={"mine": [n]})
    with pytest.raises(PlanError, match="unknown token group 'nope'"):
        probe.attention(layers=[0], queries="nope")
    for bad in ([3], 3, ["last", None]):
        with pytest.raises(PlanError, match="attention: queries must be a token group name"):
            probe.attention(layers=[0], queries=bad)
    default = probe.attention(layers=[0], queries=None)[0]  # None: the default, the last token
    assert set(default) == {"last"}
    torch.testing.assert_close(default["last"], probe.attention(layers=[0])[0]["last"])
    for bad in (0, -1, 1.5):
        with pytest.raises(PlanError, match="max_new_tokens must be a whole number >= 1"):
            probe.generate(max_new_tokens=bad)
    logits = probe.engine.baseline_logits()
    with pytest.raises(PlanError, match="read: logits must be"):
        probe.read(logits[None])


def test_lens_at_the_last_layer_is_the_models_top_tokens(probe, logits) -> None:
    lens = probe.lens(layers=[probe.num_layers - 1], positions="video", k=3)
    video = probe.layout.resolve("video")
    assert tuple(lens.ids.shape) == (1, len(video), 3)
    assert torch.equal(lens.ids[0], logits[video].topk(3, dim=-1).indices)
    frame = lens.to_frame()
    assert len(frame) == len(video) * 3 and set(frame["rank"]) == {0, 1, 2}


def test_embed_lens_at_the_last_layer_reads_as_the_logit_lens_analysis_does(probe) -> None:
    """``projection="embed"`` applies the final norm at the last layer only (README); the
    probe's lens skipped it there, so its top-1 tokens differed from the analysis's records.
    The tiny model's norm weights are all ones (a scale, which never changes a top-1), so
    they are made uneven for the test."""
    from vlmflow.analyses.logit_lens import lens_logits

    L, lm = probe.num_layers, probe.engine.lm
    weight = lm.norm.weight
    kept = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.copy_(torch.linspace(0.1, 3.0, weight.numel()).roll(7))
        lens = probe.lens(layers=[L - 2, L - 1], positions="video", k=1, projection="embed")
        records = vlmflow.LogitLens(projection="embed", topk=1, sample_mode="all").records(probe)
        video = probe.layout.resolve("video")
        unnormed = lens_logits(lm, probe.resid[L - 1][video], "embed").argmax(-1).cpu()
    finally:
        with torch.no_grad():
            weight.copy_(kept)
    by_layer = {r["layer"]: r["top1"] for r in records}
    for i, layer in enumerate((L - 2, L - 1)):
        assert [t[0].strip() for t in lens.tokens[i]] == by_layer[layer], layer
    assert not torch.equal(lens.ids[1, :, 0], unnormed)  # the norm changes the answer here


def test_attention_rows_sum_to_one_and_a_cut_zeroes_its_edges(probe) -> None:
    plan = Plan("v", (Cut("video", "last", (1,)),))
    reads = probe.attention(layers=[0, 1], queries=["last", "question"], plan=plan)
    for layer in (0, 1):
        for w in reads[layer].values():
            assert float(w.sum()) == pytest.approx(1.0, abs=1e-5)
    video = probe.layout.resolve("video")
    assert float(reads[1]["last"][video].abs().max()) == 0.0 and float(reads[0]["last"][video].sum()) > 0


def test_generate_without_a_plan_is_plain_greedy_generation(probe) -> None:
    ours = probe.generate(max_new_tokens=4)
    with torch.inference_mode():
        plain = probe.adapter.model.generate(**probe.prepared.inputs, max_new_tokens=4, do_sample=False)
    assert list(ours.token_ids) == plain[0, probe.prepared.inputs["input_ids"].shape[1] :].tolist()
    cut = probe.generate("video->last", max_new_tokens=1)
    want = probe.knockout("video->last").probs
    assert (cut.first_probs - want).abs().max() < 1e-5


def test_attention_and_generate_refuse_a_plan_compiled_for_another_input(model, probe) -> None:
    """As ``knockout`` (the engine) does: a CompiledPlan holds its own input's positions."""
    other = model.probe(make_sample(seed=5, answer=0))  # same length, other true option
    assert other.layout.length == probe.layout.length and other.layout != probe.layout
    plan = Plan("true-to-last", (Cut("true_option", "last", (0, 1)),))
    foreign = other.engine.compile(plan)
    refused = r"plan 'true-to-last' was compiled for another input: .*answer"
    with pytest.raises(PlanError, match=refused):
        probe.knockout(foreign)
    with pytest.raises(PlanError, match=refused):
        probe.attention(layers=[1], plan=foreign)
    with pytest.raises(PlanError, match=refused):
        probe.generate(foreign, max_new_tokens=1)
    # its own compilation is accepted and reads as the Plan itself
    own = probe.engine.compile(plan)
    assert torch.equal(
        probe.attention(layers=[1], plan=own)[1]["last"], probe.attention(layers=[1], plan=plan)[1]["last"]
    )
    assert probe.generate(own, max_new_tokens=1).token_ids == probe.generate(plan, max_new_tokens=1).token_ids


def test_prompt_settings_belong_to_the_probe_not_the_model(model, tmp_path) -> None:
    rng = np.random.default_rng(1)
    clip = tmp_path / "clip.mp4"
    write_video(clip, rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), fps=4)
    question = {"question": "Which way does it move?", "options": ["left", "right", "up", "down"]}
    four = model.probe(video=str(clip), **question, answer="up", num_frames=4)
    two = model.probe(video=str(clip), **question, answer=2, num_frames=2, prompt="chat")
    assert four.layout.num_frames == 4 and two.layout.num_frames == 2
    assert four.sample.answer == two.sample.answer == 2
    assert "SYSTEM:" in two.prepared.prompt and "SYSTEM:" not in four.prepared.prompt
    assert model.adapter.num_frames == 8 and model.adapter.prompt_style == "paper"  # untouched


def test_bad_probe_arguments_are_clear_errors(model) -> None:
    frames = make_sample().frames
    with pytest.raises(PromptError, match="not one of the options"):
        model.probe(frames=frames, question="q?", options=["a", "b"], answer="c")
    with pytest.raises(PromptError, match="exactly one of video"):
        model.probe(question="q?", options=["a", "b"])
    for bad in (1.0, True, [1]):  # 1.0 used to be a raw TypeError; True silently meant option 1
        with pytest.raises(PromptError, match="answer must be an option index"):
            model.probe(frames=frames, question="q?", options=["a", "b"], answer=bad)
    numpy_answer = model.probe(frames=frames, question="q?", options=["a", "b"], answer=np.int64(1))
    assert numpy_answer.sample.answer == 1
    with pytest.raises(PromptError, match="prompt style"):
        model.probe(make_sample(), prompt="fancy")


def test_options_given_as_one_string_are_refused_not_split_into_letters(model) -> None:
    from vlmflow.sample import Sample

    frames = make_sample().frames
    for bad in ("left", b"left"):
        with pytest.raises(PromptError, match="options must be a list of option texts, got the string"):
            model.probe(frames=frames, question="q?", options=bad, answer=0)
        with pytest.raises(DataError, match="sample 'x': options must be a tuple of option texts"):
            Sample(id="x", question="q?", options=bad)


def test_a_sample_answer_that_is_not_an_option_index_is_refused_naming_the_sample() -> None:
    """``Sample(answer=-1)`` gave the letter 'Z' while ``true_option`` meant option D; True
    was option 1; 1.0 and 5 failed later as raw TypeError / IndexError."""
    from vlmflow.sample import Sample

    options = ("a", "b", "c", "d")
    for bad, what in (
        (-1, "answer index -1 outside the 4 options"),
        (4, "answer index 4 outside"),
        (True, "answer must be an option index"),
        (1.0, "answer must be an option index"),
        ("b", "answer must be an option index"),
    ):
        with pytest.raises(DataError, match=f"sample 'x': {what}"):
            Sample(id="x", question="q?", options=options, answer=bad)
    with pytest.raises(DataError, match="sample 'x': answer index 0 given, but the sample has no options"):
        Sample(id="x", question="q?", answer=0)
    numpy_answer = Sample(id="x", question="q?", options=options, answer=np.int64(3))
    assert numpy_answer.answer == 3 and type(numpy_answer.answer) is int
    assert numpy_answer.answer_letter == "D" and Sample(id="x", question="q?").answer is None


def test_an_unknown_frame_policy_is_refused_before_any_input_is_built(model) -> None:
    """``frame_policy="bogus"`` was accepted: a probe of a video, or every sample of a run
    (whose folder was then locked to it), failed later instead."""
    with pytest.raises(PromptError, match="unknown frame_policy 'bogus'; choose from segment_middle"):
        model.probe(make_sample(), frame_policy="bogus")
    with pytest.raises(PromptError, match="unknown frame_policy 'bogus'"):
        vlmflow.Options(model="demo", data="synthetic:1", frame_policy="bogus")
    assert model.probe(make_sample(), frame_policy="linspace").adapter.frame_policy == "linspace"


def test_knockout_of_an_empty_list_is_an_empty_list(probe) -> None:
    """It raised ``RuntimeError: stack expects a non-empty TensorList``."""
    assert probe.knockout([]) == []
    assert probe.knockout([], layers=[1]) == []
    assert tuple(probe.engine.evaluate([]).shape) == (0, probe.engine.logits.shape[-1])


def test_a_max_batch_tokens_below_one_is_refused_by_probe_as_by_options(model) -> None:
    """``Model.probe(max_batch_tokens=0)`` read as unset, -5 as one plan a pass, silently."""
    for bad in (0, -5, 1.5):
        with pytest.raises(PlanError, match="max_batch_tokens must be >= 1"):
            model.probe(make_sample(), max_batch_tokens=bad)
    assert model.probe(make_sample(), max_batch_tokens=1).engine.max_batch_tokens == 1


def test_a_question_that_is_not_text_and_id_or_task_beside_a_sample_are_refused(model) -> None:
    """``question=5`` was a raw TypeError; ``id=``/``task=`` beside a sample were ignored."""
    frames = make_sample().frames
    with pytest.raises(PromptError, match="question must be text"):
        model.probe(frames=frames, question=5, options=["a", "b"], answer=0)
    for extra in ({"id": "mine"}, {"task": "counting"}):
        with pytest.raises(PromptError, match="not both"):
            model.probe(make_sample(), **extra)


def test_answer_probability_on_a_probe_without_ground_truth_says_why(model) -> None:
    """It returned [] silently (``sample_mode="all"``) on a multiple-choice probe without an
    answer; it now says the true option is unknown, as the true_option group does."""
    unknown = model.probe(frames=make_sample().frames, question="q?", options=["a", "b"])
    with pytest.raises(PlanError, match="sample 'probe' has no ground-truth answer"):
        vlmflow.AnswerProbability(sample_mode="all").records(unknown)


@pytest.mark.parametrize(
    ("frames", "what"),
    [
        (np.zeros((0, 32, 32, 3), np.uint8), r"shape \(0, 32, 32, 3\)"),
        (np.zeros((2, 32, 32), np.uint8), r"shape \(2, 32, 32\)"),
        (np.zeros((2, 32, 32, 4), np.uint8), r"shape \(2, 32, 32, 4\)"),
        (np.zeros((2, 32, 32, 3), np.float32), r"dtype float32 \(float frames are ambiguous"),
        (np.zeros((2, 32, 32, 3), np.int64), "dtype int64"),
    ],
)
def test_frames_that_are_not_t_h_w_3_uint8_are_a_data_error_naming_the_sample(model, frames, what) -> None:
    """Empty, 3-D, RGBA or float frames gave an IndexError, a ValueError from the processor,
    or (floats) silently wrong pixels; every entry now refuses them with one DataError."""
    question = {"question": "q?", "options": ["a", "b"]}
    with pytest.raises(DataError, match=r"sample 'mine': frames must be a \(T, H, W, 3\) uint8.*" + what):
        model.probe(frames=frames, id="mine", **question)
    own = make_sample(sid="own").with_frames(frames)  # a sample carrying its own frames
    with pytest.raises(DataError, match="sample 'own'"):
        model.probe(own)
    with pytest.raises(DataError, match="sample 'own'"):
        model.adapter.prepare(own)  # what a run calls per sample


def test_a_model_loaded_with_flex_attention_is_switched_to_sdpa_once(tiny_llava_path, probe, caplog) -> None:
    """Runs switch mask-ignoring attention to sdpa for knockout; ``Model.probe`` did not, so
    ``load(path, attn="flex_attention")`` then ``probe.answer`` failed. Now the first probe
    switches (one warning) and its answers equal those of an sdpa-loaded model."""
    flex = vlmflow.load(str(tiny_llava_path), attn="flex_attention")
    assert flex.adapter.attn_implementation() == "flex_attention"
    with caplog.at_level("WARNING"):
        first = flex.probe(probe.sample)
        second = flex.probe(probe.sample, num_frames=4)
    assert caplog.text.count("switching the model to 'sdpa'") == 1
    assert flex.adapter.attn_implementation() == second.adapter.attn_implementation() == "sdpa"
    for letter, p in probe.answer.probabilities.items():
        assert abs(first.answer.probabilities[letter] - p) < TOL
    assert first.knockout("video->last").letter == probe.knockout("video->last").letter


# ---------------------------------------------------------------------------- attribution
def oracle_attribution(probe, sources, queries, layers) -> Attribution:
    """A pass of the library function on the probe's engine, outside the probe's cache."""
    token = probe.answer.pred_id
    return attribute(probe.engine, token_id=token, sources=sources, queries=queries, layers=layers)


def sweep_plans(probe, target: str, window: int) -> list[Plan]:
    curves = target_curves([target], probe.layout)
    return [p.plan for _, name, e in curves for p in sweep([(name, e)], probe.num_layers, window=window)]


def test_screen_rows_are_the_sweeps_where_verified_and_labelled_estimates_elsewhere(probe) -> None:
    df = probe.screen("vql-to-ql", k=2, control=1, window=1, exact_below=0.0)
    exact_sweep = probe.sweep("vql-to-ql", window=1)
    assert list(df.columns) == [*exact_sweep.columns, "method", "verified_as", "rel_pred_estimate"]
    assert len(df) == len(exact_sweep) == 4 * probe.num_layers
    exact, estimated = df[df["method"] == "exact"], df[df["method"] == "estimate"]
    assert len(exact) == 3 and sorted(exact["verified_as"]) == ["control", "top", "top"]
    assert estimated["verified_as"].isna().all() and df.attrs["screen"]["verified"] == 3
    # verified rows: the engine's values, as probe.sweep gives them
    both = exact.merge(exact_sweep, on=["condition", "layer"], suffixes=("", "_sweep"))
    assert len(both) == 3
    # the same plans, packed with others in another batch: equal to fp32 recompute tolerance
    for col, tol in (("p_pred_new", TOL), ("p_gt_new", TOL), ("rel_pred", 100 * TOL / probe.answer.p_pred)):
        assert np.allclose(both[col].astype(float), both[f"{col}_sweep"].astype(float), atol=tol, rtol=0)
    assert (both["pred_new"] == both["pred_new_sweep"]).all()
    # every row's estimate, and the estimated rows' values: the attribution pass, mapped to % change
    plans = sweep_plans(probe, "vql-to-ql", 1)
    src, dst = plan_groups(plans)
    att = oracle_attribution(probe, src, dst, list(range(probe.num_layers)))
    delta = att.delta_logprob(att.estimates(plans))
    assert [json.loads(p)["name"] for p in df["plan"]] == [p.name for p in plans]
    assert np.allclose(df["rel_pred_estimate"], relative_change(delta), rtol=1e-5, atol=1e-8)
    idx = estimated.index.to_numpy()
    assert np.allclose(estimated["rel_pred"], relative_change(delta[idx]), rtol=1e-5, atol=1e-8)
    assert np.allclose(estimated["p_pred_new"], probe.answer.p_pred * np.exp(delta[idx]), rtol=1e-6)
    assert estimated[["p_gt_new", "rel_gt", "pred_new", "correct_new"]].isna().all().all()
    assert (estimated["p_gt_base"] == probe.answer.p_gt).all()  # the baseline is no estimate


def test_screen_verifies_cheap_plus_k_plus_control_plans(probe) -> None:
    plans = sweep_plans(probe, "vql-to-ql", 1)
    cheap = sum(plan_cost(probe.engine, p) < 0.05 for p in plans)
    assert 0 < cheap < len(plans)  # cuts into the last token only
    df = probe.screen("vql-to-ql", k=2, control=3, window=1, exact_below=0.05)
    control = min(3, len(plans) - cheap - 2)  # the control sample is drawn from what is left
    assert control > 0
    assert df["verified_as"].value_counts().to_dict() == {"cheap": cheap, "top": 2, "control": control}
    assert (df["method"] == "exact").sum() == cheap + 2 + control
    assert (df["method"] == "exact").sum() == df.attrs["screen"]["verified"]
    everything = probe.screen("vql-to-ql", k=100, control=100, window=1)  # bounded by the plan count
    assert (everything["method"] == "exact").all()
    nothing = probe.screen("vql-to-ql", k=0, control=0, window=1, exact_below=0.0)
    assert (nothing["method"] == "estimate").all() and nothing["verified_as"].isna().all()
    assert nothing["correct_new"].isna().all() and nothing.attrs["screen"]["verified"] == 0


def test_head_map_is_the_single_head_plans_estimates(probe) -> None:
    heads = probe.engine.lm.num_heads
    heat = probe.head_map("video", "question", layers=[2, 1])
    assert heat.shape == (2, heads) and list(heat.index) == [1, 2]
    assert list(heat.columns) == list(range(heads))
    att = oracle_attribution(probe, ["video"], ["question"], [1, 2])
    plans = [
        Plan(f"h{layer}.{h}", (Cut("video", "question", (layer,), heads=(h,)),))
        for layer in (1, 2)
        for h in range(heads)
    ]
    want = relative_change(att.delta_logprob(att.estimates(plans))).reshape(2, heads)
    assert np.allclose(heat.to_numpy(), want, rtol=1e-5, atol=1e-8)
    assert np.abs(want).max() > 0  # the map is not trivially zero


def test_frame_pairs_are_the_single_layer_pair_plans_estimates_and_flow_screen_records_them(probe) -> None:
    from vlmflow.analyses.screened_flow import ScreenedFlow

    n = probe.layout.num_frames
    pairs = probe.frame_pairs(layers=[0, 2])
    assert (
        list(pairs.index) == [0, 2] and len(pairs.columns) == n * (n - 1) // 2 and "frame:0->frame:1" in pairs
    )
    att = oracle_attribution(
        probe, [f"frame:{a}" for a in range(n)], [f"frame:{b}" for b in range(n)], [0, 2]
    )
    for col in pairs.columns:
        a, b = (int(x.split(":")[1]) for x in col.split("->"))
        plans = [Plan("p", (Cut(f"frame:{a}", f"frame:{b}", (layer,)),)) for layer in (0, 2)]
        want = relative_change(att.delta_logprob(att.estimates(plans)))
        assert np.allclose(pairs[col].to_numpy(), want, rtol=1e-5, atol=1e-8), col
    assert np.abs(pairs.to_numpy()).max() > 0
    # the screened cross-frame sweep records every (layer, frame pair) from the same pass
    rows = ScreenedFlow(targets=("cross-frame",), window=1, k=1, control=0, sample_mode="all").records(probe)
    got = pd.DataFrame([r for r in rows if r["kind"] == "frame_pair"])
    assert len(got) == probe.num_layers * n * (n - 1) // 2 and (got["method"] == "estimate").all()
    both = got[got["layer"].isin([0, 2])].pivot(index="layer", columns="pair", values="rel_pred")
    assert np.allclose(both[pairs.columns].to_numpy(), pairs.to_numpy(), rtol=1e-5, atol=1e-8)


def test_one_cached_pass_serves_every_covered_request(model, monkeypatch) -> None:
    import vlmflow.attribution

    probe = model.probe(make_sample(seed=5))
    calls: list[dict] = []
    real = vlmflow.attribution.attribute

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(vlmflow.attribution, "attribute", counting)
    first = probe.head_map("video", "last", layers=[0, 1])
    # a fresh probe's baseline is the first pass's forward (memory-bounded); later passes rerun
    assert len(calls) == 1 and calls[0]["fused"] is True and calls[0]["max_graph_mb"] > 0
    assert probe.attribute("video", "last", layers=[1]).token_id == probe.answer.pred_id
    again = probe.head_map("video", "last", layers=[1])
    att = probe.attribute(["video"], "last", layers=[0])
    assert len(calls) == 1 and att is probe.attribute("video", "last", layers=[1])
    assert np.array_equal(again.to_numpy(), first.to_numpy()[1:])
    # uncovered groups: one new pass over the union, with the right values for both requests
    pair = probe.head_map("frame:1", "question", layers=[2])
    assert len(calls) == 2 and set(calls[1]["sources"]) == {"video", "frame:1"} and not calls[1]["fused"]
    assert calls[1]["token_id"] == probe.answer.pred_id
    want = oracle_attribution(probe, ["frame:1"], ["question"], [2])
    want = relative_change(want.delta_logprob(want.head_map("frame:1", "question")[[2]]))
    assert np.allclose(pair.to_numpy(), want, rtol=1e-5, atol=1e-8)
    assert np.allclose(probe.head_map("video", "last", layers=[0, 1]).to_numpy(), first.to_numpy(), rtol=1e-5)
    assert len(calls) == 2
    probe.attribute("video", "last", metric="logprob")  # another metric is another pass
    assert len(calls) == 3 and calls[2]["metric"] == "logprob"


def test_a_window_or_exact_below_that_is_not_a_number_of_the_right_kind_is_refused_up_front(probe) -> None:
    """``window=2.5`` and ``exact_below="x"`` used to escape as raw TypeErrors from deep in
    the sweep (and ``InformationFlow(window=2.5)`` was accepted, then failed every sample).
    They are refused before any pass, like ``k``."""
    from vlmflow.analyses.information_flow import InformationFlow
    from vlmflow.analyses.screened_flow import ScreenedFlow

    for bad in (2.5, "3", True):
        with pytest.raises(PlanError, match=r"window must be an integer >= 1, got"):
            probe.sweep("cross-frame", window=bad)
        with pytest.raises(PlanError, match=r"window must be an integer >= 1, got"):
            probe.screen("cross-frame", window=bad)
        with pytest.raises(PlanError, match=r"window must be an integer >= 1, got"):
            InformationFlow(window=bad)
    for bad in ("x", None, -1, float("nan"), True):
        with pytest.raises(PlanError, match=r"exact_below must be a number >= 0"):
            probe.screen("cross-frame", exact_below=bad)
        with pytest.raises(PlanError, match=r"exact_below must be a number >= 0"):
            ScreenedFlow(exact_below=bad)
    with pytest.raises(PlanError, match=r"screen size k must be an integer"):
        ScreenedFlow(k=1.5)
    assert len(probe.sweep("cross-frame", window=np.int64(1), layers=[1])) == 1


def test_bad_screen_and_attribution_arguments_are_clear_errors(probe) -> None:
    with pytest.raises(VlmflowError, match="unknown target 'nowhere'"):
        probe.screen("nowhere")
    with pytest.raises(PlanError, match="k and control must be >= 0, got k=-1"):
        probe.screen("vql-to-ql", k=-1)
    with pytest.raises(PlanError, match="unknown screen order 'up'"):
        probe.screen("vql-to-ql", order="up")
    with pytest.raises(PlanError, match="unknown token group 'nowhere'"):
        probe.head_map("nowhere", "last")
    with pytest.raises(PlanError, match="blocks nothing"):
        probe.head_map("last", "video")
    with pytest.raises(PlanError, match="0..3"):
        probe.head_map("video", "last", layers=[4])
    with pytest.raises(PlanError, match="unknown attribution metric"):
        probe.attribute("video", "last", metric="odds")


def test_a_frame_pair_column_is_the_cut_that_verifies_it(probe) -> None:
    pairs = probe.frame_pairs(layers=[1])
    col = pairs.columns[0]
    exact = probe.knockout(col, layers=[1])  # the column is a plan the engine runs as it stands
    plan = Plan(col, (Cut(*col.split("->"), (1,)),))
    want = full_forward_logits(probe.engine.lm, probe.prepared.inputs, probe.engine.compile(plan)).softmax(-1)
    assert abs(exact.p_gt - float(want[probe.answer.gt_id])) < TOL


def test_a_cut_the_engine_refuses_has_no_estimate_either(probe) -> None:
    """Blocking every key of the last position leaves it nothing to attend: the engine
    refuses that knockout, and the attribution must not return a number for it (it used to
    return the unrenormalised estimate)."""
    impossible = Plan("all->last", (Cut("all", "last", (1,)),))
    with pytest.raises(PlanError, match="no key"):
        probe.knockout(impossible)
    with pytest.raises(PlanError, match="no key"):
        probe.head_map("all", "last", layers=[1])
    att = probe.attribute(["all", "video"], "last", layers=[1, 2])
    with pytest.raises(PlanError, match="'all->last' leaves a query in layer 1 with no key"):
        att.estimates([impossible])
    one_head = Plan("h", (Cut("all", "last", (1,), heads=(0,)),))
    with pytest.raises(PlanError, match="no key"):
        att.estimates([one_head])
    with pytest.raises(PlanError, match="no key"):
        att.estimates([impossible], renormalise=False)
    heat = att.head_map("all", "last")
    assert np.isnan(heat[[1, 2]]).all()
    # a cut that keeps a key (the last position itself) is estimated as before
    fine = Plan("video->last", (Cut("video", "last", (1, 2)),))
    assert np.isfinite(att.estimates([fine])).all()
    assert np.isfinite(att.head_map("video", "last")[[1, 2]]).all()


def test_cuts_typed_as_objects_are_checked_like_text(probe) -> None:
    with pytest.raises(PlanError, match="carries its own layers"):
        probe.knockout(Cut("question", "last", (0,)), layers=range(1, 3))
    with pytest.raises(PlanError, match="carries its own layers"):
        probe.knockout(Plan("q", (Cut("question", "last", (0,)),)), layers=[1])
    with pytest.raises(PlanError, match="names no layers"):
        probe.knockout(Cut("video", "last", ()))
    with pytest.raises(PlanError, match="blocks nothing on this input"):
        probe.knockout(Cut("last", "video", (1,)))
    with pytest.raises(PlanError, match="not int"):
        probe.knockout(5)
    # the engine keeps its invariant: an empty plan is the baseline
    (empty_logits,) = probe.engine.evaluate([Plan("empty", ())])
    assert probe.read(empty_logits).probabilities == pytest.approx(probe.answer.probabilities, abs=TOL)


def test_a_plan_that_blocks_nothing_is_refused_like_its_cuts(probe) -> None:
    """A ``Plan`` with no cuts, or with a cut that names no layers or is causally empty,
    used to return the baseline silently from the front door, while the same cut given
    bare or as text was refused. Every route that takes a plan refuses it now."""
    bad = {
        "has no cuts": Plan("x", ()),
        "names no layers": Plan("x", (Cut("video", "last", ()),)),
        "blocks nothing on this input": Plan(
            "x", (Cut("question", "last", (1,)), Cut("last", "video", (1,)))
        ),
    }
    for why, plan in bad.items():
        with pytest.raises(PlanError, match=f"plan 'x'.*{why}"):
            probe.knockout(plan)
        with pytest.raises(PlanError, match=why):
            probe.knockout([plan])
        with pytest.raises(PlanError, match=why):
            probe.attention(layers=[1], queries="last", plan=plan)
        with pytest.raises(PlanError, match=why):
            probe.generate(plan=plan, max_new_tokens=1)
    good = Plan("x", (Cut("video", "last", (1,)),))
    assert probe.knockout(good).probabilities == probe.knockout(Cut("video", "last", (1,))).probabilities


def test_layers_and_heads_read_as_ints_ranges_or_text_and_nothing_else(probe) -> None:
    as_list = probe.head_map("video", "last", layers=[1, 2])
    for spelled in ("1-2", range(1, 3), np.array([2, 1]), torch.tensor([1, 2])):
        assert probe.head_map("video", "last", layers=spelled).equals(as_list), spelled
    assert probe.head_map("video", "last", layers=2).equals(as_list.loc[[2]])
    assert Cut("video", "last", 3, heads=1) == Cut("video", "last", (3,), heads=(1,))
    assert Cut("video", "last", "1-2,0").layers == (0, 1, 2)
    by_text = probe.knockout("video->last", layers="1-2").probabilities
    assert by_text == probe.knockout("video->last", layers=[1, 2]).probabilities
    for bad in (2.5, (1.7,), True, ["1"], None):
        with pytest.raises(PlanError, match="must be integers"):
            Cut("video", "last", bad)
    with pytest.raises(PlanError, match="heads must be integers"):
        Cut("video", "last", (1,), heads=(0.5,))
    with pytest.raises(PlanError, match="layers must be integers"):
        probe.head_map("video", "last", layers=[1.5])
    with pytest.raises(PlanError, match="layers '1-x': cannot read '1-x'"):
        probe.sweep("vql-to-ql", layers="1-x")
    with pytest.raises(PlanError, match="src must be one token group"):
        probe.head_map(["video"], "last")
    with pytest.raises(PlanError, match="screen size k must be an integer"):
        probe.screen("vql-to-ql", k="3")
    with pytest.raises(PlanError, match="screen size control must be an integer"):
        probe.screen("vql-to-ql", control=2.5)


def test_result_objects_print_as_one_short_line_of_counts(probe) -> None:
    """In a notebook ``Lens`` printed its tensors (22,887 characters on the tiny model),
    ``Screen`` every plan, ``Attribution`` the whole token layout, ``Prepared`` its inputs."""
    from vlmflow.screen import screen_then_verify

    L = probe.num_layers
    plans = [Plan(f"p{i}", (Cut("video", "last", (i,)),)) for i in range(L)]
    shown = {
        "Lens": (probe.lens(layers=[0, L - 1], positions="video", k=3), "Lens(layers=2, positions="),
        "Generated": (probe.generate(max_new_tokens=2), "Generated("),
        "Attribution": (probe.attribute("video", "last"), f"Attribution(layers={L} of {L}, heads="),
        "Screen": (screen_then_verify(probe.engine, plans, 2, control=1), f"Screen(plans={L}, distinct={L}"),
        "Prepared": (probe.prepared, f"Prepared({probe.sample.id!r}, tokens={probe.layout.length}"),
    }
    for name, (obj, start) in shown.items():
        said = repr(obj)
        assert said.startswith(start) and len(said) < 200 and "\n" not in said, (name, said)
    assert repr(shown["Lens"][0]).endswith(", k=3)")
    assert "verified=3 (top 2, control 1)" in repr(shown["Screen"][0])


def test_the_prompt_settings_given_at_load_reach_every_probe(tiny_llava_path, tmp_path) -> None:
    """``vlmflow.load(..., frame_policy=, prompt_style=)`` are the model's settings: a probe
    that names none uses them (it reset them to the defaults), and bad values are refused at
    load with the errors a probe or run gives."""
    from tests.data.benchfiles import video, which_frames
    from vlmflow.data import sample_indices

    path = video(tmp_path / "clip.mp4", 24, fps=8)
    question = {"question": "What?", "options": ["a", "b"], "answer": 0}
    model = vlmflow.load(str(tiny_llava_path), frame_policy="linspace")
    probe = model.probe(video=str(path), **question)
    assert probe.prepared.frame_policy == "linspace"
    assert which_frames(probe.prepared.frames, 24) == sample_indices(24, 8, "linspace")
    assert (
        model.probe(video=str(path), frame_policy="segment_middle", **question).prepared.frame_policy
        == "segment_middle"
    )
    chat = vlmflow.load(str(tiny_llava_path), prompt_style="chat")
    assert chat.probe(video=str(path), **question).adapter.prompt_style == "chat"
    assert chat.probe(video=str(path), prompt="paper", **question).adapter.prompt_style == "paper"
    for bad, said in (
        ({"frame_policy": "bogus"}, "unknown frame_policy 'bogus'"),
        ({"num_frames": 0}, "num_frames must be a whole number >= 1"),
        ({"num_frames": "8"}, "num_frames must be a whole number >= 1"),
        ({"prompt_style": "fancy"}, "unknown prompt style 'fancy'"),
    ):
        with pytest.raises(PromptError, match=said):
            vlmflow.load(str(tiny_llava_path), **bad)
