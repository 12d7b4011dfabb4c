"""The main job on the embedded demo model, as a library call (``vlmflow demo`` runs it).

Every analysis on a held-out synthetic temporal benchmark, then the effective pathways
searched on half of the samples and reported on the other half, beside random blocking of
the same edge fraction (``OUT/pathways/``).

>>> import tempfile
>>> from vlmflow.demo import run_demo
>>> result, found = run_demo(tempfile.mkdtemp(), samples=1, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .api import Options, RunResult, run

# Per embedded model: sweep layers (window centres) of the knockout, its window, the layers
# a pathway-search move shifts a range by, and held-out samples per task. SmolLM2's 30
# layers are swept at every third centre with the paper's window of 9 and searched in
# steps of 10 layers on 2 items per task, so that the whole demo stays within about 5
# minutes on 2 CPU cores (at 3 items, every second centre and steps of 6 it took over 8).
SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {"layers": tuple(range(1, 30, 3)), "window": 9, "step": 10, "samples": 2},
    "tiny": {"layers": None, "window": 3, "step": 1, "samples": 16},
}


def demo_kind(model: str = "demo") -> str:
    """``"demo"`` (the SmolLM2 demo) or ``"tiny"``: ``demo`` is the tiny model until a
    trained SmolLM2 demo ships (see ``docs/demo_model.md``)."""
    from .models import DEMO_MODEL_DIR
    from .models.demo import is_shipped

    return "tiny" if model == "tiny" or (model == "demo" and not is_shipped(DEMO_MODEL_DIR)) else "demo"


def demo_analyses(window: int = 3, layers: tuple[int, ...] | None = None) -> list[Any]:
    """Every analysis the demo runs on all its samples (the pathways are searched after)."""
    from .analyses.answer_probability import AnswerProbability
    from .analyses.attention_maps import AttentionMaps
    from .analyses.information_flow import InformationFlow
    from .analyses.logit_lens import LogitLens
    from .analyses.targets import PAPER_TARGETS

    return [
        InformationFlow(targets=PAPER_TARGETS, window=window, layers=layers, sample_mode="correct"),
        AnswerProbability(sample_mode="all"),
        LogitLens(words="synthetic", topk=3, sample_mode="correct", overlays=2),
        AttentionMaps(compare="cross-frame", sample_mode="correct", overlays=2),
    ]


def run_demo(
    out: str | Path = "vlmflow-demo",
    *,
    model: str = "demo",
    samples: int | None = None,
    window: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[RunResult, RunResult]:
    """Every analysis on ``samples`` held-out synthetic items per task into ``out``, then
    the pathway search (calibration half, held-out report, random blocking beside it) into
    ``out/pathways``; both results. ``samples``/``window`` default per model
    (:data:`SETTINGS`). The tiny model was trained with each task's options in one fixed
    order, so it gets those; the SmolLM2 demo gets shuffled options."""
    from .analyses.pathways import search_and_evaluate

    kind = demo_kind(model)
    settings = SETTINGS[kind]
    samples = samples or settings["samples"]
    data = f"synthetic:{samples}:fixed" if kind == "tiny" else f"synthetic:{samples}"
    options = Options(model=model, data=data, device=device, progress=progress)
    loaded = options.load()
    analyses = demo_analyses(window or settings["window"], settings["layers"])
    result = run(options, analyses, out, model=loaded)
    found = search_and_evaluate(
        options,
        Path(out) / "pathways",
        calib=0.5,
        tolerance=0.02,
        step=settings["step"],
        seeds=(0, 1, 2),
        model=loaded,
    )
    return result, found


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Per task: where cutting cross-frame attention hurts most, and where the true option
    overtakes the false ones."""
    from .analyses.answer_probability import AnswerProbability

    lines = []
    flow = report.get("flow")
    if flow is not None and not flow.empty:
        cf = flow[flow["condition"] == "cross-frame"]
        lines.append("cross-frame knockout: window centres (1-based) where it hurts most")
        for task, d in cf.groupby("task"):
            worst = d.nsmallest(2, "rel_pred_mean")
            where = ", ".join(f"L{int(r.layer) + 1}: {r.rel_pred_mean:+.1f}%" for r in worst.itertuples())
            lines.append(f"  {task:18s} {where}")
    return lines + AnswerProbability.terminal(report)


def pathway_lines(report: dict[str, Any]) -> list[str]:
    """The searched pathway and its held-out accuracy beside random blocking."""
    from .analyses.pathways import Pathways

    lines = Pathways.terminal(report)
    if not lines:
        return []
    return ["effective pathways (searched on half the samples, reported on the other half):", *lines]
