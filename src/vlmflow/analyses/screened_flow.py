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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..attribution import relative_change
from ..engine import Engine
from ..errors import PlanError
from ..models.base import Adapter, Prepared
from ..report import Chart, Section, report_section
from ..screen import screen_then_verify
from .base import ANALYSES, Baseline
from .information_flow import InformationFlow, flow_row
from .targets import sweep, target_curves


@ANALYSES.register("flow-screen", "knockout sweeps estimated by attribution, the top K verified exactly")
@dataclass
class ScreenedFlow(InformationFlow):
    """``InformationFlow``'s plans, screened: estimate all, verify ``k`` (+ ``control``)."""

    name: ClassVar[str] = "flow-screen"
    k: int = 30
    control: int = 10
    exact_below: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 0 or self.control < 0:
            raise PlanError("--screen K and the control sample size must be >= 0")

    def records(
        self, adapter: Adapter, prepared: Prepared, engine: Engine, base: Baseline
    ) -> list[dict[str, Any]]:
        if not base.keep(self.sample_mode):
            return []
        n_layers = engine.lm.num_layers
        if self.layers is not None and any(not 0 <= x < n_layers for x in self.layers):
            raise PlanError(f"sweep layers {self.layers} outside 0..{n_layers - 1}")
        curves = target_curves(self.targets, prepared.layout, self.custom)
        points = [
            (target, point)
            for target, name, edges in curves
            for point in sweep(
                [(name, edges)], n_layers, window=self.window, style=self.window_style, layers=self.layers
            )
        ]
        screen = screen_then_verify(
            engine,
            [p.plan for _, p in points],
            self.k,
            control=self.control,
            token_id=base.pred_id,
            exact_below=self.exact_below,
        )
        rows: list[dict[str, Any]] = []
        for (target, point), sp in zip(points, screen.plans, strict=True):
            est_rel = float(relative_change(sp.estimate))
            rows.append(
                {
                    "kind": "plan",
                    "method": "estimate",
                    "verified_as": sp.verified_as,
                    "target": target,
                    "condition": point.condition,
                    "layer": point.layer,
                    "blocked_layers": list(point.plan.layers),
                    "window": self.window,
                    "window_style": self.window_style,
                    "plan": point.plan.to_json(),
                    "p_pred_base": base.p_pred,
                    "p_pred_new": base.p_pred * float(np.exp(sp.estimate)),
                    "rel_pred": est_rel,
                }
            )
            if sp.logits is not None:
                row = flow_row(
                    adapter, prepared, base, target, point, sp.logits, self.window, self.window_style
                )
                extra = {"kind": "plan", "method": "exact", "verified_as": sp.verified_as}
                rows.append(row | extra | {"rel_pred_estimate": est_rel})
        att = screen.attribution
        for target, name, edges in curves:
            for src, dst in edges:
                heat = att.delta_logprob(att.head_map(src, dst))
                for layer in range(n_layers):
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
        rows.append({"kind": "screen", "method": "summary"} | screen.summary())
        return rows


@report_section("flow-screen", "screened knockout: estimates, verified plans, rank agreement, head maps")
def screened_flow_section(rows: pd.DataFrame, figures_dir: Path) -> Section:
    """Estimated curves, the exactly verified plans, rank agreement and one layer x head
    attribution heat map per group pair (means over samples)."""
    from ..report.figures import save_figure

    plans = rows[rows["kind"] == "plan"]
    keys = ["target", "condition", "layer"]
    estimated = (
        plans[plans["method"] == "estimate"]
        .groupby(keys, as_index=False)
        .agg(n=("rel_pred", "size"), rel_pred_estimate_mean=("rel_pred", "mean"))
    )
    exact = plans[plans["method"] == "exact"]
    verified = exact.groupby([*keys, "verified_as"], as_index=False).agg(
        n=("rel_pred", "size"),
        rel_pred_mean=("rel_pred", "mean"),
        rel_pred_estimate_mean=("rel_pred_estimate", "mean"),
    )
    summary_cols = ["plans", "verified", "cheap", "control", "spearman_verified", "spearman_control"]
    screens = rows[rows["kind"] == "screen"]
    agreement = screens[[c for c in summary_cols if c in screens]].astype(float).mean().to_frame("mean").T
    section = Section(
        "Screened knockout (attribution estimates, top K verified)",
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
        path = figures_dir / f"head-map-{_safe(f'{condition}-{pair}')}.png"
        save_figure(head_map_figure(grid, f"{pair} ({target})"), path)
        section.figures[f"Attribution per layer x head: {pair}"] = path
    section.notes = (
        "Estimates are first-order attribution (one forward and one backward per sample) and are "
        "marked method=estimate in the records; only method=exact rows are knockout results. "
        "Rank agreement is Spearman's correlation between estimate and exact over the verified "
        "plans (and over the random control sample alone). Heat maps: estimated % change of the "
        "answer's probability when one group pair is cut in one head of one layer."
    )
    return section


def head_map_figure(grid: pd.DataFrame, title: str) -> Any:
    """Layers (rows, 1-based) x heads heat map of estimated % changes, centred on 0."""
    from ..report.figures import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 0.25 * grid.shape[1], 1.0 + 0.2 * grid.shape[0]))
    lim = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    im = ax.imshow(grid.to_numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_yticks(range(grid.shape[0]), [str(int(x) + 1) for x in grid.index], fontsize=6)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="est. % change of p(answer)")
    fig.tight_layout()
    return fig


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^\w.-]+", "_", name)
