"""Layer-wise answer probability ("generation probability", paper Fig. 9).

Project the last position's residual stream after every decoder layer through the final
norm and the output head and read the probability of the true option letter and of each
false option letter. ``norm=False`` skips the final norm for intermediate layers, as the
paper's code did for LLaVA (the last layer's output is always normed, as in the model);
``norm="paper"`` takes the paper's setting for the model's family (the adapter's
``paper_final_norm``: normed for VideoLLaMA3 only). The probabilities are read in float64
log space, so letters far below float32's range keep their order (``true_rank``: a tie
counts against the true letter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..engine import log_softmax64
from ..errors import PlanError
from .base import ANALYSES, Analysis, check_sample_mode, option

if TYPE_CHECKING:
    from ..probe import Probe
    from ..report import Section
    from ..rundir import RunDir


@ANALYSES.register("answer-prob", "probability of each option letter read from every layer")
@dataclass
class AnswerProbability(Analysis):
    """Probability of the true and the false option letters read from every layer.

    One record per sample x layer: the option letters' probabilities at the last position."""

    name: ClassVar[str] = "answer-prob"
    order: ClassVar[int] = 20
    needs_knockout: ClassVar[bool] = False
    version: ClassVar[int] = 2
    changes: ClassVar[dict[int, str]] = {
        2: "option probabilities are read in float64 log space (float32 read 0 for every letter at "
        "intermediate layers) and true_rank counts a tie against the true letter (85c12f4)",
    }
    norm: bool | str = option(
        True,
        "final norm on intermediate layers (--no-norm: skip it, as the paper's LLaVA code)",
        "--norm/--no-norm",
    )
    sample_mode: str = option(
        "correct", "analyse the samples the model gets correct (the paper's figure), wrong, or all"
    )

    def __post_init__(self) -> None:
        check_sample_mode(self.sample_mode)
        if not isinstance(self.norm, bool) and self.norm != "paper":
            raise PlanError(f"norm {self.norm!r}: use True, False or 'paper'")

    def uses_norm(self, adapter: Any) -> bool:
        """Whether intermediate layers are normed for ``adapter``'s model (``"paper"``: the
        family's ``paper_final_norm``)."""
        if self.norm == "paper":
            return bool(getattr(adapter, "paper_final_norm", False))
        return bool(self.norm)

    @torch.inference_mode()
    def records(self, probe: Probe) -> list[dict[str, Any]]:
        prepared, engine, base = probe.prepared, probe.engine, probe.base
        sample = prepared.sample
        if sample.options and sample.answer is None:  # was [] without saying why
            raise PlanError(
                f"{self.name}: sample {sample.id!r} has no ground-truth answer, and this analysis "
                "reads each layer's probability of the true option (give the probe an answer=)"
            )
        if not base.keep(self.sample_mode) or sample.answer is None:  # open-ended: no options
            return []
        lm = engine.lm
        n = lm.num_layers
        last = torch.stack([engine.hidden_states[layer + 1][0, -1] for layer in range(n)])  # (L, d)
        norm = self.uses_norm(probe.adapter)
        if norm:
            last = lm.norm(last)
        else:
            last = torch.cat([last[:-1], lm.norm(last[-1:])])
        # float64 log-probabilities over the vocabulary: an option letter's probability at an
        # early layer can be far below float32's range (it read 0 for every option, a tie)
        logp = log_softmax64(lm.lm_head(last))[:, list(prepared.option_ids)]  # (L, options)
        answer = prepared.sample.answer
        rows = []
        for layer in range(n):
            lp = logp[layer].tolist()
            p = [math.exp(x) for x in lp]
            false = [x for i, x in enumerate(p) if i != answer]
            rows.append(
                {
                    "layer": layer,
                    "norm": norm,
                    "p_true": p[answer],
                    "p_false_mean": float(np.mean(false)) if false else None,
                    "p_false_max": max(false) if false else None,
                    "option_probs": p,
                    "true_rank": true_rank(lp, answer),
                    "correct_base": base.correct,
                }
            )
        return rows

    @classmethod
    def summarize(cls, records: pd.DataFrame) -> pd.DataFrame:
        return summarize_answer_prob(records)

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section:
        return answer_prob_section(records, run)

    @classmethod
    def terminal(cls, report: dict[str, Any]) -> list[str]:
        """Per task, the layer from which the true option stays above the false ones,
        0-based as ``--layers``, the records and ``summary/answer-prob.csv`` number them."""
        summary = report.get("summaries", {}).get("answer-prob")
        if summary is None or summary.empty:
            return []
        over = overtake_layers(summary)
        text = ", ".join(f"{t}: layer {v}" if v is not None else f"{t}: never" for t, v in over.items())
        return [f"true option overtakes the false ones from (0-based, as --layers): {text}"]


