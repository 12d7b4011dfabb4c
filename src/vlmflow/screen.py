"""Screen, then verify: estimate every plan with one attribution pass, evaluate the most
promising ``k`` plans (and a random control sample of the rest) exactly with the engine,
and say how well the estimates ranked them.

The estimates never pose as results: each ``ScreenedPlan`` says whether its value is an
``estimate`` or ``exact``, and ``rank agreement`` is measured on the verified plans (the
control sample alone gives an unbiased view of the unscreened remainder).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .attribution import Attribution, attribute, plan_groups
from .cuts import Plan, is_int, layer_ranges
from .engine import Engine, log_softmax64
from .errors import PlanError

ORDERS = ("drop", "magnitude")

#: an exact change of ``log p`` below this (about 1% of p) is too small to call a miss or a
#: contradiction: the screen's warnings are about effects a user would act on
NOTABLE = 0.01
#: a verified plan's estimate underestimates it when the exact change is notable and more than
#: this many times the estimate's (either sign); it contradicts it when the signs differ too
CONTRADICTION_RATIO = 10.0
#: how many units of rounding (the model dtype's epsilon at the largest baseline logit) an
#: exact change must exceed to be ranked (``exact_resolution``)
RESOLUTION_ULPS = 4.0


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 points (two
    points always correlate perfectly, one way or the other) or a constant side."""
    import pandas as pd

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3:
        return float("nan")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def top_k(values: np.ndarray, k: int, order: str = "drop") -> np.ndarray:
    """Indices of the ``k`` plans with the largest drop (most negative change) or the largest
    absolute change, best first."""
    if order not in ORDERS:
        raise PlanError(f"unknown screen order {order!r}; choose from {', '.join(ORDERS)}")
    key = values if order == "drop" else -np.abs(values)
    return np.argsort(key, kind="stable")[:k]


@dataclass(frozen=True)
class ScreenedPlan:
    """One plan's screened value: the first-order estimate always, the exact value (from the
    engine) when it was verified. Values are changes of ``log p(token)``."""

    plan: Plan
    estimate: float
    exact: float | None
    verified_as: str | None  # "cheap" | "top" | "control" | None
    logits: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def method(self) -> str:
        return "exact" if self.exact is not None else "estimate"


def exact_resolution(base_logits: torch.Tensor, token: int, dtype: torch.dtype) -> float:
    """The smallest exact change of ``log p(token)`` the screen ranks: ``RESOLUTION_ULPS``
    times ``dtype``'s epsilon (the model's) at the largest |baseline logit|, times
    ``1 - p(token)``. Logits are rounded to about that epsilon, and a change of the logits
    moves ``log p`` by about ``1 - p`` times as much (a near-certain answer barely moves):
    smaller exact changes (and exact zeros) are rounding, not an effect to rank."""
    logp = float(log_softmax64(base_logits)[token])
    ulp = torch.finfo(dtype).eps * float(base_logits.abs().max())
    return float(RESOLUTION_ULPS * ulp * -np.expm1(logp))


def plan_key(plan: Plan) -> frozenset:
    """What ``plan`` blocks: its cuts (source, destination, layers, heads), whatever its name
    or the cuts' order. Two plans with the same key are the same knockout (a sweep's window
    that covers every layer blocks the same layers at every point)."""
    return frozenset(plan.cuts)


