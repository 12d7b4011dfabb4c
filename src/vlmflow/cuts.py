"""``Cut`` and ``Plan`` (interventions as frozen, serialisable data), layer windows, mask
compilation and edge counting.

"Block ``src`` -> ``dst`` in layers ``L``" means: in every decoder layer of ``L``, queries at
``dst`` positions may not attend to keys at ``src`` positions, on top of the causal mask —
in every attention head, or only in the query heads a cut names (``heads=(3, 17)``). Under
grouped-query attention several query heads share one key/value head; a head-level cut
always names *query* heads, so it removes edges from those heads' softmax only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PlanError
from .layout import TokenLayout, check_group

WINDOW_STYLES = ("center", "inverse", "top_down", "bottom_up")


@dataclass(frozen=True)
class Cut:
    """Queries in group ``dst`` may not attend keys in group ``src`` in ``layers``.

    ``heads`` names the query heads (0-based) the cut applies to; ``None`` (the default)
    means every head. ``Cut("video", "last", (10,), heads=(3,))`` blocks video -> last in
    head 3 of layer 10 only.
    """

    src: str
    dst: str
    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(sorted({int(x) for x in self.layers})))
        if self.heads is not None:
            heads = tuple(sorted({int(x) for x in self.heads}))
            if not heads or heads[0] < 0:
                raise PlanError(
                    f"cut {self.src}->{self.dst}: heads must be non-empty and >= 0, got {self.heads}"
                )
            object.__setattr__(self, "heads", heads)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"src": self.src, "dst": self.dst, "layers": list(self.layers)}
        if self.heads is not None:
            d["heads"] = list(self.heads)
        return d

    @classmethod
    def parse(cls, text: str, layers: tuple[int, ...]) -> Cut:
        """``"video->last"`` -> ``Cut("video", "last", layers)``; both sides must be groups
        of the grammar (:func:`vlmflow.layout.check_group`), else a one-line ``PlanError``."""
        if text.count("->") != 1:
            raise PlanError(f"cut {text!r} must read SRC->DST (one arrow), e.g. video->last")
        src, dst = (x.strip() for x in text.split("->", 1))
        if not src or not dst:
            raise PlanError(f"cut {text!r} must read SRC->DST, e.g. video->last")
        try:
            return cls(check_group(src), check_group(dst), layers)
        except PlanError as exc:
            raise PlanError(f"cut {text!r}: {exc}") from None


@dataclass(frozen=True)
class RandomCut:
    """Block a random ``fraction`` of all causal edges in each of ``layers``.

    The paper's random baseline for effective pathways: per layer, ``int(N(N+1)/2 *
    fraction)`` (query, key) pairs are drawn without replacement among the causal pairs whose
    query and key both lie at or after the first position of group ``start``; each layer
    draws its own pairs from a generator seeded by ``(seed, layer)``.
    """

    fraction: float
    seed: int
    layers: tuple[int, ...]
    start: str = "video"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(sorted({int(x) for x in self.layers})))
        if not 0.0 <= self.fraction <= 1.0:
            raise PlanError(f"random cut fraction must be in [0, 1], got {self.fraction}")

    def to_dict(self) -> dict[str, Any]:
        return {"random": self.fraction, "seed": self.seed, "layers": list(self.layers), "start": self.start}


@dataclass(frozen=True)
class Plan:
    """A set of cuts: one experimental condition. An empty plan is the baseline."""

    name: str
    cuts: tuple[Cut | RandomCut, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cuts": [c.to_dict() for c in self.cuts]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        def cut(c: dict[str, Any]) -> Cut | RandomCut:
            if "random" in c:
                return RandomCut(c["random"], c["seed"], tuple(c["layers"]), c.get("start", "video"))
            heads = c.get("heads")
            return Cut(c["src"], c["dst"], tuple(c["layers"]), None if heads is None else tuple(heads))

        return cls(d["name"], tuple(cut(c) for c in d["cuts"]))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({layer for c in self.cuts for layer in c.layers}))


def window_layers(layer: int, num_layers: int, window: int = 9, style: str = "center") -> tuple[int, ...]:
    """Layers a sweep blocks when it stands at ``layer`` (0-based).

    ``center``: the ``window`` layers centred on ``layer``, clipped at the ends (the paper's
    default: window 9 gives ``[l-4, l+5)``); ``inverse``: every layer outside that window;
    ``top_down``: ``layer..L-1``; ``bottom_up``: ``0..layer``.
    """
    if not 0 <= layer < num_layers:
        raise PlanError(f"layer {layer} is outside 0..{num_layers - 1}")
    if window < 1:
        raise PlanError(f"window must be >= 1, got {window}")
    lo, hi = max(0, layer - window // 2), min(num_layers, layer - window // 2 + window)
    if style == "center":
        return tuple(range(lo, hi))
    if style == "inverse":
        out = tuple(i for i in range(num_layers) if not lo <= i < hi)
        if not out:  # never a silently empty plan
            raise PlanError(
                f"an inverse window of {window} around layer {layer} covers all {num_layers} layers: "
                "nothing is left to block; use a smaller --window"
            )
        return out
    if style == "top_down":
        return tuple(range(layer, num_layers))
    if style == "bottom_up":
        return tuple(range(0, layer + 1))
    raise PlanError(f"unknown window style {style!r}; choose from {', '.join(WINDOW_STYLES)}")


#: no model has more decoder layers than this; a larger number in ``--layers`` is a typo
#: (and ``0-999999999`` must not build a billion-element list)
MAX_LAYERS = 1024


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)`` (0-based, sorted, unique); ``None`` or blank: all.

    Anything else is a one-line :class:`PlanError` naming the bad part: a reversed range
    (``5-2``), an empty part, a negative or non-ASCII number, a layer above
    :data:`MAX_LAYERS`.

        >>> parse_layers("12, 0-2")
        (0, 1, 2, 12)
    """
    if text is None or not text.strip():
        return None
    out: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if not m:
            raise PlanError(f"layers {text!r}: cannot read {part!r}; write them like 0-3,7")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a > b:
            raise PlanError(
                f"layers {text!r}: the range {part.strip()!r} is empty ({a} > {b}); write {b}-{a}"
            )
        if b >= MAX_LAYERS:
            raise PlanError(f"layers {text!r}: layer {b} is beyond any model (at most {MAX_LAYERS} layers)")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


