"""Attention knockout sweeps (the paper's information-flow analysis).

For every curve of every requested target and every sweep layer ``l``, block the curve's
edges in the layer window around ``l`` and read the answer again. Records carry the
probability of the model's baseline answer and of the ground truth before and after, their
relative change in %, and the argmax answer before and after.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..cuts import WINDOW_STYLES
from ..engine import Engine
from ..errors import PlanError
from ..models.base import Adapter, Prepared
from .base import ANALYSES, SAMPLE_MODES, Baseline, read_answer
from .targets import PAPER_TARGETS, TARGETS, SweepPoint, parse_edges, sweep, target_curves


def relative_change(new: float, base: float) -> float:
    """``(new - base) / base * 100``; NaN when the base probability is 0."""
    return (new - base) / base * 100.0 if base > 0 else float("nan")


@ANALYSES.register("flow", "attention knockout sweeps over layers (the paper's targets)")
@dataclass
class InformationFlow:
    """Knockout sweeps: one record per sample x curve x sweep layer."""

    name: ClassVar[str] = "flow"
    targets: tuple[str, ...] = PAPER_TARGETS
    custom: tuple[str, ...] = ()
    window: int = 9
    window_style: str = "center"
    layers: tuple[int, ...] | None = None
    sample_mode: str = "correct"

    def __post_init__(self) -> None:
        for t in self.targets:
            TARGETS.get(t)
        if self.window_style not in WINDOW_STYLES:
            raise PlanError(f"unknown window style {self.window_style!r}; choose from {WINDOW_STYLES}")
        if self.sample_mode not in SAMPLE_MODES:
            raise PlanError(f"unknown sample mode {self.sample_mode!r}; choose from {SAMPLE_MODES}")
        if self.window < 1:
            raise PlanError("window must be >= 1")
        for cut in self.custom:  # a typo in --cut stops the run before its first sample
            parse_edges(cut)
        if self.layers is not None and not self.layers:
            raise PlanError("the sweep layers are empty; give at least one layer (or none for all)")
        if not self.targets and not self.custom:
            raise PlanError("nothing to sweep: give a target or a --cut")

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def records(
        self, adapter: Adapter, prepared: Prepared, engine: Engine, base: Baseline
    ) -> list[dict[str, Any]]:
        if not base.keep(self.sample_mode):
            return []
        n_layers = engine.lm.num_layers
        layers = self.layers
        if layers is not None and any(not 0 <= x < n_layers for x in layers):
            raise PlanError(f"sweep layers {layers} outside 0..{n_layers - 1}")
        rows: list[dict[str, Any]] = []
        for target, name, edges in target_curves(self.targets, prepared.layout, self.custom):
            points = sweep(
                [(name, edges)], n_layers, window=self.window, style=self.window_style, layers=layers
            )
            logits = engine.evaluate([p.plan for p in points])
            for point, lg in zip(points, logits, strict=True):
                rows.append(
                    flow_row(adapter, prepared, base, target, point, lg, self.window, self.window_style)
                )
        return rows


def flow_row(
    adapter: Adapter,
    prepared: Prepared,
    base: Baseline,
    target: str,
    point: SweepPoint,
    logits: torch.Tensor,
    window: int,
    window_style: str,
) -> dict[str, Any]:
    """One knockout record: the answer read from ``logits`` against the baseline."""
    new = read_answer(adapter, prepared, logits)
    p_pred_new = float(new.probs[base.pred_id])
    p_gt_new = None if base.gt_id is None else float(new.probs[base.gt_id])
    return {
        "target": target,
        "condition": point.condition,
        "layer": point.layer,
        "blocked_layers": list(point.plan.layers),
        "window": window,
        "window_style": window_style,
        "plan": point.plan.to_json(),
        "p_pred_base": base.p_pred,
        "p_pred_new": p_pred_new,
        "rel_pred": relative_change(p_pred_new, base.p_pred),
        "p_gt_base": base.p_gt,
        "p_gt_new": p_gt_new,
        "rel_gt": None if p_gt_new is None else relative_change(p_gt_new, base.p_gt),
        "pred_base": base.record()["pred"],
        "pred_new": new.record()["pred"],
        "gt": base.gt_letter,
        "correct_base": base.correct,
        "correct_new": new.correct,
    }


def summarize_flow(df: pd.DataFrame) -> pd.DataFrame:
    """Per task x target x condition x layer: mean and 95% CI of the % change of the
    baseline answer's and the ground truth's probability, and accuracy under knockout."""
    flow = (
        df[(df["analysis"] == "flow") & df["error"].isna()] if "error" in df else df[df["analysis"] == "flow"]
    )
    if flow.empty:
        return pd.DataFrame()
    keys = ["task", "target", "condition", "layer"]

    def ci(x: pd.Series) -> float:
        x = x.dropna()
        return float(1.96 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0

    g = flow.groupby(keys)
    out = g.agg(
        n=("rel_pred", "size"),
        rel_pred_mean=("rel_pred", "mean"),
        rel_gt_mean=("rel_gt", "mean"),
        acc_new=("correct_new", lambda s: float(pd.Series(s, dtype="float").mean())),
    )
    out["rel_pred_ci95"] = g["rel_pred"].apply(ci)
    out["rel_gt_ci95"] = g["rel_gt"].apply(ci)
    return out.reset_index()
