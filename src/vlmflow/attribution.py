"""Edge attribution: estimate every knockout plan's effect from one forward and one backward.

For attention head ``h`` of layer ``l`` and query ``q``, let ``a_qk`` be the attention
weights and ``g_qk = dM/da_qk`` the gradient of the metric ``M`` (the answer token's
log-probability) with respect to them. Blocking the keys ``K`` for ``q`` changes the
weights *exactly* to ``a_qk / (1 - S)`` for ``k`` not in ``K`` and to ``0`` for ``k`` in
``K``, with ``S = sum_{k in K} a_qk`` (the softmax renormalises). Propagating that exact
pattern change through the rest of the network to first order gives

    dM ~= sum_k g_qk * (a'_qk - a_qk) = (S * G - B) / (1 - S),

with ``G = sum_k g_qk a_qk`` over every key and ``B = sum_{k in K} g_qk a_qk``. A plan's
estimate is the sum of this over its layers, heads and blocked queries. This is
attribution patching (AtP) applied to attention-edge knockouts, with the AtP* "QK fix"
idea adopted in closed form: the attention pattern change is computed exactly (no
linearisation through the softmax, so saturated attention is not underestimated); only
its downstream effect is linear. See docs/attribution.md.

Nothing ``(H, N, N)``-sized is kept across layers. ``g_qk = <dM/do_q, v_k>`` (the head's
output is ``o_q = sum_k a_qk v_k``), so a layer needs only the queries, keys and values its
attention kernel saw and the gradient of its output. The pass reruns the layers top down
from the engine's stored inputs, differentiating each at once (one layer's graph alive at
a time). An attributed layer's attention runs the model's own kernel forward and its own
backward (``_KeptAttention``): the probabilities and ``g_qk`` are recomputed once, in chunks
of query rows, and serve both the softmax backward and the reductions over *key atoms*
(the finest partition of positions the source groups induce) into ``S`` and ``B`` of shape
``(H, Q, A + 1)`` (the last column: keys in no atom) and ``G`` of shape ``(H, Q)``, for the
``Q`` query positions of interest. ``attribute(..., fused=True)`` instead makes a fresh
engine's baseline forward the pass's forward and keeps its graph for the one backward: one
forward less, at the memory of a training step's activations.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from .cuts import Cut, Plan
from .engine import Engine, _layer_impl, _PrefixCache
from .errors import PlanError, UnsupportedModelError
from .hooks import attention_implementation
from .layout import TokenLayout

ATTRIBUTION_ATTENTION = "vlmflow_attribution"


class _Recorder:
    """What an attribution pass needs inside the attention kernels it wraps: which modules
    are attributed, the query rows and key atoms to reduce over, and, per layer, the
    kernel's inputs (until its backward) and the reductions (after it)."""

    active: _Recorder | None = None

    def __init__(
        self, modules: dict[int, tuple[int, str]], qpos: np.ndarray, atom_of: np.ndarray, chunk: int
    ) -> None:
        self.modules = modules  # id(attention module) -> (layer, original implementation)
        self.qpos, self.atom_of, self.chunk = qpos, atom_of, chunk
        self.n_atoms = int(atom_of.max()) + 1
        self.seen: dict[int, dict[str, Any]] = {}
        self.reduced: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


class _KeptAttention(torch.autograd.Function):
    """The layer's own attention kernel forward; a backward that recomputes the attention
    probabilities once, in chunks of query rows, and uses them both for the input
    gradients and for the layer's reductions (``_attention_backward``)."""

    @staticmethod
    def forward(
        ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, info: dict
    ) -> torch.Tensor:
        out, _ = info["kernel"](info["module"], query, key, value, info["mask"], **info["kwargs"])
        ctx.save_for_backward(query, key, value, out)
        ctx.info = info
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query, key, value, out = ctx.saved_tensors
        info = ctx.info
        grads, reduced = _attention_backward(info, query, key, value, out, grad_out, input_grads=True)
        info["rec"].reduced[info["layer"]] = reduced
        return (*grads, None)


