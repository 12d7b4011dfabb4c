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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from ..engine import Engine
from ..errors import PlanError
from ..models.base import Adapter, Prepared
from .base import ANALYSES, SAMPLE_MODES, Baseline

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


@ANALYSES.register("logit-lens", "top vocabulary tokens of every video token at every layer")
@dataclass
class LogitLens:
    """One record per sample x layer (``-1`` = embeddings): top-k tokens per video token and
    keyword hit counts."""

    name: ClassVar[str] = "logit-lens"
    needs_knockout: ClassVar[bool] = False
    projection: str = "unembed"
    topk: int = 5
    words: str = "synthetic"
    spatial: tuple[str, ...] = ()
    temporal: tuple[str, ...] = ()
    sample_mode: str = "correct"
    overlays: int = 2
    out_dir: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise PlanError(f"unknown projection {self.projection!r}; choose from {PROJECTIONS}")
        if self.sample_mode not in SAMPLE_MODES:
            raise PlanError(f"unknown sample mode {self.sample_mode!r}; choose from {SAMPLE_MODES}")
        if not (self.spatial or self.temporal):
            if self.words not in WORD_PRESETS:
                raise PlanError(
                    f"unknown word list preset {self.words!r}; choose from {sorted(WORD_PRESETS)}"
                )
            self.spatial, self.temporal = WORD_PRESETS[self.words]
        self._drawn = 0

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out_dir")
        return d

    def bind(self, out_dir: str | Path) -> None:
        """Where to write the per-frame overlays."""
        self.out_dir = str(out_dir)

    def _first_subtokens(self, adapter: Adapter, words: tuple[str, ...]) -> dict[str, str]:
        """keyword -> the decoded text of its first sub-token."""
        out = {}
        for w in words:
            ids = adapter.tokenizer(w, add_special_tokens=False)["input_ids"]
            if ids:
                out[w] = adapter.tokenizer.decode([ids[0]]).strip()
        return out

    @torch.inference_mode()
    def records(
        self, adapter: Adapter, prepared: Prepared, engine: Engine, base: Baseline
    ) -> list[dict[str, Any]]:
        if not base.keep(self.sample_mode):
            return []
        lm = engine.lm
        video = torch.from_numpy(prepared.layout.resolve("video")).to(engine.device)
        spatial = set(self._first_subtokens(adapter, self.spatial).values())
        temporal = set(self._first_subtokens(adapter, self.temporal).values())
        rows = []
        tops: dict[int, list[str]] = {}
        for stream, hidden in enumerate(engine.hidden_states):
            layer = stream - 1
            h = hidden[0].index_select(0, video)
            logits = lens_logits(lm, h, self.projection)
            top = logits.topk(self.topk, dim=-1).indices  # (n_video, k)
            vocab = {int(i): adapter.tokenizer.decode([int(i)]).strip() for i in top.unique().tolist()}
            words = [[vocab[int(i)] for i in row] for row in top.tolist()]
            top1 = [w[0] for w in words]
            tops[layer] = top1
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
                }
            )
        if self.out_dir and self._drawn < self.overlays and prepared.sample.frames is not None:
            self._draw(prepared, tops, engine.lm.num_layers)
        return rows

    def _draw(self, prepared: Prepared, tops: dict[int, list[str]], n_layers: int) -> None:
        from ..report.figures import lens_overlay_figure, save_figure

        layers = sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})
        fig = lens_overlay_figure(prepared.sample.frames, prepared.layout, tops, layers, prepared.sample)
        path = Path(self.out_dir) / "figures" / "logit-lens" / f"{prepared.sample.id}.png"
        save_figure(fig, path)
        self._drawn += 1


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
