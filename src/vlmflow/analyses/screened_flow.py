"""Knockout sweeps screened by attribution (``vlmflow flow --screen K``).

Every plan of the sweep is *estimated* from one attribution pass (``vlmflow.attribution``);
the top ``K`` by estimated drop, a random control sample of the rest and, optionally, every
plan the engine evaluates almost for free are then evaluated *exactly* by the engine
(``vlmflow.screen``). Records say which they are (``method``: ``estimate`` | ``exact``);
an estimate is never reported as a result of a knockout. Per sample there are also the
attribution heat maps (layer x head) of every group pair the curves cut, and a summary
record with the rank agreement between estimate and exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..attribution import frame_pair_groups, plan_groups, relative_change
from ..screen import Screen, ScreenedPlan, check_screen, verify_top
from .base import ANALYSES
from .information_flow import InformationFlow, flow_row, sweep_curves
from .targets import Edges, SweepPoint

if TYPE_CHECKING:
    from ..probe import Probe
    from ..report import Section
    from ..rundir import RunDir


@ANALYSES.register("flow-screen", "knockout sweeps estimated by attribution, the top K verified exactly")
@dataclass
class ScreenedFlow(InformationFlow):
    """``InformationFlow``'s plans, screened: estimate all, verify ``k`` (+ ``control``).

    ``k``: the top plans verified exactly (``--screen K``); ``control``: plans verified at
    random besides them (``--screen-control``); ``ranking``: ``drop`` (largest estimated drop
    first) or ``magnitude`` (largest estimated change of either sign; ``--screen-order``);
    ``exact_below``: plans the engine evaluates for less than this fraction of a forward
    are verified up front (``--screen-exact-below``)."""

    name: ClassVar[str] = "flow-screen"
    order: ClassVar[int] = 11
    command: ClassVar[bool] = False
    via: ClassVar[str] = "flow --screen K"
    k: int = 30
    control: int = 10
    exact_below: float = 0.02
    ranking: str = "drop"  # `order` is the report position (Analysis.order)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_screen(self.k, self.control, self.ranking, self.exact_below)

    def config(self) -> dict[str, Any]:
        """The options, ``ranking`` only when not the default ``drop`` (so run folders made
        before it was an option still resume)."""
        config = super().config()
        if config.get("ranking") == "drop":
            del config["ranking"]
        return config

    def records(self, probe: Probe) -> list[dict[str, Any]]:
        if not probe.base.keep(self.sample_mode):
            return []
        curves, pairs, screen = screened_sweep(
            probe,
            self.targets,
            self.custom,
            window=self.window,
            style=self.window_style,
            layers=self.layers,
            k=self.k,
            control=self.control,
            exact_below=self.exact_below,
            order=self.ranking,
            labels={"kind": "plan"},
        )
        rows: list[dict[str, Any]] = []
        for estimate, exact in pairs:
            rows.append(estimate)
            if exact is not None:
                rows.append(exact)
        att = screen.attribution
        for target, name, edges, _ in curves:
            for src, dst in edges:
                heat = att.delta_logprob(att.head_map(src, dst))
                for layer in range(probe.num_layers):
                    if np.isnan(heat[layer]).all():
                        continue
                    for head, value in enumerate(heat[layer]):
                        rows.append(
                            {
                                "kind": "head_map",
                                "method": "estimate",
                                "target": target,
                                "condition": name,
                                "pair": f"{src}->{dst}",
                                "layer": layer,
                                "head": head,
                                "rel_pred": float(relative_change(value)),
                            }
                        )
        if cuts_into_frames(dst for _, _, edges, _ in curves for _, dst in edges):
            pairs_est = att.delta_logprob(att.frame_pairs())
            for layer, a, b in zip(*np.nonzero(~np.isnan(pairs_est)), strict=True):
                rows.append(
                    {
                        "kind": "frame_pair",
                        "method": "estimate",
                        "pair": f"frame:{a}->frame:{b}",
                        "layer": int(layer),
                        "src_frame": int(a),
                        "dst_frame": int(b),
                        "rel_pred": float(relative_change(pairs_est[layer, a, b])),
                    }
                )
        rows.append({"kind": "screen", "method": "summary"} | screen.summary())
        said = screen.warnings(f"sample {probe.sample.id!r}")
        # once a run (an attribute, not a field: no part of the configuration); every
        # sample's counts are in its records and the report
        if said and not getattr(self, "_warned", False):
            self._warned = True
            more = (
                " (this is said for the first such sample only; the report's screen section and "
                "each sample's kind: screen record count them all)"
            )
            for message in said:
                warnings.warn(message + more, UserWarning, stacklevel=2)
        return rows

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section:
        return screened_flow_section(records, run)


def screened_sweep(
    probe: Probe,
    targets: Sequence[str],
    custom: Sequence[str] = (),
    *,
    window: int = 9,
    style: str = "center",
    layers: Sequence[int] | None = None,
    k: int = 30,
    control: int = 10,
    exact_below: float = 0.02,
    order: str = "drop",
    seed: int = 0,
    labels: dict[str, Any] | None = None,
) -> tuple[list[tuple[str, str, Edges, list[SweepPoint]]], list[tuple[dict, dict | None]], Screen]:
    """The knockout sweep of one input (``sweep_curves``), screened: every plan estimated by
    the probe's attribution pass, the cheap ones, the top ``k`` and ``control`` random
    others evaluated exactly (``screen.verify_top``).

    Returns the curves, per plan its estimate's record and, when it was verified, the
    engine's exact record (``flow_row``'s, with the estimate beside it as
    ``rel_pred_estimate``; else ``None``), and the ``Screen``. ``labels`` lead every record.
    ``ScreenedFlow.records`` and ``Probe.screen`` are this."""
    check_screen(k, control, order, exact_below)
    curves = sweep_curves(probe, targets, custom, window=window, style=style, layers=layers)
    points = [(target, point) for target, _, _, pts in curves for point in pts]
    plans = [point.plan for _, point in points]
    src, dst = plan_groups(plans)
    if cuts_into_frames(dst):  # frame pairs cost the pass nothing more
        pair_src, pair_dst = frame_pair_groups(probe.layout.num_frames)
        src, dst = (
            [*src, *(g for g in pair_src if g not in src)],
            [*dst, *(g for g in pair_dst if g not in dst)],
        )
    att = probe._attribution(src, dst, sorted({x for p in plans for x in p.layers}))
    screen = verify_top(
        probe.engine, plans, att, k, control=control, order=order, exact_below=exact_below, seed=seed
    )
    pairs = [
        screened_plan_rows(probe, target, point, sp, window, style, labels)
        for (target, point), sp in zip(points, screen.plans, strict=True)
    ]
    return curves, pairs, screen


def cuts_into_frames(queries: Iterable[str]) -> bool:
    """Whether a sweep cuts into single frames: then its pass also covers every frame pair
    (``screened_sweep``) and its records carry the frame-pair map (``ScreenedFlow``)."""
    return any(g.startswith(("frame:", "frames:")) for g in queries)


def screened_plan_rows(
    probe: Probe,
    target: str,
    point: SweepPoint,
    screened: ScreenedPlan,
    window: int,
    window_style: str,
    labels: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One screened plan's records: the estimate's (``method="estimate"``; the answer's
    probability after the cut is the baseline's times ``exp(estimate)``) and, if the plan
    was verified, the engine's exact one (``method="exact"``), else ``None``."""
    base, labels = probe.base, labels or {}
    est_rel = float(relative_change(screened.estimate))
    estimate = labels | {
        "method": "estimate",
        "verified_as": screened.verified_as,
        "target": target,
        "condition": point.condition,
        "layer": point.layer,
        "blocked_layers": list(point.plan.layers),
        "window": window,
        "window_style": window_style,
        "plan": point.plan.to_json(),
        "p_pred_base": base.p_pred,
        "p_pred_new": base.p_pred * float(np.exp(screened.estimate)),
        "rel_pred": est_rel,
    }
    if screened.logits is None:
        return estimate, None
    row = flow_row(probe, target, point, screened.logits, window, window_style)
    extra = {"method": "exact", "verified_as": screened.verified_as}
    return estimate, row | labels | extra | {"rel_pred_estimate": est_rel}