def true_rank(scores: list[float], answer: int) -> int:
    """The true option's rank among the options' ``scores`` (1 = highest); a tie counts
    against it: the number of options scoring at least as high as the true one."""
    return sum(1 for x in scores if x >= scores[answer])


def summarize_answer_prob(records: pd.DataFrame) -> pd.DataFrame:
    """Per task x layer (``layer`` an integer, 0-based, as the records): mean probability of
    the true letter and of the false letters.

    ``p_false_mean`` pools every false option of every sample (as the paper's plot), so a
    sample with more options weighs more; ``p_false_max`` is the mean over samples."""
    df = records[(records["analysis"] == "answer-prob") & records["error"].isna()]
    if df.empty:
        return pd.DataFrame()
    from ..report import value_counts

    g = df.groupby(["task", "layer"])
    out = g.agg(
        p_true=("p_true", "mean"),
        p_false_max=("p_false_max", "mean"),
        top1_rate=("true_rank", lambda s: float((s.dropna() == 1).mean()) if s.notna().any() else np.nan),
    )
    counts = value_counts(g, ["p_true", "p_false_max"])  # NaN values are not counted, as the means skip them
    pooled = false_option_rows(df).groupby(["task", "layer"])["p_false"].mean().rename("p_false_mean")
    out = counts.join(out.join(pooled)[["p_true", "p_false_mean", "p_false_max", "top1_rate"]]).reset_index()
    out["layer"] = out["layer"].astype(int)  # records hold floats (eval rows have no layer)
    return out


def false_option_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row (``task``, ``layer``, ``p_false``) per false option of each answer-prob record."""
    rows = []
    columns = (df["task"], df["layer"], df["option_probs"], df["p_true"])
    for task, layer, probs, p_true in zip(*columns, strict=True):
        false = [float(p) for p in probs]
        del false[int(np.argmin([abs(p - p_true) for p in false]))]  # the true option's entry
        rows += [(task, layer, p) for p in false]
    return pd.DataFrame(rows, columns=["task", "layer", "p_false"])


def overtake_layers(summary: pd.DataFrame) -> dict[str, int | None]:
    """Per task, the first layer (0-based) from which the true letter's mean probability
    stays above the strongest false letter's, to the last layer; None if it never does."""
    out: dict[str, int | None] = {}
    for task, d in summary.groupby("task"):
        above = (d.sort_values("layer")["p_true"] > d.sort_values("layer")["p_false_max"]).tolist()
        layers = d.sort_values("layer")["layer"].tolist()
        first = None
        for i in range(len(above) - 1, -1, -1):
            if not above[i]:
                break
            first = int(layers[i])
        out[str(task)] = first
    return out


