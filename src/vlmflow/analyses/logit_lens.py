"""Logit lens on video tokens (paper §5 / Fig. 4-5).

Project each video token's residual stream at every layer into the vocabulary and keep
the top-k tokens. ``projection="unembed"`` is the standard lens (final norm + output
head); ``"embed"`` multiplies by the input embedding matrix, with the final norm applied
only at the last layer, as the paper's code did. Layers are indexed correctly:
``layer = -1`` is the embeddings (input of decoder layer 0) and ``layer = l`` the output
of decoder layer ``l`` (the paper's code skipped the output of layer L-2 and labelled
inputs as layers).

A keyword *hit* is a top-1 token equal to a keyword's first sub-token in its word-initial form
(as the paper on its SentencePiece tokenizer; see :func:`first_subtoken`).

Two keyword statistics are computed from the records: :func:`summarize_logit_lens`, per
layer the share of video tokens that are a spatial / temporal hit (vlmflow's view), and
:func:`keyword_frequency`, the paper's figure: per keyword, hits summed over bins of
layers, keywords with fewer than ``min_hits`` hits dropped, each keyword's row normalised
to 1, then averaged over keywords, per task (as the paper). ``bins="paper"`` reproduces
the paper's code exactly: its bins of 5 are label-inclusive ``.loc`` slices that sum 6
layers (adjacent bins share one), and its layer ``i`` is the input of decoder layer ``i``
(layer ``L-1`` the final normed output, so the output of layer ``L-2`` is never counted).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch

from ..errors import PlanError
from ..models.base import Adapter
from .base import (
    ANALYSES,
    Analysis,
    check_sample_mode,
    frame_region_of,
    option,
    overlay_path,
    overlay_samples,
    video_grid,
)

if TYPE_CHECKING:
    from ..probe import Probe
    from ..report import Section
    from ..rundir import RunDir

PROJECTIONS = ("unembed", "embed")
BINS = ("exact", "paper")

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


def split_words(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"red, blue"`` -> ``("red", "blue")``; words already apart (a tuple) stay as given."""
    if text is None or not isinstance(text, str):
        return tuple(text or ())
    return tuple(w.strip() for w in text.split(",") if w.strip())