@dataclass
class Screen:
    """Outcome of ``screen_then_verify``: one ``ScreenedPlan`` per plan given (``plans``),
    plans that block the same (``plan_key``) screened once and sharing its values. Counts,
    rank agreement and warnings are over the distinct plans (``distinct``). ``resolution``
    (``exact_resolution``): verified plans whose exact ``|change|`` is at most this are left
    out of the rank agreement (``unresolved``)."""

    plans: list[ScreenedPlan]
    attribution: Attribution
    k: int
    order: str
    resolution: float = 0.0

    def __repr__(self) -> str:  # counts, not every plan and the attribution's tensors
        verified = {kind: len(self.verified(kind)) for kind in ("top", "control", "cheap")}
        said = ", ".join(f"{kind} {n}" for kind, n in verified.items() if n)
        return (
            f"Screen(plans={len(self.plans)}, distinct={len(self.distinct())}, "
            f"verified={sum(verified.values())}{f' ({said})' if said else ''}, "
            f"k={self.k}, order={self.order!r}, resolution={self.resolution!r})"
        )

    def distinct(self) -> list[ScreenedPlan]:
        """The first of each set of ``plans`` that block the same (``plan_key``)."""
        seen: set[frozenset] = set()
        out = []
        for p in self.plans:
            key = plan_key(p.plan)
            if key not in seen:
                seen.add(key)
                out.append(p)
        return out

    def verified(self, kind: str | None = None) -> list[ScreenedPlan]:
        """The distinct plans evaluated exactly (``kind``: "cheap", "top" or "control";
        ``None``: all three)."""
        return [p for p in self.distinct() if p.exact is not None and (kind is None or p.verified_as == kind)]

    def unresolved(self, kind: str | None = None) -> list[ScreenedPlan]:
        """The verified plans (``kind`` as in ``verified``) whose exact ``|change|`` is at most
        ``resolution``: rounding of the logits, not a measured effect (exact zeros included)."""
        return [p for p in self.verified(kind) if abs(p.exact) <= self.resolution]  # type: ignore[arg-type]

    def rank_agreement(self, kind: str | None = None) -> float:
        """Spearman between estimate and exact over the verified plans (``kind``: "top",
        "control" or both) whose exact change is resolved (above ``resolution``); NaN for
        fewer than 3 of them."""
        v = [p for p in self.verified(kind) if abs(p.exact) > self.resolution]  # type: ignore[arg-type]
        return spearman([p.estimate for p in v], [p.exact for p in v])  # type: ignore[misc]

    def max_error(self) -> float:
        """The largest ``|exact - estimate|`` over the verified plans, in percentage points of
        the answer's probability (``relative_change``); NaN when none was verified."""
        from .attribution import relative_change

        v = self.verified()
        if not v:
            return float("nan")
        return float(max(abs(relative_change(p.exact) - relative_change(p.estimate)) for p in v))

    def missed(self) -> list[ScreenedPlan]:
        """Control plans the screen should have put in its top K, by its ``order``: with
        ``"drop"`` (the top K by estimated drop), a control plan whose exact change is a drop
        (``<= -NOTABLE``) larger than the top K's least exact drop; with ``"magnitude"``, one
        whose exact ``|change|`` exceeds the smallest exact ``|change|`` of the top K and is
        notable (``>= NOTABLE``). The top K are verified, so they are judged by their exact
        values only: estimates that overstate them, or have the wrong sign, hide no miss. A
        control plan that raises ``p`` is no miss of a screen for drops. The random control
        sample is the screen's only view of what the estimates left out, so each such plan
        is a false negative found, and more are likely among the unverified ones."""
        top = self.verified("top")
        if not top:
            return []
        control = self.verified("control")
        if self.order == "drop":
            ceiling = min(max(p.exact for p in top), -NOTABLE)  # type: ignore[type-var]
            return [p for p in control if p.exact < ceiling]  # type: ignore[operator]
        floor = max(min(abs(p.exact) for p in top), NOTABLE)  # type: ignore[arg-type]
        return [p for p in control if abs(p.exact) > floor]  # type: ignore[arg-type]

    def worst_missed(self) -> ScreenedPlan | None:
        """The ``missed`` plan farthest past the top K by the screen's ``order`` (the largest
        drop, or the largest ``|change|``); ``None`` when none was missed."""
        missed = self.missed()
        if not missed:
            return None
        if self.order == "drop":
            return min(missed, key=lambda p: p.exact)  # type: ignore[arg-type,return-value]
        return max(missed, key=lambda p: abs(p.exact))  # type: ignore[arg-type]

    def underestimated(self) -> list[ScreenedPlan]:
        """Verified plans whose exact change is notable (``>= NOTABLE``) and more than
        ``CONTRADICTION_RATIO`` times their estimate, of either sign and whatever the screen's
        ``order`` (a wrong value, ranked or not): the estimate is far too small (the demo's
        scene_transition sample: -99.99999% exact, -0.06% estimated). The rows left as
        estimates for such an input are unreliable too."""
        return [
            p
            for p in self.verified()
            if abs(p.exact) >= NOTABLE  # type: ignore[arg-type]
            and abs(p.exact) > CONTRADICTION_RATIO * abs(p.estimate)  # type: ignore[arg-type]
        ]

    def contradicted(self) -> list[ScreenedPlan]:
        """The ``underestimated`` plans whose exact change has the other sign than their
        estimate: the estimate says the opposite of what the knockout does. An estimate of
        exactly 0 (a gradient that vanished, or underflowed in half precision) has no sign to
        contradict: it is only underestimated."""
        return [p for p in self.underestimated() if np.sign(p.exact) * np.sign(p.estimate) < 0]

    def warnings(self, where: str = "") -> list[str]:
        """One line per way the verified plans contradict the estimates (empty when they do
        not): misses the control sample found, estimates far too small (``underestimated``,
        some perhaps of the wrong sign). ``where`` (a sample id) leads each line."""
        from .attribution import relative_change

        def show(p: ScreenedPlan) -> str:
            exact, estimate = float(relative_change(p.exact)), float(relative_change(p.estimate))
            where = f"{p.plan.name} in layers {layer_ranges(p.plan.layers)}"
            return f"{where}: exact {exact:+.3g}% vs estimated {estimate:+.3g}%"

        lead = f"{where}: " if where else ""
        out = []
        worst = self.worst_missed()
        if worst is not None:
            missed = self.missed()
            effect = "drop" if self.order == "drop" else "effect"
            out.append(
                f"{lead}screen estimates missed {len(missed)} of {len(self.verified('control'))} "
                f"control plans: their exact {effect} is larger than the top {len(self.verified('top'))}'s "
                f"(worst: {show(worst)}); the unverified plans likely hide more. Treat the "
                "estimates as unreliable here: raise k or control, or run the exact sweep"
            )
        under = self.underestimated()
        if under:
            worst = max(under, key=lambda p: abs(p.exact))  # type: ignore[arg-type]
            wrong = len(self.contradicted())
            sign = f"; {wrong} of them contradict their estimates (other sign)" if wrong else ""
            unverified = sum(p.exact is None for p in self.distinct())
            rest = (
                f"so the {unverified} plans left as estimates are unreliable too: do not read them "
                "as results, evaluate them exactly (probe.sweep, or flow without --screen)"
                if unverified
                else "every plan was verified here: read only the exact values"
            )
            out.append(
                f"{lead}{len(under)} of {len(self.verified())} verified plans have an exact effect "
                f"over {CONTRADICTION_RATIO:g}x their estimate (worst: {show(worst)}){sign}; the "
                f"largest |exact - estimate| is {self.max_error():.3g} percentage points. The "
                f"estimates are far too small for this input, {rest}"
            )
        return out

    def summary(self) -> dict[str, float | int | str]:
        """Counts of distinct plans (``plans``; ``rows``: the plans given, duplicates
        included), how many were verified and how, rank agreement (over the resolved verified
        plans; ``unresolved``: how many verified plans, ``unresolved_control`` of them control
        plans, were left out as below ``resolution``) and the warnings' counts."""
        return {
            "plans": len(self.distinct()),
            "rows": len(self.plans),
            "k": self.k,
            "order": self.order,
            "verified": len(self.verified()),
            "top": len(self.verified("top")),
            "cheap": len(self.verified("cheap")),
            "control": len(self.verified("control")),
            "spearman_verified": self.rank_agreement(),
            "spearman_control": self.rank_agreement("control"),
            "resolution": self.resolution,
            "unresolved": len(self.unresolved()),
            "unresolved_control": len(self.unresolved("control")),
            "max_error_pct": self.max_error(),
            "missed_control": len(self.missed()),
            "underestimated": len(self.underestimated()),
            "contradicted": len(self.contradicted()),
        }


