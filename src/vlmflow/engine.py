"""The engine: one baseline pass per prepared input, then exact evaluation of many plans.

Why it is exact and fast. Under a causal mask, a position's state depends only on earlier
positions. A plan whose first blocked query is ``q0`` and first cut layer ``l0`` therefore
leaves every position ``< q0`` (in every layer) and every layer ``< l0`` exactly as in
the baseline. The engine keeps the baseline's per-layer hidden states and keys/values and
recomputes only positions ``q0..N-1`` from layer ``l0`` on, reusing the baseline keys and
values of the prefix. A cut into the last token costs one token per layer.

Plans that share ``q0`` are evaluated together: their recomputed suffixes are packed as
segments of one sequence (each segment attends to the shared prefix and to itself only),
so the prefix keys/values are never copied per plan. A plan joins the pack at its own
first cut layer, so no plan recomputes layers it cannot change.

The decoder layers are the model's own modules, called with the arguments the model
itself passed them in the baseline pass (rotary embeddings sliced to the recomputed
positions), so normalisation, rotary variants (M-RoPE included) and MLPs are the model's.
Anything the model adds to the residual stream between layers outside the layer modules
(Qwen3-VL's deepstack visual features) is recorded in the baseline and replayed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .cuts import CompiledPlan, Plan, compile_plan, is_int
from .errors import PlanError, UnsupportedModelError
from .hooks import attention_implementation, eager_attention, layer_hooks
from .layout import TokenLayout

MASKABLE_ATTENTION = ("eager", "sdpa")
SUFFIX_SDPA = "vlmflow_sdpa"


def _suffix_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """sdpa for recomputed suffixes: a ``None`` mask means *lower-right* causal (the ``q``
    queries are the last ``q`` of the ``k`` key positions), which transformers' sdpa would
    read as top-left. Long suffixes are padded with dummy queries so the fused causal
    kernel runs (much faster than a masked one on CPU); short ones get an explicit mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k = query.shape[2], key.shape[2]
    if attention_mask is not None or q == k:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if 3 * q >= k:
        pad = query.new_zeros(query.shape[0], query.shape[1], k - q, query.shape[3])
        out, _ = sdpa_attention_forward(module, torch.cat([pad, query], dim=2), key, value, None, **kwargs)
        return out[:, k - q :], None
    mask = torch.ones(q, k, dtype=torch.bool, device=query.device).tril(k - q)[None, None]
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def _register_suffix_sdpa() -> None:
    from transformers import AttentionInterface

    if SUFFIX_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(SUFFIX_SDPA, _suffix_sdpa)


@dataclass
class LanguageModel:
    """What the engine needs from a model; adapters build it.

    ``forward(**inputs)`` runs the whole model (vision included) and must accept
    ``use_cache`` and ``logits_to_keep``; ``layers`` are the language model's decoder
    layers in order; ``norm`` and ``lm_head`` map a final hidden state to logits.
    ``attention`` is the attribute of a decoder layer holding its attention module.
    ``record_additions`` (optional) is a context manager, entered around the baseline
    forward, that yields a dict it fills with ``{layer: (1, N, d)}``: what the model adds
    to the residual stream after decoder ``layer``, outside the layers (Qwen3-VL's deepstack
    features), in the model's dtype. The engine then replays ``h' + v`` as the model
    computes it, instead of the measured ``fl(h + v) - h``, which differs by a rounding.
    """

    forward: Callable[..., Any]
    layers: Sequence[nn.Module]
    norm: nn.Module
    lm_head: nn.Module
    embed_tokens: nn.Module
    attn_implementation: Callable[[], str]
    attention: str
    record_additions: Callable[[], AbstractContextManager[dict[int, torch.Tensor]]] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def attention_module(self, layer: int) -> nn.Module:
        """Decoder layer ``layer``'s attention module."""
        return getattr(self.layers[layer], self.attention)

    @property
    def num_heads(self) -> int | None:
        """Query heads per decoder layer (``None`` if the attention module does not say)."""
        attn = self.attention_module(0)
        cfg = getattr(attn, "config", None)
        heads = getattr(cfg, "num_attention_heads", None) or getattr(attn, "num_heads", None)
        return int(heads) if heads else None