@ANALYSES.register("logit-lens", "top vocabulary tokens of every video token at every layer")
@dataclass
class LogitLens(Analysis):
    """Logit lens on the video tokens: top vocabulary tokens per layer, keyword frequency.

    One record per sample x layer (``-1`` = embeddings): top-k tokens per video token and
    keyword hit counts."""

    name: ClassVar[str] = "logit-lens"
    order: ClassVar[int] = 30
    needs_knockout: ClassVar[bool] = False
    version: ClassVar[int] = 2
    changes: ClassVar[dict[int, str]] = {
        2: "a keyword is its word-initial first sub-token on every tokenizer (byte-level ones such "
        "as SmolLM2's and Qwen's split the bare word into fragments that never matched), which "
        "changes the records' keyword hits and words (74ed09f)",
    }
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
    bin_size: int = option(5, "layers per bin of the keyword-frequency table")
    bins: str = option(
        "exact", "keyword-frequency layer bins: exact, or paper (its label-inclusive 6-layer slices)"
    )
    min_hits: int = option(100, "keywords with fewer hits are left out of the keyword-frequency table")

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise PlanError(f"unknown projection {self.projection!r}; choose from {PROJECTIONS}")
        if self.bins not in BINS:
            raise PlanError(f"unknown layer binning {self.bins!r}; choose from {BINS}")
        if self.bin_size < 1:
            raise PlanError("bin_size must be >= 1")
        check_sample_mode(self.sample_mode)
        # "left, right" is two words, not its characters
        self.spatial, self.temporal = split_words(self.spatial), split_words(self.temporal)
        # a preset's keyword the tokenizer cannot represent is left out with a warning; one
        # the user gave is refused (see first_subtoken)
        self._preset = not (self.spatial or self.temporal)
        if not (self.spatial or self.temporal):
            if self.words not in WORD_PRESETS:
                raise PlanError(
                    f"unknown word list preset {self.words!r}; choose from {sorted(WORD_PRESETS)}"
                )
            self.spatial, self.temporal = WORD_PRESETS[self.words]

    def config(self) -> dict[str, Any]:
        d = super().config()
        # the keyword-frequency options only when changed, so earlier run folders still resume
        for key, default in (("bin_size", 5), ("bins", "exact"), ("min_hits", 100)):
            if d[key] == default:
                d.pop(key)
        return d

    def _first_subtokens(self, adapter: Adapter, words: tuple[str, ...]) -> dict[str, str]:
        """keyword -> the decoded text (stripped) of its first sub-token, :func:`first_subtoken`.
        A preset's keyword whose sub-token is whitespace is left out with a warning."""
        out = {}
        for w in words:
            try:
                out[w] = first_subtoken(adapter.tokenizer, w)
            except PlanError as e:
                if not getattr(self, "_preset", False):
                    raise
                warnings.warn(f"{e} (left out of the {self.words!r} word list)", stacklevel=2)
        return out

    def keywords(self, adapter: Adapter) -> tuple[set[str], set[str]]:
        """The spatial and temporal keywords as their first sub-tokens' text on ``adapter``'s
        tokenizer, resolved once per tokenizer (a keyword given by the user that it cannot
        represent: :class:`PlanError`)."""
        cache = self.__dict__.setdefault("_keywords", {})
        key = id(adapter.tokenizer)
        if key not in cache:
            cache[key] = (
                set(self._first_subtokens(adapter, self.spatial).values()),
                set(self._first_subtokens(adapter, self.temporal).values()),
            )
        return cache[key]

    def check_model(self, adapter: Adapter) -> None:
        """Resolve the keywords on the loaded model's tokenizer once, before any sample, so
        that a keyword it cannot represent stops the run instead of failing every sample."""
        self.keywords(adapter)

    @torch.inference_mode()
    def records(self, probe: Probe) -> list[dict[str, Any]]:
        adapter, prepared, engine = probe.adapter, probe.prepared, probe.engine
        if not probe.base.keep(self.sample_mode):
            return []
        lm = engine.lm
        video = torch.from_numpy(prepared.layout.resolve("video")).to(engine.device)
        spatial, temporal = self.keywords(adapter)
        grid = video_grid(prepared.layout)
        region = frame_region_of(probe)
        rows = []
        streams = engine.hidden_states
        for stream, hidden in enumerate(streams):
            layer = stream - 1
            h = hidden[0].index_select(0, video)
            logits = lens_logits(lm, h, self.projection, last=stream == len(streams) - 1)
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
                    "spatial_words": sorted(spatial),
                    "temporal_words": sorted(temporal),
                    "num_layers": lm.num_layers,
                    "bin_size": self.bin_size,
                    "bins": self.bins,
                    "min_hits": self.min_hits,
                    "top1": top1,
                    "topk": words if self.topk > 1 else None,
                    **grid,
                    **region,
                }
            )
        return rows

    @classmethod
    def summarize(cls, records: pd.DataFrame) -> pd.DataFrame:
        return summarize_logit_lens(records)

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section:
        return logit_lens_section(records, run)


def first_subtoken(tokenizer: Any, word: str) -> str:
    """The decoded text (stripped) of ``word``'s first sub-token in its word-initial form,
    the form it has after a space in running text.

    The paper takes ``tokenizer(word, add_special_tokens=False).input_ids[0]``. On its Llama
    SentencePiece tokenizer that is word-initial (the tokenizer prepends "▁": "▁cabinet"),
    and this gives the same sub-token. Byte-level BPE tokenizers (SmolLM2, Qwen) prepend no
    space, so the word alone splits into fragments ("appears" -> "app") that a word-initial
    top token ("Ġappears") never equals: here the word is tokenized after a short prefix
    ("a " + word) and the first sub-token after the prefix's tokens is taken. A keyword whose
    sub-token decodes to nothing but whitespace would count every whitespace token as a hit:
    :class:`PlanError`. A word opening with a non-ASCII character whose first sub-token is
    the bare space or a partial UTF-8 byte is read as its first sub-tokens joined until they
    decode cleanly; one that never does, or that the tokenizer reads as its unknown token, is
    refused."""
    alone = tokenizer(word, add_special_tokens=False)["input_ids"]
    prefix = tokenizer("a", add_special_tokens=False)["input_ids"]
    context = tokenizer("a " + word, add_special_tokens=False)["input_ids"]
    if context[: len(prefix)] == prefix and len(context) > len(prefix):
        ids = context[len(prefix) :]
    else:  # the prefix merged with the word: the word on its own
        ids = alone
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids[:1]:
        raise PlanError(
            f"logit-lens keyword {word!r}: this tokenizer has no token for its first character "
            f"(it is read as {tokenizer.decode([unk])!r}, which would match every unknown character); "
            "leave it out of --spatial/--temporal"
        )
    # a word that opens with a non-ASCII character: byte-level BPE may leave the space's byte
    # token ("Ġ") alone and split the character into partial UTF-8 byte tokens that decode to
    # U+FFFD (hundreds of vocabulary tokens do, so any would count as a hit): the first
    # sub-tokens are joined until their text decodes cleanly ("été" -> "é", "左" -> "左")
    merge_space = bool(word.strip()) and not word.strip()[0].isascii()
    text, k = "", 0
    for k in range(1, len(ids) + 1):
        if unk is not None and unk in ids[:k]:
            break
        text = tokenizer.decode(ids[:k])
        if "\ufffd" in text or (merge_space and not text.strip()):
            continue
        break
    if "\ufffd" in text or (unk is not None and unk in ids[:k]):
        raise PlanError(
            f"logit-lens keyword {word!r}: its first sub-tokens on this tokenizer never decode to "
            f"clean text ({text!r}: partial UTF-8 bytes or an unknown token), so it cannot be "
            "matched against a layer's top token; leave it out of --spatial/--temporal"
        )
    text = text.strip()
    if not text:
        raise PlanError(
            f"logit-lens keyword {word!r}: its first sub-token on this tokenizer decodes to "
            f"{tokenizer.decode(ids[:1])!r}, which would match every whitespace token; "
            "leave it out of --spatial/--temporal"
        )
    return text


