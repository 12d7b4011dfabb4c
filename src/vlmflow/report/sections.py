"""The report sections of vlmflow's own analyses (flow, answer-prob, logit-lens, attention,
pathways), registered in :data:`~vlmflow.report.BUILTIN_SECTIONS`.

Each function receives one analysis's error-free records and the run's ``figures/``
folder, and returns a :class:`~vlmflow.report.Section`: the analysis's own summary table
(``summarize_*`` of its module, saved as ``summary/<name>.csv``), interactive charts with
95% confidence bands computed here from the per-sample records, and its PNG figures. An
analysis module that registers its own section with ``@report_section`` replaces the one
here. Any other analysis gets the generic section.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import BUILTIN_SECTIONS, Bars, Chart, Section, ci95

MAX_SAMPLE_FIGURES = 4


def mean_ci(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Per ``keys``: ``n``, ``<value>_mean`` and ``<value>_ci95`` of a numeric column."""
    data = df[keys].copy()
    data[value] = pd.to_numeric(df[value], errors="coerce")
    g = data.groupby(keys, dropna=False)[value]
    out = g.agg(n="size")
    out[f"{value}_mean"] = g.mean()
    out[f"{value}_ci95"] = g.apply(ci95)
    return out.reset_index()


@BUILTIN_SECTIONS.register("flow", "attention knockout curves per target, task and cut")
def flow_section(rows: pd.DataFrame, figures_dir: Path) -> Section:
    """Per target: the % change of the answer's probability with its 95% CI per task
    (panels) and cut (curves); and the PNG figures in the paper's layout."""
    from ..analyses.information_flow import summarize_flow
    from .figures import flow_by_task_figure, flow_figure, save_figure

    flow = summarize_flow(rows, rows.attrs.get("task_samples"))
    section = Section("Attention knockout (flow)", summaries={"flow": flow} if not flow.empty else {})
    if flow.empty:
        return section
    values = {
        "% change of p(baseline answer)": ("rel_pred_mean", "rel_pred_ci95"),
        "% change of p(ground truth)": ("rel_gt_mean", "rel_gt_ci95"),
        "accuracy under knockout, of the analysed samples": ("acc_of_analysed", None),
        "accuracy under knockout, of all samples (paper)": ("acc_of_all", None),
    }
    for target in sorted(flow["target"].unique()):
        data = flow[flow["target"] == target]
        section.charts.append(Chart(f"Knockout: {target}", data, values, series=("condition",)))
        path = figures_dir / f"flow-{target}.png"
        save_figure(flow_figure(flow, target), path)
        section.figures[f"Knockout: {target}"] = path
    if "cross-frame" in set(flow["condition"]):
        data = flow[flow["condition"] == "cross-frame"]
        section.charts.append(
            Chart("Cross-frame knockout, tasks compared", data, values, series=("task",), panel=None)
        )
        path = figures_dir / "cross-frame-by-task.png"
        save_figure(flow_by_task_figure(flow, "cross-frame"), path)
        section.figures["Cross-frame knockout per task"] = path
    window = int(rows["window"].iloc[0]) if "window" in rows else None
    section.notes = (
        "Each curve blocks one set of attention edges in a window of layers"
        + (f" ({window} layers)" if window is not None else "")
        + " centred on the layer on the x axis; y is the mean relative change of the answer's "
        "probability over the task's samples, with its 95% confidence band."
    )
    return section


