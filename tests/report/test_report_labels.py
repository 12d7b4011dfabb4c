"""What the report says about a run matches what the run did: summary tables' layer
numbers, the answer-prob projection, the knockout window style and the 95% bands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from vlmflow.report import finalize
from vlmflow.store import RecordStore


def write_run(root: Path, *, norm: bool = True, window_style: str = "center", layers: int = 4) -> Path:
    """A run folder of hand-written eval, flow and answer-prob records (4 samples, 2 tasks)."""
    store = RecordStore(root)
    (root / "manifest.json").write_text(json.dumps({"config": {"model": "fake", "data": "fake:1"}}))
    for i in range(4):
        sid, task = f"s{i}", ("left_right", "counting")[i % 2]
        common = {"task": task, "model": "fake", "error": None}
        store.write_unit(sid, "eval", [{**common, "correct": True, "p_pred": 0.6}])
        flow, answer = [], []
        for layer in range(layers):
            rel = -5.0 * (layer + 1) + i
            flow.append(
                {
                    **common,
                    "target": "cross-frame",
                    "condition": "cross-frame",
                    "layer": layer,
                    "window": 3,
                    "window_style": window_style,
                    "rel_pred": rel,
                    "rel_gt": rel,
                    "correct_new": bool(i % 2),
                    "p_pred_base": 0.6,
                    "p_pred_new": 0.6 * (1 + rel / 100),
                }
            )
            p_true = 0.2 + 0.15 * layer + 0.01 * i
            probs = [p_true, (1 - p_true) / 2, (1 - p_true) / 2]
            answer.append(
                {
                    **common,
                    "layer": layer,
                    "norm": norm,
                    "p_true": p_true,
                    "p_false_mean": (1 - p_true) / 2,
                    "p_false_max": (1 - p_true) / 2,
                    "option_probs": probs,
                    "true_rank": 1 if p_true > probs[1] else 2,
                    "correct_base": True,
                }
            )
        store.write_unit(sid, "flow", flow)
        store.write_unit(sid, "answer-prob", answer)
    return root


def test_summary_tables_write_layers_as_integers(tmp_path: Path) -> None:
    """``layer`` in summary/flow.csv, answer-prob.csv, open-ended-curves.csv and
    attention.csv reads 0, 1, ... as in logit-lens.csv, not 0.0 (the records' column is
    float: eval rows, and open-ended's skipped anchors, have no layer)."""
    run = write_run(tmp_path / "run")
    store = RecordStore(run)
    for i in range(4):
        sid, task = f"s{i}", ("left_right", "counting")[i % 2]
        common = {"task": task, "model": "fake", "error": None}
        verb = {**common, "response": "He runs and jumps.", "n_verbs": 2}
        kept = [
            {**verb, "anchor": "verb 1", "anchor_order": 1, "condition": "video -> last", "layer": layer,
             "rel_anchor": -1.0 * layer - i}
            for layer in range(4)
        ]  # fmt: skip
        skipped = {**verb, "anchor": "verb 3", "anchor_order": 3, "skip_reason": "2 verbs, fewer than 3"}
        store.write_unit(sid, "open-ended", [*kept, skipped])
        attention = [
            {**common, "condition": "baseline", "layer": layer, "query": "last", "video_mass": 0.5,
             "frame_mass": [0.25, 0.25], "token_attention": [0.125] * 4, "row_sum": 1.0, "note": None}
            for layer in range(4)
        ]  # fmt: skip
        store.write_unit(sid, "attention", attention)
    finalize(run)
    for name in ("flow", "answer-prob", "open-ended-curves", "attention"):
        with open(run / "summary" / f"{name}.csv") as f:
            layers = [row["layer"] for row in csv.DictReader(f)]
        assert sorted(set(layers)) == ["0", "1", "2", "3"], (name, layers)


def section(result: dict, key: str):
    return next(s for s in result["sections"] if s.key == key)


def test_answer_prob_note_and_figure_say_whether_the_final_norm_was_applied(tmp_path: Path) -> None:
    """--no-norm (or --paper for a family the paper read unnormed): the note and the figure
    title say the intermediate layers skipped the final norm, not that they went through it."""
    from vlmflow.analyses.answer_probability import answer_prob_figure, summarize_answer_prob

    off = finalize(write_run(tmp_path / "off", norm=False))
    note = section(off, "answer-prob").notes
    assert "through the final norm and the output head" not in note
    assert "without the final norm on layers 1-3" in note
    assert "the last layer's output goes through the final norm" in note
    assert "without the final norm on layers 1-3" in (tmp_path / "off" / "report.html").read_text()

    on = finalize(write_run(tmp_path / "on", norm=True))
    assert "read through the final norm and the output head" in section(on, "answer-prob").notes

    records = pd.read_parquet(tmp_path / "off" / "records.parquet")
    summary = summarize_answer_prob(records)
    titles = {norm: answer_prob_figure(summary, None, {norm})._suptitle.get_text() for norm in (True, False)}
    assert "no final norm before the last layer" in titles[False]
    assert "final norm on every layer" in titles[True]


@pytest.mark.parametrize(
    ("style", "words", "label"),
    [
        (
            "center",
            "in the window of 3 layers x-1 to x+1 centred on the layer x",
            "centre of the knockout window",
        ),
        (
            "inverse",
            "in every layer outside the window of 3 layers x-1 to x+1",
            "centre of the window left open",
        ),
        ("top_down", "in layers x to L (1-based, L the last layer)", "blocked from this layer to the last"),
        ("bottom_up", "in layers 1 to x (1-based)", "blocked from the first layer to this one"),
    ],
)
def test_flow_note_and_x_label_name_the_window_style_the_sweep_used(
    tiny_llava, tmp_path: Path, style: str, words: str, label: str
) -> None:
    """A tiny sweep per --window-style: the note and the per-task figure's x label say which
    layers were blocked (the old note said 'centred' for every style), and the blocked
    layers in the records are the ones the note names for x = layer + 1."""
    import torch

    from vlmflow.analyses.information_flow import InformationFlow, flow_by_task_figure, summarize_flow
    from vlmflow.api import Options, run
    from vlmflow.probe import Model

    out = tmp_path / "run"
    flow = InformationFlow(
        targets=("cross-frame",), window=3, window_style=style, layers=(1,), sample_mode="all"
    )
    opts = Options(model="tiny", data="synthetic:1", tasks=("object_count",), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(opts, [flow], out, model=Model(tiny_llava))
    finally:
        torch.set_num_threads(threads)
    result = finalize(out)
    note = section(result, "flow").notes
    assert words in note, note
    assert ("centred" in note) == (style in ("center", "inverse"))

    records = pd.read_parquet(out / "records.parquet")
    rows = records[records["analysis"] == "flow"]
    num_layers, x = tiny_llava.num_layers, 1 + 1  # the report's 1-based x of the swept layer 1
    blocked = {int(b) + 1 for b in rows["blocked_layers"].iloc[0]}  # 1-based, as the note
    window = {x - 1, x, x + 1}
    expected = {
        "center": window,
        "inverse": set(range(1, num_layers + 1)) - window,
        "top_down": set(range(x, num_layers + 1)),
        "bottom_up": set(range(1, x + 1)),
    }[style]
    assert blocked == expected, (style, num_layers, blocked)

    fig = flow_by_task_figure(summarize_flow(records), "cross-frame", style=rows["window_style"].iloc[0])
    assert label in fig.axes[0].get_xlabel()


def test_answer_prob_and_logit_lens_pngs_draw_the_95_percent_band(
    tiny_llava, tmp_path: Path, monkeypatch
) -> None:
    """docs/paper-parity.md: answer-prob and logit-lens draw the band in the PNG figures too,
    not only in the HTML charts: each curve of answer-prob.png and logit-lens.png has a
    filled band in its colour, spanning the chart's bounds."""
    import torch
    from matplotlib.collections import PolyCollection

    import vlmflow.report.figures as figures
    from vlmflow.analyses.answer_probability import AnswerProbability
    from vlmflow.analyses.logit_lens import LogitLens
    from vlmflow.api import Options, run
    from vlmflow.probe import Model

    out = tmp_path / "run"
    opts = Options(model="tiny", data="synthetic:2", tasks=("object_count",), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(
            opts,
            [AnswerProbability(sample_mode="all"), LogitLens(sample_mode="all", overlays=0)],
            out,
            model=Model(tiny_llava),
        )
    finally:
        torch.set_num_threads(threads)
    saved: dict[str, object] = {}
    real = figures.save_figure

    def keep(fig, path, *args, **kwargs):
        saved[Path(path).stem] = fig
        # count before the figure is freed
        fig._bands = [[c for c in ax.collections if isinstance(c, PolyCollection)] for ax in fig.axes]
        fig._lines = [len(ax.get_lines()) for ax in fig.axes]
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(figures, "save_figure", keep)
    finalize(out)
    for name in ("answer-prob", "logit-lens"):
        fig = saved[name]
        curves = [n for n in fig._lines if n]
        bands = [len(b) for b, n in zip(fig._bands, fig._lines, strict=True) if n]
        assert curves and bands == curves, (name, curves, bands)  # one band per curve


def test_n_counts_the_values_a_mean_averages_not_the_rows(tmp_path: Path) -> None:
    """A sample whose value is NaN (a probability that could not be read) was counted in
    ``n`` while the mean and the CI skipped it: flow.csv said n=2 over a mean of 1 value.
    ``n`` now counts the values (not NaN) each mean averages; a value column counted
    otherwise than the rest gets its own ``n_<column>``."""
    import numpy as np

    from vlmflow.analyses.screened_flow import screened_flow_section
    from vlmflow.report import mean_ci, summarize_layers
    from vlmflow.rundir import RunDir

    run = write_run(tmp_path / "run")
    store = RecordStore(run)
    common = {"task": "counting", "model": "fake", "error": None}
    store.write_unit("s9", "eval", [{**common, "correct": True, "p_pred": 0.6}])
    nan = float("nan")
    flow = [
        {**common, "target": "cross-frame", "condition": "cross-frame", "layer": layer, "window": 3,
         "window_style": "center", "rel_pred": nan, "rel_gt": -1.0, "correct_new": True,
         "p_pred_base": 0.6, "p_pred_new": nan}
        for layer in range(4)
    ]  # fmt: skip
    answer = [
        {**common, "layer": layer, "norm": True, "p_true": nan, "p_false_mean": 0.2, "p_false_max": 0.3,
         "option_probs": [0.5, 0.2, 0.3], "true_rank": nan, "correct_base": True}
        for layer in range(4)
    ]  # fmt: skip
    store.write_unit("s9", "flow", flow)
    store.write_unit("s9", "answer-prob", answer)
    result = finalize(run)
    flow_csv = pd.read_csv(run / "summary" / "flow.csv").set_index("task")
    # counting: s1, s3 and s9; s9's rel_pred is NaN, its rel_gt is not
    assert set(flow_csv.loc["counting", "n"]) == {3} and set(flow_csv.loc["counting", "n_rel_pred"]) == {2}
    assert set(flow_csv.loc["left_right", "n"]) == set(flow_csv.loc["left_right", "n_rel_pred"]) == {2}
    assert "n_rel_gt" not in flow_csv
    answer_csv = pd.read_csv(run / "summary" / "answer-prob.csv").set_index("task")
    assert set(answer_csv.loc["counting", "n"]) == {3} and set(answer_csv.loc["counting", "n_p_true"]) == {2}
    last = answer_csv.loc["counting"].set_index("layer").loc[3]
    assert last["top1_rate"] == 1.0  # over the 2 ranks read (2 of 3 with s9's NaN rank counted)
    chart = next(c for c in section(result, "answer-prob").charts if c.title.startswith("Probability"))
    true = chart.data[(chart.data["option"] == "true option") & (chart.data["task"] == "counting")]
    assert set(true["n"]) == {2}

    rows = pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "task": "t", "analysis": "x", "layer": 0,
         "p": [0.1, nan, 0.3], "q": [1.0, 2.0, 3.0]}
    )  # fmt: skip
    generic = summarize_layers(rows)
    assert generic[["n", "n_p"]].values.tolist() == [[3, 2]] and "n_q" not in generic
    assert mean_ci(rows, ["task"], "p")[["n", "p_mean"]].values.tolist() == [[2, 0.2]]

    plan = {"kind": "plan", "target": "t", "condition": "c", "layer": 1.0}
    screen_rows = pd.DataFrame(
        [
            {**plan, "method": "estimate", "rel_pred": -1.0},
            {**plan, "method": "estimate", "rel_pred": nan},
            {**plan, "method": "exact", "verified_as": "top", "rel_pred": -2.0, "rel_pred_estimate": nan},
            {**plan, "method": "exact", "verified_as": "top", "rel_pred": -3.0, "rel_pred_estimate": -1.0},
            {"kind": "screen", "plans": 330.0, "verified": 10.0},
        ]
    )
    screen_rows = screen_rows.assign(task="t", sample_id="s", pair=None)
    screen = screened_flow_section(screen_rows, RunDir(tmp_path / "run"))
    estimates = screen.summaries["flow-screen-estimates"]
    assert estimates["n"].tolist() == [1]
    verified = screen.summaries["flow-screen-verified"]
    assert verified[["n", "n_rel_pred_estimate"]].values.tolist() == [[2, 1]]
    assert np.isclose(verified["rel_pred_estimate_mean"].iloc[0], -1.0)


def test_answer_prob_panels_count_samples_not_false_options(tmp_path: Path) -> None:
    """The answer-prob chart's panel titles took n from the pooled "false options (mean)"
    curve, one row per false option: 2 samples of 3 options read "n=4". Every curve's n is
    now the samples it is over (the pooled curve's option rows are ``n_options``)."""
    import re

    run = write_run(tmp_path / "run")
    result = finalize(run)
    page = (run / "report.html").read_text()
    charts = json.loads(re.search(r"id='chart-data'>(.*?)</script>", page, re.S).group(1))
    chart = next(c for c in charts if c["title"].startswith("Probability of the option letters"))
    assert sorted(p["name"] for p in chart["panels"]) == ["counting (n=2)", "left_right (n=2)"]
    data = next(c for c in section(result, "answer-prob").charts if c.title == chart["title"]).data
    pooled = data[data["option"] == "false options (mean)"]
    assert set(pooled["n"]) == {2} and set(pooled["n_options"]) == {4}


def test_summary_tables_say_how_they_number_layers_and_screen_counts_are_integers(tmp_path: Path) -> None:
    """flow.csv and answer-prob.csv keep the records' 0-based layers while their charts count
    from 1; unlike the logit-lens and screen sections, their notes did not say so. The screen's
    tables wrote layers and plan counts as floats (10.0, 330.0). A task named "all" shared its
    name with the pathways table's overall row."""
    from vlmflow.analyses.pathways import summarize_pathways
    from vlmflow.analyses.screened_flow import screened_flow_section
    from vlmflow.rundir import RunDir

    result = finalize(write_run(tmp_path / "run"))
    for key, table in (("flow", "flow"), ("answer-prob", "answer-prob")):
        note = section(result, key).notes
        assert f"the summary table ({table}) keeps the records' layers, 0-based" in note, note
        assert "layer l is layer l + 1 on the x axis" in note

    nan = float("nan")
    plan = {"kind": "plan", "target": "t", "condition": "c", "layer": 10.0}
    rows = pd.DataFrame(
        [
            {**plan, "method": "estimate", "rel_pred": -1.0},
            {**plan, "method": "exact", "verified_as": "top", "rel_pred": -2.0, "rel_pred_estimate": -1.0},
            {"kind": "screen", "plans": 330.0, "verified": 10.0, "spearman_verified": 0.5},
            {"kind": "screen", "plans": 330.0, "verified": 10.0, "spearman_verified": nan},
        ]
    ).assign(task="t", sample_id="s", pair=None)
    screen = screened_flow_section(rows, RunDir(tmp_path / "run"))
    for key in ("flow-screen-estimates", "flow-screen-verified"):
        assert screen.summaries[key]["layer"].tolist() == [10], key
    agreement = screen.summaries["flow-screen-agreement"]
    assert agreement[["plans", "verified"]].to_csv(index=False) == "plans,verified\n330,10\n"

    records = pd.DataFrame(
        [
            {"analysis": "pathways", "error": None, "sample_id": f"s{i}", "task": task,
             "condition": "baseline", "correct": True, "suppressed_fraction": 0.0}
            for i, task in enumerate(["all", "all", "other"])
        ]
    )  # fmt: skip
    summary = summarize_pathways(records)
    assert summary["task"].tolist() == ["(all)", "all", "other"]
    assert summary["overall"].tolist() == [True, False, False] and summary["n"].tolist() == [3, 2, 1]
