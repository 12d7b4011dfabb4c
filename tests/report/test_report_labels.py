"""What the report says about a run matches what the run did: summary tables' layer
numbers, the answer-prob projection, the knockout window style and the 95% bands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

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
    """``layer`` in summary/flow.csv and summary/answer-prob.csv reads 0, 1, ... as in
    logit-lens.csv, not 0.0 (the records' column is float: eval rows have no layer)."""
    run = write_run(tmp_path / "run")
    finalize(run)
    for name in ("flow", "answer-prob"):
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
