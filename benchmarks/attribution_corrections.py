"""Corrections tried for the window estimates that rank poorly, against the one-point estimate
and the exact engine, in one run (SmolLM2-135M-Instruct, real weights, the 1,243-token
layout of ``attribution.py``, the paper suite of 330 curve x layer plans, window 9).

A window plan blocks an edge set in 9 consecutive layers; the library's estimate is the sum
of its layers' first-order estimates (additive over layers). Two non-additive corrections,
each priced and ranked beside it:

* **exact through the window, linear after** (``--extra E``): the engine recomputes the plan
  exactly from its first cut layer to ``E`` layers past its last one and stops; the change of
  the residual stream there, times the metric's gradient at that layer (one backward of the
  baseline), is the estimate. The interactions inside the window are exact, only what the
  layers above make of them is linear.
* **integrated gradients along the all-layers path** (cross-frame only): the cross-frame
  edges' attention pattern is moved from clean (``alpha = 0``) to blocked and renormalised
  (``alpha = 1``) in every layer at once; the gradient is taken at several ``alpha`` and a
  window's estimate is the quadrature of its layers' terms. ``alpha = 0`` alone is the
  library's estimate computed by an independent route (autograd through eager attention).

Spearman's rank correlation with the exact change of ``log p(answer)`` is printed per target
beside the one-point estimate's, and the seconds beside the exact suite's.

    python benchmarks/attribution_corrections.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from attribution import smollm2_inputs, suite  # this folder (sys.path[0] when run as a script)
from vlmflow.analyses.targets import PAPER_TARGETS
from vlmflow.attribution import attribute, plan_groups
from vlmflow.engine import Engine, log_softmax64
from vlmflow.screen import plan_cost, spearman


class _Stop(Exception):
    """Raised from a layer's forward hook: the recompute has gone far enough."""