SECTION_TITLE = "Screened knockout (attribution estimates, top K verified)"
# the agreement table's columns that count plans (their mean over samples; the rest are rates)
COUNT_COLUMNS = {
    "plans", "verified", "cheap", "control", "unresolved", "missed_control", "underestimated", "contradicted"
}


def screened_flow_section(rows: pd.DataFrame, run: RunDir) -> Section:
    """Estimated curves, the exactly verified plans, rank agreement and one layer x head
    attribution heat map per group pair (means over samples)."""
    from ..report import Chart, Section, value_counts
    from ..report.figures import save_figure

    if "kind" not in rows:  # no records (a run none of whose samples was kept): the title alone
        return Section(SECTION_TITLE)
    plans = rows[rows["kind"] == "plan"]
    keys = ["target", "condition", "layer"]
    g = plans[plans["method"] == "estimate"].groupby(keys)
    estimated = value_counts(g, ["rel_pred"]).join(g.agg(rel_pred_estimate_mean=("rel_pred", "mean")))
    estimated = estimated.reset_index().astype({"layer": int})  # records hold floats
    exact = plans[plans["method"] == "exact"]
    g = exact.groupby([*keys, "verified_as"])
    verified = value_counts(g, ["rel_pred", "rel_pred_estimate"]).join(
        g.agg(rel_pred_mean=("rel_pred", "mean"), rel_pred_estimate_mean=("rel_pred_estimate", "mean"))
    )
    verified = verified.reset_index().astype({"layer": int})
    summary_cols = [
        "plans",
        "verified",
        "cheap",
        "control",
        "spearman_verified",
        "spearman_control",
        "unresolved",
        "max_error_pct",
        "missed_control",
        "underestimated",
        "contradicted",
    ]
    screens = rows[rows["kind"] == "screen"]
    agreement = screens[[c for c in summary_cols if c in screens]].astype(float).mean().to_frame("mean").T
    for c in COUNT_COLUMNS & set(agreement):  # a count every sample shares reads 330, not 330.0
        if agreement[c].notna().all() and (agreement[c] % 1 == 0).all():
            agreement[c] = agreement[c].astype(int)
    section = Section(
        SECTION_TITLE,
        summaries={
            "flow-screen-estimates": estimated,
            "flow-screen-verified": verified,
            "flow-screen-agreement": agreement,
        },
    )
    for target in sorted(estimated["target"].unique()):
        data = estimated[estimated["target"] == target]
        section.charts.append(
            Chart(
                f"Estimated knockout: {target}",
                data,
                {"estimated % change of p(baseline answer)": ("rel_pred_estimate_mean", None)},
                series=("condition",),
            )
        )
    maps = rows[rows["kind"] == "head_map"]
    for (target, condition, pair), data in maps.groupby(["target", "condition", "pair"]):
        grid = data.groupby(["layer", "head"])["rel_pred"].mean().unstack("head").sort_index()
        path = run.figure_path(f"head-map-{_safe(f'{condition}-{pair}')}")
        save_figure(head_map_figure(grid, f"{pair} ({target}), {_mean_over(data)}"), path)
        section.figures[f"Attribution per layer x head: {pair} ({_mean_over(data)})"] = path
    pairs = rows[rows["kind"] == "frame_pair"] if "kind" in rows else rows.iloc[:0]
    if len(pairs):
        grid = pairs.groupby(["layer", "pair"])["rel_pred"].mean().unstack("pair").sort_index()
        order = sorted(grid.columns, key=lambda c: tuple(int(x.split(":")[1]) for x in c.split("->"))[::-1])
        grid = grid[order]
        grid.columns = [c.replace("frame:", "") for c in grid.columns]
        path = run.figure_path("frame-pairs")
        title = f"frame a -> frame b, all heads, {_mean_over(pairs)}"
        save_figure(head_map_figure(grid, title, xlabel="frame pair a->b"), path)
        section.figures[f"Attribution per layer x frame pair ({_mean_over(pairs)})"] = path
    section.notes = screen_warning(screens) + (
        "Estimates are first-order attribution (one forward and one backward per sample) and are "
        "marked method=estimate in the records; only method=exact rows are knockout results. "
        "Rank agreement is Spearman's correlation between estimate and exact over the verified "
        "plans (and over the random control sample alone) whose exact change is larger than the "
        "logits' rounding (unresolved: how many were left out). Heat maps: estimated % change of the "
        "answer's probability when one group pair is cut in one head of one layer; frame pairs: "
        "when frame a -> frame b is cut in every head of one layer. Each cell is the mean over the "
        "samples (the title says how many); layers are numbered from 1 as in the rest of the "
        "report (layer 1 is the records' layer 0), heads from 0 as in the records' head column "
        "and Cut(heads=...)."
    )
    return section


