"""Logit lens on video tokens (paper §5 / Fig. 4-5).

Project each video token's residual stream at every layer into the vocabulary and keep
the top-k tokens. ``projection="unembed"`` is the standard lens (final norm + output
head); ``"embed"`` multiplies by the input embedding matrix without a norm, as the paper's
code did. Layers are indexed correctly: ``layer = -1`` is the embeddings (input of decoder
layer 0) and ``layer = l`` the output of decoder layer ``l`` (the paper's code skipped the
output of layer L-2 and labelled inputs as layers).

A keyword *hit* is a top-1 token equal to a keyword's first sub-token (as the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch

from ..errors import PlanError
from ..models.base import Adapter
from .base import ANALYSES, Analysis, check_sample_mode, option, overlay_samples, video_grid

if TYPE_CHECKING:
    from ..probe import Probe
    from ..report import Section
    from ..rundir import RunDir

PROJECTIONS = ("unembed", "embed")

# The paper's released lists (Action Sequence), deduplicated; REFERENCE_NOTES §5.1. Its
# code built the temporal overlay from the spatial list; we keep the two apart.
WORD_PRESETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "paper-action-sequence": (
        (
            "bag",
            "bed",
            "blanket",
            "book",
            "box",
            "cabinet",
            "camera",
            "clothes",
            "cup",
            "glass",
            "bottle",
            "dish",
            "door",
            "floor",
            "food",
            "laptop",
            "paper",
            "person",
            "phone",
            "sandwich",
            "table",
        ),
        (
            "eat",
            "close",
            "do",
            "down",
            "drink",
            "hold",
            "on",
            "open",
            "put",
            "sit",
            "throw",
            "tidy",
            "take",
            "up",
        ),
    ),
    "synthetic": (
        (
            "red",
            "green",
            "blue",
            "yellow",
            "white",
            "purple",
            "orange",
            "cyan",
            "square",
            "circle",
            "triangle",
            "object",
        ),
        (
            "left",
            "right",
            "up",
            "down",
            "grows",
            "shrinks",
            "appears",
            "disappears",
            "first",
            "change",
            "move",
            "moves",
            "From",
            "to",
        ),
    ),
}


def split_words(text: str | None) -> tuple[str, ...]:
    """``"red, blue"`` -> ``("red", "blue")``."""
    return tuple(w.strip() for w in text.split(",") if w.strip()) if text else ()


@ANALYSES.register("logit-lens", "top vocabulary tokens of every video token at every layer")
@dataclass
class LogitLens(Analysis):
    """Logit lens on the video tokens: top vocabulary tokens per layer, keyword frequency.

    One record per sample x layer (``-1`` = embeddings): top-k tokens per video token and
    keyword hit counts."""

    name: ClassVar[str] = "logit-lens"
    order: ClassVar[int] = 30
    needs_knockout: ClassVar[bool] = False
    projection: str = option(
        "unembed", "unembed (final norm + output head) or embed (input embeddings, as the paper)"
    )
    topk: int = option(5, "tokens kept per video token and layer")
    words: str = option("synthetic", "keyword preset: synthetic or paper-action-sequence")
    spatial: tuple[str, ...] = option(
        (), "comma-separated spatial words (overrides the preset)", cli=str, parse=split_words
    )
    temporal: tuple[str, ...] = option(
        (), "comma-separated temporal words (overrides the preset)", cli=str, parse=split_words
    )
    sample_mode: str = option("correct", "analyse the samples the model gets correct, wrong, or all")
    overlays: int = option(2, "samples drawn with their top words over the frames")

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise PlanError(f"unknown projection {self.projection!r}; choose from {PROJECTIONS}")
        check_sample_mode(self.sample_mode)
        self.spatial, self.temporal = tuple(self.spatial), tuple(self.temporal)
        if not (self.spatial or self.temporal):
            if self.words not in WORD_PRESETS:
                raise PlanError(
                    f"unknown word list preset {self.words!r}; choose from {sorted(WORD_PRESETS)}"
                )
            self.spatial, self.temporal = WORD_PRESETS[self.words]

    def _first_subtokens(self, adapter: Adapter, words: tuple[str, ...]) -> dict[str, str]:
        """keyword -> the decoded text of its first sub-token."""
        out = {}
        for w in words:
            ids = adapter.tokenizer(w, add_special_tokens=False)["input_ids"]
            if ids:
                out[w] = adapter.tokenizer.decode([ids[0]]).strip()
        return out

    @torch.inference_mode()
    def records(self, probe: Probe) -> list[dict[str, Any]]:
        adapter, prepared, engine = probe.adapter, probe.prepared, probe.engine
        if not probe.base.keep(self.sample_mode):
            return []
        lm = engine.lm
        video = torch.from_numpy(prepared.layout.resolve("video")).to(engine.device)
        spatial = set(self._first_subtokens(adapter, self.spatial).values())
        temporal = set(self._first_subtokens(adapter, self.temporal).values())
        grid = video_grid(prepared.layout)
        rows = []
        for stream, hidden in enumerate(engine.hidden_states):
            layer = stream - 1
            h = hidden[0].index_select(0, video)
            logits = lens_logits(lm, h, self.projection)
            top = logits.topk(self.topk, dim=-1).indices  # (n_video, k)
            vocab = {int(i): adapter.tokenizer.decode([int(i)]).strip() for i in top.unique().tolist()}
            words = [[vocab[int(i)] for i in row] for row in top.tolist()]
            top1 = [w[0] for w in words]
            counts: dict[str, int] = {}
            for w in top1:
                if w in spatial or w in temporal:
                    counts[w] = counts.get(w, 0) + 1
            rows.append(
                {
                    "layer": layer,
                    "projection": self.projection,
                    "n_video": len(top1),
                    "spatial_hits": sum(c for w, c in counts.items() if w in spatial),
                    "temporal_hits": sum(c for w, c in counts.items() if w in temporal),
                    "hits": counts,
                    "top1": top1,
                    "topk": words if self.topk > 1 else None,
                    **grid,
                }
            )
        return rows

    @classmethod
    def summarize(cls, records: pd.DataFrame) -> pd.DataFrame:
        return summarize_logit_lens(records)

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section:
        return logit_lens_section(records, run)


def lens_logits(lm: Any, hidden: torch.Tensor, projection: str) -> torch.Tensor:
    """``(n, d)`` residual states -> ``(n, vocab)`` lens logits."""
    if projection == "unembed":
        return lm.lm_head(lm.norm(hidden)).float()
    weight = lm.embed_tokens.weight
    return (hidden.to(weight.dtype) @ weight.T).float()


def summarize_logit_lens(records: pd.DataFrame) -> pd.DataFrame:
    """Per task x layer: the fraction of video tokens whose top-1 token is a spatial or a
    temporal keyword."""
    df = records[(records["analysis"] == "logit-lens") & records["error"].isna()]
    if df.empty:
        return pd.DataFrame()
    g = df.groupby(["task", "layer"])
    out = pd.DataFrame(
        {
            "n": g.size(),
            "spatial_rate": g["spatial_hits"].sum() / g["n_video"].sum(),
            "temporal_rate": g["temporal_hits"].sum() / g["n_video"].sum(),
        }
    )
    return out.reset_index()


def logit_lens_section(rows: pd.DataFrame, run: RunDir) -> Section:
    """Per layer, the share of video tokens whose top-1 lens token is a spatial or a
    temporal keyword, and the most frequent top-1 tokens."""
    from ..report import Chart, Section, mean_ci
    from ..report.figures import save_figure

    summary = summarize_logit_lens(rows)
    section = Section("Logit lens on video tokens", summaries={"logit-lens": summary})
    if summary.empty:
        return section
    parts = []
    for column, label in (("spatial_hits", "spatial words"), ("temporal_hits", "temporal words")):
        data = rows[["task", "layer"]].assign(rate=rows[column] / rows["n_video"])
        parts.append(mean_ci(data, ["task", "layer"], "rate").assign(words=label))
    section.charts.append(
        Chart(
            "Video tokens whose top-1 lens token is a keyword",
            pd.concat(parts, ignore_index=True),
            {"fraction of video tokens": ("rate_mean", "rate_ci95")},
            series=("words",),
            xlabel="layer (0 = embeddings)",
            zero_line=False,
            limits=(0.0, 1.0),
        )
    )
    if "top1" in rows:
        top = []
        for layer, d in rows.groupby("layer"):
            words = pd.Series([w for ws in d["top1"] for w in (ws if isinstance(ws, list) else [])])
            common = words.value_counts().head(6)
            top.append(
                {
                    "layer": int(layer) + 1,
                    "most frequent top-1 tokens (share)": ", ".join(
                        f"{w!r} {c / max(1, len(words)):.0%}" for w, c in common.items()
                    ),
                }
            )
        section.summaries["logit-lens-top-tokens"] = pd.DataFrame(top)
    path = run.figure_path("logit-lens")
    save_figure(lens_frequency_figure(summary), path)
    section.figures["Keyword frequency by layer"] = path
    n_layers = int(rows["layer"].max()) + 1
    shown = sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})
    for sample, frames in overlay_samples(rows, run, "logit-lens"):
        d = rows[rows["sample_id"] == sample.id]
        if "video_grid" not in d or d["video_grid"].isna().all():
            continue
        tops = {int(r.layer): r.top1 for r in d.itertuples()}
        first = d.iloc[0]
        fig = lens_overlay_figure(
            frames, first["video_grid"], int(first["frames_per_group"]), tops, shown, sample
        )
        path = run.figure_path(f"logit-lens/{sample.id}")
        save_figure(fig, path)
        section.figures[f"Lens tokens over the frames: {sample.id}"] = path
    projection = ", ".join(sorted(map(str, rows["projection"].unique()))) if "projection" in rows else "?"
    section.notes = (
        f"Projection: {projection} ('unembed': final norm and output head, the standard lens; "
        "'embed': the input embedding matrix, as the paper's code). Layer 0 is the embeddings; a "
        "hit is a top-1 token equal to a keyword's first sub-token."
    )
    return section


def lens_frequency_figure(summary: pd.DataFrame) -> Any:
    """Per layer: how often a video token's top-1 lens token is a spatial / temporal word."""
    from ..report.figures import pyplot

    plt = pyplot()
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


def lens_overlay_figure(
    frames: Any,
    grid: list[list[int]],
    frames_per_group: int,
    tops: dict[int, list[str]],
    layers: list[int],
    sample: Any,
) -> Any:
    """The top-1 lens word of every video token drawn over its frame, for a few layers.

    ``grid``: per frame group ``[offset among the video tokens, h, w]`` (see
    :func:`~vlmflow.analyses.base.video_grid`); ``tops``: layer -> top-1 word per video token.
    """
    from ..report.figures import pyplot

    plt = pyplot()
    groups = len(grid)
    fig, axes = plt.subplots(len(layers), groups, figsize=(2.0 * groups, 2.1 * len(layers)), squeeze=False)
    for r, layer in enumerate(layers):
        words = tops[layer]
        for t, (start, h, w) in enumerate(grid):
            ax = axes[r][t]
            frame = frames[min(t * frames_per_group, len(frames) - 1)]
            ax.imshow(frame, extent=(0, 1, 1, 0))
            for k in range(h * w):
                if start + k >= len(words):
                    continue
                y, x = divmod(k, w)
                ax.text(
                    (x + 0.5) / w,
                    (y + 0.5) / h,
                    words[start + k][:8],
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
