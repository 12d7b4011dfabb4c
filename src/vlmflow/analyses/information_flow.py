"""Attention knockout sweeps (the paper's information-flow analysis).

For every curve of every requested target and every sweep layer ``l``, block the curve's
edges in the layer window around ``l`` and read the answer again. Records carry the
probability of the model's baseline answer and of the ground truth before and after, their
relative change in %, and the argmax answer before and after.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..cuts import WINDOW_STYLES, is_int, parse_layers
from ..errors import PlanError
from .base import (
    ANALYSES,
    Analysis,
    CliOption,
    as_layers,
    as_names,
    check_sample_mode,
    option,
    relative_change,
)
from .targets import PAPER_TARGETS, Edges, SweepPoint, check_targets, parse_edges, sweep, target_curves

if TYPE_CHECKING:
    from ..probe import Probe
    from ..report import Section
    from ..rundir import RunDir


# `flow --screen K`'s own options: (option, ScreenedFlow field, type, help, default);
# K itself is --screen (the field k)
SCREEN_OPTIONS: tuple[tuple[str, str, type, str, Any], ...] = (
    ("screen_control", "control", int, "plans verified exactly at random besides the top K", 10),
    ("screen_order", "ranking", str, "rank plans by estimated drop or by magnitude: drop|magnitude", "drop"),
    (
        "screen_exact_below",
        "exact_below",
        float,
        "plans the engine evaluates for under this fraction of a forward are verified up front",
        0.02,
    ),
)


@ANALYSES.register("flow", "attention knockout sweeps over layers (the paper's targets)")
@dataclass
class InformationFlow(Analysis):
    """Attention knockout sweeps: block edges between token groups layer by layer and
    measure the change in the answer's probability.

    One record per sample x curve x sweep layer."""

    name: ClassVar[str] = "flow"
    order: ClassVar[int] = 10
    targets: tuple[str, ...] | None = option(
        None,
        f"{', '.join(PAPER_TARGETS)} (repeatable; default all)",
        "--target",
        "-t",
        cli=list,
    )
    custom: tuple[str, ...] = option(
        (), "custom curve SRC->DST[,SRC->DST] over token groups (repeatable)", "--cut"
    )
    window: int = option(9, "layers blocked around each sweep layer")
    window_style: str = option("center", "center, inverse, top_down or bottom_up")
    layers: tuple[int, ...] | None = option(
        None, "sweep only these layers, 0-based, e.g. 0-7,12", cli=str, parse=parse_layers
    )
    sample_mode: str = option("correct", "analyse the samples the model gets correct, wrong, or all")

    def __post_init__(self) -> None:
        # the forms the probe accepts ("cross-frame", layers="10-11" or 12), stored normalised
        self.custom = as_names(self.custom, "custom") or ()
        self.targets = as_names(self.targets, "targets")
        self.layers = as_layers(self.layers)
        if self.targets is None:  # the paper's four, unless only custom curves are asked for
            self.targets = () if self.custom else PAPER_TARGETS
        self.targets, self.custom = tuple(self.targets), tuple(self.custom)
        check_sweep(self.targets, self.window, self.window_style, self.custom, self.layers)
        check_sample_mode(self.sample_mode)

    def records(self, probe: Probe) -> list[dict[str, Any]]:
        if not probe.base.keep(self.sample_mode):
            return []
        return sweep_rows(
            probe, self.targets, self.custom, window=self.window, style=self.window_style, layers=self.layers
        )

    @classmethod
    def cli_options(cls) -> list[CliOption]:
        options = super().cli_options()
        if cls is InformationFlow:  # `flow --screen K` runs the screened variant
            help = (
                "estimate every plan by attribution and verify only the top K exactly (plus a random "
                "control sample, --screen-control); records say method=estimate|exact"
            )
            options.append(CliOption("screen", None, help, cli=int))
            options += [
                CliOption(name, None, f"with --screen: {text} (default {default})", cli=kind)
                for name, _, kind, text, default in SCREEN_OPTIONS
            ]
        return options

    @classmethod
    def from_cli(cls, **values: Any) -> Analysis:
        flow = super().from_cli(**values)
        if cls is not InformationFlow:
            return flow
        given = {name: values.get(name) for name, *_ in SCREEN_OPTIONS if values.get(name) is not None}
        if values.get("screen") is None:
            if given:
                flags = ", ".join(f"--{n.replace('_', '-')}" for n in given)
                raise PlanError(f"{flags} only applies to a screened sweep; add --screen K (or leave it out)")
            return flow
        from ..screen import ORDERS
        from .screened_flow import ScreenedFlow

        order = given.get("screen_order")
        if order is not None and order not in ORDERS:
            raise PlanError(f"--screen-order {order!r}: choose from {', '.join(ORDERS)}")
        for name in ("screen_control", "screen_exact_below"):
            if given.get(name) is not None and given[name] < 0:
                raise PlanError(f"--{name.replace('_', '-')} {given[name]}: must be >= 0")
        fields = {f.name: getattr(flow, f.name) for f in dataclasses.fields(InformationFlow)}
        screen = {field: given[name] for name, field, *_ in SCREEN_OPTIONS if name in given}
        return ScreenedFlow(**fields, k=values["screen"], **screen)

    @classmethod
    def summarize(cls, records: pd.DataFrame) -> pd.DataFrame:
        return summarize_flow(records, records.attrs.get("task_samples"))

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section:
        return flow_section(records, run)


def check_sweep(
    targets: Sequence[str],
    window: int,
    style: str,
    custom: Sequence[str] = (),
    layers: Sequence[int] | None = None,
    *,
    response: bool = False,
) -> None:
    """Unknown targets, window styles, windows below one, malformed custom curves, empty
    sweep layers and an empty sweep are errors before the first sample; so are
    ``open-ended``'s targets unless the inputs have a ``response``."""
    check_targets(targets, response=response)
    if style not in WINDOW_STYLES:
        raise PlanError(f"unknown window style {style!r}; choose from {WINDOW_STYLES}")
    if not is_int(window) or window < 1:  # 2.5 used to fail every sample at run time
        raise PlanError(f"window must be an integer >= 1, got {window!r}")
    for cut in custom:  # a typo in --cut stops the run before its first sample
        parse_edges(cut)
    if layers is not None and not layers:
        raise PlanError("the sweep layers are empty; give at least one layer (or none for all)")
    if not targets and not custom:
        raise PlanError("nothing to sweep: give a target or a custom 'SRC->DST' curve (custom=..., --cut)")