def answer_prob_section(rows: pd.DataFrame, run: RunDir) -> Section:
    """The true option letter against the false ones, layer by layer, per task."""
    from ..report import Chart, Section, mean_ci
    from ..report.figures import save_figure
    from .information_flow import LAYER_NOTE

    summary = summarize_answer_prob(rows)
    section = Section("Answer probability by layer", summaries={"answer-prob": summary})
    if summary.empty:
        return section
    rows = rows[(rows["analysis"] == "answer-prob") & rows["error"].isna()]
    samples = rows.groupby(["task", "layer"]).size().rename("n")  # the chart's n: samples, every curve
    parts = []
    for data, column, label in (
        (rows, "p_true", "true option"),
        (rows, "p_false_max", "strongest false option"),
        (false_option_rows(rows), "p_false", "false options (mean)"),  # pooled, as the paper
    ):
        part = mean_ci(data, ["task", "layer"], column).rename(
            columns={f"{column}_mean": "p_mean", f"{column}_ci95_lo": "p_lo", f"{column}_ci95_hi": "p_hi"}
        )
        if column == "p_false":  # one row per false option: n says how many samples they are of
            part = part.rename(columns={"n": "n_options"}).join(samples, on=["task", "layer"])
        parts.append(part.assign(option=label))
    long = pd.concat(parts, ignore_index=True)
    section.charts.append(
        Chart(
            "Probability of the option letters read from each layer",
            long,
            {"probability": ("p_mean", ("p_lo", "p_hi"))},
            series=("option",),
            zero_line=False,
            limits=(0.0, 1.0),
        )
    )
    if "top1_rate" in summary:
        section.charts.append(
            Chart(
                "How often the true letter ranks first among the options",
                summary,
                {"top-1 rate": ("top1_rate", None)},
                zero_line=False,
                limits=(0.0, 1.0),
            )
        )
    overtake = overtake_layers(summary)
    norms = set(rows["norm"].dropna().map(bool)) if "norm" in rows else set()
    path = run.figure_path("answer-prob")
    save_figure(answer_prob_figure(summary, overtake, norms, bands=long), path)
    section.figures["Answer probability by layer"] = path
    where = ", ".join(f"{t}: {'never' if v is None else f'layer {v + 1}'}" for t, v in overtake.items())
    read = projection_text(norms, int(summary["layer"].max()) + 1)
    section.notes = (
        f"The last position's hidden state after each layer, {read}; "
        "mean over samples with its 95% band. The true letter stays above the "
        f"strongest false one from (1-based) {where}. " + LAYER_NOTE.format(table="answer-prob")
    )
    return section


def projection_text(norms: set[bool], num_layers: int) -> str:
    """How the records' hidden states were read (their ``norm`` values): through the final
    norm on every layer, or only on the last (the output of the last layer is always normed,
    as the model's own output)."""
    if norms == {True}:
        return "read through the final norm and the output head"
    if norms == {False}:
        return (
            f"read through the output head without the final norm on layers 1-{num_layers - 1} "
            "(as the paper's code for every family but VideoLLaMA3); the last layer's output goes "
            "through the final norm, as the model's own output"
        )
    if not norms:
        return "read through the output head (the records do not say whether the final norm was applied)"
    return (
        "read through the output head, for some samples through the final norm on every layer "
        "and for others without it before the last layer (the records mix both settings: the "
        "curves pool them)"
    )


def projection_title(norms: set[bool]) -> str:
    """The figure title's note on the final norm (empty when the records do not say)."""
    if norms == {True}:
        return " (final norm on every layer)"
    if norms == {False}:
        return " (no final norm before the last layer)"
    return " (final norm on some samples only)" if norms else ""


def answer_prob_figure(
    summary: pd.DataFrame,
    overtake: dict[str, int | None] | None = None,
    norms: set[bool] | None = None,
    bands: pd.DataFrame | None = None,
) -> Any:
    """Per task: mean probability of the true option letter vs the false ones, by layer;
    ``norms``: the records' ``norm`` values, named in the title; ``bands``: each curve's 95%
    band (columns ``task``, ``layer``, ``option`` as the curves' labels, ``p_lo``, ``p_hi``),
    drawn around it."""
    from ..report.figures import pyplot

    plt = pyplot()
    tasks = sorted(summary["task"].unique())
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols) if tasks else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        d = summary[summary["task"] == task].sort_values("layer")
        x = d["layer"] + 1
        for column, label, style in (
            ("p_true", "true option", {"marker": "o", "ms": 3}),
            ("p_false_max", "strongest false option", {"marker": "s", "ms": 3}),
            ("p_false_mean", "false options (mean)", {"ls": "--"}),
        ):
            (line,) = ax.plot(x, d[column], label=label, **style)
            if bands is not None:
                b = bands[(bands["task"] == task) & (bands["option"] == label)].sort_values("layer")
                ax.fill_between(b["layer"] + 1, b["p_lo"], b["p_hi"], color=line.get_color(), alpha=0.2)
        if overtake and overtake.get(task) is not None:
            ax.axvline(overtake[task] + 1, color="gray", ls=":", label="true overtakes")
        ax.set_title(f"{task} (n={int(d['n'].max())})", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("probability")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(f"Answer probability read from each layer{projection_title(norms or set())}", fontsize=11)
    fig.tight_layout()
    return fig