def lens_logits(lm: Any, hidden: torch.Tensor, projection: str, *, last: bool = False) -> torch.Tensor:
    """``(n, d)`` residual states -> ``(n, vocab)`` lens logits. ``embed`` applies the final
    norm only to the ``last`` layer's output, as the paper's code (its hook on the norm)."""
    if projection == "unembed":
        return lm.lm_head(lm.norm(hidden)).float()
    weight = lm.embed_tokens.weight
    if last:
        hidden = lm.norm(hidden)
    return (hidden.to(weight.dtype) @ weight.T).float()


def layer_counts(records: pd.DataFrame, words: list[str]) -> pd.DataFrame:
    """Keyword x layer hit counts summed over the records (columns: record layers)."""
    layers = sorted(int(x) for x in records["layer"].unique())
    table = pd.DataFrame(0, index=words, columns=layers, dtype="int64")
    for layer, hits in zip(records["layer"], records["hits"], strict=True):
        for w, c in (hits or {}).items():
            if w in table.index and c is not None:
                table.loc[w, int(layer)] += int(c)
    return table


def keyword_frequency(
    counts: pd.DataFrame,
    num_layers: int,
    *,
    bin_size: int = 5,
    bins: str = "exact",
    min_hits: int = 100,
) -> pd.DataFrame:
    """The paper's keyword-frequency statistic from keyword x layer hit ``counts``.

    ``counts`` columns are vlmflow layers (``-1`` = embeddings, ``l`` = output of decoder
    layer ``l``). ``bins="exact"``: the decoder layers' outputs ``0..L-1`` in bins of
    ``bin_size`` layers. ``bins="paper"``: the paper's layers (its layer ``i`` is vlmflow's
    ``i-1`` for ``i < L-1`` and vlmflow's ``L-1`` for ``i = L-1``) in its label-inclusive
    bins ``[s, s + bin_size]`` (6 layers for bins of 5, clipped at the end). Bins are named
    ``"1-5"``, ``"6-10"``, ... (1-based, as the paper; a ``paper`` bin keeps its name though it
    sums one layer more), the last one ending at the model's last layer (``"11-12"`` for 12
    layers, ``"11"`` for 11). Keywords whose binned counts sum to
    fewer than ``min_hits`` are dropped (with ``paper`` bins the shared layers count twice,
    as in the paper's code); each remaining row is divided by its sum. The result has one
    row per kept keyword plus ``"MEAN"`` (the mean of the normalised rows: the paper's
    figure, its ``ALL_NORM``) and a ``hits`` column of raw binned totals.
    """
    if bins not in BINS:
        raise PlanError(f"unknown layer binning {bins!r}; choose from {BINS}")
    if bins == "paper":
        source = [i - 1 for i in range(num_layers - 1)] + [num_layers - 1]
    else:
        source = list(range(num_layers))
    per_layer = counts.reindex(columns=source, fill_value=0)
    per_layer.columns = range(num_layers)  # relabelled 0..L-1
    extra = 1 if bins == "paper" else 0
    table = {}
    for start in range(0, num_layers, bin_size):
        end = start + bin_size - 1
        cols = [c for c in range(start, end + 1 + extra) if c < num_layers]
        last = min(end, num_layers - 1) + 1  # the label stops at the model's last layer
        table[f"{start + 1}-{last}" if last > start + 1 else f"{start + 1}"] = per_layer[cols].sum(axis=1)
    raw = pd.DataFrame(table, index=counts.index)
    raw = raw[raw.sum(axis=1) >= min_hits]
    norm = raw.div(raw.sum(axis=1), axis=0)
    if not norm.empty:
        norm.loc["MEAN"] = norm.mean(axis=0)
    norm["hits"] = raw.sum(axis=1).reindex(norm.index)
    if "MEAN" in norm.index:
        norm.loc["MEAN", "hits"] = raw.values.sum()
    return norm