@dataclass(frozen=True, eq=False)
class CompiledPlan:
    """A plan resolved against one layout.

    ``blocked[l]`` is a boolean ``(N, N)`` matrix (query, key) of the causal edges cut in
    layer ``l`` in every head, or ``(H, N, N)`` (head, query, key) in a layer where some
    cut names heads; layers with the same cuts share one matrix. ``first_query`` is the first
    position whose attention changes and ``first_layer`` the first layer with a cut: every
    position before ``first_query`` and every layer before ``first_layer`` keeps its
    baseline state, which the engine exploits.
    """

    plan: Plan
    length: int
    num_layers: int
    blocked: dict[int, np.ndarray]

    @property
    def is_empty(self) -> bool:
        return not self.blocked

    @property
    def first_layer(self) -> int:
        return min(self.blocked) if self.blocked else self.num_layers

    @property
    def first_query(self) -> int:
        if not self.blocked:
            return self.length
        rows = [
            int(np.flatnonzero(m.any(axis=-1).reshape(-1, m.shape[-2]).any(axis=0))[0])
            for m in _distinct(self.blocked)
        ]
        return min(rows)

    @property
    def has_head_cuts(self) -> bool:
        return any(m.ndim == 3 for m in self.blocked.values())

    def suppressed_edges(self) -> int:
        """Causal attention edges cut, summed over layers (an edge cut in ``k`` of ``H``
        heads counts ``k / H``, rounded)."""
        counts = {
            id(m): int(round(m.sum() / (m.shape[0] if m.ndim == 3 else 1))) for m in _distinct(self.blocked)
        }
        return sum(counts[id(m)] for m in self.blocked.values())

    def total_edges(self) -> int:
        """All causal attention edges of the input, summed over layers."""
        return self.num_layers * self.length * (self.length + 1) // 2

    def suppressed_fraction(self) -> float:
        return self.suppressed_edges() / self.total_edges()


def _distinct(blocked: dict[int, np.ndarray]) -> list[np.ndarray]:
    seen: dict[int, np.ndarray] = {}
    for m in blocked.values():
        seen.setdefault(id(m), m)
    return list(seen.values())


