"""The checks every model-family adapter must pass; each family's test module calls them.

- layout truth: changing frame group t's pixels changes exactly that group's span of
  input embeddings;
- the engine equals a plain full forward with the same masks for all four paper targets;
- a golden snapshot of the prompt and layout (regenerate on purpose with
  ``VLMFLOW_UPDATE_GOLDEN=1``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from vlmflow.analyses.targets import PAPER_TARGETS, sweep, target_curves
from vlmflow.engine import Engine, full_forward_logits
from vlmflow.sample import Sample

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-5  # fp32 probabilities; suffix recompute and packing reorder float sums (~1e-7 seen)


def input_embeddings(adapter, sample: Sample) -> tuple[torch.Tensor, object]:
    prepared = adapter.prepare(sample)
    engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
    return engine.hidden_states[0][0], prepared.layout


def perturb_group(frames: np.ndarray, t: int, frames_per_group: int) -> np.ndarray:
    """Invert the pixels of every input frame fused into frame group ``t``."""
    out = frames.copy()
    for f in range(t * frames_per_group, (t + 1) * frames_per_group):
        out[f] = 255 - out[f]
    return out


def check_layout_truth(adapter, sample: Sample) -> None:
    base, layout = input_embeddings(adapter, sample)
    assert layout.num_frames >= 2
    for t in range(layout.num_frames):
        frames = perturb_group(sample.frames, t, layout.frames_per_group)
        changed, _ = input_embeddings(adapter, sample.with_frames(frames))
        rows = set(torch.nonzero((changed - base).abs().amax(-1) > 0).flatten().tolist())
        span = layout.frames[t]
        offset = layout.frame_token_offsets[t] if layout.frame_token_offsets else 0
        h, w = layout.frame_grids[t]
        grid = set(range(span.start + offset, span.start + offset + h * w))
        assert grid <= set(range(span.start, span.end)), f"frame group {t}: grid outside its span"
        assert rows == grid, (
            f"frame group {t}: changed rows {sorted(rows)[:4]}.. are not exactly its grid tokens "
            f"{sorted(grid)[:4]}.. (span {span})"
        )


def check_engine_matches_plain(adapter, sample: Sample, window: int = 3) -> None:
    prepared = adapter.prepare(sample)
    lm = adapter.language_model()
    engine = Engine(lm, prepared.inputs, prepared.layout)
    plans = [
        p.plan
        for _t, name, edges in target_curves(PAPER_TARGETS, prepared.layout)
        for p in sweep([(name, edges)], lm.num_layers, window=window)
    ]
    got = engine.evaluate(plans).softmax(-1)
    want = [full_forward_logits(lm, prepared.inputs, engine.compile(p)) for p in plans]
    want = torch.stack(want).softmax(-1)
    diff = (got - want).abs().max().item()
    assert diff < TOL, f"engine differs from the plain masked forward by {diff:.2e} (tolerance {TOL})"
    moved = (got - engine.baseline_logits().softmax(-1)).abs().max().item()
    assert moved > 1e-6, "no cut changed the answer distribution: the check would prove nothing"


def check_golden(adapter, sample: Sample, name: str) -> None:
    prepared = adapter.prepare(sample)
    layout, ids = prepared.layout.to_dict(), list(prepared.option_ids)
    got = {"prompt": prepared.prompt, "layout": layout, "option_ids": ids}
    path = GOLDEN / f"{name}.json"
    if os.environ.get("VLMFLOW_UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert json.loads(path.read_text()) == json.loads(json.dumps(got)), f"{name}: prompt/layout drifted"
