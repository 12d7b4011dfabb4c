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

import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..cuts import CompiledPlan, Cut, Plan, RandomCut
from ..errors import PlanError
from ..layout import TokenLayout
from ..sample import Sample
from .base import ANALYSES, Analysis, CliOption

if TYPE_CHECKING:
    from ..api import Options, RunResult
    from ..probe import Model, Probe
    from ..report import Section
    from ..rundir import RunDir

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
            if r is not None and r[0] > r[1]:
                raise PlanError(
                    f"pathway {self.name!r}: {e} range {list(r)} is reversed; give [first, last] "
                    f"with first <= last"
                )
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
            raw = d.get(section)
            raw = {} if raw is None else raw  # absent or null: nothing; 0 or [] are errors
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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; a key given twice is an error (json keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} is given twice")
        out[key] = value
    return out


def _load_yaml(raw: str) -> Any:
    """``yaml.safe_load`` of ``raw``, except that a mapping key given twice (at any depth) is
    an error naming it and its line (YAML keeps the last silently); an explicit key over
    one brought in by a merge key (``<<: *anchor``) is YAML's own override and stays allowed."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    twice = key in seen
                except TypeError:  # an unhashable key: the constructor's own error says so
                    continue
                if twice:
                    raise ValueError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return yaml.load(raw, Loader=UniqueKeyLoader)  # safe: a SafeLoader subclass


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
            data = _load_yaml(raw)
        else:
            data = json.loads(raw, object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"pathway spec {text}: cannot read it ({exc})") from None
    except Exception as exc:  # JSONDecodeError, YAMLError, a key given twice: say where, on one line
        first = " ".join(str(exc).split())
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        raise PlanError(f"pathway spec {text} is not valid {kind}: {first}") from None
    try:
        return PathwaySpec.from_dict(data)
    except PlanError as exc:
        raise PlanError(f"pathway spec {text}: {exc}") from None


# The random-blocking fraction the paper's scripts pass per model (``--random_block_ratio``),
# each the suppression its pathway measured (REFERENCE_NOTES §4.2).
PAPER_RANDOM_FRACTIONS = {
    "llava-next-7b-video-ft": 0.58,
    "llava-next-13b-video-ft": 0.63,
    "mini-internvl-4b-video-ft": 0.60,
    "videollama3-7b": 0.42,
}
RANDOM_FRACTIONS = ("measured", "paper")


@ANALYSES.register("pathways", "accuracy with only the effective pathways kept, vs random blocking")
@dataclass
class Pathways(Analysis):
    """Keep only effective pathways, block all other edges among video, question and last;
    accuracy vs the baseline and vs random blocking of the same edge fraction.

    Per sample:
    the answer under the pathway (paper and strict variant) and under random blocking of
    the same edge fraction for several seeds."""

    name: ClassVar[str] = "pathways"
    order: ClassVar[int] = 50
    spec: PathwaySpec | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    strict: bool = True
    scale: bool = True
    random_fraction: str | float = "measured"

    def __post_init__(self) -> None:
        rf = self.random_fraction
        if not (isinstance(rf, str) and rf in RANDOM_FRACTIONS):
            try:
                number = float(rf)
            except (TypeError, ValueError):
                number = float("nan")
            if not 0.0 <= number <= 1.0:  # NaN too: refused here, not by every sample's random cut
                raise PlanError(
                    f"--random-fraction (random_fraction) {rf!r}: use 'measured', 'paper' "
                    "or a number in [0, 1]"
                )
            self.random_fraction = number
        if self.random_fraction == "paper" and self.spec is not None:
            self.fixed_fraction()

    def fixed_fraction(self) -> float | None:
        """The fraction random blocking uses for every sample, or None for each sample's
        own measured pathway fraction (``random_fraction="measured"``)."""
        if self.random_fraction == "measured":
            return None
        if self.random_fraction == "paper":
            name = self.spec.name if self.spec else ""
            if name not in PAPER_RANDOM_FRACTIONS:
                raise PlanError(
                    f"the paper fixed a random-blocking fraction only for its presets "
                    f"({', '.join(PAPER_RANDOM_FRACTIONS)}), not for {name!r}; use 'measured' or a number"
                )
            # the name alone is no preset: a spec file named after one with other ranges or
            # layer count is another pathway, whose fraction the paper never fixed
            if name not in PRESETS or self.spec.to_dict() != PRESETS[name].to_dict():  # type: ignore[union-attr]
                raise PlanError(
                    f"the pathway is named {name!r} but its ranges or layer count differ from that "
                    "preset's, and the paper fixed a random-blocking fraction only for its presets as "
                    f"published; use --preset {name}, or 'measured' or a number for --random-fraction"
                )
            return PAPER_RANDOM_FRACTIONS[name]
        return float(self.random_fraction)

    def config(self) -> dict[str, Any]:
        d = {
            "spec": self.spec.to_dict() if self.spec else None,
            "seeds": list(self.seeds),
            "strict": self.strict,
            "scale": self.scale,
        }
        if self.random_fraction != "measured":  # absent by default: earlier runs still resume
            d["random_fraction"] = self.random_fraction
        return d

    def check_layers(self, num_layers: int, model: str = "") -> None:
        """A spec made for another layer count under ``scale=False`` (``--no-scale``) is
        refused once, right after the model loads, instead of by every sample."""
        super().check_layers(num_layers, model)
        if self.spec is not None:
            self.spec_for(num_layers)

    def spec_for(self, num_layers: int) -> PathwaySpec:
        if self.spec is None:
            raise PlanError("no pathway spec given (a preset, a file, or --search)")
        if self.spec.num_layers != num_layers:
            if not self.scale:
                raise PlanError(
                    f"pathway {self.spec.name!r} is for {self.spec.num_layers} layers, "
                    f"the model has {num_layers}; --no-scale (scale=False) refuses to stretch it: "
                    "drop --no-scale to scale its layer ranges to the model"
                )
            return self.spec.scaled(num_layers)
        return self.spec

    @torch.inference_mode()
    def records(self, probe: Probe) -> list[dict[str, Any]]:
        spec = self.spec_for(probe.num_layers)
        return evaluate_pathway(probe, spec, self.seeds, self.strict, self.fixed_fraction())

    @classmethod
    def summarize(cls, records: pd.DataFrame) -> pd.DataFrame:
        return summarize_pathways(records)

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section:
        return pathways_section(records, run)

    @classmethod
    def terminal(cls, report: dict[str, Any]) -> list[str]:
        """The search's result, if any, and the accuracy table."""
        lines = [describe_search(report["search"])] if "search" in report else []
        table = report.get("summaries", {}).get("pathways")
        if table is not None and not table.empty:
            lines.append(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        missing = not_held_out(report.get("search"))
        if missing:
            lines.append(missing)
        return lines

    # ------------------------------------------------------------------ command line
    @classmethod
    def cli_options(cls) -> list[CliOption]:
        return [
            CliOption("preset", None, f"the paper's pathway of a model: {', '.join(PRESETS)}", cli=str),
            CliOption("spec", None, "a pathway spec file (JSON or YAML)", cli=Path),
            CliOption("search", False, "find the layer ranges on a calibration split", ("--search",)),
            CliOption("calib", 0.5, "fraction of samples used to search (the rest is held out)"),
            CliOption("tolerance", 0.02, "accuracy the search may lose against the baseline"),
            CliOption("step", 1, "layers a search move shrinks or grows a range by"),
            CliOption("seeds", 3, "random-blocking seeds"),
            CliOption(
                "random_fraction",
                "measured",
                "edges random blocking cuts: measured (each sample's pathway fraction), paper "
                "(the scripts' fixed 0.58/0.63/0.60/0.42 per preset) or a number",
            ),
            CliOption("no_scale", False, "refuse a spec made for another layer count", ("--no-scale",)),
        ]

    @classmethod
    def run_cli(cls, options: Options, out: Path, **values: Any) -> RunResult:
        """A preset or spec file evaluated on every sample, or a search on a calibration
        split evaluated on the held-out rest."""
        preset, spec, search = values["preset"], values["spec"], values["search"]
        if sum(x is not None and x is not False for x in (preset, spec, search or None)) != 1:
            raise PlanError(f"give exactly one of --preset ({', '.join(PRESETS)}), --spec FILE or --search")
        seeds = tuple(range(values["seeds"]))
        if search:
            return search_and_evaluate(
                options,
                out,
                calib=values["calib"],
                tolerance=values["tolerance"],
                step=values["step"],
                seeds=seeds,
                scale=not values["no_scale"],
                random_fraction=values["random_fraction"],
            )
        from ..api import run

        chosen = load_spec(preset or str(spec))
        analysis = cls(
            spec=chosen, seeds=seeds, scale=not values["no_scale"], random_fraction=values["random_fraction"]
        )
        return run(options, [analysis], out)


def pathway_plans(
    spec: PathwaySpec,
    layout: TokenLayout,
    num_layers: int,
    seeds: Sequence[int],
    strict: bool,
    *,
    sample: str = "",
    fraction: float | None = None,
) -> list[tuple[str, int | None, CompiledPlan]]:
    """``(condition, seed, compiled plan)`` for the pathway, its strict variant and random
    blocking of ``fraction`` of the edges (default: the pathway's own measured fraction on
    this input), drawn afresh for each (seed, ``sample``, layer)."""
    from ..cuts import compile_plan

    main = compile_plan(spec.plan(layout), layout, num_layers)
    out: list[tuple[str, int | None, CompiledPlan]] = [("pathway", None, main)]
    if strict:
        out.append(("strict", None, compile_plan(spec.plan(layout, strict=True), layout, num_layers)))
    frac = main.suppressed_fraction() if fraction is None else fraction
    for seed in seeds:
        rc = RandomCut(frac, seed, tuple(range(num_layers)), sample=sample)
        out.append(("random", seed, compile_plan(Plan(f"random@{seed}", (rc,)), layout, num_layers)))
    return out


def evaluate_pathway(
    probe: Probe, spec: PathwaySpec, seeds: Sequence[int], strict: bool, fraction: float | None = None
) -> list[dict[str, Any]]:
    """Records of one input: baseline, pathway, strict pathway and random blocking (of
    ``fraction`` of the edges; default the pathway's own fraction on this input)."""
    base = probe.base
    plans = pathway_plans(
        spec, probe.layout, probe.num_layers, seeds, strict, sample=probe.sample.id, fraction=fraction
    )
    n_layers, n = probe.num_layers, probe.layout.length
    total = n_layers * n * (n + 1) // 2
    logits = probe.engine.evaluate([p for _, _, p in plans])
    rows = [
        {
            "condition": "baseline",
            "seed": None,
            "suppressed_fraction": 0.0,
            "suppressed_edges": 0,
            "total_edges": total,
            "correct": base.correct,
            "pred": base.record()["pred"],
            "p_gt": base.p_gt,
            "spec": spec.name,
        }
    ]
    for (condition, seed, compiled), lg in zip(plans, logits, strict=True):
        new = probe.read(lg)
        row = {
            "condition": condition,
            "seed": seed,
            "suppressed_fraction": compiled.suppressed_fraction(),
            "suppressed_edges": compiled.suppressed_edges(),
            "total_edges": compiled.total_edges(),
            "correct": new.correct,
            "pred": new.record()["pred"],
            "p_gt": new.p_gt,
            "spec": spec.name,
        }
        if condition == "random":  # the share asked; capped: fewer pairs there, all blocked
            asked = float(compiled.plan.cuts[0].fraction)
            row["random_fraction"] = asked
            row["random_capped"] = compiled.suppressed_edges() < n_layers * int(n * (n + 1) // 2 * asked)
        rows.append(row)
    return rows


def summarize_pathways(records: pd.DataFrame) -> pd.DataFrame:
    """Per task and overall: accuracy with the pathway, its strict variant, random blocking
    (mean and sd over seeds) and the baseline, with the suppressed-edge fractions. The
    overall row comes first, ``overall`` True, named ``all`` (``(all)`` if a task is named
    ``all``, so the two never share a name).

    ``suppressed_<cond>`` is the mean of the samples' own fractions; ``suppressed_<cond>_of_sums``
    is the paper's ratio of sums (edges cut over all samples and layers / all causal edges),
    which weighs long inputs more."""
    df = records[(records["analysis"] == "pathways") & records["error"].isna()].copy()
    if df.empty:
        return pd.DataFrame()
    df["correct"] = df["correct"].astype(float)
    tasks = {str(t) for t in df["task"].unique()}
    overall = "all"
    while overall in tasks:  # a task named "all": the overall row is "(all)"
        overall = f"({overall})"
    out = []
    for task, whole, d in [(overall, True, df), *((t, False, g) for t, g in df.groupby("task"))]:
        row: dict[str, Any] = {"task": task, "overall": whole, "n": int((d["condition"] == "baseline").sum())}
        for cond in ("baseline", "pathway", "strict"):
            c = d[d["condition"] == cond]
            if not c.empty:
                row[f"acc_{cond}"] = c["correct"].mean()
                row[f"suppressed_{cond}"] = c["suppressed_fraction"].mean()
                if "total_edges" in c and cond != "baseline":
                    row[f"suppressed_{cond}_of_sums"] = c["suppressed_edges"].sum() / c["total_edges"].sum()
        r = d[d["condition"] == "random"]
        if not r.empty:
            per_seed = r.groupby("seed")["correct"].mean()
            row["acc_random_mean"] = per_seed.mean()
            row["acc_random_sd"] = per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0
            row["suppressed_random"] = r["suppressed_fraction"].mean()
            if "random_fraction" in r and r["random_fraction"].notna().any():  # absent in older runs
                row["random_fraction"] = r["random_fraction"].mean()
                row["random_capped"] = bool(r["random_capped"].fillna(False).astype(bool).any())
            if "total_edges" in r:
                row["suppressed_random_of_sums"] = r["suppressed_edges"].sum() / r["total_edges"].sum()
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
    probes: Sequence[Probe],
    num_layers: int,
    *,
    tolerance: float = 0.02,
    step: int = 1,
    max_rounds: int = 200,
    total: Callable[[np.ndarray], np.ndarray] = lambda x: x,
) -> SearchResult:
    """Greedy search of layer ranges on calibration inputs: at each round take the move
    (shrink a kept range by ``step``, grow a blocked range) that suppresses the most edges
    while accuracy stays >= baseline accuracy - ``tolerance``; stop when none does.

    ``total`` sums per-process arrays over a process group (the identity in one process),
    so each rank scores its share of the calibration inputs and every rank takes the
    same moves.
    """
    from ..cuts import compile_plan

    counts = total(np.array([len(probes), sum(bool(p.base.correct) for p in probes)], dtype=float))
    if counts[0] == 0:
        raise PlanError("the pathway search has no calibration samples")
    base_acc = float(counts[1] / counts[0])
    spec = PathwaySpec("searched", num_layers, {e: (0, num_layers - 1) for e in KEEP_EDGES}, {})
    best = (base_acc, 0.0)
    trace: list[dict[str, Any]] = []
    for _ in range(max_rounds):
        candidates = _moves(spec, step)
        if not candidates:
            break
        scores = np.zeros((len(candidates), 2))  # accuracy, suppressed (sums)
        for p in probes:
            compiled = [compile_plan(c.plan(p.layout), p.layout, num_layers) for c in candidates]
            logits = p.engine.evaluate(compiled)
            for i, (cp, lg) in enumerate(zip(compiled, logits, strict=True)):
                scores[i, 0] += bool(p.read(lg).correct)
                scores[i, 1] += cp.suppressed_fraction()
        scores = total(scores) / counts[0]
        ok = np.flatnonzero(scores[:, 0] >= base_acc - tolerance - 1e-9)
        if ok.size == 0:
            break
        i = int(ok[np.argmax(scores[ok, 1])])
        if scores[i, 1] <= best[1]:
            break
        spec, best = candidates[i], (float(scores[i, 0]), float(scores[i, 1]))
        trace.append({"accuracy": best[0], "suppressed": best[1], "spec": spec.to_dict()})
    return SearchResult(spec, best[0], base_acc, best[1], trace)


def check_search(calib: Any, tolerance: Any, step: Any) -> None:
    """A :class:`PlanError` naming the search option that is out of range: ``step``
    (``--step``) a whole number >= 1, ``calib`` (``--calib``) a fraction strictly between 0
    and 1, ``tolerance`` (``--tolerance``) a number >= 0."""
    from ..cuts import is_int

    if not is_int(step) or step < 1:
        raise PlanError(f"--step (step) must be a whole number of layers >= 1, got {step!r}")

    def number(x: Any) -> float:
        ok = isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
        return float(x) if ok else float("nan")

    if not 0.0 < number(calib) < 1.0:
        raise PlanError(
            f"--calib (calib) must be a fraction strictly between 0 and 1 (the share of samples "
            f"searched on; the rest is held out), got {calib!r}"
        )
    if not 0.0 <= number(tolerance) < float("inf"):
        raise PlanError(
            f"--tolerance (tolerance) must be a number >= 0 (accuracy the search may lose), got {tolerance!r}"
        )


def calibration_split(samples: Sequence[Sample], fraction: float, seed: int) -> set[str]:
    """Ids of the calibration share of ``samples`` (seeded shuffle; at least one sample on
    each side when there are two or more). The shuffle is over all samples, not per task
    (the paper picked its ranges by hand and has no split), so with few samples per task a
    task may fall wholly in the calibration share: the search result names such tasks
    (``calib_only_tasks``) and the held-out table says they are not in it."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    k = max(1, min(len(samples) - 1, int(round(len(samples) * fraction))))
    return {samples[i].id for i in order[:k]}


def search_and_evaluate(
    options: Options,
    out: str | Path | RunDir,
    *,
    calib: float = 0.5,
    tolerance: float = 0.02,
    step: int = 1,
    seeds: Sequence[int] = (0, 1, 2),
    model: Model | None = None,
    scale: bool = True,
    random_fraction: str | float = "measured",
) -> RunResult:
    """Search a pathway on a calibration split of ``options``' samples, save it as the run's
    search result, then evaluate it on the held-out rest into ``out``.

    Shard-aware: under ``torchrun`` each rank prepares its share of the calibration
    samples and the ranks sum their scores every round; the held-out run is sharded as
    every run is. Its result's ``report["search"]`` is the saved search result.

    ``calib``, ``tolerance``, ``step`` (``--calib``, ``--tolerance``, ``--step``) are
    checked before anything loads; ``random_fraction`` and ``scale`` are those of
    :class:`Pathways` (recorded in the manifest as a preset's run records them).
    """
    from .. import distributed
    from ..api import refuse_other_computed_in, run
    from ..probe import Probe
    from ..rundir import RunDir

    check_search(calib, tolerance, step)
    planned = Pathways(spec=None, seeds=tuple(seeds), scale=scale, random_fraction=random_fraction)
    if planned.random_fraction == "paper":
        raise PlanError(
            "--random-fraction paper is the fraction the paper fixed for its presets; a searched "
            "pathway has none: use 'measured' or a number in [0, 1]"
        )
    rundir = out if isinstance(out, RunDir) else RunDir(out)
    ctx = distributed.init()
    lock = rundir.lock()  # rank 0 holds it from before the search to the end of the run
    try:
        extra = {**options.extra, "search": {"calib": calib, "tolerance": tolerance, "step": step}}
        run_options = dataclasses.replace(options, extra=extra)

        def claim() -> None:  # a busy folder, or one of another search, is refused before searching
            lock.acquire()
            rundir.recover_manifest()  # damaged or lost: rebuilt, so the checks below read it
            if not rundir.manifest_path.exists():  # records of an unknown run: refused as open() would
                rundir.refuse_orphan_records(NOTHING_SEARCHED)
            config = {**run_options.manifest(), "analyses": {planned.name: planned.config()}}
            _refuse_other_search(rundir, config)
            if rundir.manifest_path.exists():  # records of another version of the analysis
                rundir.refuse_other_versions([planned], hint=NOTHING_SEARCHED)

        ctx.on_main(claim)
        samples = options.samples_of()
        readable = [s for s in samples if s.error is None]
        if len(readable) < 2:  # nothing would be held out to evaluate the found pathway on
            raise PlanError(
                f"the pathway search needs at least 2 readable samples, which --calib {calib} splits "
                f"into a calibration and a held-out set; {len(readable)} of the {len(samples)} "
                "selected samples could be read: select more samples (--samples, --task)"
            )
        # calibrate on samples their loader could read; the unreadable ones fail in the held-out run
        calib_ids = calibration_split(readable, calib, options.seed)
        held = [s.id for s in samples if s.id not in calib_ids]
        # other weights or data than the folder's: refused before the model loads
        held_samples = [s for s in samples if s.id not in calib_ids]
        ctx.on_main(lambda: _refuse_other_provenance(rundir, options, held_samples))
        if model is None:
            model = options.load(ctx.device(options.device))
        # a folder started before a chosen frame policy won keeps its rule (RunDir.frame_policy_rule)
        adapter = options.configure(model, held_samples, ctx.on_main(rundir.frame_policy_rule))
        adapter.ensure_maskable()
        # another dtype or input processing than the folder's: refused before the search
        ctx.on_main(lambda: refuse_other_computed_in(rundir, adapter, options, NOTHING_SEARCHED))
        probes = [
            Probe(adapter, adapter.prepare(s)) for s in ctx.shard([s for s in samples if s.id in calib_ids])
        ]
        found = search_pathway(
            probes,
            adapter.num_layers,
            tolerance=tolerance,
            step=step,
            total=lambda a: np.sum(ctx.gather(a), axis=0),
        )
        del probes
        saved = {
            "spec": found.spec.to_dict(),
            "calib_samples": sorted(calib_ids),
            # tasks with no held-out sample: absent from the held-out table
            "calib_only_tasks": sorted(
                {str(s.task) for s in samples if s.id in calib_ids} - {str(s.task) for s in held_samples}
            ),
            "calib_accuracy": found.calib_accuracy,
            "calib_base_accuracy": found.base_accuracy,
            "calib_suppressed": found.suppressed,
            "tolerance": tolerance,
            "step": step,
            "trace": found.trace,
        }
        result = run(
            run_options,
            [replace(planned, spec=found.spec)],
            rundir,
            model=model,
            sample_ids=held,
            # written once the folder has accepted the run: a refused run leaves it as it was
            on_open=lambda: rundir.write_search(saved),
            lock=lock,
        )
        result.report["search"] = saved
        return result
    finally:
        lock.release()
        ctx.close()


NOTHING_SEARCHED = " (nothing was searched)"  # ends a refusal that came before the search


def _refuse_other_search(rundir: RunDir, config: dict[str, Any]) -> None:
    """A :class:`RunError` when ``rundir`` holds a run whose configuration differs from
    ``config`` in anything a search does not decide (the found spec and its held-out ids
    are checked by the run itself): refused before the search, not after it."""
    from ..rundir import canonical_config

    if not rundir.manifest_path.exists():
        return

    def known(c: dict[str, Any]) -> dict[str, Any]:
        c = {k: v for k, v in c.items() if k != "sample_ids"}
        analyses = c.get("analyses")
        if isinstance(analyses, dict):
            c["analyses"] = {
                n: {k: v for k, v in a.items() if k != "spec"} if isinstance(a, dict) else a
                for n, a in analyses.items()
            }
        return c

    rundir.refuse_other_config(known(rundir.config()), known(canonical_config(config)), NOTHING_SEARCHED)


def _refuse_other_provenance(rundir: RunDir, options: Options, held: Sequence[Sample]) -> None:
    """A :class:`RunError` when ``rundir`` holds a run of other model weights or data than
    ``options`` and the ``held``-out samples the search leaves to evaluate (the fingerprints
    :meth:`RunDir.open` compares when the held-out run starts): refused before the search."""
    from ..provenance import data_fingerprint, model_fingerprint

    if not rundir.manifest_path.exists():
        return
    now = {
        "model": model_fingerprint(options.model, progress=options.progress),
        "data": data_fingerprint(options.data, held, options.seed),
    }
    rundir.refuse_other_provenance(rundir.manifest().get("provenance", {}), now, NOTHING_SEARCHED)


def not_held_out(saved: dict[str, Any] | None) -> str:
    """The line naming the tasks a search's calibration share took whole (none held out, so
    absent from the held-out table), or ``""``."""
    tasks = (saved or {}).get("calib_only_tasks") or []
    if not tasks:
        return ""
    return (
        f"not in the held-out half (every sample searched on, none evaluated): {', '.join(tasks)}; "
        "the split is a seeded shuffle over all samples, not per task"
    )


def describe_ranges(ranges: dict[str, Any]) -> str:
    """``cross_frame 1-8, video_to_question nowhere``: a spec's edge -> inclusive 0-based
    range (or None) written with 1-based layers, as the figures and the README count them."""
    return ", ".join(f"{edge} {f'{r[0] + 1}-{r[1] + 1}' if r else 'nowhere'}" for edge, r in ranges.items())


def describe_search(saved: dict[str, Any]) -> str:
    """One line: the found ranges (1-based layers; the saved spec's are 0-based), calibration
    accuracy against the baseline, edges cut."""
    return (
        f"search: kept {describe_ranges(saved['spec']['keep'])}; "
        f"blocked {describe_ranges(saved['spec']['block'])} "
        "(layers 1-based, as in the figures; pathway_search.json counts from 0); "
        f"calibration accuracy {saved['calib_accuracy']:.3f} (baseline {saved['calib_base_accuracy']:.3f}), "
        f"{saved['calib_suppressed']:.1%} of edges suppressed"
    )


def random_baseline(overall: pd.Series) -> tuple[str, str]:
    """The random bars' label and the note's sentence on them, from the overall summary row's
    recorded fractions: the share blocked (``suppressed_random``), the share asked
    (``random_fraction``, absent in older runs) and whether the ask exceeded the pairs there."""
    if "suppressed_random" not in overall or pd.isna(overall["suppressed_random"]):
        return "random (sd over seeds)", ""
    got = float(overall["suppressed_random"])
    asked = overall.get("random_fraction")
    asked = None if asked is None or pd.isna(asked) else float(asked)
    capped = overall.get("random_capped")
    if asked is not None and capped is not None and not pd.isna(capped) and bool(capped):
        return (
            f"random, every pair from the video on ({got:.0%})",
            f"random blocking asked {asked:.0%} of the edges, more than lie from the first video token "
            f"on, so every available pair was blocked ({got:.0%} suppressed): each seed blocks the same "
            "pairs and the spread over seeds is meaningless.",
        )
    if asked is not None:
        pathway = overall.get("suppressed_pathway")
        same = pathway is not None and not pd.isna(pathway) and abs(asked - float(pathway)) < 0.005
        how = "the pathway's own fraction" if same else "a fixed fraction"
        return (
            f"random, {got:.0%} of edges (sd over seeds)",
            f"random blocking suppresses {got:.0%} ({how}, {asked:.0%} asked).",
        )
    return f"random, {got:.0%} of edges (sd over seeds)", f"random blocking suppresses {got:.0%}."


def pathways_section(rows: pd.DataFrame, run: RunDir) -> Section:
    """Accuracy with the effective pathways only, against random blocking of as many edges."""
    from ..report import Bars, Section

    summary = summarize_pathways(rows)
    section = Section("Effective pathways", summaries={"pathways": summary})
    if summary.empty:
        return section
    overall = summary.loc[summary["overall"]].iloc[0]
    label, random_note = random_baseline(overall)
    values = {
        "baseline": ("acc_baseline", None),
        "pathway only": ("acc_pathway", None),
        "strict pathway": ("acc_strict", None),
        label: ("acc_random_mean", "acc_random_sd"),
    }
    values = {k: (v, e) for k, (v, e) in values.items() if v in summary}
    section.charts.append(Bars("Accuracy per task", summary.astype({"task": str}), "task", values))
    if "suppressed_pathway" in summary:
        frac = float(overall["suppressed_pathway"])
        section.notes = (
            f"Keeping only the pathway suppresses {frac:.0%} of the attention edges (causal lower "
            f"triangle, summed over layers); {random_note}"
        ).strip()
    saved = run.read_search()
    if saved is not None:  # a searched pathway: what was found, on which samples
        found = (
            f"The pathway was found by a search on {len(saved['calib_samples'])} calibration samples "
            f"(tolerance {saved['tolerance']}, step {saved['step']}; {run.search_path.name}) and is "
            f"evaluated above on the held-out rest. {describe_search(saved)[len('search: ') :]}."
        )
        if not_held_out(saved):
            found += f" Tasks {not_held_out(saved)}."
        section.notes = f"{found} {section.notes}".strip() if section.notes else found
    return section