def screen_warning(screens: pd.DataFrame) -> str:
    """The report's warning when the verified plans contradict the estimates in some
    samples (``Screen.warnings``: misses the control sample found, estimates far too small,
    some perhaps of the wrong sign), else ``""``. Folders written before ``underestimated``
    existed count their ``contradicted`` plans (a subset) instead; those written before
    either say nothing."""

    def count(column: str) -> pd.Series:
        return screens[column].fillna(0) if column in screens else pd.Series(0, index=screens.index)

    missed = count("missed_control") > 0
    under = (count("underestimated") > 0) | (count("contradicted") > 0)
    wrong = count("contradicted") > 0
    if not (missed.any() or under.any()):
        return ""
    parts = []
    if missed.any():
        parts.append(
            f"in {int(missed.sum())} of {len(screens)} samples the random control sample found plans "
            "whose exact effect is larger than the top K's (false negatives of the estimates: "
            "missed_control)"
        )
    if under.any():
        sign = f"; in {int(wrong.sum())} of them some of the other sign: contradicted" if wrong.any() else ""
        parts.append(
            f"in {int(under.sum())} of {len(screens)} samples verified plans have exact effects over "
            f"10x their estimates (underestimated{sign}), so the rows left as estimates for those "
            "samples are unreliable too"
        )
    worst = screens["max_error_pct"].max() if "max_error_pct" in screens else float("nan")
    return (
        "WARNING: the estimates are contradicted by the exact knockouts: "
        + "; ".join(parts)
        + f". The largest |exact - estimate| of a verified plan is {worst:.3g} percentage points. "
        "Do not read the estimated curves as results here: evaluate the plans exactly (the exact "
        "sweep: flow without --screen, or probe.sweep), or raise --screen K or --screen-control. "
    )


