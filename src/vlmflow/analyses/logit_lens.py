"""Logit lens on video tokens (paper §5 / Fig. 4-5).

Project each video token's residual stream at every layer into the vocabulary and keep
the top-k tokens. ``projection="unembed"`` is the standard lens (final norm + output
head); ``"embed"`` multiplies by the input embedding matrix, with the final norm applied
only at the last layer, as the paper's code did. Layers are indexed correctly:
``layer = -1`` is the embeddings (input of decoder layer 0) and ``layer = l`` the output
of decoder layer ``l`` (the paper's code skipped the output of layer L-2 and labelled
inputs as layers).

A keyword *hit* is a top-1 token equal to a keyword's first sub-token (as the paper).

Two keyword statistics are computed from the records: :func:`summarize_logit_lens`, per
layer the share of video tokens that are a spatial / temporal hit (vlmflow's view), and
:func:`keyword_frequency`, the paper's figure: per keyword, hits summed over bins of
layers, keywords with fewer than ``min_hits`` hits dropped, each keyword's row normalised
to 1, then averaged over keywords. ``bins="paper"`` reproduces the paper's code exactly:
its bins of 5 are label-inclusive ``.loc`` slices that sum 6 layers (adjacent bins share
one), and its layer ``i`` is the input of decoder layer ``i`` (layer ``L-1`` the final
normed output, so the output of layer ``L-2`` is never counted).
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
    bin_size: int = 5
    bins: str = "exact"
    min_hits: int = 100
    out_dir: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise PlanError(f"unknown projection {self.projection!r}; choose from {PROJECTIONS}")
        if self.bins not in BINS:
            raise PlanError(f"unknown layer binning {self.bins!r}; choose from {BINS}")
        if self.bin_size < 1:
            raise PlanError("bin_size must be >= 1")
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
        # the keyword-frequency options only when changed, so earlier run folders still resume
        for key, default in (("bin_size", 5), ("bins", "exact"), ("min_hits", 100)):
            if d[key] == default:
                d.pop(key)
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
        streams = engine.hidden_states
        for stream, hidden in enumerate(streams):
            layer = stream - 1
            h = hidden[0].index_select(0, video)
            logits = lens_logits(lm, h, self.projection, last=stream == len(streams) - 1)
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
                    "spatial_words": sorted(spatial),
                    "temporal_words": sorted(temporal),
                    "num_layers": lm.num_layers,
                    "bin_size": self.bin_size,
                    "bins": self.bins,
                    "min_hits": self.min_hits,
                    "top1": top1,
                    "topk": words if self.topk > 1 else None,
                }
            )
        if self.out_dir and self._drawn < self.overlays and prepared.frames is not None:
            self._draw(adapter, prepared, tops, engine.lm.num_layers)
        return rows

    def _draw(self, adapter: Adapter, prepared: Prepared, tops: dict[int, list[str]], n_layers: int) -> None:
        """Overlay the top words on the frames the model was fed, aligned to the processor's crop."""
        from ..report.figures import lens_overlay_figure, save_figure

        layers = sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})
        frames = prepared.frames
        region = adapter.frame_region(*frames.shape[1:3])
        fig = lens_overlay_figure(frames, prepared.layout, tops, layers, prepared.sample, region)
        path = Path(self.out_dir) / "figures" / "logit-lens" / f"{prepared.sample.id}.png"
        save_figure(fig, path)
        self._drawn += 1


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
    ``"1-5"``, ``"6-10"``, ... (1-based, as the paper). Keywords whose binned counts sum to
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
        table[f"{start + 1}-{end + 1}"] = per_layer[cols].sum(axis=1)
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
    records, with the binning the run asked for (see :func:`keyword_frequency`)."""
    df = records[(records["analysis"] == "logit-lens")]
    if "error" in df:
        df = df[df["error"].isna()]
    if df.empty or "spatial_words" not in df:
        return {}
    first = df.iloc[0]
    out = {}
    for kind in ("spatial", "temporal"):
        words = sorted({w for ws in df[f"{kind}_words"] for w in (ws if ws is not None else [])})
        if not words:
            continue
        table = keyword_frequency(
            layer_counts(df, words),
            int(first["num_layers"]),
            bin_size=int(first["bin_size"]),
            bins=str(first["bins"]),
            min_hits=int(first["min_hits"]),
        )
        out[kind] = table.reset_index(names="keyword")
    return out


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
