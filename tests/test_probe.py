"""The front door (``vlmflow.load`` -> ``Model.probe`` -> ``Probe``) on the tiny model: every
read and cut agrees with an independent route (the model's own forward, a plain masked
forward, transformers' ``generate``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlmflow
from tests.fixtures.tiny import make_sample
from vlmflow.analyses.targets import sweep, target_curves
from vlmflow.cuts import Cut, Plan, compile_plan
from vlmflow.data import write_video
from vlmflow.engine import full_forward_logits
from vlmflow.errors import PlanError, PromptError
from vlmflow.probe import Model

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


def test_lens_at_the_last_layer_is_the_models_top_tokens(probe, logits) -> None:
    lens = probe.lens(layers=[probe.num_layers - 1], positions="video", k=3)
    video = probe.layout.resolve("video")
    assert tuple(lens.ids.shape) == (1, len(video), 3)
    assert torch.equal(lens.ids[0], logits[video].topk(3, dim=-1).indices)
    frame = lens.to_frame()
    assert len(frame) == len(video) * 3 and set(frame["rank"]) == {0, 1, 2}


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
    with pytest.raises(PromptError, match="prompt style"):
        model.probe(make_sample(), prompt="fancy")
