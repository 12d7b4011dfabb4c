"""Every string a user types gives a valid plan or a one-line error naming the bad part
(property-based, bounded examples): the token-group grammar, ``--cut``, ``--layers``,
``--window``, ``--task``, ``--samples`` and ``--spec`` pathway files. Never a traceback,
never a silently empty plan."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vlmflow.analyses.information_flow import InformationFlow
from vlmflow.analyses.pathways import BLOCK_EDGES, KEEP_EDGES, PathwaySpec, load_spec
from vlmflow.analyses.targets import parse_edges
from vlmflow.cli import app
from vlmflow.cuts import MAX_LAYERS, WINDOW_STYLES, Cut, Plan, compile_plan, parse_layers, window_layers
from vlmflow.data import load_dataset
from vlmflow.errors import DataError, PlanError
from vlmflow.layout import Span, TokenLayout, check_group

FAST = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
NAMES = [
    "system",
    "video",
    "question",
    "question_no_options",
    "non_option_question",
    "options",
    "true_option",
    "false_options",
    "last",
    "template",
    "all",
]
small = st.integers(0, 12)
atoms = st.one_of(
    st.sampled_from(NAMES),
    small.map(lambda t: f"frame:{t}"),
    st.tuples(small, small).map(lambda ab: f"frames:{ab[0]}-{ab[1]}"),
    small.map(lambda t: f"frames:<{t}"),
    st.sampled_from(list("ABCDEFZabz") + ["0", "3", "9", "é", ""]).map(lambda x: f"option:{x}"),
    st.text(alphabet="framesoptin:<-+0123456789 ٣", max_size=14),
    st.text(max_size=10),
)
groups = st.lists(atoms, min_size=1, max_size=3).map(lambda xs: "+".join(xs)) | st.text(max_size=30)


@st.composite
def layouts(draw) -> TokenLayout:
    """A well-formed layout: system, frames, question with options, a template gap, last."""
    n_frames, per_frame = draw(st.integers(1, 8)), draw(st.integers(1, 3))
    n_opts = draw(st.integers(2, 5))
    pos = 3
    frames = tuple(Span(pos + i * per_frame, pos + (i + 1) * per_frame) for i in range(n_frames))
    video = Span(pos, frames[-1].end)
    q0 = video.end + 1
    qno = Span(q0, q0 + 3)
    options, p = [], qno.end
    for _ in range(n_opts):
        options.append(Span(p, p + 2))
        p += 2
    length = p + 3
    answer = draw(st.none() | st.integers(0, n_opts - 1))
    return TokenLayout(
        length=length,
        system=Span(0, 3),
        video=video,
        frames=frames,
        frame_grids=((1, per_frame),) * n_frames,
        question=Span(q0, p),
        question_no_options=qno,
        options=tuple(options),
        answer=answer,
    )


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@FAST
@given(layouts(), groups)
def test_a_group_resolves_to_positions_or_a_one_line_error(layout: TokenLayout, group: str) -> None:
    try:
        syntax_ok = check_group(group) is not None
    except PlanError as exc:
        message = one_line(exc)
        bad = [p.strip() for p in group.split("+")]
        assert any(repr(p) in message for p in bad), message  # it names the bad part
        syntax_ok = False
    try:
        pos = layout.resolve(group)
    except PlanError as exc:
        one_line(exc)
        return
    assert syntax_ok, f"{group!r} resolved but the grammar check refuses it"
    assert pos.size > 0 and np.all(np.diff(pos) > 0)  # never silently empty; sorted, unique
    assert 0 <= pos[0] and pos[-1] < layout.length


@FAST
@given(layouts(), small, small)
def test_empty_frame_groups_are_errors(layout: TokenLayout, a: int, b: int) -> None:
    n = layout.num_frames
    for group in (f"frames:{a}-{b}", f"frame:{a}", f"frames:<{a}"):
        empty = {
            f"frames:{a}-{b}": a > b or b >= n,
            f"frame:{a}": a >= n,
            f"frames:<{a}": a == 0 or a > n,
        }[group]
        if empty:
            with pytest.raises(PlanError) as info:
                layout.resolve(group)
            assert "empty" in str(info.value) or "does not exist" in str(info.value)
        else:
            assert layout.resolve(group).size > 0
    if a > b:
        with pytest.raises(PlanError, match=r"is empty: \d+ > \d+"):
            check_group(f"frames:{a}-{b}")


cuts = st.one_of(
    st.lists(st.tuples(groups, groups), min_size=1, max_size=3).map(
        lambda es: ",".join(f"{s}->{d}" for s, d in es)
    ),
    st.text(alphabet="videolast->,+:0123 ", max_size=30),
    st.text(max_size=30),
)


@FAST
@given(layouts(), cuts)
def test_a_cut_parses_into_a_plan_or_a_one_line_error(layout: TokenLayout, text: str) -> None:
    try:
        edges = parse_edges(text)
    except PlanError as exc:
        one_line(exc)
        with pytest.raises(PlanError):  # and the analysis refuses it before any sample
            InformationFlow(targets=(), custom=(text,))
        return
    assert edges and all(check_group(s) == s and check_group(d) == d for s, d in edges)
    InformationFlow(targets=(), custom=(text,))  # accepted up front
    try:
        compiled = compile_plan(Plan("p", tuple(Cut(s, d, (0,)) for s, d in edges)), layout, 2)
    except PlanError as exc:  # a group this input lacks, or a query left with no key
        one_line(exc)
        return
    assert compiled.plan.cuts


def layer_specs() -> st.SearchStrategy[str]:
    part = st.one_of(
        st.integers(0, 40).map(str),
        st.tuples(st.integers(0, 40), st.integers(0, 40)).map(lambda ab: f"{ab[0]}-{ab[1]}"),
        st.integers(-3, 10**12).map(str),
        st.text(alphabet=" -,0123456789x٣", max_size=6),
    )
    return st.lists(part, min_size=1, max_size=4).map(",".join) | st.text(max_size=15)


def oracle_layers(text: str) -> set[int] | None:
    """An independent reading of a well-formed layer list (None if not well formed)."""
    out: set[int] = set()
    for part in text.split(","):
        bits = [b.strip() for b in part.split("-")]
        if not 1 <= len(bits) <= 2 or not all(b and set(b) <= set(string.digits) for b in bits):
            return None
        a, b = int(bits[0]), int(bits[-1])
        if a > b or b >= MAX_LAYERS:
            return None
        out |= set(range(a, b + 1))
    return out


@FAST
@given(layer_specs())
def test_layers_parse_to_a_sorted_nonempty_list_or_a_one_line_error(text: str) -> None:
    try:
        layers = parse_layers(text)
    except PlanError as exc:
        one_line(exc)
        assert oracle_layers(text) is None
        return
    if not text.strip():
        assert layers is None
        return
    assert layers and list(layers) == sorted(set(layers)) and set(layers) == oracle_layers(text)


@FAST
@given(
    st.integers(-2, 40), st.integers(-1, 40), st.integers(-3, 50), st.sampled_from([*WINDOW_STYLES, "side"])
)
def test_windows_are_nonempty_or_a_one_line_error(layer: int, n: int, window: int, style: str) -> None:
    try:
        blocked = window_layers(layer, n, window, style)
    except PlanError as exc:
        one_line(exc)
        return
    assert blocked and all(0 <= x < n for x in blocked) and list(blocked) == sorted(set(blocked))
    assert (layer in blocked) == (style != "inverse")


@FAST
@given(
    st.lists(
        st.text(max_size=8)
        | st.integers(-2, 9).map(str)
        | st.sampled_from(["²", "٣", " 1 ", "order", "Count"]),
        min_size=1,
        max_size=3,
    ),
    st.integers(-3, 5),
)
def test_task_and_samples_give_a_selection_or_a_one_line_error(tmp_path_factory, tasks, n) -> None:
    path = tmp_path_factory.getbasetemp() / "qa.jsonl"
    if not path.exists():
        lines = [
            {
                "id": f"q{i}",
                "video": "v.mp4",
                "question": "?",
                "options": ["a", "b"],
                "answer": i % 2,
                "task": t,
            }
            for i, t in enumerate(["count", "count", "order", "order", "order", "scene"])
        ]
        path.write_text("\n".join(json.dumps(x) for x in lines))
    try:
        samples = load_dataset(f"jsonl:{path}", tasks=tasks, samples=n)
    except DataError as exc:
        one_line(exc)
        return
    assert samples and n > 0
    by_task: dict[str, int] = {}
    for s in samples:
        by_task[s.task] = by_task.get(s.task, 0) + 1
    assert all(c <= n for c in by_task.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.text(max_size=6) | st.sampled_from(["all"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
spec_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=5),
        "num_layers": st.integers(-1, 40) | json_values,
        "keep": st.dictionaries(
            st.sampled_from([*KEEP_EDGES, "video_to_video", "x"]), json_values, max_size=3
        ),
        "block": st.dictionaries(st.sampled_from([*BLOCK_EDGES, "cross_frame"]), json_values, max_size=3),
        "extra": json_values,
    },
)


@FAST
@given(spec_like | json_values, st.sampled_from([".json", ".yaml"]), st.booleans())
def test_spec_files_give_a_pathway_or_a_one_line_error(tmp_path_factory, data, suffix, garble) -> None:
    import yaml

    path = tmp_path_factory.getbasetemp() / f"spec{suffix}"
    text = json.dumps(data) if suffix == ".json" else yaml.safe_dump(data)
    path.write_text(text[: len(text) // 2] if garble else text)
    try:
        spec = load_spec(str(path))
    except PlanError as exc:
        assert str(path) in one_line(exc)
        return
    assert isinstance(spec, PathwaySpec) and (spec.keep or spec.block)
    assert PathwaySpec.from_dict(spec.to_dict()) == spec


def test_a_bad_cut_or_layer_list_stops_the_cli_before_any_sample(tmp_path: Path) -> None:
    for bad, says in (
        (["--cut", "vidoe->last"], "unknown token group 'vidoe'"),
        (["--cut", "frames:5-2->last"], "'frames:5-2' is empty: 5 > 2"),
        (["--cut", "video->last->question"], "one arrow"),
        (["--layers", "7-3"], "is empty (7 > 3)"),
    ):
        out = tmp_path / bad[1].replace("/", "_")
        result = CliRunner().invoke(
            app, ["flow", "--model", "tiny", "--data", "synthetic:1", *bad, "--out", str(out), "--quiet"]
        )
        assert result.exit_code == 2, result.output
        assert says in " ".join(result.output.split()), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert not (out / "records").exists()  # stopped before any sample