class _PrefixCache:
    """A stand-in for a transformers ``Cache`` that prepends fixed prefix keys/values.

    ``update`` returns ``(prefix ++ new)`` along the sequence axis and stores nothing, so a
    layer attends to the baseline prefix plus the recomputed positions.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values  # (1, kv_heads, q0, head_dim)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if self.keys.shape[2] == 0:
            return key_states, value_states
        return (
            torch.cat([self.keys, key_states], dim=2),
            torch.cat([self.values, value_states], dim=2),
        )

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return int(self.keys.shape[2])


def _take_positions(kwargs: dict[str, Any], pos: torch.Tensor) -> dict[str, Any]:
    """Slice the per-position layer arguments to ``pos`` ``(q,)``."""
    out = dict(kwargs)
    pe = out.get("position_embeddings")
    if isinstance(pe, (tuple, list)):
        out["position_embeddings"] = tuple(t.index_select(-2, pos) for t in pe)
    pid = out.get("position_ids")
    if isinstance(pid, torch.Tensor):
        out["position_ids"] = pid.index_select(-1, pos)
    cp = out.get("cache_position")
    if isinstance(cp, torch.Tensor):
        out["cache_position"] = cp.index_select(0, pos)
    return out


def as_4d(allowed: torch.Tensor) -> torch.Tensor:
    """``(q, k)`` -> ``(1, 1, q, k)``; per-head ``(H, q, k)`` -> ``(1, H, q, k)``."""
    return allowed.reshape((1,) * (4 - allowed.dim()) + tuple(allowed.shape))


def pack_allowed(blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Packed "may attend" mask of several plans' recomputed suffixes.

    Each block is (prefix part ``([H,] s, q0)``, suffix part ``([H,] s, s)``); segments see
    the shared prefix and their own suffix only. Blocks are per head (3-d) if any is."""
    heads = max((b[0].shape[0] for b in blocks if b[0].dim() == 3), default=None)
    if heads is None:
        return torch.cat(
            [torch.cat([b[0] for b in blocks], dim=0), torch.block_diag(*[b[1] for b in blocks])], dim=1
        )
    s, q0, k = blocks[0][0].shape[-2], blocks[0][0].shape[-1], len(blocks)
    out = torch.zeros(heads, s * k, q0 + s * k, dtype=torch.bool, device=blocks[0][0].device)
    for j, (prefix, suffix) in enumerate(blocks):
        out[:, j * s : (j + 1) * s, :q0] = prefix
        out[:, j * s : (j + 1) * s, q0 + j * s : q0 + (j + 1) * s] = suffix
    return out


def sliding_windows(lm: LanguageModel) -> dict[int, int]:
    """``{layer: window}`` of the decoder layers that attend over a sliding window of keys:
    the attention module's own ``sliding_window`` where it keeps one (Qwen2's, per layer),
    else its config's ``sliding_window`` in the layers its ``layer_types`` mark
    ``sliding_attention`` (every layer when it has no ``layer_types``: Mistral, Phi-3)."""
    out: dict[int, int] = {}
    for i in range(lm.num_layers):
        attn = lm.attention_module(i)
        if hasattr(attn, "sliding_window"):
            window = attn.sliding_window
        else:
            cfg = getattr(attn, "config", None)
            window = getattr(cfg, "sliding_window", None)
            types = getattr(cfg, "layer_types", None)
            if types is not None and (i >= len(types) or types[i] != "sliding_attention"):
                window = None
        if isinstance(window, int) and window > 0:
            out[i] = window
    return out


def check_full_attention(lm: LanguageModel, length: int) -> None:
    """Refuse a model whose sliding-window layers would hide keys from an input of ``length``
    tokens (a window of ``w`` keeps the last ``w`` keys, so one of at least ``length`` hides
    none: Phi-3-128k's 262144 is harmless). Knockout masks replace the model's own mask, so a
    window would be dropped, and the baseline cache would hold only the window's keys."""
    short = {i: w for i, w in sliding_windows(lm).items() if w < length}
    if short:
        window = min(short.values())
        layers = ", ".join(map(str, sorted(short)))
        raise UnsupportedModelError(
            f"decoder layers {layers} attend over a sliding window of {window} tokens (the text "
            f"config's sliding_window={window}, use_sliding_window / layer_types), shorter than this "
            f"input's {length} tokens: they do not see every earlier key, so exact knockout is not "
            "supported; load the model with use_sliding_window=False (a different model if it was "
            "trained with the window) or use inputs of at most the window's length"
        )


