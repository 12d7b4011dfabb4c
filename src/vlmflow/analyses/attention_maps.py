"""Attention maps (paper Fig. 6): attention from the last token and from the question
tokens to the video tokens, per layer, aggregated per frame; baseline and a chosen plan.

Only the layers being read compute attention weights (they alone run eager attention for
the pass), and each layer's weights are reduced to one row per query group at once, so
no ``N x N`` weight matrix is kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..cuts import Cut, Plan, compile_plan
from ..engine import Engine, masked_forward
from ..errors import PlanError
from ..layout import check_group
from ..models.base import Adapter, Prepared
from .base import ANALYSES, SAMPLE_MODES, Baseline
from .targets import TARGETS, parse_edges


@ANALYSES.register("attention", "attention from last/question tokens to each frame, baseline vs a plan")
@dataclass
class AttentionMaps:
    """One record per sample x condition x layer x query group: attention mass per frame
    and per video token."""

    name: ClassVar[str] = "attention"
    needs_knockout: ClassVar[bool] = True
    layers: tuple[int, ...] | None = None
    queries: tuple[str, ...] = ("last", "question")
    compare: str | None = "cross-frame"
    compare_layers: tuple[int, ...] | None = None
    sample_mode: str = "correct"
    overlays: int = 2
    out_dir: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.sample_mode not in SAMPLE_MODES:
            raise PlanError(f"unknown sample mode {self.sample_mode!r}; choose from {SAMPLE_MODES}")
        if self.compare and self.compare not in TARGETS:
            parse_edges(self.compare)  # a typo in --compare stops the run before its first sample
        for q in self.queries:
            check_group(q)
        self._drawn = 0

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out_dir")
        return d

    def bind(self, out_dir: str | Path) -> None:
        self.out_dir = str(out_dir)

    def comparison_plan(self, prepared: Prepared, num_layers: int) -> Plan | None:
        """The plan drawn beside the baseline: a target's curves (all of them) or custom
        ``SRC->DST`` edges, blocked in ``compare_layers`` (default: every layer)."""
        if not self.compare:
            return None
        layers = self.compare_layers if self.compare_layers is not None else tuple(range(num_layers))
        if self.compare in TARGETS:
            edges = [e for _, es in TARGETS.get(self.compare)(prepared.layout) for e in es]
        else:
            edges = list(parse_edges(self.compare))
        return Plan(self.compare, tuple(Cut(s, d, layers) for s, d in edges))

    @torch.inference_mode()
    def records(
        self, adapter: Adapter, prepared: Prepared, engine: Engine, base: Baseline
    ) -> list[dict[str, Any]]:
        if not base.keep(self.sample_mode):
            return []
        n_layers = engine.lm.num_layers
        layers = self.layers if self.layers is not None else tuple(range(n_layers))
        layout = prepared.layout
        queries = {q: layout.resolve(q) for q in self.queries}
        video = layout.resolve("video")
        conditions: list[tuple[str, Any]] = [("baseline", None)]
        plan = self.comparison_plan(prepared, n_layers)
        if plan is not None:
            conditions.append((plan.name, compile_plan(plan, layout, n_layers)))
        rows = []
        maps: dict[str, dict[int, np.ndarray]] = {}
        for condition, compiled in conditions:
            _, reads = masked_forward(
                engine.lm, prepared.inputs, compiled, read_attention=layers, queries=queries
            )
            maps[condition] = {}
            for layer in layers:
                for group, weights in reads[layer].items():
                    w = weights.numpy()
                    per_frame = [float(w[s.start : s.end].sum()) for s in layout.frames]
                    if group == "last":
                        maps[condition][layer] = w[video]
                    rows.append(
                        {
                            "condition": condition,
                            "layer": layer,
                            "query": group,
                            "video_mass": float(w[video].sum()),
                            "frame_mass": per_frame,
                            "token_attention": w[video].tolist(),
                            "row_sum": float(w.sum()),
                        }
                    )
        if self.out_dir and self._drawn < self.overlays and prepared.sample.frames is not None:
            from ..report.figures import attention_overlay_figure, save_figure

            show = sorted({layers[len(layers) // 2], layers[-1]})
            fig = attention_overlay_figure(prepared.sample, layout, maps, show)
            save_figure(fig, Path(self.out_dir) / "figures" / "attention" / f"{prepared.sample.id}.png")
            self._drawn += 1
        return rows


def summarize_attention(records: pd.DataFrame) -> pd.DataFrame:
    """Per task x condition x query x layer: mean attention mass on the video and on each
    frame."""
    df = records[(records["analysis"] == "attention") & records["error"].isna()]
    if df.empty:
        return pd.DataFrame()
    rows = []
    for key, d in df.groupby(["task", "condition", "query", "layer"]):
        frames = np.mean(np.stack(d["frame_mass"].map(np.asarray).tolist()), axis=0)
        rows.append(
            {
                "task": key[0],
                "condition": key[1],
                "query": key[2],
                "layer": key[3],
                "n": len(d),
                "video_mass": d["video_mass"].mean(),
                "frame_mass": frames.tolist(),
            }
        )
    return pd.DataFrame(rows)