def residual_gradients(lm, inputs, token: int) -> list[torch.Tensor]:
    """d(log-odds of ``token``)/d(input of every layer, and the last layer's output)."""
    seen: list[torch.Tensor] = []

    def keep(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        h.retain_grad()
        seen.append(h)

    def keep_out(module, args, out):
        o = out[0] if isinstance(out, tuple) else out
        o.retain_grad()
        seen.append(o)

    hooks = [layer.register_forward_pre_hook(keep, with_kwargs=True) for layer in lm.layers]
    hooks.append(lm.layers[-1].register_forward_hook(keep_out))
    try:
        logits = lm.forward(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    finally:
        for h in hooks:
            h.remove()
    others = torch.cat([logits[:token], logits[token + 1 :]])
    (logits[token] - others.logsumexp(-1)).backward()
    return [h.grad.detach() for h in seen]


def window_then_linear(engine: Engine, plan, stop: int, grads: list[torch.Tensor]) -> float:
    """Log-odds change: ``plan`` recomputed exactly up to the input of layer ``stop``, then
    linear."""
    q0 = engine.compile(plan).first_query
    got: dict[str, torch.Tensor] = {}

    def capture(module, args, out):
        got["h"] = (out[0] if isinstance(out, tuple) else out).detach()
        raise _Stop

    hook = engine.lm.layers[stop - 1].register_forward_hook(capture)
    try:
        engine.evaluate([plan])
    except _Stop:
        pass
    finally:
        hook.remove()
    delta = got["h"].float() - engine.hidden[stop][:, q0:].float()
    return float((grads[stop][:, q0:] * delta).sum())


def path_terms(lm, inputs, layout, token: int, alphas: Sequence[float]) -> dict[float, np.ndarray]:
    """Per layer, ``<dM/do, o_blocked - o_clean>`` with the cross-frame edges blocked to
    ``alpha`` in every layer (eager attention, the pattern mixed and renormalised by hand)."""
    from transformers import AttentionInterface

    n = layout.length
    block = torch.zeros(n, n, dtype=torch.bool)
    for t in range(1, layout.num_frames):
        f = layout.frames[t]
        block[f.start : f.end, layout.frames[0].start : f.start] = True
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    state: dict = {"alpha": 0.0, "terms": []}

    def mixed(module, query, key, value, attention_mask, scaling=None, **kwargs):
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        s = (query @ key.transpose(-1, -2)) * (scaling if scaling is not None else module.scaling)
        clean = s.masked_fill(~causal, float("-inf")).softmax(-1)
        blocked = s.masked_fill(~causal | block, float("-inf")).softmax(-1)
        out = (clean + state["alpha"] * (blocked - clean)) @ value
        if out.requires_grad:
            out.retain_grad()
            state["terms"].append((out, ((blocked - clean) @ value).detach()))
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("vlmflow_benchmark_path", mixed)
    before = lm.attn_implementation()
    lm.forward.set_attn_implementation("vlmflow_benchmark_path")
    out: dict[float, np.ndarray] = {}
    try:
        for alpha in alphas:
            state["alpha"], state["terms"] = alpha, []
            logits = lm.forward(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].float()
            others = torch.cat([logits[:token], logits[token + 1 :]])
            metric = logits[token] - others.logsumexp(-1)
            metric.backward()
            out[alpha] = np.array([float((o.grad * d).sum()) for o, d in state["terms"]])
            log(f"  alpha {alpha}: log-odds {float(metric.detach()):.3f}")
    finally:
        lm.forward.set_attn_implementation(before)
    return out


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--extra", type=int, nargs="+", default=[0, 2, 5])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm, items, name = smollm2_inputs()
    inputs, layout = items[0]
    n_layers, window = lm.num_layers, 9
    engine = Engine(lm, inputs, layout)
    engine.run_baseline()
    base = log_softmax64(engine.baseline_logits())  # float64, as the screen reads exact changes
    token = int(base.argmax())
    p0 = float(base[token].exp())
    points = suite(layout, n_layers, window)
    plans = [plan for _, plan in points]
    targets = np.array([t for t, _ in points])
    t0 = time.perf_counter()
    exact = (log_softmax64(engine.evaluate(plans))[:, token] - base[token]).numpy()
    exact_s = time.perf_counter() - t0
    att = attribute(engine, token_id=token, sources=plan_groups(plans)[0], queries=plan_groups(plans)[1])
    est = att.delta_logprob(att.estimates(plans))

    def to_logprob(dlogodds: np.ndarray) -> np.ndarray:
        base_lo = np.log(p0 / (1 - p0))
        return -np.logaddexp(0.0, -(base_lo + dlogodds)) + np.logaddexp(0.0, -base_lo)

    def per_target(values: np.ndarray) -> str:
        return ", ".join(
            f"{t} {spearman(values[targets == t], exact[targets == t]):.3f}" for t in PAPER_TARGETS
        )

    log(f"== {name}: {len(plans)} plans, window {window}, answer log p {float(base[token]):.3f}")
    log(f"exact suite {exact_s:.1f}s")
    log(f"one-point estimate (the library's): {per_target(est)}")
    grads = residual_gradients(lm, inputs, token)
    exact_model = sum(plan_cost(engine, plan) for plan in plans)
    for extra in args.extra:
        hybrid = np.empty(len(plans))
        model = 0.0  # the engine's cost model: recomputed (token, layer) share, in forwards
        t0 = time.perf_counter()
        for i, plan in enumerate(plans):
            stop = min(n_layers, max(plan.layers) + 1 + extra)
            model += plan_cost(engine, plan) * (stop - min(plan.layers)) / (n_layers - min(plan.layers))
            if stop == n_layers:  # nothing above the window is left to linearise
                hybrid[i] = exact[i]
                continue
            hybrid[i] = to_logprob(np.array(window_then_linear(engine, plan, stop, grads)))
        seconds = time.perf_counter() - t0
        log(
            f"exact through the window + {extra} layers, linear after: {seconds:.1f}s one plan at a time "
            f"({seconds / exact_s:.2f} of the packed exact suite; by the engine's cost model "
            f"{model:.1f} of {exact_model:.1f} forward-equivalents): {per_target(hybrid)}"
        )
    terms = path_terms(lm, inputs, layout, token, args.alphas)
    cross = targets == "cross-frame"

    def windows(per_layer: np.ndarray) -> np.ndarray:
        return np.array(
            [per_layer[max(0, c - window // 2) : c - window // 2 + window].sum() for c in range(n_layers)]
        )

    a = sorted(terms)
    rules = {"alpha 0 (independent route to the library's estimate)": terms[a[0]]}
    rules |= {f"alpha {x} alone": terms[x] for x in a[1:]}
    rules["trapezoid over all alphas"] = np.trapezoid(np.stack([terms[x] for x in a]), a, axis=0) / (
        a[-1] - a[0]
    )
    for label, per_layer in rules.items():
        log(
            f"integrated gradients, all-layers cross-frame path, {label}: cross-frame "
            f"{spearman(windows(per_layer), exact[cross]):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
