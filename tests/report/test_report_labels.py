"""What the report says about a run matches what the run did: summary tables' layer
numbers, the answer-prob projection, the knockout window style and the 95% bands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

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
