"""``Cut`` and ``Plan`` (interventions as frozen, serialisable data), layer windows, mask
compilation and edge counting.

"Block ``src`` -> ``dst`` in layers ``L``" means: in every decoder layer of ``L``, queries at
``dst`` positions may not attend to keys at ``src`` positions, on top of the causal mask —
in every attention head, or only in the query heads a cut names (``heads=(3, 17)``). Under
grouped-query attention several query heads share one key/value head; a head-level cut
always names *query* heads, so it removes edges from those heads' softmax only.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PlanError
from .layout import Span, TokenLayout, check_group

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
        bad = [(side, v) for side, v in (("src", self.src), ("dst", self.dst)) if not isinstance(v, str)]
        if bad:
            side, value = bad[0]
            raise PlanError(
                f"cut {self.src!r}->{self.dst!r}: {side} must be a group name (text), not "
                f"{type(value).__name__} {value!r}, e.g. Cut('video', 'last', (3,))"
            )
        name = f"cut {self.src}->{self.dst}"
        object.__setattr__(self, "layers", as_indices(self.layers, f"{name}: layers"))
        if self.heads is not None:
            heads = as_indices(self.heads, f"{name}: heads")
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
            cut = cls(check_group(src), check_group(dst), layers)
        except PlanError as exc:
            raise PlanError(f"cut {text!r}: {exc}") from None
        check_cut_blocks(cut.src, cut.dst, text)
        return cut


def blocks_any(src: str, dst: str, layout: TokenLayout) -> bool:
    """Whether blocking ``src -> dst`` removes any edge on ``layout``: under causal attention
    a query attends only to keys at or before it, so the cut is empty unless some ``src``
    position is at or before some ``dst`` position. Groups must resolve on ``layout``."""
    return int(layout.resolve(src)[0]) <= int(layout.resolve(dst)[-1])


def check_cut_blocks(src: str, dst: str, text: str | None = None, layout: TokenLayout | None = None) -> None:
    """Refuse a user's cut that blocks nothing, with one line naming it and saying why.

    With ``layout`` the check is exact for that input. Without one (a ``--cut`` checked
    before any sample) it uses the prompt order every adapter shares (system, video with
    its frames in order, the question, its options in order, the last position, template
    text anywhere) and refuses only a cut that blocks nothing whatever the sample: wherever
    its answer is, however many frames or options it has. A group a layout lacks is left
    to the per-sample resolution, which names it.
    """
    name = text or f"{src}->{dst}"
    layouts = [layout] if layout is not None else _order_layouts(f"{src} {dst}")
    try:
        if any(blocks_any(src, dst, lay) for lay in layouts):
            return
    except PlanError:
        return
    where = "on this input" if layout is not None else "on any input"
    raise PlanError(
        f"cut {name!r} blocks nothing {where}: every {dst!r} position comes before every "
        f"{src!r} position, and causal attention already keeps a query from later keys "
        f"(did you mean {dst}->{src}?)"
    )


def _order_layouts(groups: str) -> list[TokenLayout]:
    """Layouts in the shared prompt order, one per answer position, big enough for the frame
    and option numbers ``groups`` names, with a template token around every group."""
    numbers = [int(x) for x in re.findall(r"[0-9]+", groups) if len(x) < 6]
    letters = [ord(c.upper()) - ord("A") for c in re.findall(r"option:([A-Za-z])\b", groups)]
    frames = max([8, *(n + 2 for n in numbers)])
    options = max([5, *(n + 1 for n in numbers), *(i + 1 for i in letters)])
    pos = 1  # position 0 is a template token (a BOS outside the system span)

    def span(n: int, gap: int = 1) -> Span:
        nonlocal pos
        s = Span(pos, pos + n)
        pos += n + gap
        return s

    system = span(2)
    video_start = pos
    frame_spans = tuple(span(2, gap=0) for _ in range(frames))
    video = Span(video_start, pos)
    pos += 1
    question_start = pos
    pos += 1  # "Question: "
    no_options = span(2)
    option_spans = tuple(span(2) for _ in range(options))
    question = Span(question_start, pos - 1)
    length = pos + 2  # a template token, then the last position
    grids = tuple((1, 2) for _ in frame_spans)
    return [
        TokenLayout(length, system, video, frame_spans, grids, question, no_options, option_spans, answer)
        for answer in range(options)
    ]


@dataclass(frozen=True)
class RandomCut:
    """Block a random ``fraction`` of all causal edges in each of ``layers``.

    The paper's random baseline for effective pathways: per layer, ``int(N(N+1)/2 *
    fraction)`` (query, key) pairs are drawn without replacement among the causal pairs whose
    query and key both lie at or after the first position of group ``start``; each layer
    draws its own pairs from a generator seeded by ``(seed, sample, layer)``, so every
    sample and layer gets a fresh pattern (as the paper's code, which drew unseeded per
    sample and layer) that a re-run reproduces. ``sample`` is the sample's id. A fraction
    larger than the pairs there blocks all of them (as the paper's ``randperm(...)[:N]``),
    with a warning; the compiled plan's ``suppressed_fraction()`` is the share blocked.
    """

    fraction: float
    seed: int
    layers: tuple[int, ...]
    start: str = "video"
    sample: str = ""

    def __post_init__(self) -> None:
        """Each argument checked as ``Cut``'s are: a one-line ``PlanError`` naming it (a float
        or bool layer, a seed that is no integer, a ``start`` that is no group)."""
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)):
            raise PlanError(
                f"random cut: fraction must be a number in [0, 1], not {type(fraction).__name__} {fraction!r}"
            )
        if not 0.0 <= fraction <= 1.0:
            raise PlanError(f"random cut fraction must be in [0, 1], got {fraction}")
        object.__setattr__(self, "fraction", float(fraction))
        if not is_int(self.seed):
            raise PlanError(
                f"random cut: seed must be an integer, not {type(self.seed).__name__} {self.seed!r}"
            )
        object.__setattr__(self, "seed", int(self.seed))
        if not isinstance(self.start, str):
            raise PlanError(
                f"random cut: start must be a group name (text), not {type(self.start).__name__} "
                f"{self.start!r}, e.g. RandomCut(0.1, 0, (3,), start='video')"
            )
        try:
            check_group(self.start)
        except PlanError as exc:
            raise PlanError(f"random cut: start: {exc}") from None
        if not isinstance(self.sample, str):
            raise PlanError(f"random cut: sample must be a sample id (text), not {self.sample!r}")
        object.__setattr__(self, "layers", as_indices(self.layers, "random cut: layers"))

    def to_dict(self) -> dict[str, Any]:
        d = {"random": self.fraction, "seed": self.seed, "layers": list(self.layers), "start": self.start}
        if self.sample:
            d["sample"] = self.sample
        return d


@dataclass(frozen=True)
class Plan:
    """A set of cuts: one experimental condition. An empty plan is the baseline."""

    name: str
    cuts: tuple[Cut | RandomCut, ...] = field(default=())

    def __post_init__(self) -> None:
        """One cut may stand for a tuple of one; anything but ``Cut`` / ``RandomCut`` items is
        a one-line ``PlanError`` (not a ``TypeError`` deep in a probe)."""
        if not isinstance(self.name, str):
            raise PlanError(f"a plan's name must be text, not {type(self.name).__name__} {self.name!r}")
        cuts = self.cuts
        if isinstance(cuts, (Cut, RandomCut)):
            cuts = (cuts,)
        elif isinstance(cuts, (str, bytes, dict)) or not isinstance(cuts, Iterable):
            raise PlanError(
                f"plan {self.name!r}: cuts must be a Cut or a tuple of Cuts, not {type(cuts).__name__} "
                f"{cuts!r}, e.g. Plan('v', (Cut('video', 'last', (3,)),))"
            )
        cuts = tuple(cuts)
        bad = [c for c in cuts if not isinstance(c, (Cut, RandomCut))]
        if bad:
            raise PlanError(
                f"plan {self.name!r}: each cut must be a Cut or a RandomCut, not "
                f"{type(bad[0]).__name__} {bad[0]!r} (text cuts go through Probe.plan or Probe.knockout)"
            )
        object.__setattr__(self, "cuts", cuts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cuts": [c.to_dict() for c in self.cuts]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        def cut(c: dict[str, Any]) -> Cut | RandomCut:
            if "random" in c:
                return RandomCut(
                    c["random"], c["seed"], tuple(c["layers"]), c.get("start", "video"), c.get("sample", "")
                )
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
    if not is_int(window) or window < 1:
        raise PlanError(f"window must be an integer >= 1, got {window!r}")
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


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python's or numpy's), not a bool: what a count or a
    size argument must be before its range is checked.

    >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(2.0)
    (True, True, False, False)
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_indices(value: Any, what: str = "layers") -> tuple[int, ...]:
    """Layer or head numbers as a sorted tuple without repeats, from an int, an iterable of
    ints (``range``, lists, numpy or torch integers) or, like the CLI, text (``"0-3,7"``);
    anything else (a float, a bool) is a one-line :class:`PlanError` naming ``what``.
    Text means what the same ints mean: a single negative number (``"-1"``) is the int
    ``-1`` (the embeddings in a logit lens; refused by whoever refuses the int), while a
    range stays 0-based.

    >>> as_indices(5), as_indices(range(3)), as_indices("0-2,7"), as_indices("-1,0")
    ((5,), (0, 1, 2), (0, 1, 2, 7), (-1, 0))
    """
    if isinstance(value, str):
        try:
            return parse_layers(value, negative=True) or ()
        except PlanError as exc:
            raise PlanError(str(exc).replace("layers", what, 1)) from None
    items = list(value) if isinstance(value, Iterable) and getattr(value, "ndim", 1) else [value]
    out = set()
    for x in items:
        try:
            if isinstance(x, bool) or str(getattr(x, "dtype", "")) in ("bool", "torch.bool"):
                raise TypeError
            out.add(operator.index(x))
        except TypeError:
            raise PlanError(
                f"{what} must be integers (an int, a sequence of ints or text like 0-3,7), got {value!r}"
            ) from None
    return tuple(sorted(out))


def layer_ranges(layers: Sequence[int]) -> str:
    """``(0, 1, 2, 7)`` -> ``"0-2,7"``: layers written as ``--layers`` takes them."""
    parts: list[str] = []
    xs = sorted(set(layers))
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(parts)


def parse_layers(text: str | None, *, negative: bool = False) -> tuple[int, ...] | None:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)`` (0-based, sorted, unique); ``None`` or blank: all.

    Anything else is a one-line :class:`PlanError` naming the bad part: a reversed range
    (``5-2``), an empty part, a negative (unless ``negative``: then a single number such
    as ``-1`` may be, as in :func:`as_indices`) or non-ASCII number, a layer above
    :data:`MAX_LAYERS`.

        >>> parse_layers("12, 0-2")
        (0, 1, 2, 12)
    """
    if text is None or not text.strip():
        return None
    out: set[int] = set()
    for part in text.split(","):
        if negative and (single := re.fullmatch(r"\s*-\s*([0-9]+)\s*", part)):
            out.add(-int(single.group(1)))
            continue
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

    ``length``, ``num_layers`` and ``layout`` identify the input it was compiled for: its
    matrices hold that input's positions, so it applies to no other (``check_input``).
    """

    plan: Plan
    length: int
    num_layers: int
    blocked: dict[int, np.ndarray]
    layout: TokenLayout | None = None

    def check_input(self, layout: TokenLayout, num_layers: int) -> None:
        """Refuse (``PlanError``, naming the plan and the difference) an input other than the
        one this plan was compiled for: another length, layer count or token layout."""
        if self.length != layout.length:
            diff = f"{self.length} tokens, this input has {layout.length}"
        elif self.num_layers != num_layers:
            diff = f"{self.num_layers} layers, this model has {num_layers}"
        elif self.layout is not None and self.layout != layout:
            ours, theirs = dataclasses.asdict(self.layout), dataclasses.asdict(layout)
            fields = [name for name in theirs if ours[name] != theirs[name]]
            diff = f"a token layout of the same length that differs in {', '.join(fields)}"
        else:
            return
        raise PlanError(
            f"plan {self.plan.name!r} was compiled for another input: {diff}; compile it against this "
            "input (Engine.compile) or pass the Plan itself"
        )

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
    return CompiledPlan(plan=plan, length=n, num_layers=num_layers, blocked=blocked, layout=layout)


def _random_edges(cut: RandomCut, layout: TokenLayout, layer: int) -> np.ndarray:
    n = layout.length
    start = int(layout.resolve(cut.start)[0])
    rows, cols = np.tril_indices(n - start)
    count = int(n * (n + 1) // 2 * cut.fraction)
    if count > rows.size:  # as the paper's randperm(...)[:N]: every pair there is blocked
        # one text for every sample and layer, so that a run says it once (the share there
        # differs per sample; the records keep it as suppressed_fraction)
        warnings.warn(
            f"random blocking: {cut.fraction:.1%} of all causal edges asked, but only the pairs "
            f"from the first {cut.start!r} token on are drawn from, and fewer lie there; all of those "
            "are blocked (as the paper's code), suppressed_fraction records the share blocked and "
            "random_fraction the share asked",
            stacklevel=2,
        )
        count = rows.size
    rng = np.random.default_rng([cut.seed, zlib.crc32(cut.sample.encode()), layer])
    pick = rng.choice(rows.size, size=count, replace=False)
    m = np.zeros((n, n), dtype=bool)
    m[rows[pick] + start, cols[pick] + start] = True
    return m


def causal_mask(n: int) -> np.ndarray:
    """Boolean ``(n, n)`` lower-triangular mask, True where attention is allowed."""
    return np.tril(np.ones((n, n), dtype=bool))
