"""Summaries, figures and the HTML report of a run; everything here only reads records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..store import read_records

__all__ = ["finalize", "accuracy_table"]


def accuracy_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per task: samples, failures and baseline accuracy (from the ``eval`` records)."""
    ev = records[records["analysis"] == "eval"]
    if ev.empty:
        return pd.DataFrame(columns=["task", "n", "failed", "accuracy"])
    ok = ev[ev["error"].isna()]
    out = ev.groupby("task").agg(n=("sample_id", "size"))
    out["failed"] = ev.groupby("task")["error"].apply(lambda s: int(s.notna().sum()))
    out["accuracy"] = ok.groupby("task")["correct"].apply(lambda s: float(pd.Series(s, dtype="float").mean()))
    return out.reset_index()


def finalize(run_dir: str | Path, *, html: bool = True) -> dict[str, Any]:
    """Write ``summary/*.csv``, ``figures/*.png``, ``records.parquet`` and ``report.html``."""
    from ..analyses.information_flow import summarize_flow
    from .figures import flow_by_task_figure, flow_figure

    run_dir = Path(run_dir)
    records = read_records(run_dir)
    if records.empty:
        return {"records": 0}
    (run_dir / "summary").mkdir(exist_ok=True)
    (run_dir / "figures").mkdir(exist_ok=True)
    records.to_parquet(run_dir / "records.parquet", index=False)
    acc = accuracy_table(records)
    acc.to_csv(run_dir / "summary" / "accuracy.csv", index=False)
    figures: dict[str, Path] = {}
    flow = summarize_flow(records)
    if not flow.empty:
        flow.to_csv(run_dir / "summary" / "flow.csv", index=False)
        for target in sorted(flow["target"].unique()):
            path = run_dir / "figures" / f"flow-{target}.png"
            _save(flow_figure(flow, target), path)
            figures[f"Knockout: {target}"] = path
        if "cross-frame" in set(flow["condition"]):
            path = run_dir / "figures" / "cross-frame-by-task.png"
            _save(flow_by_task_figure(flow, "cross-frame"), path)
            figures["Cross-frame knockout per task"] = path
    result = {"records": len(records), "accuracy": acc, "flow": flow, "figures": figures}
    if html:
        from .html import write_report

        result["report"] = write_report(run_dir, records, result)
    return result


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
