"""Figures: pure functions from a records/summary DataFrame to a matplotlib figure."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def flow_figure(summary: pd.DataFrame, target: str, value: str = "rel_pred") -> Any:
    """The paper's knockout plot for one target: a panel per task; x = layer (1-based),
    y = mean % change of the answer probability with its 95% CI band, a curve per cut."""
    plt = _plt()
    data = summary[summary["target"] == target]
    tasks = sorted(data["task"].unique())
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols) if tasks else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for cond, d in data[data["task"] == task].groupby("condition"):
            d = d.sort_values("layer")
            x = d["layer"] + 1
            y, ci = d[f"{value}_mean"], d[f"{value}_ci95"]
            ax.plot(x, y, marker="o", ms=3, label=str(cond).replace("->", " -/-> "))
            ax.fill_between(x, y - ci, y + ci, alpha=0.2)
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


def flow_by_task_figure(summary: pd.DataFrame, condition: str, value: str = "rel_pred") -> Any:
    """One condition (e.g. ``cross-frame``), one curve per task, on a single axis, so
    temporal tasks can be compared with a static control."""
    plt = _plt()
    data = summary[summary["condition"] == condition]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for task, d in data.groupby("task"):
        d = d.sort_values("layer")
        x = d["layer"] + 1
        y, ci = d[f"{value}_mean"], d[f"{value}_ci95"]
        ax.plot(x, y, marker="o", ms=3, label=f"{task} (n={int(d['n'].max())})")
        ax.fill_between(x, y - ci, y + ci, alpha=0.15)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("layer (centre of the knockout window)")
    ax.set_ylabel("% change in answer probability")
    ax.set_title(f"Knockout of {condition} attention, per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