def compile_plan(
    plan: Plan, layout: TokenLayout, num_layers: int, num_heads: int | None = None
) -> CompiledPlan:
    """Resolve ``plan``'s groups on ``layout`` into per-layer boolean cut matrices.

    ``num_heads`` (query heads per layer) is needed only by cuts that name heads. Raises
    ``PlanError`` for an empty group, a layer or head out of range, or a cut that leaves a
    query with no key to attend to (softmax over nothing is undefined).
    """
    n = layout.length
    causal = causal_mask(n)
    per_layer: dict[int, list[Cut | RandomCut]] = {}
    for cut in plan.cuts:
        if isinstance(cut, Cut) and cut.heads is not None:
            if num_heads is None:
                raise PlanError(f"plan {plan.name!r}: a cut names heads but the number of heads is unknown")
            if cut.heads[-1] >= num_heads:
                raise PlanError(f"plan {plan.name!r}: head {cut.heads[-1]} is outside 0..{num_heads - 1}")
        for layer in cut.layers:
            if not 0 <= layer < num_layers:
                raise PlanError(f"plan {plan.name!r}: layer {layer} is outside 0..{num_layers - 1}")
            per_layer.setdefault(layer, []).append(cut)
    cache: dict[tuple, np.ndarray] = {}
    edges: dict[tuple[str, str], np.ndarray] = {}

    def edge(src: str, dst: str) -> np.ndarray:
        if (src, dst) not in edges:
            m = np.zeros((n, n), dtype=bool)
            m[np.ix_(layout.resolve(dst), layout.resolve(src))] = True
            edges[(src, dst)] = m & causal
        return edges[(src, dst)]

    blocked: dict[int, np.ndarray] = {}
    for layer, cuts in sorted(per_layer.items()):
        whole = tuple(sorted({(c.src, c.dst) for c in cuts if isinstance(c, Cut) and c.heads is None}))
        partial = tuple(
            sorted({(c.src, c.dst, c.heads) for c in cuts if isinstance(c, Cut) and c.heads is not None})
        )
        key = (whole, partial)
        if key not in cache:
            m = np.zeros((n, n), dtype=bool)
            for src, dst in whole:
                m |= edge(src, dst)
            if partial:
                m = np.repeat(m[None], num_heads, axis=0)
                for src, dst, heads in partial:
                    m[list(heads)] |= edge(src, dst)
                if (m == m[0]).all():
                    m = np.ascontiguousarray(m[0])  # every head cut alike: one (N, N) matrix
            cache[key] = m
        m = cache[key]
        randoms = [c for c in cuts if isinstance(c, RandomCut)]
        if randoms:
            m = m.copy()
            for rc in randoms:
                m |= _random_edges(rc, layout, layer)
        if m.any():
            blocked[layer] = m
    for m in _distinct(blocked):
        dead = np.flatnonzero(((causal & ~m).sum(axis=-1) == 0).reshape(-1, n).any(axis=0))
        if dead.size:
            raise PlanError(
                f"plan {plan.name!r} leaves query position {int(dead[0])} with no key to attend to; "
                "keep at least one key (e.g. do not cut a token from itself and everything before it)"
            )
    return CompiledPlan(plan=plan, length=n, num_layers=num_layers, blocked=blocked)


def _random_edges(cut: RandomCut, layout: TokenLayout, layer: int) -> np.ndarray:
    n = layout.length
    start = int(layout.resolve(cut.start)[0])
    rows, cols = np.tril_indices(n - start)
    count = int(n * (n + 1) // 2 * cut.fraction)
    if count > rows.size:
        raise PlanError(
            f"cannot block {cut.fraction:.1%} of all causal edges at random after {cut.start!r}: "
            f"only {rows.size / (n * (n + 1) // 2):.1%} of them lie there"
        )
    pick = np.random.default_rng([cut.seed, layer]).choice(rows.size, size=count, replace=False)
    m = np.zeros((n, n), dtype=bool)
    m[rows[pick] + start, cols[pick] + start] = True
    return m


def causal_mask(n: int) -> np.ndarray:
    """Boolean ``(n, n)`` lower-triangular mask, True where attention is allowed."""
    return np.tril(np.ones((n, n), dtype=bool))
