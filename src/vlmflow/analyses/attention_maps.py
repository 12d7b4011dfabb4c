"""Attention maps (paper Fig. 6): attention from the last token and from the question
tokens to the video tokens, per layer, aggregated per frame; baseline and a chosen plan.

Beside these group means, the paper's own view (``analysis/attention_visualization.py``):
one map per chosen question word (``query_words``; with ``view="query-words"`` and no words,
every word of the raw question), keys = the video tokens, heads averaged, one band per
layer of a chosen range (the paper shows layers 11-20, ``layers=range(10, 20)``), drawn on
the colour scale ``log10(5e-5 + a)``. A word is a run of question tokens whose texts join
to it; its map is the attention of the run's last token (for a one-token word, exactly the
paper's). Records of these maps have ``query = "word:<word>"``.

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
    query_words: tuple[str, ...] = ()
    view: str = "groups"
    out_dir: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.sample_mode not in SAMPLE_MODES:
            raise PlanError(f"unknown sample mode {self.sample_mode!r}; choose from {SAMPLE_MODES}")
        if self.view not in VIEWS:
            raise PlanError(f"unknown attention view {self.view!r}; choose from {VIEWS}")
        if self.compare and self.compare not in TARGETS:
            parse_edges(self.compare)  # a typo in --compare stops the run before its first sample
        for q in self.queries:
            check_group(q)
        self._drawn = 0

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out_dir")
        # the per-word view's options only when used, so earlier run folders still resume
        if not d["query_words"]:
            d.pop("query_words")
        if d["view"] == "groups":
            d.pop("view")
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
        layers = tuple(x for x in layers if 0 <= x < n_layers)  # a preset's range, clipped to the model
        if not layers:
            raise PlanError(f"none of the attention layers {self.layers} exists; the model has {n_layers}")
        layout = prepared.layout
        queries = {q: layout.resolve(q) for q in self.queries}
        words = {}
        if self.query_words or self.view == "query-words":
            words = question_word_positions(adapter.tokenizer, prepared, self.query_words)
            queries.update({f"word:{w}": np.array([pos]) for w, pos in words.items()})
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
        if words and self.out_dir and self._drawn < self.overlays:
            self._draw_words(prepared, rows, list(words), layers)
        if self.out_dir and self._drawn < self.overlays and prepared.frames is not None:
            from ..report.figures import attention_overlay_figure, save_figure

            show = sorted({layers[len(layers) // 2], layers[-1]})
            region = adapter.frame_region(*prepared.frames.shape[1:3])
            fig = attention_overlay_figure(prepared.frames, prepared.sample, layout, maps, show, region)
            save_figure(fig, Path(self.out_dir) / "figures" / "attention" / f"{prepared.sample.id}.png")
            self._drawn += 1
        return rows

    def _draw_words(
        self, prepared: Prepared, rows: list[dict[str, Any]], words: list[str], layers: Any
    ) -> None:
        from ..report.figures import query_word_figure, save_figure

        folder = Path(self.out_dir) / "figures" / "attention-words"
        for word in words:
            for condition in dict.fromkeys(r["condition"] for r in rows):
                maps = {
                    r["layer"]: np.asarray(r["token_attention"])
                    for r in rows
                    if r["query"] == f"word:{word}" and r["condition"] == condition
                }
                fig = query_word_figure(maps, prepared.layout, word, condition)
                safe = "".join(c if c.isalnum() else "_" for c in word)
                save_figure(fig, folder / f"{prepared.sample.id}-{safe}-{condition}.png")


VIEWS = ("groups", "query-words")
LOG_FLOOR = 5e-5  # the paper's constant: colour = log10(5e-5 + attention)


def question_word_positions(tokenizer: Any, prepared: Prepared, words: tuple[str, ...]) -> dict[str, int]:
    """Word -> the position of its (first occurrence's) last token among the question's
    tokens. A word matches a run of question tokens whose stripped texts join to it. With
    no ``words``: every alphabetic word of the raw question (``question_no_options``)."""
    ids = prepared.inputs["input_ids"][0].tolist()
    span = prepared.layout.question
    pieces = [tokenizer.decode([ids[i]]).strip() for i in range(span.start, span.end)]
    if not words:
        import re

        from .verbs import token_char_spans

        raw = prepared.layout.question_no_options
        text, spans = token_char_spans(tokenizer, ids[raw.start : raw.end])
        found: dict[str, int] = {}
        for m in re.finditer(r"[^\W\d_]+", text):
            last = next((k for k, (c0, c1) in enumerate(spans) if c0 < m.end() <= c1), None)
            if last is not None:
                found.setdefault(m.group(), raw.start + last)
        return found
    out: dict[str, int] = {}
    for word in words:
        for a in range(len(pieces)):
            joined = ""
            for b in range(a, len(pieces)):
                joined += pieces[b]
                if joined == word:
                    out.setdefault(word, span.start + b)
                if len(joined) >= len(word):
                    break
            if word in out:
                break
        if word not in out:
            raise PlanError(
                f"sample {prepared.sample.id!r}: query word {word!r} is not among the question's tokens"
            )
    return out


def log_attention(a: np.ndarray) -> np.ndarray:
    """The paper's colour scale for attention maps: ``log10(5e-5 + a)``."""
    return np.log10(LOG_FLOOR + np.asarray(a, dtype=np.float64))


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