def _attribution_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The layer's own attention kernel, differentiated by ``_KeptAttention``."""
    from transformers import AttentionInterface

    rec = _Recorder.active
    if rec is None or id(module) not in rec.modules:
        raise UnsupportedModelError("attribution attention called outside an attribution pass")
    layer, impl = rec.modules[id(module)]
    if kwargs.get("softcap") is not None:
        raise UnsupportedModelError("attribution does not model soft-capped attention")
    window = kwargs.get("sliding_window") or 0
    if window > 0 and attention_mask is None and key.shape[2] > window:
        # sdpa and eager take a sliding window from the mask; without one it would be lost
        raise UnsupportedModelError("attribution does not model sliding-window attention without a mask")
    if (kwargs.get("dropout") or 0.0) > 0.0 or kwargs.get("s_aux") is not None:
        raise UnsupportedModelError("attribution does not model attention dropout or attention sinks")
    if impl == "eager":  # the modeling file's own eager function, as the module would call it
        kernel = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if kernel is None:
            raise UnsupportedModelError(f"{type(module).__name__} has no eager_attention_forward")
        causal = False  # eager attention applies exactly the mask it is given
    else:
        kernel = AttentionInterface._global_mapping[impl]
        flag = kwargs.get("is_causal")
        causal = bool(flag if flag is not None else getattr(module, "is_causal", True))
    scaling = kwargs.get("scaling")
    info = {
        "rec": rec,
        "layer": layer,
        "module": module,
        "kernel": kernel,
        "mask": attention_mask,
        "kwargs": kwargs,
        "scaling": float(scaling if scaling is not None else module.scaling),
        # what the kernel does without a mask: sdpa is causal (is_causal), eager is not
        "causal": attention_mask is None and causal and query.shape[2] > 1,
    }
    out = _KeptAttention.apply(query, key, value, info)
    # the lowest attributed layer's backward stops at ``out`` (see ``attribute``)
    rec.seen[layer] = info | {"query": query, "key": key, "value": value, "out": out}
    return out, None


def _register() -> None:
    from transformers import AttentionInterface

    if ATTRIBUTION_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTRIBUTION_ATTENTION, _attribution_attention)


