"""Effective pathways (paper §"Effective pathways"): keep only the pathways the analysis
found effective, block every other edge among video, question and last, and measure
accuracy against the baseline and against blocking the same fraction of edges at random.

A ``PathwaySpec`` says, per edge type, the layers where it is *kept* (blocked elsewhere)
or *blocked*. Edge types: ``cross_frame`` (frame t -> earlier frames), ``video_to_question``,
``question_to_last``, ``last_to_last``, ``video_to_last``, ``video_to_video``,
``question_to_question``. As in the paper, edges whose key is a system or template token
stay open; the ``strict`` variant also blocks video -> template and question -> template
in every layer, so no template token can relay video or question information.

Beyond the paper, :func:`search_pathway` finds the layer ranges automatically: it
greedily shrinks kept ranges and grows blocked ones while calibration accuracy stays
within a tolerance of the baseline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..cuts import CompiledPlan, Cut, Plan, RandomCut
from ..engine import Engine
from ..errors import PlanError
from ..layout import TokenLayout
from ..models.base import Adapter, Prepared
from .base import ANALYSES, Baseline, read_answer

Range = tuple[int, int]  # inclusive, 0-based
KEEP_EDGES = ("cross_frame", "video_to_question", "question_to_last")
BLOCK_EDGES = ("last_to_last", "video_to_last", "video_to_video", "question_to_question")
_GROUPS = {
    "video_to_question": ("video", "question"),
    "question_to_last": ("question", "last"),
    "last_to_last": ("last", "last"),
    "video_to_last": ("video", "last"),
    "video_to_video": ("video", "video"),
    "question_to_question": ("question", "question"),
}
_STRICT = (("video", "template"), ("question", "template"))


@dataclass(frozen=True)
class PathwaySpec:
    """Which edges are kept (``keep``: edge -> inclusive layer range, None = nowhere) and
    which are blocked (``block``: edge -> inclusive range) in a model of ``num_layers``."""

    name: str
    num_layers: int
    keep: dict[str, Range | None] = field(default_factory=dict)
    block: dict[str, Range] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for e in self.keep:
            if e not in KEEP_EDGES:
                raise PlanError(f"pathway {self.name!r}: cannot keep {e!r}; keepable: {KEEP_EDGES}")
        for e in self.block:
            if e not in BLOCK_EDGES:
                raise PlanError(f"pathway {self.name!r}: cannot block {e!r}; blockable: {BLOCK_EDGES}")
        for e, r in [*self.keep.items(), *self.block.items()]:
            if r is not None and not (0 <= r[0] <= r[1] < self.num_layers):
                raise PlanError(f"pathway {self.name!r}: {e} range {r} outside 0..{self.num_layers - 1}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_layers": self.num_layers,
            "keep": {k: list(v) if v else None for k, v in self.keep.items()},
            "block": {k: list(v) for k, v in self.block.items()},
        }

    @classmethod
    def from_dict(cls, d: Any) -> PathwaySpec:
        """A spec from its dict form (``to_dict``, or a JSON/YAML spec file): ``num_layers``,
        optional ``name``, ``keep`` and ``block`` mapping edges to ``[lo, hi]`` (inclusive),
        ``"all"``, or (``keep`` only) ``null`` = nowhere. Anything else is a one-line
        ``PlanError`` naming the bad part; a spec that keeps and blocks nothing too."""
        if not isinstance(d, dict):
            raise PlanError(
                f"a pathway spec must be a mapping with num_layers, keep, block; got {type(d).__name__}"
            )
        name = d.get("name", "custom")
        n = d.get("num_layers")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
            raise PlanError(f"pathway {name!r}: num_layers must be a whole number in 1..1024, got {n!r}")
        unknown = sorted(map(str, set(d) - {"name", "num_layers", "keep", "block"}))
        if unknown:
            raise PlanError(
                f"pathway {name!r}: unknown key(s) {', '.join(unknown)}; use name, num_layers, keep, block"
            )

        def rng(section: str, edge: Any, v: Any) -> Range | None:
            if v is None and section == "keep":
                return None
            if v == "all":
                return (0, n - 1)
            ok = isinstance(v, (list, tuple)) and len(v) == 2
            ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            if not ok:
                raise PlanError(
                    f"pathway {name!r}: {section}.{edge} must be [first, last] layers or 'all'"
                    f"{' or null' if section == 'keep' else ''}, got {v!r}"
                )
            return (v[0], v[1])

        parts: dict[str, dict[str, Range | None]] = {}
        for section in ("keep", "block"):
            raw = d.get(section) or {}
            if not isinstance(raw, dict):
                raise PlanError(f"pathway {name!r}: {section} must map edges to layer ranges, got {raw!r}")
            parts[section] = {str(k): rng(section, k, v) for k, v in raw.items()}
        if not parts["keep"] and not parts["block"]:
            raise PlanError(f"pathway {name!r} keeps and blocks nothing: give keep and/or block")
        return cls(str(name), n, parts["keep"], parts["block"])  # type: ignore[arg-type]

    def scaled(self, num_layers: int) -> PathwaySpec:
        """The same spec stretched to a model of ``num_layers`` (ranges scaled proportionally)."""
        if num_layers == self.num_layers:
            return self
        f = num_layers / self.num_layers

        def s(r: Range | None) -> Range | None:
            if r is None:
                return None
            lo = min(num_layers - 1, int(round(r[0] * f)))
            return (lo, max(lo, min(num_layers - 1, int(round((r[1] + 1) * f)) - 1)))

        return PathwaySpec(
            f"{self.name} (scaled to {num_layers} layers)",
            num_layers,
            {k: s(v) for k, v in self.keep.items()},
            {k: s(v) for k, v in self.block.items()},
        )  # type: ignore[misc]

    def plan(self, layout: TokenLayout, strict: bool = False) -> Plan:
        """The cuts that realise this spec on one input."""
        n = self.num_layers
        cuts: list[Cut] = []
        for edge, kept in self.keep.items():
            layers = tuple(i for i in range(n) if kept is None or not kept[0] <= i <= kept[1])
            if layers:
                cuts += [Cut(s, d, layers) for s, d in _edges(edge, layout)]
        for edge, (lo, hi) in self.block.items():
            cuts += [Cut(s, d, tuple(range(lo, hi + 1))) for s, d in _edges(edge, layout)]
        if strict:
            cuts += [Cut(s, d, tuple(range(n))) for s, d in _STRICT]
        return Plan(f"{self.name}{' (strict)' if strict else ''}", tuple(cuts))


def _edges(edge: str, layout: TokenLayout) -> list[tuple[str, str]]:
    if edge == "cross_frame":
        return [(f"frames:<{t}", f"frame:{t}") for t in range(1, layout.num_frames)]
    return [_GROUPS[edge]]


def _paper(
    name: str, n: int, cf: Range, vq: Range | None, ql: Range, vv: Range, qq: Range | None
) -> PathwaySpec:
    block = {"last_to_last": (0, n - 1), "video_to_last": (0, n - 1), "video_to_video": vv}
    if qq:
        block["question_to_question"] = qq
    return PathwaySpec(name, n, {"cross_frame": cf, "video_to_question": vq, "question_to_last": ql}, block)


# REFERENCE_NOTES §4.2 (0-based, inclusive)
PRESETS: dict[str, PathwaySpec] = {
    s.name: s
    for s in (
        _paper("llava-next-7b-video-ft", 32, (5, 14), (5, 19), (15, 24), (20, 31), (25, 31)),
        _paper("llava-next-13b-video-ft", 40, (5, 14), (5, 19), (15, 29), (20, 39), (30, 39)),
        _paper("mini-internvl-4b-video-ft", 32, (5, 14), (5, 19), (10, 29), (20, 31), (30, 31)),
        _paper("videollama3-7b", 28, (0, 14), (5, 19), (20, 27), (20, 27), None),
    )
}


def load_spec(text: str) -> PathwaySpec:
    """A preset name or a JSON/YAML file; a file that cannot be read or parsed, or holds no
    valid spec, is a one-line ``PlanError`` naming the file and the problem."""
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if not path.is_file():
        raise PlanError(f"pathway spec {text!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    try:
        raw = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw)
        else:
            data = json.loads(raw)
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"pathway spec {text}: cannot read it ({exc})") from None
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError: say where, on one line
        first = " ".join(str(exc).split())
        raise PlanError(
            f"pathway spec {text} is not valid {path.suffix.lstrip('.') or 'JSON'}: {first}"
        ) from None
    try:
        return PathwaySpec.from_dict(data)
    except PlanError as exc:
        raise PlanError(f"pathway spec {text}: {exc}") from None


@ANALYSES.register("pathways", "accuracy with only the effective pathways kept, vs random blocking")
@dataclass
class Pathways:
    """Per sample: the answer under the pathway (paper and strict variant) and under random
    blocking of the same edge fraction for several seeds."""

    name: ClassVar[str] = "pathways"
    spec: PathwaySpec | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    strict: bool = True
    scale: bool = True

    def config(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict() if self.spec else None,
            "seeds": list(self.seeds),
            "strict": self.strict,
            "scale": self.scale,
        }

    def spec_for(self, num_layers: int) -> PathwaySpec:
        if self.spec is None:
            raise PlanError("no pathway spec given (a preset, a file, or --search)")
        if self.spec.num_layers != num_layers:
            if not self.scale:
                raise PlanError(
                    f"pathway {self.spec.name!r} is for {self.spec.num_layers} layers, the model has "
                    f"{num_layers}; pass --scale to stretch it"
                )
            return self.spec.scaled(num_layers)
        return self.spec

    @torch.inference_mode()
    def records(
        self, adapter: Adapter, prepared: Prepared, engine: Engine, base: Baseline
    ) -> list[dict[str, Any]]:
        spec = self.spec_for(engine.lm.num_layers)
        return evaluate_pathway(adapter, prepared, engine, base, spec, self.seeds, self.strict)


def pathway_plans(
    spec: PathwaySpec, layout: TokenLayout, num_layers: int, seeds: Sequence[int], strict: bool
) -> list[tuple[str, int | None, CompiledPlan]]:
    """``(condition, seed, compiled plan)`` for the pathway, its strict variant and random
    blocking of the pathway's edge fraction."""
    from ..cuts import compile_plan

    main = compile_plan(spec.plan(layout), layout, num_layers)
    out: list[tuple[str, int | None, CompiledPlan]] = [("pathway", None, main)]
    if strict:
        out.append(("strict", None, compile_plan(spec.plan(layout, strict=True), layout, num_layers)))
    fraction = main.suppressed_fraction()
    for seed in seeds:
        rc = RandomCut(fraction, seed, tuple(range(num_layers)))
        out.append(("random", seed, compile_plan(Plan(f"random@{seed}", (rc,)), layout, num_layers)))
    return out


