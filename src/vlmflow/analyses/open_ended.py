"""Open-ended knockout (paper: VCGBench): the knockout sweeps of the flow analysis, but the
model generates text under each plan; the first generated token's probability is traced
and the generated text kept, before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from ..cuts import WINDOW_STYLES
from ..engine import Engine
from ..errors import PlanError
from ..generation import generate_with_plan
from ..models.base import Adapter, Prepared
from .base import ANALYSES, Baseline
from .information_flow import relative_change
from .targets import TARGETS, sweep, target_curves


@ANALYSES.register("open-ended", "knockout sweeps with generation under each plan (open-ended answers)")
@dataclass
class OpenEnded:
    """One record per sample x curve x sweep layer with the generated text before/after."""

    name: ClassVar[str] = "open-ended"
    targets: tuple[str, ...] = ("vql-to-ql",)
    custom: tuple[str, ...] = ()
    window: int = 9
    window_style: str = "center"
    layers: tuple[int, ...] | None = None
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        for t in self.targets:
            TARGETS.get(t)
        if self.window_style not in WINDOW_STYLES:
            raise PlanError(f"unknown window style {self.window_style!r}; choose from {WINDOW_STYLES}")

    def config(self) -> dict[str, Any]:
        return asdict(self)

    @torch.inference_mode()
    def records(
        self, adapter: Adapter, prepared: Prepared, engine: Engine, base: Baseline
    ) -> list[dict[str, Any]]:
        lm = engine.lm
        tok = adapter.tokenizer
        plain = generate_with_plan(
            adapter.model, lm, prepared.inputs, None, max_new_tokens=self.max_new_tokens
        )
        first = plain.token_ids[0]
        p_base = float(plain.first_probs[first])
        text_base = tok.decode(list(plain.token_ids), skip_special_tokens=True)
        rows = []
        for target, name, edges in target_curves(self.targets, prepared.layout, self.custom):
            for point in sweep(
                [(name, edges)],
                lm.num_layers,
                window=self.window,
                style=self.window_style,
                layers=self.layers,
            ):
                gen = generate_with_plan(
                    adapter.model,
                    lm,
                    prepared.inputs,
                    engine.compile(point.plan),
                    max_new_tokens=self.max_new_tokens,
                )
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
                        "text_base": text_base,
                        "text_new": tok.decode(list(gen.token_ids), skip_special_tokens=True),
                        "reference": prepared.sample.answer_text,
                    }
                )
        return rows
