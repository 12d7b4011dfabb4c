"""The attribution pass against an independent route: autograd through the eager attention
weights themselves, with the knocked-out pattern renormalised by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmflow.analyses.targets import PAPER_TARGETS, sweep, target_curves
from vlmflow.attribution import attribute, plan_groups, relative_change
from vlmflow.cuts import Cut, Plan
from vlmflow.engine import Engine
from vlmflow.errors import PlanError
from vlmflow.hooks import eager_attention
from vlmflow.models import load_model
from vlmflow.screen import spearman


@pytest.fixture(scope="module")
def eager_llava(tiny_llava_path):
    return load_model(str(tiny_llava_path), attn_implementation="eager")


def oracle(adapter, prepared, token: int, plan: Plan, metric: str = "logprob") -> float:
    """sum over blocked layers, heads, queries, keys of dM/da * (a' - a), with dM/da from
    autograd on the eager attention weights and a' the masked, renormalised pattern.
    ``adapter`` must be loaded with eager attention (so its causal mask is explicit)."""
    lm = adapter.language_model()
    weights: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(module, args, out):
            out[1].retain_grad()
            weights[i] = out[1]

        return hook

    attention = [lm.attention_module(i) for i in range(lm.num_layers)]
    handles = [module.register_forward_hook(keep(i)) for i, module in enumerate(attention)]
    try:
        with torch.enable_grad(), eager_attention(attention):
            inputs = {k: v.clone() if torch.is_tensor(v) else v for k, v in prepared.inputs.items()}
            out = lm.forward(**inputs, use_cache=False, logits_to_keep=1)
            logits = out.logits[0, -1]
            if metric == "logprob":
                logits.log_softmax(-1)[token].backward()
            else:  # log-odds log p/(1-p)
                p = logits.softmax(-1)[token]
                (p.log() - (1 - p).log()).backward()
    finally:
        for h in handles:
            h.remove()
    compiled = Engine(lm, prepared.inputs, prepared.layout).compile(plan)
    total = 0.0
    for layer, m in compiled.blocked.items():
        a = weights[layer][0].detach()  # (H, N, N)
        g = weights[layer].grad[0]
        cut = torch.from_numpy(np.broadcast_to(m, a.shape).copy())
        new = a.masked_fill(cut, 0.0)
        new = new / new.sum(-1, keepdim=True)
        total += float((g * (new - a)).sum())
    return total


@pytest.mark.parametrize(("impl", "metric"), [("sdpa", "logprob"), ("eager", "logprob"), ("sdpa", "logodds")])
def test_estimates_equal_the_autograd_oracle(tiny_llava, eager_llava, sample, impl: str, metric: str) -> None:
    adapter = tiny_llava if impl == "sdpa" else eager_llava
    prepared = adapter.prepare(sample)
    lm = adapter.language_model()
    token = int(Engine(lm, prepared.inputs, prepared.layout).baseline_logits().argmax())
    plans = [
        Plan("v->l", (Cut("video", "last", (0, 2)),)),
        Plan("cross", (Cut("frames:<1", "frame:1", (1,)), Cut("frames:<2", "frame:2", (1, 3)))),
        Plan("head", (Cut("question", "last", (1,), (2,)), Cut("video", "question", (0,), (0, 3)))),
        Plan("union", (Cut("video", "last", (2,)), Cut("question_no_options", "last", (2,), (1,)))),
    ]
    src, dst = plan_groups(plans)
    engine = Engine(lm, prepared.inputs, prepared.layout)
    att = attribute(engine, token_id=token, sources=src, queries=dst, chunk=7, metric=metric)
    got = att.estimates(plans)
    want = np.array([oracle(eager_llava, prepared, token, p, metric) for p in plans])
    assert np.abs(got - want).max() < 1e-5 + 1e-4 * np.abs(want).max(), (got, want)
    assert np.abs(want).min() > 1e-6  # every plan moves the metric: the check has teeth


def test_estimates_stay_exact_when_attention_saturates(tiny_llava_path, sample) -> None:
    """With queries and keys scaled up, heads put all but 1e-7 or less of their weight on a
    few keys: blocking those multiplies the open weights by 1e7 or more (the
    renormalisation), so ``1 - S`` must not be formed by subtraction (float32 keeps ~1e-7
    of it) nor clamped."""
    models = [load_model(str(tiny_llava_path), attn_implementation=impl) for impl in ("sdpa", "eager")]
    for m in models:
        lm = m.language_model()
        with torch.no_grad():
            for i in range(lm.num_layers):
                lm.attention_module(i).q_proj.weight.mul_(20.0)
                lm.attention_module(i).k_proj.weight.mul_(20.0)
    adapter, eager = models
    prepared = adapter.prepare(sample)
    lm = adapter.language_model()
    engine = Engine(lm, prepared.inputs, prepared.layout)
    token = int(engine.baseline_logits().argmax())
    plans = [
        Plan(f"{g}->{d}@{i}", (Cut(g, d, (i,)),))
        for g in ("video", "system")
        for d in ("last", "question")
        for i in range(lm.num_layers)
    ]
    src, dst = plan_groups(plans)
    att = attribute(engine, token_id=token, sources=src, queries=dst, metric="logprob")
    got = att.estimates(plans)
    want = np.array([oracle(eager, eager.prepare(sample), token, p) for p in plans])
    assert np.abs(got - want).max() < 1e-5 + 1e-3 * np.abs(want).max(), (got, want)
    open_ = torch.ones(att.S[0].shape[-1], dtype=torch.bool)
    open_[att.atoms["system"]] = False
    kept = min(float(S[..., open_].sum(-1).min()) for S in att.S.values())
    assert 0 < kept < 1e-8  # a head keeps under 1e-8 of its weight when the system prompt is cut


def test_window_estimates_are_sums_and_heads_add_up(tiny_llava, sample) -> None:
    prepared = tiny_llava.prepare(sample)
    lm = tiny_llava.language_model()
    engine = Engine(lm, prepared.inputs, prepared.layout)
    att = attribute(engine, token_id=5, sources=["video"], queries=["last"])
    per_layer = [att.estimate(Plan("l", (Cut("video", "last", (i,)),))) for i in range(lm.num_layers)]
    window = att.estimate(Plan("w", (Cut("video", "last", tuple(range(lm.num_layers))),)))
    assert window == pytest.approx(sum(per_layer), rel=1e-5)
    heat = att.head_map("video", "last")
    assert heat.shape == (lm.num_layers, 4)
    assert heat.sum(-1) == pytest.approx(per_layer, rel=1e-4, abs=1e-7)  # one query: heads add up
    with pytest.raises(PlanError, match="was not attributed"):
        att.estimate(Plan("q", (Cut("question", "last", (0,)),)))
    with pytest.raises(PlanError, match="max_graph_mb must be >= 0"):
        attribute(engine, sources=["video"], queries=["last"], fused=True, max_graph_mb=-1.0)


def test_estimates_rank_the_tiny_suite_like_the_exact_engine(tiny_llava, sample) -> None:
    prepared = tiny_llava.prepare(sample)
    lm = tiny_llava.language_model()
    engine = Engine(lm, prepared.inputs, prepared.layout)
    plans = [
        p.plan
        for _t, name, e in target_curves(PAPER_TARGETS, prepared.layout)
        for p in sweep([(name, e)], lm.num_layers, window=1)
    ]
    base = engine.baseline_logits().log_softmax(-1)
    token = int(base.argmax())
    src, dst = plan_groups(plans)
    att = attribute(engine, token_id=token, sources=src, queries=dst)
    assert att.logprob == pytest.approx(float(base[token]), abs=1e-5)
    est = att.delta_logprob(att.estimates(plans))
    exact = (engine.evaluate(plans).log_softmax(-1)[:, token] - base[token]).numpy()
    assert spearman(est, exact) > 0.8
    assert relative_change(0.0) == 0.0 and relative_change(np.log(2.0)) == pytest.approx(100.0)


@pytest.mark.parametrize("mask", ["causal", "bool", "additive", "per-head"])
def test_the_attention_backward_matches_autograd_and_reduces_the_same_probabilities(mask: str) -> None:
    """``_attention_backward`` (one recomputation of the probabilities for the softmax
    backward and the reductions) against autograd through a plain softmax attention, with
    grouped-query heads, a chunk that does not divide the rows, and every mask form."""
    from vlmflow.attribution import _attention_backward, _Recorder

    gen = torch.Generator().manual_seed(0)
    H, KV, N, d = 6, 2, 23, 5
    q, k, v = (torch.randn(1, h, N, d, generator=gen, dtype=torch.float64) for h in (H, KV, KV))
    allowed = torch.ones(N, N, dtype=torch.bool).tril()
    allowed = allowed.expand(H, N, N).clone() if mask == "per-head" else allowed[None]
    if mask == "per-head":
        allowed[1, 5:, :3] = False  # head 1 also cannot see the first 3 keys
    q_, k_, v_ = (t.clone().requires_grad_(True) for t in (q, k, v))
    kr, vr = k_.repeat_interleave(H // KV, 1), v_.repeat_interleave(H // KV, 1)
    scores = (q_ @ kr.transpose(-1, -2) * 0.3).masked_fill(~allowed, -torch.inf)
    a = scores.softmax(-1)
    a.retain_grad()
    out = (a @ vr).transpose(1, 2)  # (1, N, H, d), as an attention kernel returns it
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad_out)

    atom_of = np.full(N, -1)
    atom_of[2:9], atom_of[9:15], atom_of[20:] = 0, 1, 2
    qpos = np.array([3, 4, 10, 11, 12, 17, 21, 22])
    rec = _Recorder({}, qpos, atom_of, chunk=4)
    kernel_mask = {
        "causal": None,
        "bool": allowed[None],
        "additive": torch.zeros(1, 1, N, N, dtype=torch.float64).masked_fill(~allowed, -1e30),
        "per-head": allowed[None],
    }[mask]
    info = {"rec": rec, "scaling": 0.3, "mask": kernel_mask, "causal": mask == "causal"}
    o = out.detach()
    grads, (S, B, G) = _attention_backward(info, q, k, v, o, grad_out, input_grads=True)
    for got, want in zip(grads, (q_.grad, k_.grad, v_.grad), strict=True):
        assert torch.allclose(got.double(), want, atol=1e-4), (got - want).abs().max()
    onehot = torch.zeros(N, 4, dtype=torch.float64)  # three atoms, then the keys in none
    onehot[np.arange(N), np.where(atom_of >= 0, atom_of, 3)] = 1.0
    rows = torch.as_tensor(qpos)
    p, g = a.detach()[0][:, rows], a.grad[0][:, rows]
    assert torch.allclose(S.double(), p @ onehot, atol=1e-5)
    assert torch.allclose(B.double(), (g * p) @ onehot, atol=1e-4)
    assert torch.allclose(G.double(), (g * p).sum(-1), atol=1e-4)
    _, again = _attention_backward(info, q, k, v, o, grad_out, input_grads=False)  # the lowest layer
    for x, y in zip(again, (S, B, G), strict=True):
        assert torch.allclose(x, y, atol=1e-6)
