"""The main job on the embedded demo model, as a library call (``vlmflow demo`` runs it).

>>> import tempfile
>>> from vlmflow.demo import run_demo
>>> result = run_demo(tempfile.mkdtemp(), samples=1, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .api import Options, RunResult, run


def demo_analyses(window: int = 3) -> list[Any]:
    """Every analysis as the demo runs it (the paper's 7B pathway scaled to the demo model)."""
    from .analyses.answer_probability import AnswerProbability
    from .analyses.attention_maps import AttentionMaps
    from .analyses.information_flow import InformationFlow
    from .analyses.logit_lens import LogitLens
    from .analyses.pathways import PRESETS, Pathways
    from .analyses.targets import PAPER_TARGETS

    return [
        InformationFlow(targets=PAPER_TARGETS, window=window, sample_mode="correct"),
        AnswerProbability(sample_mode="all"),
        LogitLens(words="synthetic", topk=3, sample_mode="correct", overlays=2),
        AttentionMaps(compare="cross-frame", sample_mode="correct", overlays=2),
        Pathways(spec=PRESETS["llava-next-7b-video-ft"], seeds=(0, 1, 2)),
    ]


def run_demo(
    out: str | Path = "vlmflow-demo",
    *,
    samples: int = 16,
    window: int = 3,
    device: str = "cpu",
    progress: bool = True,
) -> RunResult:
    """Every analysis on ``samples`` held-out synthetic items per task, into ``out``."""
    options = Options(model="demo", data=f"synthetic:{samples}:fixed", device=device, progress=progress)
    return run(options, demo_analyses(window), out)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Per task: where cutting cross-frame attention hurts most, and where the true option
    overtakes the false ones; the pathway table."""
    from .analyses.answer_probability import AnswerProbability
    from .analyses.pathways import Pathways

    lines = []
    flow = report.get("flow")
    if flow is not None and not flow.empty:
        cf = flow[flow["condition"] == "cross-frame"]
        lines.append("cross-frame knockout: window centres (1-based) where it hurts most")
        for task, d in cf.groupby("task"):
            worst = d.nsmallest(2, "rel_pred_mean")
            where = ", ".join(f"L{int(r.layer) + 1}: {r.rel_pred_mean:+.1f}%" for r in worst.itertuples())
            lines.append(f"  {task:18s} {where}")
    lines += AnswerProbability.terminal(report)
    pathways = Pathways.terminal(report)
    if pathways:
        lines += ["effective pathways (paper's 7B ranges scaled to the demo model):", *pathways]
    return lines
