"""Layer-wise answer probability ("generation probability", paper Fig. 9).

Project the last position's residual stream after every decoder layer through the final
norm and the output head and read the probability of the true option letter and of each
false option letter, on the correctly answered samples by default (as the paper's figure;
``sample_mode="all"`` for every sample). ``norm=False`` skips the final norm for intermediate layers, as the
paper's code did for LLaVA (the last layer's output is always normed, as in the model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..engine import Engine
from ..errors import PlanError
from ..models.base import Adapter, Prepared
from .base import ANALYSES, SAMPLE_MODES, Baseline


@ANALYSES.register("answer-prob", "probability of each option letter read from every layer")
@dataclass
class AnswerProbability:
    """One record per sample x layer: the option letters' probabilities at the last position."""

    name: ClassVar[str] = "answer-prob"
    needs_knockout: ClassVar[bool] = False
    norm: bool = True
    sample_mode: str = "correct"  # the paper's figure averages the correctly answered samples

    def __post_init__(self) -> None:
        if self.sample_mode not in SAMPLE_MODES:
            raise PlanError(f"unknown sample mode {self.sample_mode!r}; choose from {SAMPLE_MODES}")

    def config(self) -> dict[str, Any]:
        return asdict(self)

    @torch.inference_mode()
    def records(
        self, adapter: Adapter, prepared: Prepared, engine: Engine, base: Baseline
    ) -> list[dict[str, Any]]:
        if not base.keep(self.sample_mode) or prepared.sample.answer is None:
            return []
        lm = engine.lm
        n = lm.num_layers
        last = torch.stack([engine.hidden_states[layer + 1][0, -1] for layer in range(n)])  # (L, d)
        if self.norm:
            last = lm.norm(last)
        else:
            last = torch.cat([last[:-1], lm.norm(last[-1:])])
        probs = lm.lm_head(last).float().softmax(-1)[:, list(prepared.option_ids)]  # (L, options)
        answer = prepared.sample.answer
        rows = []
        for layer in range(n):
            p = probs[layer].tolist()
            false = [x for i, x in enumerate(p) if i != answer]
            rows.append(
                {
                    "layer": layer,
                    "norm": self.norm,
                    "p_true": p[answer],
                    "p_false_mean": float(np.mean(false)) if false else None,
                    "p_false_max": max(false) if false else None,
                    "option_probs": p,
                    "true_rank": int(sorted(p, reverse=True).index(p[answer])) + 1,
                    "correct_base": base.correct,
                }
            )
        return rows


def summarize_answer_prob(records: pd.DataFrame) -> pd.DataFrame:
    """Per task x layer: mean probability of the true letter and of the false letters."""
    df = records[(records["analysis"] == "answer-prob") & records["error"].isna()]
    if df.empty:
        return pd.DataFrame()
    out = df.groupby(["task", "layer"]).agg(
        n=("p_true", "size"),
        p_true=("p_true", "mean"),
        p_false_mean=("p_false_mean", "mean"),
        p_false_max=("p_false_max", "mean"),
        top1_rate=("true_rank", lambda s: float((s == 1).mean())),
    )
    return out.reset_index()


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