def softmax64(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities from ``logits`` (any dtype), taken in float64: in float32 a near-certain
    token's probability moves in steps of 1.19e-7 (its epsilon near 1), so a knockout's small
    change of it reads as 0 or a multiple of that. Every probability the library reports is
    read this way."""
    return logits.double().softmax(-1)


def log_softmax64(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` in float64 of ``logits`` (any dtype): float32 cannot resolve a change of
    ``log p`` below about its epsilon, and a near-certain answer (``p`` ~ 1 - 1e-5) moves by
    much less than that under most knockouts."""
    return logits.double().log_softmax(-1)


def to_attention_mask(allowed: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``(b, 1 or H, q, k)`` "may attend" mask -> the form the attention kernel takes."""
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    raise UnsupportedModelError(f"cannot build a mask for attention {implementation!r}")


def check_max_batch_tokens(max_batch_tokens: Any) -> int | None:
    """``max_batch_tokens`` if it is unset (``None``) or a whole number >= 1, else a
    ``PlanError`` saying so."""
    if max_batch_tokens is not None and (not is_int(max_batch_tokens) or max_batch_tokens < 1):
        raise PlanError(f"max_batch_tokens must be >= 1 (a whole number, or unset), got {max_batch_tokens!r}")
    return max_batch_tokens


def check_plan_list(plans: Any) -> None:
    """Refuse, in one line, ``plans`` that is not a list of ``Plan`` / ``CompiledPlan``."""
    if isinstance(plans, (Plan, CompiledPlan)):
        raise PlanError(f"evaluate takes a list of plans, not one {type(plans).__name__}: give [plan]")
    if isinstance(plans, (str, bytes, dict)) or not isinstance(plans, Sequence):
        raise PlanError(f"evaluate takes a list of plans, not {type(plans).__name__} {plans!r}")
    bad = [p for p in plans if not isinstance(p, (Plan, CompiledPlan))]
    if bad:
        hint = " (text plans go through Probe.knockout or Probe.plan)" if isinstance(bad[0], str) else ""
        raise PlanError(
            f"evaluate takes Plan or CompiledPlan items, not {type(bad[0]).__name__} {bad[0]!r}{hint}"
        )


class Engine:
    """Baseline pass of one prepared input, then reads and plan evaluations against it.

    ``inputs`` are the keyword arguments of ``lm.forward`` for one input (batch 1) of
    ``layout.length`` tokens. ``max_batch_tokens`` bounds how many recomputed positions
    are packed into one pass (default: the input length, at least 64, so activation memory
    stays about that of one baseline forward); a plan recomputing more than that still
    gets a pass of its own.
    """

    def __init__(
        self,
        lm: LanguageModel,
        inputs: dict[str, Any],
        layout: TokenLayout,
        *,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.lm = lm
        self.inputs = inputs
        self.layout = layout
        self.length = layout.length
        check_max_batch_tokens(max_batch_tokens)  # 0 read as unset, -5 as one plan a pass
        self.max_batch_tokens = max_batch_tokens or max(self.length, 64)
        self._ran = False

    # ------------------------------------------------------------------ baseline
    @torch.inference_mode()
    def run_baseline(self) -> None:
        """Run the model once, keeping every layer's input hidden states, keys/values and
        call arguments, and the last position's logits."""
        self.check_maskable()
        self.forward_baseline()

    def check_maskable(self) -> None:
        """Refuse attention kernels that ignore custom masks (flash, flex): no knockout there."""
        impl = self.lm.attn_implementation()
        if impl not in MASKABLE_ATTENTION:
            raise UnsupportedModelError(
                f"attention implementation {impl!r} ignores custom masks; knockout needs one "
                f"of {MASKABLE_ATTENTION} (load the model with attn_implementation='sdpa')"
            )

    def forward_baseline(self) -> torch.Tensor:
        """``run_baseline``'s forward under the caller's grad mode; returns the last
        position's logits as computed (part of the autograd graph when gradients are on:
        the attribution pass differentiates them). What the engine keeps is detached."""
        check_full_attention(self.lm, self.length)
        n_layers = self.lm.num_layers
        hidden: list[torch.Tensor | None] = [None] * (n_layers + 1)
        kwargs_per_layer: list[dict[str, Any]] = [{} for _ in range(n_layers)]

        # kept detached as they are made: under gradients (the fused attribution pass) a
        # tensor kept with its graph would hold every activation below it until the end
        outputs: list[torch.Tensor | None] = [None] * n_layers
        made: list[weakref.ref | None] = [None] * n_layers  # each layer's own output object
        deltas: dict[int, torch.Tensor] = {}

        def pre(i: int, args: tuple, kwargs: dict) -> None:
            h = args[0] if args else kwargs["hidden_states"]
            hidden[i] = h.detach()
            kwargs_per_layer[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            prev, ref = (outputs[i - 1], made[i - 1]) if i > 0 else (None, None)
            if prev is not None and (ref is None or ref() is not h):
                # in fp32: a bf16 delta would round what the model added (Qwen3-VL's deepstack
                # features) and replaying it would add error of its own
                delta = hidden[i].float() - prev.float()
                if bool((delta != 0).any()):
                    deltas[i - 1] = delta

        def post(i: int, args: tuple, kwargs: dict, out: Any) -> None:
            o = out[0] if isinstance(out, tuple) else out
            outputs[i], made[i] = o.detach(), weakref.ref(o)
            if i == n_layers - 1:
                hidden[n_layers] = outputs[i]

        recorder = self.lm.record_additions() if self.lm.record_additions else nullcontext({})
        with (
            recorder as added,
            layer_hooks(self.lm.layers, pre=pre, post=post),
            last_position_head(self.lm.lm_head),
        ):
            out = self.lm.forward(**self.inputs, use_cache=True, logits_to_keep=1)
        for i, v in added.items():  # exact additions replace measured deltas that they explain
            if i in deltas and torch.equal(outputs[i] + v, hidden[i + 1]):
                deltas[i] = v
        logits = last_logits(out)
        if any(h is None for h in hidden):
            raise UnsupportedModelError("the language model did not run all of its decoder layers")
        n = hidden[0].shape[1]
        if n != self.length:
            raise UnsupportedModelError(f"the model saw {n} tokens but the layout describes {self.length}")
        self.cache_key = self._find_cache_key(kwargs_per_layer[0])
        cache = kwargs_per_layer[0][self.cache_key]
        kept = [int(layer_cache.keys.shape[-2]) for layer_cache in cache.layers]
        if len(kept) != n_layers or any(k != n for k in kept):
            short = next((i, k) for i, k in enumerate(kept + [0]) if k != n)
            raise UnsupportedModelError(
                f"the baseline's key/value cache holds {short[1]} keys for decoder layer {short[0]}, "
                f"not the input's {n} (a sliding-window or otherwise truncating cache); the engine "
                "needs every layer's keys and values of every position"
            )
        for layer_cache in cache.layers:  # nothing kept may hold on to an autograd graph
            layer_cache.keys, layer_cache.values = layer_cache.keys.detach(), layer_cache.values.detach()
        self.keys = [layer_cache.keys for layer_cache in cache.layers]
        self.values = [layer_cache.values for layer_cache in cache.layers]
        self.hidden = [h.detach() for h in hidden]  # type: ignore[union-attr]  # L+1 tensors (1, N, d)
        self.layer_kwargs = kwargs_per_layer
        # what the model adds to the residual stream between layers outside the layer
        # modules (e.g. Qwen3-VL's deepstack visual features); replayed in recomputes: a
        # recorded addition in the model's dtype (added as the model adds it), else the
        # measured difference in fp32
        self.deltas = {i: d.detach() for i, d in deltas.items()}
        self.logits = logits.detach()
        self.dtype = hidden[0].dtype
        self.device = hidden[0].device
        self._ran = True
        return logits

    @staticmethod
    def _find_cache_key(kwargs: dict[str, Any]) -> str:
        from transformers.cache_utils import Cache

        for key, value in kwargs.items():
            if isinstance(value, Cache):
                return key
        raise UnsupportedModelError(
            "the decoder layers received no key/value cache; the engine needs one to reuse "
            "the baseline's keys and values"
        )

    @property
    def ran(self) -> bool:
        """Whether the baseline pass has run."""
        return self._ran

    def _check(self) -> None:
        if not self._ran:
            self.run_baseline()

    @property
    def hidden_states(self) -> list[torch.Tensor]:
        """Baseline residual stream: ``[embeddings, out_0, ..., out_{L-1}]``, each ``(1, N, d)``.

        Entry ``l`` is the input of decoder layer ``l``; the last entry is the output of the
        last layer before the final norm.
        """
        self._check()
        return self.hidden  # type: ignore[return-value]

    def baseline_logits(self) -> torch.Tensor:
        """Last-position logits of the baseline, ``(vocab,)`` float32."""
        self._check()
        return self.logits

    # ------------------------------------------------------------------ plans
    def compile(self, plan: Plan) -> CompiledPlan:
        return compile_plan(plan, self.layout, self.lm.num_layers, self.lm.num_heads)

    def compiled(self, plan: Plan | CompiledPlan) -> CompiledPlan:
        """``plan`` compiled for this input; a plan compiled elsewhere must be this input's
        (``CompiledPlan.check_input``: ``PlanError`` otherwise, naming the difference)."""
        if isinstance(plan, CompiledPlan):
            plan.check_input(self.layout, self.lm.num_layers)
            return plan
        return self.compile(plan)

    @torch.inference_mode()
    def evaluate(self, plans: Sequence[Plan | CompiledPlan]) -> torch.Tensor:
        """Last-position logits under each plan, ``(len(plans), vocab)`` float32. ``plans``
        is a list of ``Plan`` / ``CompiledPlan`` (text plans go through ``Probe.knockout``);
        anything else is a one-line ``PlanError``."""
        check_plan_list(plans)
        self._check()
        compiled = [self.compiled(p) for p in plans]
        if not compiled:  # no plans, no rows
            return self.logits.new_zeros((0, self.logits.shape[-1]))
        out: list[torch.Tensor | None] = [None] * len(compiled)
        groups: dict[int, list[int]] = {}
        for i, cp in enumerate(compiled):
            if cp.is_empty:
                out[i] = self.logits
            else:
                groups.setdefault(cp.first_query, []).append(i)
        for q0, idx in sorted(groups.items()):
            idx.sort(key=lambda i: compiled[i].first_layer)
            size = max(1, self.max_batch_tokens // (self.length - q0))
            for a in range(0, len(idx), size):
                chunk = idx[a : a + size]
                logits = self._run_pack([compiled[i] for i in chunk], q0)
                for j, i in enumerate(chunk):
                    out[i] = logits[j]
        return torch.stack(out)  # type: ignore[arg-type]

    def _run_pack(self, plans: list[CompiledPlan], q0: int) -> torch.Tensor:
        """Recompute positions ``q0..N-1`` for ``plans`` (sorted by first layer), packed."""
        n, s = self.length, self.length - q0
        impl = self.lm.attn_implementation()
        suffix_pos = torch.arange(q0, n, device=self.device)
        causal_ss = torch.ones(s, s, dtype=torch.bool, device=self.device).tril()
        parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def allowed_parts(m: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if m is None:
                return (torch.ones(s, q0, dtype=torch.bool, device=self.device), causal_ss)
            if id(m) not in parts:
                t = torch.from_numpy(~m[..., q0:, :]).to(self.device)
                parts[id(m)] = (t[..., :q0], t[..., q0:] & causal_ss)
            return parts[id(m)]

        layers = range(plans[0].first_layer, self.lm.num_layers)
        if impl == "sdpa":
            _register_suffix_sdpa()
            with attention_implementation([self.lm.attention_module(i) for i in layers], SUFFIX_SDPA):
                return self._run_layers(plans, q0, layers, impl, allowed_parts, suffix_pos)
        return self._run_layers(plans, q0, layers, impl, allowed_parts, suffix_pos)

    def _run_layers(self, plans, q0, layers, impl, allowed_parts, suffix_pos) -> torch.Tensor:
        s = self.length - q0
        h: torch.Tensor | None = None
        active: list[CompiledPlan] = []
        pending = list(plans)
        for layer_idx in layers:
            joining = [p for p in pending if p.first_layer == layer_idx]
            if joining:
                pending = [p for p in pending if p.first_layer != layer_idx]
                new = self.hidden[layer_idx][:, q0:].repeat(1, len(joining), 1)
                h = new if h is None else torch.cat([h, new], dim=1)
                active += joining
            cut = [p.blocked.get(layer_idx) for p in active]
            kwargs_pos = suffix_pos.repeat(len(active))
            kwargs = _take_positions(self.layer_kwargs[layer_idx], kwargs_pos)
            if impl == "sdpa" and len(active) == 1 and cut[0] is None:
                kwargs["attention_mask"] = None  # lower-right causal, see _suffix_sdpa
            elif len(active) == 1:
                prefix, suffix = allowed_parts(cut[0])
                allowed = as_4d(torch.cat([prefix, suffix], dim=-1))
                kwargs["attention_mask"] = to_attention_mask(allowed, impl, self.dtype)
            else:
                allowed = as_4d(pack_allowed([allowed_parts(m) for m in cut]))
                kwargs["attention_mask"] = to_attention_mask(allowed, impl, self.dtype)
            kwargs[self.cache_key] = _PrefixCache(
                self.keys[layer_idx][:, :, :q0], self.values[layer_idx][:, :, :q0]
            )
            out = self.lm.layers[layer_idx](h, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
            if layer_idx in self.deltas:
                d = self.deltas[layer_idx].index_select(1, kwargs_pos)
                h = (h.to(d.dtype) + d).to(h.dtype)
        assert h is not None
        rows = torch.arange(len(active), device=self.device) * s + (s - 1)
        return self.lm.lm_head(self.lm.norm(h[0, rows])).float()


def _layer_impl(lm: LanguageModel, layer: int, default: str) -> str:
    cfg = getattr(lm.attention_module(layer), "config", None)
    return getattr(cfg, "_attn_implementation", None) or default


@torch.inference_mode()
def masked_forward(
    lm: LanguageModel,
    inputs: dict[str, Any],
    compiled: CompiledPlan | None,
    *,
    read_attention: Sequence[int] = (),
    queries: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[int, dict[str, torch.Tensor]]]:
    """The plain approach: one full forward of the whole model with the plan's masks.

    Every cut layer gets the full ``(1, 1, N, N)`` mask (``(1, H, N, N)`` where a cut names
    heads); other layers keep the model's own
    causal attention. Only the last position's logits are computed. This is the reference
    the engine is tested against and the baseline the benchmark times.

    ``read_attention`` layers compute attention weights (only those layers run eager
    attention for this pass); for each ``queries`` group (name -> positions) the weights
    averaged over heads and query positions are returned as ``{layer: {group: (N,)}}``.
    """
    default = lm.attn_implementation()
    windows = sliding_windows(lm)
    masks: dict[tuple[int, str], torch.Tensor] = {}
    reads: dict[int, dict[str, torch.Tensor]] = {}
    read = set(read_attention)

    def pre(i: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        m = compiled.blocked.get(i) if compiled is not None else None
        if m is None and i not in read:
            return None
        h = args[0] if args else kwargs["hidden_states"]
        size = h.shape[1]
        if windows.get(i, size) < size:  # the mask below would drop the layer's window
            check_full_attention(lm, size)
        impl = _layer_impl(lm, i, default)
        key = (id(m), impl)
        if key not in masks:
            allowed = torch.ones(size, size, dtype=torch.bool).tril()
            if m is not None:
                allowed = allowed & ~torch.from_numpy(m)
            masks[key] = to_attention_mask(as_4d(allowed).to(h.device), impl, h.dtype)
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = masks[key]
        return args, kwargs

    def capture(i: int) -> Any:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            weights = out[1]  # (1, heads, N, N) under eager attention
            reads[i] = {
                g: weights[0][:, torch.as_tensor(pos, device=weights.device)].float().mean(dim=(0, 1)).cpu()
                for g, pos in (queries or {}).items()
            }

        return hook

    handles = [lm.attention_module(i).register_forward_hook(capture(i)) for i in read]
    try:
        with (
            eager_attention([lm.attention_module(i) for i in read]),
            layer_hooks(lm.layers, pre=pre),
            last_position_head(lm.lm_head),
        ):
            out = lm.forward(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return last_logits(out), reads


@contextmanager
def last_position_head(lm_head: nn.Module) -> Iterator[None]:
    """Make ``lm_head`` compute only the last position during a full forward.

    ``logits_to_keep=1`` asks for that, but some models ignore it (VideoLLaMA3 in
    transformers 5.24 computes N x 151,936 logits, 546 MB at 898 tokens in fp32); this
    slices the head's input to the last position whatever the model does."""

    def pre(module: nn.Module, args: tuple) -> tuple | None:
        h = args[0]
        return (h[:, -1:],) + args[1:] if h.dim() == 3 and h.shape[1] > 1 else None

    handle = lm_head.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


def last_logits(out: Any) -> torch.Tensor:
    """The last position's logits ``(vocab,)`` float32, as a tensor of its own: never a view
    that would keep a model output's full logits alive."""
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[0, -1].float().clone()


def full_forward_logits(lm: LanguageModel, inputs: dict[str, Any], compiled: CompiledPlan) -> torch.Tensor:
    """Last-position logits ``(vocab,)`` of one full forward with ``compiled``'s masks."""
    return masked_forward(lm, inputs, compiled)[0]