def sweep_rows(
    probe: Probe,
    targets: Sequence[str],
    custom: Sequence[str] = (),
    *,
    window: int = 9,
    style: str = "center",
    layers: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """The knockout sweep of one input: a row per curve x sweep layer (see the module doc)."""
    rows: list[dict[str, Any]] = []
    curves = sweep_curves(probe, targets, custom, window=window, style=style, layers=layers)
    for target, _, _, points in curves:
        logits = probe.engine.evaluate([p.plan for p in points])
        pairs = zip(points, logits, strict=True)
        rows += [flow_row(probe, target, point, lg, window, style) for point, lg in pairs]
    return rows


def sweep_curves(
    probe: Probe,
    targets: Sequence[str],
    custom: Sequence[str] = (),
    *,
    window: int = 9,
    style: str = "center",
    layers: Sequence[int] | None = None,
) -> list[tuple[str, str, Edges, list[SweepPoint]]]:
    """The sweep's curves on one input, checked: ``(target, condition, edges, points)`` per
    curve, a point (plan) per sweep layer. Exact (``sweep_rows``) and screened sweeps
    (``screened_flow.screened_sweep``) run these plans."""
    check_sweep(targets, window, style, custom, layers, response=len(probe.layout.response) > 0)
    n_layers = probe.num_layers
    if layers is not None and any(not 0 <= x < n_layers for x in layers):
        raise PlanError(f"sweep layers {tuple(layers)} outside 0..{n_layers - 1}")
    return [
        (target, name, edges, sweep([(name, edges)], n_layers, window=window, style=style, layers=layers))
        for target, name, edges in target_curves(targets, probe.layout, custom)
    ]


def flow_row(
    probe: Probe,
    target: str,
    point: SweepPoint,
    logits: torch.Tensor,
    window: int,
    window_style: str,
) -> dict[str, Any]:
    """One knockout record: the answer read from ``logits`` ``(vocab,)`` against the baseline."""
    base = probe.base
    new = probe.read(logits)
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


def summarize_flow(df: pd.DataFrame, task_samples: dict[str, int] | None = None) -> pd.DataFrame:
    """Per task x target x condition x layer: mean and 95% CI of the % change of the
    baseline answer's and the ground truth's probability, and accuracy under knockout.

    Accuracy comes twice, named apart: ``acc_of_analysed`` divides the samples still
    right under the cut by the samples analysed (by default the correct ones), vlmflow's
    view; ``acc_of_all`` divides them by every sample of the task (``task_samples``: task
    -> samples without error; a sample not analysed counts as wrong), the paper's code
    (``acc`` over all samples). Without ``task_samples`` it is NaN.
    """
    flow = (
        df[(df["analysis"] == "flow") & df["error"].isna()] if "error" in df else df[df["analysis"] == "flow"]
    )
    if flow.empty:
        return pd.DataFrame()
    from ..report import ci95_by_group, ci95_columns, value_counts

    keys = ["task", "target", "condition", "layer"]
    flow = flow.assign(_right=pd.Series(flow["correct_new"], dtype="float").fillna(0.0))
    g = flow.groupby(keys)
    counts = value_counts(g, ["rel_pred", "rel_gt"])  # NaN values are not counted, as the means skip them
    out = g.agg(
        rel_pred_mean=("rel_pred", "mean"),
        rel_gt_mean=("rel_gt", "mean"),
        acc_of_analysed=("correct_new", lambda s: float(pd.Series(s, dtype="float").mean())),
        _right=("_right", "sum"),
    )
    for value in ("rel_pred", "rel_gt"):
        out[list(ci95_columns(value))] = ci95_by_group(g[value])
    out = counts.join(out).reset_index()
    out["layer"] = out["layer"].astype(int)  # records hold floats (eval rows have no layer)
    totals = task_samples or {}
    out["n_task"] = [totals.get(str(t), np.nan) for t in out["task"]]
    out["acc_of_all"] = out["_right"] / out["n_task"]
    return out.drop(columns="_right")


def task_sample_counts(records: pd.DataFrame) -> dict[str, int]:
    """Task -> samples analysed without error (the ``eval`` records): the denominator of the
    paper's accuracy under knockout."""
    ev = records[records["analysis"] == "eval"]
    if "error" in ev:
        ev = ev[ev["error"].isna()]
    return {str(k): int(v) for k, v in ev.groupby("task").size().items()}


def flow_section(rows: pd.DataFrame, run: RunDir) -> Section:
    """Per target: the % change of the answer's probability with its 95% CI per task
    (panels) and cut (curves); and the PNG figures in the paper's layout."""
    from ..report import Chart, Section, ci95_columns
    from ..report.figures import save_figure

    flow = summarize_flow(rows, rows.attrs.get("task_samples"))
    section = Section("Attention knockout (flow)", summaries={"flow": flow} if not flow.empty else {})
    if flow.empty:
        return section
    style, window = sweep_setting(rows)
    values = {
        "% change of p(baseline answer)": ("rel_pred_mean", ci95_columns("rel_pred")),
        "% change of p(ground truth)": ("rel_gt_mean", ci95_columns("rel_gt")),
        "accuracy under knockout, of the analysed samples": ("acc_of_analysed", None),
        "accuracy under knockout, of all samples (paper)": ("acc_of_all", None),
    }
    for target in sorted(flow["target"].unique()):
        data = flow[flow["target"] == target]
        section.charts.append(Chart(f"Knockout: {target}", data, values, series=("condition",)))
        path = run.figure_path(f"flow-{target}")
        save_figure(flow_figure(flow, target), path)
        section.figures[f"Knockout: {target}"] = path
    if "cross-frame" in set(flow["condition"]):
        data = flow[flow["condition"] == "cross-frame"]
        section.charts.append(
            Chart("Cross-frame knockout, tasks compared", data, values, series=("task",), panel=None)
        )
        path = run.figure_path("cross-frame-by-task")
        save_figure(flow_by_task_figure(flow, "cross-frame", style=style), path)
        section.figures["Cross-frame knockout per task"] = path
    section.notes = (
        f"Each curve blocks one set of attention edges {blocked_text(style, window)}; y is the mean "
        "relative change of the answer's probability over the task's samples, with its 95% "
        "confidence band. " + LAYER_NOTE.format(table="flow")
    )
    return section


#: how a section's summary table numbers layers against its charts (as logit-lens and the screen say)
LAYER_NOTE = (
    "The charts and figures count layers from 1; the summary table ({table}) keeps the records' "
    "layers, 0-based: its layer l is layer l + 1 on the x axis."
)


def sweep_setting(rows: pd.DataFrame) -> tuple[str | None, int | None]:
    """The flow records' window style and window size; ``None`` where the records lack the
    column or hold several values (records of one folder share one setting)."""
    flow = rows[rows["analysis"] == "flow"] if "analysis" in rows else rows
    out: list[Any] = []
    for column in ("window_style", "window"):
        values = set(flow[column].dropna()) if column in flow else set()
        out.append(values.pop() if len(values) == 1 else None)
    return (str(out[0]) if out[0] is not None else None), (int(out[1]) if out[1] is not None else None)


def blocked_text(style: str | None, window: int | None) -> str:
    """Which layers a curve's point at layer x (1-based, as the report's x axis) blocks, in
    words, for ``window_style`` ``style`` (see :func:`vlmflow.cuts.window_layers`)."""
    if window is not None:
        before, after = window // 2, window - 1 - window // 2
        span = f"the window of {window} layers x-{before} to x+{after} centred on the layer x on the x axis"
    else:
        span = "the window of layers centred on the layer x on the x axis"
    if style == "center":
        return f"in {span} (clipped at the first and last layer)"
    if style == "inverse":
        return f"in every layer outside {span} (the window itself stays open)"
    if style == "top_down":
        return (
            "in layers x to L (1-based, L the last layer): the layer x on the x axis and every one after it"
        )
    if style == "bottom_up":
        return "in layers 1 to x (1-based): every layer up to and including the layer x on the x axis"
    return (
        "in the layers its window style blocks at the layer x on the x axis (the records do not hold "
        "one window style)"
    )


#: the x axis label of the per-task knockout figure, per window style
X_LABELS = {
    "center": "layer (centre of the knockout window)",
    "inverse": "layer (centre of the window left open; every other layer blocked)",
    "top_down": "layer (blocked from this layer to the last)",
    "bottom_up": "layer (blocked from the first layer to this one)",
}


def flow_figure(summary: pd.DataFrame, target: str, value: str = "rel_pred") -> Any:
    """The paper's knockout plot for one target: a panel per task; x = layer (1-based),
    y = mean % change of the answer probability with its 95% CI band, a curve per cut."""
    from ..report.figures import pyplot

    plt = pyplot()
    data = summary[summary["target"] == target]
    tasks = sorted(data["task"].unique())
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols) if tasks else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for cond, d in data[data["task"] == task].groupby("condition"):
            d = d.sort_values("layer")
            x = d["layer"] + 1
            ax.plot(x, d[f"{value}_mean"], marker="o", ms=3, label=str(cond).replace("->", " -/-> "))
            ax.fill_between(x, d[f"{value}_ci95_lo"], d[f"{value}_ci95_hi"], alpha=0.2)
        ax.axhline(0, color="gray", lw=0.8)
        n = int(data[data["task"] == task]["n"].max())
        ax.set_title(f"{task} (n={n})", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("% change in answer probability")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(f"Attention knockout: {target}", fontsize=11)
    fig.tight_layout()
    return fig


def flow_by_task_figure(
    summary: pd.DataFrame, condition: str, value: str = "rel_pred", style: str | None = "center"
) -> Any:
    """One condition (e.g. ``cross-frame``), one curve per task, on a single axis, so
    temporal tasks can be compared with a static control; ``style``: the sweep's window
    style, named in the x label."""
    from ..report.figures import pyplot

    plt = pyplot()
    data = summary[summary["condition"] == condition]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for task, d in data.groupby("task"):
        d = d.sort_values("layer")
        x = d["layer"] + 1
        ax.plot(x, d[f"{value}_mean"], marker="o", ms=3, label=f"{task} (n={int(d['n'].max())})")
        ax.fill_between(x, d[f"{value}_ci95_lo"], d[f"{value}_ci95_hi"], alpha=0.15)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel(X_LABELS.get(str(style), "layer (1-based)"))
    ax.set_ylabel("% change in answer probability")
    ax.set_title(f"Knockout of {condition} attention, per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