def _mean_over(data: pd.DataFrame) -> str:
    """``"mean over N samples"`` for a heat map's records (``"mean over samples"`` for
    records without sample ids)."""
    if "sample_id" not in data:
        return "mean over samples"
    n = data["sample_id"].nunique()
    return f"mean over {n} sample{'s' if n != 1 else ''}"


def head_map_figure(grid: pd.DataFrame, title: str, xlabel: str = "head") -> Any:
    """Layers (rows, shown 1-based as in the rest of the report) x heads (0-based integer
    ticks, as the records and ``Cut(heads=...)``; or other columns, each labelled) heat map
    of estimated % changes, centred on 0."""
    from ..report.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(3.6, 1.2 + 0.25 * grid.shape[1]), 1.0 + 0.2 * grid.shape[0]))
    lim = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    im = ax.imshow(grid.to_numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
    if xlabel != "head":
        ax.set_xlabel(xlabel)
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], fontsize=5, rotation=90)
    else:
        ax.set_xlabel("head (from 0)")
        step = -(-grid.shape[1] // 16)  # at most 16 labels
        ticks = range(0, grid.shape[1], step)
        ax.set_xticks(ticks, [str(int(grid.columns[i])) for i in ticks], fontsize=6)
    ax.set_ylabel("layer (from 1)")
    ax.set_yticks(range(grid.shape[0]), [str(int(x) + 1) for x in grid.index], fontsize=6)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="est. % change")
    fig.tight_layout()
    return fig


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^\w.-]+", "_", name)
