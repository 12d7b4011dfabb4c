"""A cut a user types is never silently empty: one that blocks no attention edge (queries
before keys under causal attention, such as ``question->video``) is refused with one line
naming the cut and saying why, by the parser (before any sample, for every sample), by the
CLI before any sample, and by ``Probe.knockout`` on its own input. Checked against an
independent route: the compiled mask of the cut on layouts built here."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fixtures.tiny import make_sample
from tests.test_cuts import toy_layout
from vlmflow.analyses.targets import parse_edges
from vlmflow.cli import app
from vlmflow.cuts import Cut, Plan, compile_plan
from vlmflow.errors import PlanError
from vlmflow.layout import Span, TokenLayout
from vlmflow.probe import Model

GROUPS = (
    "system",
    "video",
    "frame:0",
    "frame:3",
    "frames:<2",
    "frames:1-2",
    "question",
    "question_no_options",
    "options",
    "option:A",
    "option:C",
    "true_option",
    "false_options",
    "template",
    "last",
    "all",
    "video+last",
)


def layouts() -> list[TokenLayout]:
    """The toy layout with each answer position, and a variant with template text between
    every group (position 0 outside the system span, a separator between options)."""
    base = toy_layout()
    out = [TokenLayout(**{**base.__dict__, "answer": a}) for a in range(len(base.options))]
    gappy = TokenLayout(
        length=30,
        system=Span(1, 3),
        video=Span(4, 12),
        frames=tuple(Span(4 + 2 * i, 6 + 2 * i) for i in range(4)),
        frame_grids=((1, 2),) * 4,
        question=Span(13, 26),
        question_no_options=Span(14, 16),
        options=(Span(17, 19), Span(20, 22), Span(23, 25)),
        answer=0,
    )
    out += [TokenLayout(**{**gappy.__dict__, "answer": a}) for a in range(3)]
    return out


def blocks_on(src: str, dst: str, layout: TokenLayout) -> bool:
    """The oracle: does the compiled cut remove any edge (a query left with no key counts)?"""
    try:
        return not compile_plan(Plan("p", (Cut(src, dst, (0,)),)), layout, 1).is_empty
    except PlanError as exc:
        return "no key to attend" in str(exc)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(GROUPS, GROUPS)))
def test_a_cut_is_refused_exactly_when_it_blocks_nothing_on_every_layout(src: str, dst: str) -> None:
    text = f"{src}->{dst}"
    blocks = any(blocks_on(src, dst, lay) for lay in layouts())
    try:
        Cut.parse(text, (0,))
    except PlanError as exc:
        message = str(exc)
        assert not blocks, f"{text} blocks edges on some input but was refused: {message}"
        assert "\n" not in message and repr(text) in message and "blocks nothing" in message
        return
    assert blocks, f"{text} blocks nothing on any input but was accepted"


def test_the_reported_cut_is_a_one_line_error_naming_it() -> None:
    with pytest.raises(PlanError, match=r"cut 'question->video' blocks nothing .*causal") as info:
        parse_edges("video->last,question->video")
    assert "\n" not in str(info.value) and "did you mean video->question" in str(info.value)


def test_the_cli_refuses_an_empty_cut_before_any_sample(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "flow",
            "--model",
            "tiny",
            "--data",
            "synthetic:1",
            "--cut",
            "question->video",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "cut 'question->video' blocks nothing" in " ".join(result.output.split()), result.output
    assert not (out / "records").exists()  # stopped before any sample


def test_probe_knockout_refuses_a_cut_that_blocks_nothing_on_its_input(tiny_llava) -> None:
    probe = Model(tiny_llava).probe(make_sample(seed=5, answer=3))  # the true option is the last one
    with pytest.raises(PlanError, match="cut 'last->question' blocks nothing on any input"):
        probe.knockout("last->question")
    # blocks something on a sample whose answer is not last, but nothing on this one
    with pytest.raises(PlanError, match="cut 'true_option->false_options' blocks nothing on this input"):
        probe.knockout("video->last,true_option->false_options")
    with pytest.raises(PlanError, match="no layers"):
        probe.knockout("video->last", layers=[])
    assert 0 <= probe.knockout("video->last").p_pred <= 1  # a real cut still runs


def test_compare_and_custom_curves_refuse_an_empty_cut_when_the_analysis_is_built() -> None:
    from vlmflow.analyses.attention_maps import AttentionMaps
    from vlmflow.analyses.information_flow import InformationFlow

    with pytest.raises(PlanError, match="cut 'question->video' blocks nothing"):
        AttentionMaps(compare="question->video")
    with pytest.raises(PlanError, match="cut 'last->frame:0' blocks nothing"):
        InformationFlow(targets=(), custom=("video->last,last->frame:0",))
    AttentionMaps(compare="video->question")  # a cut that blocks edges is accepted


def test_a_one_option_question_fails_its_flow_unit_with_a_clear_line_and_the_run_goes_on(
    tiny_llava, tmp_path: Path
) -> None:
    """``question-and-options-to-last`` compares the true option's flow to the last token
    with the false options'; a question with one option has none, so its flow unit failed
    with "token group 'false_options' is empty for this input". Now that sample's unit fails
    saying it needs at least 2 options, the other samples are analysed, and targets that do
    not compare options still run for it."""
    import dataclasses

    from vlmflow.analyses.information_flow import InformationFlow
    from vlmflow.run import run_samples
    from vlmflow.rundir import RunDir

    one = dataclasses.replace(make_sample(sid="one"), options=("Ate the medicine.",), answer=0)
    two = make_sample(sid="two", answer=1)
    flow = [InformationFlow(window=3, layers=(1,), sample_mode="all")]
    summary = run_samples(tiny_llava, [one, two], flow, tmp_path / "run", progress=False)
    assert list(summary.failed) == ["one"] and summary.done == 1
    said = summary.failed["one"]
    assert "question-and-options-to-last needs at least 2 options" in said and "has 1" in said, said
    records = RunDir(tmp_path / "run").records()
    assert set(records.loc[records["analysis"] == "flow", "sample_id"]) == {"one", "two"}
    assert records.query("analysis == 'flow' and sample_id == 'two'")["error"].isna().all()
    other = InformationFlow(targets=("vql-to-ql", "vq-to-true-opt"), window=3, layers=(1,), sample_mode="all")
    assert run_samples(tiny_llava, [one], [other], tmp_path / "other", progress=False).done == 1