@contextmanager
def _frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Parameters stop requiring grad (no weight gradients, fewer saved activations)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def key_atoms(layout: TokenLayout, sources: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The finest partition of positions that every source group is a union of.

    Returns ``atom_of`` ``(N,)`` (atom index per position, ``-1`` for positions in no
    source group) and, per source group, the atom indices it is made of."""
    n = layout.length
    member = np.zeros((len(sources), n), dtype=bool)
    for i, g in enumerate(sources):
        member[i, layout.resolve(g)] = True
    used = member.any(axis=0)
    sig, atom_of = np.unique(member[:, used].T, axis=0, return_inverse=True)
    full = np.full(n, -1, dtype=np.int64)
    full[used] = atom_of.reshape(-1)
    return full, {g: np.flatnonzero(sig[:, i]) for i, g in enumerate(sources)}


@dataclass
class Attribution:
    """Result of one attribution pass: per layer, head, query and key atom, the sums from
    which any knockout of the named groups is estimated (``estimate``, ``head_map``).

    ``S[l]``, ``B[l]``: ``(H, Q, A + 1)`` (sums of ``a`` and ``g a`` per key atom; the last
    column over the keys in no atom); ``G[l]``: ``(H, Q)``; ``queries`` the ``Q`` positions.
    ``estimates`` are changes of the differentiated ``metric`` (baseline value ``base``);
    ``delta_logprob`` maps them to changes of ``log p(token)``, and ``relative_change`` those
    to the % change of the probability the knockout records report.
    """

    layout: TokenLayout
    token_id: int
    metric: str
    base: float
    num_layers: int
    num_heads: int
    queries: np.ndarray
    atoms: dict[str, np.ndarray]
    S: dict[int, torch.Tensor]
    B: dict[int, torch.Tensor]
    G: dict[int, torch.Tensor]
    # the fused pass: the layers whose forward graph was kept (the others were rerun from
    # the stored baseline) and the most autograd-saved activations it held at once, in MB
    graph_layers: tuple[int, ...] = ()
    graph_mb: float | None = None

    def __repr__(self) -> str:  # shapes, not the layout and the per-layer tensors
        return (
            f"Attribution(layers={len(self.S)} of {self.num_layers}, heads={self.num_heads}, "
            f"queries={len(self.queries)}, atoms={len(self.atoms)}, metric={self.metric!r})"
        )

    @cached_property
    def _present(self) -> torch.Tensor:
        """``(Q, A + 1)``: whether the atom (the last column: the keys in no atom) has a key
        at or before each query position, i.e. one the query may attend."""
        atom_of, _ = key_atoms(self.layout, list(self.atoms))
        n_atoms = int(atom_of.max()) + 1
        first = np.full(n_atoms + 1, self.layout.length)
        np.minimum.at(first, np.where(atom_of < 0, n_atoms, atom_of), np.arange(atom_of.size))
        return torch.as_tensor(first[None, :] <= self.queries[:, None])

    def _query_index(self, group: str) -> np.ndarray:
        pos = self.layout.resolve(group)
        idx = np.searchsorted(self.queries, pos)
        found = self.queries[np.minimum(idx, self.queries.size - 1)] == pos
        if not found.all():
            raise PlanError(f"query group {group!r} was not attributed; pass it to attribute()")
        return idx

    def _atoms(self, group: str) -> np.ndarray:
        if group not in self.atoms:
            raise PlanError(f"key group {group!r} was not attributed; pass it to attribute()")
        return self.atoms[group]

    def _layer_estimate(self, layer: int, cuts: Sequence[Cut], renormalise: bool = True) -> float:
        if layer not in self.S:
            raise PlanError(f"layer {layer} was not attributed")
        key = torch.zeros(self.S[layer].shape, dtype=torch.bool)
        for c in cuts:
            q = torch.as_tensor(self._query_index(c.dst))[:, None]
            a = torch.as_tensor(self._atoms(c.src))[None, :]
            for h in c.heads if c.heads is not None else range(self.num_heads):
                key[h, q, a] = True
        return float(_effect(self.S[layer], self.B[layer], key, self._present, renormalise).sum())

    @property
    def logprob(self) -> float:
        """Baseline ``log p(token)``."""
        return self.base if self.metric == "logprob" else float(-np.logaddexp(0.0, -self.base))

    def delta_logprob(self, delta: np.ndarray | float) -> np.ndarray:
        """Estimated change of ``log p(token)`` for an estimated change ``delta`` of the
        metric (for log-odds ``m``: ``log p = -log(1 + exp(-m))``)."""
        delta = np.asarray(delta, dtype=np.float64)
        if self.metric == "logprob":
            return delta
        with np.errstate(invalid="ignore"):  # NaN (no estimate: a map's empty cells) stays NaN
            return -np.logaddexp(0.0, -(self.base + delta)) + np.logaddexp(0.0, -self.base)

    def estimate(self, plan: Plan) -> float:
        """First-order change of the metric under ``plan`` (sum over its layers)."""
        return float(self.estimates([plan])[0])

    def estimates(self, plans: Sequence[Plan], *, renormalise: bool = True) -> np.ndarray:
        """``estimate`` for each plan, ``(len(plans),)``; a layer's estimate for the same
        cuts is computed once. ``renormalise=False`` gives plain AtP on attention
        probabilities (the blocked weights drop to 0, the others stay: ``-B``), for
        comparison only: a knockout does renormalise."""
        cache: dict[tuple, float] = {}
        out = []
        for plan in plans:
            per_layer: dict[int, list[Cut]] = {}
            for c in plan.cuts:
                if not isinstance(c, Cut):
                    raise PlanError(f"plan {plan.name!r}: random cuts cannot be attributed")
                if c.heads is not None and c.heads[-1] >= self.num_heads:
                    raise PlanError(
                        f"plan {plan.name!r}: head {c.heads[-1]} is outside 0..{self.num_heads - 1}"
                    )
                for layer in c.layers:
                    per_layer.setdefault(layer, []).append(c)
            total = 0.0
            for layer, cuts in per_layer.items():
                k = (layer, tuple(sorted((c.src, c.dst, c.heads or ()) for c in cuts)))
                if k not in cache:
                    cache[k] = self._layer_estimate(layer, cuts, renormalise)
                if math.isnan(cache[k]):
                    raise PlanError(
                        f"plan {plan.name!r} leaves a query in layer {layer} with no key to attend "
                        "to: there is nothing to estimate (the engine refuses it too); keep at "
                        "least one key (e.g. do not cut a token from itself and everything before it)"
                    )
                total += cache[k]
            out.append(total)
        return np.asarray(out, dtype=np.float64)

    def head_map(self, src: str, dst: str) -> np.ndarray:
        """``(layers, heads)`` estimates of blocking ``src -> dst`` in one head of one layer
        (NaN for layers not attributed, and where the cut would leave a query no key): the
        attribution heat map of one group pair."""
        out = np.full((self.num_layers, self.num_heads), np.nan)
        q = torch.as_tensor(self._query_index(dst))
        a = torch.as_tensor(self._atoms(src))
        for layer in self.S:
            key = torch.zeros(self.S[layer].shape[1:], dtype=torch.bool)
            key[q[:, None], a[None, :]] = True
            key = key.expand(self.num_heads, -1, -1)
            out[layer] = _effect(self.S[layer], self.B[layer], key, self._present).numpy()
        return out

    def frame_pairs(self) -> np.ndarray:
        """``(layers, F, F)`` estimates of blocking ``frame:a -> frame:b`` (every head) in one
        layer, at ``[layer, a, b]`` for ``a < b`` (NaN elsewhere and for layers not
        attributed): which frame pairs carry cross-frame information, and where. Needs a
        pass with every ``frame:a`` as a source and every ``frame:b`` (b > 0) as a query."""
        n = self.layout.num_frames
        out = np.full((self.num_layers, n, n), np.nan)
        plans = [
            (layer, a, b, Plan("pair", (Cut(f"frame:{a}", f"frame:{b}", (layer,)),)))
            for layer in sorted(self.S)
            for b in range(1, n)
            for a in range(b)
        ]
        for (layer, a, b, _), value in zip(plans, self.estimates([p for *_, p in plans]), strict=True):
            out[layer, a, b] = value
        return out


def frame_pair_groups(num_frames: int) -> tuple[list[str], list[str]]:
    """The source and query groups ``Attribution.frame_pairs`` needs."""
    return [f"frame:{a}" for a in range(num_frames - 1)], [f"frame:{b}" for b in range(1, num_frames)]


def _effect(
    S: torch.Tensor, B: torch.Tensor, key: torch.Tensor, present: torch.Tensor, renormalise: bool = True
) -> torch.Tensor:
    """``(S G - B) / (1 - S)`` summed over queries, per head ``(H,)``, for the atoms ``key``
    ``(H, Q, A + 1)`` marks, computed as ``S / S' * B' - B`` with ``S' = 1 - S`` and
    ``B' = G - B`` summed over the atoms (and the last column, the keys in no atom) that stay
    open: both are sums of the kept weights, so nothing cancels when attention is saturated
    on the blocked keys (``S -> 1``), where the renormalisation factor is largest.

    ``present`` ``(Q, A + 1)`` marks the atoms with a key at or before each query. A head in
    which some query keeps none of them (every key it may attend is blocked: a knockout the
    engine refuses, softmax over nothing being undefined) gets NaN, with or without the
    renormalisation: such a cut has no effect to estimate."""
    b = (B * key).sum(-1)
    dead = (key.any(-1) & ~(present & ~key).any(-1)).any(-1)
    if not renormalise:
        effect = -b.sum(-1)
    else:
        s, s_kept, b_kept = (S * key).sum(-1), (S * ~key).sum(-1), (B * ~key).sum(-1)
        ratio = s / s_kept.clamp_min(torch.finfo(s_kept.dtype).tiny)
        effect = torch.where(key.any(-1), ratio * b_kept - b, torch.zeros_like(s)).sum(-1)
    return torch.where(dead, torch.full_like(effect, float("nan")), effect)


def relative_change(delta_logprob: np.ndarray | float) -> np.ndarray | float:
    """% change of the probability for a change of its log: ``(exp(d) - 1) * 100``."""
    return np.expm1(np.asarray(delta_logprob, dtype=np.float64)) * 100.0


def plan_groups(plans: Sequence[Plan]) -> tuple[list[str], list[str]]:
    """The source (key) and destination (query) groups the plans' cuts name."""
    src, dst = [], []
    for p in plans:
        for c in p.cuts:
            if isinstance(c, Cut):
                if c.src not in src:
                    src.append(c.src)
                if c.dst not in dst:
                    dst.append(c.dst)
    return src, dst


def attribute(
    engine: Engine,
    *,
    token_id: int | None = None,
    sources: Sequence[str],
    queries: Sequence[str],
    layers: Sequence[int] | None = None,
    metric: str = "logodds",
    chunk: int = 128,
    fused: bool = False,
    max_graph_mb: float | None = None,
) -> Attribution:
    """One forward and one backward of ``log p(token_id)`` at the last position, reduced to
    what estimating any knockout of ``sources -> queries`` in ``layers`` needs.

    By default the pass starts from ``engine``'s baseline (running it first if needed):
    the decoder layers from the first attributed one on are rerun with gradients from the
    stored hidden states and call arguments, one layer's autograd graph alive at a time,
    so the vision tower and the earlier layers are not run again. ``fused=True``, on an
    engine whose baseline has not run yet, makes the engine's baseline forward the pass's
    forward: it is run once with gradients from the first attributed layer on and its
    graph kept until the backward, which saves the rerun (about one forward of the
    attributed layers) at the memory of a training step's activations for those layers
    (no weight gradients); the engine keeps its baseline as usual. On an engine that has
    already run, ``fused`` changes nothing (the baseline is paid for). ``max_graph_mb``
    bounds that memory: the graph is kept for as many of the top layers as fit (always the
    last one) and the layers below are rerun as in the unfused pass, so the saving shrinks
    with the budget but the estimates do not change (``graph_budget_mb`` gives half the
    device's free memory; ``Attribution.graph_layers`` / ``graph_mb`` say what was kept).

    ``token_id`` defaults to the baseline's top token. ``sources``/``queries`` are token
    groups (``plan_groups(plans)`` lists a suite's); ``layers`` defaults to every layer;
    ``chunk`` bounds the query rows whose attention probabilities are materialised at once.

    ``metric`` is what is differentiated: ``"logprob"`` (``log p``) or ``"logodds"``
    (``log p/(1-p)``, the default). Both give estimates of the change of ``log p``
    (``Attribution.delta_logprob``); the log-odds do not saturate when the model is sure of
    its answer (the gradient of ``log p`` vanishes as ``p -> 1``, that of the log-odds
    does not), which is where knockouts of a confident model are far from linear.

    >>> engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)  # doctest: +SKIP
    >>> att = attribute(engine, token_id=7, sources=["video"], queries=["last"], fused=True)  # doctest: +SKIP
    >>> att.estimate(Plan("v", (Cut("video", "last", (3, 4)),)))  # doctest: +SKIP
    """
    lm, layout = engine.lm, engine.layout
    if metric not in METRICS:
        raise PlanError(f"unknown attribution metric {metric!r}; choose from {', '.join(METRICS)}")
    if max_graph_mb is not None and not max_graph_mb >= 0:
        raise PlanError(f"max_graph_mb must be >= 0 (or None: unbounded), got {max_graph_mb}")
    impl = lm.attn_implementation()
    if impl not in ("eager", "sdpa"):
        raise UnsupportedModelError(f"attribution needs eager or sdpa attention, not {impl!r}")
    layers = sorted(set(range(lm.num_layers) if layers is None else layers))
    if not layers or layers[0] < 0 or layers[-1] >= lm.num_layers:
        raise PlanError(f"attributed layers must lie in 0..{lm.num_layers - 1}, got {layers}")
    heads = lm.num_heads
    if heads is None:
        raise UnsupportedModelError("the language model's attention does not say how many heads it has")
    atom_of, atoms = key_atoms(layout, list(sources))
    qpos = np.unique(np.concatenate([layout.resolve(g) for g in queries]))
    _register()
    modules = {id(lm.attention_module(i)): (i, _layer_impl(lm, i, impl)) for i in layers}
    rec = _Recorder(modules, qpos, atom_of, chunk)
    _Recorder.active = rec
    graph: tuple[tuple[int, ...], float | None] = ((), None)
    try:
        if fused and not engine.ran:
            token, base, graph = _fused_pass(engine, rec, layers, token_id, metric, max_graph_mb)
        else:
            token, base = _rerun_pass(engine, rec, layers, token_id, metric)
    finally:
        _Recorder.active = None
    if sorted(rec.reduced) != layers:
        raise UnsupportedModelError("not every attributed layer ran its attention through the hook")
    S = {i: r[0] for i, r in rec.reduced.items()}
    B = {i: r[1] for i, r in rec.reduced.items()}
    G = {i: r[2] for i, r in rec.reduced.items()}
    return Attribution(layout, token, metric, base, lm.num_layers, heads, qpos, atoms, S, B, G, *graph)


def graph_budget_mb(device: torch.device | str) -> float:
    """Half the memory free on ``device`` now, in MB: a ``max_graph_mb`` for the fused pass
    that leaves room for everything else (CUDA: ``torch.cuda.mem_get_info``; CPU: Linux's
    ``MemAvailable``; 0, i.e. keep only the top layer's graph, where neither is known).

    >>> graph_budget_mb("cpu") >= 0
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2 / 2**20
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) / 2 / 1024
        except OSError:
            pass
    return 0.0


def _rerun_pass(
    engine: Engine, rec: _Recorder, layers: list[int], token_id: int | None, metric: str
) -> tuple[int, float]:
    """The pass from the engine's stored baseline, layer by layer, top down."""
    lm = engine.lm
    hidden = engine.hidden_states  # runs the baseline if needed
    token = int(engine.baseline_logits().argmax()) if token_id is None else int(token_id)
    with torch.enable_grad(), _frozen([*lm.layers, lm.norm, lm.lm_head]):
        # the metric and its gradient at the last layer's stored output
        top = hidden[lm.num_layers].clone().requires_grad_(True)
        value = _metric(lm.lm_head(lm.norm(top[:, -1:]))[0, -1].float(), token, metric)
        (grad_h,) = torch.autograd.grad(value, top)
        base = float(value.detach())
        del top, value
        _rerun_layers(engine, rec, layers, lm.num_layers, grad_h)
    return token, base


def _rerun_layers(engine: Engine, rec: _Recorder, layers: list[int], top: int, grad_h: torch.Tensor) -> None:
    """Layers ``top - 1`` down to the first attributed one, each rerun from its stored input
    and differentiated at once with ``grad_h``, the gradient at layer ``top``'s input: only
    one layer's graph is alive at a time. An attributed layer's attention backward
    (``_KeptAttention``) also does its reductions; the lowest layer needs no input gradient,
    only that of its attention output. Runs under gradients with the layers frozen."""
    lm, hidden = engine.lm, engine.hidden_states
    for i in reversed(range(layers[0], top)):
        attributed = id(lm.attention_module(i)) in rec.modules
        h = hidden[i].clone().requires_grad_(True)
        kwargs = {k: _clone_nested(v) for k, v in engine.layer_kwargs[i].items()}
        kwargs[engine.cache_key] = _PrefixCache(engine.keys[i][:, :, :0], engine.values[i][:, :, :0])
        switch = attention_implementation([lm.attention_module(i)], ATTRIBUTION_ATTENTION)
        with switch if attributed else nullcontext():
            out = lm.layers[i](h, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        if attributed and i not in rec.seen:
            raise UnsupportedModelError(f"layer {i} did not run its attention through the hook")
        if i > layers[0]:
            (grad_h,) = torch.autograd.grad(out, [h], grad_outputs=grad_h)
        else:
            (grad_attn,) = torch.autograd.grad(out, [rec.seen[i]["out"]], grad_outputs=grad_h)
            _reduce_lowest(rec, i, grad_attn)
        rec.seen.pop(i, None)
        del h, out, kwargs


def _fused_pass(
    engine: Engine,
    rec: _Recorder,
    layers: list[int],
    token_id: int | None,
    metric: str,
    max_graph_mb: float | None,
) -> tuple[int, float, tuple[tuple[int, ...], float]]:
    """The engine's baseline forward as the pass's forward: run once with gradients from
    the first attributed layer's input on (a leaf there; nothing below keeps a graph), the
    attributed layers' attention through ``_KeptAttention``, then one backward from the
    metric to the lowest attributed layer's attention output.

    Under ``max_graph_mb`` the saved activations are counted as they are made; before a
    layer that would take them over the budget (judged by the layers so far), the graph
    below is dropped and that layer's input becomes the leaf. The backward then stops at
    the last leaf and the layers below it are rerun from the stored baseline."""
    from transformers.cache_utils import Cache

    lm = engine.lm
    engine.check_maskable()
    first = layers[0]
    model = lm.forward if isinstance(lm.forward, nn.Module) else None
    frozen = [model] if model is not None else [*lm.layers, lm.norm, lm.lm_head, lm.embed_tokens]
    params = {p.untyped_storage().data_ptr() for m in frozen for p in m.parameters()}
    budget = math.inf if max_graph_mb is None else max_graph_mb * 2**20
    held: dict[int, int] = {}  # storage -> bytes saved for the backward since the leaf
    state: dict[str, Any] = {"split": first, "leaf": None, "peak": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            held[storage.data_ptr()] = storage.nbytes()
        return t

    def leaf(i: int) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if i > first:
                size = sum(held.values())
                if size + size / (i - state["split"]) <= budget:
                    return None
                # over budget: drop the graph of the layers since the last leaf (they are
                # rerun after the backward) and start again from this layer's input
                state["peak"] = max(state["peak"], size)
                held.clear()
                for j in [j for j in rec.seen if j < i]:
                    del rec.seen[j]
                cache = next((v for v in kwargs.values() if isinstance(v, Cache)), None)
                for layer_cache in cache.layers if cache is not None else ():  # they carry the graph too
                    if (
                        getattr(layer_cache, "keys", None) is not None
                        and layer_cache.keys.grad_fn is not None
                    ):
                        layer_cache.keys = layer_cache.keys.detach()
                        layer_cache.values = layer_cache.values.detach()
                state["split"] = i
            h = (args[0] if args else kwargs["hidden_states"]).detach().requires_grad_(True)
            state["leaf"] = h
            if args:
                return (h, *args[1:]), kwargs
            return args, kwargs | {"hidden_states": h}

        return hook

    attention = [lm.attention_module(i) for i in layers]
    handles = [
        lm.layers[i].register_forward_pre_hook(leaf(i), with_kwargs=True) for i in range(first, lm.num_layers)
    ]
    try:
        with (
            torch.enable_grad(),
            _frozen(frozen),
            attention_implementation(attention, ATTRIBUTION_ATTENTION),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            logits = engine.forward_baseline()
            split = state["split"]
            missing = [i for i in layers if i >= split and i not in rec.seen]
            if missing:
                raise UnsupportedModelError(f"layer {missing[0]} did not run its attention through the hook")
            peak = max(state["peak"], sum(held.values())) / 2**20
            token = int(logits.detach().argmax()) if token_id is None else int(token_id)
            value = _metric(logits, token, metric)
            base = float(value.detach())
            if split == first:
                (grad_attn,) = torch.autograd.grad(value, [rec.seen[first]["out"]])
                del logits, value
                _reduce_lowest(rec, first, grad_attn)
                grad_h = None
            else:
                (grad_h,) = torch.autograd.grad(value, [state["leaf"]])
                del logits, value
    finally:
        for handle in handles:
            handle.remove()
        rec.seen.clear()
        state.clear()
    if grad_h is not None:  # the layers below the kept graph, rerun from the stored baseline
        with torch.enable_grad(), _frozen([*lm.layers, lm.norm, lm.lm_head]):
            _rerun_layers(engine, rec, layers, split, grad_h)
    return token, base, (tuple(i for i in layers if i >= split), peak)


def _reduce_lowest(rec: _Recorder, layer: int, grad_attn: torch.Tensor) -> None:
    """The lowest attributed layer's reductions: no input gradients (nothing below needs
    them), only the rows of interest."""
    seen = rec.seen[layer]
    q, k, v, o = (seen[x].detach() for x in ("query", "key", "value", "out"))
    _, rec.reduced[layer] = _attention_backward(seen, q, k, v, o, grad_attn, input_grads=False)


METRICS = ("logodds", "logprob")


def _metric(logits: torch.Tensor, token: int, metric: str) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    if metric == "logprob":
        return logp[token]
    others = torch.cat([logits[:token], logits[token + 1 :]])
    return logits[token] - others.logsumexp(-1)  # log p/(1-p), computed without cancellation


def _clone_nested(v: Any) -> Any:
    """Normal (non-inference) copies of the tensors in a layer argument."""
    if torch.is_tensor(v):
        return v.clone()
    if isinstance(v, tuple):
        return tuple(_clone_nested(x) for x in v)
    return v


@torch.no_grad()
def _attention_backward(
    info: dict[str, Any],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    input_grads: bool,
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | tuple[()], tuple[torch.Tensor, ...]]:
    """One attention layer's backward and reductions, sharing one recomputation of its
    probabilities ``a`` and of ``dM/da``, in chunks of query rows.

    Returns the gradients of ``query`` ``(1, H, N, d)``, ``key`` and ``value`` ``(1, KV, Nk,
    d)`` (empty if not ``input_grads``) and the layer's ``S``, ``B`` ``(H, Q, A + 1)`` and ``G``
    ``(H, Q)`` over the recorder's query rows ``Q`` and key atoms ``A``. The heads sharing a
    key/value head (grouped-query attention) are stacked into one matrix product."""
    rec: _Recorder = info["rec"]
    scaling, mask, causal = info["scaling"], info["mask"], info["causal"]
    dtype = query.dtype
    q = query[0].float()  # (H, N, d)
    k, v = key[0].float(), value[0].float()  # (KV, Nk, d)
    H, N, d = q.shape
    KV, Nk = k.shape[0], k.shape[1]
    rep = H // KV
    o = out[0].transpose(0, 1).float()  # (H, N, d): o_q = sum_k a_qk v_k
    do = grad_out[0].transpose(0, 1).float()
    D = (do * o).sum(-1)  # (H, N): G = sum_k g_qk a_qk = <dM/do_q, o_q>
    qg, dog = q.view(KV, rep, N, d), do.view(KV, rep, N, d)
    # key -> atom membership as a (Nk, A) 0/1 matrix: the group sums are one matmul
    keep = np.flatnonzero(rec.atom_of >= 0)
    # the last column gathers the keys in no atom: the open weight is a sum, never 1 - S
    onehot = torch.zeros(Nk, rec.n_atoms + 1, dtype=q.dtype, device=q.device)
    onehot[torch.as_tensor(keep, device=q.device), torch.as_tensor(rec.atom_of[keep], device=q.device)] = 1.0
    onehot[torch.as_tensor(np.flatnonzero(rec.atom_of[:Nk] < 0), device=q.device), rec.n_atoms] = 1.0
    qpos = rec.qpos
    S = torch.zeros(H, qpos.size, rec.n_atoms + 1)
    B = torch.zeros(H, qpos.size, rec.n_atoms + 1)
    G = D[:, torch.as_tensor(qpos, device=q.device)].cpu()
    if input_grads:
        dq = torch.empty(KV, rep, N, d, dtype=q.dtype, device=q.device)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    # without input gradients only the attributed rows are needed
    starts = range(0, N, rec.chunk) if input_grads else range(0, qpos.size, rec.chunk)
    for c0 in starts:
        if input_grads:  # every row, in contiguous chunks
            r0, r1 = c0, min(N, c0 + rec.chunk)
            rows: torch.Tensor | slice = slice(r0, r1)
            first, last, c = r0, r1 - 1, r1 - r0
            lo, hi = np.searchsorted(qpos, [r0, r1])
            local = torch.as_tensor(qpos[lo:hi] - r0, device=q.device)
        else:
            lo, hi = c0, min(qpos.size, c0 + rec.chunk)
            rows = torch.as_tensor(qpos[lo:hi], device=q.device)
            first, last, c = int(qpos[lo]), int(qpos[hi - 1]), hi - lo
            local = None
        kn = min(Nk, last + 1) if causal else Nk  # causal: no key after the last row
        qc = qg[:, :, rows].reshape(KV, rep * c, d)
        doc = dog[:, :, rows].reshape(KV, rep * c, d)
        s = torch.bmm(qc, k[:, :kn].transpose(1, 2)).mul_(scaling).view(H, c, kn)
        if causal and kn > first + 1:  # keys up to the first row are open to every row
            pos = torch.arange(first, last + 1, device=q.device)
            later = torch.arange(first + 1, kn, device=q.device)[None, :] > pos[:, None]
            s[:, :, first + 1 :].masked_fill_(later if local is not None else later[rows - first], -math.inf)
        elif mask is not None:
            m = mask[0, :, rows, :kn].to(s.device)
            if m.dtype == torch.bool:
                s.masked_fill_(~m, -math.inf)
            else:
                s.add_(m.float())
        a = s.softmax(-1)  # (H, c, kn)
        del s
        ga = torch.bmm(doc, v[:, :kn].transpose(1, 2)).view(H, c, kn).mul_(a)  # g_qk a_qk
        if local is None:
            S[:, lo:hi] = (a @ onehot[:kn]).cpu()
            B[:, lo:hi] = (ga @ onehot[:kn]).cpu()
        elif local.numel():
            full = local.numel() == c
            S[:, lo:hi] = ((a if full else a[:, local]) @ onehot[:kn]).cpu()
            B[:, lo:hi] = ((ga if full else ga[:, local]) @ onehot[:kn]).cpu()
        if not input_grads:
            continue
        # softmax backward: dL/ds = a * (g - sum_k g a) = g a - a D
        ds = ga.addcmul_(a, D[:, r0:r1, None], value=-1.0).view(KV, rep * c, kn)
        dq[:, :, r0:r1] = torch.bmm(ds, k[:, :kn]).mul_(scaling).view(KV, rep, c, d)
        dk[:, :kn].baddbmm_(ds.transpose(1, 2), qc, alpha=scaling)
        dv[:, :kn].baddbmm_(a.view(KV, rep * c, kn).transpose(1, 2), doc)
    if not input_grads:
        return (), (S, B, G)
    grads = (dq.view(1, H, N, d).to(dtype), dk[None].to(key.dtype), dv[None].to(value.dtype))
    return grads, (S, B, G)
