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


def save_figure(fig: Any, path: Any, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` (folders created) and free it."""
    from pathlib import Path

    plt = _plt()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def answer_prob_figure(summary: pd.DataFrame, overtake: dict[str, int | None] | None = None) -> Any:
    """Per task: mean probability of the true option letter vs the false ones, by layer."""
    plt = _plt()
    tasks = sorted(summary["task"].unique())
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols) if tasks else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        d = summary[summary["task"] == task].sort_values("layer")
        x = d["layer"] + 1
        ax.plot(x, d["p_true"], marker="o", ms=3, label="true option")
        ax.plot(x, d["p_false_max"], marker="s", ms=3, label="strongest false option")
        ax.plot(x, d["p_false_mean"], ls="--", label="false options (mean)")
        if overtake and overtake.get(task) is not None:
            ax.axvline(overtake[task] + 1, color="gray", ls=":", label="true overtakes")
        ax.set_title(f"{task} (n={int(d['n'].max())})", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("probability")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle("Answer probability read from each layer", fontsize=11)
    fig.tight_layout()
    return fig


def lens_frequency_figure(summary: pd.DataFrame) -> Any:
    """Per layer: how often a video token's top-1 lens token is a spatial / temporal word."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, col, title in zip(
        axes, ["spatial_rate", "temporal_rate"], ["spatial words", "temporal words"], strict=True
    ):
        for task, d in summary.groupby("task"):
            d = d.sort_values("layer")
            ax.plot(d["layer"] + 1, d[col], marker="o", ms=3, label=str(task))
        ax.set_title(f"top-1 token is one of the {title}", fontsize=10)
        ax.set_xlabel("layer (0 = embeddings)")
    axes[0].set_ylabel("fraction of video tokens")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _frame_axes(ax: Any, frame: Any, region: Any) -> None:
    """Draw ``frame`` in pixel coordinates and dim what the processor cropped away."""
    from matplotlib.patches import Rectangle

    h, w = frame.shape[:2]
    ax.imshow(frame, extent=(0, w, h, 0))
    x0, y0, x1, y1 = region
    for rect in ((0, 0, x0, h), (x1, 0, w - x1, h), (x0, 0, x1 - x0, y0), (x0, y1, x1 - x0, h - y1)):
        if rect[2] > 0 and rect[3] > 0:
            ax.add_patch(Rectangle(rect[:2], rect[2], rect[3], facecolor="black", alpha=0.55, lw=0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)


def _grid_start(layout: Any, t: int) -> int:
    return layout.frames[t].start + (layout.frame_token_offsets[t] if layout.frame_token_offsets else 0)


def lens_overlay_figure(
    frames: Any, layout: Any, tops: dict[int, list[str]], layers: list[int], sample: Any, region: Any = None
) -> Any:
    """The top-1 lens word of every video token drawn over the pixels it was computed from,
    for a few layers. ``frames`` are those the model was fed; ``region`` ``(x0, y0, x1, y1)``
    is the part of a frame the processor kept (its centre crop; default the whole frame):
    the grid is laid over it and the rest is dimmed."""
    from ..models.regions import token_centres

    plt = _plt()
    video = layout.resolve("video").tolist()
    index = {p: i for i, p in enumerate(video)}
    groups = layout.num_frames
    fh, fw = frames[0].shape[:2]
    region = region or (0.0, 0.0, float(fw), float(fh))
    aspect = fw / fh
    fig, axes = plt.subplots(
        len(layers), groups, figsize=(2.0 * aspect * groups, 2.1 * len(layers)), squeeze=False
    )
    for r, layer in enumerate(layers):
        words = tops[layer]
        for t in range(groups):
            ax = axes[r][t]
            _frame_axes(ax, frames[min(t * layout.frames_per_group, len(frames) - 1)], region)
            start = _grid_start(layout, t)
            for k, (x, y) in enumerate(token_centres(layout.frame_grids[t], region)):
                i = index.get(start + k)
                if i is None:
                    continue
                ax.text(
                    x,
                    y,
                    words[i][:8],
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.45, "pad": 0.5, "lw": 0},
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
            if t == 0:
                ax.set_ylabel("embeddings" if layer < 0 else f"layer {layer + 1}", fontsize=8)
    fig.suptitle(f"Logit lens on video tokens: {sample.id} ({sample.task})", fontsize=9)
    fig.tight_layout()
    return fig


def attention_overlay_figure(
    frames: Any,
    sample: Any,
    layout: Any,
    maps: dict[str, dict[int, Any]],
    layers: list[int],
    region: Any = None,
) -> Any:
    """The last token's attention to each video token drawn as a heatmap over the pixels the
    token was computed from (``region``, as :func:`lens_overlay_figure`); one row per
    condition and layer (baseline vs a plan side by side)."""
    import numpy as np

    plt = _plt()
    rows = [(c, layer) for c in maps for layer in layers if layer in maps[c]]
    groups = layout.num_frames
    fh, fw = frames[0].shape[:2]
    region = region or (0.0, 0.0, float(fw), float(fh))
    x0, y0, x1, y1 = region
    fig, axes = plt.subplots(
        len(rows), groups, figsize=(1.9 * fw / fh * groups, 2.0 * len(rows)), squeeze=False
    )
    video_start = layout.video.start
    vmax = max(float(np.max(maps[c][layer])) for c, layer in rows) or 1.0
    for r, (cond, layer) in enumerate(rows):
        w = maps[cond][layer]
        for t in range(groups):
            ax = axes[r][t]
            _frame_axes(ax, frames[min(t * layout.frames_per_group, len(frames) - 1)], region)
            h, gw = layout.frame_grids[t]
            off = _grid_start(layout, t) - video_start
            grid = np.asarray(w[off : off + h * gw]).reshape(h, gw)
            ax.imshow(grid, extent=(x0, x1, y1, y0), cmap="magma", alpha=0.6, vmin=0, vmax=vmax)
            ax.set_xlim(0, fw)
            ax.set_ylim(fh, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
            if t == 0:
                ax.set_ylabel(f"{cond}\nlayer {layer + 1}", fontsize=7)
    fig.suptitle(f"Attention of the last token to the video: {sample.id} ({sample.task})", fontsize=9)
    fig.tight_layout()
    return fig


def query_word_figure(maps: dict[int, Any], layout: Any, word: str, condition: str) -> Any:
    """The paper's attention map of one question word: one band per layer (rows), the
    frames side by side (columns), each frame its token grid; colour ``log10(5e-5 + a)``
    with the map's own min and max (as the paper)."""
    import numpy as np

    from ..analyses.attention_maps import log_attention

    plt = _plt()
    layers = sorted(maps)
    video_start = layout.video.start
    bands = []
    for layer in layers:
        w = np.asarray(maps[layer])
        cells = []
        for t in range(layout.num_frames):
            h, gw = layout.frame_grids[t]
            off = (
                layout.frames[t].start
                - video_start
                + (layout.frame_token_offsets[t] if layout.frame_token_offsets else 0)
            )
            cells.append(w[off : off + h * gw].reshape(h, gw))
        height = max(c.shape[0] for c in cells)
        cells = [np.pad(c, ((0, height - c.shape[0]), (0, 0)), constant_values=np.nan) for c in cells]
        bands.append(np.concatenate(cells, axis=1))
    width = max(b.shape[1] for b in bands)
    image = np.concatenate(
        [np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=np.nan) for b in bands]
    )
    image = log_attention(image)
    fig, ax = plt.subplots(figsize=(1.2 + 0.25 * image.shape[1], 0.8 + 0.25 * image.shape[0]))
    im = ax.imshow(image, cmap="viridis", vmin=np.nanmin(image), vmax=np.nanmax(image), aspect="equal")
    band = image.shape[0] // max(1, len(layers))
    ax.set_yticks([k * band + band / 2 - 0.5 for k in range(len(layers))], [str(x + 1) for x in layers])
    ax.set_xticks([])
    ax.set_ylabel("layer")
    ax.set_title(f'{condition} (query: "{word}")', fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="log10(5e-5 + attention)")
    fig.tight_layout()
    return fig


def attention_frames_figure(summary: pd.DataFrame, query: str = "last") -> Any:
    """Mean attention mass of ``query`` tokens on each frame (columns) by layer (rows),
    one panel per condition; tasks pooled."""
    import numpy as np

    plt = _plt()
    data = summary[summary["query"] == query]
    conds = list(dict.fromkeys(data["condition"]))
    fig, axes = plt.subplots(1, len(conds), figsize=(4.2 * len(conds), 3.6), squeeze=False)
    for ax, cond in zip(axes[0], conds, strict=True):
        d = data[data["condition"] == cond]
        layers = sorted(d["layer"].unique())
        grid = np.stack(
            [
                np.mean(np.stack(d[d["layer"] == layer]["frame_mass"].map(np.asarray).tolist()), axis=0)
                for layer in layers
            ]
        )
        im = ax.imshow(
            grid,
            aspect="auto",
            cmap="viridis",
            origin="lower",
            extent=(-0.5, grid.shape[1] - 0.5, layers[0] + 0.5, layers[-1] + 1.5),
        )
        ax.set_xlabel("frame")
        ax.set_ylabel("layer")
        ax.set_title(f"{query} -> frames: {cond}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