def evaluate_pathway(
    adapter: Adapter,
    prepared: Prepared,
    engine: Engine,
    base: Baseline,
    spec: PathwaySpec,
    seeds: Sequence[int],
    strict: bool,
) -> list[dict[str, Any]]:
    plans = pathway_plans(spec, prepared.layout, engine.lm.num_layers, seeds, strict)
    logits = engine.evaluate([p for _, _, p in plans])
    rows = [
        {
            "condition": "baseline",
            "seed": None,
            "suppressed_fraction": 0.0,
            "correct": base.correct,
            "pred": base.record()["pred"],
            "p_gt": base.p_gt,
            "spec": spec.name,
        }
    ]
    for (condition, seed, compiled), lg in zip(plans, logits, strict=True):
        new = read_answer(adapter, prepared, lg)
        rows.append(
            {
                "condition": condition,
                "seed": seed,
                "suppressed_fraction": compiled.suppressed_fraction(),
                "correct": new.correct,
                "pred": new.record()["pred"],
                "p_gt": new.p_gt,
                "spec": spec.name,
            }
        )
    return rows


def summarize_pathways(records: pd.DataFrame) -> pd.DataFrame:
    """Per task and overall: accuracy with the pathway, its strict variant, random blocking
    (mean and sd over seeds) and the baseline, with the suppressed-edge fractions."""
    df = records[(records["analysis"] == "pathways") & records["error"].isna()].copy()
    if df.empty:
        return pd.DataFrame()
    df["correct"] = df["correct"].astype(float)
    out = []
    for task, d in [("all", df), *df.groupby("task")]:
        row: dict[str, Any] = {"task": task, "n": int((d["condition"] == "baseline").sum())}
        for cond in ("baseline", "pathway", "strict"):
            c = d[d["condition"] == cond]
            if not c.empty:
                row[f"acc_{cond}"] = c["correct"].mean()
                row[f"suppressed_{cond}"] = c["suppressed_fraction"].mean()
        r = d[d["condition"] == "random"]
        if not r.empty:
            per_seed = r.groupby("seed")["correct"].mean()
            row["acc_random_mean"] = per_seed.mean()
            row["acc_random_sd"] = per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0
            row["suppressed_random"] = r["suppressed_fraction"].mean()
        out.append(row)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    spec: PathwaySpec
    calib_accuracy: float
    base_accuracy: float
    suppressed: float
    trace: list[dict[str, Any]]