def check_screen(k: int, control: int, order: str = "drop", exact_below: float = 0.0) -> None:
    """Screen sizes that are not integers >= 0, an ``exact_below`` that is not a number
    >= 0 and unknown orders are errors before any pass runs. A ``k`` above the number of
    plans verifies them all (``summary``'s ``top`` says how many were)."""
    for name, value in (("k", k), ("control", control)):
        if not is_int(value):
            raise PlanError(f"screen size {name} must be an integer >= 0, got {value!r}")
    if k < 0 or control < 0:
        raise PlanError(f"screen sizes k and control must be >= 0, got k={k}, control={control}")
    if isinstance(exact_below, bool) or not isinstance(exact_below, numbers.Real) or not exact_below >= 0:
        raise PlanError(f"exact_below must be a number >= 0 (a fraction of one forward), got {exact_below!r}")
    if order not in ORDERS:
        raise PlanError(f"unknown screen order {order!r}; choose from {', '.join(ORDERS)}")


def plan_cost(engine: Engine, plan: Plan) -> float:
    """What the engine spends on ``plan``, as a fraction of one forward: the share of
    (token, layer) pairs it recomputes."""
    cp = engine.compile(plan)
    if cp.is_empty:
        return 0.0
    n, layers = engine.layout.length, engine.lm.num_layers
    return (n - cp.first_query) / n * (layers - cp.first_layer) / layers


