"""The paper's knockout targets, and layer sweeps that turn them into plans.

A *target* is a set of curves; a *curve* (a condition) is a list of ``src -> dst`` edges
blocked together. A sweep makes one ``Plan`` per curve and layer, blocking the curve's
edges in that layer's window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..cuts import Cut, Plan, window_layers
from ..errors import PlanError
from ..layout import TokenLayout
from ..registry import Registry

Edges = tuple[tuple[str, str], ...]
TARGETS: Registry[Callable[[TokenLayout], list[tuple[str, Edges]]]] = Registry("target")


@TARGETS.register("cross-frame", "every frame cannot attend to any earlier frame")
def _cross_frame(layout: TokenLayout) -> list[tuple[str, Edges]]:
    if layout.num_frames < 2:
        raise PlanError("cross-frame needs at least 2 frame groups")
    edges = tuple((f"frames:<{t}", f"frame:{t}") for t in range(1, layout.num_frames))
    return [("cross-frame", edges)]


@TARGETS.register("vql-to-ql", "video -> question, video -> last, question -> last, last -> last")
def _vql_to_ql(layout: TokenLayout) -> list[tuple[str, Edges]]:
    pairs = [("video", "question"), ("video", "last"), ("question", "last"), ("last", "last")]
    return [(f"{s}->{d}", ((s, d),)) for s, d in pairs]


@TARGETS.register(
    "question-and-options-to-last",
    "non-option question -> last, true option -> last, false options -> last",
)
def _qo_to_last(layout: TokenLayout) -> list[tuple[str, Edges]]:
    # the target compares the true option's flow to the last token with the false options':
    # a question with one option has no false options, so its curves mean nothing for it
    if len(layout.options) < 2:
        raise PlanError(
            "question-and-options-to-last needs at least 2 options (it compares the true option "
            f"with the false options); this question has {len(layout.options)}"
        )
    pairs = [("question_no_options", "last"), ("true_option", "last"), ("false_options", "last")]
    return [(f"{s}->{d}", ((s, d),)) for s, d in pairs]


@TARGETS.register(
    "vq-to-true-opt",
    "video -> non-option question, non-option question -> true option, video -> true option",
)
def _vq_to_true_opt(layout: TokenLayout) -> list[tuple[str, Edges]]:
    pairs = [
        ("video", "question_no_options"),
        ("question_no_options", "true_option"),
        ("video", "true_option"),
    ]
    return [(f"{s}->{d}", ((s, d),)) for s, d in pairs]


@TARGETS.register(
    "vqrl-to-qrl",
    "open-ended, verb-anchored: video -> question, video -> non-last response, video -> last, "
    "question -> last, non-last response -> last",
)
def _vqrl_to_qrl(layout: TokenLayout) -> list[tuple[str, Edges]]:
    pairs = [
        ("video", "question"),
        ("video", "non_last_response"),
        ("video", "last"),
        ("question", "last"),
        ("non_last_response", "last"),
    ]
    return [(f"{s}->{d}", ((s, d),)) for s, d in pairs]


PAPER_TARGETS = ("cross-frame", "vql-to-ql", "question-and-options-to-last", "vq-to-true-opt")
OPEN_ENDED_TARGETS = ("vqrl-to-qrl",)
"""Targets that cut a generated response: ``open-ended``'s, not ``flow``'s (a multiple-choice
input has no response)."""


def check_targets(targets: Sequence[str], *, response: bool = False) -> None:
    """Refuse unknown targets, and (without a ``response``) those of ``open-ended``."""
    flow = ", ".join(t for t in TARGETS if t not in OPEN_ENDED_TARGETS)
    for t in targets:
        if t in OPEN_ENDED_TARGETS and not response:
            raise PlanError(
                f"target {t!r} belongs to `open-ended` (it cuts the generated response, which a "
                f"multiple-choice input has not); flow's targets: {flow}"
            )
        if t not in TARGETS:
            known = ", ".join(TARGETS) if response else flow
            raise PlanError(f"unknown target {t!r}; choose from {known}")


def parse_edges(text: str) -> Edges:
    """``"video->question,video->last"`` -> ``(("video", "question"), ("video", "last"))``."""
    edges = []
    for part in text.split(","):
        cut = Cut.parse(part, ())
        edges.append((cut.src, cut.dst))
    return tuple(edges)


@dataclass(frozen=True)
class SweepPoint:
    """One plan of a sweep: which curve, at which layer (0-based), blocking which layers."""

    condition: str
    layer: int
    plan: Plan


def sweep(
    curves: Sequence[tuple[str, Edges]],
    num_layers: int,
    *,
    window: int = 9,
    style: str = "center",
    layers: Sequence[int] | None = None,
) -> list[SweepPoint]:
    """One plan per curve and sweep layer (``layers`` defaults to every layer)."""
    points = []
    for name, edges in curves:
        for layer in layers if layers is not None else range(num_layers):
            blocked = window_layers(layer, num_layers, window, style)
            cuts = tuple(Cut(s, d, blocked) for s, d in edges)
            points.append(SweepPoint(name, layer, Plan(f"{name}@{layer}", cuts)))
    return points


def target_curves(
    targets: Sequence[str], layout: TokenLayout, custom: Sequence[str] = ()
) -> list[tuple[str, str, Edges]]:
    """``(target, condition, edges)`` for named targets plus custom ``SRC->DST[,..]`` cuts."""
    out = [(t, name, edges) for t in targets for name, edges in TARGETS.get(t)(layout)]
    out += [("custom", c, parse_edges(c)) for c in custom]
    return out
