"""Head-level cuts: the engine against a plain masked forward with per-head ``(1, H, N, N)``
masks, for any family's adapter (the head-level twin of ``conformance.py``)."""

from __future__ import annotations

import numpy as np
import torch

from vlmflow.cuts import Cut, Plan
from vlmflow.engine import Engine, full_forward_logits
from vlmflow.sample import Sample

TOL = 1e-5  # fp32 probabilities, as in conformance.py

EDGES = [("video", "last"), ("frames:<1", "frame:1"), ("question", "last"), ("video", "question")]


def head_plans(num_layers: int, num_heads: int, seed: int = 0) -> list[Plan]:
    """Single-head, several-head, mixed whole+head and every-head plans over a few edges."""
    rng = np.random.default_rng(seed)
    plans = []
    for i, (src, dst) in enumerate(EDGES):
        layer = int(rng.integers(num_layers))
        head = int(rng.integers(num_heads))
        plans.append(Plan(f"{src}->{dst}@{layer}h{head}", (Cut(src, dst, (layer,), (head,)),)))
        window = tuple(range(max(0, layer - 1), min(num_layers, layer + 2)))
        heads = tuple(int(h) for h in rng.choice(num_heads, size=max(1, num_heads // 2), replace=False))
        plans.append(Plan(f"{src}->{dst}@w{i}", (Cut(src, dst, window, heads),)))
    plans.append(Plan("whole", (Cut("video", "last", (1,)),)))  # packed beside per-head plans
    plans.append(
        Plan(
            "mixed",
            (
                Cut("video", "last", (0, 1), (0,)),
                Cut("question", "last", (1,)),
                Cut("frames:<1", "frame:1", (1,), (num_heads - 1,)),
            ),
        )
    )
    return plans


def check_head_cuts_match_plain(adapter, sample: Sample) -> None:
    prepared = adapter.prepare(sample)
    lm = adapter.language_model()
    heads = lm.num_heads
    assert heads and heads >= 2, "the tiny model needs several heads for a head-level check"
    engine = Engine(lm, prepared.inputs, prepared.layout)
    plans = head_plans(lm.num_layers, heads)
    got = engine.evaluate(plans).softmax(-1)
    want = torch.stack([full_forward_logits(lm, prepared.inputs, engine.compile(p)) for p in plans])
    want = want.softmax(-1)
    diff = (got - want).abs().max().item()
    assert diff < TOL, f"head cuts: engine differs from the plain masked forward by {diff:.2e}"
    base = engine.baseline_logits().softmax(-1)
    moved = (got - base).abs().amax(-1)
    assert (moved > 1e-7).sum() >= len(plans) // 2, f"too few head cuts moved the answer: {moved.tolist()}"
    # every head named == the whole-layer cut, and one head cut alone != the whole-layer cut
    every = Plan("every", (Cut("video", "last", (0,), tuple(range(heads))),))
    whole = Plan("whole", (Cut("video", "last", (0,)),))
    one = Plan("one", (Cut("video", "last", (0,), (0,)),))
    e, w, o = engine.evaluate([every, whole, one]).softmax(-1)
    assert (e - w).abs().max().item() < TOL
    assert (o - w).abs().max().item() > 1e-7
