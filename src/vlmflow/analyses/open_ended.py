"""Open-ended knockout (paper: VCGBench): the knockout sweeps of the flow analysis, but the
model generates text under each plan; the first generated token's probability is traced
and the generated text kept, before and after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..cuts import parse_layers
from .base import ANALYSES, Analysis, option
from .information_flow import check_sweep, relative_change
from .targets import sweep, target_curves

if TYPE_CHECKING:
    from ..probe import Probe


@ANALYSES.register("open-ended", "knockout sweeps with generation under each plan (open-ended answers)")
@dataclass
class OpenEnded(Analysis):
    """Open-ended knockout: generate under each plan; trace the first token, keep the text.

    One record per sample x curve x sweep layer with the generated text before/after."""

    name: ClassVar[str] = "open-ended"
    order: ClassVar[int] = 60
    targets: tuple[str, ...] | None = option(
        None, "knockout targets (default vql-to-ql)", "--target", "-t", cli=list
    )
    custom: tuple[str, ...] = option((), "custom curve SRC->DST[,SRC->DST] (repeatable)", "--cut")
    window: int = option(9, "layers blocked around each sweep layer")
    window_style: str = option("center", "center, inverse, top_down or bottom_up")
    layers: tuple[int, ...] | None = option(
        None, "sweep only these layers, 0-based", cli=str, parse=parse_layers
    )
    max_new_tokens: int = option(16, "tokens generated per plan")

    def __post_init__(self) -> None:
        if self.targets is None:
            self.targets = () if self.custom else ("vql-to-ql",)
        self.targets, self.custom = tuple(self.targets), tuple(self.custom)
        check_sweep(self.targets, self.window, self.window_style)

    @torch.inference_mode()
    def records(self, probe: Probe) -> list[dict[str, Any]]:
        tok = probe.adapter.tokenizer
        plain = probe.generate(None, max_new_tokens=self.max_new_tokens)
        first = plain.token_ids[0]
        p_base = float(plain.first_probs[first])
        rows = []
        for target, name, edges in target_curves(self.targets, probe.layout, self.custom):
            for point in sweep(
                [(name, edges)],
                probe.num_layers,
                window=self.window,
                style=self.window_style,
                layers=self.layers,
            ):
                gen = probe.generate(point.plan, max_new_tokens=self.max_new_tokens)
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
                        "text_base": plain.text,
                        "text_new": gen.text,
                        "reference": probe.sample.answer_text,
                    }
                )
        return rows
