"""Attention maps (paper Fig. 6): attention from the last token and from the question
tokens to the video tokens, per layer, aggregated per frame; baseline and a chosen plan.

Beside these group means, the paper's own view (``analysis/attention_visualization.py``):
one map per chosen question word (``query_words``; with ``view="query-words"`` and no words,
every word of the raw question), keys = the video tokens, heads averaged, one band per
layer of a chosen range (the paper shows layers 11-20, ``layers=range(10, 20)``), drawn on
the colour scale ``log10(5e-5 + a)``. Words, given or automatic, are matched the same way
(:func:`question_word_positions`): by default only inside the raw question
(``question_no_options``, not the template's "Question:" nor the options); with
``word_span="to-last"`` (the paper's, in ``--paper``: its loop and its task word lists
reach the options, 'left', 'right') from the raw question's first token to the last token,
options and answer prompt included; whole words only (runs of letters,
punctuation and digits excluded: "shr" does not match "shrinks"), case-sensitive, the
first occurrence; a word's map is the attention of the word's own last token. (The
paper's map is not: its rows are indexed from the "Question:" token, its labels from the
raw question's first token, so the map it labels "What" is the row of the token two places
earlier on the LLaVA layout; a defect not reproduced, see docs/paper-parity.md.) Records
of these maps have ``query = "word:<word>"``. A given word that a sample's question lacks
is skipped for that sample only: its other maps are kept and its records' ``note`` says so
(the report lists these notes).

Only the layers being read compute attention weights (they alone run eager attention for
the pass), and each layer's weights are reduced to one row per query group at once, so
no ``N x N`` weight matrix is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..cuts import Cut, Plan, layer_ranges, parse_layers
from ..errors import PlanError
from ..layout import TokenLayout, check_group
from ..models.base import Prepared
from ..models.regions import grid_entry, grid_values
from .base import (
    ANALYSES,
    Analysis,
    Overlays,
    as_layers,
    as_names,
    check_sample_mode,
    frame_region_of,
    option,
    overlay_path,
    overlay_samples,
    video_grid,
)
from .logit_lens import split_words
from .targets import TARGETS, parse_edges

if TYPE_CHECKING:
    from ..probe import Probe
    from ..report import Section
    from ..rundir import RunDir


@ANALYSES.register("attention", "attention from last/question tokens to each frame, baseline vs a plan")
@dataclass
class AttentionMaps(Analysis):
    """Attention from the last and question tokens to each frame, baseline vs a plan.

    One record per sample x condition x layer x query group: attention mass per frame and per
    video token."""

    name: ClassVar[str] = "attention"
    order: ClassVar[int] = 40
    layers: tuple[int, ...] | None = option(
        None, "layers to read, 0-based, e.g. 0-7 (default all)", cli=str, parse=parse_layers
    )
    queries: tuple[str, ...] = ("last", "question")
    compare: str | None = option(
        "cross-frame",
        "plan drawn beside the baseline: a target or SRC->DST[,..]; 'none' for baseline only",
        cli=str,
        parse=lambda text: None if text in (None, "none") else text,
    )
    compare_layers: tuple[int, ...] | None = option(
        None, "layers the comparison plan blocks (default all)", cli=str, parse=parse_layers
    )
    sample_mode: str = option("correct", "analyse the samples the model gets correct, wrong, or all")
    overlays: int = option(2, "samples drawn as heatmaps over their frames")
    query_words: tuple[str, ...] = option(
        (),
        "comma-separated question words, one attention map each (the paper's view)",
        cli=str,
        parse=split_words,
    )
    view: str = option("groups", "groups (query-group means) or query-words (one map per question word)")
    word_span: str = option(
        "question",
        "where query words are matched: question (the raw question only) or to-last (the "
        "paper's: from the raw question to the last token, options and answer prompt included)",
    )

    def __post_init__(self) -> None:
        check_sample_mode(self.sample_mode)
        self.layers = as_layers(self.layers)
        self.compare_layers = as_layers(self.compare_layers, "compare_layers")
        self.queries = as_names(self.queries, "queries") or ()
        self.query_words = split_words(self.query_words)
        if self.view not in VIEWS:
            raise PlanError(f"unknown attention view {self.view!r}; choose from {VIEWS}")
        check_word_span(self.word_span)
        if self.compare and self.compare not in TARGETS:
            parse_edges(self.compare)  # a typo in --compare stops the run before its first sample
        for q in self.queries:
            check_group(q)

    def config(self) -> dict[str, Any]:
        d = super().config()
        # the per-word view's options only when used, so earlier run folders still resume
        if not d["query_words"]:
            d.pop("query_words")
        if d["view"] == "groups":
            d.pop("view")
        if d["word_span"] == "question":
            d.pop("word_span")
        return d

    def comparison_plan(self, layout: TokenLayout, num_layers: int) -> Plan | None:
        """The plan drawn beside the baseline: a target's curves (all of them) or custom
        ``SRC->DST`` edges, blocked in ``compare_layers`` (default: every layer)."""
        if not self.compare:
            return None
        layers = self.compare_layers if self.compare_layers is not None else tuple(range(num_layers))
        if self.compare in TARGETS:
            edges = [e for _, es in TARGETS.get(self.compare)(layout) for e in es]
        else:
            edges = list(parse_edges(self.compare))
        return Plan(self.compare, tuple(Cut(s, d, layers) for s, d in edges))

    @torch.inference_mode()
    def records(self, probe: Probe) -> list[dict[str, Any]]:
        if not probe.base.keep(self.sample_mode):
            return []
        n_layers = probe.num_layers
        layers = self.layers if self.layers is not None else tuple(range(n_layers))
        layers = tuple(x for x in layers if 0 <= x < n_layers)  # a preset's range, clipped to the model
        if not layers:
            raise PlanError(f"none of the attention layers {self.layers} exists; the model has {n_layers}")
        layout = probe.layout
        notes: list[str] = []  # what this sample lacks, shown by the report
        words: dict[str, int] = {}
        if self.query_words or self.view == "query-words":
            words = question_word_positions(
                probe.adapter.tokenizer, probe.prepared, self.query_words, span=self.word_span
            )
            absent = [w for w in self.query_words if w not in words]
            if absent:
                listed = ", ".join(map(repr, absent))
                where = "this question" if self.word_span == "question" else "this question or its prompt"
                notes.append(f"query word{'s' if len(absent) > 1 else ''} {listed} not in {where}")
        positions = {f"word:{w}": np.array([pos]) for w, pos in words.items()}
        if not positions and not self.queries:
            sid = probe.prepared.sample.id
            raise PlanError(f"sample {sid!r}: nothing to draw; {'; '.join(notes) or 'no question words'}")
        video = layout.resolve("video")
        grid = {**video_grid(layout), **frame_region_of(probe)}
        conditions: list[tuple[str, Plan | None]] = [("baseline", None)]
        try:
            plan = self.comparison_plan(layout, probe.num_layers)
        except PlanError:
            if layout.num_frames >= 2:
                raise
            plan = None  # e.g. cross-frame: nothing to cut between the frames of a 1-frame sample
            notes.append(f"the {self.compare} comparison does not apply to a 1-frame sample: baseline only")
        if plan is not None:
            conditions.append((plan.name, plan))
        rows = []
        for condition, cut in conditions:
            reads = probe.attention(layers, self.queries, cut, positions=positions)
            for layer in layers:
                for group, weights in reads[layer].items():
                    w = weights.numpy()
                    rows.append(
                        {
                            "condition": condition,
                            "layer": layer,
                            "query": group,
                            "video_mass": float(w[video].sum()),
                            "frame_mass": [float(w[s.start : s.end].sum()) for s in layout.frames],
                            "token_attention": w[video].tolist(),
                            "row_sum": float(w.sum()),
                            "note": "; ".join(notes) or None,
                            **grid,
                        }
                    )
        return rows

    @classmethod
    def summarize(cls, records: pd.DataFrame) -> pd.DataFrame:
        return summarize_attention(records)

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section:
        return attention_section(records, run)


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
                "layer": int(key[3]),  # records hold floats (eval rows have no layer)
                "n": len(d),
                "video_mass": d["video_mass"].mean(),
                "frame_mass": frames.tolist(),
            }
        )
    return pd.DataFrame(rows)


def attention_section(rows: pd.DataFrame, run: RunDir) -> Section:
    """Attention mass of the query tokens on the video per layer, baseline against the
    comparison plan; per-frame heatmaps as PNG."""
    from ..report import Chart, Section, mean_ci
    from ..report.figures import save_figure
    from ..rundir import file_stem

    summary = summarize_attention(rows)
    section = Section("Attention to the video", summaries={"attention": summary})
    if summary.empty:
        return section
    for query in sorted(q for q in summary["query"].unique() if not str(q).startswith("word:")):
        data = mean_ci(rows[rows["query"] == query], ["task", "condition", "layer"], "video_mass")
        section.charts.append(
            Chart(
                f"Attention of the {query} tokens to the video",
                data,
                {
                    "attention mass on video tokens": (
                        "video_mass_mean",
                        ("video_mass_ci95_lo", "video_mass_ci95_hi"),
                    )
                },
                series=("condition",),
                zero_line=False,
                limits=(0.0, 1.0),
            )
        )
        path = run.figure_path(f"attention-frames-{query}")
        save_figure(attention_frames_figure(summary, query), path)
        section.figures[f"Attention of the {query} tokens to each frame (each layer's share)"] = path
    last = rows[rows["query"] == "last"]
    drawn = Overlays()
    if not last.empty and "video_grid" in last:
        layers = sorted(last["layer"].unique())
        shown = sorted({int(layers[len(layers) // 2]), int(layers[-1])})
        drawn = overlay_samples(last, run, "attention", "Attention over the frames")
        for sample, frames in drawn:
            d = last[last["sample_id"] == sample.id]
            maps = {
                str(c): {int(r.layer): np.asarray(r.token_attention) for r in g.itertuples()}
                for c, g in d.groupby("condition", sort=False)
            }
            first = d.iloc[0]
            region = first["frame_region"] if "frame_region" in d else None
            fig = attention_overlay_figure(
                frames,
                first["video_grid"],
                int(first["frames_per_group"]),
                maps,
                shown,
                sample,
                region if isinstance(region, (list, tuple, np.ndarray)) else None,
            )
            path = overlay_path(run, "attention", sample.id)
            save_figure(fig, path)
            section.figures[f"Attention over the frames: {sample.id}"] = path
    words = rows[rows["query"].astype(str).str.startswith("word:")]
    if not words.empty and "video_grid" in words:
        for sid in sorted(set(words["sample_id"].astype(str)))[: overlay_count(run)]:
            d = words[words["sample_id"].astype(str) == sid]
            first = d.iloc[0]
            for (query, condition), g in d.groupby(["query", "condition"], sort=False):
                word = str(query)[len("word:") :]
                maps = {int(r.layer): np.asarray(r.token_attention) for r in g.itertuples()}
                fig = query_word_figure(maps, first["video_grid"], word, str(condition))
                safe = "".join(c if c.isalnum() else "_" for c in word)
                path = run.figure_path(f"attention-words/{file_stem(f'{sid}-{safe}-{condition}')}")
                save_figure(fig, path)
                section.figures[f"Attention of {word!r} ({condition}), log10(5e-5 + a): {sid}"] = path
    section.notes = (
        "Mean over heads and query tokens of the attention weights on the video tokens, per layer; "
        f"'baseline' is the unmodified model{comparison_text(run)}. "
        "The per-frame heatmaps show each layer's share of that mass on each frame (rows sum to 1), "
        "so the early layers' larger mass does not darken the rest."
    )
    section.notes += sample_notes(rows)
    section.figures.update(drawn.kept)
    section.notes += drawn.note
    return section


def comparison_text(run: RunDir) -> str:
    """What the run's comparison condition cut, in the layers it really cut (its
    ``compare_layers``, 0-based as the option takes them; every layer when unset)."""
    config = run.manifest().get("config", {}).get("analyses", {}).get("attention", {})
    if "compare" in config and not config["compare"]:
        return " (no comparison drawn)"
    layers = config.get("compare_layers")
    where = (
        "in every layer"
        if not layers
        else f"in layers {layer_ranges(layers)} only (0-based, as --compare-layers takes them; "
        f"{layer_ranges([x + 1 for x in layers])} as the charts count)"
    )
    return f", the other condition the comparison cut ({config.get('compare') or 'cross-frame'}) {where}"


def sample_notes(rows: pd.DataFrame, shown: int = 10) -> str:
    """The records' per-sample ``note`` (what a sample could not draw, e.g. a query word
    its question lacks) as a sentence for the report; ``""`` when there is none."""
    if "note" not in rows:
        return ""
    noted = rows.dropna(subset=["note"]).drop_duplicates(["sample_id", "note"])
    if noted.empty:
        return ""
    said = "; ".join(f"{r.sample_id}: {r.note}" for r in noted.head(shown).itertuples())
    more = f" (and {len(noted) - shown} more)" if len(noted) > shown else ""
    return f" Not drawn for every sample: {said}{more}."


def attention_overlay_figure(
    frames: Any,
    grid: list[list[int]],
    frames_per_group: int,
    maps: dict[str, dict[int, Any]],
    layers: list[int],
    sample: Any,
    region: Any = None,
) -> Any:
    """The last token's attention to each video token drawn as a heatmap over the pixels the
    token was computed from (``region`` ``(x0, y0, x1, y1)``: the part of the frame the
    processor kept; default all of it); one row per condition and layer (baseline vs a plan
    side by side). ``maps``: condition -> layer -> weights over the video tokens; ``grid``
    as in :func:`video_grid`."""
    from ..report.figures import frame_axes, pyplot

    plt = pyplot()
    rows = [(c, layer) for c in maps for layer in layers if layer in maps[c]]
    groups = len(grid)
    fh, fw = frames[0].shape[:2]
    region = tuple(region) if region is not None else (0.0, 0.0, float(fw), float(fh))
    x0, y0, x1, y1 = region
    fig, axes = plt.subplots(
        len(rows),
        groups,
        figsize=(1.9 * fw / fh * groups + 1.0, 2.0 * len(rows) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    vmax = max(float(np.max(maps[c][layer])) for c, layer in rows) or 1.0
    image = None
    for r, (cond, layer) in enumerate(rows):
        w = maps[cond][layer]
        for t, entry in enumerate(grid):
            ax = axes[r][t]
            frame_axes(ax, frames[min(t * frames_per_group, len(frames) - 1)], region)
            heat = grid_values(w, entry)
            image = ax.imshow(heat, extent=(x0, x1, y1, y0), cmap="magma", alpha=0.6, vmin=0, vmax=vmax)
            ax.set_xlim(0, fw)
            ax.set_ylim(fh, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
            if t == 0:
                ax.set_ylabel(f"{cond}\nlayer {layer + 1}", fontsize=7)
    if image is not None:  # one scale for every panel
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.015, label="attention (head mean)")
    fig.suptitle(f"Attention of the last token to the video: {sample.id} ({sample.task})", fontsize=9)
    return fig


def attention_frames_figure(summary: pd.DataFrame, query: str = "last") -> Any:
    """How the attention of ``query`` tokens to the video splits over the frames (columns),
    by layer (rows), one panel per condition; tasks pooled. Each row is the layer's mean
    attention mass per frame divided by its sum (the layer's share on each frame), so the
    early layers' much larger mass does not darken the rest; the mass itself is the
    section's chart. One colour scale for all panels."""
    from ..report.figures import pyplot

    plt = pyplot()
    data = summary[summary["query"] == query]
    conds = list(dict.fromkeys(data["condition"]))
    panels = {}
    for cond in conds:
        d = data[data["condition"] == cond]
        layers = sorted(d["layer"].unique())
        grid = np.stack(
            [
                np.mean(np.stack(d[d["layer"] == layer]["frame_mass"].map(np.asarray).tolist()), axis=0)
                for layer in layers
            ]
        )
        total = grid.sum(axis=1, keepdims=True)
        panels[cond] = (layers, np.divide(grid, total, out=np.zeros_like(grid), where=total > 0))
    vmax = max(float(g.max()) for _, g in panels.values()) or 1.0
    fig, axes = plt.subplots(
        1, len(conds), figsize=(3.8 * len(conds) + 1.0, 3.6), squeeze=False, layout="constrained"
    )
    for ax, cond in zip(axes[0], conds, strict=True):
        layers, grid = panels[cond]
        # one row per layer read (row k = layers[k], even when the layers skip some),
        # labelled with its 1-based number as the other figures
        im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower", vmin=0.0, vmax=vmax)
        ticks = list(range(0, len(layers), max(1, -(-len(layers) // 12))))
        ax.set_yticks(ticks, [str(int(layers[k]) + 1) for k in ticks])
        ax.set_xticks(range(grid.shape[1]))
        ax.set_xlabel("frame")
        ax.set_ylabel("layer")
        ax.set_title(f"{query} -> frames: {cond}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.046, label="share of the layer's video attention")
    return fig


VIEWS = ("groups", "query-words")
#: where query words are matched: the raw question, or (the paper's) from it to the last token
WORD_SPANS = ("question", "to-last")
LOG_FLOOR = 5e-5  # the paper's constant: colour = log10(5e-5 + attention)


def check_word_span(span: str) -> None:
    """A ``PlanError`` unless ``span`` is one of :data:`WORD_SPANS`."""
    if span not in WORD_SPANS:
        raise PlanError(f"unknown attention word span {span!r}; choose from {WORD_SPANS}")


def overlay_count(run: RunDir) -> int:
    """The run's ``overlays`` option of the attention analysis (samples drawn)."""
    config = run.manifest().get("config", {})
    return int(config.get("analyses", {}).get("attention", {}).get("overlays", 0) or 0)


def question_word_positions(
    tokenizer: Any, prepared: Prepared, words: tuple[str, ...], span: str = "question"
) -> dict[str, int]:
    """Word -> the position of its last token, for the words of the raw question
    (``question_no_options``: neither the template's "Question:" nor the options), or with
    ``span="to-last"`` the paper's span: from the raw question's first token to the last
    token, the options and the answer prompt included (its task word lists are mostly
    option words: 'left', 'right'; 'From', 'to').

    The question's words are its runs of letters (punctuation and digits excluded); a word
    that occurs more than once maps to its first occurrence; matching is case-sensitive. With
    no ``words``: every word of the question. With ``words``: those of them that are whole
    words of the question ("shr" does not match "shrinks", "up" not an option "(C) up");
    a word the question lacks is left out of the result."""
    import re

    from .verbs import token_char_spans

    ids = prepared.inputs["input_ids"][0].tolist()
    check_word_span(span)
    raw = prepared.layout.question_no_options
    end = raw.end if span == "question" else prepared.layout.last + 1
    text, spans = token_char_spans(tokenizer, ids[raw.start : end])
    found: dict[str, int] = {}
    for m in re.finditer(r"[^\W\d_]+", text):
        last = next((k for k, (c0, c1) in enumerate(spans) if c0 < m.end() <= c1), None)
        if last is not None:
            found.setdefault(m.group(), raw.start + last)
    if not words:
        return found
    return {w: found[w] for w in words if w in found}


def log_attention(a: np.ndarray) -> np.ndarray:
    """The paper's colour scale for attention maps: ``log10(5e-5 + a)``."""
    return np.log10(LOG_FLOOR + np.asarray(a, dtype=np.float64))


def query_word_figure(maps: dict[int, Any], grid: list[list[int]], word: str, condition: str) -> Any:
    """The paper's attention map of one question word: one band per layer (rows), the
    frames side by side (columns), each frame its token grid (``grid`` as in
    :func:`video_grid`); colour ``log10(5e-5 + a)`` with the map's own min and max (as the
    paper)."""
    from ..report.figures import pyplot

    plt = pyplot()
    layers = sorted(maps)
    bands = []
    for layer in layers:
        w = np.asarray(maps[layer])
        cells = [grid_values(w, entry) for entry in grid]
        height = max(c.shape[0] for c in cells)
        cells = [np.pad(c, ((0, height - c.shape[0]), (0, 0)), constant_values=np.nan) for c in cells]
        bands.append(np.concatenate(cells, axis=1))
    width = max(b.shape[1] for b in bands)
    image = np.concatenate(
        [np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=np.nan) for b in bands]
    )
    image = log_attention(image)
    fig, ax = plt.subplots(
        figsize=(2.0 + 0.25 * image.shape[1], 1.4 + 0.25 * image.shape[0]), layout="constrained"
    )
    im = ax.imshow(image, cmap="viridis", vmin=np.nanmin(image), vmax=np.nanmax(image), aspect="equal")
    band = image.shape[0] // max(1, len(layers))
    ax.set_yticks([k * band + band / 2 - 0.5 for k in range(len(layers))], [str(x + 1) for x in layers])
    for k in range(1, len(layers)):  # between layers
        ax.axhline(k * band - 0.5, color="white", lw=0.4, alpha=0.6)
    # the frames side by side: a line between two frames' token grids, each labelled
    edges = np.cumsum([0] + [grid_entry(entry)[2] for entry in grid])
    for x in edges[1:-1]:
        ax.axvline(x - 0.5, color="white", lw=1.0)
    ax.set_xticks((edges[:-1] + edges[1:]) / 2 - 0.5, [str(t) for t in range(len(grid))])
    ax.tick_params(labelsize=7)
    ax.set_xlabel("frame (its grid of video tokens)")
    ax.set_ylabel("layer")
    ax.set_title(f'{condition} (query: "{word}")', fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="log10(5e-5 + attention)")
    return fig