def _moves(spec: PathwaySpec, step: int) -> list[PathwaySpec]:
    n = spec.num_layers
    out = []
    for e in KEEP_EDGES:
        r = spec.keep.get(e, (0, n - 1))
        if r is None:
            continue
        lo, hi = r
        for nr in ((lo + step, hi), (lo, hi - step)):
            keep = dict(spec.keep)
            keep[e] = nr if nr[0] <= nr[1] else None
            out.append(replace(spec, keep=keep))
    for e in BLOCK_EDGES:
        lo = spec.block[e][0] if e in spec.block else n
        if lo > 0:
            block = dict(spec.block)
            block[e] = (0, n - 1) if e in ("last_to_last", "video_to_last") else (max(0, lo - step), n - 1)
            out.append(replace(spec, block=block))
    return out


@torch.inference_mode()
def search_pathway(
    adapter: Adapter,
    prepared: Sequence[Prepared],
    engines: Sequence[Engine],
    num_layers: int,
    *,
    tolerance: float = 0.02,
    step: int = 1,
    max_rounds: int = 200,
) -> SearchResult:
    """Greedy search of layer ranges on calibration inputs: at each round take the move
    (shrink a kept range by ``step``, grow a blocked range) that suppresses the most edges
    while accuracy stays >= baseline accuracy - ``tolerance``; stop when none does."""
    from ..cuts import compile_plan

    def correct(p: Prepared, lg: torch.Tensor) -> bool:
        return bool(read_answer(adapter, p, lg).correct)

    base_acc = float(
        np.mean([correct(p, e.baseline_logits()) for p, e in zip(prepared, engines, strict=True)])
    )
    spec = PathwaySpec("searched", num_layers, {e: (0, num_layers - 1) for e in KEEP_EDGES}, {})
    best = (base_acc, 0.0)
    trace: list[dict[str, Any]] = []
    for _ in range(max_rounds):
        candidates = _moves(spec, step)
        if not candidates:
            break
        scores = np.zeros((len(candidates), 2))  # accuracy, suppressed
        for p, e in zip(prepared, engines, strict=True):
            compiled = [compile_plan(c.plan(p.layout), p.layout, num_layers) for c in candidates]
            logits = e.evaluate(compiled)
            for i, (cp, lg) in enumerate(zip(compiled, logits, strict=True)):
                scores[i, 0] += correct(p, lg)
                scores[i, 1] += cp.suppressed_fraction()
        scores /= len(prepared)
        ok = np.flatnonzero(scores[:, 0] >= base_acc - tolerance - 1e-9)
        if ok.size == 0:
            break
        i = int(ok[np.argmax(scores[ok, 1])])
        if scores[i, 1] <= best[1]:
            break
        spec, best = candidates[i], (float(scores[i, 0]), float(scores[i, 1]))
        trace.append({"accuracy": best[0], "suppressed": best[1], "spec": spec.to_dict()})
    return SearchResult(spec, best[0], base_acc, best[1], trace)
