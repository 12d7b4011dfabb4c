"""Cuts, plans, layer windows, mask compilation and edge counting."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from vlmflow.cuts import Cut, Plan, compile_plan, window_layers
from vlmflow.errors import PlanError
from vlmflow.layout import Span, TokenLayout


def toy_layout() -> TokenLayout:
    return TokenLayout(
        length=40,
        system=Span(0, 4),
        video=Span(5, 21),
        frames=tuple(Span(5 + 4 * i, 9 + 4 * i) for i in range(4)),
        frame_grids=((2, 2),) * 4,
        question=Span(22, 34),
        question_no_options=Span(23, 26),
        options=(Span(27, 29), Span(29, 31), Span(31, 34)),
        answer=1,
    )


def test_center_window_matches_the_paper() -> None:
    # window 9 at layer l blocks [max(0, l-4), min(L, l+5))
    assert window_layers(0, 32, 9) == tuple(range(0, 5))
    assert window_layers(10, 32, 9) == tuple(range(6, 15))
    assert window_layers(31, 32, 9) == tuple(range(27, 32))


@pytest.mark.parametrize("layer", range(12))
def test_window_styles_partition_as_documented(layer: int) -> None:
    center = set(window_layers(layer, 12, 5, "center"))
    inverse = set(window_layers(layer, 12, 5, "inverse"))
    assert center | inverse == set(range(12)) and not center & inverse
    assert window_layers(layer, 12, 5, "top_down") == tuple(range(layer, 12))
    assert window_layers(layer, 12, 5, "bottom_up") == tuple(range(0, layer + 1))


def test_unknown_window_style_is_an_error() -> None:
    with pytest.raises(PlanError, match="window style"):
        window_layers(1, 4, 3, "sideways")


def brute_force_edges(plan: Plan, layout: TokenLayout, num_layers: int) -> int:
    """Count blocked causal (q, k) pairs per layer with plain Python sets."""
    total = 0
    for layer in range(num_layers):
        pairs = set()
        for cut in plan.cuts:
            if layer in cut.layers:
                for q, k in itertools.product(layout.resolve(cut.dst), layout.resolve(cut.src)):
                    if k <= q:
                        pairs.add((int(q), int(k)))
        total += len(pairs)
    return total


@pytest.mark.parametrize("seed", range(6))
def test_edge_counting_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    layout = toy_layout()
    groups = [
        "system",
        "video",
        "frame:1",
        "frames:<3",
        "question",
        "question_no_options",
        "true_option",
        "false_options",
        "last",
        "template",
        "frames:0-1",
    ]
    cuts = []
    for _ in range(rng.integers(1, 5)):
        src, dst = rng.choice(groups, 2)
        cuts.append(
            Cut(str(src), str(dst), tuple(int(x) for x in rng.choice(6, rng.integers(1, 6), replace=False)))
        )
    plan = Plan("random", tuple(cuts))
    try:
        compiled = compile_plan(plan, layout, 6)
    except PlanError as exc:
        assert "no key to attend" in str(exc)
        return
    assert compiled.suppressed_edges() == brute_force_edges(plan, layout, 6)
    assert compiled.total_edges() == 6 * 40 * 41 // 2
    assert compiled.suppressed_fraction() == compiled.suppressed_edges() / compiled.total_edges()


def test_overlapping_cuts_count_each_edge_once() -> None:
    layout = toy_layout()
    plan = Plan("overlap", (Cut("video", "last", (0, 1)), Cut("frame:0", "last", (1,))))
    assert compile_plan(plan, layout, 2).suppressed_edges() == 16 * 2


def test_first_query_and_first_layer() -> None:
    layout = toy_layout()
    compiled = compile_plan(Plan("p", (Cut("video", "question", (3, 4)),)), layout, 6)
    assert compiled.first_query == 22 and compiled.first_layer == 3
    empty = compile_plan(Plan("empty"), layout, 6)
    assert empty.is_empty and empty.suppressed_edges() == 0


def test_anticausal_cut_blocks_nothing() -> None:
    # the question cannot see the last token anyway: the cut is empty
    compiled = compile_plan(Plan("p", (Cut("last", "question", (0,)),)), toy_layout(), 2)
    assert compiled.is_empty


def test_cut_that_leaves_a_query_nothing_is_refused() -> None:
    with pytest.raises(PlanError, match="no key to attend"):
        compile_plan(Plan("p", (Cut("all", "last", (0,)),)), toy_layout(), 2)


def test_wrong_argument_types_are_one_line_plan_errors() -> None:
    """``Cut(3, "last", (1,))`` raised AttributeError deep in the layout and
    ``Plan("x", Cut(...))`` a TypeError in the probe; each is now a PlanError naming the
    problem. One Cut stands for a tuple of one, and a list of cuts becomes a tuple."""
    from vlmflow.cuts import RandomCut

    with pytest.raises(PlanError, match=r"cut 3->'last': src must be a group name \(text\), not int 3"):
        Cut(3, "last", (1,))
    with pytest.raises(PlanError, match=r"dst must be a group name \(text\), not NoneType None"):
        Cut("video", None, (1,))
    cut = Cut("video", "last", (1,))
    assert Plan("x", cut) == Plan("x", (cut,)) == Plan("x", [cut])
    assert isinstance(Plan("x", [cut]).cuts, tuple) and hash(Plan("x", [cut])) == hash(Plan("x", (cut,)))
    assert Plan("r", RandomCut(0.1, 0, (1,))).cuts == (RandomCut(0.1, 0, (1,)),)
    with pytest.raises(PlanError, match=r"plan 'x': each cut must be a Cut or a RandomCut, not str 'video->"):
        Plan("x", ("video->last",))
    with pytest.raises(PlanError, match=r"plan 'x': cuts must be a Cut or a tuple of Cuts, not str"):
        Plan("x", "video->last")
    with pytest.raises(PlanError, match=r"plan 'x': cuts must be a Cut or a tuple of Cuts, not int 3"):
        Plan("x", 3)
    with pytest.raises(PlanError, match=r"a plan's name must be text, not int 3"):
        Plan(3, (cut,))


def test_plans_round_trip_through_json() -> None:
    plan = Plan("x", (Cut("video", "last", (3, 1, 2)), Cut("frames:<2", "frame:2", (0,))))
    assert Plan.from_dict(__import__("json").loads(plan.to_json())) == plan
    assert plan.cuts[0].layers == (1, 2, 3)


def test_cut_parse() -> None:
    assert Cut.parse("video -> last", (1,)) == Cut("video", "last", (1,))
    with pytest.raises(PlanError):
        Cut.parse("video last", (1,))


def test_groups_resolve_and_empty_groups_are_errors() -> None:
    layout = toy_layout()
    assert layout.resolve("frames:<2").tolist() == list(range(5, 13))
    assert layout.resolve("option:B").tolist() == [29, 30]
    assert layout.resolve("false_options").tolist() == [27, 28, 31, 32, 33]
    assert set(layout.resolve("template")) == {4, 21, 34, 35, 36, 37, 38}
    with pytest.raises(PlanError, match="frame 9"):
        layout.resolve("frame:9")
    no_false = TokenLayout(**{**layout.__dict__, "options": (Span(27, 29),), "answer": 0})
    with pytest.raises(PlanError, match="empty"):
        no_false.resolve("false_options")


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"layers": (1.5, 2.9)}, "random cut: layers must be integers"),
        ({"layers": (True,)}, "random cut: layers must be integers"),
        ({"seed": "a"}, "random cut: seed must be an integer, not str 'a'"),
        ({"seed": 1.0}, "random cut: seed must be an integer"),
        ({"start": 3}, "random cut: start must be a group name (text), not int 3"),
        ({"start": "vidoe"}, "random cut: start: "),
        ({"fraction": "0.1"}, "random cut: fraction must be a number in [0, 1], not str"),
        ({"fraction": True}, "random cut: fraction must be a number"),
        ({"fraction": 1.5}, "random cut fraction must be in [0, 1], got 1.5"),
    ],
)
def test_random_cut_arguments_are_checked_as_a_cuts(kwargs: dict, said: str) -> None:
    """Layers (1.5, 2.9) were read as (1, 2) and (True,) as layer 1; a bad seed or start
    failed later with a raw ValueError or AttributeError. Each is one line naming it."""
    from vlmflow.cuts import RandomCut

    args = {"fraction": 0.1, "seed": 0, "layers": (1,), **kwargs}
    with pytest.raises(PlanError, match=re.escape(said)) as refused:
        RandomCut(**args)
    assert "\n" not in str(refused.value)


def test_random_cut_layers_read_as_a_cuts() -> None:
    """An int, text like the CLI's, numpy integers: as ``Cut`` reads them."""
    from vlmflow.cuts import RandomCut

    assert RandomCut(0.1, 0, 5).layers == (5,)
    assert RandomCut(0.1, 0, "3-5").layers == (3, 4, 5) == Cut("video", "last", "3-5").layers
    assert RandomCut(0.1, np.int64(2), np.arange(2)).layers == (0, 1)