@BUILTIN_SECTIONS.register("answer-prob", "option-letter probabilities read from every layer")
def answer_prob_section(rows: pd.DataFrame, figures_dir: Path) -> Section:
    """The true option letter against the false ones, layer by layer, per task."""
    from ..analyses.answer_probability import overtake_layers, summarize_answer_prob
    from .figures import answer_prob_figure, save_figure

    summary = summarize_answer_prob(rows)
    section = Section("Answer probability by layer", summaries={"answer-prob": summary})
    if summary.empty:
        return section
    parts = []
    for column, label in (
        ("p_true", "true option"),
        ("p_false_max", "strongest false option"),
        ("p_false_mean", "false options (mean)"),
    ):
        if column in rows:
            part = mean_ci(rows, ["task", "layer"], column).rename(
                columns={f"{column}_mean": "p_mean", f"{column}_ci95": "p_ci95"}
            )
            parts.append(part.assign(option=label))
    long = pd.concat(parts, ignore_index=True)
    section.charts.append(
        Chart(
            "Probability of the option letters read from each layer",
            long,
            {"probability": ("p_mean", "p_ci95")},
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
    path = figures_dir / "answer-prob.png"
    save_figure(answer_prob_figure(summary, overtake), path)
    section.figures["Answer probability by layer"] = path
    where = ", ".join(f"{t}: {'never' if v is None else f'layer {v + 1}'}" for t, v in overtake.items())
    section.notes = (
        "The last position's hidden state after each layer, read through the final norm and the "
        "output head; mean over samples with its 95% band. The true letter stays above the "
        f"strongest false one from (1-based) {where}."
    )
    return section


@BUILTIN_SECTIONS.register("logit-lens", "spatial / temporal words among the video tokens' lens tokens")
def logit_lens_section(rows: pd.DataFrame, figures_dir: Path) -> Section:
    """Per layer, the share of video tokens whose top-1 lens token is a spatial or a
    temporal keyword, and the most frequent top-1 tokens."""
    from ..analyses.logit_lens import summarize_keyword_frequency, summarize_logit_lens
    from .figures import lens_frequency_figure, save_figure

    summary = summarize_logit_lens(rows)
    section = Section("Logit lens on video tokens", summaries={"logit-lens": summary})
    if summary.empty:
        return section
    for kind, table in summarize_keyword_frequency(rows).items():
        section.summaries[f"logit-lens-keywords-{kind}"] = table
    parts = []
    for column, label in (("spatial_hits", "spatial words"), ("temporal_hits", "temporal words")):
        data = rows[["task", "layer"]].assign(rate=rows[column] / rows["n_video"])
        parts.append(mean_ci(data, ["task", "layer"], "rate").assign(words=label))
    section.charts.append(
        Chart(
            "Video tokens whose top-1 lens token is a keyword",
            pd.concat(parts, ignore_index=True),
            {"fraction of video tokens": ("rate_mean", "rate_ci95")},
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
                    "layer": int(layer) + 1,
                    "most frequent top-1 tokens (share)": ", ".join(
                        f"{w!r} {c / max(1, len(words)):.0%}" for w, c in common.items()
                    ),
                }
            )
        section.summaries["logit-lens-top-tokens"] = pd.DataFrame(top)
    path = figures_dir / "logit-lens.png"
    save_figure(lens_frequency_figure(summary), path)
    section.figures["Keyword frequency by layer"] = path
    _sample_figures(section, figures_dir / "logit-lens", "Lens tokens over the frames")
    projection = ", ".join(sorted(map(str, rows["projection"].unique()))) if "projection" in rows else "?"
    section.notes = (
        f"Projection: {projection} ('unembed': final norm and output head, the standard lens; "
        "'embed': the input embedding matrix, as the paper's code). Layer 0 is the embeddings; a "
        "hit is a top-1 token equal to a keyword's first sub-token. The logit-lens-keywords "
        "tables are the paper's statistic: per keyword, hits in bins of layers, keywords with too "
        "few hits dropped, rows normalised, MEAN their average."
    )
    return section


@BUILTIN_SECTIONS.register("attention", "attention mass on the video, baseline vs a cut")
def attention_section(rows: pd.DataFrame, figures_dir: Path) -> Section:
    """Attention mass of the query tokens on the video per layer, baseline against the
    comparison plan; per-frame heatmaps as PNG."""
    from ..analyses.attention_maps import summarize_attention
    from .figures import attention_frames_figure, save_figure

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
                {"attention mass on video tokens": ("video_mass_mean", "video_mass_ci95")},
                series=("condition",),
                zero_line=False,
                limits=(0.0, 1.0),
            )
        )
        path = figures_dir / f"attention-frames-{query}.png"
        save_figure(attention_frames_figure(summary, query), path)
        section.figures[f"Attention of the {query} tokens to each frame"] = path
    _sample_figures(section, figures_dir / "attention", "Attention over the frames")
    _sample_figures(section, figures_dir / "attention-words", "Attention of a question word, log10(5e-5 + a)")
    section.notes = (
        "Mean over heads and query tokens of the attention weights on the video tokens, per layer; "
        "'baseline' is the unmodified model, the other condition the comparison cut in every layer."
    )
    return section


@BUILTIN_SECTIONS.register("pathways", "accuracy with only the effective pathways kept")
def pathways_section(rows: pd.DataFrame, figures_dir: Path) -> Section:
    """Accuracy with the effective pathways only, against random blocking of as many edges."""
    from ..analyses.pathways import summarize_pathways

    summary = summarize_pathways(rows)
    section = Section("Effective pathways", summaries={"pathways": summary})
    if summary.empty:
        return section
    values = {
        "baseline": ("acc_baseline", None),
        "pathway only": ("acc_pathway", None),
        "strict pathway": ("acc_strict", None),
        "random, same fraction (sd over seeds)": ("acc_random_mean", "acc_random_sd"),
    }
    values = {k: (v, e) for k, (v, e) in values.items() if v in summary}
    section.charts.append(Bars("Accuracy per task", summary.astype({"task": str}), "task", values))
    if "suppressed_pathway" in summary:
        frac = float(summary.loc[summary["task"] == "all", "suppressed_pathway"].iloc[0])
        section.notes = (
            f"Keeping only the pathway suppresses {frac:.0%} of the attention edges (causal lower "
            "triangle, summed over layers); random blocking suppresses the same fraction."
        )
    return section


def _sample_figures(section: Section, folder: Path, title: str) -> None:
    """Add a few per-sample PNGs an analysis drew during the run (``figures/<name>/``)."""
    if folder.is_dir():
        for path in sorted(folder.glob("*.png"))[:MAX_SAMPLE_FIGURES]:
            section.figures[f"{title}: {path.stem}"] = path