def screen_then_verify(
    engine: Engine,
    plans: Sequence[Plan],
    k: int,
    *,
    control: int = 10,
    token_id: int | None = None,
    order: str = "drop",
    metric: str = "logodds",
    exact_below: float = 0.0,
    seed: int = 0,
    fused: bool = False,
    max_graph_mb: float | None = None,
) -> Screen:
    """Estimate every plan, then evaluate exactly the top ``k`` by estimate and ``control``
    others drawn at random (``seed``).

    ``exact_below`` (a fraction of one forward): plans the engine evaluates for less than
    that each (cuts into the last few tokens recompute only those tokens) are evaluated
    exactly up front (``verified_as="cheap"``) and the top ``k`` is drawn from the rest;
    first-order estimates are weakest exactly for such large, late knockouts into the
    answer position, and verifying them costs almost nothing.

    ``engine`` holds the prepared input (model, inputs, layout); ``token_id`` is the answer
    token whose log-probability is attributed (default: the baseline's argmax); ``metric``
    is the attribution's (see ``attribute``). ``fused=True`` on an engine whose baseline has
    not run makes its baseline forward the attribution pass's forward (one forward less, at
    the memory of a training step's activations, bounded by ``max_graph_mb``; see
    ``attribute``).

    >>> s = screen_then_verify(engine, [p.plan for p in points], 30)  # doctest: +SKIP
    >>> s.summary()["spearman_control"]  # doctest: +SKIP
    """
    check_screen(k, control, order, exact_below)
    plans = list(plans)
    src, dst = plan_groups(plans)
    layers = sorted({layer for p in plans for layer in p.layers})
    att = attribute(
        engine,
        token_id=token_id,
        sources=src,
        queries=dst,
        layers=layers,
        metric=metric,
        fused=fused,
        max_graph_mb=max_graph_mb,
    )
    return verify_top(engine, plans, att, k, control=control, order=order, exact_below=exact_below, seed=seed)


def verify_top(
    engine: Engine,
    plans: Sequence[Plan],
    attribution: Attribution,
    k: int,
    *,
    control: int = 10,
    order: str = "drop",
    exact_below: float = 0.0,
    seed: int = 0,
) -> Screen:
    """The screen's second half: estimate ``plans`` from an attribution pass of ``engine``'s
    input that covers them (their groups and layers), evaluate the cheap ones, the top
    ``k`` and ``control`` random others exactly (see ``screen_then_verify``).

    Plans that block the same (``plan_key``: a sweep whose window covers every layer) are
    one plan: ranked, drawn and verified once, every copy given its values and
    ``verified_as``; ``k`` and ``control`` count distinct plans."""
    check_screen(k, control, order, exact_below)
    plans, att = list(plans), attribution
    token = att.token_id
    base_logits = engine.baseline_logits()
    base = log_softmax64(base_logits)
    est = att.delta_logprob(att.estimates(plans))
    first: dict[frozenset, int] = {}  # each distinct plan's first index
    for i, plan in enumerate(plans):
        first.setdefault(plan_key(plan), i)
    same = [first[plan_key(plan)] for plan in plans]  # the index whose values each plan takes
    distinct = np.array(sorted(first.values()), dtype=int)
    cheap = [int(i) for i in distinct if plan_cost(engine, plans[i]) < exact_below]
    pool = np.setdiff1d(distinct, cheap)
    top = [int(pool[i]) for i in top_k(est[pool], k, order)]
    rest = np.setdiff1d(pool, top)
    rng = np.random.default_rng(seed)
    ctrl = [int(i) for i in rng.choice(rest, size=min(control, rest.size), replace=False)]
    chosen = cheap + top + ctrl
    logits = engine.evaluate([plans[i] for i in chosen]) if chosen else torch.empty(0)
    exact = {
        i: (lg, float(log_softmax64(lg)[token] - base[token])) for i, lg in zip(chosen, logits, strict=True)
    }
    out = []
    for i, plan in enumerate(plans):
        j = same[i]
        lg, ex = exact.get(j, (None, None))
        kind = "cheap" if j in cheap else "top" if j in top else ("control" if j in exact else None)
        out.append(ScreenedPlan(plan, float(est[j]), ex, kind, lg))
    return Screen(out, att, k, order, exact_resolution(base_logits, token, engine.dtype))