def summarize_keyword_frequency(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's keyword-frequency tables (``spatial``, ``temporal``) of logit-lens
    records, one block per task (column ``task``; the paper builds one table per task), with
    the binning the run asked for (see :func:`keyword_frequency`)."""
    df = records[(records["analysis"] == "logit-lens")]
    if "error" in df:
        df = df[df["error"].isna()]
    if df.empty or "spatial_words" not in df:
        return {}
    first = df.iloc[0]
    out = {}
    for kind in ("spatial", "temporal"):
        tables = []
        for task, d in df.groupby("task", sort=True):
            words = sorted({w for ws in d[f"{kind}_words"] for w in (ws if ws is not None else [])})
            if not words:
                continue
            table = keyword_frequency(
                layer_counts(d, words),
                int(first["num_layers"]),
                bin_size=int(first["bin_size"]),
                bins=str(first["bins"]),
                min_hits=int(first["min_hits"]),
            )
            tables.append(table.reset_index(names="keyword").assign(task=task))
        if tables:
            table = pd.concat(tables, ignore_index=True)
            out[kind] = table[["task", *table.columns.drop("task")]]
    return out


def summarize_logit_lens(records: pd.DataFrame) -> pd.DataFrame:
    """Per task x layer: the fraction of video tokens whose top-1 token is a spatial or a
    temporal keyword. ``layer`` as in the records (integers, ``-1`` = the embeddings, ``l`` =
    the output of decoder layer ``l``), as ``summary/logit-lens.csv`` has it."""
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
    ).reset_index()
    out["layer"] = out["layer"].astype(int)  # the records' layers: -1 = embeddings
    return out


def empty_keyword_tables_note(records: pd.DataFrame, tables: dict[str, pd.DataFrame] | None = None) -> str:
    """One line per keyword-frequency table left with no keyword row because no keyword
    reached ``min_hits`` (usual on small runs: the paper's threshold is 100 hits), naming the
    option; ``""`` when every table has rows."""
    df = records[records["analysis"] == "logit-lens"]
    if df.empty or "spatial_words" not in df:
        return ""
    tables = summarize_keyword_frequency(records) if tables is None else tables
    min_hits = int(df.iloc[0]["min_hits"])
    empty = [k for k in ("spatial", "temporal") if k in tables and tables[k].empty]
    return " ".join(
        f"logit-lens-keywords-{kind} is empty: no {kind} keyword reached {min_hits} hits "
        f"(--min-hits / min_hits; lower it for a small run)."
        for kind in empty
    )


def logit_lens_section(rows: pd.DataFrame, run: RunDir) -> Section:
    """Per layer, the share of video tokens whose top-1 lens token is a spatial or a
    temporal keyword, and the most frequent top-1 tokens."""
    from ..report import Chart, Section, mean_ci
    from ..report.figures import save_figure

    summary = summarize_logit_lens(rows)
    section = Section("Logit lens on video tokens", summaries={"logit-lens": summary})
    if summary.empty:
        return section
    keyword_tables = summarize_keyword_frequency(rows)
    for kind, table in keyword_tables.items():
        section.summaries[f"logit-lens-keywords-{kind}"] = table
    parts = []
    for column, label in (("spatial_hits", "spatial words"), ("temporal_hits", "temporal words")):
        data = rows[["task", "layer"]].assign(rate=rows[column] / rows["n_video"])
        parts.append(mean_ci(data, ["task", "layer"], "rate").assign(words=label))
    rates = pd.concat(parts, ignore_index=True)
    section.charts.append(
        Chart(
            "Video tokens whose top-1 lens token is a keyword",
            rates,
            {"fraction of video tokens": ("rate_mean", ("rate_ci95_lo", "rate_ci95_hi"))},
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
                    "layer": int(layer),  # as in the records and logit-lens.csv: -1 = embeddings
                    "most frequent top-1 tokens (share)": ", ".join(
                        f"{w!r} {c / max(1, len(words)):.0%}" for w, c in common.items()
                    ),
                }
            )
        section.summaries["logit-lens-top-tokens"] = pd.DataFrame(top)
    path = run.figure_path("logit-lens")
    save_figure(lens_frequency_figure(summary, bands=rates), path)
    section.figures["Keyword frequency by layer"] = path
    n_layers = int(rows["layer"].max()) + 1
    shown = sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})
    drawn = overlay_samples(rows, run, "logit-lens", "Lens tokens over the frames")
    for sample, frames in drawn:
        d = rows[rows["sample_id"] == sample.id]
        if "video_grid" not in d or d["video_grid"].isna().all():
            continue
        tops = {int(r.layer): r.top1 for r in d.itertuples()}
        first = d.iloc[0]
        region = first.get("frame_region") if "frame_region" in d else None
        fig = lens_overlay_figure(
            frames,
            first["video_grid"],
            int(first["frames_per_group"]),
            tops,
            shown,
            sample,
            None if region is None or not isinstance(region, (list, tuple)) and pd.isna(region) else region,
        )
        path = overlay_path(run, "logit-lens", sample.id)
        save_figure(fig, path)
        section.figures[f"Lens tokens over the frames: {sample.id}"] = path
    projection = ", ".join(sorted(map(str, rows["projection"].unique()))) if "projection" in rows else "?"
    section.notes = (
        f"Projection: {projection} ('unembed': final norm and output head, the standard lens; "
        "'embed': the input embedding matrix, as the paper's code). The charts and figures count "
        "layers from 1 with 0 = the embeddings; the summary tables (logit-lens, "
        "logit-lens-top-tokens) keep the records' layers: -1 = the embeddings, l = the output of "
        "decoder layer l (0-based). A hit is a top-1 token equal to a keyword's first sub-token. "
        "The logit-lens-keywords tables are the paper's statistic, per task: per keyword, hits in "
        "bins of layers (named 1-based), keywords with too few hits dropped, rows normalised, MEAN "
        "their average."
    )
    if note := empty_keyword_tables_note(rows, keyword_tables):
        section.notes += " " + note
    section.figures.update(drawn.kept)
    section.notes += drawn.note
    return section


def lens_frequency_figure(summary: pd.DataFrame, bands: pd.DataFrame | None = None) -> Any:
    """Per layer: how often a video token's top-1 lens token is a spatial / temporal word.

    ``bands``: the 95% band of the samples' mean rate (columns ``task``, ``layer``, ``words``
    = ``"spatial words"`` / ``"temporal words"``, ``rate_ci95_lo``, ``rate_ci95_hi``), drawn
    around each task's curve (the curve pools the video tokens of all samples, the same value
    when every sample has as many video tokens)."""
    from ..report.figures import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, col, title in zip(
        axes, ["spatial_rate", "temporal_rate"], ["spatial words", "temporal words"], strict=True
    ):
        for task, d in summary.groupby("task"):
            d = d.sort_values("layer")
            (line,) = ax.plot(d["layer"] + 1, d[col], marker="o", ms=3, label=str(task))
            if bands is not None:
                b = bands[(bands["task"] == task) & (bands["words"] == title)].sort_values("layer")
                lo, hi = b["rate_ci95_lo"], b["rate_ci95_hi"]
                ax.fill_between(b["layer"] + 1, lo, hi, color=line.get_color(), alpha=0.2)
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
    region: Any = None,
) -> Any:
    """The top-1 lens word of every video token drawn over the pixels it was computed from,
    for a few layers.

    ``grid``: per frame group ``[offset among the video tokens, h, w]`` (see
    :func:`~vlmflow.analyses.base.video_grid`); ``tops``: layer -> top-1 word per video token;
    ``frames`` those the model was fed; ``region`` ``(x0, y0, x1, y1)`` the part of a frame
    the processor kept (its centre crop; default the whole frame): the grid is laid over it
    and the rest is dimmed.
    """
    from ..models.regions import grid_entry, token_centres
    from ..report.figures import frame_axes, pyplot

    plt = pyplot()
    groups = len(grid)
    fh, fw = frames[0].shape[:2]
    region = tuple(region) if region is not None else (0.0, 0.0, float(fw), float(fh))
    aspect = fw / fh
    fig, axes = plt.subplots(
        len(layers), groups, figsize=(2.0 * aspect * groups, 2.1 * len(layers)), squeeze=False
    )
    for r, layer in enumerate(layers):
        words = tops[layer]
        for t, entry in enumerate(grid):
            start, h, w, order = grid_entry(entry)
            ax = axes[r][t]
            frame_axes(ax, frames[min(t * frames_per_group, len(frames) - 1)], region)
            for k, (x, y) in enumerate(token_centres((h, w), region, order)):
                if start + k >= len(words):
                    continue
                ax.text(
                    x,
                    y,
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
